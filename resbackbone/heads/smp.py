"""Every registered backbone as a ``segmentation_models_pytorch`` encoder.

After :func:`register_smp_encoders`, user code written the smp way works on
our backbones, with our weight strings::

    register_smp_encoders()                       # "rb-resnet18", "rb-resnet50", …
    model = smp.DeepLabV3Plus(encoder_name="rb-resnet50", encoder_weights=None, classes=3)
    model = smp.Unet("rb-resnet18", encoder_weights="imagenet")   # resbackbone's "imagenet"

The encoder follows smp's contract (``EncoderMixin``)::

    encoder = ResBackboneEncoder("resnet18", depth=5, output_stride=16)
    encoder.out_channels, encoder.output_stride    # [3, 64, 64, 128, 256, 512], 16
    [tuple(f.shape[1:]) for f in encoder(torch.randn(1, 3, 64, 64))]
    # [(3, 64, 64), (64, 32, 32), (64, 16, 16), (128, 8, 8), (256, 4, 4), (512, 4, 4)]

The features are the input, the stride-2 stem activation, then C2–C5; the
channels come from ``feature_info``. Dilation is the backbone's own
(``output_stride`` at build time); ``make_dilated`` and ``set_in_channels``
rebuild the backbone with the new option and carry its weights over.

Weights never come from smp's hub. smp's ``get_encoder`` downloads from it for
any ``encoder_weights`` that is not ``None``, so registration routes smp's
``get_encoder`` (in the smp modules that hold it) through a wrapper that
builds our encoders itself and passes every other name on unchanged; there
``encoder_weights`` is a resbackbone weight string (``True`` means
``"imagenet"``). Tested with segmentation-models-pytorch 0.6.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Iterator, Mapping
from typing import Any

import segmentation_models_pytorch as smp
import torch
from segmentation_models_pytorch.encoders._base import EncoderMixin
from torch import Tensor, nn

from ..backbone import Backbone, create_backbone
from ..registry import list_backbones
from ..specs import LEVELS
from ..weights import WeightsArg, adapt_stats

__all__ = ["ResBackboneEncoder", "register_smp_encoders"]

SmpWeightsArg = WeightsArg | bool
"""smp's ``encoder_weights``: ours, or ``True`` for ``"imagenet"``."""


def _stem_feature(backbone: Backbone) -> tuple[str, int]:
    """Path and channels of the module whose output is the stride-2 feature (inside the stem)."""
    records: list[tuple[str, tuple[int, ...]]] = []
    handles = [
        module.register_forward_hook(
            lambda _m, _i, out, path=path: (
                records.append((path, tuple(out.shape))) if isinstance(out, Tensor) and out.ndim == 4 else None
            )
        )
        for path, module in backbone.named_modules()
        if path
    ]
    size = 64
    was_training = backbone.training
    backbone.eval()
    try:
        with torch.no_grad():
            param = next(backbone.parameters())
            backbone(torch.zeros(1, backbone.in_chans, size, size, device=param.device, dtype=param.dtype))
    finally:
        for handle in handles:
            handle.remove()
        backbone.train(was_training)
    found: tuple[str, int] | None = None
    for path, shape in records:  # in completion order
        if shape[-2:] == (size // 2, size // 2):
            found = (path, shape[1])
        elif shape[-1] < size // 2:
            break
    if found is None:
        raise TypeError(
            f"Backbone {backbone.name!r} computes no stride-2 feature in its stem, which smp's encoder contract "
            "returns as its second feature; it cannot be an smp encoder."
        )
    return found


def _norm_of(backbone: Backbone) -> str:
    kinds = {type(m).__name__ for m in backbone.modules()}
    if any(isinstance(m, nn.GroupNorm) for m in backbone.modules()):
        return "gn"
    if any("Frozen" in k for k in kinds):
        return "frozen_bn"
    if any(isinstance(m, nn.SyncBatchNorm) for m in backbone.modules()):
        return "sync_bn"
    return "bn"


def rebuild_backbone(backbone: Backbone, *, output_stride: int | None = None, in_chans: int | None = None) -> Backbone:
    """The same backbone built with another output stride or input width, its weights carried over.

    Norm, levels, drop-path rate, trainable stages, the weight label, device and
    dtype are kept, and gradient checkpointing as it was asked (``True`` takes
    the stages at stride 8 or finer of the new stride); a 3-channel first conv
    is adapted to ``in_chans``.

    Raises:
        ValueError: ``in_chans`` changes a first conv that is not RGB.
    """
    from timm.layers import DropPath

    new_in = backbone.in_chans if in_chans is None else in_chans
    if new_in != backbone.in_chans and backbone.in_chans != 3:
        raise ValueError(
            f"Backbone {backbone.name!r} takes {backbone.in_chans} channels; only RGB filters can be adapted to "
            f"{new_in}. Build it from the name with in_chans={new_in}."
        )
    rate = max((float(m.drop_prob) for m in backbone.modules() if isinstance(m, DropPath)), default=0.0)
    new = create_backbone(
        backbone.name,
        weights=backbone.state_dict(),
        out_levels=backbone.feature_info.names,
        output_stride=backbone.output_stride if output_stride is None else output_stride,
        in_chans=new_in,
        norm=_norm_of(backbone),
        trainable_stages=backbone.trainable_stages,
        drop_path_rate=rate,
    )
    new.set_grad_checkpointing(backbone.grad_checkpointing, reentrant=backbone.checkpoint_reentrant)
    new.weights, new.load_report = backbone.weights, backbone.load_report
    new.mean, new.std = adapt_stats(backbone.mean, new_in), adapt_stats(backbone.std, new_in)
    param = next(backbone.parameters())
    new.to(device=param.device, dtype=param.dtype)
    new.train(backbone.training)
    return new


def _weight_string(weights: SmpWeightsArg) -> WeightsArg:
    if weights is None or weights is False:
        return None
    if weights is True:
        return "imagenet"
    return weights


class ResBackboneEncoder(nn.Module, EncoderMixin):
    """A :class:`~resbackbone.Backbone` behind smp's encoder contract.

    Args:
        backbone: Registry name, or a built :class:`~resbackbone.Backbone`
            returning the levels ``depth`` needs (C2–C5 for depth 5) at ``output_stride``.
        depth: Number of downsampling stages returned, 1–5.
        output_stride: 8, 16 or 32; used when building from a name.
        in_channels: Input channels; used when building from a name.
        weights: Weight string for :func:`~resbackbone.create_backbone`
            (``True`` means ``"imagenet"``); used when building from a name.

    Attributes:
        backbone: The wrapped :class:`~resbackbone.Backbone`.

    Raises:
        ValueError: ``depth`` outside 1–5, or a built backbone without the
            needed levels or with another output stride.
    """

    _is_torch_scriptable = False
    _is_torch_exportable = False

    def __init__(
        self,
        backbone: str | Backbone,
        depth: int = 5,
        output_stride: int = 32,
        in_channels: int = 3,
        weights: SmpWeightsArg = None,
    ) -> None:
        nn.Module.__init__(self)
        EncoderMixin.__init__(self)
        if isinstance(depth, bool) or not isinstance(depth, int) or not 1 <= depth <= 5:
            raise ValueError(f"Encoder depth={depth!r} is not valid: expected an int from 1 to 5.")
        self._depth = depth
        levels = LEVELS[: max(depth - 1, 1)]
        if isinstance(backbone, str):
            backbone = create_backbone(
                backbone,
                weights=_weight_string(weights),
                out_levels=levels,
                output_stride=output_stride,
                in_chans=in_channels,
            )
        elif not isinstance(backbone, Backbone):
            raise TypeError(f"ResBackboneEncoder takes a backbone name or a Backbone, got {type(backbone).__name__}.")
        else:
            missing = [lv for lv in levels if lv not in backbone.feature_info.names]
            if missing:
                raise ValueError(
                    f"Backbone {backbone.name!r} returns {backbone.feature_info.names}; an smp encoder of depth "
                    f"{depth} returns every level of {levels} ({', '.join(missing)} missing). Build it with "
                    f"create_backbone({backbone.name!r}, out_levels={levels})."
                )
            if backbone.output_stride != output_stride:
                raise ValueError(
                    f"Backbone {backbone.name!r} has output_stride={backbone.output_stride}, not {output_stride}; "
                    f"build it with create_backbone({backbone.name!r}, output_stride={output_stride})."
                )
        self._set_backbone(backbone)

    def _set_backbone(self, backbone: Backbone) -> None:
        self.backbone = backbone
        self._stem_path, stem_channels = _stem_feature(backbone)
        self._levels = LEVELS[: self._depth - 1]
        self._in_channels = backbone.in_chans
        self._output_stride = backbone.output_stride
        info = backbone.feature_info
        self._out_channels = [backbone.in_chans, stem_channels, *(info[lv].channels for lv in self._levels)]

    def forward(self, x: Tensor) -> list[Tensor]:
        """Features for ``x``: ``[x, stride 2, C2, …]``, ``depth + 1`` tensors, finest first."""
        stem: list[Tensor] = []
        handle = self.backbone.get_submodule(self._stem_path).register_forward_hook(
            lambda _m, _i, out: stem.append(out)
        )
        try:
            features = self.backbone(x)
        finally:
            handle.remove()
        return [x, stem[-1], *(features[lv] for lv in self._levels)]

    def make_dilated(self, output_stride: int) -> None:
        """Rebuild the backbone at ``output_stride`` (8, 16 or 32), weights carried over.

        Raises:
            ValueError: ``output_stride`` is not 8, 16 or 32.
        """
        if output_stride not in (8, 16, 32):
            raise ValueError(f"Output stride should be 8, 16 or 32, got {output_stride!r}.")
        if output_stride != self.backbone.output_stride:
            self._set_backbone(rebuild_backbone(self.backbone, output_stride=output_stride))

    def set_in_channels(self, in_channels: int, pretrained: bool = True) -> None:
        """Rebuild the backbone for ``in_channels`` inputs; RGB filters are adapted.

        ``pretrained`` is accepted for smp's contract: the filters are adapted
        whether they are pretrained or not.
        """
        if in_channels != self.backbone.in_chans:
            self._set_backbone(rebuild_backbone(self.backbone, in_chans=in_channels))


class _NoHubWeights(Mapping[str, Any]):
    """smp's ``pretrained_settings`` for our encoders: no hub entries, and an error that says why."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __contains__(self, key: object) -> bool:
        raise ValueError(
            f"Encoder {self.name!r} takes resbackbone weight strings (encoder_weights='imagenet', "
            "'torchvision:<TAG>', 'timm:<tag>', a file), never smp hub weights, and this call took smp's hub path: "
            "a get_encoder imported before register_smp_encoders() ran, or get_preprocessing_params(). Call "
            "register_smp_encoders() before building the model; normalise with encoder.backbone.mean/std."
        )

    def __getitem__(self, key: str) -> Any:
        raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def __len__(self) -> int:
        return 0


def _backbone_of(name: Any) -> str | None:
    entry = smp.encoders.encoders.get(name) if isinstance(name, str) else None
    if isinstance(entry, Mapping) and entry.get("encoder") is ResBackboneEncoder:
        return entry["params"]["backbone"]
    return None


def _route(original: Any) -> Any:
    @functools.wraps(original)
    def get_encoder(
        name: str,
        in_channels: int = 3,
        depth: int = 5,
        weights: SmpWeightsArg = None,
        output_stride: int = 32,
        **kwargs: Any,
    ) -> nn.Module:
        backbone = _backbone_of(name)
        if backbone is None:
            return original(
                name, in_channels=in_channels, depth=depth, weights=weights, output_stride=output_stride, **kwargs
            )
        if kwargs:
            raise TypeError(f"Encoder {name!r} takes no extra options; got {', '.join(sorted(kwargs))}.")
        return ResBackboneEncoder(
            backbone, depth=depth, output_stride=output_stride, in_channels=in_channels, weights=weights
        )

    get_encoder._resbackbone_route = True  # type: ignore[attr-defined]
    return get_encoder


def _route_get_encoder() -> None:
    current = smp.encoders.get_encoder
    if getattr(current, "_resbackbone_route", False):
        original, routed = current.__wrapped__, current
    else:
        original, routed = current, _route(current)
    for module_name, module in list(sys.modules.items()):
        if (
            module_name.split(".")[0] == "segmentation_models_pytorch"
            and getattr(module, "get_encoder", None) is original
        ):
            module.get_encoder = routed


def register_smp_encoders(prefix: str = "rb-") -> list[str]:
    """Register every registered backbone as an smp encoder named ``prefix + name``.

    Calling it again is harmless, and registers backbones added since.

    Args:
        prefix: Prefix of the encoder names; must not be smp's ``"tu-"``/``"timm-"``.

    Returns:
        The encoder names, such as ``["rb-resnet18", …]`` (hidden test backbones included).

    Raises:
        ValueError: The prefix is empty, reserved by smp, or a name would
            replace one of smp's own encoders.

    Example:
        >>> register_smp_encoders()
        >>> model = smp.DeepLabV3Plus(encoder_name="rb-resnet50", encoder_weights=None, classes=3)
        >>> model(torch.randn(2, 3, 64, 64)).shape
        torch.Size([2, 3, 64, 64])
    """
    if not isinstance(prefix, str) or not prefix or prefix.startswith(("tu-", "timm-")):
        raise ValueError(
            f"register_smp_encoders(): prefix={prefix!r} is not valid: expected a non-empty string other than smp's "
            "own 'tu-' and 'timm-', such as 'rb-'."
        )
    encoders = smp.encoders.encoders
    names = {prefix + backbone: backbone for backbone in list_backbones(include_hidden=True)}
    clashes = [name for name in names if name in encoders and _backbone_of(name) is None]
    if clashes:
        raise ValueError(
            f"register_smp_encoders(): {clashes[0]!r} is one of smp's own encoders; choose another prefix."
        )
    for name, backbone in names.items():
        encoders[name] = {
            "encoder": ResBackboneEncoder,
            "pretrained_settings": _NoHubWeights(name),
            "params": {"backbone": backbone},
        }
    _route_get_encoder()
    return list(names)
