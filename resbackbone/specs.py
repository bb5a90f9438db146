"""Frozen descriptions of backbones, their weights and their feature pyramid.

Nothing here imports torch: a spec can be listed, printed and compared without
building a model. The registry (:mod:`resbackbone.registry`) maps names to
:class:`BackboneSpec`; :mod:`resbackbone.backbone` turns a spec into a module.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, overload

LEVELS: tuple[str, ...] = ("C2", "C3", "C4", "C5")
"""Pyramid levels in order; ``Ck`` has a nominal stride of ``2**k``."""

NOMINAL_STRIDES: dict[str, int] = {"C2": 4, "C3": 8, "C4": 16, "C5": 32}
OUTPUT_STRIDES: tuple[int, ...] = (8, 16, 32)
NORMS: tuple[str, ...] = ("bn", "frozen_bn", "gn", "sync_bn")

IMAGENET_MEAN: tuple[float, ...] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, ...] = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class LevelInfo:
    """One pyramid level.

    Attributes:
        name: ``"C2"`` … ``"C5"``.
        channels: Number of channels of the level's feature map.
        stride: Input pixels per feature-map pixel (4, 8, 16 or 32, less when dilated).
        module: Path of the module whose output is this level (``"layer3"``).
    """

    name: str
    channels: int
    stride: int
    module: str


class FeatureInfo(Sequence[LevelInfo]):
    """The pyramid a backbone returns: levels in order, with channels and strides.

    Index it by level name or position; iterate it in level order.

    Example:
        >>> info = create_backbone("resnet18").feature_info
        >>> info["C4"].channels, info["C4"].stride
        (256, 16)
        >>> [level.name for level in info]
        ['C2', 'C3', 'C4', 'C5']
    """

    def __init__(self, levels: Sequence[LevelInfo]) -> None:
        self._levels = tuple(levels)
        self._by_name = {level.name: level for level in self._levels}

    @overload
    def __getitem__(self, key: int | str) -> LevelInfo: ...

    @overload
    def __getitem__(self, key: slice) -> FeatureInfo: ...

    def __getitem__(self, key: int | str | slice) -> LevelInfo | FeatureInfo:
        if isinstance(key, slice):
            return FeatureInfo(self._levels[key])
        if isinstance(key, str):
            try:
                return self._by_name[key]
            except KeyError:
                raise KeyError(f"Level {key!r} is not in this pyramid; it has {list(self.names)}.") from None
        return self._levels[key]

    def __len__(self) -> int:
        return len(self._levels)

    def __iter__(self) -> Iterator[LevelInfo]:
        return iter(self._levels)

    def __contains__(self, key: object) -> bool:
        return key in self._by_name or key in self._levels

    def __eq__(self, other: object) -> bool:
        return isinstance(other, FeatureInfo) and self._levels == other._levels

    def __hash__(self) -> int:
        return hash(self._levels)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(level.name for level in self._levels)

    @property
    def channels(self) -> tuple[int, ...]:
        return tuple(level.channels for level in self._levels)

    @property
    def strides(self) -> tuple[int, ...]:
        return tuple(level.stride for level in self._levels)

    def __repr__(self) -> str:
        inner = ", ".join(f"{lv.name}(channels={lv.channels}, stride={lv.stride})" for lv in self._levels)
        return f"FeatureInfo([{inner}])"


@dataclass(frozen=True)
class StageSpec:
    """A unit of the trunk that is run, frozen and checkpointed as a whole.

    Attributes:
        name: Stage name used in messages (``"stem"``, ``"layer1"``).
        modules: Module paths run in this order (``("conv1", "bn1", "act1", "maxpool")``).
        level: The pyramid level this stage's output is, or ``None`` (the stem).
    """

    name: str
    modules: tuple[str, ...]
    level: str | None = None


RESNET_STAGES: tuple[StageSpec, ...] = (
    StageSpec("stem", ("conv1", "bn1", "act1", "maxpool")),
    StageSpec("layer1", ("layer1",), "C2"),
    StageSpec("layer2", ("layer2",), "C3"),
    StageSpec("layer3", ("layer3",), "C4"),
    StageSpec("layer4", ("layer4",), "C5"),
)
"""Stage layout of timm's ``ResNet`` (torchvision's module names)."""

RESNETV2_STAGES: tuple[StageSpec, ...] = (
    StageSpec("stem", ("stem",)),
    StageSpec("stages.0", ("stages.0",), "C2"),
    StageSpec("stages.1", ("stages.1",), "C3"),
    StageSpec("stages.2", ("stages.2",), "C4"),
    StageSpec("stages.3", ("stages.3",), "C5"),
)
"""Stage layout of timm's pre-activation ``ResNetV2``.

C5 is the output of the last stage before the final norm, as timm's
``features_only`` returns it; the final norm belongs to the classifier.
"""


@dataclass(frozen=True)
class WeightSpec:
    """Where a checkpoint comes from and how its inputs were normalised.

    Attributes:
        source: ``"torchvision"``, ``"timm"``, ``"url"`` or ``"file"`` (a local
            file that records what it holds: a run's checkpoint, an exported backbone).
        ref: The torchvision enum member (``"IMAGENET1K_V2"``), the timm tag
            (``"a1_in1k"``), the URL or the file.
        sha256: Expected sha256 of the file, where known.
        mean: Per-channel mean of the preprocessing, in [0, 1].
        std: Per-channel std of the preprocessing.
        licence: Licence of the weights.
        origin: Who trained them and how, in a phrase.
        architecture: The registry name the weights were trained as, where the file records it.
        in_chans: The input channels they were trained with, where the file records it.
    """

    source: str
    ref: str
    sha256: str | None = None
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    licence: str = ""
    origin: str = ""
    architecture: str | None = None
    in_chans: int | None = None

    @property
    def string(self) -> str:
        """The weight string that selects this checkpoint (``"torchvision:IMAGENET1K_V2"``)."""
        if self.source == "url":
            return f"{self.ref}#sha256={self.sha256}" if self.sha256 else self.ref
        if self.source == "file":
            return self.ref
        return f"{self.source}:{self.ref}"


@dataclass(frozen=True)
class BackboneSpec:
    """Everything the registry knows about one backbone name.

    Attributes:
        name: Registry name (``"resnet50"``).
        builder: ``builder(*, in_chans, output_stride, drop_path_rate) -> nn.Module``
            returning the trunk; the classifier may be present and is dropped.
        stages: Stage layout; ``None`` infers it from the trunk's class (timm
            ``ResNet`` or ``ResNetV2``).
        first_conv: Path of the first convolution, adapted for ``in_chans != 3``;
            ``None`` takes the first ``Conv2d`` of the stem.
        classifier: Checkpoint key prefixes that belong to the classifier and are
            dropped when loading (``("fc.",)``); ``None`` takes the trunk's
            top-level modules that are in no stage (``fc``, ``global_pool``).
        timm_name: timm architecture name for ``"timm:<tag>"`` weights.
        torchvision_name: torchvision builder name for ``"torchvision:<TAG>"`` weights.
        imagenet: What ``weights="imagenet"`` means for this architecture.
        hidden: Hidden from the default listing (test architectures).
        description: One line for listings.
        stem: What the stem is (``"7x7"``: one 7×7 convolution; ``"deep"``: three
            3×3 convolutions, as ResNet-D); ``None`` describes the built stem's convolutions.
    """

    name: str
    builder: Callable[..., Any]
    stages: tuple[StageSpec, ...] | None = None
    first_conv: str | None = None
    classifier: tuple[str, ...] | None = None
    timm_name: str | None = None
    torchvision_name: str | None = None
    imagenet: WeightSpec | None = None
    hidden: bool = False
    description: str = ""
    stem: str | None = None


# ------------------------------------------------------------------ checks of spec values


def check_int(name: str, value: Any, allowed: Sequence[int] | None = None, *, minimum: int | None = None) -> int:
    """``value`` as an int if it is one of ``allowed`` (or ≥ ``minimum``), else a ValueError naming it."""
    ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    ok = ok and (allowed is None or value in allowed) and (minimum is None or value >= minimum)
    if not ok:
        expected = f"one of {tuple(allowed)}" if allowed is not None else f"an int ≥ {minimum}"
        raise ValueError(f"{name}={value!r} is not valid: expected {expected}.")
    return int(value)


def check_levels(out_levels: Any) -> tuple[str, ...]:
    """``out_levels`` as a tuple of distinct level names in pyramid order, else a clear error.

    Raises:
        TypeError: ``out_levels`` is not a sequence.
        ValueError: It is empty, names something that is not a level, or a level twice.
    """
    if isinstance(out_levels, str):
        out_levels = (out_levels,)
    try:
        levels = tuple(out_levels)
    except TypeError:
        raise TypeError(
            f"out_levels must be a sequence of level names such as ('C3', 'C4', 'C5'), got {out_levels!r}."
        ) from None
    bad = [lv for lv in levels if lv not in LEVELS]
    if not levels or bad:
        raise ValueError(
            f"out_levels={out_levels!r} is not valid: expected a non-empty subset of {LEVELS}"
            + (f"; {bad[0]!r} is not a level." if bad else ".")
        )
    if len(set(levels)) != len(levels):
        raise ValueError(f"out_levels={out_levels!r} names a level twice; list each of {LEVELS} at most once.")
    return tuple(lv for lv in LEVELS if lv in levels)
