"""Per-image results of an evaluation: one CSV row per image, and the worst images kept and drawn."""

from __future__ import annotations

import csv
import heapq
import io
import itertools
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..recipes import Recipe
from ..runtime.draw import display_image
from .checkpoint import atomic_write_bytes
from .metrics import COUNT_IOU, COUNT_SCORE
from .overlays import draw_overlay, to_pixels

__all__ = ["ImageCase", "ImageLog", "draw_case", "draw_worst", "save_png", "write_image_log"]


@dataclass(order=True)
class ImageCase:
    """One evaluated image, kept to be drawn.

    Attributes:
        badness: How bad the image went (1 - Dice; false positives + misses): the worst are kept.
        order: Tie-breaker (arrival order).
        name: The image (its file name, or its position in the split).
        row: Its CSV row.
        image: The model's input (``[C, h, w]``, normalised), for drawing when there is no file.
        path: The image file, when known (drawn at its own resolution).
        truth: The ground truth, at the prediction's resolution.
        prediction: Class-index mask, or ``{"boxes", "scores", "labels"}``.
    """

    badness: float
    order: int
    name: str = field(compare=False)
    row: dict[str, Any] = field(compare=False)
    image: torch.Tensor = field(compare=False, repr=False)
    path: str | None = field(compare=False)
    truth: Any = field(compare=False, repr=False)
    prediction: Any = field(compare=False, repr=False)


class ImageLog:
    """Collects one row per evaluated image and keeps the ``keep_worst`` worst images.

    Args:
        keep_worst: How many of the worst images to keep for overlays (0 keeps none).
    """

    def __init__(self, keep_worst: int = 0) -> None:
        self.keep_worst = keep_worst
        self.rows: list[dict[str, Any]] = []
        self._heap: list[ImageCase] = []  # min-heap on badness: the least bad of the kept is first
        self._count = itertools.count()

    def add(self, row: dict[str, Any], *, badness: float, case: dict[str, Any]) -> None:
        """Record an image: its row, and ``case`` (:class:`ImageCase` fields) if it is among the worst."""
        self.rows.append(row)
        if self.keep_worst <= 0:
            return
        badness = 0.0 if math.isnan(badness) else badness
        item = ImageCase(badness, next(self._count), row=row, **case)
        if len(self._heap) < self.keep_worst:
            heapq.heappush(self._heap, item)
        elif item.badness > self._heap[0].badness:
            heapq.heapreplace(self._heap, item)

    @property
    def worst(self) -> list[ImageCase]:
        """The kept images, worst first."""
        return sorted(self._heap, key=lambda c: (-c.badness, c.order))

    def gather(self) -> None:
        """Under ``torchrun``, collect every process's rows and worst images (a no-op in one process)."""
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            return
        parts: list[Any] = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(parts, (self.rows, self._heap))
        self.rows = [r for rows, _ in parts for r in rows]
        cases = sorted((c for _, heap in parts for c in heap), key=lambda c: -c.badness)[: self.keep_worst]
        self._heap = cases
        heapq.heapify(self._heap)

    def to_csv(self) -> str:
        """The rows as CSV text, columns in order of first appearance."""
        columns = list(dict.fromkeys(k for r in self.rows for k in r))
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=columns)
        writer.writeheader()
        for row in self.rows:
            writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
        return buffer.getvalue()

    def write_csv(self, path: Path) -> Path:
        """Write :meth:`to_csv` to ``path`` atomically."""
        atomic_write_bytes(path, self.to_csv().encode())
        return path


def save_png(path: Path, picture: np.ndarray) -> Path:
    """Write a ``uint8 (H, W, 3)`` array as a PNG, atomically."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(picture).save(buffer, format="PNG")
    atomic_write_bytes(path, buffer.getvalue())
    return path


def _file_pixels(path: str | None, window: tuple[float, float] | None) -> np.ndarray | None:
    """The image file's pixels as ``uint8 (H, W, 3)``, or ``None`` without a file."""
    if path is None:
        return None
    from ..data import read_image

    return display_image(read_image(path, in_chans=3, window=window))


def _caption(task: str, row: dict[str, Any]) -> str:
    if task == "detection":
        return f"TP {row['tp']}  FP {row['fp']}  FN {row['fn']} (IoU {COUNT_IOU:g}, score {COUNT_SCORE:g})"
    return f"Dice {row['dice']:.3f}  IoU {row['iou']:.3f}"


def draw_worst(
    log: ImageLog,
    folder: Path,
    *,
    prefix: str,
    task: str,
    classes: list[str],
    mean: tuple[float, ...],
    std: tuple[float, ...],
    window: tuple[float, float] | None = None,
    ignore_index: int | None = None,
) -> list[Path]:
    """Draw the worst images an evaluation kept: ground truth beside prediction, at the image's own resolution.

    Returns:
        The PNG files, ``<prefix>_00.png`` for the worst.
    """
    paths = []
    folder.mkdir(parents=True, exist_ok=True)
    for rank, case in enumerate(log.worst):
        paths.append(
            save_png(
                folder / f"{prefix}_{rank:02d}.png", draw_case(case, task, classes, mean, std, window, ignore_index)
            )
        )
    return paths


def draw_case(
    case: ImageCase,
    task: str,
    classes: list[str],
    mean: tuple[float, ...],
    std: tuple[float, ...],
    window: tuple[float, float] | None,
    ignore_index: int | None,
) -> np.ndarray:
    """One image as ``uint8 (H, W, 3)``: ground truth beside prediction, captioned with its scores."""
    pixels = _file_pixels(case.path, window)
    if pixels is None:
        pixels = to_pixels(case.image, mean, std)
    return draw_overlay(
        pixels,
        case.prediction.numpy() if isinstance(case.prediction, Tensor) else case.prediction,
        task=task,
        classes=classes,
        truth=case.truth.numpy() if isinstance(case.truth, Tensor) else case.truth,
        title=f"{case.name}   {_caption(task, case.row)}",
        ignore_index=ignore_index,
    )


def write_image_log(
    log: ImageLog, folder: Path, prefix: str, *, recipe: Recipe, classes: list[str], mean: Any, std: Any
) -> list[Path]:
    """Write ``per_image.csv`` and draw the worst images (``<prefix>_NN.png``) into ``folder``.

    Returns:
        The CSV file and the drawings.
    """
    folder.mkdir(parents=True, exist_ok=True)
    csv_path = log.write_csv(folder / "per_image.csv")
    data = recipe.data
    drawn = draw_worst(
        log,
        folder,
        prefix=prefix,
        task=recipe.task,
        classes=classes,
        mean=mean,
        std=std,
        window=data.window,
        ignore_index=data.ignore_index,
    )
    return [csv_path, *drawn]
