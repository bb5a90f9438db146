"""Datasets for fine-tuning: COCO, Pascal VOC, YOLO, mask folders, VOC segmentation, and the shapes demo.

A recipe's ``data:`` section (:class:`DataConfig`) names a format, a root and
its splits; :func:`build_dataset` turns one split into a torch ``Dataset``
with albumentations transforms and the backbone's normalisation;
:func:`check_dataset` reports every problem of a dataset at once.

Example:
    >>> cfg = DataConfig(format="shapes")
    >>> ds = build_dataset(cfg, "train", task="segmentation", train=True,
    ...                    mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    >>> image, mask = ds[0]  # float32 [3, 128, 128], int64 [128, 128]
"""

from .acquire.shapes_generator import ensure_shapes_dataset, verify_shapes_dataset
from .check import check_dataset
from .config import FORMAT_TASKS, FORMATS, DataConfig, SplitSpec
from .datasets import DetectionDataset, SegmentationDataset, build_dataset, detection_collate, image_to_tensor
from .images import IMAGE_EXTENSIONS, probe_image, read_image, read_mask
from .index import class_names, has_split
from .problems import DataError, DataWarning, Problem
from .subsets import TrainSubset, subset_indices, take_train_subset
from .transforms import build_transforms

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
