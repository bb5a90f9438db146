"""``dataset_stats``: what a dataset looks like at the recipe's scale, and the sizes that fit the model to it.

Image sizes, object sizes per class after the recipe's resize (boxes for
detection; connected components of each mask class for segmentation, 8-connected,
so touching objects count as one), class frequencies, and suggestions:

* ``image_size``: the smallest multiple of 32 at which the smallest class keeps
  at least 8 px (its 10th-percentile object) and 16 px (its median object);
* ``anchor_sizes`` (detection): one power of two per pyramid map, the smallest at
  or below the 5th-percentile object, doubling per level;
* ``crop_size``: about three times the 95th-percentile object of the largest
  class (a multiple of 32, at least 64, at most ``image_size``), so that crops
  hold whole objects with context.

The size of an object is the square root of its area, the scale torchvision's
anchors are matched on.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .config import DataConfig

__all__ = ["MIN_OBJECT_PX", "DatasetStats", "dataset_stats"]

MIN_OBJECT_PX = 8
"""Pixels the smallest class's 10th-percentile object should keep after the resize."""


def _round32(value: float) -> int:
    return max(32, math.ceil(value / 32.0) * 32)


@dataclass
class DatasetStats:
    """Statistics of one split at the recipe's scale (see the module docs).

    Attributes:
        task: ``"detection"`` or ``"segmentation"``.
        split: The split measured.
        classes: Object classes (detection) or mask classes without the background.
        image_size: The recipe's ``(height, width)`` input.
        resize: The recipe's resize (``letterbox`` or ``stretch``).
        image_sizes: ``(height, width)`` of the files -> how many.
        scales: Per image, the factor the resize applies (the geometric mean of both axes).
        sizes: Class -> object sizes in the file's pixels (square root of the area).
        resized: Class -> object sizes after the resize.
        images_with: Class -> images holding at least one of its objects.
        pixels: Segmentation: class -> fraction of all pixels.
    """

    task: str
    split: str
    classes: list[str]
    image_size: tuple[int, int]
    resize: str
    image_sizes: Counter[tuple[int, int]] = field(default_factory=Counter)
    scales: list[float] = field(default_factory=list)
    sizes: dict[str, list[float]] = field(default_factory=dict)
    resized: dict[str, list[float]] = field(default_factory=dict)
    images_with: Counter[str] = field(default_factory=Counter)
    pixels: dict[str, float] = field(default_factory=dict)
    _inverse_long: list[np.ndarray] = field(default_factory=list, repr=False)

    @property
    def images(self) -> int:
        """Images measured."""
        return sum(self.image_sizes.values())

    def percentile(self, name: str, q: float, *, resized: bool = True) -> float:
        """The ``q``-th percentile object size of class ``name`` (NaN when it has no objects)."""
        values = (self.resized if resized else self.sizes).get(name) or []
        return float(np.percentile(values, q)) if values else float("nan")

    def _present(self) -> list[str]:
        return [c for c in self.classes if self.sizes.get(c)]

    def smallest_class(self) -> str | None:
        """The class whose 10th-percentile object (at the recipe's scale) is smallest."""
        present = self._present()
        return min(present, key=lambda c: self.percentile(c, 10)) if present else None

    def largest_class(self) -> str | None:
        """The class whose 95th-percentile object (at the recipe's scale) is largest."""
        present = self._present()
        return max(present, key=lambda c: self.percentile(c, 95)) if present else None

    def suggested_image_side(self) -> int | None:
        """Long side (multiple of 32) at which the smallest class keeps >= 8 px (p10) and >= 16 px (median).

        Under ``letterbox`` an object's size after the resize is its size in the file
        times ``side / long side of its image``, so the side needed follows from the
        objects' sizes relative to their image's long side.
        """
        small = self.smallest_class()
        if small is None:
            return None
        parts = self._relative(small)
        relative = np.concatenate(parts) if parts else np.zeros(0)
        if not len(relative):
            return None
        need = max(MIN_OBJECT_PX / np.percentile(relative, 10), 2 * MIN_OBJECT_PX / np.percentile(relative, 50))
        return _round32(need)

    def _relative(self, name: str) -> list[np.ndarray]:
        index = self.classes.index(name)
        return [arr[arr[:, 0] == index, 1] for arr in self._inverse_long if len(arr)]

    def suggested_image_size(self) -> tuple[int, int] | None:
        """``(height, width)`` keeping the recipe's aspect, its long side :meth:`suggested_image_side`."""
        side = self.suggested_image_side()
        if side is None:
            return None
        h, w = self.image_size
        return (side, _round32(side * w / h)) if h > w else (_round32(side * h / w), side) if w > h else (side, side)

    def suggested_crop(self, image_size: tuple[int, int] | None = None) -> int | None:
        """Crop side: ~3x the largest class's 95th-percentile object, in [64, image side], a multiple of 32."""
        large = self.largest_class()
        if large is None:
            return None
        hw = image_size or self.image_size
        factor = max(hw) / max(self.image_size)  # sizes were measured at the recipe's image_size
        crop = _round32(max(64.0, 3 * self.percentile(large, 95) * factor))
        return min(crop, min(hw))

    def suggested_anchors(
        self, levels: int, image_size: tuple[int, int] | None = None, *, octaves: int = 1
    ) -> list[list[int]] | None:
        """Anchor sizes per pyramid map: a power of two at or below the 5th-percentile object, doubling per map.

        Args:
            levels: Maps of the pyramid (Faster R-CNN: its levels plus the pooled one; RetinaNet: 5).
            image_size: The input the sizes are for (default the recipe's).
            octaves: Sizes per map, spaced by ``2**(1/octaves)`` (RetinaNet uses 3).
        """
        every = [s for c in self._present() for s in self.resized[c]]
        if not every:
            return None
        factor = max(image_size or self.image_size) / max(self.image_size)
        smallest = max(MIN_OBJECT_PX, float(np.percentile(every, 5)) * factor)
        base = 2 ** math.floor(math.log2(smallest))
        return [[int(base * 2**i * 2 ** (j / octaves)) for j in range(octaves)] for i in range(levels)]

    def report(self, *, anchor_levels: int = 0, octaves: int = 1) -> str:
        """The statistics and suggestions as text (what ``resbackbone data stats`` prints).

        Args:
            anchor_levels: Pyramid maps of the recipe's detector (0: no anchor suggestion).
            octaves: Anchor sizes per map.
        """
        h, w = self.image_size
        lines = [
            f"{self.split} split: {self.images} images, {self.task}, {len(self.classes)} classes; "
            f"recipe input {h}x{w} ({self.resize})",
            "image sizes (height x width): "
            + ", ".join(f"{a}x{b} x{n}" for (a, b), n in self.image_sizes.most_common(8))
            + (f", ... ({len(self.image_sizes)} sizes)" if len(self.image_sizes) > 8 else ""),
        ]
        if self.scales:
            lines.append(
                f"resize to the model: x{np.median(self.scales):.2f} median (x{min(self.scales):.2f} to "
                f"x{max(self.scales):.2f})"
            )
        what = "boxes" if self.task == "detection" else "components"
        header = f"{'class':<16}{what:>11}{'images':>8}   {'size in file p10/p50/p90':>26}   {'at recipe scale':>20}"
        lines += ["", header]
        for c in self.classes:
            n = len(self.sizes[c])
            at_file = "/".join(f"{self.percentile(c, q, resized=False):.0f}" for q in (10, 50, 90)) if n else "-"
            at_model = "/".join(f"{self.percentile(c, q):.1f}" for q in (10, 50, 90)) if n else "-"
            share = f"  ({100 * self.pixels[c]:.1f}% of pixels)" if c in self.pixels else ""
            lines.append(f"{c:<16}{n:>11}{self.images_with[c]:>8}   {at_file:>26}   {at_model:>20}{share}")
        lines.append("sizes are the square root of the object's area, in pixels")
        small = self.smallest_class()
        if small is None:
            return "\n".join([*lines, "", "no objects found: nothing to suggest"])
        p10, p50 = self.percentile(small, 10), self.percentile(small, 50)
        side = self.suggested_image_side() or max(self.image_size)
        lines += [
            "",
            f"smallest class {small!r}: p10 {p10:.1f} px, median {p50:.1f} px at the recipe's scale "
            f"(wanted: p10 >= {MIN_OBJECT_PX}, median >= {2 * MIN_OBJECT_PX}; needs a long side of {side})",
        ]
        size = self.image_size
        if side > max(self.image_size):
            size = self.suggested_image_size() or size
            lines += ["suggested (add to the recipe, or --set them):", f"  data.image_size: [{size[0]}, {size[1]}]"]
        else:
            lines += [f"data.image_size [{h}, {w}] keeps the smallest class large enough; suggested:"]
        crop = self.suggested_crop(size)
        if crop is not None and crop < min(size):
            lines.append(f"  data.crop_size: {crop}   # ~3x the {self.largest_class()!r} p95 object")
        else:
            lines.append(f"  data.crop_size: unset   # the {self.largest_class()!r} objects need the whole input")
        anchors = self.suggested_anchors(anchor_levels, size, octaves=octaves) if anchor_levels else None
        if anchors:
            lines.append(f"  model.anchor_sizes: {anchors}")
        return "\n".join(lines)


def dataset_stats(
    cfg: DataConfig, *, task: str, split: str = "train", base_dir: str | Path | None = None, progress: bool = False
) -> DatasetStats:
    """Measure one split of a dataset at the recipe's scale.

    Args:
        cfg: The recipe's data section (format, root, classes, ``image_size``, ``resize``).
        task: ``"detection"`` or ``"segmentation"``.
        split: The split to measure.
        base_dir: Folder a relative ``root`` resolves against.
        progress: Show a progress bar.

    Returns:
        The :class:`DatasetStats`.

    Raises:
        ValueError: The split is missing, or the task does not fit the format.
        DataError: Problems in the dataset files.

    Example:
        >>> stats = dataset_stats(recipe.data, task="detection")
        >>> stats.percentile("Platelets", 10), stats.suggested_image_size()
        (13.2, (320, 416))
    """
    import cv2
    import torch

    from .datasets import build_dataset

    dataset = build_dataset(
        cfg, split, task=task, train=False, mean=(0.0,) * 3, std=(1.0,) * 3, base_dir=base_dir, native=True
    )
    names = list(dataset.classes)
    classes = names if task == "detection" else names[1:]
    stats = DatasetStats(task, split, classes, cfg.size_hw, cfg.resize)
    for name in classes:
        stats.sizes[name], stats.resized[name] = [], []
    pixel_counts = np.zeros(len(names), np.int64)
    items: Any = range(len(dataset))
    if progress:
        from tqdm.auto import tqdm

        items = tqdm(items, desc=f"stats {split}", unit="img", leave=False)
    for index in items:
        image, target = dataset[index]
        h, w = (int(v) for v in target["orig_size"])
        sy, sx = image.shape[-2] / h, image.shape[-1] / w
        scale = math.sqrt(sx * sy)
        stats.image_sizes[(h, w)] += 1
        stats.scales.append(scale)
        found: list[tuple[int, float]] = []  # (class index, size)
        if task == "detection":
            boxes = target["boxes"].double()
            wh = (boxes[:, 2:] - boxes[:, :2]).clamp(min=0)
            for label, size in zip(target["labels"].tolist(), torch.sqrt(wh[:, 0] * wh[:, 1]).tolist()):
                found.append((label - 1, size))
        else:
            mask = target["mask"].numpy()
            pixel_counts += np.bincount(mask[mask < len(names)].ravel(), minlength=len(names))[: len(names)]
            for k in range(1, len(names)):
                count, _, cc, _ = cv2.connectedComponentsWithStats((mask == k).astype(np.uint8), connectivity=8)
                found += [(k - 1, math.sqrt(float(a))) for a in cc[1:count, cv2.CC_STAT_AREA]]
        for k, size in found:
            stats.sizes[classes[k]].append(size)
            stats.resized[classes[k]].append(size * scale)
        for k in {k for k, _ in found}:
            stats.images_with[classes[k]] += 1
        long = max(h, w) if cfg.resize == "letterbox" else math.sqrt(h * w)
        stats._inverse_long.append(np.array([(k, size / long) for k, size in found]).reshape(-1, 2))
    if task == "segmentation" and pixel_counts.sum():
        stats.pixels = {n: float(c / pixel_counts.sum()) for n, c in zip(names, pixel_counts)}
    return stats
