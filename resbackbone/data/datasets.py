"""Torch datasets for detection and segmentation, and :func:`build_dataset`.

Items:

* detection: ``(image, target)``; ``image`` is ``float32 [C, H, W]``
  normalised with the backbone's mean/std (applied to 0–1 pixels); ``target``
  has ``boxes`` (``float32 [N, 4]`` xyxy pixels of the transformed image),
  ``labels`` (``int64 [N]``, 1..K, 0 being torchvision's background),
  ``image_id`` (int), ``orig_size`` (``(h, w)`` of the file) and ``path``.
* segmentation: ``(image, mask)`` with ``mask`` ``int64 [H, W]`` in 0..K-1
  and ``ignore_index`` for ignored or padded pixels.

With ``native=True`` (evaluation at the file's resolution) the image is only
resized to the model's scale (no padding, so sizes differ between items) and
the targets stay in the file's pixels: detection boxes as annotated (clipped),
and for segmentation a target dict ``{"mask", "orig_size", "path"}`` with the
mask at the file's size. Batch such items with :func:`detection_collate`.

Training augmentations draw their randomness from torch's generator (one seed
per item), so ``torch.manual_seed`` makes them reproducible; the training
loader seeds it for every item (:class:`~resbackbone.engine.loaders.SeededItems`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from .config import DataConfig
from .formats import FORMAT_SPECS
from .formats.masks import build_class_map, ignore_code, record_mask
from .formats.records import DetectionRecord, SegmentationRecord
from .images import read_image
from .index import class_names, index_split, prepare, resolve_split
from .problems import DataError
from .transforms import build_transforms, reseed

__all__ = ["DetectionDataset", "SegmentationDataset", "build_dataset", "detection_collate", "image_to_tensor"]


def image_to_tensor(image: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Normalise an ``(H, W, C)`` image (uint8, or float in [0, 1]) into a ``float32 [C, H, W]`` tensor.

    Args:
        image: As returned by :func:`read_image` and the transforms.
        mean: Per-channel mean of 0–1 pixels.
        std: Per-channel standard deviation.

    Example:
        >>> image_to_tensor(np.zeros((4, 6, 3), np.uint8), (0.5,) * 3, (0.5,) * 3).shape
        torch.Size([3, 4, 6])
    """
    # numpy: far cheaper than small broadcast ops in torch on a busy CPU
    scale = np.float32(1 / 255) if image.dtype == np.uint8 else np.float32(1)
    m, s = np.asarray(mean, dtype=np.float32), np.asarray(std, dtype=np.float32)
    arr = (image.astype(np.float32) * scale - m) / s
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))


class _Base(Dataset):
    def __init__(
        self,
        records: list[Any],
        *,
        transform: Any,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        in_chans: int,
        window: tuple[float, float] | None,
        percentiles: tuple[float, float] | None,
        train: bool,
        classes: list[str],
        native: bool = False,
    ) -> None:
        self.records = records
        self.transform = transform
        self.mean = np.asarray(mean, dtype=np.float32)
        self.std = np.asarray(std, dtype=np.float32)
        self.in_chans = in_chans
        self.window = window
        self.percentiles = percentiles
        self.train = train
        self.classes = classes
        self.native = native
        self.subset: Any = None  # the TrainSubset when a label fraction chose the records (data.subsets)

    def __len__(self) -> int:
        return len(self.records)

    @property
    def paths(self) -> list[Path]:
        """Image file of every item, in order."""
        return [r.image for r in self.records]

    def _reseed(self) -> None:
        if self.train:
            reseed(self.transform, int(torch.randint(0, 2**31 - 1, (1,)).item()))

    def _read(self, path: Path) -> np.ndarray:
        return read_image(path, in_chans=self.in_chans, window=self.window, percentiles=self.percentiles)

    def _to_tensor(self, image: np.ndarray) -> torch.Tensor:
        return image_to_tensor(image, self.mean, self.std)


class DetectionDataset(_Base):
    """Detection samples; see the module docstring for the item format.

    Attributes:
        records: One :class:`~resbackbone.data.formats.records.DetectionRecord` per image.
        classes: Object class names; label ``i`` is ``classes[i - 1]``.
    """

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, Any]]:
        rec: DetectionRecord = self.records[index]
        image = self._read(rec.image)
        h, w = image.shape[:2]
        boxes = rec.boxes.astype(np.float64)
        if rec.normalized:
            boxes = boxes * np.array([w, h, w, h], dtype=np.float64)
        boxes = np.clip(boxes, 0, [w, h, w, h])
        keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        self._reseed()
        if self.native:  # boxes stay in the file's pixels; the image goes to the model's scale
            out = {"image": self.transform(image=image, bboxes=np.zeros((0, 4)), labels=[])["image"]}
            out |= {"bboxes": boxes[keep], "labels": rec.labels[keep]}
        else:
            out = self.transform(image=image, bboxes=boxes[keep], labels=rec.labels[keep])
        target = {
            "boxes": torch.as_tensor(np.asarray(out["bboxes"], dtype=np.float32).reshape(-1, 4)),
            "labels": torch.as_tensor(np.asarray(out["labels"], dtype=np.int64).reshape(-1)),
            "image_id": int(rec.image_id),
            "orig_size": (h, w),
            "path": str(rec.image),
        }
        return self._to_tensor(out["image"]), target


class SegmentationDataset(_Base):
    """Segmentation samples ``(image, mask)``; see the module docstring.

    Attributes:
        records: One :class:`~resbackbone.data.formats.records.SegmentationRecord` per image.
        classes: Mask class names, background first.
        ignore_index: Value of ignored pixels in the returned masks.
    """

    def __init__(self, records: list[Any], *, lut: np.ndarray | None, ignore_index: int, **kwargs: Any) -> None:
        super().__init__(records, **kwargs)
        self.lut = lut
        self.ignore_index = ignore_index
        self.ignore_code = ignore_code(len(self.classes))

    def load_mask(self, rec: SegmentationRecord, image_hw: tuple[int, int]) -> np.ndarray:
        """The class-index mask of a record at its file resolution (ignore code for ignored pixels).

        Raises:
            DataError: Unreadable mask, size differing from the image, or values outside the class map.
        """
        mask = record_mask(rec, self.lut, len(self.classes))
        where = str(rec.mask) if rec.mask is not None else f"annotation size for {rec.image}"
        if mask.shape != image_hw:
            raise DataError(
                f"{where}: mask is {mask.shape[1]}x{mask.shape[0]} but its image {rec.image.name} is "
                f"{image_hw[1]}x{image_hw[0]} (width x height); masks must match their image",
                rec.mask or rec.image,
            )
        return mask

    def _labels(self, mask: np.ndarray) -> torch.Tensor:
        target = np.asarray(mask).astype(np.int64)
        if self.ignore_code != self.ignore_index:
            target[target == self.ignore_code] = self.ignore_index
        return torch.from_numpy(target)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, Any]:
        rec: SegmentationRecord = self.records[index]
        image = self._read(rec.image)
        mask = self.load_mask(rec, image.shape[:2])
        self._reseed()
        if self.native:
            scaled = self.transform(image=image)["image"]
            target = {"mask": self._labels(mask), "orig_size": mask.shape[:2], "path": str(rec.image)}
            return self._to_tensor(scaled), target
        out = self.transform(image=image, mask=mask)
        return self._to_tensor(out["image"]), self._labels(out["mask"])


def detection_collate(batch: list[tuple[torch.Tensor, dict[str, Any]]]) -> tuple[list[torch.Tensor], list[dict]]:
    """Collate detection items into ``(images, targets)`` lists, as torchvision detectors take them.

    Example:
        >>> loader = DataLoader(ds, batch_size=4, collate_fn=detection_collate)
        >>> images, targets = next(iter(loader))  # 4 tensors [3, H, W], 4 dicts
    """
    images = [item[0] for item in batch]
    targets = [item[1] for item in batch]
    return images, targets


def build_dataset(
    cfg: DataConfig,
    split: str,
    *,
    task: str,
    train: bool,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    in_chans: int = 3,
    base_dir: str | Path | None = None,
    native: bool = False,
) -> DetectionDataset | SegmentationDataset:
    """Index a split and wrap it in a dataset with its transforms.

    Annotation problems are gathered for the whole split and raised together;
    repairs (clipped boxes, dropped degenerate boxes) are warned about once
    with their count (:class:`DataWarning`). Image-level problems (unreadable
    file, mask of the wrong size) raise :class:`DataError` naming the file
    when the item is loaded; ``check_dataset`` finds them all up front.

    Args:
        cfg: The recipe's data section.
        split: ``"train"``, ``"val"`` or ``"test"``; with ``cfg.train_on_val`` the training set
            (``"train"`` with ``train=True``) holds the val images too.
        task: ``"detection"`` or ``"segmentation"``.
        train: Training transforms (augmentations, random crop) or deterministic ones.
        mean: Per-channel mean of 0–1 pixels (the backbone's ``mean``).
        std: Per-channel std (the backbone's ``std``).
        in_chans: Channels the backbone expects.
        base_dir: Folder a relative ``root`` resolves against (the recipe's folder).
        native: Evaluation at the file's resolution: images resized to the model's
            scale without padding, targets left in the file's pixels (module docs).

    Returns:
        A :class:`DetectionDataset` or :class:`SegmentationDataset`.

    Raises:
        ValueError: Task and format do not fit, mean/std lengths differ from
            ``in_chans``, the split is missing, ``ignore_index`` is a class, or ``native`` with ``train``.
        DataError: Problems in the dataset files (all listed).

    Example:
        >>> ds = build_dataset(DataConfig(format="shapes"), "train", task="detection", train=True,
        ...                    mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
        >>> image, target = ds[0]  # [3, 128, 128], target["boxes"]: [N, 4]
    """
    if len(mean) != in_chans or len(std) != in_chans:
        raise ValueError(f"mean {tuple(mean)} and std {tuple(std)} must have in_chans={in_chans} values each")
    if native and train:
        raise ValueError("build_dataset(native=True) is for evaluation; pass train=False")
    if any(s <= 0 for s in std):
        raise ValueError(f"std {tuple(std)} must be positive")
    prepared, root = prepare(cfg, task, base_dir)
    records, reporter = index_split(prepared, split, root, task=task, mode="load")
    reporter.finish()
    if split == "train" and train and cfg.train_on_val:  # the training set; the split itself stays as listed
        if resolve_split(prepared, "val", root) is None:
            raise ValueError(
                f"data.train_on_val is true but {root} has no val split to add to training; set data.val to it, "
                "or data.train_on_val: false"
            )
        val_records, reporter = index_split(prepared, "val", root, task=task, mode="load")
        reporter.finish()
        records = [*records, *val_records]
    names = class_names(prepared, task, base_dir)
    common: dict[str, Any] = {
        "mean": tuple(mean),
        "std": tuple(std),
        "in_chans": in_chans,
        "window": cfg.window,
        "percentiles": cfg.intensity_percentiles,
        "train": train,
        "classes": names,
        "native": native,
    }
    if task == "detection":
        transform = build_transforms(prepared, task=task, train=train, pad=not native)
        return DetectionDataset(records, transform=transform, **common)
    if 0 <= cfg.ignore_index < len(names):
        raise ValueError(
            f"data.ignore_index {cfg.ignore_index} is the index of class {names[cfg.ignore_index]!r}; "
            "pick a value outside 0..K-1 (e.g. 255)"
        )
    code = ignore_code(len(names))
    transform = build_transforms(prepared, task=task, train=train, mask_fill=code, pad=not native)
    lut = build_class_map(prepared, names) if FORMAT_SPECS[prepared.format].mask_files else None
    return SegmentationDataset(records, lut=lut, ignore_index=cfg.ignore_index, transform=transform, **common)
