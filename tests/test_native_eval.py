"""Metrics at each file's resolution, per-image results and readable overlays (engine.evaluate, engine.report)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import Tensor, nn

from resbackbone.data import DataConfig, build_dataset, detection_collate
from resbackbone.engine import Trainer, predict
from resbackbone.engine.evaluate import evaluate_model
from resbackbone.engine.image_log import ImageLog
from resbackbone.recipes import load_recipe

from .conftest import REPO_ROOT
from .data_writers import write_mask_folder
from .engine_data import tiny_overrides, write_dataset


class FixedLogits(nn.Module):
    """A toy segmenter: foreground on rows 0-7, columns 0-15 of a 32x32 input, whatever the image."""

    def forward(self, x: Tensor) -> Tensor:
        logits = torch.full((x.shape[0], 2, *x.shape[-2:]), -10.0)
        logits[:, 0] = 10.0
        logits[:, 1, :8, :16], logits[:, 0, :8, :16] = 10.0, -10.0
        return logits


def _one_image_dataset(tmp_path: Path, *, native: bool) -> object:
    mask = np.zeros((64, 64), np.uint8)
    mask[:21, :32] = 255  # 672 foreground pixels at the file's resolution
    write_mask_folder(tmp_path, {"a": (np.full((64, 64, 3), 128, np.uint8), mask)}, {"val": ["a"]})
    cfg = DataConfig(format="mask_folder", root=tmp_path, val="val", classes=["background", "nucleus"], image_size=32)
    return build_dataset(cfg, "val", task="segmentation", train=False, mean=(0.5,) * 3, std=(0.5,) * 3, native=native)


def test_native_dice_of_a_known_mask_pair_is_the_hand_computed_value(tmp_path: Path) -> None:
    """The model answers at 32 px for a 64 px file; its logits come back to 64 px before counting.

    Foreground rows 0-7 at 32 px, resized bilinearly to 64 px, are rows 0-15 (the logit changes sign
    between input rows 7 and 8, output row 15.5): 16 x 32 = 512 predicted pixels, all inside the
    672 of the mask. Dice = 2 * 512 / (512 + 672), IoU = 512 / 672.
    """
    dataset = _one_image_dataset(tmp_path, native=True)
    loader = torch.utils.data.DataLoader(dataset, batch_size=1, collate_fn=detection_collate)
    log = ImageLog()
    metrics = evaluate_model(
        FixedLogits(),
        loader,
        task="segmentation",
        classes=["background", "nucleus"],
        device=torch.device("cpu"),
        image_log=log,
    )
    assert metrics["dice/nucleus"] == pytest.approx(2 * 512 / (512 + 672), abs=1e-12)
    assert metrics["iou/nucleus"] == pytest.approx(512 / 672, abs=1e-12)
    assert log.rows[0]["image"] == "a.png" and (log.rows[0]["height"], log.rows[0]["width"]) == (64, 64)
    assert log.rows[0]["dice"] == pytest.approx(2 * 512 / (512 + 672), abs=1e-12)
    # at the model's resolution the mask is resized to 32 px first (rows 0-10): another number
    resized = _one_image_dataset(tmp_path, native=False)
    at_model = evaluate_model(
        FixedLogits(),
        torch.utils.data.DataLoader(resized, batch_size=1),
        task="segmentation",
        classes=["background", "nucleus"],
        device=torch.device("cpu"),
    )
    assert at_model["dice/nucleus"] != pytest.approx(metrics["dice/nucleus"], abs=1e-3)


def test_native_items_keep_targets_at_the_file_size(tmp_path: Path) -> None:
    sets = write_dataset("voc", tmp_path / "voc")
    recipe = load_recipe(REPO_ROOT / "recipes" / "bccd_faster_rcnn_cpu.yaml", overrides=[*sets, "data.image_size=32"])
    common = {"task": "detection", "train": False, "mean": (0.0,) * 3, "std": (1.0,) * 3}
    image, target = build_dataset(recipe.data, "val", native=True, **common)[0]
    _, resized = build_dataset(recipe.data, "val", **common)[0]
    assert image.shape == (3, 32, 32) and target["orig_size"] == (64, 64)
    torch.testing.assert_close(target["boxes"], resized["boxes"] * 2)
    with pytest.raises(ValueError, match=r"native=True\) is for evaluation; pass train=False"):
        build_dataset(recipe.data, "train", native=True, **{**common, "train": True})


@pytest.mark.parametrize(
    ("fmt", "recipe", "extra"),
    [
        (
            "mask_folder",
            "dsb2018_deeplabv3plus_cpu.yaml",
            ["eval.sliding_window={size: 32, overlap: 0.5}", "eval.tta=[hflip]"],
        ),
        ("voc", "bccd_faster_rcnn_cpu.yaml", ["data.crop_size=32", "eval.tiles={overlap: 0.5}", "eval.tta=[vflip]"]),
    ],
    ids=["segmentation-windows", "detection-tiles"],
)
def test_a_run_reports_native_results_per_image_with_readable_overlays(
    fmt: str, recipe: str, extra: list[str], tmp_path: Path
) -> None:
    overrides = write_dataset(fmt, tmp_path / "data") + tiny_overrides(tmp_path / "run") + ["run.overlays=2", *extra]
    summary = Trainer(load_recipe(REPO_ROOT / "recipes" / recipe, overrides=overrides), progress=False).fit()
    assert summary["evaluation"].startswith("native resolution; ")
    assert "TTA" in summary["evaluation"] and summary["test"]["images_per_s"] > 0
    run = tmp_path / "run"
    rows = list(csv.DictReader((run / "test_per_image.csv").open()))
    assert [r["image"] for r in rows] == ["test0.png", "test1.png"]
    assert {"dice", "iou"} <= set(rows[0]) if fmt == "mask_folder" else {"tp", "fp", "fn"} <= set(rows[0])
    worst = sorted((run / "overlays").glob("worst_test_*.png"))
    assert len(worst) == 2 and len(list((run / "overlays").glob("val_*.png"))) == 2
    for path in worst:
        w, h = Image.open(path).size
        assert w >= 2 * 384 and h >= 384  # ground truth beside prediction, each at least 384 px
    assert json.loads((run / "summary.json").read_text())["files"]["test_per_image"].endswith("test_per_image.csv")


def test_predict_answers_at_the_file_resolution_with_windows(tmp_path: Path) -> None:
    overrides = write_dataset("mask_folder", tmp_path / "data") + tiny_overrides(tmp_path / "run")
    recipe = load_recipe(
        REPO_ROOT / "recipes" / "dsb2018_deeplabv3plus_cpu.yaml",
        overrides=[
            *overrides,
            "data.image_size=32",
            "eval.sliding_window={size: 32}",
            "eval.tta=[rot90]",
            "run.overlays=0",
        ],
    )
    Trainer(recipe, progress=False).fit()
    image = np.zeros((40, 100, 3), np.uint8)  # another aspect and size than the training images
    Image.fromarray(image).save(tmp_path / "wide.png")
    out = predict(tmp_path / "run" / "best.pt", [tmp_path / "wide.png"], tmp_path / "pred", device="cpu")
    assert out.written == 1 and not out.skipped
    (record,) = [r for r in map(json.loads, out.path.read_text().splitlines()) if "mask" in r]
    assert Image.open(record["mask"]).size == (100, 40)
    assert Image.open(tmp_path / "pred" / "wide_overlay.png").size[0] >= 384
