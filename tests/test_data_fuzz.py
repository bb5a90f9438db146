"""Fuzzing the annotation parsers: any input loads or raises DataError, never a stray exception."""

from __future__ import annotations

import json
import tempfile
import warnings
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from resbackbone.data import DataConfig, DataError, DataWarning, build_dataset, check_dataset

from .data_writers import picture, save

FUZZ = settings(max_examples=40, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
MEAN, STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)

numbers = st.one_of(
    st.integers(-5, 40), st.floats(allow_nan=True, allow_infinity=True, width=32), st.just("7"), st.none()
)
scalars = st.one_of(numbers, st.text(max_size=6), st.booleans())


def _exercise(cfg: DataConfig, task: str = "detection") -> None:
    """Check, build and read every item; only DataError is an acceptable failure."""
    problems = check_dataset(cfg, task=task)
    assert all(p.severity in ("error", "warning") and p.message for p in problems)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DataWarning)
            ds = build_dataset(cfg, "train", task=task, train=True, mean=MEAN, std=STD)
        for i in range(len(ds)):
            _, target = ds[i]
            if task == "detection":
                boxes = target["boxes"]
                assert bool(((boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])).all())
    except DataError:
        pass


def _image(root: Path, name: str = "a.png") -> None:
    save(root / name, picture(24, 32))


coco_image = st.fixed_dictionaries(
    {"id": st.one_of(st.integers(0, 3), scalars), "file_name": st.sampled_from(["a.png", "b.png", "../a.png", 5])},
    optional={"width": numbers, "height": numbers},
)
coco_ann = st.fixed_dictionaries(
    {
        "id": st.one_of(st.integers(0, 5), scalars),
        "image_id": st.one_of(st.integers(0, 3), scalars),
        "category_id": st.one_of(st.integers(0, 3), scalars),
    },
    optional={
        "bbox": st.one_of(st.lists(numbers, max_size=5), scalars),
        "iscrowd": st.sampled_from([0, 1, "x"]),
        "segmentation": st.one_of(st.lists(st.lists(numbers, max_size=8), max_size=2), scalars),
    },
)
coco_cat = st.fixed_dictionaries({"id": st.one_of(st.integers(0, 3), scalars), "name": st.sampled_from(["a", "b", 3])})
coco_file = st.one_of(
    st.fixed_dictionaries(
        {"images": st.lists(coco_image, max_size=3), "categories": st.lists(coco_cat, max_size=3)},
        optional={"annotations": st.lists(coco_ann, max_size=5)},
    ),
    st.lists(scalars, max_size=3),
    scalars,
)


@FUZZ
@given(data=coco_file, task=st.sampled_from(["detection", "segmentation"]))
def test_fuzz_coco(data: object, task: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        _image(root)
        (root / "ann.json").write_text(json.dumps(data))
        _exercise(DataConfig(format="coco", root=root, train="ann.json", image_size=32), task)


xml_value = st.one_of(st.integers(-10, 50).map(str), st.sampled_from(["", "abc", "1e3", "nan", "12.5", "<"]))
xml_object = st.builds(
    lambda name, values, drop: (
        "<object>"
        + (f"<name>{name}</name>" if drop != 0 else "")
        + (
            "<bndbox>"
            + "".join(f"<{k}>{v}</{k}>" for k, v in zip(("xmin", "ymin", "xmax", "ymax"), values))
            + "</bndbox>"
            if drop != 1
            else ""
        )
        + "</object>"
    ),
    st.sampled_from(["cat", "dog", " cat ", ""]),
    st.lists(xml_value, min_size=4, max_size=4),
    st.integers(0, 4),
)
voc_text = st.one_of(
    st.builds(
        lambda size, objects, filename: (
            f"<annotation><filename>{filename}</filename>{size}{''.join(objects)}</annotation>"
        ),
        st.sampled_from(["", "<size><width>32</width><height>24</height></size>", "<size><width>x</width></size>"]),
        st.lists(xml_object, max_size=4),
        st.sampled_from(["a.png", "", "../../a.png", "missing.png"]),
    ),
    st.text(max_size=40),
)


@FUZZ
@given(text=voc_text, classes=st.sampled_from([None, ["cat"], ["cat", "dog"]]))
def test_fuzz_voc(text: str, classes: list[str] | None) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        _image(root / "JPEGImages")
        (root / "Annotations").mkdir()
        (root / "Annotations" / "a.xml").write_text(text)
        (root / "ImageSets" / "Main").mkdir(parents=True)
        (root / "ImageSets" / "Main" / "train.txt").write_text("a\n")
        _exercise(DataConfig(format="voc", root=root, classes=classes, image_size=32))


yolo_line = st.one_of(
    st.lists(st.one_of(st.integers(-1, 3).map(str), st.floats(-0.5, 1.5, width=32).map(str)), max_size=9).map(" ".join),
    st.text(max_size=12),
)


@FUZZ
@given(lines=st.lists(yolo_line, max_size=5))
def test_fuzz_yolo(lines: list[str]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        _image(root / "images" / "train")
        (root / "labels" / "train").mkdir(parents=True)
        (root / "labels" / "train" / "a.txt").write_text("\n".join(lines))
        _exercise(DataConfig(format="yolo", root=root, classes=["a", "b"], train="images/train", image_size=32))


@FUZZ
@given(
    values=st.lists(st.sampled_from([0, 1, 2, 7, 255]), min_size=1, max_size=4),
    shape=st.sampled_from([(24, 32), (8, 8)]),
)
def test_fuzz_masks(values: list[int], shape: tuple[int, int]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        _image(root / "images")
        mask = np.resize(np.array(values, np.uint8), shape)
        save(root / "masks" / "a.png", mask)
        cfg = DataConfig(format="mask_folder", root=root, classes=["bg", "a", "b"], image_size=32, train={})
        _exercise(cfg, "segmentation")
