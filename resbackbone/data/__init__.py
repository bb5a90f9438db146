"""Datasets for fine-tuning: COCO, Pascal VOC, YOLO, mask folders, VOC segmentation, and the shapes demo.

A recipe's ``data:`` section (:class:`DataConfig`) names a format, a root and
its splits; :func:`build_dataset` turns one split into a torch ``Dataset``
with albumentations transforms and the backbone's normalisation;
:func:`check_dataset` reports every problem of a dataset at once.

The names below are loaded on first use: reading an image
(:mod:`resbackbone.data.images`) needs no torch.

Example:
    >>> cfg = DataConfig(format="shapes")
    >>> ds = build_dataset(cfg, "train", task="segmentation", train=True,
    ...                    mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    >>> image, mask = ds[0]  # float32 [3, 128, 128], int64 [128, 128]
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..lazy import lazy_exports

_HOMES = {
    "ensure_shapes_dataset": "acquire.shapes_generator",
    "verify_shapes_dataset": "acquire.shapes_generator",
    "check_dataset": "check",
    "FORMAT_TASKS": "config",
    "FORMATS": "config",
    "DataConfig": "config",
    "SplitSpec": "config",
    "DetectionDataset": "datasets",
    "SegmentationDataset": "datasets",
    "build_dataset": "datasets",
    "detection_collate": "datasets",
    "image_to_tensor": "datasets",
    "IMAGE_EXTENSIONS": "images",
    "probe_image": "images",
    "read_image": "images",
    "read_mask": "images",
    "class_names": "index",
    "has_split": "index",
    "TrainSubset": "subsets",
    "subset_indices": "subsets",
    "take_train_subset": "subsets",
    "DataError": "problems",
    "DataWarning": "problems",
    "Problem": "problems",
    "build_transforms": "transforms",
}
"""Public name → the module (below this package) that defines it."""

if TYPE_CHECKING:
    from .acquire.shapes_generator import ensure_shapes_dataset, verify_shapes_dataset
    from .check import check_dataset
    from .config import FORMAT_TASKS, FORMATS, DataConfig, SplitSpec
    from .datasets import DetectionDataset, SegmentationDataset, build_dataset, detection_collate, image_to_tensor
    from .images import IMAGE_EXTENSIONS, probe_image, read_image, read_mask
    from .index import class_names, has_split
    from .problems import DataError, DataWarning, Problem
    from .subsets import TrainSubset, subset_indices, take_train_subset
    from .transforms import build_transforms


__getattr__, __dir__ = lazy_exports(__name__, _HOMES, globals())


__all__ = [
    "FORMATS",
    "FORMAT_TASKS",
    "IMAGE_EXTENSIONS",
    "DataConfig",
    "DataError",
    "DataWarning",
    "DetectionDataset",
    "Problem",
    "SegmentationDataset",
    "SplitSpec",
    "TrainSubset",
    "build_dataset",
    "build_transforms",
    "check_dataset",
    "class_names",
    "detection_collate",
    "ensure_shapes_dataset",
    "has_split",
    "image_to_tensor",
    "probe_image",
    "read_image",
    "read_mask",
    "subset_indices",
    "take_train_subset",
    "verify_shapes_dataset",
]
