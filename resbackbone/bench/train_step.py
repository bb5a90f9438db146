"""Training-side figures: step time and peak memory with and without gradient checkpointing."""

from __future__ import annotations

import contextlib
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from ..backbone import Backbone
from .candidates import build_reference
from .machine import PeakMemory, median, percentile, timed

__all__ = ["TRAIN_MODELS", "run_train"]

TRAIN_MODELS = ("backbone", "fasterrcnn_fpn")


class _FPNBackbone(nn.Module):
    """Backbone + torchvision FPN (+ max-pool P6), as torchvision's ``BackboneWithFPN`` lays it out."""

    def __init__(self, body: Backbone, channels: int = 256) -> None:
        from torchvision.ops import FeaturePyramidNetwork
        from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

        super().__init__()
        self.body = body
        self.fpn = FeaturePyramidNetwork(list(body.feature_info.channels), channels, extra_blocks=LastLevelMaxPool())
        self.out_channels = channels

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor]:
        features = self.body(x)
        # torchvision's RoI pooler reads the maps named "0".."3"
        return self.fpn(OrderedDict((str(i), v) for i, v in enumerate(features.values())))


def _faster_rcnn(body: Backbone, size: int) -> nn.Module:
    from torchvision.models.detection import FasterRCNN

    return FasterRCNN(
        _FPNBackbone(body),
        num_classes=91,
        min_size=size,
        max_size=size,
        image_mean=list(body.mean),
        image_std=list(body.std),
    )


def _boxes(batch: int, size: int, device: torch.device, generator: torch.Generator) -> list[dict[str, Tensor]]:
    targets = []
    for _ in range(batch):
        xy = torch.rand(4, 2, generator=generator) * size * 0.6
        wh = torch.rand(4, 2, generator=generator) * size * 0.3 + 8
        boxes = torch.cat([xy, (xy + wh).clamp(max=size)], dim=1)
        labels = torch.randint(1, 91, (4,), generator=generator)
        targets.append({"boxes": boxes.to(device), "labels": labels.to(device)})
    return targets


def _step_fn(
    model_kind: str, model: nn.Module, x: Tensor, targets: list[dict[str, Tensor]] | None, amp: bool
) -> Callable[[], None]:
    device = x.device
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if amp else contextlib.nullcontext()

    def step() -> None:
        with autocast:
            if model_kind == "backbone":
                loss = sum(level.float().square().mean() for level in model(x).values())
            else:
                loss = sum(model(list(x), targets).values())
        loss.backward()
        model.zero_grad(set_to_none=True)

    return step


def run_train(
    name: str,
    *,
    device: torch.device,
    batch: int,
    size: int,
    models: tuple[str, ...],
    weights: str | None,
    seed: int,
    warmup: int,
    repeats: int,
    amp: bool,
    checkpointing: bool | tuple[str, ...] = True,
) -> list[dict[str, Any]]:
    """Forward+backward step time and peak memory, plain and with gradient checkpointing.

    The two variants of one model share weights, input and targets and are
    timed in alternating rounds; ``checkpointing`` is what the second passes
    to ``set_grad_checkpointing``.

    Returns:
        One row per (model, grad_checkpointing), fields as ``TRAIN_FIELDS``.
    """
    rows = []
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 3, size, size, generator=generator).to(device)
    targets = _boxes(batch, size, device, generator)
    for model_kind in models:
        steps, memory, setup, stages = {}, {}, {}, {}
        for variant in (False, True):
            start = time.perf_counter()
            body = build_reference(name, weights=weights, seed=seed, device=device)
            body.set_grad_checkpointing(checkpointing if variant else False)
            stages[variant] = list(body.checkpoint_stages)
            model = body if model_kind == "backbone" else _faster_rcnn(body, size).to(device)
            model.train()
            step = _step_fn(model_kind, model, x, targets, amp)
            for _ in range(max(warmup, 1)):
                step()
            setup[variant] = time.perf_counter() - start
            with PeakMemory(device, tensors=True) as peak:
                step()
            memory[variant] = peak
            steps[variant] = step
        times: dict[bool, list[float]] = {False: [], True: []}
        for _ in range(repeats):
            for variant, step in steps.items():
                times[variant].append(timed(step, device))
        for variant in (False, True):
            p50 = median(times[variant])
            row = {
                "backbone": name,
                "device": device.type,
                "batch_size": batch,
                "input_size": size,
                "model": model_kind,
                "grad_checkpointing": variant,
                "checkpoint_stages": stages[variant],
                "amp_bf16": amp,
                "status": "ok",
                "note": "",
                "images_per_s": batch / p50,
                "step_ms_p50": p50 * 1e3,
                "step_ms_p95": percentile(times[variant], 95) * 1e3,
                "peak_memory_mib": memory[variant].mib,
                "memory_method": memory[variant].method,
                "peak_rss_mib": memory[variant].rss_mib,
                "memory_saving": None,
                "time_overhead": None,
                "setup_s": setup[variant],
                "repeats": repeats,
            }
            if variant:
                plain_mem, plain_time = memory[False].mib, median(times[False])
                if plain_mem and memory[True].mib is not None:
                    row["memory_saving"] = 1 - memory[True].mib / plain_mem
                row["time_overhead"] = p50 / plain_time - 1
            rows.append(row)
        del steps
    return rows
