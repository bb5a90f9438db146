"""Albumentations pipelines from the recipe: box- and mask-aware augmentation plus sizing.

Training: ``resize`` (longest side fitted into ``image_size``, or stretched) →
the recipe's ``augment`` list → pad to at least ``image_size`` → random crop to
exactly ``image_size``. Evaluation: resize → pad → top-left crop, all
deterministic; or the resize alone (``pad=False``), for evaluation at the
file's resolution, where the prediction is resized back. Padding is 0 in the
image and ignored in the mask.
Detection pipelines carry ``bboxes`` (pascal_voc, pixels) with a ``labels``
field; boxes that an augmentation pushes out of the image are dropped.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .augment import mask_resize_interpolation, validate_augment
from .config import DataConfig

if TYPE_CHECKING:
    import albumentations as A

__all__ = ["build_transforms", "reseed", "validate_augment"]


def _check_boxes_supported(transforms: list[Any]) -> None:
    import albumentations as A
    from albumentations.core.type_definitions import Targets

    for t in transforms:
        if isinstance(t, A.BaseCompose):
            _check_boxes_supported(list(t.transforms))
        elif isinstance(t, A.DualTransform) and Targets.BBOXES not in getattr(type(t), "_targets", (Targets.BBOXES,)):
            raise ValueError(
                f"data.augment: {type(t).__name__} cannot move bounding boxes, so it cannot be used for detection; "
                "remove it or pick a box-aware transform"
            )


def build_transforms(cfg: DataConfig, *, task: str, train: bool, mask_fill: int = 255, pad: bool = True) -> A.Compose:
    """The albumentations pipeline for ``cfg``.

    Args:
        cfg: The data config (``image_size``, ``resize``, ``augment``, ``ignore_index``).
        task: ``"detection"`` (adds box parameters) or ``"segmentation"``.
        train: Include the recipe's augmentations and a random crop (``crop_size``).
        mask_fill: Mask value of padded pixels (the loader's internal ignore code).
        pad: Pad and crop to ``image_size`` after the resize; ``False`` (evaluation only)
            stops at the resize, leaving the image at the model's scale and its own aspect.

    Returns:
        ``A.Compose`` taking ``image`` (HWC uint8 or float32) and ``bboxes`` +
        ``labels`` (detection) or ``mask`` (segmentation); it does not normalise.

    Raises:
        ValueError: An augmentation that cannot move boxes, for detection, or ``pad=False`` in training.
    """
    import albumentations as A
    import cv2

    h, w = cfg.size_hw
    nearest = mask_resize_interpolation()
    if cfg.resize == "stretch":
        steps: list[Any] = [A.Resize(height=h, width=w, mask_interpolation=nearest)]
    else:
        steps = [A.LongestMaxSize(max_size_hw=(h, w), mask_interpolation=nearest)]
    if train and not pad:
        raise ValueError("build_transforms(pad=False) is for evaluation; training crops need train=True, pad=True")
    if not pad:
        return A.Compose(steps, bbox_params=_box_params(task))
    if train and cfg.augment:
        augment = validate_augment(cfg.augment)
        if task == "detection":
            _check_boxes_supported(augment)
        steps += augment
    steps.append(
        A.PadIfNeeded(
            min_height=h, min_width=w, position="top_left", border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=mask_fill
        )
    )
    ch, cw = cfg.crop_hw
    steps.append(A.RandomCrop(height=ch, width=cw) if train else A.Crop(x_min=0, y_min=0, x_max=w, y_max=h))
    return A.Compose(steps, bbox_params=_box_params(task))


def reseed(transform: A.BaseCompose, seed: int) -> None:
    """Seed an albumentations pipeline so that its transforms draw in turn from one generator.

    ``Compose.set_random_seed`` (albumentations 2.0) gives every transform its own generator
    with the *same* seed: each one's first draw is then the same number, so ``HorizontalFlip``,
    ``VerticalFlip`` and ``RandomRotate90`` at ``p=0.5`` fire together or not at all (4 of the 8
    flips and turns of a square, the identity 57 % of the time, in place of 1/8 each).
    """
    import random

    import numpy as np

    transform.set_random_state(np.random.default_rng(seed), random.Random(seed))


def _box_params(task: str) -> A.BboxParams | None:
    import albumentations as A

    if task != "detection":
        return None
    return A.BboxParams(format="pascal_voc", label_fields=["labels"], clip=True, filter_invalid_bboxes=True)
