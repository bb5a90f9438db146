"""Detection heads: a torchvision FPN over any backbone, Faster R-CNN and RetinaNet.

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
import logging
import math
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any

from torch import Tensor, nn
from torchvision.models.detection import FasterRCNN, RetinaNet
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import FeaturePyramidNetwork, MultiScaleRoIAlign
from torchvision.ops.feature_pyramid_network import ExtraFPNBlock, LastLevelMaxPool, LastLevelP6P7

from ..backbone import Backbone
from ..specs import LEVELS
from ..weights import WeightsArg
from ._checkpoints import load_head_checkpoint, read_head_checkpoint
from ._common import check_arch, check_num_classes, resolve_backbone

__all__ = ["DETECTOR_ARCHS", "EXTRA_BLOCKS", "FeaturePyramid", "build_detector", "build_fpn"]

logger = logging.getLogger("resbackbone")

DETECTOR_ARCHS: tuple[str, ...] = ("faster_rcnn", "retinanet")
EXTRA_BLOCKS: tuple[str | None, ...] = ("maxpool", "p6p7", "p6p7_c5", None)
FPN_NORMS: tuple[str | None, ...] = (None, "bn", "gn")

# Checkpoints torchvision publishes, by (arch, backbone): the builder whose weight enum serves them.
TORCHVISION_DETECTORS: dict[tuple[str, str], str] = {
    ("faster_rcnn", "resnet50"): "fasterrcnn_resnet50_fpn",
    ("retinanet", "resnet50"): "retinanet_resnet50_fpn",
}
# Layers whose shape depends on num_classes, re-initialised when it differs from the checkpoint's.
_CLASS_LAYERS: dict[str, tuple[str, ...]] = {
    "faster_rcnn": ("roi_heads.box_predictor.cls_score.", "roi_heads.box_predictor.bbox_pred."),
    "retinanet": ("head.classification_head.cls_logits.",),
}
# Levels a head is built on from a name, and those it needs from a built backbone (Faster R-CNN
# takes whatever levels a built backbone returns; anchors and RoI pooling follow them).
_LEVELS: dict[str, tuple[str, ...]] = {"faster_rcnn": LEVELS, "retinanet": ("C3", "C4", "C5")}
_NEEDS: dict[str, tuple[str, ...]] = {"faster_rcnn": (), "retinanet": ("C3", "C4", "C5")}


def _group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(32, channels), channels)


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
    extra: ExtraFPNBlock | None
    if extra_blocks == "maxpool":
        extra = LastLevelMaxPool()
    elif extra_blocks == "p6p7":
        extra = LastLevelP6P7(out_channels, out_channels)
    elif extra_blocks == "p6p7_c5":
        extra = LastLevelP6P7(channels[-1], out_channels)
        extra.use_P5 = False  # from C5 even when its width equals out_channels
    else:
        extra = None
    norm_layer = {None: None, "bn": nn.BatchNorm2d, "gn": partial(_group_norm)}[norm]
    fpn = FeaturePyramidNetwork(channels, out_channels, extra_blocks=extra, norm_layer=norm_layer)
    return FeaturePyramid(backbone, fpn, levels=levels, out_channels=out_channels)


class _CheckedTransform(GeneralizedRCNNTransform):
    """torchvision's detection transform, with the input checks that name the problem."""

    def __init__(
        self,
        min_size: int,
        max_size: int,
        image_mean: list[float],
        image_std: list[float],
        *,
        in_chans: int,
        num_classes: int,
        first_label: int,
    ) -> None:
        super().__init__(min_size, max_size, image_mean, image_std)
        self.in_chans = in_chans
        self.num_classes = num_classes
        self.first_label = first_label

    def forward(
        self, images: list[Tensor], targets: list[dict[str, Tensor]] | None = None
    ) -> tuple[Any, list[dict[str, Tensor]] | None]:
        for i, image in enumerate(images):
            if not isinstance(image, Tensor) or image.ndim != 3 or image.shape[0] != self.in_chans:
                shape = tuple(image.shape) if isinstance(image, Tensor) else type(image).__name__
                raise ValueError(
                    f"images[{i}] is {shape}; this detector takes ({self.in_chans}, H, W) float images in [0, 1]."
                )
            if image.shape[1] < 1 or image.shape[2] < 1:
                raise ValueError(f"images[{i}] is {tuple(image.shape)}: an empty image cannot be detected on.")
        for i, target in enumerate(targets or []):
            labels = target.get("labels") if isinstance(target, Mapping) else None
            if isinstance(labels, Tensor) and labels.numel():
                low, high = int(labels.min()), int(labels.max())
                if low < self.first_label or high >= self.num_classes:
                    raise ValueError(
                        f"targets[{i}]['labels'] holds {low if low < self.first_label else high}; this detector "
                        f"has num_classes={self.num_classes}, so labels must be in {self.first_label}…"
                        f"{self.num_classes - 1}" + (" (0 is the background)." if self.first_label else ".")
                    )
        return super().forward(images, targets)


def _anchors(
    arch: str,
    strides: Sequence[int],
    anchor_sizes: Sequence[Sequence[int]] | None,
    aspect_ratios: Sequence[Sequence[float]] | None,
) -> AnchorGenerator:
    if anchor_sizes is None:
        if arch == "retinanet":  # torchvision: 32 at stride 8, three octave scales
            anchor_sizes = [tuple(int(4 * s * 2 ** (i / 3)) for i in range(3)) for s in strides]
        else:  # torchvision: 32 at stride 4
            anchor_sizes = [(8 * s,) for s in strides]
    try:
        sizes = tuple(tuple(int(v) for v in level) for level in anchor_sizes)
    except TypeError:
        raise TypeError(
            f"build_detector(): anchor_sizes must be one tuple of sizes per pyramid map, such as "
            f"((32,), (64,), …), got {anchor_sizes!r}."
        ) from None
    if len(sizes) != len(strides):
        raise ValueError(
            f"build_detector(): anchor_sizes has {len(sizes)} entries but the pyramid has {len(strides)} maps "
            f"(strides {tuple(strides)}); give one tuple of sizes per map."
        )
    ratios_in = ((0.5, 1.0, 2.0),) if aspect_ratios is None else aspect_ratios
    try:
        ratios = tuple(tuple(float(v) for v in level) for level in ratios_in)
    except TypeError:
        raise TypeError(
            f"build_detector(): aspect_ratios must be tuples of ratios, such as ((0.5, 1.0, 2.0),), "
            f"got {aspect_ratios!r}."
        ) from None
    if len(ratios) == 1:
        ratios = ratios * len(sizes)
    if len(ratios) != len(sizes):
        raise ValueError(
            f"build_detector(): aspect_ratios has {len(ratios)} entries; give one (used for every map) or "
            f"{len(sizes)}, one per pyramid map."
        )
    counts = {len(s) * len(r) for s, r in zip(sizes, ratios)}
    if len(counts) != 1:
        raise ValueError(
            f"build_detector(): anchor_sizes and aspect_ratios give {sorted(counts)} anchors per location on "
            "different maps; the shared head needs the same number on every map."
        )
    return AnchorGenerator(sizes, ratios)


# Constructor arguments build_detector sets itself, from its own parameters or the backbone.
_OWN_ARGS = frozenset(
    {"self", "backbone", "num_classes", "min_size", "max_size", "image_mean", "image_std", "kwargs"}
    | {"rpn_anchor_generator", "anchor_generator", "box_roi_pool", "box_score_thresh", "score_thresh"}
    | {"box_detections_per_img", "detections_per_img"}
)


def check_head_kwargs(arch: str, head_kwargs: Mapping[str, Any]) -> None:
    """Refuse keyword arguments the torchvision head does not take, naming the ones it does."""
    import difflib
    import inspect

    cls = FasterRCNN if arch == "faster_rcnn" else RetinaNet
    valid = sorted(set(inspect.signature(cls.__init__).parameters) - _OWN_ARGS)
    for key in head_kwargs:
        if key not in valid:
            close = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise TypeError(
                f"build_detector({arch!r}): {key!r} is not an option of torchvision's {cls.__name__} that "
                f"can be passed through.{hint} Valid: {', '.join(valid)}."
            )


def build_detector(
    arch: str,
    *,
    backbone: str | Backbone,
    num_classes: int,
    weights: WeightsArg = None,
    backbone_weights: WeightsArg = None,
    trainable_stages: int | None = 3,
    min_size: int = 800,
    max_size: int = 1333,
    anchor_sizes: Sequence[Sequence[int]] | None = None,
    aspect_ratios: Sequence[Sequence[float]] | None = None,
    score_thresh: float = 0.05,
    detections_per_img: int = 100,
    in_chans: int = 3,
    levels: Sequence[str] | None = None,
    fpn_channels: int = 256,
    **head_kwargs: Any,
) -> FasterRCNN | RetinaNet:
    """Build a torchvision Faster R-CNN or RetinaNet on any registered backbone.

    Faster R-CNN uses C2–C5 and a max-pooled level; RetinaNet uses C3–C5 and
    P6/P7 from P5, as torchvision builds them. Anchors follow the strides (32 px
    at stride 4 for Faster R-CNN, three octave scales from 32 px at stride 8 for
    RetinaNet: torchvision's defaults). The model normalises its inputs with
    the backbone's ``mean``/``std``; a backbone built from a name with
    pretrained ``weights``/``backbone_weights`` uses frozen batch norm, as
    torchvision's detectors do.

    In training, ``model(images, targets)`` takes a list of ``(in_chans, H, W)``
    float images in [0, 1] and a list of ``{"boxes": (K, 4) xyxy, "labels": (K,)}``
    and returns a dict of losses; in eval, ``model(images)`` returns one
    ``{"boxes", "scores", "labels"}`` dict per image.

    Args:
        arch: ``"faster_rcnn"`` or ``"retinanet"``.
        backbone: Registry name, or a built :class:`~resbackbone.Backbone`
            (returning C2–C5, or C3–C5 for RetinaNet, at ``output_stride=32``).
        num_classes: Classes as torchvision counts them: Faster R-CNN includes
            the background (label 0), so COCO is 91; RetinaNet labels are 0…num_classes-1.
        weights: Whole-detector checkpoint: ``"torchvision:COCO_V1"`` (for
            ``backbone="resnet50"``), a local file or ``https://…#sha256=`` URL in
            torchvision's layout, or a state dict. With another ``num_classes``
            the class-dependent layers are re-initialised; ``model.load_report`` says which.
        backbone_weights: Backbone weight string (``"imagenet"``, …), as for
            :func:`~resbackbone.create_backbone`.
        trainable_stages: Backbone stages trained, counted from C5 (0–5; ``None`` all);
            applied to a built backbone too.
        min_size: Images are resized so their short side is ``min_size``…
        max_size: …and their long side at most ``max_size``.
        anchor_sizes: One tuple of sizes per pyramid map; ``None`` follows the strides.
        aspect_ratios: One tuple of ratios for every map, or one per map.
        score_thresh: Detections scoring less are dropped in eval.
        detections_per_img: Detections kept per image in eval.
        in_chans: Input channels; the first conv and the normalisation are adapted.
        levels: Faster R-CNN: backbone levels the FPN is built on; ``None`` takes C2–C5
            (or what a built backbone returns). ``("C3", "C4", "C5")`` drops the
            stride-4 maps, where the FPN and RPN convolutions cost most (a CPU budget).
            RetinaNet always uses C3–C5.
        fpn_channels: Width of the FPN maps (256 in torchvision; 128 quarters the cost
            of the FPN, RPN and RoI-head convolutions).
        **head_kwargs: Further keyword arguments of torchvision's ``FasterRCNN`` or
            ``RetinaNet`` (e.g. ``rpn_post_nms_top_n_train=1000``,
            ``box_batch_size_per_image=256``, ``fg_iou_thresh=0.5``).

    Returns:
        ``torchvision.models.detection.FasterRCNN`` or ``RetinaNet``, with
        ``load_report`` set when ``weights`` was given.

    Raises:
        ValueError: Unknown ``arch``, ``num_classes < 1``, a backbone without the
            levels or stride the head needs, anchors that do not fit the pyramid,
            both ``weights`` and ``backbone_weights``, or a checkpoint that does not fit.
        TypeError: ``backbone`` is neither a name nor a Backbone, or a ``head_kwargs``
            key that the torchvision head does not take (or that this builder sets itself).

    Example:
        >>> model = build_detector("faster_rcnn", backbone="resnet18", num_classes=3, min_size=128, max_size=128)
        >>> model.eval()([torch.rand(3, 120, 160)])[0].keys()
        dict_keys(['boxes', 'labels', 'scores'])
    """
    arch = check_arch(arch, DETECTOR_ARCHS, "build_detector")
    num_classes = check_num_classes(
        num_classes, "build_detector", " (Faster R-CNN counts the background: 2 for one object class)"
    )
    if weights is not None and backbone_weights is not None:
        raise ValueError(
            "build_detector(): pass weights= (a whole-detector checkpoint, backbone included) or "
            "backbone_weights=, not both."
        )
    if isinstance(min_size, bool) or not isinstance(min_size, int) or min_size < 1:
        raise ValueError(f"build_detector(): min_size={min_size!r} is not valid: expected an int ≥ 1.")
    if isinstance(max_size, bool) or not isinstance(max_size, int) or max_size < min_size:
        raise ValueError(f"build_detector(): max_size={max_size!r} is not valid: expected an int ≥ min_size.")
    if isinstance(score_thresh, bool) or not isinstance(score_thresh, (int, float)) or not 0 <= score_thresh <= 1:
        raise ValueError(f"build_detector(): score_thresh={score_thresh!r} is not valid: expected a float in [0, 1].")
    if isinstance(detections_per_img, bool) or not isinstance(detections_per_img, int) or detections_per_img < 1:
        raise ValueError(
            f"build_detector(): detections_per_img={detections_per_img!r} is not valid: expected an int ≥ 1."
        )

    check_head_kwargs(arch, head_kwargs)
    if levels is not None:
        if isinstance(levels, str) or not all(isinstance(lv, str) for lv in levels):
            raise TypeError("build_detector(): levels must be a sequence of level names such as ('C3', 'C4', 'C5').")
        if arch == "retinanet" and tuple(levels) != _LEVELS["retinanet"]:
            raise ValueError(f"build_detector('retinanet'): levels={tuple(levels)}; RetinaNet uses C3–C5 (P3–P7).")
        if not levels or not set(levels) <= set(LEVELS):
            raise ValueError(f"build_detector(): levels={tuple(levels)} is not valid: expected a subset of {LEVELS}.")

    body = resolve_backbone(
        backbone,
        builder="build_detector",
        head={"faster_rcnn": "Faster R-CNN", "retinanet": "RetinaNet"}[arch],
        need=tuple(levels) if levels is not None else _NEEDS[arch],
        build_levels=tuple(levels) if levels is not None else _LEVELS[arch],
        weights=backbone_weights,
        output_stride=32,
        in_chans=in_chans,
        norm="frozen_bn" if backbone_weights is not None else "bn",
        trainable_stages=trainable_stages,
    )
    if levels is None:
        levels = _LEVELS[arch] if arch == "retinanet" else body.feature_info.names
    if arch == "faster_rcnn":
        fpn = build_fpn(body, out_channels=fpn_channels, extra_blocks="maxpool", levels=levels)
        anchors = _anchors(arch, list(fpn.strides.values()), anchor_sizes, aspect_ratios)
        model: FasterRCNN | RetinaNet = FasterRCNN(
            fpn,
            num_classes=num_classes,
            rpn_anchor_generator=anchors,
            box_roi_pool=MultiScaleRoIAlign([k for k in fpn.strides if k != "pool"], output_size=7, sampling_ratio=2),
            box_score_thresh=score_thresh,
            box_detections_per_img=detections_per_img,
            **head_kwargs,
        )
    else:
        fpn = build_fpn(body, out_channels=fpn_channels, extra_blocks="p6p7", levels=levels)
        anchors = _anchors(arch, list(fpn.strides.values()), anchor_sizes, aspect_ratios)
        model = RetinaNet(
            fpn,
            num_classes=num_classes,
            anchor_generator=anchors,
            score_thresh=score_thresh,
            detections_per_img=detections_per_img,
            **head_kwargs,
        )
    model.transform = _CheckedTransform(
        min_size,
        max_size,
        list(body.mean),
        list(body.std),
        in_chans=body.in_chans,
        num_classes=num_classes,
        first_label=1 if arch == "faster_rcnn" else 0,
    )
    model.load_report = None
    if weights is not None:
        label, state = read_head_checkpoint(
            weights, builder="build_detector", arch=arch, backbone=body, torchvision_models=TORCHVISION_DETECTORS
        )
        report = load_head_checkpoint(
            model, body, state, label=label, body_prefix="backbone.body.", class_layers=_CLASS_LAYERS[arch]
        )
        if isinstance(backbone, str):  # pretrained now: freeze its batch norms, as torchvision does
            body.set_norm("frozen_bn")
        model.load_report = report
        logger.info("build_detector(%r): %s", arch, report)
    return model
