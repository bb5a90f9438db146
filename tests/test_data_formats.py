"""Every format written here in tmp_path and read back through build_dataset."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from resbackbone.data import DataConfig, DataError, build_dataset, class_names, read_image, read_mask
from resbackbone.data.images import apply_window, stretch_percentiles

from .data_writers import palette_png, picture, save, write_coco, write_mask_folder, write_voc, write_yolo

MEAN, STD = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)


def _load(cfg: DataConfig, split: str = "train", *, task: str = "detection", in_chans: int = 3, **kw):
    return build_dataset(
        cfg, split, task=task, train=False, mean=MEAN[:in_chans], std=STD[:in_chans], in_chans=in_chans, **kw
    )


# --- COCO ---------------------------------------------------------------------------------


def test_coco_detection_round_trip(tmp_path: Path) -> None:
    write_coco(
        tmp_path,
        "train",
        [("a.png", (64, 64), [(7, (8, 8, 24, 40)), (3, (30, 10, 60, 20))]), ("b.png", (64, 64), [])],
        {3: "cat", 7: "dog"},
    )
    cfg = DataConfig(
        format="coco", root=tmp_path, train={"annotations": "annotations/train.json", "images": "images/train"}
    )
    assert class_names(cfg, "detection") == ["cat", "dog"]  # sorted by category id
    ds = _load(cfg.model_copy(update={"image_size": 64}))
    image, target = ds[0]
    assert image.shape == (3, 64, 64)
    torch.testing.assert_close(target["boxes"], torch.tensor([[8.0, 8, 24, 40], [30, 10, 60, 20]]))
    assert target["labels"].tolist() == [2, 1]
    assert target["image_id"] == 1 and target["orig_size"] == (64, 64) and target["path"].endswith("a.png")
    empty = ds[1][1]
    assert empty["boxes"].shape == (0, 4) and empty["labels"].dtype == torch.int64


def test_coco_resize_scales_boxes_and_classes_order(tmp_path: Path) -> None:
    write_coco(tmp_path, "val", [("a.png", (48, 64), [(1, (8, 8, 24, 40))])], {1: "cat", 2: "dog"})
    cfg = DataConfig(
        format="coco",
        root=tmp_path,
        classes=["dog", "cat"],
        image_size=32,
        val={"annotations": "annotations/val.json", "images": "images/val"},
    )
    image, target = _load(cfg, "val")[0]
    assert image.shape == (3, 32, 32)  # letterboxed: 24x32 content, padded at the bottom
    torch.testing.assert_close(target["boxes"], torch.tensor([[4.0, 4, 12, 20]]))
    assert target["labels"].tolist() == [2]  # 'cat' is the second name in classes
    assert image[:, 24:, :].abs().max() == 0  # padding is zero


def test_coco_segmentation_rasterises_polygons(tmp_path: Path) -> None:
    write_coco(tmp_path, "train", [("a.png", (32, 32), [(5, (4, 4, 12, 20))])], {5: "blob"}, with_polygons=True)
    cfg = DataConfig(
        format="coco",
        root=tmp_path,
        image_size=32,
        train={"annotations": "annotations/train.json", "images": "images/train"},
    )
    assert class_names(cfg, "segmentation") == ["background", "blob"]
    _, mask = _load(cfg, task="segmentation")[0]
    assert mask.dtype == torch.int64 and set(mask.unique().tolist()) == {0, 1}
    assert mask[8, 8] == 1 and mask[25, 25] == 0


def test_coco_paths_outside_root_are_refused_unless_allowed(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    save(tmp_path / "outside.png", picture(16, 16))
    write_coco(root, "train", [("../../../outside.png", (16, 16), [])], {1: "x"}, draw=False)
    spec = {"annotations": "annotations/train.json", "images": "images/train"}
    with pytest.raises(DataError, match=r"outside the dataset root.*allow_outside_root"):
        _load(DataConfig(format="coco", root=root, train=spec))
    ds = _load(DataConfig(format="coco", root=root, train=spec, allow_outside_root=True))
    assert ds[0][1]["path"] == str(tmp_path / "outside.png")


# --- VOC ----------------------------------------------------------------------------------


def test_voc_round_trip_with_inferred_classes(tmp_path: Path) -> None:
    write_voc(
        tmp_path,
        {
            "train": [("img1", (40, 50), [("zebra", (5, 5, 20, 30)), ("ant", (25, 2, 45, 12))])],
            "val": [("img2", (40, 50), [("bee", (1, 1, 9, 9))])],
        },
    )
    cfg = DataConfig(format="voc", root=tmp_path, image_size=(40, 50))
    assert class_names(cfg, "detection") == ["ant", "bee", "zebra"]  # all splits, sorted
    _, target = _load(cfg, "train")[0]  # the split defaults to ImageSets/Main/train.txt
    assert target["labels"].tolist() == [3, 1]
    torch.testing.assert_close(target["boxes"], torch.tensor([[5.0, 5, 20, 30], [25, 2, 45, 12]]))
    explicit = DataConfig(format="voc", root=tmp_path, classes=["zebra", "ant", "bee"], val="val")
    assert _load(explicit, "val")[0][1]["labels"].tolist() == [3]


# --- YOLO ---------------------------------------------------------------------------------


def test_yolo_round_trip_folder_and_list(tmp_path: Path) -> None:
    write_yolo(tmp_path, "train", [("a", (40, 80), [(1, (8, 4, 40, 20))]), ("b", (40, 80), None)])
    (tmp_path / "data.yaml").write_text("names: {0: person, 1: car}\n")
    cfg = DataConfig(format="yolo", root=tmp_path, image_size=(40, 80), train="images/train")
    assert class_names(cfg, "detection") == ["person", "car"]
    ds = _load(cfg)
    _, target = ds[0]
    torch.testing.assert_close(target["boxes"], torch.tensor([[8.0, 4, 40, 20]]), atol=1e-3, rtol=0)
    assert target["labels"].tolist() == [2]
    assert ds[1][1]["boxes"].shape == (0, 4)  # no label file: background image
    (tmp_path / "train.txt").write_text("images/train/a.png\n")
    listed = DataConfig(format="yolo", root=tmp_path, classes=["p", "c"], image_size=(40, 80), train="train.txt")
    assert len(_load(listed)) == 1


def test_yolo_polygon_line_gives_its_bounding_box(tmp_path: Path) -> None:
    write_yolo(tmp_path, "train", [("a", (100, 100), [])])
    (tmp_path / "labels" / "train" / "a.txt").write_text("0 0.1 0.2 0.5 0.2 0.3 0.6\n")
    cfg = DataConfig(format="yolo", root=tmp_path, classes=["tri"], image_size=100, train="images/train")
    _, target = _load(cfg)[0]
    torch.testing.assert_close(target["boxes"], torch.tensor([[10.0, 20, 50, 60]]), atol=1e-3, rtol=0)


def test_yolo_without_names_is_an_error(tmp_path: Path) -> None:
    write_yolo(tmp_path, "train", [("a", (20, 20), [])])
    with pytest.raises(DataError, match=r"data\.yaml does not exist; list the names in data\.classes"):
        class_names(DataConfig(format="yolo", root=tmp_path, train="images/train"), "detection")


# --- mask folders and VOC segmentation ----------------------------------------------------


def test_mask_folder_binary_255_masks(tmp_path: Path) -> None:
    mask = np.zeros((32, 48), np.uint8)
    mask[4:10, 6:20] = 255
    write_mask_folder(tmp_path, {"x": (picture(32, 48), mask)}, {"train": ["x"]})
    cfg = DataConfig(format="mask_folder", root=tmp_path, image_size=(32, 48))
    assert class_names(cfg, "segmentation") == ["background", "foreground"]
    image, out = _load(cfg, task="segmentation")[0]
    assert image.shape == (3, 32, 48) and out.shape == (32, 48)
    assert out.sum() == 6 * 14 and out[5, 7] == 1


def test_mask_folder_index_masks_with_class_map_and_ignore(tmp_path: Path) -> None:
    mask = np.zeros((16, 16), np.uint8)
    mask[0:4] = 10
    mask[4:8] = 20
    mask[8:10] = 99
    write_mask_folder(tmp_path, {"a": (picture(16, 16), mask)}, {})
    cfg = DataConfig(
        format="mask_folder",
        root=tmp_path,
        classes=["bg", "road", "car"],
        class_map={0: "bg", 10: "road", 20: 2, 99: "ignore"},
        ignore_index=-1,
        image_size=16,
        train={"images": "images", "masks": "masks"},  # no list: every image of the folder
    )
    _, out = _load(cfg, task="segmentation")[0]
    assert out[0, 0] == 1 and out[5, 0] == 2 and out[9, 0] == -1 and out[12, 0] == 0


def test_voc_seg_palette_masks_boundary_is_ignored(tmp_path: Path) -> None:
    mask = np.zeros((20, 20), np.uint8)
    mask[2:8, 2:8] = 15  # person
    mask[8, 2:8] = 255  # boundary
    palette_png(tmp_path / "SegmentationClass" / "2007_1.png", mask)
    save(tmp_path / "JPEGImages" / "2007_1.jpg", picture(20, 20))
    (tmp_path / "ImageSets" / "Segmentation").mkdir(parents=True)
    (tmp_path / "ImageSets" / "Segmentation" / "val.txt").write_text("2007_1\n")
    assert Image.open(tmp_path / "SegmentationClass" / "2007_1.png").mode == "P"
    cfg = DataConfig(format="voc_seg", root=tmp_path, image_size=20)
    names = class_names(cfg, "segmentation")
    assert len(names) == 21 and names[15] == "person"
    _, out = _load(cfg, "val", task="segmentation")[0]
    assert out[3, 3] == 15 and out[8, 3] == 255 and out[0, 0] == 0


# --- image modes --------------------------------------------------------------------------


def test_image_modes(tmp_path: Path) -> None:
    gray16 = np.full((6, 8), 65535 // 2, np.uint16)
    assert Image.fromarray(gray16).mode.startswith("I;16")
    g = read_image(save(tmp_path / "g16.png", gray16))
    assert g.shape == (6, 8, 3) and g.dtype == np.float32 and abs(float(g.mean()) - 0.5) < 1e-3
    assert read_image(tmp_path / "g16.png", in_chans=1).shape == (6, 8, 1)
    rgba = np.zeros((6, 8, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 7
    r = read_image(save(tmp_path / "rgba.png", rgba))
    assert r.shape == (6, 8, 3) and r.dtype == np.uint8 and r[0, 0].tolist() == [200, 0, 0]
    gray = read_image(save(tmp_path / "gray.png", np.full((6, 8), 90, np.uint8)))
    assert gray.shape == (6, 8, 3) and (gray == 90).all()
    lum = read_image(save(tmp_path / "rgb.png", np.full((6, 8, 3), [100, 100, 100], np.uint8)), in_chans=1)
    assert lum.shape == (6, 8, 1) and int(lum[0, 0, 0]) == 100


def test_16bit_rgb_keeps_its_precision(tmp_path: Path) -> None:
    import cv2

    arr = np.zeros((4, 4, 3), np.uint16)
    arr[..., 0] = 1000  # red, 16-bit
    cv2.imwrite(str(tmp_path / "deep.png"), arr[..., ::-1])  # cv2 writes BGR
    out = read_image(tmp_path / "deep.png")
    assert out.dtype == np.float32 and abs(float(out[0, 0, 0]) - 1000 / 65535) < 1e-6 and out[0, 0, 2] == 0


def test_16bit_images_load_through_the_dataset(tmp_path: Path) -> None:
    image = picture(16, 16)[..., 0].astype(np.uint16) * 256
    save(tmp_path / "images" / "a.png", image)
    save(tmp_path / "masks" / "a.png", np.zeros((16, 16), np.uint8))
    cfg = DataConfig(format="mask_folder", root=tmp_path, image_size=16, train={"images": "images"})
    x, _ = _load(cfg, task="segmentation", in_chans=1)[0]
    assert x.shape == (1, 16, 16) and abs(float(x.max()) - 30 * 256 / 65535) < 1e-3


def test_stretch_percentiles_maps_the_percentiles_to_black_and_white() -> None:
    ramp = np.arange(101, dtype=np.uint8).reshape(1, 101, 1) + 20  # 20..120: a dim image
    out = stretch_percentiles(ramp, 10, 90)  # the 10th percentile is 30, the 90th 110
    assert out.dtype == np.uint8
    assert out[0, 10, 0] == 0 and out[0, 90, 0] == 255 and out[0, 50, 0] == 128
    assert out[0, :10].max() == 0 and out[0, 91:].min() == 255  # clipped outside
    deep = ramp.astype(np.float32) / 255  # a 16-bit image reads as float: it stays float, unquantised
    stretched = stretch_percentiles(deep, 10, 90)
    assert stretched.dtype == np.float32 and abs(float(stretched[0, 30, 0]) - 0.25) < 1e-5
    # the channels share one stretch (colour kept); alpha neither counts nor changes; a flat image is black
    alpha = np.full_like(ramp[..., 0], 200)
    rgba = np.stack([ramp[..., 0], ramp[..., 0] // 2, ramp[..., 0] // 4, alpha], -1)
    colour = stretch_percentiles(rgba, 0, 100)
    assert colour.shape == (1, 101, 4) and np.array_equal(colour[..., 3], alpha)
    assert colour[0, -1, 0] == 255 and colour[0, -1, 2] < colour[0, -1, 1] < 255
    assert not stretch_percentiles(np.full((4, 4, 3), 77, np.uint8), 1, 99.8).any()
    holed = deep.copy()
    holed[0, 0, 0] = np.nan  # a NaN pixel neither spoils the percentiles nor survives
    patched = stretch_percentiles(holed, 10, 90)
    assert patched[0, 0, 0] == 0 and abs(float(patched[0, 30, 0]) - 0.25) < 0.02
    with pytest.raises(ValueError, match=r"percentiles \(50, 10\) must satisfy 0 <= low < high <= 100"):
        stretch_percentiles(ramp, 50, 10)


def test_intensity_percentiles_reach_training_and_evaluation(tmp_path: Path) -> None:
    dim = np.tile((np.arange(48, dtype=np.uint8) // 2)[None, :, None], (32, 1, 3))  # a dark acquisition: 0..23
    write_mask_folder(tmp_path, {"x": (dim, np.zeros((32, 48), np.uint8))}, {"train": ["x"]})
    plain = DataConfig(format="mask_folder", root=tmp_path, image_size=(32, 48))
    stretched = plain.model_copy(update={"intensity_percentiles": (1.0, 99.8)})
    assert abs(float(_load(plain, task="segmentation")[0][0].max()) - 23 / 255) < 1e-6
    for train in (False, True):
        ds = build_dataset(stretched, "train", task="segmentation", train=train, mean=MEAN, std=STD)
        x = ds[0][0]
        assert float(x.max()) == 1.0 and float(x.min()) == 0.0
    with pytest.raises(ValueError, match=r"intensity_percentiles \[99.0, 1.0\] must be \[low, high\]"):
        DataConfig(format="mask_folder", root=tmp_path, intensity_percentiles=(99, 1))


def test_read_mask_rejects_colour_masks(tmp_path: Path) -> None:
    colour = np.zeros((4, 4, 3), np.uint8)
    colour[0, 0] = [255, 0, 0]
    with pytest.raises(DataError, match=r"colour.*single-channel index PNGs"):
        read_mask(save(tmp_path / "m.png", colour))
    assert read_mask(save(tmp_path / "g.png", np.full((4, 4, 3), 3, np.uint8))).tolist() == [[3] * 4] * 4


# --- DICOM --------------------------------------------------------------------------------


def test_dicom_without_pydicom_names_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pydicom", None)  # import fails even where it is installed
    (tmp_path / "scan.dcm").write_bytes(b"\0" * 200)
    with pytest.raises(ImportError, match=r"scan\.dcm.*pip install 'resbackbone\[medical\]'"):
        read_image(tmp_path / "scan.dcm")


def _fake_pydicom(monkeypatch: pytest.MonkeyPatch, **attrs: object) -> None:
    class Dataset:
        pixel_array = np.array([[0, 500], [1000, 2000]], np.uint16)
        RescaleSlope, RescaleIntercept, PhotometricInterpretation = 1, -1000, "MONOCHROME2"

    for k, v in attrs.items():
        setattr(Dataset, k, v)
    module = types.ModuleType("pydicom")
    module.dcmread = lambda path: Dataset()  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "pydicom", module)


def test_dicom_window_from_file_and_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "ct.dcm"
    path.write_bytes(b"DICM")
    _fake_pydicom(monkeypatch, WindowCenter=[0, 100], WindowWidth=[1000, 10])  # first window is used
    out = read_image(path, in_chans=1)  # HU: -1000, -500, 0, 1000
    assert out.shape == (2, 2, 1) and out.dtype == np.float32
    np.testing.assert_allclose(out[..., 0], [[0.0, 0.0], [0.5005, 1.0]], atol=1e-3)
    narrow = read_image(path, in_chans=1, window=(-500, 2))
    assert narrow[0, 0, 0] == 0 and narrow[1, 0, 0] == 1
    _fake_pydicom(monkeypatch, PhotometricInterpretation="MONOCHROME1")  # no window: min-max, inverted
    inv = read_image(path, in_chans=3)
    assert inv.shape == (2, 2, 3) and inv[0, 0, 0] == 1.0 and inv[1, 1, 0] == 0.0


def test_apply_window_is_the_dicom_linear_function() -> None:
    np.testing.assert_allclose(apply_window(np.array([-1000.0, 40.0, 1000.0]), 40, 400), [0, 0.50125, 1], atol=1e-5)


def test_detection_collate_with_a_dataloader(tmp_path: Path) -> None:
    from torch.utils.data import DataLoader

    from resbackbone.data import detection_collate

    write_coco(tmp_path, "train", [(f"{i}.png", (16, 24), [(1, (1, 1, 5, 5))] * i) for i in range(3)], {1: "x"})
    spec = {"annotations": "annotations/train.json", "images": "images/train"}
    cfg = DataConfig(format="coco", root=tmp_path, image_size=(16, 24), train=spec)
    images, targets = next(iter(DataLoader(_load(cfg), batch_size=3, collate_fn=detection_collate)))
    assert [tuple(x.shape) for x in images] == [(3, 16, 24)] * 3
    assert [len(t["boxes"]) for t in targets] == [0, 1, 2] and [t["image_id"] for t in targets] == [1, 2, 3]


def test_has_split_follows_the_conventional_places(tmp_path: Path) -> None:
    from resbackbone.data import has_split

    write_voc(tmp_path, {"train": [("a", (8, 8), [])], "val": [("b", (8, 8), [])]})
    cfg = DataConfig(format="voc", root=tmp_path)
    assert [has_split(cfg, s) for s in ("train", "val", "test")] == [True, True, False]
    assert has_split(DataConfig(format="shapes"), "test")
