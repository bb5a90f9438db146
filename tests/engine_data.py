"""Tiny datasets in each recipe format, and recipe overrides that point a recipe at them."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .data_writers import palette_png, picture, save, write_coco, write_mask_folder, write_voc, write_yolo

SIZE = 64
SPLITS = {"train": 4, "val": 2, "test": 2}


def _objects(i: int) -> list[tuple[int, tuple[float, float, float, float]]]:
    x = 6 + 5 * (i % 4)
    return [(1 + i % 2, (x, 8.0, x + 20.0, 30.0)), (2 - i % 2, (30.0, 34.0, 56.0, 58.0))]


def _mask(i: int) -> tuple[np.ndarray, np.ndarray]:
    boxes = [b for _, b in _objects(i)]
    mask = np.zeros((SIZE, SIZE), np.uint8)
    for x1, y1, x2, y2 in boxes:
        mask[int(y1) : int(y2), int(x1) : int(x2)] = 255
    return picture(SIZE, SIZE, boxes), mask


def write_dataset(fmt: str, root: Path) -> list[str]:
    """Write train/val/test splits of ``fmt`` under ``root``; return ``--set`` overrides for a recipe."""
    names = {split: [f"{split}{i}" for i in range(n)] for split, n in SPLITS.items()}
    sets = [f"data.root={root}", "data.class_map=null"]
    if fmt == "coco":
        for split, ids in names.items():
            write_coco(
                root,
                split,
                [(f"{n}.png", (SIZE, SIZE), _objects(i)) for i, n in enumerate(ids)],
                {1: "a", 2: "b"},
                with_polygons=True,
            )
            sets.append(f"data.{split}={{annotations: annotations/{split}.json, images: images/{split}}}")
        sets.append("data.classes=null")
    elif fmt == "voc":
        write_voc(
            root,
            {
                split: [(n, (SIZE, SIZE), [("ab"[c - 1], b) for c, b in _objects(i)]) for i, n in enumerate(ids)]
                for split, ids in names.items()
            },
        )
        sets += ["data.classes=[a, b]", *(f"data.{s}={s}" for s in SPLITS)]
    elif fmt == "yolo":
        for split, ids in names.items():
            write_yolo(
                root, split, [(n, (SIZE, SIZE), [(c - 1, b) for c, b in _objects(i)]) for i, n in enumerate(ids)]
            )
        sets += ["data.classes=[a, b]", *(f"data.{s}=images/{s}" for s in SPLITS)]
    elif fmt == "mask_folder":
        items = {n: _mask(i) for ids in names.values() for i, n in enumerate(ids)}
        write_mask_folder(root, items, names)
        sets += ["data.classes=[background, nucleus]", *(f"data.{s}={s}" for s in SPLITS)]
    elif fmt == "voc_seg":
        for ids in names.values():
            for i, n in enumerate(ids):
                image, mask = _mask(i)
                save(root / "JPEGImages" / f"{n}.png", image)
                palette_png(root / "SegmentationClass" / f"{n}.png", np.where(mask > 0, 15, 0))
        lists = root / "ImageSets" / "Segmentation"
        lists.mkdir(parents=True)
        for split, ids in names.items():
            (lists / f"{split}.txt").write_text("\n".join(ids) + "\n")
        sets += ["data.classes=null", *(f"data.{s}={s}" for s in SPLITS)]
    elif fmt != "shapes":
        raise ValueError(f"no test writer for format {fmt!r}")
    return sets if fmt != "shapes" else []


def tiny_overrides(output: Path, *, backbone: str = "test_resnet") -> list[str]:
    """Make any recipe cheap: tiny backbone, no pretrained weights, 64 px, one step."""
    return [
        f"model.backbone={backbone}",
        "model.backbone_weights=null",
        "model.weights=null",
        "model.norm=null",
        "model.freeze_backbone_epochs=0",
        "data.image_size=64",
        "optim.epochs=1",
        "optim.batch_size=2",
        "optim.accumulate=1",
        "optim.amp=none",
        "eval.batch_size=2",
        "eval.tta_scales=[1.0]",
        "run.max_steps_per_epoch=1",
        "run.workers=0",
        "run.device=cpu",
        "run.overlays=1",
        f"run.output={output}",
    ]
