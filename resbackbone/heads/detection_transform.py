"""The detectors' input transform: torchvision's ``GeneralizedRCNNTransform`` with checked inputs and an exact resize.

Two changes to torchvision's:

- inputs are checked, and a wrong image or label is a ``ValueError`` naming it;
- the resize computes the output size in integers, ``size = side * num // den``
  with ``num / den`` the scale (``min_size / short side``, or ``max_size / long side``
  when that is smaller). torchvision takes ``floor(side * scale)`` with the scale
  in float32, and its ONNX export resizes by that scale rather than to that
  size, so an exported detector read a different image than the PyTorch one at
  most sizes (the boxes moved by up to a pixel, the scores by 1e-3). In
  integers, eager PyTorch, a traced graph and ONNX Runtime resize to the same
  size in the same way; the size differs from torchvision's by one pixel where
  ``side * scale`` falls within float32 rounding of an integer.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.models.detection.transform import GeneralizedRCNNTransform, resize_boxes

__all__ = ["DetectionTransform", "resized_size"]


def resized_size(height: int, width: int, min_size: int, max_size: int) -> tuple[int, int]:
    """The size :class:`DetectionTransform` resizes a ``height`` × ``width`` image to.

    The short side becomes ``min_size`` unless the long side would then exceed
    ``max_size``, in which case the long side becomes ``max_size``; sizes are
    rounded down, in exact integer arithmetic.

    Example:
        >>> resized_size(480, 640, 256, 256)
        (192, 256)
    """
    short, long = min(height, width), max(height, width)
    num, den = (min_size, short) if short * max_size >= long * min_size else (max_size, long)
    return height * num // den, width * num // den


def _traced_size(image: Tensor, min_size: int, max_size: int) -> list[Tensor]:
    """:func:`resized_size` as graph operations on the image's shape, for a traced (ONNX) export."""
    from torch.onnx import operators

    hw = operators.shape_as_tensor(image)[-2:]
    short, long = hw.min(), hw.max()
    by_short = short * max_size >= long * min_size
    num = torch.where(by_short, torch.tensor(min_size), torch.tensor(max_size))
    den = torch.where(by_short, short, long)
    size = hw * num // den
    return [size[0], size[1]]


class DetectionTransform(GeneralizedRCNNTransform):
    """torchvision's detection transform with checked inputs and the exact resize of :func:`resized_size`.

    Args:
        min_size: Short side after resizing (training picks one of several at random, as torchvision's).
        max_size: Cap on the long side.
        image_mean: Per-channel mean the model subtracts.
        image_std: Per-channel std it divides by.
        in_chans: Channels of the images.
        num_classes: Classes of the head, for checking target labels.
        first_label: The smallest valid label (1 where 0 is the background).
    """

    def __init__(
        self,
        min_size: int,
        max_size: int,
        image_mean: list[float],
        image_std: list[float],
        *,
        in_chans: int,
        num_classes: int,
        first_label: int,
    ) -> None:
        super().__init__(min_size, max_size, image_mean, image_std)
        self.in_chans = in_chans
        self.num_classes = num_classes
        self.first_label = first_label

    def forward(
        self, images: list[Tensor], targets: list[dict[str, Tensor]] | None = None
    ) -> tuple[Any, list[dict[str, Tensor]] | None]:
        for i, image in enumerate(images):
            if not isinstance(image, Tensor) or image.ndim != 3 or image.shape[0] != self.in_chans:
                shape = tuple(image.shape) if isinstance(image, Tensor) else type(image).__name__
                raise ValueError(
                    f"images[{i}] is {shape}; this detector takes ({self.in_chans}, H, W) float images in [0, 1]."
                )
            if image.shape[1] < 1 or image.shape[2] < 1:
                raise ValueError(f"images[{i}] is {tuple(image.shape)}: an empty image cannot be detected on.")
        for i, target in enumerate(targets or []):
            labels = target.get("labels") if isinstance(target, Mapping) else None
            if isinstance(labels, Tensor) and labels.numel():
                low, high = int(labels.min()), int(labels.max())
                if low < self.first_label or high >= self.num_classes:
                    raise ValueError(
                        f"targets[{i}]['labels'] holds {low if low < self.first_label else high}; this detector "
                        f"has num_classes={self.num_classes}, so labels must be in {self.first_label}…"
                        f"{self.num_classes - 1}" + (" (0 is the background)." if self.first_label else ".")
                    )
        return super().forward(images, targets)

    def resize(self, image: Tensor, target: dict[str, Tensor] | None = None) -> tuple[Tensor, Any]:
        """Resize ``image`` (and its target boxes) to :func:`resized_size`, bilinearly."""
        min_size = int(self.torch_choice(self.min_size) if self.training else self.min_size[-1])
        height, width = image.shape[-2:]
        if self.fixed_size is not None:
            size: list[Any] = [self.fixed_size[1], self.fixed_size[0]]
        elif torch.jit.is_tracing():
            size = _traced_size(image, min_size, int(self.max_size))
        else:
            size = list(resized_size(int(height), int(width), min_size, int(self.max_size)))
        image = F.interpolate(image[None], size=size, mode="bilinear", align_corners=False)[0]
        if target is not None and "boxes" in target:
            if any(key in target for key in ("masks", "keypoints")):
                raise ValueError("DetectionTransform resizes boxes only; masks and keypoints are not supported.")
            target["boxes"] = resize_boxes(target["boxes"], (height, width), image.shape[-2:])
        return image, target
