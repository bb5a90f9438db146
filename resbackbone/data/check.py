"""``check_dataset``: every problem of a dataset at once, without training on it.

Beyond what loading checks (annotation files, classes, boxes, missing files,
duplicate ids, empty splits), every image is decoded in full (truncated,
zero-byte, non-image files), its size compared with the annotation's, and
every mask read, size-checked against its image and mapped through the class
map. Conversions the loader makes silently (RGBA alpha dropped, 16-bit
rescaled) are summarised as one warning per split.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from .config import SPLITS, DataConfig
from .formats import FORMAT_SPECS
from .formats.masks import build_class_map, record_mask
from .formats.records import DetectionRecord, SegmentationRecord
from .images import decode_image
from .index import class_names, index_split, prepare, resolve_split
from .problems import DataError, Problem, Reporter

__all__ = ["check_dataset"]

_NOTES = {
    "RGBA": "have an alpha channel, which is dropped",
    "16-bit": "are 16-bit and are scaled to 0–1 by 65535",
    "32-bit": "are 32-bit integers and are scaled to 0–1",
    "converted": "use a colour mode converted to RGB",
}


def _check_detection(rec: DetectionRecord, hw: tuple[int, int], reporter: Reporter) -> None:
    if rec.size is not None and rec.size != hw:
        reporter.error(
            rec.image,
            f"annotations give size {rec.size[1]}x{rec.size[0]} but the image is {hw[1]}x{hw[0]} (width x height)",
        )
    elif rec.size is None and not rec.normalized and len(rec.boxes):
        h, w = hw
        outside = (rec.boxes[:, 2] > w) | (rec.boxes[:, 3] > h)
        if outside.any():
            reporter.clipped(rec.image, int(outside.sum()), rec.boxes[outside][0].round(2).tolist())


def _check_segmentation(
    rec: SegmentationRecord, hw: tuple[int, int], lut: np.ndarray | None, k: int, reporter: Reporter
) -> None:
    try:
        mask = record_mask(rec, lut, k)
    except DataError as exc:
        reporter.error(exc.path or rec.mask or rec.image, _strip(str(exc), exc.path))
        return
    where = rec.mask or rec.image
    if mask.shape != hw:
        reporter.error(
            where,
            f"mask is {mask.shape[1]}x{mask.shape[0]} but its image {rec.image.name} is {hw[1]}x{hw[0]} "
            "(width x height); masks must match their image",
        )


def _strip(message: str, path: str | None) -> str:
    prefix = f"{path}: "
    return message[len(prefix) :] if path and message.startswith(prefix) else message


def _deep_check(
    records: list[Any], cfg: DataConfig, task: str, names: list[str], reporter: Reporter, progress: bool
) -> None:
    mask_files = task == "segmentation" and FORMAT_SPECS[cfg.format].mask_files
    lut = build_class_map(cfg, names) if mask_files else None
    notes: dict[str, list[str]] = defaultdict(list)
    dicom_missing = False
    items = records
    if progress:
        from tqdm.auto import tqdm

        items = tqdm(records, desc=f"check {reporter.split}", unit="img", leave=False)
    for rec in items:
        if dicom_missing and rec.image.suffix.lower() == ".dcm":
            continue
        try:
            arr, kind = decode_image(rec.image, window=cfg.window)
        except DataError as exc:
            reporter.error(rec.image, _strip(str(exc), exc.path))
            continue
        except ImportError as exc:
            reporter.error(rec.image, f"{exc} (other DICOM files of this split were skipped)")
            dicom_missing = True
            continue
        for key in _NOTES:
            if key in kind:
                notes[key].append(str(rec.image))
        hw = (int(arr.shape[0]), int(arr.shape[1]))
        if task == "detection":
            _check_detection(rec, hw, reporter)
        else:
            _check_segmentation(rec, hw, lut, len(names), reporter)
    for key, files in notes.items():
        reporter.warning(files[0], f"{len(files)} of {len(records)} images {_NOTES[key]} (e.g. this one)")


def check_dataset(
    cfg: DataConfig, *, task: str, base_dir: str | Path | None = None, progress: bool = False
) -> list[Problem]:
    """Report every problem of every split, never stopping at the first.

    Args:
        cfg: The recipe's data section.
        task: ``"detection"`` or ``"segmentation"``.
        base_dir: Folder a relative ``root`` resolves against (the recipe's folder).
        progress: Show a progress bar per split while decoding images.

    Returns:
        The problems, errors and warnings, in split order (an empty list for a clean dataset).

    Raises:
        ValueError: The task does not fit the format.

    Example:
        >>> for problem in check_dataset(cfg, task="detection"):
        ...     print(problem)  # error: [train] data/Annotations/x.xml: box [5, 5, 5, 9] has zero area; ...
    """
    try:
        prepared, root = prepare(cfg, task, base_dir)
        # classes stay unset only when no COCO file loads; each split then reports why
        names = class_names(prepared, task, base_dir) if prepared.classes is not None else []
    except DataError as exc:
        return [Problem(exc.path or str(cfg.root), "", "error", _strip(str(exc), exc.path))]
    problems: list[Problem] = []
    seen: dict[Path, str] = {}
    for split in SPLITS:
        if resolve_split(prepared, split, root) is None:
            if split == "train":
                problems.append(Problem(str(root), "train", "error", "no train split; set data.train"))
            continue
        records, reporter = index_split(prepared, split, root, task=task, mode="check")
        _deep_check(records, prepared, task, names, reporter, progress)
        overlap: dict[str, list[Path]] = defaultdict(list)
        for rec in records:
            if rec.image in seen:
                overlap[seen[rec.image]].append(rec.image)
            seen.setdefault(rec.image, split)
        for other, files in overlap.items():
            reporter.warning(
                files[0], f"{len(files)} image(s) of this split are also in split {other!r}, e.g. this one"
            )
        problems.extend(reporter.finish())
    return problems
