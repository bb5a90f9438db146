"""Real datasets (BCCD blood-cell detection, DSB2018 nuclei masks) through the loaders and the checker.

They live outside the repository: ``$RESBACKBONE_DATA_ROOT`` or ``<repo>/../shared/data``.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import pytest

from resbackbone.data import DataConfig, DataWarning, build_dataset, check_dataset, class_names

pytestmark = pytest.mark.realdata

DATA_ROOT = Path(
    os.environ.get("RESBACKBONE_DATA_ROOT", Path(__file__).resolve().parents[1] / ".." / "shared" / "data")
)
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _root(name: str) -> Path:
    root = DATA_ROOT / name
    if not root.is_dir():
        pytest.skip(f"real dataset {root} is absent (set RESBACKBONE_DATA_ROOT to the folder holding {name}/)")
    return root


def test_bccd_voc_detection() -> None:
    cfg = DataConfig(format="voc", root=_root("bccd"), image_size=320, train="train", val="val")
    assert class_names(cfg, "detection") == ["Platelets", "RBC", "WBC"]  # found in the XML files, sorted
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        ds = build_dataset(cfg, "val", task="detection", train=False, mean=MEAN, std=STD)
    assert len(ds) == 87
    for i in range(3):
        image, target = ds[i]
        assert image.shape == (3, 320, 320) and target["orig_size"] == (480, 640)
        boxes = target["boxes"]
        assert len(boxes) > 0 and target["labels"].min() >= 1 and target["labels"].max() <= 3
        assert (boxes[:, 2] > boxes[:, 0]).all() and boxes[:, [0, 2]].max() <= 320 and boxes[:, [1, 3]].max() <= 240
        # a blood smear has many red cells
        assert (target["labels"] == 2).sum() >= 1


def test_bccd_check_finds_the_degenerate_boxes() -> None:
    cfg = DataConfig(format="voc", root=_root("bccd"), train="train", val="val", test="test")
    problems = check_dataset(cfg, task="detection")
    errors = [p for p in problems if p.severity == "error"]
    assert {Path(p.path).name for p in errors} == {"BloodImage_00338.xml", "BloodImage_00343.xml"}
    assert all("has zero area" in p.message for p in errors)


def test_dsb_nuclei_mask_folder() -> None:
    cfg = DataConfig(
        format="mask_folder", root=_root("dsb2018_nuclei"), classes=["background", "nucleus"], image_size=128
    )
    ds = build_dataset(cfg, "train", task="segmentation", train=False, mean=MEAN, std=STD)
    assert len(ds) == 73
    for i in range(4):
        image, mask = ds[i]  # RGBA files of mixed sizes
        assert image.shape == (3, 128, 128) and mask.shape == (128, 128)
        assert set(mask.unique().tolist()) <= {0, 1, 255} and (mask == 1).any()
    problems = check_dataset(cfg, task="segmentation")
    assert not [p for p in problems if p.severity == "error"]
    assert any("have an alpha channel, which is dropped" in p.message for p in problems)
