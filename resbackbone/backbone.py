"""The :class:`Backbone` module: a ResNet-family trunk that returns the C2–C5 pyramid.

Output contract::

    backbone = create_backbone("resnet50", out_levels=("C3", "C4", "C5"))
    features = backbone(torch.randn(2, 3, 224, 224))
    # OrderedDict(C3: (2, 512, 28, 28), C4: (2, 1024, 14, 14), C5: (2, 2048, 7, 7))
    backbone.feature_info["C4"]   # LevelInfo(name='C4', channels=1024, stride=16, module='layer3')

With ``output_stride=16`` the last stage is dilated instead of strided
(C5: ``(2, 2048, 14, 14)``, stride 16); with 8, the last two.
"""

from __future__ import annotations

import contextlib
import numbers
from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .finetuning import FineTuningMixin
from .norms import convert_norm
from .registry import get_spec
from .specs import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    LEVELS,
    NORMS,
    OUTPUT_STRIDES,
    BackboneSpec,
    FeatureInfo,
    LevelInfo,
    StageSpec,
    check_int,
    check_levels,
)
from .stages import (
    declared_feature_info,
    describe_stem,
    find_first_conv,
    infer_stages,
    run_checkpointed,
    unstaged_children,
)
from .weights import BackboneRecord, LoadReport, WeightsArg, adapt_stats, load_weights

__all__ = ["Backbone", "adapt_stats", "backbone_for_record", "check_input", "create_backbone"]


def check_input(name: str, in_chans: int, x: object) -> None:
    """Raise a clear error unless ``x`` is an ``(N, in_chans, H, W)`` tensor.

    Raises:
        TypeError: ``x`` is not a tensor.
        ValueError: ``x`` is not 4-D or has another number of channels.
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"Backbone {name!r} takes a Tensor, got {type(x).__name__}.")
    if x.ndim != 4 or x.shape[1] != in_chans:
        hint = ""
        if x.ndim == 3:
            hint = "Add a batch dimension with x.unsqueeze(0)."
        elif x.ndim == 4:
            hint = f"Build it with in_chans={x.shape[1]} to take {x.shape[1]}-channel images."
        raise ValueError(
            f"Backbone {name!r} expects input of shape (N, {in_chans}, H, W), got {tuple(x.shape)}. {hint}"
        )


class Backbone(FineTuningMixin, nn.Module):
    """A ResNet-family trunk returning an ``OrderedDict`` of pyramid levels.

    Build one with :func:`create_backbone`. Module names follow the trunk
    (``conv1``, ``bn1``, ``layer1`` … ``layer4`` for ResNet-v1, torchvision's
    names), so checkpoints and code that name them keep working. Stages past the
    deepest requested level are removed: nothing is computed past it.

    Attributes:
        name: Registry name.
        feature_info: Levels returned, with channels and strides.
        out_channels: ``{level: channels}`` for the returned levels.
        output_stride: 8, 16 or 32.
        in_chans: Number of input channels.
        mean: Per-channel input mean (0–1 scale) the weights expect.
        std: Per-channel input std the weights expect.
        weights: The weight string loaded, or ``None`` for random init.
        load_report: The :class:`~resbackbone.weights.LoadReport` of the last load.
        grad_checkpointing: What :meth:`set_grad_checkpointing` was given
            (assigning it calls that method).
        checkpoint_stages: The stages it recomputes in backward.
        spec: The registry's :class:`~resbackbone.specs.BackboneSpec`.
        all_stages: The architecture's stages, stem first (:class:`~resbackbone.specs.StageSpec`).
        kept_stages: The stages this backbone runs: up to the deepest level in ``out_levels``.
        out_levels: The levels returned, in pyramid order.
        first_conv: Module path of the first convolution (adapted for ``in_chans != 3``).
        stem_type: What the stem is (``"7x7"``, ``"deep"``, or its convolutions described).
        classifier: Key prefixes of the classifier, dropped when loading weights.
        reference_keys: Every state-dict key of the full architecture, pruned stages included:
            a checkpoint key among them but not in this backbone belongs to a removed stage.

    Example:
        >>> backbone = create_backbone("resnet18", out_levels=("C3", "C4"))
        >>> [stage.name for stage in backbone.kept_stages]
        ['stem', 'layer1', 'layer2', 'layer3']
        >>> backbone.stage_modules("C4")
        [Sequential(...)]
    """

    def __init__(
        self,
        trunk: nn.Module,
        *,
        spec: BackboneSpec,
        out_levels: Sequence[str],
        output_stride: int,
        in_chans: int,
    ) -> None:
        super().__init__()
        self.name = spec.name
        self.spec = spec
        self.in_chans = in_chans
        self.output_stride = output_stride
        self.weights: str | None = None
        self.load_report: LoadReport | None = None
        imagenet = spec.imagenet
        self.mean = adapt_stats(imagenet.mean if imagenet else IMAGENET_MEAN, in_chans)
        self.std = adapt_stats(imagenet.std if imagenet else IMAGENET_STD, in_chans)

        stages = spec.stages or infer_stages(trunk, spec.name)
        out_levels = tuple(out_levels)
        deepest = max(i for i, stage in enumerate(stages) if stage.level in out_levels)
        self.all_stages: tuple[StageSpec, ...] = tuple(stages)
        self.kept_stages: tuple[StageSpec, ...] = self.all_stages[: deepest + 1]
        self.out_levels: tuple[str, ...] = out_levels

        # Every key a full checkpoint of this architecture has, before pruning: lets
        # the loader tell "belongs to a removed stage" from "another architecture".
        self.reference_keys: frozenset[str] = frozenset(trunk.state_dict())

        self.classifier: tuple[str, ...] = spec.classifier or unstaged_children(trunk, stages)
        keep = {path.split(".")[0] for stage in self.kept_stages for path in stage.modules}
        for child_name, child in trunk.named_children():
            if child_name in keep:
                self.add_module(child_name, child)
        for stage in stages[deepest + 1 :]:
            for path in stage.modules:
                parent, _, leaf = path.rpartition(".")
                owner = self.get_submodule(parent) if parent else self
                if hasattr(owner, leaf):
                    delattr(owner, leaf)

        self.first_conv: str = spec.first_conv or find_first_conv(self, self.kept_stages[0], spec.name)
        self.stem_type: str = spec.stem or describe_stem(self, self.kept_stages[0])
        self.feature_info = self._feature_info(trunk)
        self.out_channels = {level.name: level.channels for level in self.feature_info}

    # ---------------------------------------------------------------- construction

    def _feature_info(self, trunk: nn.Module) -> FeatureInfo:
        levels = [stage for stage in self.kept_stages if stage.level in self.out_levels]
        declared = declared_feature_info(trunk, levels)
        if declared is not None:
            return declared
        # A trunk that declares nothing: measure once on a small input.
        size = 64
        was_training = self.training
        self.eval()
        with torch.no_grad():
            features = self.forward_stages(torch.zeros(1, self.in_chans, size, size))
        self.train(was_training)
        return FeatureInfo(
            [
                LevelInfo(s.level, features[s.level].shape[1], size // features[s.level].shape[-1], s.modules[-1])
                for s in levels
            ]
        )

    # ---------------------------------------------------------------- weights and norms

    def load_weights(
        self, source: WeightsArg, *, strict: bool = True, progress: bool = True, label: str | None = None
    ) -> LoadReport:
        """Load a checkpoint and report what happened to every key.

        The classifier is dropped, keys of removed stages and batch-norm statistics
        GroupNorm has no use for are ignored, and the first convolution is adapted
        when ``in_chans != 3``; everything else must match. Sets :attr:`weights`,
        :attr:`load_report` and, where the weights record them, :attr:`mean`/:attr:`std`
        (a run's ``best.pt`` or an exported ``backbone.safetensors`` records them).

        Args:
            source: A weight string (``"imagenet"``, ``"torchvision:<TAG>"``,
                ``"timm:<tag>"``, ``"https://…#sha256=<hex>"``), a path (a checkpoint,
                a run's ``best.pt``, an exported ``backbone.safetensors``, a run folder)
                or a state dict.
            strict: Raise when keys are missing, unexpected or of another shape.
            progress: Show a progress bar while downloading.
            label: What to call the weights in :attr:`weights` and the report
                (for a state dict taken out of a larger checkpoint).

        Returns:
            The :class:`~resbackbone.weights.LoadReport`.

        Raises:
            ValueError: Nothing in the checkpoint fits, or (with ``strict``) part
                does not; the message lists the keys.

        Example:
            >>> print(create_backbone("resnet50").load_weights("torchvision:IMAGENET1K_V2"))
            LoadReport(torchvision:IMAGENET1K_V2: 318 loaded; ignored: 2 classifier)
        """
        return load_weights(self, source, strict=strict, progress=progress, label=label)

    def set_norm(self, norm: str) -> None:
        """Rewrite the batch norms under the policy ``norm``, in place.

        ``"bn"`` keeps them, ``"frozen_bn"`` freezes statistics and affine
        parameters, ``"gn"`` replaces them by GroupNorm (32 groups) and
        ``"sync_bn"`` by SyncBatchNorm.

        Raises:
            ValueError: ``norm`` is not one of those.
        """
        convert_norm(self, norm)

    def stage_modules(self, stage: StageSpec | str) -> list[nn.Module]:
        """The modules of ``stage`` (a :class:`StageSpec`, or a stage or level name) this backbone still has.

        A stage past the deepest requested level was removed: it has none.

        Raises:
            ValueError: ``stage`` names no stage of this backbone.
        """
        if isinstance(stage, str):
            found = next((s for s in self.all_stages if stage in (s.name, s.level)), None)
            if found is None:
                names = [key for s in self.all_stages for key in (s.name, s.level) if key]
                raise ValueError(f"stage={stage!r} names no stage of {self.name!r}; expected one of {names}.")
            stage = found
        modules = []
        for path in stage.modules:
            with contextlib.suppress(AttributeError):  # a pruned stage
                modules.append(self.get_submodule(path))
        return modules

    # ---------------------------------------------------------------- forward

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor]:
        """Run the trunk up to the deepest requested level.

        Args:
            x: Images, ``(N, in_chans, H, W)``, normalised with ``mean``/``std``.

        Returns:
            ``OrderedDict`` level → ``(N, feature_info[level].channels, ⌈H/stride⌉, ⌈W/stride⌉)``.

        Raises:
            ValueError: ``x`` is not 4-D or has the wrong number of channels.
        """
        check_input(self.name, self.in_chans, x)
        return self.forward_stages(x)

    def forward_stages(self, x: Tensor) -> OrderedDict[str, Tensor]:
        """The forward over the kept stages, without the input check of :meth:`forward`.

        For tracing, export and wrappers that check their input themselves.
        """
        out: OrderedDict[str, Tensor] = OrderedDict()
        use_checkpoint = bool(self.checkpoint_stages) and self.training and torch.is_grad_enabled()
        for stage in self.kept_stages:
            modules = [self.get_submodule(path) for path in stage.modules]
            if use_checkpoint and stage.name in self.checkpoint_stages:
                x = run_checkpointed(stage, modules, x, reentrant=self.checkpoint_reentrant)
            else:
                for module in modules:
                    x = module(x)
            if stage.level in self.out_levels:
                out[stage.level] = x
        return out

    def extra_repr(self) -> str:
        return f"name={self.name!r}, levels={self.feature_info.names}, output_stride={self.output_stride}"


# ------------------------------------------------------------------ factory


def create_backbone(
    name: str,
    *,
    weights: WeightsArg = None,
    out_levels: Sequence[str] = LEVELS,
    output_stride: int = 32,
    in_chans: int = 3,
    norm: str = "bn",
    trainable_stages: int | None = None,
    drop_path_rate: float = 0.0,
    grad_checkpointing: bool | Sequence[str] = False,
) -> Backbone:
    """Build a registered backbone that returns the C2–C5 pyramid.

    Args:
        name: Registry name, see :func:`~resbackbone.list_backbones`.
        weights: ``None`` (random init), ``"imagenet"`` (the recommended checkpoint),
            ``"torchvision:IMAGENET1K_V2"``, ``"timm:a1_in1k"``, a local
            ``.pth``/``.pt``/``.bin``/``.safetensors`` file, an
            ``https://…#sha256=<hex>`` URL, or a state dict.
        out_levels: Levels to return, a subset of ``("C2", "C3", "C4", "C5")``,
            returned in pyramid order.
        output_stride: 32, or 16/8 to dilate the last one/two stages.
        in_chans: Input channels; pretrained RGB filters are adapted.
        norm: ``"bn"``, ``"frozen_bn"`` (statistics and affine frozen),
            ``"gn"`` (GroupNorm, 32 groups) or ``"sync_bn"``.
        trainable_stages: 0–5 stages trainable counted from C5 down (as
            torchvision's ``trainable_layers``); ``None`` trains all.
        drop_path_rate: Stochastic depth rate over the blocks, in [0, 1).
        grad_checkpointing: Recompute activations in backward: ``True`` for
            the stages at stride 8 or finer, or the stages to checkpoint
            (``("stem", "C2", "C3", "C4", "C5")``), see
            :meth:`Backbone.set_grad_checkpointing`.

    Returns:
        The :class:`Backbone`.

    Raises:
        ValueError: An unknown name or option value, or weights that do not fit.
        TypeError: An option of the wrong type.

    Example:
        >>> backbone = create_backbone("resnet18", out_levels=("C3", "C4", "C5"), output_stride=16)
        >>> {k: tuple(v.shape) for k, v in backbone(torch.randn(1, 3, 64, 64)).items()}
        {'C3': (1, 128, 8, 8), 'C4': (1, 256, 4, 4), 'C5': (1, 512, 4, 4)}
    """
    spec = get_spec(name)
    levels = check_levels(out_levels)
    output_stride = check_int("output_stride", output_stride, OUTPUT_STRIDES)
    in_chans = check_int("in_chans", in_chans, minimum=1)
    if norm not in NORMS:
        raise ValueError(f"norm={norm!r} is not valid: expected one of {NORMS}.")
    if not isinstance(drop_path_rate, numbers.Real) or not 0.0 <= drop_path_rate < 1.0:
        raise ValueError(f"drop_path_rate={drop_path_rate!r} is not valid: expected a float in [0, 1).")
    if norm == "frozen_bn" and weights is None:
        raise ValueError(
            "norm='frozen_bn' with weights=None would freeze randomly initialised statistics (mean 0, var 1) "
            "and affine parameters for good. Pass pretrained weights (e.g. weights='imagenet'), or use norm='bn' "
            "or norm='gn' to train from scratch."
        )

    trunk = spec.builder(in_chans=in_chans, output_stride=output_stride, drop_path_rate=float(drop_path_rate))
    backbone = Backbone(trunk, spec=spec, out_levels=levels, output_stride=output_stride, in_chans=in_chans)
    backbone.set_norm(norm)
    if weights is not None:
        backbone.load_weights(weights)
    backbone.set_trainable_stages(trainable_stages)
    backbone.set_grad_checkpointing(grad_checkpointing)
    return backbone


def backbone_for_record(record: BackboneRecord) -> Backbone:
    """An untrained backbone of the architecture, ``in_chans`` and norm that ``record`` describes, for its
    weights to load into (group norm where the run trained with it, batch norm otherwise)."""
    norm = "gn" if record.origin.get("norm") == "gn" else "bn"
    return create_backbone(record.architecture, in_chans=record.in_chans, norm=norm)
