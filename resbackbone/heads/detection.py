"""Detection heads: Faster R-CNN and RetinaNet from torchvision on any registered backbone.

:data:`DETECTORS` holds what differs per architecture (the torchvision class,
levels, extra FPN maps, default anchors, class-dependent layers, published
checkpoints); :func:`build_detector` dispatches on it. The FPN is
:func:`~resbackbone.heads.fpn.build_fpn`'s, whose state-dict layout is
torchvision's ``BackboneWithFPN``: torchvision detector checkpoints load key for key.

Example::

    model = build_detector("retinanet", backbone="resnet18", num_classes=4)
    model.eval()([torch.rand(3, 120, 160)])   # [{"boxes": (K, 4), "scores": (K,), "labels": (K,)}]
"""

from __future__ import annotations

import difflib
import inspect
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn
from torchvision.models.detection import FasterRCNN, RetinaNet
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead

from ..backbone import Backbone
from ..specs import LEVELS
from ..weights import WeightsArg
from .checkpoints import load_head_checkpoint, read_head_checkpoint
from .common import check_arch, check_num_classes, resolve_backbone
from .detection_transform import DetectionTransform
from .fpn import EXTRA_BLOCKS, FPN_NORMS, FeaturePyramid, build_fpn
from .roi_align import MultiScaleRoIAlign

__all__ = [
    "DETECTORS",
    "DETECTOR_ARCHS",
    "EXTRA_BLOCKS",
    "FPN_NORMS",
    "DetectorSpec",
    "FeaturePyramid",
    "build_detector",
    "build_fpn",
    "detector_head",
]

logger = logging.getLogger("resbackbone")

BOX_HEAD_WIDTH = 1024
"""Width of the two fully connected layers of Faster R-CNN's box head in torchvision (``TwoMLPHead``)."""


def _faster_rcnn_args(fpn: FeaturePyramid, anchors: AnchorGenerator, score_thresh: float, per_img: int) -> dict:
    maps = [k for k in fpn.strides if k != "pool"]
    return {
        "rpn_anchor_generator": anchors,
        "box_roi_pool": MultiScaleRoIAlign(maps, output_size=7, sampling_ratio=2),
        "box_score_thresh": score_thresh,
        "box_detections_per_img": per_img,
    }


def _retinanet_args(fpn: FeaturePyramid, anchors: AnchorGenerator, score_thresh: float, per_img: int) -> dict:
    return {"anchor_generator": anchors, "score_thresh": score_thresh, "detections_per_img": per_img}


@dataclass(frozen=True)
class DetectorSpec:
    """What differs between the detection architectures :func:`build_detector` builds.

    Attributes:
        title: The name in messages (``"Faster R-CNN"``).
        model: The torchvision class.
        levels: Backbone levels the FPN is built on from a registry name.
        needs: Levels a built backbone must return (Faster R-CNN takes whatever it returns).
        fixed_levels: ``levels=`` cannot change :attr:`levels`.
        extra_blocks: The FPN's maps past the last level (:data:`~resbackbone.heads.fpn.EXTRA_BLOCKS`).
        anchor_sizes: Default anchor sizes of a map at stride ``s``.
        first_label: The smallest target label (1 where 0 is the background).
        class_layers: Key prefixes of the layers whose shape depends on ``num_classes``.
        torchvision: Backbone name → torchvision builder whose weight enum has the whole-model checkpoints.
        head_args: ``(fpn, anchors, score_thresh, detections_per_img)`` → the class's own arguments.
    """

    title: str
    model: type[FasterRCNN] | type[RetinaNet]
    levels: tuple[str, ...]
    needs: tuple[str, ...]
    fixed_levels: bool
    extra_blocks: str
    anchor_sizes: Callable[[int], tuple[int, ...]]
    first_label: int
    class_layers: tuple[str, ...]
    torchvision: Mapping[str, str]
    head_args: Callable[[FeaturePyramid, AnchorGenerator, float, int], dict[str, Any]]


DETECTORS: dict[str, DetectorSpec] = {
    "faster_rcnn": DetectorSpec(
        title="Faster R-CNN",
        model=FasterRCNN,
        levels=LEVELS,
        needs=(),
        fixed_levels=False,
        extra_blocks="maxpool",
        anchor_sizes=lambda stride: (8 * stride,),  # torchvision: 32 at stride 4
        first_label=1,
        class_layers=("roi_heads.box_predictor.cls_score.", "roi_heads.box_predictor.bbox_pred."),
        torchvision={"resnet50": "fasterrcnn_resnet50_fpn"},
        head_args=_faster_rcnn_args,
    ),
    "retinanet": DetectorSpec(
        title="RetinaNet",
        model=RetinaNet,
        levels=("C3", "C4", "C5"),
        needs=("C3", "C4", "C5"),
        fixed_levels=True,
        extra_blocks="p6p7",
        anchor_sizes=lambda stride: tuple(int(4 * stride * 2 ** (i / 3)) for i in range(3)),  # 32 at stride 8, octaves
        first_label=0,
        class_layers=("head.classification_head.cls_logits.",),
        torchvision={"resnet50": "retinanet_resnet50_fpn"},
        head_args=_retinanet_args,
    ),
}
"""Architecture name → :class:`DetectorSpec`; a new detector is one entry."""

DETECTOR_ARCHS: tuple[str, ...] = tuple(DETECTORS)

# Checkpoints torchvision publishes, by (arch, backbone): the builder whose weight enum serves them.
TORCHVISION_DETECTORS: dict[tuple[str, str], str] = {
    (arch, name): builder for arch, spec in DETECTORS.items() for name, builder in spec.torchvision.items()
}


def _anchors(
    spec: DetectorSpec,
    strides: Sequence[int],
    anchor_sizes: Sequence[Sequence[int]] | None,
    aspect_ratios: Sequence[Sequence[float]] | None,
) -> AnchorGenerator:
    if anchor_sizes is None:
        anchor_sizes = [spec.anchor_sizes(s) for s in strides]
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
    cls = DETECTORS[arch].model
    valid = sorted(set(inspect.signature(cls.__init__).parameters) - _OWN_ARGS)
    for key in head_kwargs:
        if key not in valid:
            close = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise TypeError(
                f"build_detector({arch!r}): {key!r} is not an option of torchvision's {cls.__name__} that "
                f"can be passed through.{hint} Valid: {', '.join(valid)}."
            )


def detector_head(model: nn.Module) -> str | None:
    """The :data:`DETECTORS` name of a built detector (``"faster_rcnn"``, ``"retinanet"``); ``None`` for others."""
    return next((name for name, spec in DETECTORS.items() if isinstance(model, spec.model)), None)


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
    box_head_width: int = BOX_HEAD_WIDTH,
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
        box_head_width: Faster R-CNN: width of the box head's two fully connected layers
            (torchvision's 1024; 512 makes a CPU training step about a tenth cheaper). A
            whole-detector checkpoint must have the same width.
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
    spec = DETECTORS[check_arch(arch, DETECTOR_ARCHS, "build_detector")]
    num_classes = check_num_classes(
        num_classes, "build_detector", " (Faster R-CNN counts the background: 2 for one object class)"
    )
    if weights is not None and backbone_weights is not None:
        raise ValueError(
            "build_detector(): pass weights= (a whole-detector checkpoint, backbone included) or "
            "backbone_weights=, not both."
        )
    _check_sizes(min_size, max_size, score_thresh, detections_per_img)
    _check_box_head_width(arch, box_head_width)
    check_head_kwargs(arch, head_kwargs)
    if levels is not None:
        if isinstance(levels, str) or not all(isinstance(lv, str) for lv in levels):
            raise TypeError("build_detector(): levels must be a sequence of level names such as ('C3', 'C4', 'C5').")
        if spec.fixed_levels and tuple(levels) != spec.levels:
            raise ValueError(
                f"build_detector({arch!r}): levels={tuple(levels)}; {spec.title} uses "
                f"{spec.levels[0]}–{spec.levels[-1]} (P{spec.levels[0][1]}–P7)."
            )
        if not levels or not set(levels) <= set(LEVELS):
            raise ValueError(f"build_detector(): levels={tuple(levels)} is not valid: expected a subset of {LEVELS}.")

    body = resolve_backbone(
        backbone,
        builder="build_detector",
        head=spec.title,
        need=tuple(levels) if levels is not None else spec.needs,
        build_levels=tuple(levels) if levels is not None else spec.levels,
        weights=backbone_weights,
        output_stride=32,
        in_chans=in_chans,
        norm="frozen_bn" if backbone_weights is not None else "bn",
        trainable_stages=trainable_stages,
    )
    if levels is None:
        levels = spec.levels if spec.fixed_levels else body.feature_info.names
    fpn = build_fpn(body, out_channels=fpn_channels, extra_blocks=spec.extra_blocks, levels=levels)
    anchors = _anchors(spec, list(fpn.strides.values()), anchor_sizes, aspect_ratios)
    model = spec.model(
        fpn, num_classes=num_classes, **spec.head_args(fpn, anchors, score_thresh, detections_per_img), **head_kwargs
    )
    if box_head_width != BOX_HEAD_WIDTH:
        pooled = model.roi_heads.box_head.fc6.in_features
        model.roi_heads.box_head = TwoMLPHead(pooled, box_head_width)
        model.roi_heads.box_predictor = FastRCNNPredictor(box_head_width, num_classes)
    model.transform = DetectionTransform(
        min_size,
        max_size,
        list(body.mean),
        list(body.std),
        in_chans=body.in_chans,
        num_classes=num_classes,
        first_label=spec.first_label,
    )
    model.load_report = None
    if weights is not None:
        label, state = read_head_checkpoint(
            weights, builder="build_detector", arch=arch, backbone=body, torchvision_models=TORCHVISION_DETECTORS
        )
        report = load_head_checkpoint(
            model, body, state, label=label, body_prefix="backbone.body.", class_layers=spec.class_layers
        )
        if isinstance(backbone, str):  # pretrained now: freeze its batch norms, as torchvision does
            body.set_norm("frozen_bn")
        model.load_report = report
        logger.info("build_detector(%r): %s", arch, report)
    return model


def _check_box_head_width(arch: str, width: Any) -> None:
    if isinstance(width, bool) or not isinstance(width, int) or width < 1:
        raise ValueError(
            f"build_detector(): box_head_width={width!r} is not valid: expected an int ≥ 1 "
            f"(torchvision's box head: {BOX_HEAD_WIDTH})."
        )
    if width != BOX_HEAD_WIDTH and arch != "faster_rcnn":
        raise ValueError(
            f"build_detector({arch!r}): box_head_width={width} applies to Faster R-CNN's box head only; "
            f"{DETECTORS[arch].title} has none. Leave it at {BOX_HEAD_WIDTH}."
        )


def _check_sizes(min_size: Any, max_size: Any, score_thresh: Any, detections_per_img: Any) -> None:
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
