"""Segmentation masks: the pixel-value → class map, COCO shapes rasterised, and mask-folder indexing.

A :class:`SegmentationRecord` names a mask file (``mask_folder``, ``voc_seg``),
whose pixel values go through the class map, or carries COCO polygons and RLE
(``coco``), which are rasterised; :func:`record_mask` gives either as a
class-index array. :func:`index_mask_pairs` pairs images with their mask files
for the mask formats.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from ..images import read_mask
from ..problems import DataError, Reporter
from .base import ReaderConfig, SplitSpec
from .records import SegmentationRecord, find_images, join_inside, read_id_list

__all__ = ["apply_class_map", "build_class_map", "ignore_code", "index_mask_pairs", "rasterize", "record_mask"]


def ignore_code(num_classes: int) -> int:
    """The value marking ignored pixels inside the loader (before ``ignore_index`` is applied)."""
    return 255 if num_classes < 255 else 65535


def build_class_map(cfg: ReaderConfig, names: list[str]) -> np.ndarray:
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


def rasterize(record: SegmentationRecord, ignore_value: int) -> np.ndarray:
    """Semantic mask of a COCO record: class index per pixel, larger objects painted first, crowds ignored."""
    from pycocotools import mask as mask_utils

    assert record.size is not None
    h, w = record.size
    out = np.zeros((h, w), dtype=np.uint8 if ignore_value <= 255 else np.int32)
    painted = []
    for label, seg, crowd in record.shapes:
        if isinstance(seg, list):
            rle = mask_utils.merge(mask_utils.frPyObjects(seg, h, w))
        elif isinstance(seg, dict) and isinstance(seg.get("counts"), list):
            rle = mask_utils.frPyObjects(seg, h, w)
        else:
            rle = seg
        with warnings.catch_warnings():  # pycocotools' own numpy-2 copy-keyword notice
            warnings.filterwarnings("ignore", "__array__ implementation", DeprecationWarning)
            m = mask_utils.decode(rle).astype(bool)
        painted.append((int(m.sum()), label, crowd, m))
    for _, label, crowd, m in sorted(painted, key=lambda t: -t[0]):
        out[m] = ignore_value if crowd else label
    return out


def record_mask(record: SegmentationRecord, lut: np.ndarray | None, num_classes: int) -> np.ndarray:
    """The class-index mask of a record at its file's resolution (ignore code for ignored pixels).

    Args:
        record: A record with a mask file, or with COCO shapes.
        lut: The class map (:func:`build_class_map`) for mask files; unused for COCO shapes.
        num_classes: Number of mask classes, background included.

    Raises:
        DataError: An unreadable mask file, values outside the class map, or
            COCO shapes that cannot be rasterised.
    """
    if record.mask is None:
        try:
            return rasterize(record, ignore_code(num_classes))
        except Exception as exc:  # pycocotools raises bare exceptions on malformed polygons
            raise DataError(f"{record.image}: COCO segmentation cannot be rasterised ({exc})", record.image) from None
    if lut is None:
        raise ValueError(f"{record.mask}: a mask file needs the class map; pass build_class_map(cfg, names) as lut")
    return apply_class_map(read_mask(record.mask), lut, record.mask, num_classes)


def index_mask_pairs(
    cfg: ReaderConfig, spec: SplitSpec, root: Path, reporter: Reporter, *, images_dir: Path, masks_dir: Path
) -> list[SegmentationRecord]:
    """One record per image of the split with its mask file (same id, any image suffix), for the mask formats.

    The split lists ids in ``spec.list_`` or, without a list, is every image in ``images_dir``.
    """
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
