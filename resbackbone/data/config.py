"""The ``data:`` section of a recipe: format, root, splits, classes, image size and augmentations.

Every dataset is a ``format`` plus a ``root`` folder; each split (``train``,
``val``, ``test``) is given in the format's own natural way, as a short
string or as a mapping. Relative paths resolve against ``root``; a relative
``root`` resolves against the recipe's folder.

Example (one recipe per format)::

    data: {format: coco, root: data/coco,
           train: {annotations: annotations/instances_train.json, images: train},
           val: {annotations: annotations/instances_val.json, images: val}}
    data: {format: voc, root: data/VOC2012, classes: [cat, dog], train: train, val: val}
    data: {format: yolo, root: data/yolo, classes: [person, car], train: images/train, val: images/val}
    data: {format: mask_folder, root: data/nuclei, classes: [background, nucleus], train: train, val: val}
    data: {format: voc_seg, root: data/VOC2012, train: train, val: val}
    data: {format: shapes, image_size: 128}
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .augment import validate_augment
from .formats import FORMAT_SPECS, FORMAT_TASKS, FORMATS
from .formats.base import SPLITS, SplitSpec

__all__ = ["FORMATS", "FORMAT_TASKS", "SPLITS", "DataConfig", "SplitSpec"]

Format = Literal[FORMATS]  # type: ignore[valid-type]  # the names in the format table


class DataConfig(BaseModel):
    """The ``data:`` section of a recipe.

    Attributes:
        format: ``coco``, ``voc``, ``yolo`` (detection), ``mask_folder``,
            ``voc_seg`` (segmentation), or ``shapes``, the built-in generated
            demo dataset (both tasks, no ``root`` needed).
        root: Dataset folder. Relative paths resolve against the recipe's
            folder. Required for every format but ``shapes``.
        train: Training split (see :class:`SplitSpec`). When unset, the
            format's conventional place is used if present
            (``ImageSets/Main/train.txt`` for VOC, ``train.txt`` or
            ``images/train`` for mask folders, ``images/train`` for YOLO).
        val: Validation split, as ``train``.
        test: Test split, as ``train``.
        classes: Class names. Detection: the object classes as named in the
            annotations (no background); optional for COCO (categories) and
            VOC (names found in the XML files, sorted), and for YOLO when
            ``root/data.yaml`` has ``names``. Segmentation: every mask class in
            index order, background first; mask folders default to the binary
            ``[background, foreground]``, ``voc_seg`` to the 21 VOC classes.
        class_map: Segmentation masks only: mask pixel value → class name (or
            index) in ``classes``; the name ``ignore`` maps to ``ignore_index``.
            Without it, binary masks read 0 → 0 and 1 or 255 → 1, and index
            masks read value v → class v with 255 ignored. Any other value is
            an error naming the mask file.
        image_size: Side of the square network input, or ``[height, width]``.
        crop_size: Training only: random crops of this size are cut from the
            resized, padded image (e.g. 256 from 512 keeps small objects large
            and steps cheap); evaluation sees the whole ``image_size`` input.
            Default: ``image_size``.
            Default: 128 for ``shapes``, 512 otherwise.
        resize: ``letterbox`` (keep aspect ratio, pad bottom/right) or ``stretch``.
        augment: Training augmentations, each ``{name: <albumentations class>,
            p: 0.5, ...}`` (keyword arguments of that class); ``OneOf`` and other
            compositions take a nested ``transforms:`` list.
        ignore_index: Label of ignored mask pixels (padding, VOC boundaries).
        allow_outside_root: Accept image paths in annotation files that point
            outside the dataset root (refused by default).
        window: DICOM only: ``[center, width]`` overriding the files' window.
        intensity_percentiles: ``[low, high]``: each image's contrast is stretched so that
            these percentiles of its pixels become black and white, in training,
            evaluation and prediction alike (microscopy's normalisation: ``[1, 99.8]`` in
            CSBDeep/StarDist), so that dim and bright acquisitions look alike to the model.
            ``null`` reads pixels as they are.
        train_fraction: Train on this fraction of the training images (0 < f <= 1,
            rounded up to whole images), the rest left unlabelled: a label-efficiency
            run. Subsets are nested: for one ``subset_seed`` the 10% subset lies
            inside the 25% one. ``null`` trains on every image.
        train_count: As ``train_fraction``, as a number of images (the first
            ``train_count`` of the same seeded order, so also nested).
        subset_seed: Seed of the order the subsets are taken from (independent of
            ``run.seed``, so runs with other seeds see the same labelled images).
        train_on_val: Train on the val images too, the refit once the settings have been
            chosen on val (Pascal VOC's ``trainval``): more labelled images for the final
            model. Val then scores images the model has seen, so a run keeps its last
            evaluation as ``best.pt`` rather than the best-scoring one; the test split stays
            held out.
    """

    model_config = ConfigDict(extra="forbid")

    format: Format
    root: Path | None = None
    train: SplitSpec | str | None = None
    val: SplitSpec | str | None = None
    test: SplitSpec | str | None = None
    classes: list[str] | None = None
    class_map: dict[int, str | int] | None = None
    image_size: int | tuple[int, int] | None = None
    crop_size: int | tuple[int, int] | None = None
    resize: Literal["letterbox", "stretch"] = "letterbox"
    augment: list[dict[str, Any]] = Field(default_factory=list)
    ignore_index: int = 255
    allow_outside_root: bool = False
    window: tuple[float, float] | None = None
    intensity_percentiles: tuple[float, float] | None = None
    train_fraction: float | None = Field(default=None, gt=0, le=1)
    train_count: int | None = Field(default=None, ge=1)
    subset_seed: int = 0
    train_on_val: bool = False

    @field_validator("classes")
    @classmethod
    def _check_classes(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        if not value:
            raise ValueError("classes is empty; list the class names or leave it out")
        names = [v.strip() for v in value]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup or any(not n for n in names):
            raise ValueError(f"classes must be distinct non-empty names; got duplicates or blanks: {dup or value}")
        return names

    @field_validator("image_size", "crop_size")
    @classmethod
    def _check_size(cls, value: int | tuple[int, int] | None) -> int | tuple[int, int] | None:
        sizes = (value,) if isinstance(value, int) else (value or ())
        if any(s < 8 for s in sizes):
            raise ValueError(f"image_size {value} is too small; give a side (e.g. 512) or [height, width] >= 8")
        return value

    @field_validator("augment")
    @classmethod
    def _check_augment(cls, value: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if value:
            validate_augment(value)
        return value

    @field_validator("window")
    @classmethod
    def _check_window(cls, value: tuple[float, float] | None) -> tuple[float, float] | None:
        if value is not None and value[1] <= 0:
            raise ValueError(f"window {list(value)} has width {value[1]}; expected [center, width] with width > 0")
        return value

    @field_validator("intensity_percentiles")
    @classmethod
    def _check_percentiles(cls, value: tuple[float, float] | None) -> tuple[float, float] | None:
        if value is not None and not 0 <= value[0] < value[1] <= 100:
            raise ValueError(
                f"intensity_percentiles {list(value)} must be [low, high] with 0 <= low < high <= 100, "
                "e.g. [1, 99.8]; null to read pixels as they are"
            )
        return value

    @model_validator(mode="after")
    def _check_format(self) -> DataConfig:
        fmt, spec = self.format, FORMAT_SPECS[self.format]
        if spec.read_as:
            for name in ("train", "val", "test", "classes", "class_map"):
                if getattr(self, name) is not None:
                    raise ValueError(
                        f"data.{name} cannot be set for format {fmt!r} (its splits and classes are fixed); remove it"
                    )
        if spec.generate is None and self.root is None:
            raise ValueError(f"data.root is required for format {fmt!r}; set it to the dataset folder")
        if self.class_map is not None and not spec.mask_files:
            masks = ", ".join(name for name, s in FORMAT_SPECS.items() if s.mask_files)
            raise ValueError(f"data.class_map applies to mask formats ({masks}), not {fmt!r}; remove it")
        if self.class_map is not None:
            self._check_class_map(self.class_map)
        if self.train_fraction is not None and self.train_count is not None:
            raise ValueError(
                f"data.train_fraction={self.train_fraction} and data.train_count={self.train_count} both set; "
                "keep one of them"
            )
        for split in SPLITS:
            self.split_spec(split)
        return self

    def _check_class_map(self, class_map: dict[int, str | int]) -> None:
        names = self.classes or ["background", "foreground"]
        for value, target in class_map.items():
            if not 0 <= value <= 65535:
                raise ValueError(f"data.class_map key {value} is not a mask pixel value (0–65535)")
            if isinstance(target, str) and target != "ignore" and target not in names:
                raise ValueError(
                    f"data.class_map maps {value} to {target!r}, which is not in data.classes {names}; "
                    "add it to data.classes or use 'ignore'"
                )
            if isinstance(target, int) and not 0 <= target < len(names):
                raise ValueError(f"data.class_map maps {value} to class index {target}; expected 0..{len(names) - 1}")

    @property
    def crop_hw(self) -> tuple[int, int]:
        """The training crop as ``(height, width)``, within ``size_hw``."""
        if self.crop_size is None:
            return self.size_hw
        size = self.crop_size
        h, w = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
        return min(h, self.size_hw[0]), min(w, self.size_hw[1])

    @property
    def size_hw(self) -> tuple[int, int]:
        """The network input size as ``(height, width)``."""
        size = self.image_size if self.image_size is not None else FORMAT_SPECS[self.format].image_size
        return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))

    def resolve_root(self, base_dir: str | Path | None = None) -> Path | None:
        """``root`` made absolute against ``base_dir`` (the recipe's folder; default: the current folder)."""
        if self.root is None:
            return None
        root = self.root.expanduser()
        return root if root.is_absolute() else Path(base_dir or ".").absolute() / root

    def split_spec(self, split: str) -> SplitSpec | None:
        """The split as given, with a short string expanded to its :class:`SplitSpec` (no file access).

        Raises:
            ValueError: ``split`` is not train/val/test, or the spec uses a field
                the format does not read.
        """
        if split not in SPLITS:
            raise ValueError(f"Unknown split {split!r}; expected one of {list(SPLITS)}")
        value = getattr(self, split)
        if value is None:
            return None
        spec = FORMAT_SPECS[self.format]
        return spec.parse_split(split, value) if isinstance(value, str) else spec.check_split(split, value)
