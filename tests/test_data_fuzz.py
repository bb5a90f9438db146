"""The annotation parsers under generated input.

Fuzzing: any input loads or raises DataError, never a stray exception. That
alone would pass a parser that refused everything, so valid generated COCO,
VOC and YOLO files must also load without error and give back the boxes and
labels they were written with, after the documented clipping to the image
(boxes reaching outside it are clipped; COCO crowd annotations are skipped).
"""

from __future__ import annotations

import json
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from resbackbone.data import DataConfig, DataError, DataWarning, build_dataset, check_dataset
from resbackbone.data.formats.records import DetectionRecord

from .data_writers import picture, save, voc_xml

FUZZ = settings(max_examples=40, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
VALID = settings(max_examples=20, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
MEAN, STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
H, W = 24, 32  # the image _image() writes

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


# ------------------------------------------------------------------ valid inputs round-trip


def _records(cfg: DataConfig) -> list[DetectionRecord]:
    """The training split's records; a DataError (any refused annotation) fails the test."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", DataWarning)
        records = build_dataset(cfg, "train", task="detection", train=False, mean=MEAN, std=STD).records
    assert all("clipped" in str(w.message) for w in caught), [str(w.message) for w in caught]
    return records


def _clip(boxes: list[list[float]], w: float, h: float) -> np.ndarray:
    return np.clip(np.array(boxes, dtype=np.float64).reshape(-1, 4), 0, [w, h, w, h])


def _check(record: DetectionRecord, boxes: np.ndarray, labels: list[int]) -> None:
    assert record.labels.tolist() == labels
    np.testing.assert_allclose(record.boxes, boxes, atol=1e-4)


@st.composite
def coco_box(draw: st.DrawFn) -> list[float]:
    """``[x, y, w, h]`` with a corner inside the image and a size reaching into it (maybe out of it too)."""
    x, y = draw(st.floats(-4, W - 1).map(lambda v: round(v, 2))), draw(st.floats(-4, H - 1).map(lambda v: round(v, 2)))
    bw = draw(st.floats(max(0.5, 0.5 - x), 40).map(lambda v: round(v, 2)))
    bh = draw(st.floats(max(0.5, 0.5 - y), 30).map(lambda v: round(v, 2)))
    return [x, y, bw, bh]


@st.composite
def coco_valid(draw: st.DrawFn) -> tuple[dict[str, Any], list[str] | None]:
    ids = draw(st.lists(st.integers(1, 90), min_size=1, max_size=4, unique=True))
    objects = draw(st.lists(st.tuples(st.sampled_from(ids), coco_box(), st.sampled_from([0, 0, 0, 1])), max_size=6))
    anns = [
        {"id": i + 1, "image_id": 7, "category_id": c, "bbox": box, "iscrowd": crowd, "area": box[2] * box[3]}
        for i, (c, box, crowd) in enumerate(objects)
    ]
    data = {
        "images": [{"id": 7, "file_name": "a.png", "width": W, "height": H}],
        "annotations": anns,
        "categories": [{"id": c, "name": f"cat{c}"} for c in ids],
    }
    classes = draw(st.one_of(st.none(), st.permutations([f"cat{c}" for c in ids])))
    return data, classes


@VALID
@given(case=coco_valid())
def test_valid_coco_boxes_and_labels_round_trip(case: tuple[dict[str, Any], list[str] | None]) -> None:
    data, classes = case
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        _image(root)
        (root / "ann.json").write_text(json.dumps(data))
        (record,) = _records(DataConfig(format="coco", root=root, train="ann.json", classes=classes, image_size=32))
    names = classes or [f"cat{c['id']}" for c in sorted(data["categories"], key=lambda c: c["id"])]
    kept = [a for a in data["annotations"] if not a["iscrowd"]]
    xyxy = [[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in kept)]
    _check(record, _clip(xyxy, W, H), [names.index(f"cat{a['category_id']}") + 1 for a in kept])


@st.composite
def voc_object(draw: st.DrawFn) -> tuple[str, tuple[int, int, int, int]]:
    """A named box in pixels, inside the image or crossing its right and bottom edges."""
    x1, y1 = draw(st.integers(0, W - 1)), draw(st.integers(0, H - 1))
    x2, y2 = draw(st.integers(x1 + 1, W + 8)), draw(st.integers(y1 + 1, H + 8))
    return draw(st.sampled_from(["RBC", "WBC", "Platelets"])), (x1, y1, x2, y2)


@VALID
@given(
    objects=st.lists(voc_object(), max_size=6),
    classes=st.one_of(st.none(), st.permutations(["RBC", "WBC", "Platelets"])),
)
def test_valid_voc_boxes_and_labels_round_trip(
    objects: list[tuple[str, tuple[int, int, int, int]]], classes: list[str] | None
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        _image(root / "JPEGImages")
        (root / "Annotations").mkdir()
        (root / "Annotations" / "a.xml").write_text(voc_xml("a.png", (H, W), objects))
        (root / "ImageSets" / "Main").mkdir(parents=True)
        (root / "ImageSets" / "Main" / "train.txt").write_text("a\n")
        (record,) = _records(DataConfig(format="voc", root=root, classes=classes, image_size=32))
    names = classes or sorted({name for name, _ in objects})
    _check(record, _clip([list(box) for _, box in objects], W, H), [names.index(name) + 1 for name, _ in objects])


fraction = st.floats(0.05, 0.95)
yolo_box = st.tuples(st.integers(0, 2), fraction, fraction, st.floats(0.01, 1.0), st.floats(0.01, 1.0))
yolo_polygon = st.tuples(
    st.integers(0, 2), st.lists(st.tuples(st.floats(-0.2, 1.2), st.floats(-0.2, 1.2)), min_size=3, max_size=5)
).filter(lambda p: all(np.ptp(np.clip(v, 0, 1)) > 0.01 for v in zip(*p[1])))


@VALID
@given(objects=st.lists(st.one_of(yolo_box, yolo_polygon), max_size=6))
def test_valid_yolo_boxes_and_labels_round_trip(objects: list[tuple[Any, ...]]) -> None:
    lines, boxes = [], []
    for obj in objects:
        if len(obj) == 5:  # class cx cy w h
            cls, cx, cy, w, h = obj
            lines.append(f"{cls} {cx!r} {cy!r} {w!r} {h!r}")
            boxes.append([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])
        else:  # class x1 y1 x2 y2 ...: its bounding box
            cls, points = obj
            lines.append(f"{cls} " + " ".join(f"{v!r}" for point in points for v in point))
            xs, ys = zip(*points)
            boxes.append([min(xs), min(ys), max(xs), max(ys)])
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        _image(root / "images" / "train")
        (root / "labels" / "train").mkdir(parents=True)
        (root / "labels" / "train" / "a.txt").write_text("\n".join(lines))
        cfg = DataConfig(format="yolo", root=root, classes=["a", "b", "c"], train="images/train", image_size=32)
        (record,) = _records(cfg)
    assert record.normalized
    _check(record, _clip(boxes, 1, 1), [obj[0] + 1 for obj in objects])
