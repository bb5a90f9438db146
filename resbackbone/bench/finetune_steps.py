"""Fine-tuning step of a whole model under the training speed settings, interleaved on one machine.

``resbackbone bench --models … --train`` times one optimiser step (forward,
loss, backward, SGD update) of each model as ``resbackbone finetune`` would
take it, in variants of the recipe's ``optim.amp`` / ``run.channels_last`` /
``run.compile``:

- ``fp32``: ``amp: none``;
- ``amp-auto``: what ``amp: auto`` picks on this device (bf16 where native and known faster, else fp32;
  where a run times both, bf16: the ``fp32`` row is the other);
- ``amp-auto+cl``: and channels-last;
- ``amp-auto+compile``: and the compiled step (``run.compile``).

The whole epoch, data loading included, is ``benchmarks/finetune_amp.py``'s measure.
"""

from __future__ import annotations

import copy
import functools
import statistics
import time
from typing import Any

import torch
from torch import nn

from .candidates import randomise_norms

__all__ = ["FINETUNE_VARIANTS", "format_finetune_steps", "run_finetune_steps"]

FINETUNE_VARIANTS = ("fp32", "amp-auto", "amp-auto+cl", "amp-auto+compile")
"""The training-step variants timed, in order."""


def _model(arch: str, backbone: str, num_classes: int, size: int, seed: int) -> tuple[nn.Module, str]:
    from .. import build_detector, build_segmenter

    torch.manual_seed(seed)
    if arch in ("faster_rcnn", "retinanet"):
        model = build_detector(arch, backbone=backbone, num_classes=num_classes, min_size=size, max_size=size)
        task = "detection"
    else:
        model, task = build_segmenter(arch, backbone=backbone, num_classes=num_classes), "segmentation"
    randomise_norms(model, seed)
    return model.train(), task


def _step(model: nn.Module, optimizer: Any, x: Any, targets: Any, *, task: str, amp: str) -> None:
    from ..engine.acceleration import autocast

    with autocast(torch.device("cpu"), amp):
        out = model(x, targets) if task == "detection" else model(x)
        loss = sum(out.values()) if task == "detection" else nn.functional.cross_entropy(out, targets)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def run_finetune_steps(
    models: tuple[str, ...],
    *,
    backbone: str = "resnet50",
    batch_size: int = 4,
    size: int = 256,
    num_classes: int = 5,
    warmup: int = 2,
    repeats: int = 4,
    seed: int = 0,
) -> dict[str, Any]:
    """Seconds per training step of each model in each of :data:`FINETUNE_VARIANTS`, on the CPU.

    Returns:
        ``{"amp_auto": the precision auto chose, or ``"measured"``, "rows": [{model, variant, step_ms_p50, images_per_s,
        speedup_vs_fp32}]}``.
    """
    from ..engine.acceleration import amp_candidates, compile_for_training, sample_batch

    device = torch.device("cpu")
    candidates = amp_candidates("auto", device)
    auto = candidates[-1]
    settings = {
        "fp32": ("none", False, False),
        "amp-auto": (auto, False, False),
        "amp-auto+cl": (auto, True, False),
        "amp-auto+compile": (auto, False, True),
    }
    rows: list[dict[str, Any]] = []
    for arch in models:
        base, task = _model(arch, backbone, num_classes, size, seed)
        images, targets = sample_batch(task, batch_size, 3, (size, size), num_classes)
        steps = {}
        for name, (amp, channels_last, compiled) in settings.items():
            model = copy.deepcopy(base)
            fmt = torch.channels_last if channels_last else torch.contiguous_format
            model = model.to(memory_format=fmt)
            if compiled:
                compile_for_training(model, task)
            optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-4, momentum=0.9)
            x = images.contiguous(memory_format=fmt) if task == "segmentation" else images

            steps[name] = functools.partial(_step, model, optimizer, x, targets, task=task, amp=amp)
        print(f"[finetune steps] {arch}: warming up (the compiled step compiles)", flush=True)
        for _ in range(warmup):
            for step in steps.values():
                step()
        times: dict[str, list[float]] = {name: [] for name in steps}
        for _ in range(repeats):
            for name, step in steps.items():
                start = time.perf_counter()
                step()
                times[name].append(time.perf_counter() - start)
        fp32 = statistics.median(times["fp32"])
        for name in steps:
            p50 = statistics.median(times[name])
            rows.append(
                {
                    "model": arch,
                    "variant": name,
                    "amp": settings[name][0],
                    "step_ms_p50": p50 * 1e3,
                    "images_per_s": batch_size / p50,
                    "speedup_vs_fp32": fp32 / p50,
                }
            )
    config = {"backbone": backbone, "batch_size": batch_size, "size": size, "repeats": repeats}
    return {"config": config, "amp_auto": auto if len(candidates) == 1 else "measured", "rows": rows}


def format_finetune_steps(result: dict[str, Any]) -> str:
    """A Markdown table of :func:`run_finetune_steps`'s rows."""
    config = result["config"]
    auto = result["amp_auto"]
    chose = "times bf16 (the amp-auto rows) against fp32 at a run's start" if auto == "measured" else f"chose {auto}"
    lines = [
        f"Training step (forward, loss, backward, SGD update) on {config['backbone']}, batch {config['batch_size']}, "
        f"{config['size']}×{config['size']}, median of {config['repeats']} interleaved steps; amp: auto {chose} here.",
        "",
        "| model | variant | autocast | step ms (p50) | images/s | × fp32 |",
        "| --- | --- | --- | ---: | ---: | ---: |",
    ]
    for row in result["rows"]:
        lines.append(
            f"| {row['model']} | {row['variant']} | {row['amp']} | {row['step_ms_p50']:.0f} | "
            f"{row['images_per_s']:.2f} | {row['speedup_vs_fp32']:.2f}× |"
        )
    return "\n".join(lines)
