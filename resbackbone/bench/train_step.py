"""Training-side figures: step time and peak memory with and without gradient checkpointing."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from ..backbone import Backbone
from .candidates import build_reference, randomise_norms
from .machine import PeakMemory, median, percentile, timed

if TYPE_CHECKING:
    from ..recipes import ModelConfig

__all__ = [
    "DETECTOR_OPTIONS",
    "NUM_CLASSES",
    "TRAIN_FIELDS",
    "TRAIN_MODELS",
    "build_train_model",
    "detector_recipe",
    "run_train",
]

TRAIN_MODELS = ("backbone", "fasterrcnn_fpn")

TRAIN_FIELDS: tuple[str, ...] = (
    "backbone", "device", "batch_size", "input_size", "model", "grad_checkpointing", "checkpoint_stages", "amp_bf16",
    "status", "note",
    "images_per_s", "step_ms_p50", "step_ms_p95", "peak_memory_mib", "memory_method", "peak_rss_mib", "memory_saving",
    "time_overhead", "setup_s", "repeats",
)  # fmt: skip
"""Fields of every row of ``train`` in the JSON."""

DETECTOR_OPTIONS: tuple[str, ...] = (
    "trainable_stages", "norm", "in_chans", "min_size", "max_size", "anchor_sizes", "score_thresh", "levels",
    "fpn_channels", "box_head_width", "head_options",
)  # fmt: skip
"""Fields of a recipe's ``model:`` section that ``BenchConfig.train_model_options`` may set."""

NUM_CLASSES = 91
"""Classes of the ``fasterrcnn_fpn`` training model: COCO's, background included, as torchvision counts them."""


def detector_recipe(name: str, *, weights: str | None, options: Mapping[str, Any] | None = None) -> ModelConfig:
    """The recipe ``model:`` section of the ``fasterrcnn_fpn`` training model.

    A ``faster_rcnn`` head on ``name`` with backbone weights ``weights``, the
    recipe's defaults for everything else, updated by ``options``.

    Raises:
        ValueError: An option outside :data:`DETECTOR_OPTIONS`, or a value the recipe schema refuses.
    """
    from pydantic import ValidationError

    from ..recipes import ModelConfig  # pydantic and the data package: not at start-up

    options = dict(options or {})
    unknown = [key for key in options if key not in DETECTOR_OPTIONS]
    if unknown:
        raise ValueError(
            f"train_model_options has {unknown[0]!r}, which is not one of {DETECTOR_OPTIONS}; the bench sets "
            "head, backbone, backbone_weights (from weights) and grad_checkpointing (from train_checkpointing)."
        )
    try:
        return ModelConfig(head="faster_rcnn", backbone=name, backbone_weights=weights, **options)
    except ValidationError as exc:
        problems = "; ".join(
            ".".join(map(str, error["loc"])) + ": " + error["msg"] if error["loc"] else error["msg"]
            for error in exc.errors()
        ).rstrip(".")
        raise ValueError(f"train_model_options={options!r} is not a valid recipe model section: {problems}.") from None


def build_train_model(
    kind: str,
    name: str,
    *,
    size: int,
    weights: str | None,
    seed: int,
    device: torch.device,
    options: Mapping[str, Any] | None = None,
) -> tuple[nn.Module, Backbone]:
    """The model a training step of ``kind`` runs (in train mode, on ``device``) and its backbone.

    ``"backbone"`` is :func:`~resbackbone.create_backbone`'s, as
    :func:`~resbackbone.bench.candidates.build_reference` builds it.
    ``"fasterrcnn_fpn"`` is :func:`~resbackbone.build_detector`'s, given what
    ``resbackbone finetune`` gives it for the recipe :func:`detector_recipe`
    describes (frozen stem and C2 by default, images resized to ``size``) and
    :data:`NUM_CLASSES` classes. Random weights (``weights=None``) are seeded
    and get randomised batch-norm statistics, as every benchmarked model.

    Raises:
        ValueError: ``kind`` is not one of :data:`TRAIN_MODELS`, or a bad option.
    """
    if kind == "backbone":
        body = build_reference(name, weights=weights, seed=seed, device=device)
        return body.train(), body
    if kind != "fasterrcnn_fpn":
        raise ValueError(f"Unknown training model {kind!r}: expected one of {TRAIN_MODELS}.")
    from ..engine.builders import build_model_from_config  # torchvision: not at start-up

    torch.manual_seed(seed)
    model = build_model_from_config(
        detector_recipe(name, weights=weights, options=options), num_classes=NUM_CLASSES, image_side=size
    )
    if weights is None:
        randomise_norms(model, seed)
    return model.to(device).train(), model.backbone.body


def _boxes(batch: int, size: int, device: torch.device, generator: torch.Generator) -> list[dict[str, Tensor]]:
    targets = []
    for _ in range(batch):
        xy = torch.rand(4, 2, generator=generator) * size * 0.6
        wh = torch.rand(4, 2, generator=generator) * size * 0.3 + 8
        boxes = torch.cat([xy, (xy + wh).clamp(max=size)], dim=1)
        labels = torch.randint(1, NUM_CLASSES, (4,), generator=generator)
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
    options: Mapping[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Forward+backward step time and peak memory, plain and with gradient checkpointing.

    The two variants of one model share weights, input and targets and are
    timed in alternating rounds; ``checkpointing`` is what the second passes
    to ``set_grad_checkpointing``. The models are :func:`build_train_model`'s;
    ``options`` update the recipe of ``fasterrcnn_fpn``.

    Returns:
        One row per (model, grad_checkpointing), fields as ``TRAIN_FIELDS``.
    """
    rows = []
    for model_kind in models:
        steps, memory, setup, stages = {}, {}, {}, {}
        for variant in (False, True):
            start = time.perf_counter()
            model, body = build_train_model(
                model_kind, name, size=size, weights=weights, seed=seed, device=device, options=options
            )
            body.set_grad_checkpointing(checkpointing if variant else False)
            stages[variant] = list(body.checkpoint_stages)
            if not variant:  # the same images and boxes for both
                generator = torch.Generator().manual_seed(seed)
                x = torch.randn(batch, body.in_chans, size, size, generator=generator).to(device)
                targets = _boxes(batch, size, device, generator)
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
