"""Evaluation of a model over a data loader or of a checkpoint on a split, and the helpers shared with training."""

from __future__ import annotations

import contextlib
import os
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from ..data import build_dataset
from ..recipes import Recipe
from .builders import find_backbone, input_normalization
from .checkpoint import load_model
from .distributed import DistContext, pick_device
from .loaders import make_loader
from .metrics import DetectionMetric, SegmentationMetric

__all__ = ["autocast", "evaluate_checkpoint", "evaluate_model", "to_device"]


def autocast(device: torch.device, amp: str) -> contextlib.AbstractContextManager[Any]:
    """Autocast to ``amp`` (``"bf16"``/``"fp16"``) on ``device``, or nothing for ``"none"``."""
    if amp == "none":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def to_device(images: Any, targets: Any, device: torch.device, channels_last: bool) -> tuple[Any, Any]:
    """A batch (a tensor or a list of images; a tensor or a list of target dicts) on ``device``."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    if isinstance(images, Tensor):
        images = images.to(device, non_blocking=True, memory_format=fmt)
    else:
        images = [im.to(device, non_blocking=True) for im in images]
    if isinstance(targets, Tensor):
        targets = targets.to(device, non_blocking=True)
    else:
        targets = [{k: v.to(device) if isinstance(v, Tensor) else v for k, v in t.items()} for t in targets]
    return images, targets


@torch.no_grad()
def evaluate_model(
    model: nn.Module,
    loader: DataLoader,
    *,
    task: str,
    classes: list[str],
    device: torch.device,
    amp: str = "none",
    ignore_index: int = 255,
    channels_last: bool = False,
    progress: bool = False,
) -> dict[str, float]:
    """Metrics of ``model`` over ``loader`` (reduced over processes when distributed)."""
    from tqdm.auto import tqdm

    model.eval()
    metric: DetectionMetric | SegmentationMetric = (
        DetectionMetric(classes) if task == "detection" else SegmentationMetric(classes, ignore_index=ignore_index)
    )
    for images, targets in tqdm(loader, desc="eval", leave=False, disable=not progress):
        images, targets = to_device(images, targets, device, channels_last)
        with autocast(device, amp):
            output = model(images)
        if task == "detection":
            metric.update(output, targets)
        else:
            logits = output["out"] if isinstance(output, dict) else output
            metric.update(logits.float(), targets)
    return metric.compute()


def evaluate_checkpoint(
    recipe: Recipe,
    checkpoint: str | os.PathLike[str],
    *,
    split: str = "val",
    device: str = "auto",
    progress: bool = True,
    fast: bool = False,
) -> dict[str, float]:
    """Metrics of a checkpoint on a split of ``recipe``'s dataset.

    Args:
        recipe: Names the dataset, and how to load and batch it.
        checkpoint: A ``last.pt`` or ``best.pt`` (its EMA weights when it has them).
        split: The split to evaluate on.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, …
        progress: Show a tqdm bar.
        fast: Evaluate :func:`~resbackbone.optimize.optimize_model`'s copy of the model (batch norms
            folded, memory format measured, compiled, bf16 where the device computes it natively).

    Returns:
        The metrics by name (``miou``, ``dice``, … or ``map``, ``map50``, …).

    Raises:
        ValueError: The checkpoint's task differs from the recipe's, or it does not fit its model.
    """
    dev = pick_device(device)
    model, trained, classes = load_model(checkpoint, device=dev)
    if trained.task != recipe.task:
        raise ValueError(f"Checkpoint {checkpoint} is a {trained.task} model; recipe {recipe.name} is {recipe.task}.")
    backbone = find_backbone(model)
    mean, std = input_normalization(backbone, recipe.task)
    dataset = build_dataset(
        recipe.data,
        split,
        task=recipe.task,
        train=False,
        mean=mean,
        std=std,
        in_chans=backbone.in_chans,
    )
    batch_size = recipe.eval.batch_size or recipe.optim.batch_size
    loader = make_loader(
        dataset, batch_size, train=False, task=recipe.task, run=recipe.run, ctx=DistContext(device=dev)
    )
    if fast:
        from ..optimize import optimize_model

        model = optimize_model(model)
    return evaluate_model(
        model,
        loader,
        task=recipe.task,
        classes=classes,
        device=dev,
        ignore_index=recipe.data.ignore_index,
        progress=progress,
    )
