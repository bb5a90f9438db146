"""Mask folders: ``images/<id>.*`` with ``masks/<id>.png`` (binary 0/255, or index PNGs).

The split is a file of ids (``train.txt`` at the root, or any ``list``), or
every image of ``images`` (or the split's ``images`` folder). Mask pixel
values map to classes through ``data.class_map``, by default binary:
``[background, foreground]``.
"""

from __future__ import annotations

from pathlib import Path

from ..problems import Reporter
from .base import FormatSpec, ReaderConfig, SplitSpec
from .masks import index_mask_pairs
from .records import SegmentationRecord

__all__ = ["MASK_FOLDER", "index_mask_folder"]


def index_mask_folder(
    cfg: ReaderConfig, spec: SplitSpec, root: Path, reporter: Reporter, *, task: str = "segmentation"
) -> list[SegmentationRecord]:
    """Index a mask-folder split: one record per image with its mask file."""
    images_dir, masks_dir = root / (spec.images or "images"), root / (spec.masks or "masks")
    return index_mask_pairs(cfg, spec, root, reporter, images_dir=images_dir, masks_dir=masks_dir)


MASK_FOLDER = FormatSpec(
    name="mask_folder",
    tasks=("segmentation",),
    split_fields=("list", "images", "masks"),
    short_field="list",
    list_folder="",
    split_folders=("images", "masks"),
    mask_files=True,
    classes=("background", "foreground"),
    index=index_mask_folder,
)
