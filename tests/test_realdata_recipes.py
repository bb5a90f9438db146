"""The medical CPU recipes on the real datasets in ../shared/data (marker ``realdata``).

Every run starts from random weights (no downloads). The short runs (default selection, so CI runs
them) train for a minute and a half each and check that the test-split metric rises well above its value
at initialisation. The full runs (also ``slow``: 15 minutes each on 2 cores) train the recipes as
shipped and check the README's targets: BCCD mAP@0.5 ≥ 0.75, DSB2018 foreground Dice ≥ 0.85.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from resbackbone.engine import Trainer
from resbackbone.recipes import load_recipe

from .conftest import REPO_ROOT

pytestmark = pytest.mark.realdata

QUIET = ["run.overlays=0", "run.device=cpu"]
BCCD_SHORT = [
    "data.image_size=[96,128]",
    "model.anchor_sizes=[[8],[16],[32],[64]]",
    "optim.epochs=2",
    "optim.warmup_epochs=0.2",
    "eval.every=2",
    # at 128 px the RoI head costs most: fewer proposals and sampled RoIs halve the step
    "model.head_options={rpn_pre_nms_top_n_train: 400, rpn_post_nms_top_n_train: 200, rpn_pre_nms_top_n_test: 200,"
    " rpn_post_nms_top_n_test: 100, box_batch_size_per_image: 32}",
    "eval.tta=[]",  # one pass: the short run checks learning, not the recipe's inference
    "eval.tta_scales=[1.0]",
]
DSB_SHORT = [
    "data.image_size=256",
    "data.crop_size=128",
    "optim.epochs=6",
    "optim.warmup_epochs=0.5",
    "eval.every=6",
    "eval.tta=[]",  # one pass: the short run checks learning, not the recipe's inference
]


def _run(recipe_name: str, data: Path, output: Path, overrides: list[str], *, before: bool) -> tuple[dict, dict]:
    recipe = load_recipe(
        REPO_ROOT / "recipes" / recipe_name, data_root=data, overrides=[*QUIET, f"run.output={output}", *overrides]
    )
    trainer = Trainer(recipe, progress=False)
    initial = trainer.evaluate(trainer.test_set) if before else {}
    summary = trainer.fit()
    return initial, summary["test"]


def test_bccd_detection_learns(real_data: Path, tmp_path: Path) -> None:
    before, after = _run("bccd_faster_rcnn_cpu.yaml", real_data / "bccd", tmp_path, BCCD_SHORT, before=True)
    # 102 steps from random weights: 0.0 -> 0.20 on a 2-core EPYC (the full recipe reaches 0.82)
    assert after["map50"] > before["map50"] + 0.1, (before["map50"], after["map50"])


def test_dsb2018_segmentation_learns(real_data: Path, tmp_path: Path) -> None:
    before, after = _run(
        "dsb2018_deeplabv3plus_cpu.yaml", real_data / "dsb2018_nuclei", tmp_path, DSB_SHORT, before=True
    )
    # 54 steps from random weights: 0.30 -> 0.75 on a 2-core EPYC (the full recipe reaches 0.89)
    assert after["dice"] > max(before["dice"], 0.2) + 0.3, (before["dice"], after["dice"])


@pytest.mark.slow
def test_bccd_recipe_reaches_its_target(real_data: Path, tmp_path: Path) -> None:
    _, after = _run("bccd_faster_rcnn_cpu.yaml", real_data / "bccd", tmp_path, [], before=False)
    assert after["map50"] >= 0.75, after


@pytest.mark.slow
def test_dsb2018_recipe_reaches_its_target(real_data: Path, tmp_path: Path) -> None:
    _, after = _run("dsb2018_deeplabv3plus_cpu.yaml", real_data / "dsb2018_nuclei", tmp_path, [], before=False)
    assert after["dice"] >= 0.85, after
