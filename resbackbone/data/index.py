"""From a :class:`DataConfig` to records: root resolution, the shapes dataset, class names, split indexing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .coco import index_coco, load_coco
from .config import FORMAT_TASKS, SPLITS, DataConfig, SplitSpec
from .layout import require_root, resolve_split
from .masks import index_masks, mask_class_names
from .problems import DataError, Reporter
from .voc import index_voc, voc_class_names
from .yolo import index_yolo, yolo_class_names

__all__ = ["class_names", "has_split", "index_split", "prepare"]

SHAPES_CLASSES = ["circle", "square", "triangle"]


def _check_task(cfg: DataConfig, task: str) -> None:
    if task not in ("detection", "segmentation"):
        raise ValueError(f"Unknown task {task!r}; expected 'detection' or 'segmentation'")
    if task not in FORMAT_TASKS[cfg.format]:
        raise ValueError(
            f"Data format {cfg.format!r} provides {' and '.join(FORMAT_TASKS[cfg.format])} labels, not {task}; "
            f"pick a {FORMAT_TASKS[cfg.format][0]} head or a format with {task} labels "
            f"({', '.join(f for f, t in FORMAT_TASKS.items() if task in t)})"
        )


def _shapes_config(cfg: DataConfig, root: Path, task: str) -> DataConfig:
    """The shapes dataset seen as COCO (detection) or as a mask folder (segmentation)."""
    if task == "detection":
        splits = {s: SplitSpec(annotations=Path(f"annotations/{s}.json"), images=Path(f"images/{s}")) for s in SPLITS}
        update: dict[str, Any] = {"format": "coco", "classes": list(SHAPES_CLASSES)}
    else:
        splits = {s: SplitSpec(images=Path(f"images/{s}"), masks=Path(f"masks/{s}")) for s in SPLITS}
        update = {"format": "mask_folder", "classes": ["background", *SHAPES_CLASSES]}
    return cfg.model_copy(update={**update, **splits, "root": root, "image_size": cfg.size_hw})


def _coco_names(cfg: DataConfig, root: Path, *, strict: bool = True) -> list[str] | None:
    """Category names (sorted by id) of the first configured COCO file that loads.

    With ``strict=False`` a dataset whose files all fail gives None, leaving the
    detailed errors to the indexing of each split.
    """
    reporter = Reporter("all")
    for split in SPLITS:
        spec = cfg.split_spec(split)
        if spec is None or spec.annotations is None:
            continue
        path = root / spec.annotations
        data = load_coco(path, reporter)
        if data is None:
            continue
        names = [c.name for c in sorted(data.categories, key=lambda c: c.id)]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise DataError(f"{path}: category names {dup} are used by several ids; names must be unique", path)
        return names
    if not strict:
        return None
    if reporter.problems:
        reporter.finish()  # raises every problem found
    raise DataError("No COCO split is configured; set data.train: {annotations: ..., images: ...}")


def prepare(cfg: DataConfig, task: str, base_dir: str | Path | None = None) -> tuple[DataConfig, Path]:
    """Check the task fits the format, resolve the root, and pin the class list.

    The ``shapes`` format is generated (or reused) in the cache unless ``root``
    names an existing copy, and is then read as COCO or as a mask folder.

    Returns:
        ``(cfg, root)``: a config whose ``classes`` is set, and the absolute root.

    Raises:
        ValueError: The task does not fit the format.
        DataError: The root is missing, or class names cannot be determined.
    """
    _check_task(cfg, task)
    if cfg.format == "shapes":
        from .acquire.shapes import ensure_shapes_dataset, verify_shapes_dataset

        root = cfg.resolve_root(base_dir)
        if root is None:
            root = ensure_shapes_dataset()
        else:
            verify_shapes_dataset(require_root(root))
        return _shapes_config(cfg, root, task), root
    root = require_root(cfg.resolve_root(base_dir))
    if cfg.classes is None:
        cfg = cfg.model_copy(update={"classes": _object_names(cfg, root, strict=False)})
    return cfg, root


def _object_names(cfg: DataConfig, root: Path, *, strict: bool = True) -> list[str] | None:
    if cfg.format == "coco":
        return _coco_names(cfg, root, strict=strict)
    if cfg.format == "voc":
        return voc_class_names(cfg, root)
    if cfg.format == "yolo":
        return yolo_class_names(cfg, root)
    return mask_class_names(cfg)


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
    _check_task(cfg, task)
    if cfg.format == "shapes":
        return list(SHAPES_CLASSES) if task == "detection" else ["background", *SHAPES_CLASSES]
    if cfg.format in ("mask_folder", "voc_seg"):
        return mask_class_names(cfg)
    if cfg.classes is not None:
        names = list(cfg.classes)
    else:
        names = _object_names(cfg, require_root(cfg.resolve_root(base_dir))) or []
    return ["background", *names] if task == "segmentation" else names


def has_split(cfg: DataConfig, split: str, base_dir: str | Path | None = None) -> bool:
    """Whether ``split`` is configured or present at the format's conventional place."""
    if cfg.format == "shapes":
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
    spec = resolve_split(cfg, split, root)
    if spec is None:
        raise ValueError(
            f"data.{split} is not set and {cfg.format!r} has no {split} split at its usual place in {root}; "
            f"set data.{split}"
        )
    reporter = Reporter(split, mode)  # type: ignore[arg-type]
    fmt = cfg.format
    records: list[Any]
    if fmt == "coco":
        records = index_coco(cfg, spec, root, reporter, task=task)
    elif fmt == "voc":
        records = index_voc(cfg, spec, root, reporter)
    elif fmt == "yolo":
        records = index_yolo(cfg, spec, root, reporter, names=list(cfg.classes or []))
    else:
        records = index_masks(cfg, spec, root, reporter)
    if not records:
        where = spec.list_ or spec.annotations or spec.images or root
        reporter.error(root / where, f"split {split!r} is empty: no usable images")
    return records, reporter
