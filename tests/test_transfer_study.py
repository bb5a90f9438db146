"""benchmarks/transfer.py, the label-efficiency study, on generated tiny datasets: every cell runs with its budget,
the pretraining sees only training images, the report holds every cell, and a second call resumes (runs nothing
done, reruns what is missing)."""

from __future__ import annotations

import json
import math
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from .conftest import REPO_ROOT
from .engine_data import tiny_overrides, write_dataset

pytest.importorskip("lightly")
sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
transfer = pytest.importorskip("transfer")
configs = pytest.importorskip("transfer_configs")

# what the study sets itself (budget, seed, output) is left to it
_STUDY_SETS = ("optim.epochs=", "run.max_steps_per_epoch=", "run.output=")


def _study(tmp_path: Path) -> tuple[configs.Study, Path]:
    data = tmp_path / "data"
    tiny = [s for s in tiny_overrides(tmp_path / "unused") if not s.startswith(_STUDY_SETS)] + ["run.overlays=0"]
    voc = [*write_dataset("voc", data / "voc"), *tiny]
    masks = [*write_dataset("mask_folder", data / "masks"), *tiny, "data.crop_size=null"]
    recipe = tmp_path / "pretrain.yaml"
    recipe.write_text(
        """
name: tiny_pretrain
model: {backbone: test_resnet}
pretrain: {method: simclr, images: [{folder: unused}], views: {resize: 48, crop_size: 32}}
optim: {optimizer: adamw, lr: 0.003, epochs: 1, batch_size: 4}
run: {workers: 0, device: cpu, seed: 0}
"""
    )
    tasks = (
        configs.Task("det", "recipes/bccd_faster_rcnn_cpu.yaml", "voc", "map50", 2, 1, "seg", tuple(voc)),
        configs.Task("seg", "recipes/dsb2018_deeplabv3plus_cpu.yaml", "masks", "dice", 2, 1, "det", tuple(masks)),
    )
    return configs.Study("tiny", tasks, str(recipe), fractions=(0.5, 1.0), seeds=(0,)), data


def test_the_study_runs_its_cells_and_resumes(tmp_path: Path) -> None:
    study, data = _study(tmp_path)
    study = replace(study, tasks=study.tasks[1:], starts=("random", "ssl"))  # segmentation only: seconds
    out, lines = tmp_path / "out", []
    report = transfer.run_study(study, data, out, log=lines.append)
    assert report["cells_done"] == report["cells_planned"] == 4
    assert [line.split(":")[0] for line in lines if not line.startswith("[pretrain]")] == [
        "[1/4] seg-random-f050-s0",
        "[2/4] seg-ssl-f050-s0",
        "[3/4] seg-random-f100-s0",
        "[4/4] seg-ssl-f100-s0",
    ]
    for cell in report["cells"]:
        assert cell["steps"] == 2 and math.isfinite(cell["test"]) and cell["train_images_per_s"] > 0, cell
        assert cell["train_images"]["images"] == (2 if cell["fraction"] == 0.5 else 4), cell
    # pretraining saw the 4 training images, none of val or test; it ran once
    assert json.loads((out / "runs" / "pretrain" / "summary.json").read_text())["images"] == 4
    assert report["pretrain"]["images_per_s"] > 0 and "resbackbone pretrain " in report["pretrain"]["command"]
    commands = (out / "commands.sh").read_text().splitlines()
    assert sum(c.startswith("resbackbone ") for c in commands) == 5

    table = (out / "transfer.md").read_text()
    assert "| random init |" in table and "| self-supervised" in table and "better pretrained − random" in table
    assert (out / "transfer.png").stat().st_size > 0
    assert not list(out.rglob("*.partial*")) and not list(out.rglob("*.tmp"))

    # a second call runs nothing; a lost result reruns that cell only (from its complete run folder)
    lines.clear()
    assert transfer.run_study(study, data, out, log=lines.append)["cells_done"] == 4
    assert not [line for line in lines if not line.startswith("[pretrain]")]
    (out / "cells" / "seg-ssl-f050-s0.json").unlink()
    transfer.run_study(study, data, out, log=lines.append)
    assert [line.split(":")[0] for line in lines if not line.startswith("[pretrain]")] == ["[2/4] seg-ssl-f050-s0"]


@pytest.mark.slow  # 12 cells, half of them Faster R-CNN: about a minute on 2 cores
def test_every_start_on_detection_and_segmentation(tmp_path: Path) -> None:
    study, data = _study(tmp_path)
    out = tmp_path / "out"
    report = transfer.run_study(study, data, out, log=lambda line: None)
    assert report["cells_done"] == report["cells_planned"] == 12
    assert all(c["steps"] == 2 and math.isfinite(c["test"]) for c in report["cells"])
    assert {(r["task"], r["start"], r["fraction"]): r["n"] for r in report["summary"]} == {
        (t, s, f): 1 for t in ("det", "seg") for s in configs.STARTS for f in (0.5, 1.0)
    }
    assert len(report["gains"]) == 4 and all(g["met"] is None for g in report["gains"] if g["fraction"] == 1.0)
    # pretraining saw the training images of both tasks; the starts load what they say
    assert json.loads((out / "runs" / "pretrain" / "summary.json").read_text())["images"] == 8
    cells = {(c["task"], c["start"], c["fraction"]): c for c in report["cells"]}
    assert "backbone.safetensors" in cells["det", "ssl", 0.5]["command"]
    assert f"model.backbone_weights={out}/runs/seg/seg-random-f100-s0 " in cells["det", "supervised", 0.5]["command"]
    assert f"model.backbone_weights={out}/runs/det/det-random-f100-s0 " in cells["seg", "supervised", 0.5]["command"]
    assert "model.backbone_weights=null" in cells["seg", "random", 0.5]["command"]
    assert (out / "transfer.md").read_text().count("| random init |") == 2


def test_a_budget_that_does_not_fit_the_smallest_fraction_is_refused(tmp_path: Path) -> None:
    study, data = _study(tmp_path)
    task = replace(study.tasks[1], budget=4, steps_per_epoch=2)  # 50% of 4 images at batch 2 is 1 step
    study = replace(study, tasks=(task,), starts=("random",))
    with pytest.raises(ValueError, match=r"task 'seg': 50% of the training images gives 1 steps per epoch, not "):
        transfer.run_study(study, data, tmp_path / "out", log=lambda line: None)


def test_the_plan_holds_the_supervised_sources_and_refuses_an_unknown_one(tmp_path: Path) -> None:
    study, _ = _study(tmp_path)
    cells = transfer.plan(replace(study, fractions=(0.5,), starts=("supervised",)))
    assert [c.key for c in cells] == [
        "det-random-f100-s0",
        "seg-random-f100-s0",
        "det-supervised-f050-s0",
        "seg-supervised-f050-s0",
    ]
    assert [c.key for c in transfer.plan(replace(study, starts=("ssl",)))] == [
        "det-ssl-f050-s0",
        "seg-ssl-f050-s0",
        "det-ssl-f100-s0",
        "seg-ssl-f100-s0",
    ]
    with pytest.raises(ValueError, match=r"source 'nope' is not a task of the study \['det', 'seg'\]"):
        transfer.plan(replace(study, tasks=(replace(study.tasks[0], source="nope"), study.tasks[1])))
