"""Prediction overlays drawn with PIL on the image at its own resolution: boxes with their class and score, or masks.

No torch import: the ONNX Runtime and the PyTorch backends of ``predict`` draw the same pictures.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = [
    "MAX_SIDE",
    "MIN_SIDE",
    "PALETTE",
    "class_color",
    "display_image",
    "draw_box",
    "draw_boxes",
    "draw_mask",
    "readable_scale",
]

PALETTE = ("#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#46f0f0", "#f032e6", "#bcf60c", "#fabebe")
"""Class colours, in class order (detection label 1 and segmentation class 1 take the first)."""


MIN_SIDE, MAX_SIDE = 384, 1024
"""Overlays are drawn with their long side in [MIN_SIDE, MAX_SIDE] px, so small inputs stay readable."""


def readable_scale(height: int, width: int) -> float:
    """Factor bringing the long side into [:data:`MIN_SIDE`, :data:`MAX_SIDE`] px (1 when it already is)."""
    side = max(height, width)
    return MIN_SIDE / side if side < MIN_SIDE else (MAX_SIDE / side if side > MAX_SIDE else 1.0)


def class_color(label: int) -> tuple[int, int, int]:
    """The RGB colour of class (or detection label) ``label``: 1 takes the palette's first, and on, cycled."""
    code = PALETTE[(label - 1) % len(PALETTE)]
    return int(code[1:3], 16), int(code[3:5], 16), int(code[5:7], 16)


def display_image(image: np.ndarray) -> np.ndarray:
    """An ``(H, W, 3)`` uint8 picture of a decoded image (``(H, W)`` or ``(H, W, C)``, 1 to 4 channels;
    uint8, or float in [0, 1])."""
    pixels = image if image.dtype == np.uint8 else (np.clip(image.astype(np.float32), 0, 1) * 255).round()
    pixels = pixels.astype(np.uint8)
    if pixels.ndim == 2:
        pixels = pixels[..., None]
    if pixels.shape[2] == 1:
        pixels = np.repeat(pixels, 3, axis=2)
    return np.ascontiguousarray(pixels[..., :3])


def draw_box(
    draw: Any, box: Sequence[float], text: str, color: tuple[int, int, int], width: int, font: Any = None
) -> None:
    """One box (xyxy, in the drawing's pixels) outlined on a ``PIL.ImageDraw`` with ``text`` on a label in
    its colour above it (inside it when there is no room above)."""
    x1, y1, x2, y2 = (float(v) for v in box)
    draw.rectangle((x1, y1, x2, y2), outline=color, width=width)
    left, top, right, bottom = draw.textbbox((x1, y1), text, font=font)
    y = y1 - (bottom - top) - 2 if y1 - (bottom - top) - 2 >= 0 else y1
    draw.rectangle((x1, y, x1 + (right - left) + 4, y + (bottom - top) + 2), fill=color)
    draw.text((x1 + 2, y - (top - y1) + 1), text, fill=(255, 255, 255), font=font)


def draw_boxes(
    image: np.ndarray, boxes: np.ndarray, names: list[str], scores: np.ndarray, labels: list[int]
) -> np.ndarray:
    """``image`` with ``boxes`` (xyxy, its pixels) outlined and captioned ``"<name> <score>"``.

    Args:
        image: A decoded image (see :func:`display_image`).
        boxes: ``(K, 4)``.
        names: K class names.
        scores: K scores.
        labels: K class labels (1 the first class): their colours.

    Returns:
        ``(H, W, 3)`` uint8.
    """
    from PIL import Image, ImageDraw

    picture = Image.fromarray(display_image(image))
    draw = ImageDraw.Draw(picture)
    width = max(1, round(max(picture.size) / 300))
    for box, name, score, label in zip(boxes, names, scores, labels):
        draw_box(draw, box, f"{name} {float(score):.2f}", class_color(label), width)
    return np.asarray(picture)


def draw_mask(image: np.ndarray, mask: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """``image`` with every class but 0 (the background) tinted in its colour.

    Args:
        image: A decoded image (see :func:`display_image`).
        mask: ``(H, W)`` class indices at the image's size.
        alpha: Opacity of the tint.

    Returns:
        ``(H, W, 3)`` uint8.
    """
    picture = display_image(image).astype(np.float32)
    colors = np.array([(0, 0, 0), *(class_color(c) for c in range(1, len(PALETTE) + 1))], dtype=np.float32)
    index = np.where(mask > 0, (mask - 1) % len(PALETTE) + 1, 0)
    tint = colors[index]
    painted = mask[..., None] > 0
    out = np.where(painted, picture * (1 - alpha) + tint * alpha, picture)
    return out.round().astype(np.uint8)
