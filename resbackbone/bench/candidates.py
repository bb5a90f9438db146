"""What is benchmarked: our modes and the libraries we compare against, all on the same weights."""

from __future__ import annotations

import copy
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from ..backbone import Backbone, create_backbone
from ..optimize import InferenceBackbone, compile_frozen, optimize_for_inference
from ..registry import get_spec

__all__ = [
    "COMPETITORS",
    "MODES",
    "Candidate",
    "CompetitorUnavailable",
    "ModeSpec",
    "build_competitor",
    "build_mode",
    "build_reference",
    "make_fpn",
    "randomise_norms",
]


@dataclass(frozen=True)
class ModeSpec:
    """One way of running our backbone.

    Attributes:
        dtype: Compute dtype.
        optimized: Through :func:`~resbackbone.optimize_for_inference` (BN folded, memory format chosen).
        compile: ``torch.compile`` (with weight freezing).
        description: One line for ``--help`` and the README.
    """

    dtype: torch.dtype
    optimized: bool
    compile: bool
    description: str


MODES: dict[str, ModeSpec] = {
    "eager": ModeSpec(torch.float32, False, False, "the Backbone as built, fp32 (the reference)"),
    "fold": ModeSpec(torch.float32, True, False, "optimize_for_inference(compile=False): BN folded, memory format"),
    "fast": ModeSpec(torch.float32, True, True, "optimize_for_inference(): BN folded, memory format, compiled"),
    "fold-bf16": ModeSpec(torch.bfloat16, True, False, "as fold, in bf16"),
    "fast-bf16": ModeSpec(torch.bfloat16, True, True, "as fast, in bf16"),
    "fast-fp16": ModeSpec(torch.float16, True, True, "as fast, in fp16"),
}

COMPETITORS: dict[str, str] = {
    "timm": "timm.create_model(..., features_only=True), fp32, eager, as users run it (NCHW)",
    "timm-cl": "timm features_only moved to channels_last, fp32, eager",
    "torchvision": "torchvision ResNet + IntermediateLayerGetter (as its detection backbones), fp32, eager",
    "smp": "segmentation_models_pytorch.encoders.get_encoder(name, weights=None), fp32, eager",
}


@dataclass
class Candidate:
    """A model under test: a callable from images to the list of levels (or FPN maps)."""

    impl: str
    mode: str
    dtype: torch.dtype
    fn: Callable[[Tensor], list[Tensor]]
    channels_last: bool = False
    compiled: bool = False
    note: str = ""
    fast: InferenceBackbone | None = None
    keep: list[object] = field(default_factory=list)  # modules kept alive with fn


def randomise_norms(module: nn.Module, seed: int) -> None:
    """Give every batch norm non-trivial statistics and affine parameters, reproducibly.

    Random init leaves running mean 0, variance 1 and (timm's zero-init) gammas
    of 0 in the last norm of each block: folding such norms proves nothing, and
    the residual branches would not count. Values stay close to a trained net's.
    """
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for sub in module.modules():
            if isinstance(sub, _BatchNorm) and sub.running_mean is not None:
                n = sub.num_features
                sub.running_mean.copy_(torch.randn(n, generator=generator) * 0.1)
                sub.running_var.copy_(torch.rand(n, generator=generator) * 0.5 + 0.5)
                if sub.affine:
                    sub.weight.copy_(torch.rand(n, generator=generator) * 0.5 + 0.5)
                    sub.bias.copy_(torch.randn(n, generator=generator) * 0.1)


def build_reference(name: str, *, weights: str | None, seed: int, device: torch.device) -> Backbone:
    """Our backbone in fp32 eval mode: the weights every candidate gets and the reference output."""
    torch.manual_seed(seed)
    backbone = create_backbone(name, weights=weights)
    if weights is None:
        randomise_norms(backbone, seed)
    return backbone.eval().to(device)


def make_fpn(backbone: Backbone, channels: int, seed: int) -> nn.Module:
    """The ``FeaturePyramidNetwork`` :func:`~resbackbone.build_fpn` puts on the backbone, seeded.

    Users' FPN (its max-pool level included), taken out of the ``FeaturePyramid``
    so that every candidate's levels, ours and the libraries', run through a copy of it.
    """
    from ..heads import build_fpn  # torchvision: not at start-up

    torch.manual_seed(seed)
    return build_fpn(backbone, out_channels=channels).fpn.eval()


def _with_fpn(levels_fn: Callable[[Tensor], list[Tensor]], fpn: nn.Module | None, names: tuple[str, ...]) -> Callable:
    if fpn is None:
        return levels_fn

    def run(x: Tensor) -> list[Tensor]:
        return list(fpn(OrderedDict(zip(names, levels_fn(x)))).values())

    return run


def build_mode(
    mode: str, reference: Backbone, *, fpn: nn.Module | None, channels_last: bool | str = "auto"
) -> Candidate:
    """Our backbone run in ``mode`` (see :data:`MODES`), with the FPN when given."""
    spec = MODES[mode]
    names = reference.feature_info.names
    if not spec.optimized:
        fpn_copy = copy.deepcopy(fpn) if fpn is not None else None
        fn = _with_fpn(lambda x: list(reference(x).values()), fpn_copy, names)
        return Candidate("resbackbone", mode, spec.dtype, fn, keep=[reference, fpn_copy])
    fast = optimize_for_inference(reference, dtype=spec.dtype, compile=spec.compile, channels_last=channels_last)
    fpn_run = None
    if fpn is not None:
        fmt = torch.channels_last if fast.channels_last else torch.contiguous_format
        fpn_module = copy.deepcopy(fpn).to(dtype=spec.dtype, memory_format=fmt)
        fpn_run = compile_frozen(fpn_module) if spec.compile else fpn_module
    fn = _with_fpn(lambda x: list(fast(x).values()), fpn_run, names)
    return Candidate(
        "resbackbone",
        mode,
        spec.dtype,
        fn,
        channels_last=fast.channels_last,
        compiled=fast.compiled,
        fast=fast,
        keep=[fpn_run],
    )


class CompetitorUnavailable(Exception):
    """The library has no model for this architecture (reported as a skipped row)."""


def _load_same_weights(model: nn.Module, state: Mapping[str, Tensor]) -> str:
    """Load our state dict into a library's model, finding its key prefix; describe what did not fit."""
    own = model.state_dict()
    prefix = ""
    if not set(state) & set(own):
        first = next(iter(state))
        matches = [k[: -len(first)] for k in own if k.endswith("." + first)]
        if not matches:
            raise CompetitorUnavailable(f"its parameter names do not match ours (first: {next(iter(own))!r})")
        prefix = matches[0]
    # nn.Module's own method: smp's encoders override it and return nothing
    result = nn.Module.load_state_dict(model, {prefix + k: v for k, v in state.items()}, strict=False)
    missing = [k for k in result.missing_keys if not k.endswith("num_batches_tracked")]
    if result.unexpected_keys:
        raise CompetitorUnavailable(
            f"{len(result.unexpected_keys)} of our keys do not fit, e.g. {result.unexpected_keys[0]!r}"
        )
    return f"{len(missing)} of its tensors not in our checkpoint (left at init)" if missing else ""


def build_competitor(impl: str, reference: Backbone, *, fpn: nn.Module | None) -> Candidate:
    """A library's C2–C5 extractor with our weights, fp32, eager.

    Raises:
        CompetitorUnavailable: The library has no model for this architecture.
    """
    spec = get_spec(reference.name)
    state = reference.state_dict()
    device = next(reference.parameters()).device
    names = reference.feature_info.names
    note = ""
    if impl in ("timm", "timm-cl"):
        import timm

        if spec.timm_name is None:
            raise CompetitorUnavailable("timm has no model of this name")
        model = timm.create_model(
            spec.timm_name, features_only=True, out_indices=(1, 2, 3, 4), output_stride=reference.output_stride
        )
        note = _load_same_weights(model, state)

        def levels(x: Tensor) -> list[Tensor]:
            return list(model(x))

    elif impl == "torchvision":
        import torchvision
        from torchvision.models._utils import IntermediateLayerGetter

        if spec.torchvision_name is None or reference.output_stride != 32:
            raise CompetitorUnavailable("torchvision has no model of this architecture")
        model = torchvision.models.get_model(spec.torchvision_name, weights=None)
        _load_same_weights(model, state)  # its classifier, absent from ours, is dropped below
        model = IntermediateLayerGetter(model, {level.module: level.name for level in reference.feature_info})

        def levels(x: Tensor) -> list[Tensor]:
            return list(model(x).values())

    elif impl == "smp":
        try:
            import segmentation_models_pytorch as smp
        except ImportError:
            raise CompetitorUnavailable("segmentation_models_pytorch is not installed") from None

        if reference.output_stride != 32:
            raise CompetitorUnavailable("compared at output stride 32 only")
        encoder = spec.name if spec.name in smp.encoders.encoders else f"tu-{spec.timm_name}"
        try:
            model = smp.encoders.get_encoder(encoder, in_channels=reference.in_chans, depth=5, weights=None)
        except (KeyError, ValueError, RuntimeError) as exc:
            raise CompetitorUnavailable(f"smp has no encoder {encoder!r} ({exc})") from None
        note = _load_same_weights(model, state)

        def levels(x: Tensor) -> list[Tensor]:
            return list(model(x)[-len(names) :])

    else:
        raise ValueError(f"Unknown competitor {impl!r}: expected one of {tuple(COMPETITORS)}.")
    model = model.eval().to(device)
    channels_last = impl == "timm-cl"
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        inner = levels

        def levels(x: Tensor) -> list[Tensor]:
            return inner(x.contiguous(memory_format=torch.channels_last))

    fpn_copy = copy.deepcopy(fpn) if fpn is not None else None
    return Candidate(
        impl,
        "eager",
        torch.float32,
        _with_fpn(levels, fpn_copy, names),
        channels_last=channels_last,
        note=note,
        keep=[model, fpn_copy],
    )
