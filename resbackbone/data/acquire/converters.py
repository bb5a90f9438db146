"""Turn extracted dataset archives into the folder layouts our loaders read.

Each function takes the folder an archive was extracted into (``src``) and a
folder to create (``out``); it moves images rather than copying them and
writes masks, annotations and split lists. Splits that a dataset does not
publish are made by :func:`split_ids`: deterministic, the same on every
machine and Python version.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from ..images import IMAGE_EXTENSIONS

__all__ = [
    "bccd_layout",
    "coco2017_layout",
    "dsb2018_layout",
    "find_folder",
    "kvasir_seg_layout",
    "penn_fudan_layout",
    "split_ids",
    "voc2012_layout",
]


def split_ids(ids: Iterable[str], fractions: tuple[float, float] = (0.1, 0.1)) -> dict[str, list[str]]:
    """Deterministic train/val/test split of image ids.

    Ids are ordered by the sha1 of their name; the first ``fractions[1]`` of
    them (rounded, at least one when there are 3 or more ids) form ``test``,
    the next ``fractions[0]`` form ``val`` and the rest ``train``.

    Args:
        ids: Image ids (unique).
        fractions: ``(val, test)`` fractions of the whole.

    Returns:
        ``{"train": [...], "val": [...], "test": [...]}``, each sorted.

    Example:
        >>> {k: len(v) for k, v in split_ids(str(i) for i in range(10)).items()}
        {'train': 8, 'val': 1, 'test': 1}
    """
    order = sorted(set(ids), key=lambda i: hashlib.sha1(i.encode("utf-8")).hexdigest())
    n = len(order)
    n_val, n_test = (round(n * f) for f in fractions)
    if n >= 3:
        n_val, n_test = max(1, n_val), max(1, n_test)
    test, val, train = order[:n_test], order[n_test : n_test + n_val], order[n_test + n_val :]
    return {"train": sorted(train), "val": sorted(val), "test": sorted(test)}


def _write_splits(out: Path, splits: dict[str, list[str]]) -> None:
    for split, ids in splits.items():
        (out / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids), encoding="utf-8")


def find_folder(src: Path, required: tuple[str, ...], *, what: str, max_depth: int = 3) -> Path:
    """The shallowest folder under ``src`` (itself included) that contains every name in ``required``.

    Raises:
        ValueError: None found; the message lists what the archive holds.
    """
    level = [src]
    for _ in range(max_depth + 1):
        for folder in level:
            if all((folder / name).exists() for name in required):
                return folder
        level = sorted(p for folder in level for p in folder.iterdir() if p.is_dir() and p.name != "__MACOSX")
    found = sorted(p.name for p in src.iterdir())[:10]
    raise ValueError(
        f"The {what} archive has no folder holding {list(required)} (its top level holds {found}). "
        "The publisher may have changed the layout; lay it out by hand as docs/datasets.md describes."
    )


def _images(folder: Path) -> dict[str, Path]:
    return {
        p.stem: p
        for p in sorted(folder.iterdir())
        if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith("._")  # macOS metadata
    }


def _save_png(path: Path, array: np.ndarray) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def _read(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        arr = np.asarray(im.convert("L") if im.mode in ("RGB", "RGBA", "LA") else im)
    return arr[..., 0] if arr.ndim == 3 else arr


def _move(path: Path, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    shutil.move(path, folder / path.name)


def _move_folder(folder: Path, out: Path) -> None:
    os.replace(folder, out)  # same file system: a rename, however large the dataset


def kvasir_seg_layout(src: Path, out: Path) -> None:
    """Kvasir-SEG ``images/*.jpg`` + ``masks/*.jpg`` → ``mask_folder`` with PNG masks (0/255) and 80/10/10 splits.

    The published masks are JPEGs whose compression blurs the 0/255 edges;
    they are thresholded at 128.
    """
    base = find_folder(src, ("images", "masks"), what="Kvasir-SEG")
    images, masks = _images(base / "images"), _images(base / "masks")
    missing = sorted(set(images) - set(masks))
    if missing:
        raise ValueError(f"Kvasir-SEG archive: images {missing[:5]} have no mask in {base / 'masks'}")
    for image_id, image in images.items():
        _move(image, out / "images")
        _save_png(out / "masks" / f"{image_id}.png", np.where(_read(masks[image_id]) >= 128, 255, 0).astype(np.uint8))
    _write_splits(out, split_ids(images))


def _rle(mask: np.ndarray) -> dict[str, object]:
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}


def penn_fudan_layout(src: Path, out: Path) -> None:
    """Penn-Fudan ``PNGImages`` + ``PedMasks`` (instance ids) → ``mask_folder`` and COCO boxes with RLE masks.

    Writes ``images/<id>.png``, ``masks/<id>.png`` (0 background, 255
    pedestrian), ``annotations/instances_<split>.json`` (category ``person``;
    boxes are the tight pixel extents of each instance mask) and
    ``<split>.txt`` (80/10/10).
    """
    base = find_folder(src, ("PNGImages", "PedMasks"), what="Penn-Fudan")
    images = _images(base / "PNGImages")
    splits = split_ids(images)
    split_of = {i: s for s, ids in splits.items() for i in ids}
    coco: dict[str, dict[str, list]] = {s: {"images": [], "annotations": []} for s in splits}
    for n, (image_id, image) in enumerate(images.items(), 1):
        mask_path = base / "PedMasks" / f"{image_id}_mask.png"
        if not mask_path.is_file():
            raise ValueError(f"Penn-Fudan archive: image {image.name} has no mask {mask_path.name}")
        instances = _read(mask_path)
        h, w = instances.shape
        entry = coco[split_of[image_id]]
        entry["images"].append({"id": n, "file_name": image.name, "height": int(h), "width": int(w)})
        for value in np.unique(instances[instances > 0]):
            m = instances == value
            ys, xs = np.nonzero(m)
            x1, y1, x2, y2 = int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1
            entry["annotations"].append(
                {
                    "id": sum(len(c["annotations"]) for c in coco.values()) + 1,
                    "image_id": n,
                    "category_id": 1,
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "area": int(m.sum()),
                    "iscrowd": 0,
                    "segmentation": _rle(m),
                }
            )
        _move(image, out / "images")
        _save_png(out / "masks" / f"{image_id}.png", np.where(instances > 0, 255, 0).astype(np.uint8))
    (out / "annotations").mkdir(parents=True, exist_ok=True)
    for split, entry in coco.items():
        entry["categories"] = [{"id": 1, "name": "person"}]
        (out / "annotations" / f"instances_{split}.json").write_text(json.dumps(entry), encoding="utf-8")
    _write_splits(out, splits)


def dsb2018_layout(src: Path, out: Path) -> None:
    """DSB2018 ``<id>/images/<id>.png`` + ``<id>/masks/*.png`` (one per nucleus) → merged ``mask_folder``.

    Writes ``images/<id>.png`` (RGBA as published), ``masks/<id>.png`` (0
    background, 255 nucleus), ``instances/<id>.png`` (uint16 label map, one
    label per nucleus mask in file-name order; overlaps go to the later mask)
    and ``<split>.txt`` (80/10/10).
    """
    samples = sorted(
        d.parent
        for d in src.rglob("images")
        if d.is_dir() and (d / f"{d.parent.name}.png").is_file() and "__MACOSX" not in d.parts
    )
    if not samples:
        find_folder(src, ("images", "masks"), what="DSB2018")  # raises with what the archive holds
    for sample in samples:
        image_id = sample.name
        image = sample / "images" / f"{image_id}.png"
        mask_files = sorted((sample / "masks").glob("*.png")) if (sample / "masks").is_dir() else []
        if not mask_files:
            raise ValueError(f"DSB2018 archive: sample {image_id} has no masks/*.png")
        labels: np.ndarray | None = None
        for k, mask_file in enumerate(mask_files, 1):
            m = _read(mask_file) > 0
            if labels is None:
                labels = np.zeros(m.shape, dtype=np.uint16)
            if m.shape != labels.shape:
                raise ValueError(f"DSB2018 archive: mask {mask_file} is {m.shape}, others of {image_id} {labels.shape}")
            labels[m] = k
        assert labels is not None
        _move(image, out / "images")
        _save_png(out / "masks" / f"{image_id}.png", np.where(labels > 0, 255, 0).astype(np.uint8))
        _save_png(out / "instances" / f"{image_id}.png", labels)
    _write_splits(out, split_ids(s.name for s in samples))


def bccd_layout(src: Path, out: Path) -> None:
    """BCCD repository archive → its ``BCCD/`` folder, already Pascal VOC with ``ImageSets/Main`` splits.

    The repository's ``LICENSE`` (MIT) is copied beside the data.
    """
    base = find_folder(src, ("Annotations", "JPEGImages", "ImageSets"), what="BCCD")
    inside = [p for p in (base, *base.parents) if p == src or src in p.parents]
    licence = next((p / "LICENSE" for p in inside if (p / "LICENSE").is_file()), None)
    _move_folder(base, out)
    if licence is not None and licence.is_file() and not (out / "LICENSE").exists():
        shutil.copyfile(licence, out / "LICENSE")


def voc2012_layout(src: Path, out: Path) -> None:
    """``VOCdevkit/VOC2012`` as published: ``voc`` (ImageSets/Main) and ``voc_seg`` (ImageSets/Segmentation)."""
    base = find_folder(src, ("Annotations", "JPEGImages", "ImageSets", "SegmentationClass"), what="Pascal VOC 2012")
    _move_folder(base, out)


def coco2017_layout(src: Path, out: Path) -> None:
    """COCO 2017 ``train2017/``, ``val2017/`` and ``annotations/`` as published."""
    base = find_folder(src, ("annotations", "train2017", "val2017"), what="COCO 2017")
    out.mkdir(parents=True)
    for name in ("annotations", "train2017", "val2017"):
        _move_folder(base / name, out / name)
