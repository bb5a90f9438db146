"""DataConfig validation: unknown keys, per-format split fields, augment names and arguments."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from resbackbone.data import DataConfig, SplitSpec, build_dataset, class_names


def test_unknown_key_is_an_error_with_its_path() -> None:
    with pytest.raises(ValidationError, match=r"clases\n  Extra inputs are not permitted"):
        DataConfig.model_validate({"format": "voc", "root": "x", "clases": ["a"]})
    with pytest.raises(ValidationError, match=r"train\.SplitSpec\.anotations"):
        DataConfig.model_validate({"format": "coco", "root": "x", "train": {"anotations": "a.json"}})


@pytest.mark.parametrize(
    ("fmt", "value", "expected"),
    [
        ("coco", "ann/train.json", SplitSpec(annotations=Path("ann/train.json"))),
        ("voc", "trainval", SplitSpec(list=Path("ImageSets/Main/trainval.txt"))),
        ("voc", "lists/mine.txt", SplitSpec(list=Path("lists/mine.txt"))),
        ("voc_seg", "val", SplitSpec(list=Path("ImageSets/Segmentation/val.txt"))),
        ("yolo", "images/train", SplitSpec(images=Path("images/train"))),
        ("yolo", "train.txt", SplitSpec(list=Path("train.txt"))),
        ("mask_folder", "train", SplitSpec(list=Path("train.txt"))),
    ],
    ids=lambda v: str(v) if isinstance(v, str) else None,
)
def test_short_split_forms(fmt: str, value: str, expected: SplitSpec) -> None:
    assert DataConfig(format=fmt, root="r", train=value).split_spec("train") == expected  # type: ignore[arg-type]


def test_split_fields_must_fit_the_format() -> None:
    with pytest.raises(ValidationError, match=r"data\.train\.masks is not used by format 'coco'"):
        DataConfig(format="coco", root="r", train={"annotations": "a.json", "masks": "m"})
    with pytest.raises(ValidationError, match=r"data\.val\.annotations is required for format 'coco'"):
        DataConfig(format="coco", root="r", val={"images": "i"})
    with pytest.raises(ValidationError, match=r"exactly one of images .* or list"):
        DataConfig(format="yolo", root="r", train={"images": "i", "list": "l.txt"})


def test_root_and_shapes_rules() -> None:
    with pytest.raises(ValidationError, match=r"data\.root is required for format 'voc'"):
        DataConfig(format="voc")
    with pytest.raises(ValidationError, match=r"data\.classes cannot be set for format 'shapes'"):
        DataConfig(format="shapes", classes=["a"])
    assert DataConfig(format="shapes").size_hw == (128, 128)
    assert DataConfig(format="voc", root="r", image_size=[96, 128]).size_hw == (96, 128)
    with pytest.raises(ValidationError, match=r"image_size 4 is too small"):
        DataConfig(format="shapes", image_size=4)


def test_relative_root_resolves_against_base_dir(tmp_path: Path) -> None:
    cfg = DataConfig(format="voc", root="data/voc")
    assert cfg.resolve_root(tmp_path) == tmp_path / "data" / "voc"
    assert DataConfig(format="voc", root=str(tmp_path)).resolve_root("/elsewhere") == tmp_path


def test_class_map_checks() -> None:
    with pytest.raises(ValidationError, match=r"class_map maps 3 to 'car', which is not in data\.classes"):
        DataConfig(format="mask_folder", root="r", classes=["bg", "road"], class_map={0: "bg", 3: "car"})
    with pytest.raises(ValidationError, match=r"class_map applies to mask formats"):
        DataConfig(format="voc", root="r", class_map={0: 0})
    with pytest.raises(ValidationError, match=r"class index 5; expected 0\.\.1"):
        DataConfig(format="mask_folder", root="r", class_map={0: 5})


def test_classes_must_be_distinct() -> None:
    with pytest.raises(ValidationError, match=r"distinct non-empty names.*'cat'"):
        DataConfig(format="voc", root="r", classes=["cat", "dog", "cat"])


def test_unknown_augmentation_suggests_close_matches() -> None:
    with pytest.raises(
        ValidationError,
        match=r"Unknown augmentation 'HorizonalFlip' in data\.augment\[0\]\. Close "
        r"matches: 'HorizontalFlip'",
    ):
        DataConfig(format="shapes", augment=[{"name": "HorizonalFlip", "p": 0.5}])


def test_unknown_augmentation_argument_is_an_error() -> None:
    with pytest.raises(
        ValidationError,
        match=r"data\.augment\[1\]: HorizontalFlip has no argument 'prob'\. Close "
        r"matches: 'p'",
    ):
        DataConfig(format="shapes", augment=[{"name": "VerticalFlip"}, {"name": "HorizontalFlip", "prob": 0.5}])


def test_invalid_augmentation_value_and_forbidden_transforms() -> None:
    with pytest.raises(ValidationError, match=r"data\.augment\[0\]: RandomCrop\(height=-1, width=8\) is invalid"):
        DataConfig(format="shapes", augment=[{"name": "RandomCrop", "height": -1, "width": 8}])
    with pytest.raises(ValidationError, match=r"Normalize is added by the loader"):
        DataConfig(format="shapes", augment=[{"name": "Normalize"}])
    with pytest.raises(ValidationError, match=r"data\.augment\[0\] must be a mapping with a 'name'"):
        DataConfig(format="shapes", augment=[{"p": 0.5}])
    with pytest.raises(ValidationError, match=r"augment\.0\n  Input should be a valid dictionary"):
        DataConfig(format="shapes", augment=["HorizontalFlip"])  # type: ignore[list-item]
    with pytest.raises(ValidationError, match=r"works on volumes, not on 2-D images"):
        DataConfig(format="shapes", augment=[{"name": "CubicSymmetry"}])


def test_nested_compositions() -> None:
    cfg = DataConfig(
        format="shapes",
        augment=[{"name": "OneOf", "p": 0.3, "transforms": [{"name": "Blur"}, {"name": "GaussNoise"}]}],
    )
    assert cfg.augment[0]["name"] == "OneOf"
    with pytest.raises(ValidationError, match=r"Unknown augmentation 'Blurr' in data\.augment\[0\]\.transforms\[1\]"):
        DataConfig(format="shapes", augment=[{"name": "OneOf", "transforms": [{"name": "Blur"}, {"name": "Blurr"}]}])


def test_task_must_fit_the_format(tmp_path: Path) -> None:
    cfg = DataConfig(format="voc", root=tmp_path)
    with pytest.raises(ValueError, match=r"'voc' provides detection labels, not segmentation"):
        class_names(cfg, "segmentation")
    with pytest.raises(ValueError, match=r"'mask_folder' provides segmentation labels, not detection"):
        build_dataset(
            DataConfig(format="mask_folder", root=tmp_path), "train", task="detection", train=False,
            mean=(0.5,) * 3, std=(0.5,) * 3,
        )  # fmt: skip
    with pytest.raises(ValueError, match=r"must have in_chans=1 values"):
        build_dataset(cfg, "train", task="detection", train=False, mean=(0.5,) * 3, std=(0.5,) * 3, in_chans=1)


def test_config_round_trips_through_model_dump() -> None:
    cfg = DataConfig(format="coco", root="r", train={"annotations": "a.json", "list": None}, val="v.json")
    again = DataConfig.model_validate(cfg.model_dump(by_alias=True))
    assert again == cfg
