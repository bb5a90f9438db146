"""Records (one per image), safe path joining, id lists, image search and box sanitising shared by the formats."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..images import IMAGE_EXTENSIONS
from ..problems import DataError, Reporter

__all__ = [
    "DetectionRecord",
    "SegmentationRecord",
    "find_images",
    "join_inside",
    "read_id_list",
    "require_root",
    "sanitize_boxes",
]


@dataclass(frozen=True)
class DetectionRecord:
    """One detection sample as indexed from the annotations.

    Attributes:
        image: Image file.
        boxes: ``float32 (N, 4)`` xyxy, in pixels (or in [0, 1] when ``normalized``).
        labels: ``int64 (N,)`` in 1..K.
        image_id: Unique id (the COCO id for COCO, the position otherwise).
        size: ``(height, width)`` declared by the annotations, if any.
        normalized: Boxes are fractions of the image size (YOLO).
    """

    image: Path
    boxes: np.ndarray
    labels: np.ndarray
    image_id: int
    size: tuple[int, int] | None = None
    normalized: bool = False


@dataclass(frozen=True)
class SegmentationRecord:
    """One segmentation sample: an image and its mask file, or COCO shapes to rasterise.

    Attributes:
        image: Image file.
        mask: Mask file, or ``None`` for COCO annotations.
        image_id: Unique id.
        shapes: COCO ``(class index, segmentation, iscrowd)`` triples.
        size: ``(height, width)`` declared by the annotations, if any.
    """

    image: Path
    mask: Path | None
    image_id: int
    shapes: tuple[tuple[int, Any, int], ...] = ()
    size: tuple[int, int] | None = None


def join_inside(
    base: Path, rel: str | Path, *, root: Path, allow_outside: bool, source: Path | str, reporter: Reporter
) -> Path | None:
    """``base / rel``, refused (error recorded, None returned) when it leaves both ``base`` and ``root``.

    The check is lexical (``..`` and absolute paths), so symlinked folders inside the root still work.
    """
    joined = Path(os.path.normpath(base / rel))
    if allow_outside:
        return joined
    for folder in (base, root):
        try:
            joined.relative_to(os.path.normpath(folder))
            return joined
        except ValueError:
            continue
    reporter.error(
        source,
        f"path {str(rel)!r} points outside the dataset root {root}; "
        "fix the annotation or set data.allow_outside_root: true if this is intended",
    )
    return None


def read_id_list(path: Path, reporter: Reporter) -> list[str]:
    """Image ids (first token of each non-blank, non-comment line) of a split file; duplicates are errors."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        reporter.error(path, "split file not found; check data.root and the split name")
        return []
    except (OSError, UnicodeDecodeError) as exc:
        reporter.error(path, f"split file cannot be read ({exc})")
        return []
    ids: list[str] = []
    seen: set[str] = set()
    for n, line in enumerate(text.splitlines(), 1):
        token = line.split("#", 1)[0].strip().split(maxsplit=1)
        if not token:
            continue
        if token[0] in seen:
            reporter.error(path, f"line {n}: duplicate image id {token[0]!r}; list each image once")
            continue
        seen.add(token[0])
        ids.append(token[0])
    return ids


def find_images(folder: Path, reporter: Reporter, *, recursive: bool = False) -> dict[str, Path]:
    """Image files of ``folder`` keyed by stem (relative path without suffix when recursive).

    Two files with the same key (``a.png`` and ``a.jpg``) are a duplicate-id error.
    """
    if not folder.is_dir():
        reporter.error(folder, "image folder not found; check data.root and the split's images folder")
        return {}
    found: dict[str, Path] = {}
    files = folder.rglob("*") if recursive else folder.iterdir()
    for p in sorted(files):
        if p.suffix.lower() not in IMAGE_EXTENSIONS or not p.is_file():
            continue
        key = str(p.relative_to(folder).with_suffix("")) if recursive else p.stem
        if key in found:
            reporter.error(p, f"duplicate image id {key!r}: also {found[key].name}; keep one file per id")
            continue
        found[key] = p
    return found


def sanitize_boxes(
    boxes: np.ndarray,
    labels: np.ndarray,
    size_hw: tuple[int, int] | None,
    source: Path | str,
    reporter: Reporter,
) -> tuple[np.ndarray, np.ndarray]:
    """Drop degenerate boxes and clip the others to the image, recording both.

    Args:
        boxes: ``(N, 4)`` xyxy.
        labels: ``(N,)``.
        size_hw: Image ``(height, width)`` in the boxes' units; ``None`` skips clipping.
        source: File named in messages.
        reporter: Receives the problems.

    Returns:
        The kept boxes (float32) and labels (int64).
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    keep = np.ones(len(boxes), dtype=bool)
    clipped, example = 0, None
    for i, box in enumerate(boxes):
        shown = [round(float(v), 2) for v in box]
        x1, y1, x2, y2 = box
        if not np.all(np.isfinite(box)):
            reporter.bad_box(source, shown, "has non-finite coordinates")
            keep[i] = False
        elif x2 < x1 or y2 < y1:
            reporter.bad_box(source, shown, "has reversed corners (x2 < x1 or y2 < y1)")
            keep[i] = False
        elif x2 == x1 or y2 == y1:
            reporter.bad_box(source, shown, "has zero area")
            keep[i] = False
        elif size_hw is not None:
            h, w = size_hw
            c = np.clip(box, 0, [w, h, w, h])
            if not np.array_equal(c, box):
                if c[2] <= c[0] or c[3] <= c[1]:
                    reporter.bad_box(source, shown, "lies entirely outside the image")
                    keep[i] = False
                    continue
                clipped += 1
                example = example or shown
                boxes[i] = c
    if clipped:
        reporter.clipped(source, clipped, example)
    return boxes[keep].astype(np.float32), labels[keep]


def require_root(root: Path | None) -> Path:
    """The dataset root, which must exist."""
    if root is None or not root.is_dir():
        raise DataError(f"data.root {root} does not exist or is not a folder; check the path (or --data)", root)
    return root
