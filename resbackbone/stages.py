"""A backbone's stages: their layout for timm trunks, the stem's first convolution and shape, the
pyramid a trunk declares, and running stages with activation checkpointing block by block."""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from .specs import RESNET_STAGES, RESNETV2_STAGES, FeatureInfo, LevelInfo, StageSpec

__all__ = [
    "declared_feature_info",
    "describe_stem",
    "find_first_conv",
    "infer_stages",
    "run_checkpointed",
    "stage_blocks",
    "unstaged_children",
]


def infer_stages(trunk: nn.Module, name: str) -> tuple[StageSpec, ...]:
    """The stage layout of a timm ``ResNet`` or ``ResNetV2`` trunk.

    Raises:
        TypeError: ``trunk`` is of another class; the message says to pass ``stages=``.
    """
    from timm.models.resnet import ResNet
    from timm.models.resnetv2 import ResNetV2

    if isinstance(trunk, ResNet):
        return RESNET_STAGES
    if isinstance(trunk, ResNetV2):
        return RESNETV2_STAGES
    raise TypeError(
        f"Backbone {name!r}: its builder returned a {type(trunk).__name__}, whose stages cannot be inferred. "
        "Return a timm ResNet/ResNetV2, or pass stages=(StageSpec(...), ...) to register_backbone()."
    )


def find_first_conv(module: nn.Module, stem: StageSpec, name: str) -> str:
    """Path of the first ``Conv2d`` in ``stem``'s modules of ``module``, depth first.

    Raises:
        TypeError: The stem has no ``Conv2d``; the message says to pass ``first_conv=``.
    """
    for path in stem.modules:
        top = module.get_submodule(path)
        for sub_name, sub in [("", top), *top.named_modules()]:
            if isinstance(sub, nn.Conv2d):
                return f"{path}.{sub_name}" if sub_name else path
    raise TypeError(f"Backbone {name!r}: no Conv2d in its stem; pass first_conv= to register_backbone().")


def unstaged_children(trunk: nn.Module, stages: tuple[StageSpec, ...]) -> tuple[str, ...]:
    """Key prefixes of the trunk's top-level modules in no stage: its classifier (``("global_pool.", "fc.")``)."""
    staged = {path.split(".")[0] for stage in stages for path in stage.modules}
    return tuple(f"{child}." for child, _ in trunk.named_children() if child not in staged)


def describe_stem(module: nn.Module, stem: StageSpec) -> str:
    """``"7x7"`` (one 7×7 convolution), ``"deep"`` (three 3×3) or the stem's convolutions listed."""
    convs = [m for path in stem.modules for m in module.get_submodule(path).modules() if isinstance(m, nn.Conv2d)]
    kernels = [f"{m.kernel_size[0]}x{m.kernel_size[1]}" for m in convs]
    if kernels == ["7x7"]:
        return "7x7"
    if kernels == ["3x3"] * 3:
        return "deep"
    if not kernels:
        return "no convolution"
    return f"{len(kernels)} convolution{'s' if len(kernels) > 1 else ''} ({', '.join(kernels)})"


def declared_feature_info(trunk: nn.Module, levels: list[StageSpec]) -> FeatureInfo | None:
    """The pyramid a timm trunk declares in its ``feature_info`` for these stages, or ``None`` if it does not."""
    declared = {d["module"]: d for d in getattr(trunk, "feature_info", []) if isinstance(d, Mapping)}
    if not all(stage.modules[-1] in declared for stage in levels):
        return None
    return FeatureInfo(
        [
            LevelInfo(
                str(s.level),
                int(declared[s.modules[-1]]["num_chs"]),
                int(declared[s.modules[-1]]["reduction"]),
                s.modules[-1],
            )
            for s in levels
        ]
    )


def stage_blocks(module: nn.Module) -> nn.Sequential | None:
    """The blocks a stage runs one after another: the stage itself, or a timm ``ResNetStage``'s ``blocks``."""
    from timm.models.resnetv2 import ResNetStage

    if isinstance(module, ResNetStage):
        return module.blocks
    return module if isinstance(module, nn.Sequential) else None


def run_checkpointed(stage: StageSpec, modules: list[nn.Module], x: Tensor, *, reentrant: bool) -> Tensor:
    """Run a stage with activation checkpointing: block by block, or a stem (or unknown structure) as one unit.

    Reentrant checkpointing only where the input requires grad: without that
    it would leave the parameters inside without gradients (after a frozen stage).
    """
    blocks = stage_blocks(modules[0]) if stage.level is not None and len(modules) == 1 else None
    if blocks is None:

        def run(x: Tensor) -> Tensor:
            for module in modules:
                x = module(x)
            return x

        return checkpoint(run, x, use_reentrant=reentrant and x.requires_grad)
    for block in blocks:
        x = checkpoint(block, x, use_reentrant=reentrant and x.requires_grad)
    return x
