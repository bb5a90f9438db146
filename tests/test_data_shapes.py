"""The built-in shapes dataset: deterministic, fast, atomic, reused, and readable for both tasks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from resbackbone.data import (
    DataConfig,
    DataError,
    build_dataset,
    check_dataset,
    class_names,
    ensure_shapes_dataset,
    verify_shapes_dataset,
)

SMALL = {"n_train": 6, "n_val": 3, "n_test": 3}
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return ensure_shapes_dataset(tmp_path_factory.mktemp("cache") / "shapes", **SMALL)


def test_default_generation_is_deterministic(tmp_path: Path, session_cache: Path) -> None:
    full = ensure_shapes_dataset()  # the session's copy in the cache, shared with the engine tests
    assert full.parent == session_cache / "hub" / "datasets"
    manifest = json.loads((full / "manifest.json").read_text())
    assert manifest["params"] == {"seed": 0, "n_train": 1024, "n_val": 128, "n_test": 128, "image_size": 128}
    assert len(list((full / "images" / "train").iterdir())) == 1024
    # every image depends only on (seed, split, index): a smaller run gives the same first files, byte for byte
    small = _files(ensure_shapes_dataset(tmp_path / "small", **SMALL))
    big = _files(full)
    for name, data in small.items():
        if name.endswith(".png"):
            assert big[name] == data, name


def test_same_bytes_twice_and_seed_changes_them(tmp_path: Path) -> None:
    a = _files(ensure_shapes_dataset(tmp_path / "a", **SMALL))
    b = _files(ensure_shapes_dataset(tmp_path / "b", **SMALL))
    assert a == b
    c = _files(ensure_shapes_dataset(tmp_path / "c", seed=1, **SMALL))
    assert c["images/train/00000.png"] != a["images/train/00000.png"]


def test_reused_when_complete_regenerated_when_damaged(shapes: Path, tmp_path: Path) -> None:
    root = ensure_shapes_dataset(tmp_path / "s", **SMALL)
    stamp = (root / "manifest.json").stat().st_mtime_ns
    assert ensure_shapes_dataset(root, **SMALL) == root
    assert (root / "manifest.json").stat().st_mtime_ns == stamp  # reused, not rewritten
    (root / "images" / "val" / "00001.png").unlink()
    with pytest.raises(DataError, match=r"00001\.png: missing or changed file of the shapes dataset"):
        verify_shapes_dataset(root)
    ensure_shapes_dataset(root, **SMALL)
    assert _files(root) == _files(shapes)
    assert [p.name for p in tmp_path.iterdir()] == ["s"]  # no temporary folders left behind


def test_never_overwrites_a_foreign_folder(tmp_path: Path) -> None:
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.txt").write_text("precious")
    with pytest.raises(DataError, match=r"mine exists and is not a shapes dataset.*remove it or pick another folder"):
        ensure_shapes_dataset(tmp_path / "mine", **SMALL)
    assert (tmp_path / "mine" / "thesis.txt").read_text() == "precious"


def test_default_location_is_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    root = ensure_shapes_dataset(**SMALL)
    assert root.parent == tmp_path / "hub" / "datasets" and root.name.startswith("shapes-v2-")


def test_recipe_root_must_exist_and_is_never_generated(tmp_path: Path) -> None:
    cfg = DataConfig(format="shapes", root=tmp_path / "missing")
    with pytest.raises(DataError, match=r"data\.root .*missing does not exist"):
        build_dataset(cfg, "train", task="detection", train=False, mean=MEAN, std=STD)
    assert not (tmp_path / "missing").exists()


def test_detection_boxes_match_the_masks(shapes: Path) -> None:
    cfg = DataConfig(format="shapes", root=shapes)
    assert class_names(cfg, "detection") == ["circle", "square", "triangle"]
    ds = build_dataset(cfg, "train", task="detection", train=False, mean=MEAN, std=STD)
    assert len(ds) == 6
    for i in range(len(ds)):
        image, target = ds[i]
        assert image.shape == (3, 128, 128) and len(target["boxes"]) >= 1
        mask = np.asarray(Image.open(shapes / "masks" / "train" / Path(target["path"]).name))
        covered = np.zeros_like(mask, dtype=bool)
        for box, label in zip(target["boxes"].tolist(), target["labels"].tolist()):
            x1, y1, x2, y2 = int(box[0]), int(box[1]), int(np.ceil(box[2])) + 1, int(np.ceil(box[3])) + 1
            region = mask[y1:y2, x1:x2]
            assert set(np.unique(region)) <= {0, label}  # shapes do not overlap
            assert (region == label).mean() > 0.35  # the shape fills its box (a triangle about half)
            covered[y1:y2, x1:x2] = True
        assert not (mask[~covered] > 0).any()  # every shape pixel lies in a box


def test_segmentation_and_check(shapes: Path) -> None:
    cfg = DataConfig(format="shapes", root=shapes, image_size=64, augment=[{"name": "HorizontalFlip", "p": 0.5}])
    assert class_names(cfg, "segmentation") == ["background", "circle", "square", "triangle"]
    ds = build_dataset(cfg, "val", task="segmentation", train=True, mean=MEAN, std=STD)
    image, mask = ds[0]
    assert image.shape == (3, 64, 64) and mask.shape == (64, 64) and mask.dtype == torch.int64
    assert set(mask.unique().tolist()) <= {0, 1, 2, 3} and mask.max() > 0
    assert check_dataset(cfg, task="segmentation") == []
    assert check_dataset(cfg, task="detection") == []
