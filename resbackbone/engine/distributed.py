"""Process groups for ``torchrun``: one process per device, DDP, rank-0 output.

``torchrun --nproc_per_node=N -m resbackbone finetune RECIPE`` sets ``RANK``,
``LOCAL_RANK`` and ``WORLD_SIZE``; :func:`setup` then joins the group (NCCL on
CUDA, gloo on CPU). Without them everything runs in one process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TypeVar

import torch
import torch.distributed as dist
from torch import Tensor, nn

__all__ = [
    "DistContext",
    "TrainModel",
    "agree",
    "all_finite",
    "broadcast_buffers",
    "broadcast_state",
    "pick_device",
    "ranks_in_sync",
    "setup",
    "teardown",
]


@dataclass(frozen=True)
class DistContext:
    """Where this process stands: ``rank`` of ``world_size``, on ``device``."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def pick_device(requested: str, local_rank: int = 0) -> torch.device:
    """The device ``requested`` names, ``"auto"`` meaning this process's GPU when there is one, else the CPU.

    Args:
        requested: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:1"``, … (what ``run.device`` takes).
        local_rank: This process's index on its machine; picks the GPU for ``"auto"`` and a bare ``"cuda"``.

    Raises:
        ValueError: A CUDA device is asked for where CUDA is not available.
    """
    if requested == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    device = torch.device(requested)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"run.device={requested!r}, but CUDA is not available here; use 'cpu' or 'auto'.")
        if device.index is None:
            device = torch.device(f"cuda:{local_rank}")
    return device


def setup(requested_device: str = "auto") -> DistContext:
    """Join the process group when started by ``torchrun``, and pick this process's device."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(requested_device, local_rank)
    if world_size > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return DistContext(rank=rank, local_rank=local_rank, world_size=world_size, device=device)


def teardown(*, wait: bool = False) -> None:
    """Leave the process group; with ``wait``, once every rank has got here.

    Waiting keeps a rank that finishes first (the ones that write nothing)
    from closing its connections while rank 0 still writes its checkpoint and
    logs; after an error there is no waiting, the other ranks may never come.
    """
    if dist.is_initialized():
        if wait:
            dist.barrier()
        dist.destroy_process_group()


class TrainModel:
    """The model to run training steps through: DDP-wrapped when distributed, else the model itself.

    DDP registers its gradient hooks for the parameters that require a gradient
    when it is built, so the wrapper is rebuilt when that set changes (a backbone
    unfrozen after ``freeze_backbone_epochs``).
    """

    def __init__(self, model: nn.Module, ctx: DistContext):
        self.model = model
        self.ctx = ctx
        self.wrapped: nn.Module | None = None
        self.trainable: tuple[bool, ...] | None = None

    def get(self) -> nn.Module:
        """The module to call this epoch."""
        if not self.ctx.distributed:
            return self.model
        trainable = tuple(p.requires_grad for p in self.model.parameters())
        if self.wrapped is None or trainable != self.trainable:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.ctx.device.index] if self.ctx.device.type == "cuda" else None
            self.wrapped = DistributedDataParallel(self.model, device_ids=ids, find_unused_parameters=False)
            self.trainable = trainable
        return self.wrapped


def all_finite(loss: Tensor, ctx: DistContext) -> bool:
    """Whether ``loss`` is finite in every process (each must take the same branch, or DDP hangs)."""
    flag = torch.isfinite(loss.detach()).to(torch.int32)
    if ctx.distributed:
        flag = flag.to(ctx.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item())


T = TypeVar("T")


def agree(value: T, ctx: DistContext) -> T:
    """Rank 0's ``value`` in every process: a choice each rank would otherwise make from its own measurement."""
    if not ctx.distributed:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0, device=ctx.device if ctx.device.type == "cuda" else None)
    return box[0]


def broadcast_buffers(model: nn.Module, ctx: DistContext) -> None:
    """Give every process rank 0's buffers (batch-norm statistics drift per rank in the last step)."""
    if ctx.distributed:
        for buffer in model.buffers():
            dist.broadcast(buffer.data, src=0)


def broadcast_state(model: nn.Module, ctx: DistContext) -> None:
    """Give every process rank 0's parameters and buffers (e.g. weights only rank 0 could read from its disk)."""
    if ctx.distributed:
        for tensor in model.state_dict().values():
            dist.broadcast(tensor, src=0)


def ranks_in_sync(model: nn.Module, ctx: DistContext) -> bool:
    """Whether every process holds the same parameters (always true in one process)."""
    if not ctx.distributed:
        return True
    flat = torch.cat([p.detach().double().flatten() for p in model.parameters()])
    weights = torch.arange(1, flat.numel() + 1, dtype=torch.float64, device=flat.device) / flat.numel()
    digest = torch.stack([flat.sum(), flat.square().sum(), (flat * weights).sum()])
    gathered = [torch.empty_like(digest) for _ in range(ctx.world_size)]
    dist.all_gather(gathered, digest)
    return all(torch.equal(g, gathered[0]) for g in gathered)
