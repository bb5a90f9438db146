"""Segmentation mask folders and VOC ``SegmentationClass`` PNGs, and the pixel-value → class map.

* ``mask_folder``: ``images/<id>.*`` with ``masks/<id>.png`` (binary 0/255 or
  index PNGs); the split is a file of ids or the whole images folder.
* ``voc_seg``: ``JPEGImages/<id>.jpg`` with palette PNGs
  ``SegmentationClass/<id>.png`` (index = class, 255 = boundary, ignored).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .config import DataConfig, SplitSpec
from .layout import SegmentationRecord, find_images, join_inside, read_id_list
from .problems import DataError, Reporter

__all__ = ["VOC_CLASSES", "apply_class_map", "build_class_map", "ignore_code", "index_masks", "mask_class_names"]

VOC_CLASSES = [
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
]  # fmt: skip


def mask_class_names(cfg: DataConfig) -> list[str]:
    """Class names of a mask format, background first."""
    if cfg.classes is not None:
        return list(cfg.classes)
    return list(VOC_CLASSES) if cfg.format == "voc_seg" else ["background", "foreground"]


def ignore_code(num_classes: int) -> int:
    """The value marking ignored pixels inside the loader (before ``ignore_index`` is applied)."""
    return 255 if num_classes < 255 else 65535


def build_class_map(cfg: DataConfig, names: list[str]) -> np.ndarray:
    """Lookup table ``pixel value → class index`` (ignore code for ignored values, -1 for invalid ones).

    Without ``class_map``: two classes read 0 → 0 and 1 or 255 → 1 (binary
    masks); more classes read v → v for v < K and 255 → ignored.
    """
    k = len(names)
    ignore = ignore_code(k)
    lut = np.full(65536, -1, dtype=np.int32)
    if cfg.class_map is not None:
        for value, target in cfg.class_map.items():
            if target == "ignore":
                lut[value] = ignore
            else:
                lut[value] = names.index(target) if isinstance(target, str) else target
    elif k == 2:
        lut[0], lut[1], lut[255] = 0, 1, 1
    else:
        lut[:k] = np.arange(k)
        if k < 255:
            lut[255] = ignore
    return lut


def apply_class_map(raw: np.ndarray, lut: np.ndarray, path: Path | str, num_classes: int) -> np.ndarray:
    """Map raw mask values to class indices.

    Raises:
        DataError: A value outside the class map (the values and the file are named).
    """
    if raw.size and (raw.min() < 0 or raw.max() >= len(lut)):
        raise DataError(f"{path}: mask values {int(raw.min())}..{int(raw.max())} are outside 0..65535", path)
    out = lut[raw]
    if (out < 0).any():
        bad = np.unique(raw[out < 0])
        shown = ", ".join(str(int(v)) for v in bad[:10]) + (" …" if len(bad) > 10 else "")
        valid = np.flatnonzero(lut >= 0)
        raise DataError(
            f"{path}: mask values {shown} are not in the class map (expected {valid[:12].tolist()}"
            f"{' …' if len(valid) > 12 else ''}); set data.classes / data.class_map to describe them",
            path,
        )
    return out.astype(np.uint8 if ignore_code(num_classes) == 255 else np.int32)


def index_masks(cfg: DataConfig, spec: SplitSpec, root: Path, reporter: Reporter) -> list[SegmentationRecord]:
    """Index a ``mask_folder`` or ``voc_seg`` split: one record per image with its mask file."""
    if cfg.format == "voc_seg":
        images_dir, masks_dir = root / "JPEGImages", root / "SegmentationClass"
    else:
        images_dir = root / (spec.images or "images")
        masks_dir = root / (spec.masks or "masks")
    images = find_images(images_dir, reporter)
    masks = find_images(masks_dir, reporter)
    if spec.list_ is not None:
        list_file = root / spec.list_
        ids = read_id_list(list_file, reporter)
    else:
        list_file = images_dir
        ids = sorted(images)
    records = []
    for n, image_id in enumerate(ids):
        if (
            join_inside(
                images_dir,
                image_id,
                root=root,
                allow_outside=cfg.allow_outside_root,
                source=list_file,
                reporter=reporter,
            )
            is None
        ):
            continue
        image, mask = images.get(image_id), masks.get(image_id)
        if image is None:
            reporter.error(
                images_dir / image_id, f"image listed in {list_file.name} is missing on disk (no {image_id}.*)"
            )
        if mask is None:
            reporter.error(masks_dir / f"{image_id}.png", f"mask of image {image_id!r} is missing on disk")
        if image is not None and mask is not None:
            records.append(SegmentationRecord(image, mask, n))
    return records
