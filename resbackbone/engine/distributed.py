"""Process groups for ``torchrun``: one process per device, DDP, rank-0 output.

``torchrun --nproc_per_node=N -m resbackbone finetune RECIPE`` sets ``RANK``,
``LOCAL_RANK`` and ``WORLD_SIZE``; :func:`setup` then joins the group (NCCL on
CUDA, gloo on CPU). Without them everything runs in one process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

__all__ = ["DistContext", "pick_device", "setup", "teardown"]


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
