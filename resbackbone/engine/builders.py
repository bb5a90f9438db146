"""From a recipe to a model, its parameter groups, optimiser and schedule, and the predictor that runs it."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ..backbone import Backbone, create_backbone
from ..heads import DETECTORS, SEGMENTERS, build_detector, build_segmenter
from ..recipes import ModelConfig, OptimConfig, Recipe
from ..specs import LEVELS
from ..tiling import Detector, Segmenter, wrap_detector, wrap_segmenter

__all__ = [
    "build_model",
    "build_model_from_config",
    "build_optimizer",
    "build_predictor",
    "build_scheduler",
    "describe_inference",
    "find_backbone",
    "input_normalization",
]


def build_model(recipe: Recipe, num_classes: int) -> nn.Module:
    """The detector or segmenter a recipe describes (:func:`build_model_from_config` at the recipe's input size).

    A detector's input side is the training crop's (``data.crop_size``, else
    ``data.image_size``): the crops it trains on, and the tiles of ``eval.tiles``,
    then go through its transform unscaled; a whole image is shrunk to fit.
    """
    side = max(recipe.data.crop_hw) if recipe.task == "detection" else max(recipe.data.size_hw)
    return build_model_from_config(recipe.model, num_classes=num_classes, image_side=side)


def build_predictor(
    model: nn.Module,
    recipe: Recipe,
    *,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    single_pass: bool = False,
) -> Segmenter | Detector:
    """What runs ``model`` in evaluation and prediction, as ``recipe.eval`` says.

    Sliding windows (segmentation) or tiles (detection) default to the training
    crop's size; whole segmentation inputs are padded as the evaluation transform
    pads them (to ``data.image_size``, with black), so every path sees the input it was checked on.

    Args:
        model: The detector or segmenter.
        recipe: Its recipe (``eval``: windows, tiles, TTA; ``data``: crop and input size).
        mean: Per-channel mean the inputs were normalised with.
        std: Per-channel std.
        single_pass: Leave out ``eval.tta`` and ``eval.tta_scales`` (windows or tiles stay): one pass.

    Returns:
        A callable from model-scale images (and the sizes to answer at) to predictions
        (:func:`~resbackbone.tiling.wrap_segmenter`, :func:`~resbackbone.tiling.wrap_detector`).
    """
    ev, data = recipe.eval, recipe.data
    if single_pass:
        ev = ev.model_copy(update={"tta": [], "tta_scales": [1.0]})
    if recipe.task == "detection":
        return wrap_detector(model, tiles=ev.tiles, tile_size=data.crop_hw, tta=ev.tta, scales=ev.tta_scales)
    black = tuple(-m / s for m, s in zip(mean, std))
    return wrap_segmenter(
        model,
        window=ev.sliding_window,
        window_size=data.crop_hw,
        tta=ev.tta,
        scales=ev.tta_scales,
        pad_value=black,
        min_size=data.size_hw,
    )


def describe_inference(recipe: Recipe) -> str:
    """How evaluation runs the model, in words: resolution, windows or tiles, TTA.

    Example:
        >>> describe_inference(recipe)
        'native resolution; sliding windows 192x192 (overlap 0.25, gaussian); TTA hflip, vflip; scales 1, 1.25'
    """
    ev, data = recipe.eval, recipe.data
    parts = ["native resolution" if ev.resolution == "native" else "model resolution (resized input)"]
    if ev.sliding_window is not None:
        w = ev.sliding_window
        h, wd = (w.size, w.size) if isinstance(w.size, int) else (w.size or data.crop_hw)
        parts.append(f"sliding windows {h}x{wd} (overlap {w.overlap:g}, {w.blend})")
    if ev.tiles is not None:
        t = ev.tiles
        h, wd = (t.size, t.size) if isinstance(t.size, int) else (t.size or data.crop_hw)
        whole = " + whole image" if t.whole else ""
        parts.append(f"tiles {h}x{wd} (overlap {t.overlap:g}, {t.merge} at {t.iou:g}){whole}")
    if ev.tta:
        parts.append("TTA " + ", ".join(ev.tta))
    if ev.tta_scales != [1.0]:
        parts.append("scales " + ", ".join(f"{s:g}" for s in ev.tta_scales))
    return "; ".join(parts)


def build_model_from_config(m: ModelConfig, *, num_classes: int, image_side: int) -> nn.Module:
    """The detector or segmenter a recipe's ``model:`` section describes, as ``resbackbone finetune`` builds it.

    ``num_classes`` counts what the head predicts: object classes plus
    background for detection, mask classes (background included) for segmentation.
    With ``model.norm`` unset each head picks its norm (frozen BN for pretrained
    detectors, as torchvision does); set, the backbone is built here with it.

    Args:
        m: The ``model:`` section.
        num_classes: Classes the head predicts.
        image_side: A detector's ``min_size``/``max_size`` where the section leaves them unset.
    """
    backbone_weights = m.backbone_weights if m.weights is None else None
    detection = m.task == "detection"
    backbone: str | Backbone = m.backbone
    if m.norm is not None:
        if detection:
            levels, output_stride = tuple(m.levels or DETECTORS[m.head].levels), 32
        else:
            spec = SEGMENTERS[m.head]
            levels = tuple(lv for lv in LEVELS if lv in spec.reads or (m.aux_loss and lv == "C4"))
            output_stride = m.output_stride or spec.output_strides[0]
        backbone = create_backbone(
            m.backbone,
            weights=backbone_weights,
            out_levels=levels,
            output_stride=output_stride,
            in_chans=m.in_chans,
            norm=m.norm,
            trainable_stages=m.trainable_stages,
        )
        backbone_weights = None
    common = {
        "backbone": backbone,
        "num_classes": num_classes,
        "weights": m.weights,
        "backbone_weights": backbone_weights,
        "trainable_stages": m.trainable_stages,
        "in_chans": m.in_chans,
    }
    if detection:
        model = build_detector(
            m.head,
            **common,
            min_size=m.min_size or image_side,
            max_size=m.max_size or image_side,
            anchor_sizes=m.anchor_sizes,
            score_thresh=m.score_thresh,
            levels=m.levels,
            fpn_channels=m.fpn_channels,
            box_head_width=m.box_head_width,
            **m.head_options,
        )
    else:
        model = build_segmenter(m.head, **common, output_stride=m.output_stride, aux_loss=m.aux_loss)
    find_backbone(model).set_grad_checkpointing(m.grad_checkpointing)
    return model


def find_backbone(model: nn.Module) -> Backbone:
    """The :class:`~resbackbone.Backbone` inside a detector or segmenter."""
    for module in model.modules():
        if isinstance(module, Backbone):
            return module
    raise TypeError(f"{type(model).__name__} holds no resbackbone Backbone.")


def input_normalization(backbone: Backbone, task: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The ``(mean, std)`` the data pipeline applies before the model.

    torchvision detectors normalise inside the model (with the backbone's
    mean/std), so detection data stays in [0, 1]; segmenters take normalised input.
    """
    if task == "detection":
        return (0.0,) * backbone.in_chans, (1.0,) * backbone.in_chans
    return backbone.mean, backbone.std


def _param_groups(model: nn.Module, backbone: Backbone, cfg: OptimConfig) -> list[dict[str, Any]]:
    """Head at ``lr``; backbone stages at ``lr * backbone_lr_mult * layer_decay**k`` (k stages below C5).

    Biases and norm parameters (1-D) get no weight decay.
    """
    stage_of: dict[int, int] = {}
    stages = backbone.all_stages
    for index, stage in enumerate(stages):
        depth = len(stages) - 1 - index  # 0 for the C5 stage
        for module in backbone.stage_modules(stage):
            for p in module.parameters():
                stage_of[id(p)] = depth
    groups: dict[tuple[str, int, bool], dict[str, Any]] = {}
    for name, p in model.named_parameters():
        depth = stage_of.get(id(p))
        if depth is None:
            scale, key_part = 1.0, "head"
        else:
            decay = cfg.layer_decay**depth if cfg.layer_decay else 1.0
            scale, key_part = cfg.backbone_lr_mult * decay, "backbone"
        no_decay = p.ndim <= 1
        key = (key_part, -1 if depth is None else depth, no_decay)
        group = groups.setdefault(
            key,
            {
                "params": [],
                "names": [],
                "lr_scale": scale,
                "weight_decay": 0.0 if no_decay else cfg.weight_decay,
                "group": f"{key_part}{'' if depth is None else f'/stage-{depth}'}{'/no_decay' if no_decay else ''}",
            },
        )
        group["params"].append(p)
        group["names"].append(name)
    return [dict(g, lr=cfg.lr * g["lr_scale"]) for g in groups.values() if g["lr_scale"] > 0]


def build_optimizer(model: nn.Module, backbone: Backbone, cfg: OptimConfig) -> torch.optim.Optimizer:
    """SGD (Nesterov momentum), AdamW or Adam over :func:`_param_groups`.

    The fused implementations are used where every parameter is a float tensor on
    a device that has them (CPU and CUDA): one kernel per step instead of a
    dozen ``foreach`` passes, which is 3–4× less optimiser time on a CPU.
    """
    groups = _param_groups(model, backbone, cfg)
    for g in groups:
        g.pop("names")
    params = [p for g in groups for p in g["params"]]
    fused = bool(params) and all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.momentum > 0, fused=fused)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr, fused=fused)
    return torch.optim.AdamW(groups, lr=cfg.lr, fused=fused)


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: OptimConfig, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up, then cosine, step or constant; stepped once per optimiser update."""
    total = max(1, cfg.epochs * steps_per_epoch)
    warmup = round(cfg.warmup_epochs * steps_per_epoch)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if cfg.schedule == "cosine":
            progress = (step - warmup) / max(1, total - warmup)
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
        if cfg.schedule == "step":
            epoch = step // max(1, steps_per_epoch)
            return cfg.gamma ** sum(epoch >= m for m in cfg.milestones)
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
