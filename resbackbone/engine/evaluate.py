"""Evaluation of a model over a data loader, and the device and precision helpers it shares with training."""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from .metrics import DetectionMetric, SegmentationMetric

__all__ = ["autocast", "evaluate_model", "to_device"]


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
