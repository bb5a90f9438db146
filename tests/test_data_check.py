"""Bad data: each problem reported clearly and by file, all at once; loaders raise or repair and warn."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from resbackbone.data import DataConfig, DataError, DataWarning, Problem, build_dataset, check_dataset

from .data_writers import picture, save, voc_xml, write_coco, write_mask_folder, write_voc, write_yolo

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def _build(cfg: DataConfig, split: str = "train", task: str = "detection"):  # type: ignore[no-untyped-def]
    return build_dataset(cfg, split, task=task, train=False, mean=MEAN, std=STD)


def _find(problems: list[Problem], path_part: str, pattern: str, severity: str = "error") -> Problem:
    import re

    for p in problems:
        if path_part in p.path and re.search(pattern, p.message) and p.severity == severity:
            return p
    raise AssertionError(f"no {severity} on {path_part!r} matching {pattern!r} in:\n" + "\n".join(map(str, problems)))


def _bad_files(folder: Path) -> dict[str, Path]:
    good = save(folder / "good.jpg", picture(32, 32))
    truncated = folder / "truncated.jpg"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    (folder / "empty.png").write_bytes(b"")
    (folder / "notes.png").write_text("this is not an image\n")
    return {"truncated": truncated, "empty": folder / "empty.png", "text": folder / "notes.png"}


@pytest.fixture
def bad_voc(tmp_path: Path) -> Path:
    """A VOC dataset with one of each detection problem, every image otherwise valid."""
    objects = {
        "ok": [("cat", (2, 2, 20, 20))],
        "outside": [("cat", (-5, 2, 40, 20))],  # 32x32 image: clipped
        "zero": [("cat", (5, 5, 5, 9))],
        "reversed": [("cat", (20, 5, 10, 9))],
        "unknown": [("cta", (2, 2, 9, 9))],
        "truncated": [],
        "empty": [],
        "text": [],
    }
    write_voc(tmp_path, {"train": [(k, (32, 32), v) for k, v in objects.items()]})
    for name, path in _bad_files(tmp_path / "bad").items():
        shutil.copy(path, tmp_path / "JPEGImages" / f"{name}.png")
    lists = tmp_path / "ImageSets" / "Main" / "train.txt"
    lists.write_text(lists.read_text() + "ghost\nok\n")  # missing image, duplicate id
    (tmp_path / "Annotations" / "ghost.xml").write_text(voc_xml("ghost.png", (32, 32), []))
    return tmp_path


def test_check_reports_every_problem_at_once(bad_voc: Path) -> None:
    problems = check_dataset(DataConfig(format="voc", root=bad_voc, classes=["cat"]), task="detection")
    _find(problems, "outside.xml", r"1 box\(es\) reach outside the image \(e\.g\. \[-5\.0, .*clipped", "warning")
    _find(problems, "zero.xml", r"box \[5\.0, 5\.0, 5\.0, 9\.0\] has zero area")
    _find(problems, "reversed.xml", r"box \[20\.0, 5\.0, 10\.0, 9\.0\] has reversed corners")
    _find(problems, "unknown.xml", r"class 'cta' is not in data\.classes \['cat'\]")
    _find(problems, "truncated.png", r"truncated or corrupt")
    _find(problems, "empty.png", r"file is empty \(0 bytes\)")
    _find(problems, "text.png", r"not an image file that can be read \(starts with b'this is ")
    _find(problems, "ghost.xml", r"image ghost\.png listed in train\.txt is missing on disk")
    _find(problems, "train.txt", r"line 10: duplicate image id 'ok'")
    assert all(p.split == "train" for p in problems)
    assert sum(p.severity == "error" for p in problems) == 8
    assert "error: [train]" in str(problems[0]) or "warning: [train]" in str(problems[0])


def test_loading_raises_all_annotation_errors_together(bad_voc: Path) -> None:
    with pytest.raises(DataError, match=r"Data split 'train' has 3 error\(s\)") as info:
        _build(DataConfig(format="voc", root=bad_voc, classes=["cat"]))
    message = str(info.value)
    assert "unknown.xml: class 'cta' is not in data.classes" in message
    assert "ghost.xml: image ghost.png listed in train.txt is missing on disk" in message
    assert "train.txt: line 10: duplicate image id 'ok'" in message
    assert message.endswith("Run `resbackbone data check RECIPE` to see every problem of the dataset.")


def test_loading_clips_and_drops_boxes_with_one_warning_each(tmp_path: Path) -> None:
    write_voc(
        tmp_path,
        {
            "train": [
                ("a", (32, 32), [("cat", (-5, 2, 40, 20)), ("cat", (5, 5, 5, 9))]),
                ("b", (32, 32), [("cat", (1, 1, 50, 50)), ("cat", (20, 5, 10, 9)), ("cat", (3, 3, 9, 9))]),
            ]
        },
    )
    with pytest.warns(DataWarning) as record:
        ds = _build(DataConfig(format="voc", root=tmp_path, image_size=32))
    messages = [str(w.message) for w in record]
    assert len(messages) == 2
    assert any(
        m.startswith("[train] clipped 2 box(es)") and "in 2 file(s), e.g." in m and "a.xml" in m for m in messages
    )
    assert any(m.startswith("[train] dropped 2 box(es) with zero area or reversed corners") for m in messages)
    assert ds[0][1]["boxes"].tolist() == [[0.0, 2.0, 32.0, 20.0]]
    assert ds[1][1]["boxes"].tolist() == [[1.0, 1.0, 32.0, 32.0], [3.0, 3.0, 9.0, 9.0]]


@pytest.mark.parametrize("kind", ["truncated", "empty", "text"])
def test_unreadable_image_raises_naming_the_file_when_loaded(tmp_path: Path, kind: str) -> None:
    bad = _bad_files(tmp_path / "bad")[kind]
    write_coco(tmp_path, "train", [("x.png", (32, 32), [])], {1: "cat"})
    shutil.copy(bad, tmp_path / "images" / "train" / "x.png")
    spec = {"annotations": "annotations/train.json", "images": "images/train"}
    ds = _build(DataConfig(format="coco", root=tmp_path, train=spec))
    with pytest.raises(DataError, match=r"images/train/x\.png: (image is truncated|file is empty|not an image)"):
        ds[0]


def test_16bit_and_rgba_images_load_and_are_noted_by_check(tmp_path: Path) -> None:
    rgba = np.dstack([picture(16, 16), np.full((16, 16, 1), 128, np.uint8)])
    deep = picture(16, 16)[..., 0].astype(np.uint16) * 257
    mask = np.zeros((16, 16), np.uint8)
    write_mask_folder(tmp_path, {"rgba": (rgba, mask), "deep": (deep, mask), "plain": (picture(16, 16), mask)}, {})
    cfg = DataConfig(format="mask_folder", root=tmp_path, image_size=16, train={"images": "images"})
    problems = check_dataset(cfg, task="segmentation")
    _find(problems, "rgba.png", r"1 of 3 images have an alpha channel, which is dropped", "warning")
    _find(problems, "deep.png", r"1 of 3 images are 16-bit and are scaled to 0–1", "warning")
    assert not [p for p in problems if p.severity == "error"]
    ds = _build(cfg, task="segmentation")
    assert all(ds[i][0].shape == (3, 16, 16) for i in range(3))


def test_mask_problems(tmp_path: Path) -> None:
    ok = np.zeros((16, 16), np.uint8)
    odd = ok.copy()
    odd[0, 0:3] = [7, 7, 9]
    write_mask_folder(
        tmp_path,
        {
            "good": (picture(16, 16), ok),
            "small": (picture(16, 16), np.zeros((8, 16), np.uint8)),
            "odd": (picture(16, 16), odd),
        },
        {"train": ["good", "small", "odd", "nomask"]},
    )
    save(tmp_path / "images" / "nomask.png", picture(16, 16))
    cfg = DataConfig(format="mask_folder", root=tmp_path, classes=["bg", "a", "b"], image_size=16)
    problems = check_dataset(cfg, task="segmentation")
    _find(problems, "masks/small.png", r"mask is 16x8 but its image small\.png is 16x16")
    _find(problems, "masks/odd.png", r"mask values 7, 9 are not in the class map")
    _find(problems, "masks/nomask.png", r"mask of image 'nomask' is missing on disk")
    with pytest.raises(DataError, match=r"mask of image 'nomask' is missing"):
        _build(cfg, task="segmentation")
    (tmp_path / "train.txt").write_text("good\nsmall\nodd\n")
    ds = _build(cfg, task="segmentation")
    with pytest.raises(DataError, match=r"masks/small\.png: mask is 16x8 but its image small\.png is 16x16"):
        ds[1]
    with pytest.raises(DataError, match=r"masks/odd\.png: mask values 7, 9 are not in the class map"):
        ds[2]


def test_duplicate_ids_and_unknown_categories_in_coco(tmp_path: Path) -> None:
    path = write_coco(
        tmp_path, "train", [("a.png", (16, 16), [(1, (1, 1, 5, 5)), (9, (2, 2, 6, 6))])], {1: "cat", 9: "dog"}
    )
    data = json.loads(path.read_text())
    data["images"].append(dict(data["images"][0]))  # same id twice
    path.write_text(json.dumps(data))
    spec = {"annotations": "annotations/train.json", "images": "images/train"}
    problems = check_dataset(DataConfig(format="coco", root=tmp_path, train=spec), task="detection")
    _find(problems, "train.json", r"duplicate image id 1")
    data["images"].pop()
    data["annotations"].append({"id": 3, "image_id": 1, "category_id": 4, "bbox": [1, 1, 2, 2]})
    path.write_text(json.dumps(data))
    problems = check_dataset(DataConfig(format="coco", root=tmp_path, train=spec, classes=["cat"]), task="detection")
    _find(problems, "train.json", r"category 'dog' \(id 9\) is used by annotations but not in data\.classes")
    _find(problems, "train.json", r"annotation 3 has category_id 4, not in categories \[1, 9\]")


def test_duplicate_stems_and_yolo_class_ids(tmp_path: Path) -> None:
    write_yolo(tmp_path, "train", [("a", (20, 20), [(0, (1, 1, 9, 9))]), ("b", (20, 20), [])])
    save(tmp_path / "images" / "train" / "a.jpg", picture(20, 20))
    (tmp_path / "labels" / "train" / "b.txt").write_text("3 0.5 0.5 0.2 0.2\n0 0.5 nan\n")
    problems = check_dataset(
        DataConfig(format="yolo", root=tmp_path, classes=["x"], train="images/train"), task="detection"
    )
    _find(problems, "a.png", r"duplicate image id 'a': also a\.jpg")
    _find(problems, "b.txt", r"line 1: class id 3 is not in the class map \(0\.\.0\)")
    _find(problems, "b.txt", r"line 2: expected 5 numbers")


def test_empty_split_and_missing_root(tmp_path: Path) -> None:
    write_voc(tmp_path, {"train": [("a", (8, 8), [])]})
    (tmp_path / "ImageSets" / "Main" / "val.txt").write_text("\n")
    cfg = DataConfig(format="voc", root=tmp_path, classes=["x"])
    with pytest.raises(DataError, match=r"val\.txt: split 'val' is empty: no usable images"):
        _build(cfg, "val")
    _find(check_dataset(cfg, task="detection"), "val.txt", r"split 'val' is empty")
    with pytest.raises(ValueError, match=r"data\.test is not set and 'voc' has no test split"):
        _build(cfg, "test")
    missing = DataConfig(format="voc", root=tmp_path / "nope", classes=["x"])
    with pytest.raises(DataError, match=r"data\.root .*nope does not exist"):
        _build(missing)
    assert "does not exist" in check_dataset(missing, task="detection")[0].message


def test_coco_schema_errors_name_the_field(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"images": [{"id": "x", "file_name": 3}], "categories": []}))
    cfg = DataConfig(format="coco", root=tmp_path, train="bad.json")
    problems = check_dataset(cfg, task="detection")
    _find(problems, "bad.json", r"invalid COCO field images\[0\]\.id")
    path.write_text("{not json")
    with pytest.raises(DataError, match=r"bad\.json: not a readable JSON file"):
        _build(cfg)


def test_overlapping_splits_are_a_warning(tmp_path: Path) -> None:
    write_voc(tmp_path, {"train": [("a", (8, 8), []), ("b", (8, 8), [])], "val": [("b", (8, 8), [])]})
    problems = check_dataset(DataConfig(format="voc", root=tmp_path, classes=["x"]), task="detection")
    _find(problems, "b.png", r"1 image\(s\) of this split are also in split 'train'", "warning")


def test_worker_errors_reach_the_main_process_naming_the_file(tmp_path: Path) -> None:
    from torch.utils.data import DataLoader

    write_coco(tmp_path, "train", [("x.png", (32, 32), [])], {1: "cat"})
    (tmp_path / "images" / "train" / "x.png").write_bytes(b"")
    spec = {"annotations": "annotations/train.json", "images": "images/train"}
    loader = DataLoader(_build(DataConfig(format="coco", root=tmp_path, train=spec)), num_workers=1, collate_fn=list)
    with pytest.raises(DataError, match=r"images/train/x\.png: file is empty"):
        next(iter(loader))


def test_paths_escaping_the_root_in_list_files_are_refused(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    save(tmp_path / "secret.png", picture(8, 8))
    save(tmp_path / "secret_mask.png", np.zeros((8, 8), np.uint8))
    write_yolo(root, "train", [("a", (8, 8), [])])
    (root / "train.txt").write_text("images/train/a.png\n../secret.png\n")
    problems = check_dataset(DataConfig(format="yolo", root=root, classes=["x"], train="train.txt"), task="detection")
    _find(problems, "train.txt", r"path '\.\./secret\.png' points outside the dataset root")
    write_mask_folder(root, {"b": (picture(8, 8), np.zeros((8, 8), np.uint8))}, {"val": ["b", "../../secret"]})
    problems = check_dataset(DataConfig(format="mask_folder", root=root, val="val"), task="segmentation")
    _find(problems, "val.txt", r"path '\.\./\.\./secret' points outside the dataset root")
    (root / "Annotations").mkdir()
    (root / "Annotations" / "v.xml").write_text(voc_xml("../../secret.png", (8, 8), []))
    (root / "ImageSets" / "Main").mkdir(parents=True)
    (root / "ImageSets" / "Main" / "train.txt").write_text("v\n")
    problems = check_dataset(DataConfig(format="voc", root=root, classes=["x"]), task="detection")
    _find(problems, "v.xml", r"path '\.\./\.\./secret\.png' points outside the dataset root")
