"""A torchvision feature pyramid network over any backbone, for torchvision's detectors.

Output contract of :func:`build_fpn`::

    fpn = build_fpn(create_backbone("resnet18"))          # C2–C5, extra_blocks="maxpool"
    fpn.out_channels                                      # 256
    {k: tuple(v.shape) for k, v in fpn(torch.randn(1, 3, 128, 128)).items()}
    # {'0': (1, 256, 32, 32), '1': (1, 256, 16, 16), '2': (1, 256, 8, 8), '3': (1, 256, 4, 4), 'pool': (1, 256, 2, 2)}

Keys are torchvision's (``"0"``, ``"1"``, … then ``"pool"`` or ``"p6"``, ``"p7"``),
so its default RoI poolers and anchor generators work unchanged, and the
module's state-dict layout (``body.*``, ``fpn.*``) is that of torchvision's
``BackboneWithFPN``: torchvision detector checkpoints load key for key.
"""

from __future__ import annotations

import itertools
import math
from collections import OrderedDict
from collections.abc import Callable, Sequence

from torch import Tensor, nn
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import ExtraFPNBlock, LastLevelMaxPool, LastLevelP6P7

from ..backbone import Backbone
from ..specs import LEVELS

__all__ = ["EXTRA_BLOCKS", "EXTRA_BLOCK_BUILDERS", "FPN_NORMS", "FPN_NORM_LAYERS", "FeaturePyramid", "build_fpn"]


def _group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(32, channels), channels)


def _p6p7_from_c5(c5_channels: int, out_channels: int) -> ExtraFPNBlock:
    block = LastLevelP6P7(c5_channels, out_channels)
    block.use_P5 = False  # from C5 even when its width equals out_channels
    return block


EXTRA_BLOCK_BUILDERS: dict[str | None, Callable[[int, int], ExtraFPNBlock] | None] = {
    "maxpool": lambda c5_channels, out_channels: LastLevelMaxPool(),
    "p6p7": lambda c5_channels, out_channels: LastLevelP6P7(out_channels, out_channels),
    "p6p7_c5": _p6p7_from_c5,
    None: None,
}
"""``extra_blocks`` name → ``make(c5_channels, out_channels)`` of the maps past the last level."""

EXTRA_BLOCKS: tuple[str | None, ...] = tuple(EXTRA_BLOCK_BUILDERS)
"""The ``extra_blocks`` values :func:`build_fpn` takes."""

FPN_NORM_LAYERS: dict[str | None, Callable[[int], nn.Module] | None] = {
    None: None,
    "bn": nn.BatchNorm2d,
    "gn": _group_norm,
}
"""``norm`` name → the norm layer inside the FPN."""

FPN_NORMS: tuple[str | None, ...] = tuple(FPN_NORM_LAYERS)
"""The ``norm`` values :func:`build_fpn` takes."""


class FeaturePyramid(nn.Module):
    """A :class:`~resbackbone.Backbone` and a torchvision ``FeaturePyramidNetwork`` over its levels.

    Build it with :func:`build_fpn`. It follows torchvision's detection backbone
    contract: an ``int`` ``out_channels`` and an ``OrderedDict`` of maps of that width.

    Attributes:
        body: The backbone.
        fpn: The ``torchvision.ops.FeaturePyramidNetwork``.
        out_channels: Channels of every pyramid map.
        levels: Backbone levels fed to the FPN, in order (``("C2", …, "C5")``).
        strides: Stride of each output map, keyed as the output.
    """

    def __init__(self, body: Backbone, fpn: FeaturePyramidNetwork, *, levels: Sequence[str], out_channels: int) -> None:
        super().__init__()
        self.body = body
        self.fpn = fpn
        self.levels = tuple(levels)
        self.out_channels = out_channels
        strides = {str(i): body.feature_info[lv].stride for i, lv in enumerate(self.levels)}
        last = strides[str(len(self.levels) - 1)]
        extra = fpn.extra_blocks
        if isinstance(extra, LastLevelMaxPool):
            strides["pool"] = last * 2
        elif isinstance(extra, LastLevelP6P7):
            strides.update(p6=last * 2, p7=last * 4)
        self.strides = strides

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor]:
        """Pyramid maps for normalised images ``(N, in_chans, H, W)``.

        Returns:
            ``OrderedDict`` ``"0"``, ``"1"``, … (one per level, finest first), then
            ``"pool"`` or ``"p6"``, ``"p7"``; each ``(N, out_channels, ⌈H/s⌉, ⌈W/s⌉)``.
        """
        features = self.body(x)
        return self.fpn(OrderedDict((str(i), features[level]) for i, level in enumerate(self.levels)))


def build_fpn(
    backbone: Backbone,
    *,
    out_channels: int = 256,
    extra_blocks: str | None = "maxpool",
    norm: str | None = None,
    levels: Sequence[str] | None = None,
) -> FeaturePyramid:
    """Put a torchvision ``FeaturePyramidNetwork`` on a backbone, for torchvision detectors.

    Input channels come from ``backbone.feature_info``, so BasicBlock (C5 = 512)
    and Bottleneck (C5 = 2048) backbones both work.

    Args:
        backbone: A :class:`~resbackbone.Backbone`; its levels must have strides
            that double (build it with ``output_stride=32``).
        out_channels: Width of every pyramid map.
        extra_blocks: ``"maxpool"`` (a ``"pool"`` map, as Faster/Mask R-CNN use),
            ``"p6p7"`` (``"p6"``, ``"p7"`` from P5, as torchvision's RetinaNet),
            ``"p6p7_c5"`` (P6 from C5, as the RetinaNet paper and torchvision's
            RetinaNet v2) or ``None``.
        norm: Norm inside the FPN: ``None``, ``"bn"`` or ``"gn"``.
        levels: Backbone levels to use; ``None`` uses all it returns.

    Returns:
        The :class:`FeaturePyramid`.

    Raises:
        TypeError: ``backbone`` is not a :class:`~resbackbone.Backbone`.
        ValueError: An option is not one of the listed values, a level is not
            returned by the backbone, or the strides do not double.

    Example:
        >>> from torchvision.models.detection import FasterRCNN
        >>> model = FasterRCNN(build_fpn(create_backbone("resnet18")), num_classes=3)
    """
    if not isinstance(backbone, Backbone):
        raise TypeError(
            f"build_fpn() takes a resbackbone Backbone (from create_backbone()), got {type(backbone).__name__}."
        )
    if isinstance(out_channels, bool) or not isinstance(out_channels, int) or out_channels < 1:
        raise ValueError(f"build_fpn(): out_channels={out_channels!r} is not valid: expected an int ≥ 1.")
    if extra_blocks not in EXTRA_BLOCKS:
        raise ValueError(f"build_fpn(): extra_blocks={extra_blocks!r} is not valid: expected one of {EXTRA_BLOCKS}.")
    if norm not in FPN_NORMS:
        raise ValueError(f"build_fpn(): norm={norm!r} is not valid: expected one of {FPN_NORMS}.")
    info = backbone.feature_info
    if levels is None:
        levels = info.names
    elif isinstance(levels, str) or not all(isinstance(lv, str) for lv in levels):
        raise TypeError("build_fpn(): levels must be a sequence of level names such as ('C3', 'C4', 'C5').")
    if not levels or not set(levels) <= set(info.names):
        raise ValueError(
            f"build_fpn(): levels must be a non-empty subset of the levels backbone {backbone.name!r} returns, "
            f"{info.names}, got {tuple(levels)}; build it with create_backbone(..., out_levels=...) to return others."
        )
    levels = tuple(lv for lv in LEVELS if lv in levels)
    strides = [info[lv].stride for lv in levels]
    if any(b != 2 * a for a, b in itertools.pairwise(strides)):
        raise ValueError(
            f"build_fpn(): the strides of levels {levels} are {tuple(strides)}; a detection FPN needs each level "
            f"at twice the stride of the previous one. Build the backbone with output_stride=32 "
            f"(it has {backbone.output_stride})."
        )
    channels = [info[lv].channels for lv in levels]
    make_extra = EXTRA_BLOCK_BUILDERS[extra_blocks]
    extra = make_extra(channels[-1], out_channels) if make_extra is not None else None
    fpn = FeaturePyramidNetwork(channels, out_channels, extra_blocks=extra, norm_layer=FPN_NORM_LAYERS[norm])
    return FeaturePyramid(backbone, fpn, levels=levels, out_channels=out_channels)
