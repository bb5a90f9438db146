"""Name → :class:`~resbackbone.specs.BackboneSpec`, and the built-in ResNet family.

Built-in backbones are one data table and one generic builder over timm's
``ResNet`` and ``ResNetV2``. Downstream code adds its own with
:func:`register_backbone`, directly or from an installed package through the
``resbackbone.backbones`` entry-point group (loaded on the first lookup).
"""

from __future__ import annotations

import difflib
import fnmatch
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from importlib.metadata import entry_points
from typing import Any

from .specs import IMAGENET_MEAN, IMAGENET_STD, RESNET_STAGES, RESNETV2_STAGES, BackboneSpec, StageSpec, WeightSpec

__all__ = ["get_spec", "list_backbones", "register_backbone"]

ENTRY_POINT_GROUP = "resbackbone.backbones"

_REGISTRY: dict[str, BackboneSpec] = {}
_entry_points_loaded = False


def _natural_key(name: str) -> list[Any]:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name.lower())]


def register_backbone(
    name: str,
    *,
    stages: tuple[StageSpec, ...] | None = None,
    first_conv: str | None = None,
    classifier: tuple[str, ...] | None = None,
    timm_name: str | None = None,
    torchvision_name: str | None = None,
    imagenet: WeightSpec | None = None,
    hidden: bool = False,
    description: str = "",
    stem: str | None = None,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register a backbone builder under ``name`` (a decorator).

    The builder is called as ``builder(*, in_chans, output_stride, drop_path_rate)``
    and returns the trunk: a timm ``ResNet``/``ResNetV2`` (its stage layout is
    inferred) or any module whose stages are given with ``stages=``.

    Args:
        name: Registry name; must not be registered already.
        stages: Stage layout (see :class:`~resbackbone.specs.StageSpec`); ``None``
            infers it from a timm ``ResNet``/``ResNetV2`` trunk.
        first_conv: Path of the first convolution (adapted for ``in_chans != 3``);
            ``None`` takes the first ``Conv2d`` in the built stem.
        classifier: Checkpoint key prefixes dropped when loading weights; ``None``
            takes the trunk's top-level modules that are in no stage.
        timm_name: timm architecture whose tags ``weights="timm:<tag>"`` selects.
        torchvision_name: torchvision builder whose enum ``"torchvision:<TAG>"`` selects.
        imagenet: What ``weights="imagenet"`` loads.
        hidden: Hide from :func:`list_backbones` unless ``include_hidden=True``.
        description: One line shown by ``resbackbone list``.
        stem: What the stem is (``"7x7"``, ``"deep"``), shown by ``resbackbone info``;
            ``None`` describes the built stem's convolutions.

    Returns:
        The decorator, which returns the builder unchanged.

    Raises:
        ValueError: ``name`` is already registered or not a valid identifier-like name.

    Example:
        >>> from timm.models.resnet import ResNet, BasicBlock
        >>> @register_backbone("resnet10")
        ... def resnet10(*, in_chans, output_stride, drop_path_rate):
        ...     return ResNet(BasicBlock, [1, 1, 1, 1], in_chans=in_chans,
        ...                   output_stride=output_stride, drop_path_rate=drop_path_rate)
        >>> create_backbone("resnet10")(torch.randn(1, 3, 64, 64))["C5"].shape
        torch.Size([1, 512, 2, 2])
    """
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_.\-]+", name):
        raise ValueError(
            f"Backbone name {name!r} is not valid: expected letters, digits, '_', '-' or '.', such as 'my_resnet50'."
        )

    def decorator(builder: Callable[..., Any]) -> Callable[..., Any]:
        if not callable(builder):
            raise TypeError(f"register_backbone({name!r}) decorates a builder function, got {type(builder).__name__}.")
        if name in _REGISTRY:
            raise ValueError(
                f"Backbone {name!r} is already registered. Choose another name, or unregister_backbone({name!r}) first."
            )
        _REGISTRY[name] = BackboneSpec(
            name=name,
            builder=builder,
            stages=stages,
            first_conv=first_conv,
            classifier=None if classifier is None else tuple(classifier),
            timm_name=timm_name,
            torchvision_name=torchvision_name,
            imagenet=imagenet,
            hidden=hidden,
            description=description,
            stem=stem,
        )
        return builder

    return decorator


def unregister_backbone(name: str) -> None:
    """Remove ``name`` from the registry (for tests and interactive sessions).

    Raises:
        ValueError: ``name`` is not registered.
    """
    get_spec(name)
    del _REGISTRY[name]


def _load_entry_points() -> None:
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            obj = ep.load()
        except Exception as exc:  # a broken plugin must not break the built-ins
            warnings.warn(
                f"Could not load resbackbone plugin {ep.name!r} ({ep.value}): {exc!r}. Its backbones are unavailable.",
                RuntimeWarning,
                stacklevel=3,
            )
            continue
        if callable(obj):  # a register() function; a plain module registered on import
            obj()


def list_backbones(pattern: str | None = None, *, include_hidden: bool = False) -> list[str]:
    """Names of registered backbones, naturally sorted (``resnet18`` before ``resnet101``).

    Args:
        pattern: fnmatch pattern such as ``"resnext*"``; ``None`` lists all.
        include_hidden: Include the tiny test architectures.

    Returns:
        The matching names.

    Example:
        >>> list_backbones("resnet1*")
        ['resnet18', 'resnet101', 'resnet101d', 'resnet152']
    """
    _load_entry_points()
    names = [n for n, spec in _REGISTRY.items() if include_hidden or not spec.hidden]
    if pattern is not None:
        names = fnmatch.filter(names, pattern)
    return sorted(names, key=_natural_key)


def get_spec(name: str) -> BackboneSpec:
    """The spec registered under ``name``.

    Raises:
        TypeError: ``name`` is not a string.
        ValueError: ``name`` is unknown; the message lists close matches.
    """
    if not isinstance(name, str):
        raise TypeError(f"Backbone name must be a string such as 'resnet50', got {type(name).__name__}: {name!r}.")
    _load_entry_points()
    try:
        return _REGISTRY[name]
    except KeyError:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=3, cutoff=0.6)
        hint = f" Close matches: {', '.join(repr(c) for c in close)}." if close else ""
        raise ValueError(f"Unknown backbone {name!r}.{hint} See resbackbone.list_backbones().") from None


# --------------------------------------------------------------------------------------
# Built-in backbones: one table, one builder.
# --------------------------------------------------------------------------------------


def _timm_builder(timm_name: str, *, in_chans: int, output_stride: int, drop_path_rate: float) -> Any:
    import timm

    return timm.create_model(
        timm_name,
        pretrained=False,
        num_classes=0,
        in_chans=in_chans,
        output_stride=output_stride,
        drop_path_rate=drop_path_rate,
    )


def _tv(ref: str) -> WeightSpec:
    return WeightSpec(
        source="torchvision",
        ref=ref,
        licence="BSD-3-Clause",
        origin=f"torchvision ImageNet-1k ({ref}), trained by the PyTorch team",
    )


def _timm(ref: str, mean: tuple[float, ...] = IMAGENET_MEAN, std: tuple[float, ...] = IMAGENET_STD) -> WeightSpec:
    return WeightSpec(
        source="timm",
        ref=ref,
        mean=mean,
        std=std,
        licence="Apache-2.0",
        origin=f"timm ImageNet-1k ({ref}), trained by Ross Wightman",
    )


@dataclass(frozen=True)
class _Layout:
    """What a family of trunks shares: stage layout, first convolution, classifier keys, stem."""

    stages: tuple[StageSpec, ...]
    first_conv: str
    classifier: tuple[str, ...]
    stem: str


_RESNET = _Layout(RESNET_STAGES, "conv1", ("global_pool.", "fc."), "7x7")
_RESNET_DEEP_STEM = _Layout(RESNET_STAGES, "conv1.0", ("global_pool.", "fc."), "deep")
_RESNETV2 = _Layout(RESNETV2_STAGES, "stem.conv", ("norm.", "head."), "7x7")

# name, layout, torchvision builder (or None), "imagenet" weights, description
_BUILTIN: tuple[tuple[str, _Layout, str | None, WeightSpec, str], ...] = (
    ("resnet18", _RESNET, "resnet18", _tv("IMAGENET1K_V1"), "ResNet-18, BasicBlock"),
    ("resnet34", _RESNET, "resnet34", _tv("IMAGENET1K_V1"), "ResNet-34, BasicBlock"),
    ("resnet50", _RESNET, "resnet50", _tv("IMAGENET1K_V2"), "ResNet-50, Bottleneck"),
    ("resnet101", _RESNET, "resnet101", _tv("IMAGENET1K_V2"), "ResNet-101, Bottleneck"),
    ("resnet152", _RESNET, "resnet152", _tv("IMAGENET1K_V2"), "ResNet-152, Bottleneck"),
    ("resnext50_32x4d", _RESNET, "resnext50_32x4d", _tv("IMAGENET1K_V2"), "ResNeXt-50 32x4d"),
    ("resnext101_32x8d", _RESNET, "resnext101_32x8d", _tv("IMAGENET1K_V2"), "ResNeXt-101 32x8d"),
    ("resnext101_64x4d", _RESNET, "resnext101_64x4d", _tv("IMAGENET1K_V1"), "ResNeXt-101 64x4d"),
    ("wide_resnet50_2", _RESNET, "wide_resnet50_2", _tv("IMAGENET1K_V2"), "Wide ResNet-50-2"),
    ("wide_resnet101_2", _RESNET, "wide_resnet101_2", _tv("IMAGENET1K_V2"), "Wide ResNet-101-2"),
    ("resnet50d", _RESNET_DEEP_STEM, None, _timm("ra2_in1k"), "ResNet-50-D: deep stem, average-pool shortcut"),
    ("resnet101d", _RESNET_DEEP_STEM, None, _timm("ra2_in1k"), "ResNet-101-D: deep stem, average-pool shortcut"),
    ("resnetv2_50", _RESNETV2, None, _timm("a1h_in1k", (0.5,) * 3, (0.5,) * 3), "Pre-activation ResNet-50 (v2)"),
    ("resnetv2_101", _RESNETV2, None, _timm("a1h_in1k", (0.5,) * 3, (0.5,) * 3), "Pre-activation ResNet-101 (v2)"),
)


def _register(name: str, layout: _Layout, builder: Callable[..., Any], **options: Any) -> None:
    register_backbone(
        name,
        stages=layout.stages,
        first_conv=layout.first_conv,
        classifier=layout.classifier,
        stem=layout.stem,
        **options,
    )(builder)


for _name, _layout, _tv_name, _imagenet, _description in _BUILTIN:
    _register(
        _name,
        _layout,
        partial(_timm_builder, _name),
        timm_name=_name,
        torchvision_name=_tv_name,
        imagenet=_imagenet,
        description=_description,
    )


def _tiny_resnet(block: str, *, in_chans: int, output_stride: int, drop_path_rate: float, v2: bool = False) -> Any:
    from timm.layers import BatchNormAct2d, create_conv2d
    from timm.models.resnet import BasicBlock, Bottleneck, ResNet
    from timm.models.resnetv2 import ResNetV2

    if v2:
        return ResNetV2(
            layers=[1, 1, 1, 1],
            channels=(16, 32, 64, 128),
            stem_chs=16,
            num_classes=0,
            in_chans=in_chans,
            output_stride=output_stride,
            drop_path_rate=drop_path_rate,
            conv_layer=create_conv2d,
            norm_layer=BatchNormAct2d,
        )
    return ResNet(
        BasicBlock if block == "basic" else Bottleneck,
        [1, 1, 1, 1],
        channels=(8, 16, 32, 64),
        stem_type="deep",
        stem_width=8,
        num_classes=0,
        in_chans=in_chans,
        output_stride=output_stride,
        drop_path_rate=drop_path_rate,
    )


_register(
    "test_resnet",
    _RESNET_DEEP_STEM,
    partial(_tiny_resnet, "basic"),
    hidden=True,
    description="Tiny BasicBlock ResNet for tests",
)
_register(
    "test_resnet_bottleneck",
    _RESNET_DEEP_STEM,
    partial(_tiny_resnet, "bottleneck"),
    hidden=True,
    description="Tiny Bottleneck ResNet for tests",
)
_register(
    "test_resnetv2",
    _RESNETV2,
    partial(_tiny_resnet, "bottleneck", v2=True),
    hidden=True,
    description="Tiny pre-activation ResNet for tests",
)
