"""From a :class:`DataConfig` to records, through the format table: roots, class names, splits, indexing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .config import SPLITS, DataConfig, SplitSpec
from .formats import FORMAT_SPECS, FORMAT_TASKS, FormatSpec
from .formats.records import require_root
from .problems import Reporter

__all__ = ["class_names", "format_spec", "has_split", "index_split", "prepare", "resolve_split"]


def format_spec(cfg: DataConfig, task: str) -> FormatSpec:
    """The table entry of ``cfg.format``, checked to serve ``task``.

    Raises:
        ValueError: Unknown task, or one the format has no labels for.
    """
    if task not in ("detection", "segmentation"):
        raise ValueError(f"Unknown task {task!r}; expected 'detection' or 'segmentation'")
    spec = FORMAT_SPECS[cfg.format]
    if task not in spec.tasks:
        raise ValueError(
            f"Data format {cfg.format!r} provides {' and '.join(spec.tasks)} labels, not {task}; "
            f"pick a {spec.tasks[0]} head or a format with {task} labels "
            f"({', '.join(f for f, t in FORMAT_TASKS.items() if task in t)})"
        )
    return spec


def _read_as(cfg: DataConfig, spec: FormatSpec, task: str, root: Path | None) -> DataConfig:
    """A generated format's config seen as the format its folder is read with (fixed splits and classes)."""
    update: dict[str, Any] = {**spec.read_as[task], "image_size": cfg.size_hw}
    if root is not None:
        update["root"] = root
    return cfg.model_copy(update=update)


def _found_names(cfg: DataConfig, spec: FormatSpec, root: Path, *, strict: bool) -> list[str] | None:
    """The format's default classes, else the names its annotation files use (``data.classes`` unset)."""
    if spec.classes is not None:
        return list(spec.classes)
    return spec.find_classes(cfg, root, strict=strict) if spec.find_classes is not None else None


def prepare(cfg: DataConfig, task: str, base_dir: str | Path | None = None) -> tuple[DataConfig, Path]:
    """Check the task fits the format, resolve the root, and pin the class list.

    A generated format (``shapes``) is made (or reused) in the cache unless
    ``root`` names an existing copy, and is then read with the format its
    table entry names for the task (COCO or a mask folder).

    Returns:
        ``(cfg, root)``: a config whose ``classes`` is set, and the absolute root.

    Raises:
        ValueError: The task does not fit the format.
        DataError: The root is missing, or class names cannot be determined.
    """
    spec = format_spec(cfg, task)
    if spec.generate is not None:
        root = spec.generate(cfg.resolve_root(base_dir))
        return _read_as(cfg, spec, task, root), root
    root = require_root(cfg.resolve_root(base_dir))
    if cfg.classes is None:
        cfg = cfg.model_copy(update={"classes": _found_names(cfg, spec, root, strict=False)})
    return cfg, root


def class_names(cfg: DataConfig, task: str, base_dir: str | Path | None = None) -> list[str]:
    """The class names the model predicts.

    Args:
        cfg: Data config.
        task: ``"detection"``: object classes, label ``i`` (1-based, 0 is the
            background) is ``names[i - 1]``. ``"segmentation"``: mask classes,
            index ``i`` is ``names[i]``, background first.
        base_dir: Folder relative roots resolve against.

    Returns:
        The names, in label order.

    Raises:
        ValueError: The task does not fit the format.
        DataError: The names cannot be determined (e.g. YOLO without classes).

    Example:
        >>> class_names(DataConfig(format="shapes"), "detection")
        ['circle', 'square', 'triangle']
    """
    spec = format_spec(cfg, task)
    if spec.read_as:
        cfg = _read_as(cfg, spec, task, None)
        spec = FORMAT_SPECS[cfg.format]
    if cfg.classes is not None:
        names = list(cfg.classes)
    else:
        names = _found_names(cfg, spec, require_root(cfg.resolve_root(base_dir)), strict=True) or []
    return ["background", *names] if task == "segmentation" and not spec.mask_files else names


def resolve_split(cfg: DataConfig, split: str, root: Path) -> SplitSpec | None:
    """The split's spec: as configured, else the format's conventional location if present, else None."""
    return cfg.split_spec(split) or FORMAT_SPECS[cfg.format].find_split(root, split)


def has_split(cfg: DataConfig, split: str, base_dir: str | Path | None = None) -> bool:
    """Whether ``split`` is configured or present at the format's conventional place."""
    if FORMAT_SPECS[cfg.format].read_as:
        return split in SPLITS
    root = cfg.resolve_root(base_dir)
    return root is not None and resolve_split(cfg, split, root) is not None


def index_split(
    cfg: DataConfig, split: str, root: Path, *, task: str, mode: str = "load"
) -> tuple[list[Any], Reporter]:
    """Read the annotations of one split of a prepared config (see :func:`prepare`).

    Returns:
        ``(records, reporter)``; call ``reporter.finish()`` to raise (load mode) or collect the problems.

    Raises:
        ValueError: The split is neither configured nor present at its conventional place.
    """
    split_spec = resolve_split(cfg, split, root)
    if split_spec is None:
        raise ValueError(
            f"data.{split} is not set and {cfg.format!r} has no {split} split at its usual place in {root}; "
            f"set data.{split}"
        )
    index = FORMAT_SPECS[cfg.format].index
    if index is None:
        raise ValueError(
            f"format {cfg.format!r} is generated and read as another format: pass the config that "
            "prepare(cfg, task) returns, not the recipe's own."
        )
    reporter = Reporter(split, mode)  # type: ignore[arg-type]
    records = index(cfg, split_spec, root, reporter, task=task)
    if not records:
        where = split_spec.list_ or split_spec.annotations or split_spec.images or root
        reporter.error(root / where, f"split {split!r} is empty: no usable images")
    return records, reporter
