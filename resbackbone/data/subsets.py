"""Label fractions: train on a seeded, nested subset of the training images (``data.train_fraction``/``train_count``).

A label-efficiency study fine-tunes on 10%, 25% and 100% of the labels. The
subsets come from one seeded order of the split's images (sorted by path, then
shuffled with ``data.subset_seed``), each taking its first ``k`` images, so the
10% subset lies inside the 25% one and every run with the same seed labels the
same images, whatever ``run.seed`` is. A subset in which a class has no example
is refused, naming the class and the fix.

Example:
    >>> subset_indices([f"{i}.png" for i in range(10)], fraction=0.3, seed=0)
    [2, 4, 6]
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .config import DataConfig
from .datasets import SegmentationDataset
from .formats.masks import record_mask

__all__ = ["TrainSubset", "present_classes", "subset_indices", "take_train_subset"]


@dataclass(frozen=True)
class TrainSubset:
    """Which training images a run labels.

    Attributes:
        images: Images kept.
        of: Images in the training split.
        fraction: ``data.train_fraction``, or ``None`` when a count was given.
        count: ``data.train_count``, or ``None`` when a fraction was given.
        seed: ``data.subset_seed``.
        paths: The image files kept, in split order.
    """

    images: int
    of: int
    fraction: float | None
    count: int | None
    seed: int
    paths: tuple[str, ...]

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready description (what a run's ``summary.json`` records)."""
        return {
            "images": self.images,
            "of": self.of,
            "fraction": self.fraction,
            "count": self.count,
            "seed": self.seed,
            "paths": list(self.paths),
        }

    def describe(self) -> str:
        """``"21 of 205 training images (data.train_fraction 0.1, subset_seed 0)"``."""
        given = (
            f"data.train_fraction {self.fraction:g}" if self.fraction is not None else f"data.train_count {self.count}"
        )
        return f"{self.images} of {self.of} training images ({given}, subset_seed {self.seed})"


def subset_indices(
    keys: Sequence[str], *, fraction: float | None = None, count: int | None = None, seed: int = 0
) -> list[int]:
    """Positions of the images a fraction (or count) of ``keys`` keeps, in their original order.

    The order the subset is taken from depends on the keys (image paths) and
    ``seed`` only, not on the order they were listed in: ``fraction`` 0.1 keeps
    a subset of what 0.25 keeps.

    Args:
        keys: One key per image (its path).
        fraction: Fraction to keep, rounded up to whole images.
        count: Number of images to keep (at most ``len(keys)``).
        seed: Seed of the order.

    Raises:
        ValueError: Neither or both of ``fraction`` and ``count`` given, or a count
            larger than the split.
    """
    n = len(keys)
    if (fraction is None) == (count is None):
        raise ValueError("give data.train_fraction or data.train_count (one of them)")
    if count is not None and count > n:
        raise ValueError(
            f"data.train_count={count} is more than the {n} images of the training split; "
            f"use at most {n}, or data.train_fraction"
        )
    k = count if count is not None else max(1, math.ceil(float(fraction) * n - 1e-9))  # type: ignore[arg-type]
    by_key = sorted(range(n), key=lambda i: keys[i])
    order = np.random.default_rng(seed).permutation(n)
    return sorted(by_key[j] for j in order[:k])


def present_classes(dataset: Any) -> set[int]:
    """Class indices that occur in a detection or segmentation dataset's labels.

    Detection: labels 1..K of the boxes. Segmentation: mask classes 0..K-1 (every
    mask is read, at its file's resolution).
    """
    if isinstance(dataset, SegmentationDataset):  # read the masks
        k = len(dataset.classes)
        found: set[int] = set()
        for record in dataset.records:
            values = np.unique(record_mask(record, dataset.lut, k))
            found.update(int(v) for v in values if v < k)
        return found
    return {int(label) for record in dataset.records for label in record.labels}


def _missing_names(dataset: Any) -> list[str]:
    present = present_classes(dataset)
    if isinstance(dataset, SegmentationDataset):  # class 0 is the background
        return [name for i, name in enumerate(dataset.classes) if i > 0 and i not in present]
    return [name for i, name in enumerate(dataset.classes, start=1) if i not in present]


def take_train_subset(dataset: Any, cfg: DataConfig) -> Any:
    """The training split restricted to ``cfg.train_fraction`` (or ``train_count``) of its images.

    Returns ``dataset`` itself when neither is set; otherwise a shallow copy
    holding the kept records, with :class:`TrainSubset` as its ``subset`` attribute.

    Raises:
        ValueError: The subset has no example of a class (the message names the
            class, the subset and the fix), or the count exceeds the split.
    """
    if cfg.train_fraction is None and cfg.train_count is None:
        return dataset
    records = dataset.records
    keep = subset_indices(
        [str(r.image) for r in records], fraction=cfg.train_fraction, count=cfg.train_count, seed=cfg.subset_seed
    )
    subset = copy.copy(dataset)
    subset.records = [records[i] for i in keep]
    subset.subset = TrainSubset(
        images=len(keep),
        of=len(records),
        fraction=cfg.train_fraction,
        count=cfg.train_count,
        seed=cfg.subset_seed,
        paths=tuple(str(records[i].image) for i in keep),
    )
    missing = _missing_names(subset)
    if missing:
        names = ", ".join(repr(n) for n in missing)
        raise ValueError(
            f"{subset.subset.describe()}: none of them has class {names}. A model cannot learn a class it never "
            "sees; raise data.train_fraction (or data.train_count), or pick another data.subset_seed."
        )
    return subset
