"""Checks and backbone resolution shared by the detection and segmentation builders."""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Any

from ..backbone import Backbone, create_backbone
from ..specs import LEVELS
from ..weights import WeightsArg

__all__ = ["check_arch", "check_num_classes", "resolve_backbone"]


def check_arch(arch: Any, valid: Sequence[str], builder: str) -> str:
    """``arch`` if it is one of ``valid``, else a ValueError listing them."""
    if not isinstance(arch, str) or arch not in valid:
        raise ValueError(f"{builder}(): unknown arch {arch!r}; expected one of {', '.join(map(repr, valid))}.")
    return arch


def check_num_classes(num_classes: Any, builder: str, note: str = "") -> int:
    """``num_classes`` as an int ≥ 1, else a ValueError."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, numbers.Integral) or num_classes < 1:
        raise ValueError(f"{builder}(): num_classes={num_classes!r} is not valid: expected an int ≥ 1{note}.")
    return int(num_classes)


def resolve_backbone(
    backbone: str | Backbone,
    *,
    builder: str,
    head: str,
    need: Sequence[str],
    build_levels: Sequence[str],
    weights: WeightsArg,
    output_stride: int,
    in_chans: int,
    norm: str,
    trainable_stages: int | None,
) -> Backbone:
    """A :class:`Backbone` for a head: built from a registry name, or checked when already built.

    Args:
        backbone: Registry name or a built :class:`Backbone`.
        builder: Name of the calling builder, for messages.
        head: What needs the levels (``"DeepLabV3+"``), for messages.
        need: Levels the head reads; a built backbone must return them.
        build_levels: ``out_levels`` used when building from a name.
        weights: Backbone weights (``backbone_weights``), loaded into a built backbone too.
        output_stride: Output stride the head needs.
        in_chans: Input channels the head takes.
        norm: Norm used when building from a name.
        trainable_stages: Applied to the backbone whatever its origin.

    Raises:
        TypeError: ``backbone`` is neither a name nor a :class:`Backbone`.
        ValueError: A built backbone lacks a level, has another output stride or
            another number of input channels.
    """
    if isinstance(in_chans, bool) or not isinstance(in_chans, numbers.Integral) or in_chans < 1:
        raise ValueError(f"{builder}(): in_chans={in_chans!r} is not valid: expected an int ≥ 1.")
    if isinstance(backbone, str):
        return create_backbone(
            backbone,
            weights=weights,
            out_levels=tuple(build_levels),
            output_stride=output_stride,
            in_chans=int(in_chans),
            norm=norm,
            trainable_stages=trainable_stages,
        )
    if not isinstance(backbone, Backbone):
        raise TypeError(
            f"{builder}(): backbone must be a registry name such as 'resnet50' or a resbackbone Backbone "
            f"(from create_backbone()), got {type(backbone).__name__}."
        )
    names = backbone.feature_info.names
    missing = [level for level in need if level not in names]
    levels = tuple(lv for lv in LEVELS if lv in (*names, *need))
    if missing:
        raise ValueError(
            f"{builder}(): {head} needs levels {tuple(need)}, but backbone {backbone.name!r} returns {names} "
            f"({', '.join(missing)} missing). Build it with create_backbone({backbone.name!r}, out_levels={levels})."
        )
    if backbone.output_stride != output_stride:
        raise ValueError(
            f"{builder}(): {head} needs output_stride={output_stride}, but backbone {backbone.name!r} was built "
            f"with output_stride={backbone.output_stride}. Build it with "
            f"create_backbone({backbone.name!r}, output_stride={output_stride}), or pass the name instead."
        )
    if backbone.in_chans != in_chans:
        raise ValueError(
            f"{builder}(): in_chans={in_chans} but backbone {backbone.name!r} takes {backbone.in_chans}-channel "
            f"input. Pass in_chans={backbone.in_chans}, or build the backbone with in_chans={in_chans}."
        )
    if weights is not None:
        backbone.load_weights(weights)
    backbone.set_trainable_stages(trainable_stages)
    return backbone
