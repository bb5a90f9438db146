"""Overlays people can read: the image at its own resolution, ground truth beside prediction, a colour legend.

Each panel is drawn at the image file's resolution, enlarged to at least
384 px on its long side (small inputs) or reduced to at most 1024 px (large
ones); masks are drawn as a translucent fill with a solid contour so that
touching objects stay apart, boxes with their class (and score), and a legend
strip names the colour of every class.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..runtime.draw import MIN_SIDE, PALETTE, class_color, draw_box, readable_scale

__all__ = ["COLORS", "draw_overlay", "overlay_scale", "to_pixels"]

COLORS = list(PALETTE)
"""Class colours, cycled: label 1 (the first object or foreground class) takes the first (the palette of
``predict``'s overlays)."""


overlay_scale = readable_scale


def to_pixels(image: Tensor, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """A normalised ``[C, H, W]`` tensor back to ``uint8 (H, W, 3)`` pixels (first three channels, grey repeated)."""
    m = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)
    pixels = (image.detach().float().cpu() * s + m).clamp(0, 1)
    if pixels.shape[0] == 1:
        pixels = pixels.expand(3, -1, -1)
    return (pixels[:3] * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()


def _font(size: int) -> Any:
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: one bitmap size
        return ImageFont.load_default()


def _mask_panel(base: Any, mask: np.ndarray, num_classes: int, ignore_index: int | None) -> Any:
    from PIL import Image

    size = base.size
    labels = np.asarray(Image.fromarray(mask.astype(np.int32)).resize(size, Image.NEAREST))
    canvas = np.asarray(base).astype(np.float32)
    edge = np.zeros(labels.shape, bool)
    edge[1:, :] |= labels[1:, :] != labels[:-1, :]
    edge[:-1, :] |= labels[1:, :] != labels[:-1, :]
    edge[:, 1:] |= labels[:, 1:] != labels[:, :-1]
    edge[:, :-1] |= labels[:, 1:] != labels[:, :-1]
    if max(labels.shape) >= 2 * MIN_SIDE // 2:  # a 2-px contour, visible at this size
        grown = edge.copy()
        grown[1:, :] |= edge[:-1, :]
        grown[:, 1:] |= edge[:, :-1]
        edge = grown
    for c in range(1, num_classes):
        where = labels == c
        if where.any():
            colour = np.array(class_color(c), np.float32)
            canvas[where] = 0.6 * canvas[where] + 0.4 * colour
            canvas[where & edge] = colour
    if ignore_index is not None:
        ignored = labels == ignore_index
        canvas[ignored] = 0.5 * canvas[ignored] + 0.5 * 128
    return Image.fromarray(canvas.round().clip(0, 255).astype(np.uint8))


def _box_panel(base: Any, boxes: Any, labels: Any, scores: Any, classes: list[str], scale: float, font: Any) -> Any:
    from PIL import ImageDraw

    draw = ImageDraw.Draw(base)
    width = max(2, round(2 * min(scale, 2)))
    for i, (box, label) in enumerate(zip(np.asarray(boxes, np.float64), np.asarray(labels).tolist())):
        name = classes[int(label) - 1] if 0 < int(label) <= len(classes) else str(label)
        text = name if scores is None else f"{name} {float(scores[i]):.2f}"
        draw_box(draw, [float(v) * scale for v in box], text, class_color(int(label)), width, font)
    return base


def _panel(
    pixels: np.ndarray, content: Any, *, task: str, classes: list[str], scale: float, font: Any, **kw: Any
) -> Any:
    from PIL import Image

    h, w = pixels.shape[:2]
    base = Image.fromarray(pixels).resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.BILINEAR)
    if task == "segmentation":
        return _mask_panel(base, np.asarray(content), len(classes), kw.get("ignore_index"))

    def array(value: Any) -> np.ndarray:
        return torch.as_tensor(value).detach().cpu().numpy()

    keep = np.ones(len(content["boxes"]), bool)
    scores = content.get("scores")
    if scores is not None:
        scores = array(scores).astype(np.float32)
        keep = scores >= kw.get("score_thresh", 0.5)
        scores = scores[keep]
    boxes = array(content["boxes"]).astype(np.float32).reshape(-1, 4)[keep]
    labels = array(content["labels"]).reshape(-1)[keep]
    return _box_panel(base, boxes, labels, scores, classes, scale, font)


def draw_overlay(
    pixels: np.ndarray,
    prediction: Any,
    *,
    task: str,
    classes: list[str],
    truth: Any = None,
    title: str = "",
    score_thresh: float = 0.5,
    ignore_index: int | None = None,
) -> np.ndarray:
    """A readable picture of a prediction (beside its ground truth when given), with a legend.

    Args:
        pixels: ``uint8 (H, W, 3)`` image at the resolution the prediction is in.
        prediction: Segmentation: ``(H, W)`` class-index mask. Detection: ``{"boxes", "scores", "labels"}``
            (``xyxy`` in ``pixels``' coordinates, labels 1..K).
        task: ``"detection"`` or ``"segmentation"``.
        classes: Class names: detection's object classes (label ``i`` is ``classes[i - 1]``), or
            segmentation's mask classes, background first.
        truth: The ground truth in the same form (``{"boxes", "labels"}`` for detection); ``None`` draws
            the prediction alone.
        title: A line above the panels (the image's name and its metric, say).
        score_thresh: Detection: boxes scoring less are not drawn.
        ignore_index: Segmentation: mask value drawn grey (ignored pixels).

    Returns:
        ``uint8 (H', W', 3)``, each panel's long side between 384 and 1024 px.
    """
    from PIL import Image, ImageDraw

    h, w = pixels.shape[:2]
    scale = overlay_scale(h, w)
    font = _font(14)
    common = {"task": task, "classes": classes, "scale": scale, "font": font, "ignore_index": ignore_index}
    panels = [("prediction", _panel(pixels, prediction, score_thresh=score_thresh, **common))]
    if truth is not None:
        panels.insert(0, ("ground truth", _panel(pixels, truth, **common)))
    pw, ph = panels[0][1].size
    gap, header = 8, 24
    legend_names = classes[1:] if task == "segmentation" else classes
    legend_rows = max(1, -(-len(legend_names) // 6))
    sheet = Image.new("RGB", (len(panels) * pw + (len(panels) - 1) * gap, ph + 2 * header + 22 * legend_rows), "white")
    draw = ImageDraw.Draw(sheet)
    if title:
        draw.text((4, 4), title, fill=(0, 0, 0), font=font)
    for i, (caption, panel) in enumerate(panels):
        x = i * (pw + gap)
        sheet.paste(panel, (x, header))
        draw.text((x + 4, header + ph + 4), caption, fill=(0, 0, 0), font=font)
    y0 = header + ph + header
    for i, name in enumerate(legend_names):
        x, y = 4 + (i % 6) * 130, y0 + (i // 6) * 22
        draw.rectangle([x, y + 3, x + 14, y + 17], fill=class_color(i + 1))
        draw.text((x + 20, y + 2), name, fill=(0, 0, 0), font=font)
    return np.asarray(sheet)
