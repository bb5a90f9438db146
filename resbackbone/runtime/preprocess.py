"""Bringing a decoded image to the model's input, and its predictions back to the image: numpy and OpenCV only.

:func:`fit_image` is the evaluation transform of the training pipeline
(:func:`~resbackbone.data.build_transforms` with ``train=False``: resize with
OpenCV's bilinear filter, pad bottom/right with 0, crop to ``image_size``)
done without albumentations, which imports torch when torch is installed;
``tests/test_runtime.py`` checks that both give the same pixels. The results
are 0–1 ``float32`` arrays: normalisation is the model's (inside an exported
graph, or in the PyTorch backend).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Fitted", "fit_image", "mask_to_image", "resize_logits"]


@dataclass(frozen=True)
class Fitted:
    """An image brought to the model's input size, and how to map results back.

    Attributes:
        pixels: ``(C, height, width)`` float32 in [0, 1].
        scale: ``(sy, sx)``: input pixels per original pixel.
        valid: ``(h, w)``: the part of ``pixels`` covered by the image (the rest is padding).
        size: ``(H, W)`` of the original image.
    """

    pixels: np.ndarray
    scale: tuple[float, float]
    valid: tuple[int, int]
    size: tuple[int, int]


def _resize(image: np.ndarray, height: int, width: int, interpolation: int | None = None) -> np.ndarray:
    import cv2

    if image.shape[:2] == (height, width):
        return image
    out = cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR if interpolation is None else interpolation)
    return out[..., None] if out.ndim == 2 and image.ndim == 3 else out


def fit_image(image: np.ndarray, size_hw: tuple[int, int] | list[int], resize: str = "letterbox") -> Fitted:
    """Resize and pad ``image`` as the evaluation pipeline does, and scale it to [0, 1].

    Args:
        image: ``(H, W, C)`` uint8, or float in [0, 1] (16-bit and DICOM images, as
            :func:`~resbackbone.data.read_image` returns them).
        size_hw: The model's input ``(height, width)``.
        resize: ``"letterbox"``: scale by ``min(height / H, width / W)`` (sides rounded), then pad
            the bottom and right with 0; ``"stretch"``: scale each axis to the size.

    Returns:
        The :class:`Fitted` image.

    Raises:
        ValueError: ``image`` is not ``(H, W, C)``, or ``resize`` is unknown.

    Example:
        >>> fit_image(np.zeros((480, 640, 3), np.uint8), (256, 256)).pixels.shape
        (3, 256, 256)
    """
    if image.ndim != 3 or image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError(f"fit_image() takes an (H, W, C) image, got shape {image.shape}.")
    h, w = image.shape[:2]
    th, tw = int(size_hw[0]), int(size_hw[1])
    if resize == "stretch":
        resized = _resize(image, th, tw)
        scale = (th / h, tw / w)
    elif resize == "letterbox":
        factor = min(th / h, tw / w)
        resized = _resize(image, max(1, round(h * factor)), max(1, round(w * factor)))
        scale = (factor, factor)
    else:
        raise ValueError(f"resize={resize!r} is not valid: expected 'letterbox' or 'stretch'.")
    rh, rw = resized.shape[:2]
    canvas = np.zeros((max(th, rh), max(tw, rw), resized.shape[2]), dtype=resized.dtype)
    canvas[:rh, :rw] = resized
    canvas = canvas[:th, :tw]
    pixels = canvas.astype(np.float32) * (np.float32(1 / 255) if canvas.dtype == np.uint8 else np.float32(1))
    return Fitted(
        pixels=np.ascontiguousarray(pixels.transpose(2, 0, 1)),
        scale=scale,
        valid=(min(rh, th), min(rw, tw)),
        size=(h, w),
    )


def resize_logits(logits: np.ndarray, fitted: Fitted) -> np.ndarray:
    """The class map of ``logits`` at the original image's size.

    The part of ``logits`` the image covered is resized bilinearly (OpenCV, pixel
    centres aligned as ``torch.nn.functional.interpolate(align_corners=False)``
    aligns them) to the original size, then the argmax taken per pixel.

    Args:
        logits: ``(classes, height, width)`` at the model's input size.
        fitted: What :func:`fit_image` returned for the image.

    Returns:
        ``(H, W)`` int64 class indices.
    """
    vh, vw = fitted.valid
    h, w = fitted.size
    valid = np.ascontiguousarray(logits[:, :vh, :vw].astype(np.float32).transpose(1, 2, 0))
    if valid.shape[2] > 512:  # OpenCV's channel limit: resize in groups
        full = np.concatenate([_resize(valid[..., i : i + 512], h, w) for i in range(0, valid.shape[2], 512)], axis=2)
    else:
        full = _resize(valid, h, w)
    return full.argmax(axis=2)


def mask_to_image(class_map: np.ndarray, fitted: Fitted) -> np.ndarray:
    """A class map at the model's input size brought to the original image's size (nearest neighbour).

    Each output pixel takes the class at its centre's position (half-pixel
    aligned, as :func:`resize_logits` aligns the logits).

    Args:
        class_map: ``(height, width)`` integer classes at the model's input size.
        fitted: What :func:`fit_image` returned for the image.

    Returns:
        ``(H, W)`` int64 class indices.
    """
    vh, vw = fitted.valid
    h, w = fitted.size
    rows = np.minimum(((np.arange(h) + 0.5) * (vh / h)).astype(np.int64), vh - 1)
    cols = np.minimum(((np.arange(w) + 0.5) * (vw / w)).astype(np.int64), vw - 1)
    return class_map[:vh, :vw][rows[:, None], cols[None, :]].astype(np.int64)
