"""Segmentation heads on any registered backbone: DeepLabV3 (torchvision), DeepLabV3+, FPN, U-Net (smp).

Output contract::

    model = build_segmenter("deeplabv3plus", backbone="resnet18", num_classes=3)
    model.eval()(torch.randn(2, 3, 100, 120)).shape      # (2, 3, 100, 120): logits at the input size
    model.train()(torch.randn(2, 3, 64, 64)).shape        # (2, 3, 64, 64)

    model = build_segmenter("deeplabv3", backbone="resnet18", num_classes=3, aux_loss=True)
    out = model.train()(torch.randn(2, 3, 64, 64))       # {"out": (2, 3, 64, 64), "aux": (2, 3, 64, 64)}
    model.eval()(torch.randn(2, 3, 64, 64)).shape         # (2, 3, 64, 64)

Inputs are normalised images (``model.mean``/``model.std``) of any size: they
are padded at the bottom and right to what the head needs and the logits
cropped back. With ``aux_loss=True`` an FCN head on C4 gives auxiliary logits,
returned only in training, as ``{"out": logits, "aux": aux_logits}``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.segmentation.deeplabv3 import DeepLabHead
from torchvision.models.segmentation.fcn import FCNHead

from ..backbone import Backbone
from ..specs import LEVELS
from ..weights import WeightsArg
from .checkpoints import load_head_checkpoint, read_head_checkpoint
from .common import check_arch, check_num_classes, resolve_backbone

__all__ = ["SEGMENTERS", "SEGMENTER_ARCHS", "Segmenter", "SegmenterSpec", "build_segmenter"]

logger = logging.getLogger("resbackbone")

_ASPP_RATES: dict[int, tuple[int, int, int]] = {16: (6, 12, 18), 8: (12, 24, 36)}


class Segmenter(nn.Module):
    """A backbone and a segmentation head, returning logits at the input size.

    Build one with :func:`build_segmenter`.

    Attributes:
        backbone: The :class:`~resbackbone.Backbone`.
        arch: The head (``"deeplabv3"``, …).
        num_classes: Channels of the logits.
        output_stride: Stride of the deepest backbone level.
        aux_classifier: FCN head on C4 (``aux_loss=True``), else ``None``.
        load_report: The :class:`~resbackbone.LoadReport` of ``weights``, or ``None``.
    """

    size_divisor = 1
    backbone: Backbone

    def __init__(self, arch: str, num_classes: int, aux_classifier: nn.Module | None) -> None:
        super().__init__()
        self.arch = arch
        self.num_classes = num_classes
        self.aux_classifier = aux_classifier
        self.load_report: Any = None

    @property
    def in_chans(self) -> int:
        return self.backbone.in_chans

    @property
    def output_stride(self) -> int:
        return self.backbone.output_stride

    @property
    def mean(self) -> tuple[float, ...]:
        """Per-channel mean (0–1 scale) to normalise inputs with."""
        return self.backbone.mean

    @property
    def std(self) -> tuple[float, ...]:
        """Per-channel std to normalise inputs with."""
        return self.backbone.std

    def _logits(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor | dict[str, Tensor]:
        """Logits for normalised images.

        Args:
            x: ``(N, in_chans, H, W)``, any ``H``, ``W`` ≥ 1.

        Returns:
            Logits ``(N, num_classes, H, W)``; in training with ``aux_loss=True``,
            ``{"out": logits, "aux": aux_logits}``, both ``(N, num_classes, H, W)``.

        Raises:
            TypeError: ``x`` is not a tensor.
            ValueError: ``x`` is not ``(N, in_chans, H, W)``, is empty, or is a single
                image in training where the head's image pooling needs two.
        """
        if not isinstance(x, Tensor):
            raise TypeError(f"{type(self).__name__} takes a Tensor (N, C, H, W), got {type(x).__name__}.")
        if x.ndim != 4 or x.shape[1] != self.in_chans or x.shape[0] < 1 or x.shape[2] < 1 or x.shape[3] < 1:
            raise ValueError(
                f"{self.arch} segmenter takes images of shape (N, {self.in_chans}, H, W) with N, H, W ≥ 1, "
                f"got {tuple(x.shape)}."
            )
        if self.training and x.shape[0] == 1 and SEGMENTERS[self.arch].image_pooling:
            raise ValueError(
                f"{self.arch} in training needs a batch of at least 2 images: its ASPP image pooling normalises a "
                "1×1 map over the batch. Use a batch ≥ 2, or model.eval() for inference."
            )
        height, width = x.shape[-2:]
        pad_h, pad_w = -height % self.size_divisor, -width % self.size_divisor
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h))
        out, c4 = self._logits(x)
        out = out[..., :height, :width]
        if self.aux_classifier is None or not self.training:
            return out
        assert c4 is not None
        aux = F.interpolate(self.aux_classifier(c4), size=x.shape[-2:], mode="bilinear", align_corners=False)
        return {"out": out, "aux": aux[..., :height, :width]}


class DeepLabV3Segmenter(Segmenter):
    """torchvision's DeepLabV3 head on C5 (and its FCN auxiliary head on C4).

    Module names are torchvision's (``backbone``, ``classifier``,
    ``aux_classifier``), so its ``deeplabv3_resnet50`` checkpoints load key for key.
    """

    def __init__(
        self, backbone: Backbone, classifier: nn.Module, aux_classifier: nn.Module | None, *, num_classes: int
    ) -> None:
        super().__init__("deeplabv3", num_classes, aux_classifier)
        self.backbone = backbone
        self.classifier = classifier

    def _logits(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        features = self.backbone(x)
        out = self.classifier(features["C5"])
        out = F.interpolate(out, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return out, features.get("C4")


class SmpSegmenter(Segmenter):
    """An smp model whose encoder is a :class:`~resbackbone.heads.smp.ResBackboneEncoder`."""

    def __init__(self, arch: str, model: nn.Module, aux_classifier: nn.Module | None, *, num_classes: int) -> None:
        super().__init__(arch, num_classes, aux_classifier)
        self.model = model
        self.size_divisor = model.encoder.output_stride if getattr(model, "requires_divisible_input_shape", True) else 1

    @property
    def backbone(self) -> Backbone:  # type: ignore[override]
        """The :class:`~resbackbone.Backbone` inside the smp encoder."""
        return self.model.encoder.backbone

    def _logits(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        if self.aux_classifier is None or not self.training:
            return self.model(x), None
        features: list[list[Tensor]] = []
        handle = self.model.encoder.register_forward_hook(lambda _m, _i, out: features.append(out))
        try:
            out = self.model(x)
        finally:
            handle.remove()
        return out, features[-1][-2]


Built = tuple[Segmenter, str, tuple[str, ...]]
"""A built segmenter, the key prefix of its backbone, and its class-dependent layers."""


def _torchvision_deeplab(
    arch: str, body: Backbone, aux: nn.Module | None, *, num_classes: int, output_stride: int
) -> Built:
    classifier = DeepLabHead(body.feature_info["C5"].channels, num_classes, atrous_rates=_ASPP_RATES[output_stride])
    model = DeepLabV3Segmenter(body, classifier, aux, num_classes=num_classes)
    return model, "backbone.", ("classifier.4.", "aux_classifier.4.")


def _smp_segmenter(arch: str, body: Backbone, aux: nn.Module | None, *, num_classes: int, output_stride: int) -> Built:
    import segmentation_models_pytorch as smp

    from .smp import ResBackboneEncoder, register_smp_encoders

    spec = SEGMENTERS[arch]
    prefix = "rb-"
    register_smp_encoders(prefix)
    model = getattr(smp, spec.smp_class)(
        encoder_name=prefix + body.name,
        encoder_weights=None,
        in_channels=body.in_chans,
        classes=num_classes,
        **spec.smp_options(output_stride),
    )
    model.encoder = ResBackboneEncoder(body, depth=5, output_stride=output_stride)
    return (
        SmpSegmenter(arch, model, aux, num_classes=num_classes),
        "model.encoder.backbone.",
        (
            "model.segmentation_head.",
            "aux_classifier.4.",
        ),
    )


@dataclass(frozen=True)
class SegmenterSpec:
    """What differs between the segmentation heads :func:`build_segmenter` builds.

    Attributes:
        title: The name in messages (``"DeepLabV3+ (smp encoder)"``).
        output_strides: Output strides the head takes; the first is the default.
        reads: Backbone levels the head reads (C4 is added for ``aux_loss``).
        image_pooling: The head pools the whole image through a batch norm (ASPP):
            training needs two images or more.
        build: ``build(arch, backbone, aux_head, num_classes=, output_stride=)`` →
            ``(model, backbone key prefix, class-dependent layers)``.
        smp_class: The smp model class, for heads built through smp.
        smp_options: ``output_stride`` → further arguments of the smp class.
        torchvision: Backbone name → torchvision builder whose weight enum has whole-model checkpoints.
    """

    title: str
    output_strides: tuple[int, ...]
    reads: tuple[str, ...]
    image_pooling: bool
    build: Callable[..., Built]
    smp_class: str = ""
    smp_options: Callable[[int], dict[str, Any]] = lambda output_stride: {}
    torchvision: Mapping[str, str] = field(default_factory=dict)


SEGMENTERS: dict[str, SegmenterSpec] = {
    "deeplabv3": SegmenterSpec(
        title="DeepLabV3",
        output_strides=(16, 8),
        reads=("C5",),
        image_pooling=True,
        build=_torchvision_deeplab,
        torchvision={"resnet50": "deeplabv3_resnet50", "resnet101": "deeplabv3_resnet101"},
    ),
    "deeplabv3plus": SegmenterSpec(
        title="DeepLabV3+ (smp encoder)",
        output_strides=(16, 8),
        reads=LEVELS,
        image_pooling=True,
        build=_smp_segmenter,
        smp_class="DeepLabV3Plus",
        smp_options=lambda os_: {"encoder_output_stride": os_, "decoder_atrous_rates": _ASPP_RATES[os_]},
    ),
    "fpn": SegmenterSpec(
        title="FPN (smp encoder)",
        output_strides=(32,),
        reads=LEVELS,
        image_pooling=False,
        build=_smp_segmenter,
        smp_class="FPN",
    ),
    "unet": SegmenterSpec(
        title="U-Net (smp encoder)",
        output_strides=(32, 16, 8),
        reads=LEVELS,
        image_pooling=False,
        build=_smp_segmenter,
        smp_class="Unet",
    ),
}
"""Head name → :class:`SegmenterSpec`; a new head is one entry."""

SEGMENTER_ARCHS: tuple[str, ...] = tuple(SEGMENTERS)

# Checkpoints torchvision publishes, by (arch, backbone): the builder whose weight enum serves them.
TORCHVISION_SEGMENTERS: dict[tuple[str, str], str] = {
    (arch, name): builder for arch, spec in SEGMENTERS.items() for name, builder in spec.torchvision.items()
}


def build_segmenter(
    arch: str,
    *,
    backbone: str | Backbone,
    num_classes: int,
    weights: WeightsArg = None,
    backbone_weights: WeightsArg = None,
    output_stride: int | None = None,
    aux_loss: bool = False,
    trainable_stages: int | None = None,
    in_chans: int = 3,
) -> Segmenter:
    """Build a semantic segmentation model on any registered backbone.

    ``"deeplabv3"`` is torchvision's ``DeepLabHead`` on C5; ``"deeplabv3plus"``,
    ``"fpn"`` and ``"unet"`` are smp's models with the backbone as their
    encoder. ASPP rates follow the output stride (6/12/18 at 16, 12/24/36 at 8).

    Args:
        arch: ``"deeplabv3"``, ``"deeplabv3plus"``, ``"fpn"`` or ``"unet"``.
        backbone: Registry name, or a built :class:`~resbackbone.Backbone` at
            ``output_stride`` returning the levels the head reads (C5, and C4
            with ``aux_loss``, for DeepLabV3; C2–C5 for the smp heads).
        num_classes: Channels of the logits.
        weights: Whole-model checkpoint: a local file or ``https://…#sha256=`` URL
            of a model built the same way (``model.state_dict()``), a state dict, or
            ``"torchvision:COCO_WITH_VOC_LABELS_V1"`` for DeepLabV3 on
            ``"resnet50"``/``"resnet101"``. With another ``num_classes`` the last
            layers are re-initialised; ``model.load_report`` says which.
        backbone_weights: Backbone weight string (``"imagenet"``, …), as for
            :func:`~resbackbone.create_backbone`.
        output_stride: Stride of C5: 16 or 8 for the DeepLab heads (default 16),
            32 for FPN, 32/16/8 for U-Net (default 32).
        aux_loss: Add an FCN head on C4; in training the model then returns
            ``{"out": logits, "aux": aux_logits}``.
        trainable_stages: Backbone stages trained, counted from C5 (0–5; ``None`` all);
            applied to a built backbone too.
        in_chans: Input channels; the first conv and ``mean``/``std`` are adapted.

    Returns:
        The :class:`Segmenter`; ``model(x)`` gives ``(N, num_classes, H, W)`` logits.

    Raises:
        ValueError: Unknown ``arch``, ``num_classes < 1``, an output stride the
            head does not take, a backbone without the levels the head reads,
            both ``weights`` and ``backbone_weights``, or a checkpoint that does not fit.
        TypeError: ``backbone`` is neither a name nor a Backbone.

    Example:
        >>> model = build_segmenter("deeplabv3plus", backbone="resnet18", num_classes=3, output_stride=8)
        >>> model.eval()(torch.randn(1, 3, 64, 64)).shape
        torch.Size([1, 3, 64, 64])
    """
    spec = SEGMENTERS[check_arch(arch, SEGMENTER_ARCHS, "build_segmenter")]
    num_classes = check_num_classes(num_classes, "build_segmenter")
    if output_stride is None:
        output_stride = spec.output_strides[0]
    if output_stride not in spec.output_strides or isinstance(output_stride, bool):
        raise ValueError(
            f"build_segmenter(): output_stride={output_stride!r} is not valid for {arch!r}: expected one of "
            f"{tuple(sorted(spec.output_strides))}."
        )
    if not isinstance(aux_loss, bool):
        raise TypeError(f"build_segmenter(): aux_loss must be True or False, got {aux_loss!r}.")
    if weights is not None and backbone_weights is not None:
        raise ValueError(
            "build_segmenter(): pass weights= (a whole-model checkpoint, backbone included) or "
            "backbone_weights=, not both."
        )
    need = tuple(lv for lv in LEVELS if lv in spec.reads or (aux_loss and lv == "C4"))
    body = resolve_backbone(
        backbone,
        builder="build_segmenter",
        head=spec.title + (" with aux_loss" if aux_loss else ""),
        need=need,
        build_levels=need,
        weights=backbone_weights,
        output_stride=output_stride,
        in_chans=in_chans,
        norm="bn",
        trainable_stages=trainable_stages,
    )
    aux = FCNHead(body.feature_info["C4"].channels, num_classes) if aux_loss else None
    model, body_prefix, class_layers = spec.build(arch, body, aux, num_classes=num_classes, output_stride=output_stride)
    if weights is not None:
        label, state = read_head_checkpoint(
            weights, builder="build_segmenter", arch=arch, backbone=body, torchvision_models=TORCHVISION_SEGMENTERS
        )
        model.load_report = load_head_checkpoint(
            model,
            body,
            state,
            label=label,
            body_prefix=body_prefix,
            class_layers=class_layers,
            optional={"aux_classifier.": "auxiliary head not built (aux_loss=False)"} if aux is None else None,
        )
        logger.info("build_segmenter(%r): %s", arch, model.load_report)
    return model
