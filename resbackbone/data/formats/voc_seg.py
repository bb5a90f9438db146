"""Pascal VOC segmentation: ``JPEGImages/<id>.jpg`` with palette PNGs ``SegmentationClass/<id>.png``.

The split is ``ImageSets/Segmentation/<split>.txt``; a mask's palette index is
the class (255 marks boundaries, ignored), and the classes default to the 21
of VOC, background first.
"""

from __future__ import annotations

from pathlib import Path

from ..problems import Reporter
from .base import FormatSpec, ReaderConfig, SplitSpec
from .masks import index_mask_pairs
from .records import SegmentationRecord

__all__ = ["VOC_CLASSES", "VOC_SEG", "index_voc_seg"]

VOC_CLASSES = [
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
]  # fmt: skip


def index_voc_seg(
    cfg: ReaderConfig, spec: SplitSpec, root: Path, reporter: Reporter, *, task: str = "segmentation"
) -> list[SegmentationRecord]:
    """Index a VOC segmentation split: one record per listed id with its ``SegmentationClass`` mask."""
    images_dir, masks_dir = root / "JPEGImages", root / "SegmentationClass"
    return index_mask_pairs(cfg, spec, root, reporter, images_dir=images_dir, masks_dir=masks_dir)


VOC_SEG = FormatSpec(
    name="voc_seg",
    tasks=("segmentation",),
    split_fields=("list",),
    short_field="list",
    list_folder="ImageSets/Segmentation",
    required=(("list", "the split file of image ids"),),
    mask_files=True,
    classes=tuple(VOC_CLASSES),
    index=index_voc_seg,
)
