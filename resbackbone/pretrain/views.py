"""The augmented views a self-supervised method trains on: lightly's transforms, albumentations for other modalities.

8-bit RGB images get lightly's multi-view transform of the method
(``SimCLRTransform``, ``MoCoV2Transform``, ``BYOLTransform``: random resized
crop, flips, colour jitter, grayscale, blur, BYOL's solarisation), built with
the recipe's ``pretrain.views`` settings and normalised with the backbone's
mean/std. lightly's colour transforms are for 8-bit RGB, so grayscale, 16-bit,
DICOM and N-channel images (as :func:`~resbackbone.data.read_image` gives them:
uint8 or float32 in [0, 1], ``in_chans`` channels) get the same views from
albumentations: the same crop, flips and rotations, brightness/contrast (hue
and saturation where there are three channels), blur and solarisation.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..data import image_to_tensor
from ..data.transforms import reseed

if TYPE_CHECKING:
    from .config import ViewsConfig

__all__ = ["VIEW_KINDS", "MultiViews"]

# Per kind: lightly's colour-jitter brightness/contrast/saturation/hue (scaled by views.jitter_strength),
# and the blur and solarisation probabilities of its two views, as lightly's transforms set them.
VIEW_KINDS: dict[str, dict[str, Any]] = {
    "simclr": {"jitter": (0.8, 0.8, 0.8, 0.2), "blur": (0.5, 0.5), "solarize": (0.0, 0.0)},
    "mocov2": {"jitter": (0.4, 0.4, 0.4, 0.1), "blur": (0.5, 0.5), "solarize": (0.0, 0.0)},
    "byol": {"jitter": (0.4, 0.4, 0.2, 0.1), "blur": (1.0, 0.1), "solarize": (0.0, 0.2)},
}
"""The view families of the methods (``MethodSpec.views``)."""


def _lightly_transform(kind: str, cfg: ViewsConfig, mean: tuple[float, ...], std: tuple[float, ...]) -> Any:
    from lightly.transforms import (
        BYOLTransform,
        BYOLView1Transform,
        BYOLView2Transform,
        MoCoV2Transform,
        SimCLRTransform,
    )

    common: dict[str, Any] = {
        "input_size": cfg.crop_size,
        "min_scale": cfg.min_scale,
        "hf_prob": cfg.hflip,
        "vf_prob": cfg.vflip,
        "rr_prob": cfg.rotate90,
        "rr_degrees": None,  # multiples of 90 degrees
        "cj_prob": cfg.color_jitter,
        "cj_strength": cfg.jitter_strength,
        "random_gray_scale": cfg.grayscale,
        "normalize": {"mean": list(mean), "std": list(std)},
    }
    if cfg.blur is not None:
        common["gaussian_blur"] = cfg.blur
    if kind == "byol":
        return BYOLTransform(BYOLView1Transform(**common), BYOLView2Transform(**common))
    return (MoCoV2Transform if kind == "mocov2" else SimCLRTransform)(**common)


def _albumentations_view(kind: str, cfg: ViewsConfig, view: int, channels: int) -> Any:
    import albumentations as A

    table = VIEW_KINDS[kind]
    s = cfg.jitter_strength
    bright, contrast, saturation, hue = (v * s for v in table["jitter"])
    blur = cfg.blur if cfg.blur is not None else table["blur"][view]
    steps: list[Any] = [
        A.RandomResizedCrop(size=(cfg.crop_size, cfg.crop_size), scale=(cfg.min_scale, 1.0)),
        A.HorizontalFlip(p=cfg.hflip),
        A.VerticalFlip(p=cfg.vflip),
        A.RandomRotate90(p=cfg.rotate90),
    ]
    if channels == 3:
        steps.append(
            A.ColorJitter(brightness=bright, contrast=contrast, saturation=saturation, hue=hue, p=cfg.color_jitter)
        )
        steps.append(A.ToGray(p=cfg.grayscale))
    else:
        steps.append(A.RandomBrightnessContrast(brightness_limit=bright, contrast_limit=contrast, p=cfg.color_jitter))
    steps.append(A.GaussianBlur(sigma_limit=(0.1, 2.0), p=blur))
    if table["solarize"][view]:
        steps.append(A.Solarize(threshold_range=(0.5, 0.5), p=table["solarize"][view]))
    return A.Compose(steps)


class MultiViews:
    """Two augmented views of an image, as normalised ``float32 [C, crop, crop]`` tensors.

    Args:
        kind: A key of :data:`VIEW_KINDS` (the method's view family).
        cfg: The recipe's ``pretrain.views`` section.
        mean: The backbone's per-channel mean.
        std: The backbone's per-channel std.
        in_chans: The channels images come with (as read for the backbone).

    Example:
        >>> views = MultiViews("simclr", ViewsConfig(crop_size=64), (0.5,) * 3, (0.5,) * 3, 3)
        >>> [tuple(v.shape) for v in views(np.zeros((100, 120, 3), np.uint8))]
        [(3, 64, 64), (3, 64, 64)]
    """

    def __init__(
        self, kind: str, cfg: ViewsConfig, mean: tuple[float, ...], std: tuple[float, ...], in_chans: int
    ) -> None:
        if kind not in VIEW_KINDS:
            raise ValueError(f"Unknown view family {kind!r}; expected one of {sorted(VIEW_KINDS)}.")
        self.kind = kind
        self.cfg = cfg
        self.mean, self.std = tuple(mean), tuple(std)
        self.rgb = _lightly_transform(kind, cfg, self.mean, self.std) if in_chans == 3 else None
        self.other = [_albumentations_view(kind, cfg, view, in_chans) for view in (0, 1)]

    def __call__(self, image: np.ndarray) -> list[torch.Tensor]:
        """The views of an ``(H, W, C)`` image (uint8, or float32 in [0, 1])."""
        if self.rgb is not None and image.dtype == np.uint8 and image.shape[2] == 3:
            from PIL import Image

            return list(self.rgb(Image.fromarray(image)))
        views = []
        for transform in self.other:
            reseed(transform, int(torch.randint(0, 2**31 - 1, (1,)).item()))
            views.append(image_to_tensor(transform(image=image)["image"], self.mean, self.std))
        return views

    def plain(self, image: np.ndarray) -> torch.Tensor:
        """The un-augmented view: the shorter side resized to the crop size, the centre cut out."""
        import cv2

        side = self.cfg.crop_size
        h, w = image.shape[:2]
        scale = side / min(h, w)
        size = (max(side, round(w * scale)), max(side, round(h * scale)))
        resized = cv2.resize(image, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
        if resized.ndim == 2:
            resized = resized[..., None]
        top, left = (resized.shape[0] - side) // 2, (resized.shape[1] - side) // 2
        return image_to_tensor(resized[top : top + side, left : left + side], self.mean, self.std)
