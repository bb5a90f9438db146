"""What a data format declares (:class:`FormatSpec`), where a split lives (:class:`SplitSpec`), and the split names.

A format is one module of :mod:`resbackbone.data.formats` holding its readers
and one :class:`FormatSpec`; the table :data:`~resbackbone.data.formats.FORMAT_SPECS`
lists them. The recipe schema (:class:`~resbackbone.data.DataConfig`), the
indexing of splits and ``check_dataset`` dispatch on that table, so a new
format is one module plus one table entry.

The readers see a recipe's ``data:`` section through :class:`ReaderConfig`,
which :class:`~resbackbone.data.DataConfig` satisfies: the schema validates
against the table, the table names the readers, and so the readers must not
import the schema.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, Field

from ..problems import Reporter
from .records import DetectionRecord, SegmentationRecord

__all__ = ["SPLITS", "FormatSpec", "ReaderConfig", "SplitSpec"]

SPLITS: tuple[str, ...] = ("train", "val", "test")


class SplitSpec(BaseModel):
    """Where one split lives, relative to ``data.root``. Which fields apply depends on the format.

    * ``coco``: ``annotations`` (the COCO JSON file, required) and ``images``
      (the folder its ``file_name`` entries are relative to; default: ``root``).
      Short form: ``train: annotations/instances_train.json``.
    * ``voc`` / ``voc_seg``: ``list``, the split file of image ids. Short form:
      a bare name ``train`` means ``ImageSets/Main/train.txt`` (``voc``) or
      ``ImageSets/Segmentation/train.txt`` (``voc_seg``); a value with a ``/``
      or ending in ``.txt`` is a path.
    * ``yolo``: ``images`` (a folder searched recursively; labels come from the
      matching ``labels`` folder) or ``list`` (a text file of image paths).
      Short form: ``train: images/train`` or ``train: train.txt``.
    * ``mask_folder``: ``list`` (a file of image ids; short form ``train`` means
      ``<root>/train.txt``), ``images`` (default ``images``) and ``masks``
      (default ``masks``); without ``list`` every image in ``images`` is used.
    """

    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)

    annotations: Path | None = None
    images: Path | None = None
    masks: Path | None = None
    list_: Path | None = Field(default=None, alias="list")

    def given(self) -> list[str]:
        """Names of the fields that are set, as written in a recipe (``list``, not ``list_``), sorted."""
        values = {"annotations": self.annotations, "images": self.images, "list": self.list_, "masks": self.masks}
        return [name for name, value in values.items() if value is not None]


class ReaderConfig(Protocol):
    """What the readers take from a recipe's ``data:`` section; :class:`~resbackbone.data.DataConfig` is one."""

    @property
    def classes(self) -> list[str] | None:
        """Class names, or None to find them in the dataset."""

    @property
    def class_map(self) -> dict[int, str | int] | None:
        """Mask pixel value → class name or index."""

    @property
    def allow_outside_root(self) -> bool:
        """Accept annotation paths that leave the dataset root."""

    def split_spec(self, split: str) -> SplitSpec | None:
        """The split as configured (short forms expanded), or None."""


class IndexFn(Protocol):
    """A format's reader of one split: its records, every problem recorded on ``reporter``."""

    def __call__(
        self, cfg: ReaderConfig, spec: SplitSpec, root: Path, reporter: Reporter, *, task: str
    ) -> list[DetectionRecord] | list[SegmentationRecord]: ...


class ClassesFn(Protocol):
    """A format's class names read from its annotation files; with ``strict=False``, None when none can be read."""

    def __call__(self, cfg: ReaderConfig, root: Path, *, strict: bool) -> list[str] | None: ...


def _is_path(value: str) -> bool:
    return "/" in value or "\\" in value or value.endswith(".txt")


@dataclass(frozen=True)
class FormatSpec:
    """Everything that differs between data formats, as data and the readers' functions.

    Attributes:
        name: The ``data.format`` value, e.g. ``"voc"``.
        tasks: The tasks its labels serve: ``"detection"``, ``"segmentation"``.
        split_fields: The :class:`SplitSpec` fields its splits take (``list`` for ``list_``).
        short_field: The field a split given as a short string sets (``data.train: x``);
            None: splits cannot be set. A short string ending in ``.txt`` sets
            ``list`` when the format takes one.
        list_folder: Where a bare split name points: ``train`` means
            ``<list_folder>/train.txt`` (``""``: the root); a value with a ``/`` is a path.
            Also the first place an unset split is looked for.
        split_folders: Fields an unset split gets as ``<field>/<split>`` when the
            folder ``<root>/<first field>/<split>`` exists (e.g. ``images/train``).
        required: ``(field, what it is)`` pairs: a split given as a mapping sets
            exactly one of these fields.
        mask_files: Labels are mask files whose pixel values go through the
            class map (``data.class_map`` applies; class names start with the background).
        classes: Class names used when ``data.classes`` is unset and the format
            has fixed defaults (mask formats), background first.
        image_size: Default side of the network input.
        index: ``index(cfg, spec, root, reporter, *, task)`` → the records of
            one split; every problem goes to ``reporter``.
        find_classes: ``find_classes(cfg, root, *, strict)`` → object class names
            read from the annotations, in label order; with ``strict=False``,
            None when no annotation file can be read (each split then reports why).
        generate: Generated formats: ``generate(root)`` → the dataset folder,
            made (or reused) in the cache when ``root`` is None, else checked.
        read_as: Generated formats: per task, the ``data:`` fields (``format``,
            ``classes``, one :class:`SplitSpec` per split) its folder is read with.
    """

    name: str
    tasks: tuple[str, ...]
    split_fields: tuple[str, ...] = ()
    short_field: str | None = None
    list_folder: str | None = None
    split_folders: tuple[str, ...] = ()
    required: tuple[tuple[str, str], ...] = ()
    mask_files: bool = False
    classes: tuple[str, ...] | None = None
    image_size: int = 512
    index: IndexFn | None = None
    find_classes: ClassesFn | None = None
    generate: Callable[[Path | None], Path] | None = None
    read_as: Mapping[str, Mapping[str, Any]] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if self.read_as:
            if self.generate is None:
                raise ValueError(f"FormatSpec {self.name!r}: read_as is set but generate is not; give both or neither.")
        elif self.index is None or (self.classes is None and self.find_classes is None):
            raise ValueError(
                f"FormatSpec {self.name!r} cannot be read: give index= and either classes= or find_classes= "
                "(or generate= and read_as= for a generated format)."
            )

    def parse_split(self, split: str, value: str) -> SplitSpec:
        """A split given as a short string (``data.train: train``) as its :class:`SplitSpec`.

        Raises:
            ValueError: The string is empty, or the format's splits cannot be set.
        """
        if not value.strip():
            raise ValueError(f"data.{split} is empty; give the split's name or path")
        if self.short_field is None:
            raise ValueError(f"data.{split} cannot be set for format {self.name!r}")
        if value.endswith(".txt") and "list" in self.split_fields:
            return SplitSpec(list=Path(value))
        if self.list_folder is not None:
            path = Path(value) if _is_path(value) else Path(self.list_folder) / f"{value}.txt"
            return SplitSpec(list=path)
        return SplitSpec.model_validate({self.short_field: Path(value)})

    def check_split(self, split: str, spec: SplitSpec) -> SplitSpec:
        """Check that a split given as a mapping uses the format's fields, and the required ones.

        Raises:
            ValueError: A field the format does not read, or a required field missing.
        """
        given = spec.given()
        takes = sorted(self.split_fields)
        for name in given:
            if name not in takes:
                raise ValueError(f"data.{split}.{name} is not used by format {self.name!r}; its splits take {takes}")
        if self.required and sum(name in given for name, _ in self.required) != 1:
            if len(self.required) == 1:
                name, what = self.required[0]
                raise ValueError(f"data.{split}.{name} is required for format {self.name!r} ({what})")
            choices = " or ".join(f"{name} ({what})" for name, what in self.required)
            raise ValueError(f"data.{split} for format {self.name!r} takes exactly one of {choices}")
        return spec

    def find_split(self, root: Path, split: str) -> SplitSpec | None:
        """An unset split at the format's conventional place under ``root``, if it is there."""
        if self.list_folder is not None:
            rel = Path(self.list_folder) / f"{split}.txt"
            if (root / rel).is_file():
                return SplitSpec(list=rel)
        if self.split_folders and (root / self.split_folders[0] / split).is_dir():
            return SplitSpec.model_validate({name: Path(name) / split for name in self.split_folders})
        return None
