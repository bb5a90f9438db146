"""One training epoch: forward and loss under autocast, accumulated backward passes, the optimiser update.

An update applies the gradients of ``optim.accumulate`` batches: clipped to
``optim.clip_grad`` (after unscaling under fp16), stepped through the gradient
scaler, then the learning-rate schedule and the EMA of the weights move on. An
update the fp16 scaler skips (inf/NaN gradients) is counted, not stepped.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from timm.utils import ModelEmaV3
from torch import Tensor, nn
from torch.utils.data import DataLoader

from ..recipes import Recipe
from .acceleration import autocast
from .distributed import DistContext, all_finite
from .evaluate import to_device

__all__ = ["EpochTally", "TrainState", "TrainingError", "train_epoch"]


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. a NaN loss); the message names the step and the last good checkpoint."""


@dataclass
class TrainState:
    """The weights and what an update changes: model, optimiser, schedule, gradient scaler, EMA.

    ``clip_grad`` is the gradient norm updates clip to (``None``: no clipping).
    ``after_update(step)`` runs after each applied update (e.g. a momentum encoder's
    update in self-supervised pretraining); ``None`` for nothing.
    """

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    ema: ModelEmaV3 | None
    clip_grad: float | None = None
    after_update: Callable[[int], None] | None = None

    def update(self, step: int) -> bool:
        """Apply the accumulated gradients as update number ``step`` (counted from 1).

        Returns:
            ``False`` when the fp16 scaler skipped the update (inf/NaN gradients):
            it lowered its scale, and neither the schedule nor the EMA moved.
        """
        if self.clip_grad:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip_grad)
        scale = self.scaler.get_scale() if self.scaler.is_enabled() else None
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        if scale is not None and self.scaler.get_scale() < scale:
            return False
        self.scheduler.step()
        if self.ema is not None:
            self.ema.update(self.model, step=step)
        if self.after_update is not None:
            self.after_update(step)
        return True

    def state_dict(self) -> dict[str, Any]:
        """Checkpoint entries: ``model``, ``ema`` (``None`` without one), ``optimizer``, ``scheduler``, ``scaler``."""
        return {
            "model": self.model.state_dict(),
            "ema": self.ema.module.state_dict() if self.ema is not None else None,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` wrote (a checkpoint without an EMA leaves this EMA as it is)."""
        self.model.load_state_dict(state["model"])
        if self.ema is not None and state.get("ema") is not None:
            self.ema.module.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])


@dataclass
class EpochTally:
    """What an epoch did: loss sums over its batches, and its updates, skipped updates and skipped batches."""

    sums: dict[str, float] = field(default_factory=dict)
    batches: int = 0  # batches that counted (finite loss)
    updates: int = 0
    overflows: int = 0  # updates the fp16 scaler skipped
    skipped: int = 0  # batches skipped for a non-finite loss (run.nan_policy: skip)

    def add(self, parts: dict[str, Tensor], loss: Tensor) -> None:
        """Count one batch's loss and its parts."""
        for key, value in [*parts.items(), ("loss", loss)]:
            self.sums[key] = self.sums.get(key, 0.0) + float(value.detach())
        self.batches += 1

    def means(self) -> dict[str, float]:
        """``train/<part>`` means over the counted batches."""
        return {f"train/{k}": v / max(1, self.batches) for k, v in self.sums.items()}


def _losses(
    model: nn.Module,
    images: Any,
    targets: Any,
    seg_loss: Callable[[Any, Tensor], dict[str, Tensor]] | None,
    device: torch.device,
    amp: str,
) -> dict[str, Tensor]:
    with autocast(device, amp):
        if seg_loss is None:
            return model(images, targets)
        output = model(images)
    return seg_loss(output, targets)


def train_epoch(
    recipe: Recipe,
    ctx: DistContext,
    model: nn.Module,
    loader: DataLoader,
    train_state: TrainState,
    seg_loss: Callable[[Any, Tensor], dict[str, Tensor]] | None,
    *,
    epoch: int,
    step: int,
    total: int,
    last_good: Path,
    progress: bool,
    amp: str = "none",
    channels_last: bool = False,
) -> EpochTally:
    """Train on the first ``total`` batches of ``loader``, one update per ``optim.accumulate`` of them (and at the end).

    The loader's order and augmentations are a function of ``run.seed`` and
    ``epoch`` alone (its :class:`~resbackbone.engine.loaders.EpochSampler` is
    set to the epoch here), so a resumed run sees the batches the uninterrupted
    one saw.

    Args:
        recipe: The run's recipe (``optim`` and ``run`` sections).
        ctx: This process's place in the process group.
        model: The module to call: the DDP wrapper of ``train_state.model`` when distributed.
        loader: The training loader (from :func:`~resbackbone.engine.loaders.make_loader`).
        train_state: What the updates step.
        seg_loss: ``(output, masks) -> {name: loss}`` for segmentation; ``None`` for detection
            (torchvision detectors return their losses).
        epoch: The epoch's index (from 0), for messages.
        step: Updates done before this epoch.
        total: Batches in this epoch.
        last_good: The checkpoint a stopped run can resume from (named in the error when it exists).
        progress: Show a tqdm bar.
        amp: The autocast precision, resolved (``"none"``, ``"bf16"``, ``"fp16"``; not ``"auto"``).
        channels_last: Move the images to channels-last.

    Raises:
        TrainingError: A non-finite loss under ``run.nan_policy: stop``.
    """
    from tqdm.auto import tqdm

    optim, run = recipe.optim, recipe.run
    optimizer = train_state.optimizer
    loader.sampler.set_epoch(epoch)  # an EpochSampler: the order and augmentations of run.seed and epoch alone
    tally = EpochTally()
    optimizer.zero_grad(set_to_none=True)
    bar = tqdm(total=total, desc=f"epoch {epoch + 1}/{optim.epochs}", disable=not progress, leave=False)
    for i, (images, targets) in enumerate(loader):
        if i >= total:
            break
        images, targets = to_device(images, targets, ctx.device, channels_last)
        update = (i + 1) % optim.accumulate == 0 or i + 1 == total
        sync = model.no_sync() if (ctx.distributed and not update) else contextlib.nullcontext()
        with sync:
            parts = _losses(model, images, targets, seg_loss, ctx.device, amp)
            loss = sum(parts.values())
            if not all_finite(loss, ctx):
                if run.nan_policy == "stop":
                    where = (
                        f"the last good checkpoint is {last_good}"
                        if last_good.is_file()
                        else "no checkpoint was saved yet"
                    )
                    raise TrainingError(
                        f"Loss is {loss.item()} at epoch {epoch + 1}, step {step + tally.updates + 1} (batch {i + 1}); "
                        f"{where}. Lower optim.lr, set optim.clip_grad, check the data, or set run.nan_policy: skip."
                    )
                tally.skipped += 1
                optimizer.zero_grad(set_to_none=True)
                bar.update(1)
                continue
            train_state.scaler.scale(loss / optim.accumulate).backward()
        if update:
            if train_state.update(step + tally.updates + 1):
                tally.updates += 1
            else:
                tally.overflows += 1
        tally.add(parts, loss)
        bar.set_postfix(loss=f"{tally.sums['loss'] / tally.batches:.4f}", lr=f"{optimizer.param_groups[0]['lr']:.2e}")
        bar.update(1)
    bar.close()
    return tally
