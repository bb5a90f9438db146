"""Unlabeled images: found in folders or in the splits of fine-tuning recipes, checked, read and cut into views.

Every file is looked at before training starts (its header only): files that
are not images, or that cannot be read, are skipped and counted by reason; a
source that yields no image is an error naming it, with the counts; images
whose channels ``model.in_chans`` cannot take are an error naming an example
and the fix. Images are read as the fine-tuning loaders read them
(:func:`~resbackbone.data.read_image`: 8/16-bit, grayscale, RGBA, DICOM with the
``[medical]`` extra), resized so their longer side is ``pretrain.views.resize``,
and cut into the method's views.
"""

from __future__ import annotations

import warnings
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ..data import IMAGE_EXTENSIONS, DataError, DataWarning, build_dataset, probe_image, read_image
from ..data.images import to_channels
from ..recipes import load_recipe
from .config import ImageSource
from .views import MultiViews

__all__ = ["ImageSet", "UnlabeledImages", "collect_images"]


@dataclass
class ImageSet:
    """The images pretraining reads, where they came from and what was skipped.

    Attributes:
        paths: Image files, in source order, each once.
        windows: The DICOM window of each image's source (``data.window`` of a recipe), or ``None``.
        percentiles: The contrast stretch of each image's source (``data.intensity_percentiles``), or ``None``.
        sources: Per source: ``{"source": description, "images": count}``.
        skipped: Reason → files skipped for it.
        channels: Channels (as decoded) → number of images.
    """

    paths: list[Path] = field(default_factory=list)
    windows: list[tuple[float, float] | None] = field(default_factory=list)
    percentiles: list[tuple[float, float] | None] = field(default_factory=list)
    sources: list[dict[str, Any]] = field(default_factory=list)
    skipped: dict[str, list[Path]] = field(default_factory=lambda: defaultdict(list))
    channels: Counter[int] = field(default_factory=Counter)

    def skipped_summary(self, files: dict[str, list[Path]] | None = None) -> str:
        """``"3 files skipped: 2 not image files by name (a.txt, b.csv); 1 file is empty (0 bytes) (c.png)"``."""
        files = self.skipped if files is None else files
        total = sum(map(len, files.values()))
        parts = [
            f"{len(paths)} {reason} ({', '.join(p.name for p in paths[:3])}{', …' if len(paths) > 3 else ''})"
            for reason, paths in sorted(files.items(), key=lambda item: -len(item[1]))
        ]
        return f"{total} file{'s' if total != 1 else ''} skipped: " + "; ".join(parts)


def _folder_files(where: str, folder: Path) -> list[Path]:
    if not folder.is_dir():
        what = "is a file, not a folder" if folder.exists() else "does not exist"
        raise ValueError(
            f"{where}: folder {folder} {what}; check the path (relative paths resolve against the recipe's folder)."
        )
    files = sorted(
        p
        for p in folder.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )
    if not files:
        raise ValueError(f"{where}: folder {folder} is empty; put images in it or remove it from pretrain.images.")
    return files


def _recipe_files(where: str, source: ImageSource, in_chans: int) -> tuple[list[Path], tuple[float, float] | None]:
    recipe = load_recipe(source.recipe, data_root=source.root, overrides=source.overrides)  # type: ignore[arg-type]
    zeros, ones = (0.0,) * in_chans, (1.0,) * in_chans
    try:
        dataset = build_dataset(
            recipe.data, source.split, task=recipe.task, train=False, mean=zeros, std=ones, in_chans=in_chans
        )
    except ValueError as exc:
        raise ValueError(f"{where}: {source.describe()}: {exc}") from exc
    return list(dataset.paths), recipe.data.window, recipe.data.intensity_percentiles


def collect_images(sources: list[ImageSource], *, in_chans: int) -> ImageSet:
    """Find, check and list the images of ``pretrain.images``.

    Args:
        sources: The recipe's image sources.
        in_chans: The backbone's input channels.

    Returns:
        The :class:`ImageSet`; skipped files are also warned about (:class:`~resbackbone.data.DataWarning`).

    Raises:
        ValueError: A folder is missing or empty, a source yields no readable image
            (the message counts the skipped files by reason), or ``in_chans``
            cannot take the images' channels.
    """
    found = ImageSet()
    seen: set[Path] = set()
    examples: dict[int, Path] = {}
    for i, source in enumerate(sources):
        where = f"pretrain.images[{i}]"
        skipped: dict[str, list[Path]] = defaultdict(list)
        if source.folder is not None:
            files, window, percentiles = _folder_files(where, source.folder), None, None
        else:
            files, window, percentiles = _recipe_files(where, source, in_chans)
        count = 0
        for path in files:
            if path.suffix.lower() not in IMAGE_EXTENSIONS:
                skipped["not image files by name"].append(path)
                continue
            try:
                channels, _ = probe_image(path)
            except DataError as exc:
                skipped[str(exc).removeprefix(f"{path}: ")].append(path)
                continue
            key = path.resolve()
            if key in seen:
                continue
            seen.add(key)
            found.paths.append(path)
            found.windows.append(window)
            found.percentiles.append(percentiles)
            found.channels[channels] += 1
            examples.setdefault(channels, path)
            count += 1
        for reason, paths in skipped.items():
            found.skipped[reason].extend(paths)
        if count == 0 and skipped:
            raise ValueError(
                f"{where}: {source.describe()} has no readable image: {found.skipped_summary(skipped)}. "
                f"Image files end in {', '.join(IMAGE_EXTENSIONS)}; fix or remove the files, or the source."
            )
        if skipped:
            warnings.warn(f"{where}: {source.describe()}: {found.skipped_summary(skipped)}.", DataWarning, stacklevel=2)
        found.sources.append({"source": source.describe(), "images": count})
    if not found.paths:
        listed = "; ".join(f"{s['source']}: {s['images']} new" for s in found.sources) or "no source"
        raise ValueError(
            f"pretrain.images yields no image ({listed}): each source is empty or lists only images an earlier "
            "one did. Point pretrain.images at folders or splits that hold images."
        )
    _check_channels(found.channels, examples, in_chans)
    return found


def _check_channels(channels: Counter[int], examples: dict[int, Path], in_chans: int) -> None:
    for c, n in sorted(channels.items()):
        try:
            to_channels(np.zeros((1, 1, c), np.uint8), in_chans, examples[c])
        except DataError:
            fit = 1 if c in (1, 2) else 3 if c in (3, 4) else c
            raise ValueError(
                f"model.in_chans={in_chans} does not fit the images: {n} image{'s have' if n > 1 else ' has'} {c} "
                f"channels (e.g. {examples[c]}), which cannot be brought to {in_chans}. Set model.in_chans: {fit}, "
                "or pretrain on images of the kind you fine-tune on."
            ) from None
    gray = channels.get(1, 0) + channels.get(2, 0)
    total = sum(channels.values())
    if in_chans == 3 and gray == total:
        warnings.warn(
            f"All {total} pretraining images are grayscale; they are repeated to 3 channels for model.in_chans=3. "
            "model.in_chans: 1 pretrains a 1-channel backbone for the same images at less cost.",
            DataWarning,
            stacklevel=3,
        )
    elif in_chans == 1 and total - gray:
        warnings.warn(
            f"{total - gray} of {total} pretraining images are colour; they are converted to luminance for "
            "model.in_chans=1.",
            DataWarning,
            stacklevel=3,
        )


def _resize_longer(image: np.ndarray, side: int | None) -> np.ndarray:
    if side is None or max(image.shape[:2]) == side:
        return image
    import cv2

    h, w = image.shape[:2]
    scale = side / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    out = cv2.resize(image, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    return out[..., None] if out.ndim == 2 else out


class UnlabeledImages(Dataset):
    """Items ``(views, index)``: the method's views of an image, as normalised tensors.

    Args:
        images: The :class:`ImageSet` to read.
        views: The views to cut (:class:`~resbackbone.pretrain.views.MultiViews`).
        in_chans: Channels images are read with.
        resize: Longer side images are resized to before the views are cut (``None``: as stored).
        cache: Read and resize every image once, here, and keep them in memory.
    """

    def __init__(
        self, images: ImageSet, views: MultiViews, *, in_chans: int, resize: int | None, cache: bool = False
    ) -> None:
        self.images = images
        self.views = views
        self.in_chans = in_chans
        self.resize = resize
        self.cache: list[np.ndarray] | None = [self._read(i) for i in range(len(self))] if cache else None

    def __len__(self) -> int:
        return len(self.images.paths)

    @property
    def paths(self) -> list[Path]:
        """The image files, in order."""
        return self.images.paths

    def _read(self, index: int) -> np.ndarray:
        image = read_image(
            self.images.paths[index],
            in_chans=self.in_chans,
            window=self.images.windows[index],
            percentiles=self.images.percentiles[index],
        )
        return _resize_longer(image, self.resize)

    def image(self, index: int) -> np.ndarray:
        """The resized image ``(H, W, in_chans)``, uint8 or float32 in [0, 1]."""
        return self.cache[index] if self.cache is not None else self._read(index)

    def __getitem__(self, index: int) -> tuple[list[torch.Tensor], int]:
        return self.views(self.image(index)), index

    def plain(self, index: int) -> torch.Tensor:
        """The un-augmented centre view of an image (for the collapse check)."""
        return self.views.plain(self.image(index))
