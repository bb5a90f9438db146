"""The built-in demo dataset: coloured circles, squares and triangles on textured backgrounds.

Generated deterministically (numpy + PIL, fixed seed) into a real on-disk
layout, so the quick start exercises the same readers as user data::

    shapes-v2/
      annotations/{train,val,test}.json   COCO: boxes, polygon segmentations, categories 1..3
      images/{split}/00000.png            RGB, image_size x image_size
      masks/{split}/00000.png             palette PNG: 0 background, 1 circle, 2 square, 3 triangle
      manifest.json                       parameters and the size of every file (written last)

It is built in a temporary folder beside the target and renamed into place,
so a cache folder is either complete or absent; a copy is reused when its
manifest matches the parameters and every file is present with its size.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import secrets
import shutil
from pathlib import Path

import numpy as np

from ...weights import cache_dir
from ..problems import DataError

__all__ = ["SHAPES_CLASSES", "SHAPES_NAME", "ensure_shapes_dataset", "verify_shapes_dataset"]

SHAPES_NAME = "shapes-v2"
#: Class names of the shapes, in category-id order (1, 2, 3).
SHAPES_CLASSES = ("circle", "square", "triangle")
_DEFAULTS = {"seed": 0, "n_train": 1024, "n_val": 128, "n_test": 128, "image_size": 128}
_PALETTE = [0, 0, 0, 230, 25, 75, 60, 180, 75, 0, 130, 200]


def _polygon(kind: int, cx: float, cy: float, size: float, angle: float) -> np.ndarray:
    if kind == 0:  # circle of diameter `size`
        t = np.linspace(0, 2 * math.pi, 32, endpoint=False)
        r = size / 2
    elif kind == 1:  # square of side `size`
        t = angle + math.pi / 4 + np.arange(4) * math.pi / 2
        r = size / math.sqrt(2)
    else:  # equilateral triangle with circumradius size * 0.6
        t = angle + np.arange(3) * 2 * math.pi / 3
        r = size * 0.6
    return np.stack([cx + r * np.cos(t), cy + r * np.sin(t)], axis=1)


def _sample(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray, list[tuple[int, np.ndarray, tuple]]]:
    """One image: (rgb uint8, index mask uint8, [(class, polygon, colour)])."""
    from PIL import Image, ImageDraw

    coarse = rng.uniform(40, 215, size=(4, 4, 3)).astype(np.uint8)
    background = Image.fromarray(coarse).resize((size, size), Image.Resampling.BICUBIC)
    image = background.copy()
    mask = Image.new("L", (size, size), 0)
    draw, mdraw = ImageDraw.Draw(image), ImageDraw.Draw(mask)
    bg = np.asarray(background, dtype=np.float32)
    objects: list[tuple[int, np.ndarray, tuple]] = []
    boxes: list[np.ndarray] = []
    for _ in range(int(rng.integers(1, 4))):
        for _attempt in range(30):
            kind = int(rng.integers(0, 3))
            side = float(rng.uniform(0.16, 0.34) * size)
            cx, cy = rng.uniform(0.05 * size + side * 0.7, 0.95 * size - side * 0.7, size=2)
            poly = _polygon(kind, float(cx), float(cy), side, float(rng.uniform(0, 2 * math.pi)))
            box = np.concatenate([poly.min(0), poly.max(0)])
            if all(box[0] > b[2] + 2 or box[2] < b[0] - 2 or box[1] > b[3] + 2 or box[3] < b[1] - 2 for b in boxes):
                break
        else:
            continue
        local = bg[int(box[1]) : int(box[3]) + 1, int(box[0]) : int(box[2]) + 1].reshape(-1, 3).mean(0)
        for _attempt in range(20):
            colour = rng.integers(0, 256, size=3)
            if np.abs(colour.astype(np.float32) - local).sum() > 150:
                break
        else:
            colour = 255 - local.astype(np.int64)
        fill = tuple(int(c) for c in colour)
        points = [tuple(p) for p in poly.tolist()]
        draw.polygon(points, fill=fill)
        mdraw.polygon(points, fill=kind + 1)
        boxes.append(box)
        objects.append((kind, poly, fill))
    noisy = np.asarray(image, dtype=np.float32) + rng.normal(0, 10, size=(size, size, 3))
    return np.clip(np.rint(noisy), 0, 255).astype(np.uint8), np.asarray(mask), objects


def _generate(folder: Path, params: dict[str, int]) -> None:
    from PIL import Image

    size = params["image_size"]
    categories = [{"id": i + 1, "name": n, "supercategory": "shape"} for i, n in enumerate(SHAPES_CLASSES)]
    for split_index, split in enumerate(("train", "val", "test")):
        (folder / "images" / split).mkdir(parents=True)
        (folder / "masks" / split).mkdir(parents=True)
        images, annotations = [], []
        for i in range(params[f"n_{split}"]):
            rng = np.random.default_rng([params["seed"], split_index, i])
            rgb, mask, objects = _sample(rng, size)
            name = f"{i:05d}.png"
            Image.fromarray(rgb).save(folder / "images" / split / name, compress_level=1)
            m = Image.fromarray(mask)  # putpalette turns L into P, keeping the indices
            m.putpalette(_PALETTE + [0] * (768 - len(_PALETTE)))
            m.save(folder / "masks" / split / name, compress_level=1)
            images.append({"id": i + 1, "file_name": name, "width": size, "height": size})
            for kind, poly, _ in objects:
                x1, y1 = poly.min(0)
                x2, y2 = poly.max(0)
                x, y = poly[:, 0], poly[:, 1]
                area = 0.5 * abs(float(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))))
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": i + 1,
                        "category_id": kind + 1,
                        "bbox": [round(float(v), 2) for v in (x1, y1, x2 - x1, y2 - y1)],
                        "area": round(area, 2),
                        "iscrowd": 0,
                        "segmentation": [[round(float(v), 2) for v in poly.reshape(-1)]],
                    }
                )
        coco = {
            "info": {"description": f"resbackbone {SHAPES_NAME} {split}"},
            "images": images,
            "annotations": annotations,
            "categories": categories,
        }
        (folder / "annotations").mkdir(exist_ok=True)
        (folder / "annotations" / f"{split}.json").write_text(json.dumps(coco), encoding="utf-8")
    files = {str(p.relative_to(folder).as_posix()): p.stat().st_size for p in sorted(folder.rglob("*")) if p.is_file()}
    manifest = {"name": SHAPES_NAME, "params": params, "classes": list(SHAPES_CLASSES), "files": files}
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=1), encoding="utf-8")


def verify_shapes_dataset(root: str | Path, params: dict[str, int] | None = None) -> Path:
    """Check that ``root`` holds a complete shapes dataset (with ``params``, if given).

    Raises:
        DataError: No manifest, other parameters, or a missing or resized file.
    """
    root = Path(root)
    path = root / "manifest.json"
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        files, name = manifest["files"], manifest["name"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataError(
            f"{root} is not a complete shapes dataset: {path} is missing or unreadable ({exc})", path
        ) from None
    if name != SHAPES_NAME or (params is not None and manifest.get("params") != params):
        raise DataError(f"{path}: {name} {manifest.get('params')} does not match {SHAPES_NAME} {params}", path)
    for rel, size in files.items():
        p = root / rel
        if not p.is_file() or p.stat().st_size != size:
            raise DataError(f"{p}: missing or changed file of the shapes dataset in {root}", p)
    return root


def ensure_shapes_dataset(
    root: str | Path | None = None,
    *,
    seed: int = 0,
    n_train: int = 1024,
    n_val: int = 128,
    n_test: int = 128,
    image_size: int = 128,
) -> Path:
    """Return the folder of the shapes dataset, generating it first if needed.

    Args:
        root: Dataset folder. Default: ``cache_dir("datasets") / "shapes-v2"``
            (a suffixed name for non-default parameters).
        seed: Generator seed; the same parameters always give the same bytes.
        n_train: Training images.
        n_val: Validation images.
        n_test: Test images.
        image_size: Side of the square images.

    Returns:
        The dataset folder.

    Raises:
        DataError: ``root`` exists but is something else than a shapes dataset
            (nothing is overwritten).

    Example:
        >>> root = ensure_shapes_dataset()  # ~1 s the first time, then reused
        >>> sorted(p.name for p in root.iterdir())
        ['annotations', 'images', 'manifest.json', 'masks']
    """
    params = {"seed": seed, "n_train": n_train, "n_val": n_val, "n_test": n_test, "image_size": image_size}
    if min(n_train, n_val, n_test) < 1 or image_size < 32:
        raise ValueError(f"shapes dataset needs at least 1 image per split and image_size >= 32; got {params}")
    if root is None:
        suffix = "" if params == _DEFAULTS else "-" + hashlib.sha256(json.dumps(params).encode()).hexdigest()[:8]
        root = cache_dir("datasets") / f"{SHAPES_NAME}{suffix}"
    root = Path(root)
    stale = False
    if root.exists():
        try:
            return verify_shapes_dataset(root, params)
        except DataError as exc:
            ours = (root / "manifest.json").is_file() or (root.is_dir() and not any(root.iterdir()))
            if not ours:
                raise DataError(
                    f"{root} exists and is not a shapes dataset ({exc}); remove it or pick another folder", root
                ) from None
            stale = True
    root.parent.mkdir(parents=True, exist_ok=True)
    # mkdir, not mkdtemp (0700): the dataset gets the permissions the umask gives any folder
    tmp = root.parent / f".{root.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
    tmp.mkdir()
    try:
        _generate(tmp, params)
        if stale:
            trash = root.parent / f".{root.name}.stale-{os.getpid()}"
            os.replace(root, trash)
            shutil.rmtree(trash, ignore_errors=True)
        try:
            os.rename(tmp, root)
        except OSError:  # another process finished first
            verify_shapes_dataset(root, params)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root
