"""Short runs of the medical recipes on the real datasets in ../shared/data (marker ``realdata``).

Each run starts from random weights (no downloads), trains for a few minutes' worth of steps at most,
and checks that the test-split metric rises well above its value at initialisation. The full-budget
figures are in the README's results table.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from resbackbone.engine import Trainer
from resbackbone.recipes import load_recipe

from .conftest import REPO_ROOT

# Minutes of CPU each (Faster R-CNN steps cost seconds on 2 cores): deselected by default with `slow`.
pytestmark = [pytest.mark.realdata, pytest.mark.slow]

SHORT = ["run.workers=2", "run.overlays=0", "run.device=cpu", "eval.every=100"]


def _run(recipe_name: str, data: Path, output: Path, overrides: list[str]) -> tuple[dict, dict]:
    recipe = load_recipe(
        REPO_ROOT / "recipes" / recipe_name, data_root=data, overrides=[*SHORT, f"run.output={output}", *overrides]
    )
    trainer = Trainer(recipe, progress=False)
    before = trainer.evaluate(trainer.test_set)
    summary = trainer.fit()
    return before, summary["test"]


def test_bccd_detection_learns(real_data: Path, tmp_path: Path) -> None:
    before, after = _run(
        "bccd_faster_rcnn_cpu.yaml",
        real_data / "bccd",
        tmp_path,
        ["data.image_size=256", "optim.epochs=2", "run.max_steps_per_epoch=20", "optim.warmup_epochs=0.2"],
    )
    assert after["map50"] > before["map50"] + 0.15, (before["map50"], after["map50"])


def test_dsb2018_segmentation_learns(real_data: Path, tmp_path: Path) -> None:
    before, after = _run(
        "dsb2018_deeplabv3plus_cpu.yaml",
        real_data / "dsb2018_nuclei",
        tmp_path,
        ["data.image_size=256", "data.crop_size=192", "optim.epochs=3", "optim.warmup_epochs=0.3"],
    )
    assert after["dice"] > max(before["dice"], 0.2) + 0.3, (before["dice"], after["dice"])
