"""The typed recipe schema: sections ``model``, ``data``, ``optim``, ``eval``, ``run``, validated by pydantic.

Unknown keys are refused (``extra="forbid"``); :mod:`resbackbone.recipes.reader`
turns the errors into messages that name the dotted path and the right key.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ..data.config import FORMAT_TASKS, DataConfig
from ..specs import NORMS, OUTPUT_STRIDES
from ..tiling.config import SlidingWindowConfig, TilesConfig, check_scales, check_tiles_and_scales, check_tta_names

__all__ = [
    "HEAD_TASKS",
    "EvalConfig",
    "ModelConfig",
    "OptimConfig",
    "Recipe",
    "RecipeError",
    "RunConfig",
    "SlidingWindowConfig",
    "TilesConfig",
]

HEAD_TASKS: dict[str, str] = {
    "faster_rcnn": "detection",
    "retinanet": "detection",
    "deeplabv3": "segmentation",
    "deeplabv3plus": "segmentation",
    "fpn": "segmentation",
    "unet": "segmentation",
}


class RecipeError(ValueError):
    """A recipe that cannot be loaded: the message names the file, the key and the fix."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


GradCheckpointing = bool | list[Literal["stem", "C2", "C3", "C4", "C5"]]
"""``model.grad_checkpointing``: every stage (``true``), none, or the stages named."""


class ModelConfig(_Section):
    """``model:`` — the head, the backbone and how much of it trains.

    Attributes:
        head: ``faster_rcnn``, ``retinanet`` (detection); ``deeplabv3``,
            ``deeplabv3plus``, ``fpn``, ``unet`` (segmentation).
        backbone: Registry name (``resbackbone list``).
        backbone_weights: Weight string for the backbone (``imagenet``, a file…); ``null`` for random init.
        weights: Weight string for the whole model (``torchvision:COCO_V1``, a file).
        output_stride: Segmentation heads: 8 or 16 (dilated last stages); ``null`` lets the head
            choose (16 for DeepLab, 32 for FPN and U-Net).
        trainable_stages: Backbone stages trained, 0–5 from C5 down; ``null`` trains all.
        norm: ``bn``, ``frozen_bn``, ``gn`` or ``sync_bn``; ``null`` lets the head choose
            (frozen BN for a pretrained detector backbone, BN otherwise).
        freeze_backbone_epochs: Train the head alone for this many epochs first.
        aux_loss: DeepLabV3: add the auxiliary FCN head on C4 (weight 0.4).
        in_chans: Input channels (1 for grayscale); pretrained RGB filters are adapted.
        loss: Segmentation: cross-entropy, Dice, or their sum.
        min_size: Detection: shorter side the detector resizes to; ``null`` keeps ``data.image_size``.
        max_size: Detection: cap on the longer side; ``null`` keeps ``data.image_size``.
        anchor_sizes: Detection: one tuple of sizes per pyramid level.
        score_thresh: Detection: minimum score kept at inference.
        levels: Faster R-CNN: backbone levels under the FPN; ``null`` takes C2–C5.
            ``[C3, C4, C5]`` drops the stride-4 maps, the costliest part of a CPU step.
        fpn_channels: Detection: width of the FPN maps (torchvision's 256; 128 for a CPU budget).
        box_head_width: Faster R-CNN: width of the box head's two fully connected layers
            (torchvision's 1024; 512 for a CPU budget).
        head_options: Detection: further options of torchvision's ``FasterRCNN`` or
            ``RetinaNet``, e.g. ``{box_batch_size_per_image: 256, rpn_post_nms_top_n_train: 1000}``
            (fewer sampled RoIs and proposals make CPU steps cheaper).
        grad_checkpointing: Recompute backbone activations in backward to save memory:
            ``true`` for the stages at stride 8 or finer, or a list from ``stem``, ``C2``–``C5``.
    """

    head: Literal["faster_rcnn", "retinanet", "deeplabv3", "deeplabv3plus", "fpn", "unet"]
    backbone: str = "resnet50"
    backbone_weights: str | None = "imagenet"
    weights: str | None = None
    output_stride: int | None = None
    trainable_stages: int | None = 3
    norm: str | None = None
    freeze_backbone_epochs: int = Field(default=0, ge=0)
    aux_loss: bool = False
    in_chans: int = Field(default=3, ge=1)
    loss: Literal["ce", "dice", "ce+dice"] = "ce+dice"
    min_size: int | None = Field(default=None, ge=32)
    max_size: int | None = Field(default=None, ge=32)
    anchor_sizes: list[list[int]] | None = None
    score_thresh: float = Field(default=0.05, ge=0.0, le=1.0)
    levels: list[Literal["C2", "C3", "C4", "C5"]] | None = None
    fpn_channels: int = Field(default=256, ge=8)
    box_head_width: int = Field(default=1024, ge=1)
    head_options: dict[str, int | float | bool] = Field(default_factory=dict)
    grad_checkpointing: GradCheckpointing = False

    @property
    def task(self) -> str:
        return HEAD_TASKS[self.head]

    @model_validator(mode="after")
    def _check(self) -> ModelConfig:
        from ..registry import get_spec

        get_spec(self.backbone)
        if self.output_stride is not None and self.output_stride not in OUTPUT_STRIDES:
            raise ValueError(f"output_stride={self.output_stride} is not valid: expected one of {OUTPUT_STRIDES}")
        if self.norm is not None and self.norm not in NORMS:
            raise ValueError(f"norm={self.norm!r} is not valid: expected one of {NORMS}")
        if self.trainable_stages is not None and not 0 <= self.trainable_stages <= 5:
            raise ValueError(f"trainable_stages={self.trainable_stages} is not valid: expected 0–5 or null")
        if self.levels is not None and self.head != "faster_rcnn":
            raise ValueError(
                f"levels={self.levels} applies to faster_rcnn only (its FPN); {self.head!r} uses fixed levels: "
                "remove model.levels"
            )
        # against the field's default, not model_fields_set: a checkpoint's dumped recipe sets every field
        if self.fpn_channels != type(self).model_fields["fpn_channels"].default and self.task != "detection":
            raise ValueError(
                f"fpn_channels={self.fpn_channels} applies to detection heads only, not to {self.head!r}: "
                "remove model.fpn_channels"
            )
        if self.box_head_width != type(self).model_fields["box_head_width"].default and self.head != "faster_rcnn":
            raise ValueError(
                f"box_head_width={self.box_head_width} applies to faster_rcnn only (its box head), not to "
                f"{self.head!r}: remove model.box_head_width"
            )
        if self.head_options:
            if self.task != "detection":
                raise ValueError(
                    f"head_options {sorted(self.head_options)} apply to detection heads only, not to {self.head!r}: "
                    "remove model.head_options"
                )
            from ..heads.detection import check_head_kwargs

            try:
                check_head_kwargs(self.head, self.head_options)
            except TypeError as exc:
                raise ValueError(str(exc)) from None
        return self


class OptimConfig(_Section):
    """``optim:`` — optimiser, schedule and batch.

    Attributes:
        optimizer: ``sgd``, ``adamw`` or ``adam``.
        lr: Learning rate of the head (for the effective batch size as given).
        backbone_lr_mult: The backbone's learning rate relative to ``lr``.
        layer_decay: Per-stage decay of the backbone's rate: stage k below C5
            gets ``backbone_lr_mult * layer_decay**k``; ``null`` for none.
        weight_decay: Decoupled (AdamW) or L2 (SGD) weight decay; norms and biases get none.
        momentum: SGD momentum.
        epochs: Passes over the training split.
        batch_size: Images per step per process.
        accumulate: Steps whose gradients are summed before an update.
        clip_grad: Clip the gradient norm to this value; ``null`` for no clipping.
        warmup_epochs: Linear warm-up, in epochs (fractions allowed).
        schedule: ``cosine``, ``step`` or ``constant`` after warm-up.
        milestones: ``step``: epochs at which the rate is multiplied by ``gamma``.
        gamma: ``step``: the factor.
        amp: ``auto`` (bf16 where the device computes it natively and faster than fp32 — CUDA with
            bf16, CPUs with AMX; on AVX512-BF16 without AMX, faster on some processors and slower on
            others, a training step is timed in both at the start and bf16 taken when it is 10 %
            faster — else ``none``; the run's start line and summary say which), ``none`` (fp32),
            ``bf16`` (CPU or CUDA) or ``fp16`` (CUDA, with a gradient scaler).
        ema: Decay of an exponential moving average of the weights, evaluated
            and saved as the model (e.g. 0.999); ``null`` for none. It is reached after a
            warm-up (timm's: ``1 - k ** (-2/3)`` at the k-th update, the first a copy; 0.99 after 1000),
            so that a short run's first weights do not weigh on its average.
    """

    optimizer: Literal["sgd", "adamw", "adam"] = "adamw"
    lr: float = Field(default=1e-3, gt=0)
    backbone_lr_mult: float = Field(default=1.0, ge=0)
    layer_decay: float | None = Field(default=None, gt=0, le=1)
    weight_decay: float = Field(default=1e-4, ge=0)
    momentum: float = Field(default=0.9, ge=0, lt=1)
    epochs: int = Field(default=10, ge=1)
    batch_size: int = Field(default=8, ge=1)
    accumulate: int = Field(default=1, ge=1)
    clip_grad: float | None = Field(default=None, gt=0)
    warmup_epochs: float = Field(default=0.0, ge=0)
    schedule: Literal["cosine", "step", "constant"] = "cosine"
    milestones: list[int] = Field(default_factory=list)
    gamma: float = Field(default=0.1, gt=0)
    amp: Literal["auto", "none", "bf16", "fp16"] = "auto"
    ema: float | None = Field(default=None, gt=0, lt=1)


class EvalConfig(_Section):
    """``eval:`` — when and how the model is evaluated (and how ``predict`` runs it).

    Attributes:
        every: Evaluate every this many epochs (and after the last).
        split: The split evaluated during training.
        metric: The metric that picks the best checkpoint: ``map``, ``map50``
            (detection) or ``miou``, ``dice`` (segmentation; foreground classes).
        batch_size: Images per evaluation step; ``null`` uses ``optim.batch_size``.
        resolution: ``native``: predictions are resized back to each image file's size
            and scored against its own annotations (boxes in the file's pixels, masks at
            its size), as mmseg and nnU-Net report; ``model``: scored on the resized,
            padded input, as trained (cheaper, not comparable across image sizes).
        sliding_window: Segmentation: windows at the training scale, logits blended
            (:class:`~resbackbone.tiling.config.SlidingWindowConfig`); ``null``: whole images.
        tiles: Detection: overlapping tiles at the training scale, boxes merged
            (:class:`~resbackbone.tiling.config.TilesConfig`); ``null``: whole images.
        tta: Test-time augmentation, each one more pass: ``hflip``, ``vflip``, ``rot90``,
            ``rot180``, ``rot270``, ``transpose``, ``antitranspose``. Segmentation averages
            the passes' logits; detection fuses their boxes (weighted box fusion).
        tta_scales: Input scales of test-time augmentation: every pass of ``tta`` runs on the
            model's input resized by each (logits resized back, boxes scaled back), as DeepLab's
            multi-scale inference and mmdet's multi-scale test; ``[1.0]``, the default, is the
            plain input. Each scale in [0.25, 4]; a scale above 1 shows small objects larger.
    """

    every: int = Field(default=1, ge=1)
    split: Literal["train", "val", "test"] = "val"
    metric: Literal["map", "map50", "miou", "dice"] | None = None
    batch_size: int | None = Field(default=None, ge=1)
    resolution: Literal["native", "model"] = "native"
    sliding_window: SlidingWindowConfig | None = None
    tiles: TilesConfig | None = None
    tta: list[str] = Field(default_factory=list)
    tta_scales: list[float] = Field(default_factory=lambda: [1.0])

    @field_validator("tta")
    @classmethod
    def _check_tta(cls, value: list[str]) -> list[str]:
        return check_tta_names(value)

    @field_validator("tta_scales")
    @classmethod
    def _check_scales(cls, value: list[float]) -> list[float]:
        return check_scales(value)


class RunConfig(_Section):
    """``run:`` — output, seed, device and stopping rules.

    Attributes:
        output: Folder of checkpoints, metrics and plots (relative to the working directory).
        seed: Seed of weights, data order and augmentations.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        workers: Data-loading processes per training process.
        early_stopping: Stop after this many evaluations without improvement; ``null`` never.
        max_steps_per_epoch: Cap on steps per epoch (quick trials); ``null`` for a full pass.
        nan_policy: ``stop`` the run on a NaN/Inf loss, or ``skip`` the batch and count it.
        overlays: Validation images drawn with their predictions at the end.
        channels_last: Run the model in channels-last memory format: ``true``, ``false``, or ``auto``
            (time a training step in both formats at the start and keep the faster; channels-last
            unless contiguous is clearly faster, as ``optimize_for_inference`` chooses).
        compile: Compile the training step with ``torch.compile`` (the whole segmenter; a detector's
            backbone and FPN). The first steps take longer while it compiles.
        malloc: ``reuse`` keeps the tensor buffers the process frees for its next step instead of
            giving them back to the system (Linux with glibc; a DeepLabV3+ step 0.84× as long on a
            2-core CPU), at the cost of holding the memory of the peak; ``system`` leaves
            ``malloc`` as it is (:func:`~resbackbone.engine.acceleration.configure_malloc`).
    """

    output: str = "runs/{name}"
    seed: int = 0
    device: str = "auto"
    workers: int = Field(default=2, ge=0)
    early_stopping: int | None = Field(default=None, ge=1)
    max_steps_per_epoch: int | None = Field(default=None, ge=1)
    nan_policy: Literal["stop", "skip"] = "stop"
    overlays: int = Field(default=4, ge=0)
    channels_last: bool | Literal["auto"] = False
    compile: bool = False
    malloc: Literal["reuse", "system"] = "reuse"


class Recipe(_Section):
    """A whole recipe. See the module docs for the file format."""

    name: str
    description: str = ""
    model: ModelConfig
    data: DataConfig
    optim: OptimConfig = OptimConfig()
    eval: EvalConfig = EvalConfig()
    run: RunConfig = RunConfig()

    @property
    def task(self) -> str:
        return self.model.task

    @property
    def metric(self) -> str:
        return self.eval.metric or ("map50" if self.task == "detection" else "miou")

    @model_validator(mode="after")
    def _check_fit(self) -> Recipe:
        tasks = FORMAT_TASKS[self.data.format]
        if self.task not in tasks:
            raise ValueError(
                f"model.head {self.model.head!r} is a {self.task} head, but data.format {self.data.format!r} "
                f"holds {' / '.join(tasks)} annotations; choose a {' or '.join(tasks)} head or another dataset"
            )
        detection_metric = self.metric in ("map", "map50")
        if detection_metric != (self.task == "detection"):
            raise ValueError(f"eval.metric {self.metric!r} does not apply to {self.task}")
        if self.eval.sliding_window is not None and self.task == "detection":
            raise ValueError(
                f"eval.sliding_window applies to segmentation, but {self.model.head!r} is a detection head; "
                "for detection use eval.tiles: {size: ..., overlap: ...} (boxes merged across tiles)"
            )
        if self.eval.tiles is not None and self.task == "segmentation":
            raise ValueError(
                f"eval.tiles applies to detection, but {self.model.head!r} is a segmentation head; "
                "for segmentation use eval.sliding_window: {size: ..., overlap: ..., blend: gaussian}"
            )
        check_tiles_and_scales(self.eval.tiles, self.eval.tta_scales)
        if self.data.train_on_val and self.run.early_stopping and self.eval.split == "val":
            raise ValueError(
                f"run.early_stopping={self.run.early_stopping} watches val, but data.train_on_val trains on val, "
                "whose score then only rises; set run.early_stopping: null, or data.train_on_val: false to keep "
                "val held out"
            )
        return self
