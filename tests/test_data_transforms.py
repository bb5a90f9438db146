"""Transforms keep boxes and masks aligned with the pixels, sizes exact, eval deterministic."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import albumentations as A
import numpy as np
import pytest
import torch

from resbackbone.data import DataConfig, build_dataset, build_transforms

from .data_writers import picture, write_coco, write_mask_folder

MEAN, STD = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
BRIGHT = 220 / 255


def _coco(tmp_path: Path, **cfg: object) -> DataConfig:
    write_coco(tmp_path, "train", [("a.png", (48, 64), [(1, (4, 6, 20, 30)), (2, (40, 10, 60, 40))])], {1: "a", 2: "b"})
    spec = {"annotations": "annotations/train.json", "images": "images/train"}
    return DataConfig(format="coco", root=tmp_path, train=spec, **cfg)


def _det(cfg: DataConfig, *, train: bool, mean=MEAN, std=STD):  # type: ignore[no-untyped-def]
    return build_dataset(cfg, "train", task="detection", train=train, mean=mean, std=std)


def _covers_object(image: torch.Tensor, boxes: torch.Tensor) -> None:
    """Each box's pixels are bright (the drawn object) and the rest of the image is dark."""
    covered = torch.zeros(image.shape[1:], dtype=torch.bool)
    for x1, y1, x2, y2 in boxes.round().int().tolist():
        region = image[:, y1:y2, x1:x2]
        assert region.numel() > 0 and region.mean() > BRIGHT - 0.05, (x1, y1, x2, y2)
        covered[y1:y2, x1:x2] = True
    assert image[:, ~covered].max() < 0.5  # nothing bright outside the boxes


def test_horizontal_flip_moves_boxes_with_the_object(tmp_path: Path) -> None:
    cfg = _coco(tmp_path, image_size=(48, 64), augment=[{"name": "HorizontalFlip", "p": 1.0}])
    image, target = _det(cfg, train=True)[0]
    torch.testing.assert_close(target["boxes"], torch.tensor([[44.0, 6, 60, 30], [4, 10, 24, 40]]))
    assert target["labels"].tolist() == [1, 2]
    _covers_object(image, target["boxes"])


@pytest.mark.parametrize("seed", range(4))
def test_random_geometry_keeps_boxes_on_their_objects(tmp_path: Path, seed: int) -> None:
    cfg = _coco(
        tmp_path,
        image_size=48,
        augment=[
            {"name": "Affine", "scale": [0.7, 1.3], "translate_percent": [-0.1, 0.1], "p": 1.0},
            {"name": "VerticalFlip", "p": 0.5},
            {"name": "RandomScale", "scale_limit": 0.3, "p": 1.0},
        ],
    )
    torch.manual_seed(seed)
    image, target = _det(cfg, train=True)[0]
    assert image.shape == (3, 48, 48)  # random crop / pad back to image_size
    boxes = target["boxes"]
    assert len(boxes) == len(target["labels"]) and len(boxes) >= 1
    assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
    assert boxes.min() >= 0 and boxes[:, [0, 2]].max() <= 48 and boxes[:, [1, 3]].max() <= 48
    for x1, y1, x2, y2 in boxes.round().int().tolist():
        if (x2 - x1) > 2 and (y2 - y1) > 2:
            assert image[:, y1 + 1 : y2 - 1, x1 + 1 : x2 - 1].mean() > BRIGHT - 0.1


def test_crop_drops_boxes_that_leave_the_image(tmp_path: Path) -> None:
    cfg = _coco(
        tmp_path, image_size=(48, 64), augment=[{"name": "Crop", "x_min": 0, "y_min": 0, "x_max": 30, "y_max": 48}]
    )
    image, target = _det(cfg, train=True)[0]
    assert image.shape == (3, 48, 64)  # padded back to image_size after the crop
    assert target["labels"].tolist() == [1]  # the object at x=40..60 was cropped away
    torch.testing.assert_close(target["boxes"], torch.tensor([[4.0, 6, 20, 30]]))


def test_segmentation_flip_keeps_mask_aligned(tmp_path: Path) -> None:
    mask = np.zeros((32, 40), np.uint8)
    mask[4:12, 2:10] = 255
    write_mask_folder(tmp_path, {"a": (picture(32, 40, [(2, 4, 10, 12)]), mask)}, {"train": ["a"]})
    cfg = DataConfig(
        format="mask_folder",
        root=tmp_path,
        image_size=(32, 40),
        augment=[{"name": "HorizontalFlip", "p": 1.0}, {"name": "Affine", "rotate": [-30, 30], "p": 1.0}],
    )
    torch.manual_seed(0)
    image, out = build_dataset(cfg, "train", task="segmentation", train=True, mean=MEAN, std=STD)[0]
    assert (out == 1).nonzero()[:, 1].float().mean() > 20  # moved to the right-hand half (x 2-10 before)
    bright, labelled = image[0] > 0.5, out == 1
    iou = (bright & labelled).sum() / (bright | labelled).sum()
    assert iou > 0.85  # edges are interpolated in the image, nearest in the mask


def _centre(weights: np.ndarray) -> np.ndarray:
    ys, xs = np.mgrid[: weights.shape[0], : weights.shape[1]]
    return np.array([(ys * weights).sum(), (xs * weights).sum()]) / weights.sum()


@pytest.mark.parametrize(
    ("resize", "augment"),
    [
        ("letterbox", []),  # 1.84x up
        ("stretch", []),
        ("letterbox", [{"name": "RandomScale", "scale_limit": [-0.3, -0.3], "p": 1.0}]),  # then 0.7x down
        ("letterbox", [{"name": "RandomResizedCrop", "size": [96, 128], "scale": [0.5, 0.5], "p": 1.0}]),
    ],
)
def test_resized_masks_stay_on_their_pixels(resize: str, augment: list[dict[str, object]]) -> None:
    """A mask is resized to the same pixels as its image: cv2's INTER_NEAREST (albumentations' default)
    moved it about half a pixel down and right at every scale."""
    ys, xs = np.mgrid[:100, :120]
    blob = np.exp(-((ys - 40.3) ** 2 + (xs - 60.7) ** 2) / 200)
    image = np.repeat((blob * 255).round().astype(np.uint8)[..., None], 3, axis=2)
    mask = (blob > 0.5).astype(np.uint8)
    cfg = DataConfig(format="shapes", image_size=(184, 221), resize=resize, augment=augment)
    transform = build_transforms(cfg, task="segmentation", train=True, mask_fill=0)
    transform.set_random_seed(0)
    out = transform(image=image, mask=mask)
    seen = out["image"][..., 0].astype(np.float64) / 255
    drawn = (seen > 0.5).astype(np.float64)  # the mask the image's own pixels give
    assert np.abs(_centre(out["mask"].astype(np.float64)) - _centre(drawn)).max() < 0.3  # nearest: 0.4-1.1


def test_augmentations_draw_independently(tmp_path: Path) -> None:
    """Flips and turns at p=0.5 reach all 8 symmetries of a square, as independent draws do: RandomRotate90
    turns by 0-3 quarters, so the identity, the two flips and the half turn come 3/16 of the time each and
    the rest 1/16.

    Reseeded per item with ``Compose.set_random_seed``, every transform got a generator with the
    same seed and the same first draw: they fired together or not at all (4 outcomes, 57 % none)."""
    image = np.arange(64, dtype=np.uint8).reshape(8, 8, 1).repeat(3, axis=2)
    write_mask_folder(tmp_path, {"x": (image, np.zeros((8, 8), np.uint8))}, {"train": ["x"]})
    augment = [{"name": n, "p": 0.5} for n in ("HorizontalFlip", "VerticalFlip", "RandomRotate90")]
    ds = build_dataset(
        DataConfig(format="mask_folder", root=tmp_path, image_size=8, augment=augment),
        "train", task="segmentation", train=True, mean=MEAN, std=STD,
    )  # fmt: skip
    torch.manual_seed(0)
    corners = Counter(tuple(ds[0][0][0, [0, 0, -1], [0, -1, 0]].mul(255).round().int().tolist()) for _ in range(400))
    counts = sorted(corners.values())
    assert len(counts) == 8, corners
    assert all(8 <= n <= 45 for n in counts[:4]) and all(50 <= n <= 100 for n in counts[4:]), corners  # 25, 75


def test_eval_is_deterministic_and_pads_with_ignore_index(tmp_path: Path) -> None:
    mask = np.zeros((20, 40), np.uint8)
    write_mask_folder(tmp_path, {"a": (picture(20, 40), mask)}, {"val": ["a"]})
    cfg = DataConfig(format="mask_folder", root=tmp_path, image_size=32, augment=[{"name": "HorizontalFlip"}])
    ds = build_dataset(cfg, "val", task="segmentation", train=False, mean=MEAN, std=STD)
    (x1, m1), (x2, m2) = ds[0], ds[0]
    assert torch.equal(x1, x2) and torch.equal(m1, m2)
    assert x1.shape == (3, 32, 32)
    assert (m1[:16] == 0).all() and (m1[16:] == 255).all()  # 40x20 -> 32x16 content, padded below


def test_stretch_resize(tmp_path: Path) -> None:
    cfg = _coco(tmp_path, image_size=(24, 32), resize="stretch")
    image, target = _det(cfg, train=False)[0]
    assert image.shape == (3, 24, 32)
    torch.testing.assert_close(target["boxes"][0], torch.tensor([2.0, 3, 10, 15]))


def test_augmentation_is_reproducible_from_torch_seed(tmp_path: Path) -> None:
    cfg = _coco(tmp_path, image_size=48, augment=[{"name": "Affine", "rotate": [-40, 40], "p": 1.0}])
    ds = _det(cfg, train=True)
    runs = []
    for seed in (1, 1, 2):
        torch.manual_seed(seed)
        runs.append(ds[0][1]["boxes"])
    assert torch.equal(runs[0], runs[1]) and not torch.equal(runs[0], runs[2])


def test_normalisation_uses_mean_and_std_of_0_1_pixels(tmp_path: Path) -> None:
    cfg = _coco(tmp_path, image_size=(48, 64))
    image, _ = _det(cfg, train=False, mean=(0.1, 0.2, 0.3), std=(0.5, 0.25, 0.1))[0]
    dark = 30 / 255
    torch.testing.assert_close(
        image[:, 0, 0], torch.tensor([(dark - 0.1) / 0.5, (dark - 0.2) / 0.25, (dark - 0.3) / 0.1])
    )


def test_transform_that_cannot_move_boxes_is_refused_for_detection(monkeypatch: pytest.MonkeyPatch) -> None:
    from albumentations.core.type_definitions import Targets

    class MaskOnlyWarp(A.DualTransform):
        _targets = (Targets.IMAGE, Targets.MASK)

    monkeypatch.setattr(A, "MaskOnlyWarp", MaskOnlyWarp, raising=False)
    cfg = DataConfig(format="shapes", augment=[{"name": "MaskOnlyWarp"}])
    with pytest.raises(ValueError, match=r"MaskOnlyWarp cannot move bounding boxes"):
        build_transforms(cfg, task="detection", train=True)
    assert isinstance(build_transforms(cfg, task="segmentation", train=True), A.Compose)


def test_crop_size_crops_training_and_keeps_eval_whole() -> None:
    import numpy as np

    from resbackbone.data import DataConfig, build_transforms

    cfg = DataConfig(format="shapes", image_size=128, crop_size=64)
    image, mask = np.zeros((100, 90, 3), np.uint8), np.zeros((100, 90), np.uint8)
    assert build_transforms(cfg, task="segmentation", train=True)(image=image, mask=mask)["image"].shape == (64, 64, 3)
    assert build_transforms(cfg, task="segmentation", train=False)(image=image, mask=mask)["image"].shape == (
        128,
        128,
        3,
    )
    assert DataConfig(format="shapes", image_size=64, crop_size=256).crop_hw == (64, 64)
