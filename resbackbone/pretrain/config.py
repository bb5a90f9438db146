"""The pretraining recipe: sections ``model``, ``pretrain``, ``optim`` and ``run``, validated like a fine-tuning recipe.

``optim`` and ``run`` are the fine-tuning recipe's sections (AMP, schedule,
accumulation, clipping, seeds, workers); ``model`` names the backbone to
pretrain; ``pretrain`` the method, the unlabeled images, the views and what to
monitor. Relative paths resolve against the recipe's folder. Load one with
:func:`load_pretrain_recipe` (``extends``, ``--set`` and strict keys as
:func:`~resbackbone.recipes.load_recipe`).

Example::

    name: ssl_resnet18
    model: {backbone: resnet18, in_chans: 3}
    pretrain:
      method: simclr
      images:
        - {folder: /data/unlabeled_scans}
        - {recipe: ../bccd_faster_rcnn.yaml, root: /data/bccd, split: train}
      views: {resize: 256, crop_size: 96, vflip: 0.5, rotate90: 0.5}
      monitor: [{recipe: ../bccd_faster_rcnn.yaml, root: /data/bccd, split: val}]
    optim: {optimizer: adamw, lr: 0.002, epochs: 100, batch_size: 64, warmup_epochs: 5}
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from ..recipes import OptimConfig, RunConfig, load_recipe
from ..recipes.schema import GradCheckpointing
from ..specs import NORMS
from .methods import METHODS, OPTIONS

__all__ = [
    "ImageSource",
    "MonitorConfig",
    "PretrainConfig",
    "PretrainModelConfig",
    "PretrainRecipe",
    "ViewsConfig",
    "load_pretrain_recipe",
]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _resolve(value: Path | None, info: ValidationInfo) -> Path | None:
    """A path made absolute against the recipe's folder (the validation context's ``base_dir``)."""
    if value is None:
        return None
    value = value.expanduser()
    base = (info.context or {}).get("base_dir")
    return value if value.is_absolute() or base is None else Path(base) / value


class PretrainModelConfig(_Section):
    """``model:`` — the backbone to pretrain.

    Attributes:
        backbone: Registry name (``resbackbone list``; registered plug-ins too).
        weights: Weights to start from (``imagenet``, a file, a run folder); ``null`` for random init.
        in_chans: Input channels (1 for grayscale scans); images are read as fine-tuning reads them.
        norm: ``bn``, ``gn`` or ``sync_bn`` (``frozen_bn`` would freeze what pretraining trains).
        trainable_stages: Stages trained, counted from C5 down (1–5); ``null`` trains all.
        grad_checkpointing: As the fine-tuning recipe's: recompute activations in backward.
    """

    backbone: str = "resnet50"
    weights: str | None = None
    in_chans: int = Field(default=3, ge=1)
    norm: str = "bn"
    trainable_stages: int | None = None
    grad_checkpointing: GradCheckpointing = False

    @model_validator(mode="after")
    def _check(self) -> PretrainModelConfig:
        from ..registry import get_spec

        get_spec(self.backbone)
        if self.norm == "frozen_bn":
            raise ValueError(
                "norm='frozen_bn' freezes the batch norms that pretraining trains; use norm: bn (or gn, sync_bn)"
            )
        if self.norm not in NORMS:
            raise ValueError(
                f"norm={self.norm!r} is not valid: expected one of {[n for n in NORMS if n != 'frozen_bn']}"
            )
        if self.trainable_stages == 0:
            raise ValueError(
                "trainable_stages=0 freezes the whole backbone: pretraining would train nothing. "
                "Use null (all stages) or 1–5 (stages from C5 down)"
            )
        if self.trainable_stages is not None and not 1 <= self.trainable_stages <= 5:
            raise ValueError(f"trainable_stages={self.trainable_stages} is not valid: expected 1–5 or null")
        return self


class ImageSource(_Section):
    """One place unlabeled images come from: a folder, or a split of a fine-tuning recipe's dataset.

    Attributes:
        folder: Every image file under this folder (searched recursively; hidden entries skipped).
        recipe: A fine-tuning recipe whose ``data:`` section lists the images (labels unused).
        root: The dataset folder for ``recipe`` (what ``--data`` gives ``resbackbone finetune``).
        split: The split of ``recipe`` to take: ``train`` or ``val`` (a test split stays unseen).
        overrides: ``KEY=VALUE`` changes to ``recipe``, as its ``--set`` (e.g. ``data.classes=[a, b]``).
    """

    folder: Path | None = None
    recipe: Path | None = None
    root: Path | None = None
    split: Literal["train", "val"] = "train"
    overrides: list[str] = Field(default_factory=list)

    @field_validator("folder", "recipe", "root")
    @classmethod
    def _absolute(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        return _resolve(value, info)

    @model_validator(mode="after")
    def _check(self) -> ImageSource:
        if (self.folder is None) == (self.recipe is None):
            raise ValueError(
                "give one of folder (a folder of images) or recipe (a dataset split), e.g. {folder: scans}"
            )
        if self.folder is not None and (self.root is not None or self.overrides):
            raise ValueError("root and overrides apply to a recipe source, not to a folder; remove them")
        return self

    def describe(self) -> str:
        """``"folder /data/scans"`` or ``"recipes/bccd.yaml train split (/data/bccd)"``."""
        if self.folder is not None:
            return f"folder {self.folder}"
        return f"{self.recipe} {self.split} split" + (f" ({self.root})" if self.root else "")


class ViewsConfig(_Section):
    """``pretrain.views:`` — how the two views of an image are cut and augmented.

    Attributes:
        resize: Images are first resized so their longer side is this (objects at
            the scale fine-tuning sees them); ``null`` keeps the file's size.
        crop_size: Side of each view.
        min_scale: Smallest area of a view's crop, as a fraction of the resized image.
        hflip: Probability of a horizontal flip.
        vflip: Probability of a vertical flip (microscopy, scans without an up).
        rotate90: Probability of a rotation by a multiple of 90 degrees.
        color_jitter: Probability of colour jitter (brightness/contrast on one channel).
        jitter_strength: Scales the method's jitter magnitudes (stains carry class
            information: keep it below 1 for histology and blood smears).
        grayscale: Probability of converting an RGB view to gray.
        blur: Probability of Gaussian blur on both views; ``null`` takes the method's.
    """

    resize: int | None = Field(default=256, ge=16)
    crop_size: int = Field(default=96, ge=16)
    min_scale: float = Field(default=0.2, gt=0, le=1)
    hflip: float = Field(default=0.5, ge=0, le=1)
    vflip: float = Field(default=0.0, ge=0, le=1)
    rotate90: float = Field(default=0.0, ge=0, le=1)
    color_jitter: float = Field(default=0.8, ge=0, le=1)
    jitter_strength: float = Field(default=0.5, ge=0)
    grayscale: float = Field(default=0.2, ge=0, le=1)
    blur: float | None = Field(default=None, ge=0, le=1)


class MonitorConfig(_Section):
    """One labelled split to watch the features on: a dense linear probe, logged per epoch (never a test split).

    Attributes:
        recipe: A fine-tuning recipe (its data section and task).
        root: Its dataset folder (``--data``).
        split: ``val`` (or ``train``).
        images: At most this many images (half fit the probe, half score it).
        overrides: ``KEY=VALUE`` changes to ``recipe``, as its ``--set``.
    """

    recipe: Path
    root: Path | None = None
    split: Literal["train", "val"] = "val"
    images: int = Field(default=32, ge=2)
    overrides: list[str] = Field(default_factory=list)

    @field_validator("recipe", "root")
    @classmethod
    def _absolute(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        return _resolve(value, info)


class PretrainConfig(_Section):
    """``pretrain:`` — the method, the unlabeled images, the views and the monitor.

    Attributes:
        method: ``simclr``, ``mocov2``, ``byol`` or ``densecl`` (:data:`~resbackbone.pretrain.METHODS`).
        images: Where the images come from: one or more :class:`ImageSource`.
        views: :class:`ViewsConfig`.
        temperature: Contrastive methods: the softmax temperature.
        projection_dim: Width of the projection (and prediction) output.
        hidden_dim: Width of the heads' hidden layer.
        momentum: Methods with a momentum encoder: its starting momentum (cosine to 1).
        memory_bank: MoCo v2 / DenseCL: negatives kept from past batches.
        dense_weight: DenseCL: weight of the dense loss (the global one gets ``1 - dense_weight``).
        cache_images: Keep the resized images in memory (decoded once; for small sets of large files).
        monitor: Labelled splits for the dense linear probe (see :class:`MonitorConfig`).
        monitor_every: Probe every this many epochs (and before the first and after the last).

    Options left ``null`` take the method's defaults; an option the method does not take is an error.
    """

    method: str = "simclr"
    images: list[ImageSource] = Field(min_length=1)
    views: ViewsConfig = ViewsConfig()
    temperature: float | None = Field(default=None, gt=0)
    projection_dim: int | None = Field(default=None, ge=2)
    hidden_dim: int | None = Field(default=None, ge=2)
    momentum: float | None = Field(default=None, ge=0, lt=1)
    memory_bank: int | None = Field(default=None, ge=1)
    dense_weight: float | None = Field(default=None, gt=0, lt=1)
    cache_images: bool = False
    monitor: list[MonitorConfig] = Field(default_factory=list)
    monitor_every: int = Field(default=1, ge=1)

    @model_validator(mode="after")
    def _check(self) -> PretrainConfig:
        if self.method not in METHODS:
            raise ValueError(f"method {self.method!r} is not known: expected one of {sorted(METHODS)}")
        spec = METHODS[self.method]
        for name in OPTIONS:
            if getattr(self, name) is not None and name not in spec.defaults:
                raise ValueError(
                    f"{name} does not apply to method {self.method!r} (it takes {', '.join(spec.defaults)}); "
                    f"remove pretrain.{name}"
                )
        return self

    def options(self) -> dict[str, float | int | None]:
        """The method options as set (``None`` for the method's default)."""
        return {name: getattr(self, name) for name in OPTIONS}


class PretrainRecipe(_Section):
    """A whole pretraining recipe (see the module docs)."""

    name: str
    description: str = ""
    model: PretrainModelConfig
    pretrain: PretrainConfig
    optim: OptimConfig = OptimConfig()
    run: RunConfig = RunConfig()

    @model_validator(mode="after")
    def _check(self) -> PretrainRecipe:
        if self.run.early_stopping is not None:
            raise ValueError(
                "run.early_stopping has no metric to watch in pretraining (the probe is a monitor, not a target); "
                "remove it and set optim.epochs"
            )
        if self.optim.ema:
            raise ValueError(
                f"optim.ema={self.optim.ema}: pretraining writes the trained backbone, not an average of it (byol, "
                "mocov2 and densecl keep their own momentum encoder); remove optim.ema"
            )
        return self


def load_pretrain_recipe(
    path: str | os.PathLike[str], *, overrides: list[str] | None = None, images: list[str] | None = None
) -> PretrainRecipe:
    """Load a pretraining recipe: ``extends``, ``--set`` overrides, strict keys.

    Args:
        path: The YAML file.
        overrides: ``["pretrain.method=byol", ...]``.
        images: Folders replacing ``pretrain.images`` (the CLI's ``--images``),
            relative to the current folder.

    Raises:
        RecipeError: The file cannot be read, a key is unknown or a value invalid.
    """
    sets = list(overrides or [])
    if images:
        folders = ", ".join("{folder: " + json.dumps(str(Path(f).expanduser().absolute())) + "}" for f in images)
        sets.append(f"pretrain.images=[{folders}]")
    return load_recipe(path, overrides=sets, schema=PretrainRecipe)
