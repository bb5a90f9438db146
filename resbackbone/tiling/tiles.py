"""Overlapping tiles over an image, and detection on them at the model's scale (sliced inference).

A detector trained on crops sees objects at one scale; run on a whole image
that its transform shrinks to its input size, small objects vanish. Tiled
detection cuts the image into overlapping tiles of the training crop's size,
detects on each (the detector's own resize is then the identity), shifts the
boxes back, and merges the duplicates the overlaps make
(:func:`~resbackbone.tiling.merge.merge_detections`), optionally together with
a detection on the whole image (SAHI's "standard prediction").
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from .config import check_overlap
from .merge import merge_detections

__all__ = ["detect_tiles", "tile_origins"]


def tile_origins(length: int, size: int, overlap: float) -> list[int]:
    """Start offsets of tiles of ``size`` covering ``length`` pixels, neighbours sharing ``overlap`` of a tile.

    The stride is ``size * (1 - overlap)`` rounded down (at least 1); the last tile is
    moved back to end at the image's edge, as MONAI's and SAHI's grids do. A side
    no longer than the tile gets one tile at 0.

    Raises:
        ValueError: ``size`` < 1 or ``overlap`` outside [0, 1).

    Example:
        >>> tile_origins(640, 256, 0.25)
        [0, 192, 384]
    """
    if size < 1:
        raise ValueError(f"Tile size {size} must be at least 1 pixel")
    check_overlap(overlap, "eval.tiles.overlap")
    if length <= size:
        return [0]
    stride = max(1, int(size * (1 - overlap)))
    count = math.ceil((length - size) / stride) + 1
    return sorted({min(i * stride, length - size) for i in range(count)})


def detect_tiles(
    detect: Callable[[list[Tensor]], list[dict[str, Tensor]]],
    image: Tensor,
    *,
    size_hw: tuple[int, int],
    overlap: float,
    merge: str = "nmm",
    iou: float = 0.5,
    whole: bool = False,
    batch_size: int = 4,
    max_detections: int | None = 300,
) -> dict[str, Tensor]:
    """Detections on overlapping tiles of ``image``, in its pixels, duplicates merged per class.

    Args:
        detect: A torchvision-style detector in eval mode (list of ``[C, h, w]`` -> list of dicts).
        image: ``[C, H, W]``, as the detector takes it. An image smaller than a tile
            is padded with zeros at the bottom and right (boxes are clipped back).
        size_hw: Tile ``(height, width)``.
        overlap: Fraction of a tile shared with its neighbour, in [0, 1).
        merge: ``nmm`` (default), ``nms`` or ``wbf``.
        iou: Overlap threshold of the merge.
        whole: Also detect on the whole image (the detector shrinks it to its input size).
        batch_size: Tiles per detector call.
        max_detections: Boxes kept per image after merging.

    Returns:
        ``{"boxes", "scores", "labels"}`` in ``image``'s pixels.
    """
    _, h, w = image.shape
    th, tw = size_hw
    if h < th or w < tw:
        image = torch.nn.functional.pad(image, (0, max(0, tw - w), 0, max(0, th - h)))
    origins = [(y, x) for y in tile_origins(max(h, th), th, overlap) for x in tile_origins(max(w, tw), tw, overlap)]
    found: list[dict[str, Tensor]] = []
    for start in range(0, len(origins), batch_size):
        chunk = origins[start : start + batch_size]
        outputs = detect([image[:, y : y + th, x : x + tw] for y, x in chunk])
        for (y, x), out in zip(chunk, outputs):
            shift = out["boxes"].new_tensor([x, y, x, y])
            found.append({**out, "boxes": out["boxes"] + shift})
    if whole:
        found.append(detect([image[:, :h, :w]])[0])
    boxes = torch.cat([f["boxes"] for f in found])
    boxes = torch.stack(
        [boxes[:, 0].clamp(0, w), boxes[:, 1].clamp(0, h), boxes[:, 2].clamp(0, w), boxes[:, 3].clamp(0, h)], 1
    )
    scores = torch.cat([f["scores"] for f in found])
    labels = torch.cat([f["labels"] for f in found])
    keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    return merge_detections(
        boxes[keep], scores[keep], labels[keep], method=merge, iou=iou, max_detections=max_detections
    )
