"""YOLO txt detection: ``images/<split>/x.jpg`` with ``labels/<split>/x.txt`` lines ``cls cx cy w h``.

Coordinates are fractions of the image size; a label line with more than five
numbers is a polygon (``cls x1 y1 x2 y2 ...``) and its bounding box is used.
An image without a label file has no objects. Class names come from
``data.classes`` or from ``names`` in ``<root>/data.yaml``.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ..images import IMAGE_EXTENSIONS
from ..problems import DataError, Reporter
from .base import FormatSpec, ReaderConfig, SplitSpec
from .records import DetectionRecord, find_images, join_inside, sanitize_boxes

__all__ = ["YOLO", "index_yolo", "label_path", "yolo_class_names"]


def yolo_class_names(cfg: ReaderConfig, root: Path, *, strict: bool = True) -> list[str]:
    """``data.classes``, else ``names`` from ``<root>/data.yaml`` (list or ``{id: name}``).

    Labels carry only class ids, so the names are required whatever ``strict`` says.

    Raises:
        DataError: Neither is available, or data.yaml is malformed.
    """
    if cfg.classes is not None:
        return list(cfg.classes)
    path = root / "data.yaml"
    if not path.is_file():
        raise DataError(
            f"YOLO labels carry only class ids and {path} does not exist; list the names in data.classes", path
        )
    import yaml

    try:
        names = (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("names")
    except (yaml.YAMLError, OSError, UnicodeDecodeError, AttributeError) as exc:
        raise DataError(f"{path}: cannot read class names ({exc}); list them in data.classes", path) from None
    if isinstance(names, dict) and all(isinstance(k, int) for k in names):
        names = [names[k] for k in sorted(names)]
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise DataError(f"{path}: 'names' must be a list of class names; got {names!r}", path)
    return names


def label_path(image: Path, root: Path) -> Path:
    """The label file of an image: the last ``images`` folder swapped for ``labels``, suffix ``.txt``."""
    parts = list(image.relative_to(root).parts) if image.is_relative_to(root) else list(image.parts)
    for i in range(len(parts) - 2, -1, -1):
        if parts[i] == "images":
            parts[i] = "labels"
            break
    base = root if image.is_relative_to(root) else Path()
    return (base.joinpath(*parts)).with_suffix(".txt")


def _parse_labels(path: Path, num_classes: int, reporter: Reporter) -> tuple[np.ndarray, np.ndarray]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reporter.error(path, f"label file cannot be read ({exc})")
        return np.zeros((0, 4)), np.zeros(0, dtype=np.int64)
    boxes, labels = [], []
    for n, line in enumerate(text.splitlines(), 1):
        tokens = line.split()
        if not tokens:
            continue
        try:
            values = [float(t) for t in tokens]
        except ValueError:
            reporter.error(path, f"line {n}: expected numbers 'class cx cy w h', got {line.strip()!r}")
            continue
        cls = values[0]
        if not math.isfinite(cls) or cls != int(cls) or not 0 <= cls < num_classes:
            reporter.error(path, f"line {n}: class id {tokens[0]} is not in the class map (0..{num_classes - 1})")
            continue
        if len(values) == 5:
            cx, cy, w, h = values[1:]
            box = [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]
        elif len(values) >= 7 and len(values) % 2 == 1:
            xs, ys = values[1::2], values[2::2]
            box = [min(xs), min(ys), max(xs), max(ys)]
        else:
            reporter.error(path, f"line {n}: expected 5 numbers (class cx cy w h) or a polygon, got {len(values)}")
            continue
        if not all(math.isfinite(v) for v in values[1:]):
            reporter.error(path, f"line {n}: coordinates must be finite numbers, got {line.strip()!r}")
            continue
        boxes.append(box)
        labels.append(int(cls) + 1)
    return np.array(boxes, dtype=np.float64).reshape(-1, 4), np.array(labels, dtype=np.int64)


def _list_images(cfg: ReaderConfig, spec: SplitSpec, root: Path, reporter: Reporter) -> list[Path]:
    if spec.images is not None:
        return list(find_images(root / spec.images, reporter, recursive=True).values())
    assert spec.list_ is not None
    list_file = root / spec.list_
    try:
        lines = list_file.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        reporter.error(list_file, f"split file cannot be read ({exc})")
        return []
    images, seen = [], set()
    for n, line in enumerate(lines, 1):
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        image = join_inside(
            root, entry, root=root, allow_outside=cfg.allow_outside_root, source=list_file, reporter=reporter
        )
        if image is None:
            continue
        if image in seen:
            reporter.error(list_file, f"line {n}: duplicate image {entry!r}; list each image once")
        elif image.suffix.lower() not in IMAGE_EXTENSIONS:
            reporter.error(list_file, f"line {n}: {entry!r} is not an image file name")
        elif not image.is_file():
            reporter.error(image, f"image listed in {list_file.name} (line {n}) is missing on disk")
        else:
            images.append(image)
        seen.add(image)
    return images


def index_yolo(
    cfg: ReaderConfig, spec: SplitSpec, root: Path, reporter: Reporter, *, task: str = "detection"
) -> list[DetectionRecord]:
    """Index a YOLO split; boxes stay normalised (``normalized=True``) until the image size is known.

    Class ids index ``cfg.classes``. Images without a label file are kept as
    background images (a warning in check mode).
    """
    names = list(cfg.classes or [])
    records = []
    for n, image in enumerate(_list_images(cfg, spec, root, reporter)):
        labels_file = label_path(image, root)
        if not labels_file.is_file():
            if reporter.mode == "check":
                reporter.warning(image, f"no label file {labels_file}; the image is used as background (no objects)")
            records.append(DetectionRecord(image, np.zeros((0, 4), np.float32), np.zeros(0, np.int64), n, None, True))
            continue
        boxes, labels = _parse_labels(labels_file, len(names), reporter)
        boxes, labels = sanitize_boxes(boxes, labels, (1, 1), labels_file, reporter)
        records.append(DetectionRecord(image, boxes, labels, n, None, True))
    return records


YOLO = FormatSpec(
    name="yolo",
    tasks=("detection",),
    split_fields=("images", "list"),
    short_field="images",
    split_folders=("images",),
    required=(("images", "a folder"), ("list", "a file")),
    index=index_yolo,
    find_classes=yolo_class_names,
)
