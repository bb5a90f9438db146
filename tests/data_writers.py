"""Writers of tiny datasets in every supported format, for the data tests.

Images are dark (value 30) with one bright (value 220) rectangle per object, so
a test can check that a transformed box still covers its object.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

Box = tuple[float, float, float, float]


def picture(h: int, w: int, boxes: list[Box] = (), *, channels: int = 3) -> np.ndarray:
    """A dark ``(h, w, channels)`` uint8 image with a bright rectangle in each xyxy box."""
    arr = np.full((h, w, channels), 30, dtype=np.uint8)
    for x1, y1, x2, y2 in boxes:
        arr[int(y1) : int(y2), int(x1) : int(x2)] = 220
    return arr


def save(path: Path, arr: np.ndarray) -> Path:
    """Save an array as an image file (mode from its shape and dtype)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    a = arr[..., 0] if arr.ndim == 3 and arr.shape[2] == 1 else arr
    Image.fromarray(a).save(path)
    return path


def write_coco(
    root: Path,
    split: str,
    images: list[tuple[str, tuple[int, int], list[tuple[int, Box]]]],
    categories: dict[int, str],
    *,
    with_polygons: bool = False,
    draw: bool = True,
) -> Path:
    """COCO json at ``annotations/<split>.json``; images under ``images/<split>``; boxes given xyxy."""
    entries, anns = [], []
    for i, (name, (h, w), objects) in enumerate(images, 1):
        entries.append({"id": i, "file_name": name, "width": w, "height": h})
        if draw:
            save(root / "images" / split / name, picture(h, w, [b for _, b in objects]))
        for cat, (x1, y1, x2, y2) in objects:
            ann = {"id": len(anns) + 1, "image_id": i, "category_id": cat, "bbox": [x1, y1, x2 - x1, y2 - y1]}
            ann["iscrowd"] = 0
            ann["area"] = (x2 - x1) * (y2 - y1)
            if with_polygons:
                ann["segmentation"] = [[x1, y1, x2, y1, x2, y2, x1, y2]]
            anns.append(ann)
    cats = [{"id": k, "name": v} for k, v in categories.items()]
    path = root / "annotations" / f"{split}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"images": entries, "annotations": anns, "categories": cats}))
    return path


def voc_xml(filename: str, size: tuple[int, int] | None, objects: list[tuple[str, Box]]) -> str:
    """The text of a VOC annotation file."""
    parts = [f"<annotation><filename>{filename}</filename>"]
    if size is not None:
        parts.append(f"<size><width>{size[1]}</width><height>{size[0]}</height><depth>3</depth></size>")
    for name, (x1, y1, x2, y2) in objects:
        parts.append(
            f"<object><name>{name}</name><difficult>0</difficult><bndbox><xmin>{x1}</xmin><ymin>{y1}</ymin>"
            f"<xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object>"
        )
    return "".join(parts) + "</annotation>"


def write_voc(root: Path, splits: dict[str, list[tuple[str, tuple[int, int], list[tuple[str, Box]]]]]) -> Path:
    """VOC layout: JPEGImages/<id>.png, Annotations/<id>.xml, ImageSets/Main/<split>.txt."""
    for split, items in splits.items():
        for image_id, (h, w), objects in items:
            save(root / "JPEGImages" / f"{image_id}.png", picture(h, w, [b for _, b in objects]))
            ann = root / "Annotations" / f"{image_id}.xml"
            ann.parent.mkdir(parents=True, exist_ok=True)
            ann.write_text(voc_xml(f"{image_id}.png", (h, w), objects))
        lists = root / "ImageSets" / "Main"
        lists.mkdir(parents=True, exist_ok=True)
        (lists / f"{split}.txt").write_text("".join(f"{i}\n" for i, _, _ in items))
    return root


def write_yolo(root: Path, split: str, items: list[tuple[str, tuple[int, int], list[tuple[int, Box]] | None]]) -> Path:
    """YOLO layout images/<split>/<name>.png + labels/<split>/<name>.txt (None: no label file)."""
    for name, (h, w), objects in items:
        save(root / "images" / split / f"{name}.png", picture(h, w, [b for _, b in objects or []]))
        if objects is None:
            continue
        lines = []
        for cls, (x1, y1, x2, y2) in objects:
            lines.append(f"{cls} {(x1 + x2) / 2 / w} {(y1 + y2) / 2 / h} {(x2 - x1) / w} {(y2 - y1) / h}")
        label = root / "labels" / split / f"{name}.txt"
        label.parent.mkdir(parents=True, exist_ok=True)
        label.write_text("\n".join(lines) + "\n")
    return root


def write_mask_folder(
    root: Path, items: dict[str, tuple[np.ndarray, np.ndarray]], splits: dict[str, list[str]]
) -> Path:
    """images/<id>.png + masks/<id>.png, and <split>.txt id lists."""
    for image_id, (image, mask) in items.items():
        save(root / "images" / f"{image_id}.png", image)
        save(root / "masks" / f"{image_id}.png", mask)
    for split, ids in splits.items():
        (root / f"{split}.txt").write_text("\n".join(ids) + "\n")
    return root


def palette_png(path: Path, mask: np.ndarray) -> Path:
    """Save an index mask as a palette (mode P) PNG."""
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(mask.astype(np.uint8))
    im.putpalette([v for i in range(256) for v in ((i * 37) % 256, (i * 91) % 256, (i * 53) % 256)])
    im.save(path)
    return path
