from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from resbackbone.engine import Trainer, TrainingError, predict
from resbackbone.engine.checkpoint import load_checkpoint
from resbackbone.recipes import load_recipe

from .conftest import REPO_ROOT
from .engine_data import tiny_overrides, write_dataset

RECIPES = sorted((REPO_ROOT / "recipes").glob("*.yaml"))


@pytest.mark.parametrize("path", RECIPES, ids=[p.stem for p in RECIPES])
def test_one_step_of_every_recipe_on_its_format(path: Path, tmp_path: Path, session_cache: Path) -> None:
    fmt = load_recipe(path).data.format
    overrides = write_dataset(fmt, tmp_path / "data") + tiny_overrides(tmp_path / "run")
    recipe = load_recipe(path, overrides=overrides)
    summary = Trainer(recipe, progress=False).fit()
    assert summary["steps"] == 1 and summary["epochs"] == 1
    assert recipe.metric in summary["best"]["metrics"]
    for name in ("last.pt", "best.pt", "metrics.jsonl", "metrics.csv", "summary.json", "curves.png"):
        assert (tmp_path / "run" / name).is_file(), name
    assert list((tmp_path / "run" / "overlays").glob("*.png"))
    row = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    assert math.isfinite(row["train/loss"])


def _shapes_recipe(tmp_path: Path, *extra: str, head: str = "deeplabv3plus") -> object:
    base = tiny_overrides(tmp_path / "run")
    return load_recipe(
        REPO_ROOT / "recipes" / "quickstart.yaml",
        overrides=[
            *base,
            f"model.head={head}",
            "optim.epochs=3",
            "run.max_steps_per_epoch=2",
            "run.overlays=0",
            "optim.lr=0.01",
            *extra,
        ],
    )


def test_resume_continues_exactly(tmp_path: Path, session_cache: Path) -> None:
    """Two epochs in one go == one epoch, a fresh process state, and --resume for the rest."""
    straight = Trainer(_shapes_recipe(tmp_path / "a"), progress=False)
    straight.fit()
    first = Trainer(_shapes_recipe(tmp_path / "b"), progress=False)
    first.run_epoch()
    del first
    torch.manual_seed(12345)  # whatever happens between the runs must not matter
    resumed = Trainer(_shapes_recipe(tmp_path / "b"), resume=True, progress=False)
    assert resumed.epoch == 1 and resumed.step == 2
    resumed.fit()
    losses = [r["train/loss"] for r in straight.history]
    assert [r["train/loss"] for r in resumed.history] == pytest.approx(losses, rel=1e-6, abs=1e-7)
    a = load_checkpoint(tmp_path / "a" / "run" / "last.pt")
    b = load_checkpoint(tmp_path / "b" / "run" / "last.pt")
    for key, value in a["model"].items():
        torch.testing.assert_close(b["model"][key], value, rtol=1e-5, atol=1e-6)
    assert a["optimizer"]["state"].keys() == b["optimizer"]["state"].keys()
    assert a["scheduler"]["last_epoch"] == b["scheduler"]["last_epoch"] == 6


def test_resume_without_a_run_folder(tmp_path: Path, session_cache: Path) -> None:
    with pytest.raises(ValueError, match=r"--resume: .*last\.pt does not exist"):
        Trainer(_shapes_recipe(tmp_path), resume=True, progress=False)


def test_nan_loss_stops_with_step_and_checkpoint(tmp_path: Path, session_cache: Path) -> None:
    trainer = Trainer(_shapes_recipe(tmp_path, "optim.epochs=2"), progress=False)
    trainer.run_epoch()
    with torch.no_grad():
        for p in trainer.model.parameters():
            p.fill_(float("nan"))
    with pytest.raises(
        TrainingError, match=r"Loss is nan at epoch 2, step 3 \(batch 1\); the last good checkpoint is .*last\.pt"
    ):
        trainer.run_epoch()


def test_nan_loss_skip_policy_counts(tmp_path: Path, session_cache: Path) -> None:
    trainer = Trainer(_shapes_recipe(tmp_path, "run.nan_policy=skip", "optim.epochs=1"), progress=False)
    with torch.no_grad():
        for p in trainer.model.parameters():
            p.fill_(float("nan"))
    trainer.run_epoch()
    assert trainer.skipped_batches == 2 and trainer.step == 0


def test_fp16_on_cpu_is_refused(tmp_path: Path, session_cache: Path) -> None:
    with pytest.raises(ValueError, match=r"optim\.amp='fp16' needs a CUDA device; use amp: bf16"):
        Trainer(_shapes_recipe(tmp_path, "optim.amp=fp16"), progress=False)


def test_freeze_then_unfreeze_and_discriminative_lr(tmp_path: Path, session_cache: Path) -> None:
    trainer = Trainer(
        _shapes_recipe(
            tmp_path,
            "model.freeze_backbone_epochs=1",
            "model.trainable_stages=2",
            "optim.backbone_lr_mult=0.1",
            "optim.layer_decay=0.5",
            # every stage recomputed, frozen ones included: the first trainable block's input has no grad
            "model.grad_checkpointing=[stem,C2,C3,C4,C5]",
        ),
        progress=False,
    )
    assert trainer.backbone.checkpoint_stages == ("stem", "layer1", "layer2", "layer3", "layer4")
    before = {k: v.clone() for k, v in trainer.backbone.state_dict().items()}
    trainer.run_epoch()
    after = trainer.backbone.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "backbone changed while frozen"
    trainer.run_epoch()
    assert trainer.backbone.frozen_stages == ("stem", "layer1", "layer2")
    assert not torch.equal(before["layer4.0.conv1.weight"], trainer.backbone.layer4[0].conv1.weight)
    assert not torch.equal(before["layer3.0.conv1.weight"], trainer.backbone.layer3[0].conv1.weight)
    assert torch.equal(before["layer1.0.conv1.weight"], trainer.backbone.layer1[0].conv1.weight)
    assert trainer.optimizer.defaults["fused"], "the CPU optimiser should be the fused implementation"
    scales = {g["group"]: g["lr_scale"] for g in trainer.optimizer.param_groups}
    assert scales["head"] == 1.0
    assert scales["backbone/stage-0"] == pytest.approx(0.1) and scales["backbone/stage-1"] == pytest.approx(0.05)


def test_bf16_amp_ema_accumulation_and_clipping(tmp_path: Path, session_cache: Path) -> None:
    trainer = Trainer(
        _shapes_recipe(
            tmp_path,
            "optim.amp=bf16",
            "optim.ema=0.9",
            "optim.accumulate=2",
            "optim.clip_grad=1.0",
            "optim.epochs=1",
            "run.max_steps_per_epoch=1",
        ),
        progress=False,
    )
    summary = trainer.fit()
    assert trainer.step == 1  # two batches, one update
    assert math.isfinite(summary["best"]["metrics"]["miou"])
    state = load_checkpoint(tmp_path / "run" / "last.pt")
    assert state["ema"] is not None


def test_detection_run_and_predict(tmp_path: Path, session_cache: Path) -> None:
    recipe = _shapes_recipe(tmp_path, "optim.epochs=1", "eval.metric=map50", head="faster_rcnn")
    summary = Trainer(recipe, progress=False).fit()
    assert {"map", "map50"} <= set(summary["best"]["metrics"])
    images = sorted(session_cache.rglob("images/test/*.png"))[:2]
    assert images
    results = predict(
        tmp_path / "run" / "best.pt", images, tmp_path / "pred", device="cpu", score_thresh=0.0, progress=False
    )
    lines = [json.loads(line) for line in results.read_text().splitlines()]
    assert [Path(r["image"]) for r in lines] == images
    assert all(set(r) >= {"boxes", "scores", "labels"} for r in lines)
    assert len(list((tmp_path / "pred").glob("*_overlay.png"))) == 2


def test_segmentation_predict_writes_full_size_masks(tmp_path: Path, session_cache: Path) -> None:
    from PIL import Image

    recipe = _shapes_recipe(tmp_path, "optim.epochs=1")
    Trainer(recipe, progress=False).fit()
    image = sorted(session_cache.rglob("images/test/*.png"))[0]
    big = tmp_path / "big.png"
    Image.open(image).resize((200, 150)).save(big)
    results = predict(tmp_path / "run" / "best.pt", [big], tmp_path / "pred", device="cpu", progress=False)
    record = json.loads(results.read_text())
    assert Image.open(record["mask"]).size == (200, 150)
    assert sum(record["pixels"].values()) == 200 * 150


def test_predict_on_a_folder_finds_every_image_type_training_reads(tmp_path: Path, session_cache: Path) -> None:
    from PIL import Image

    Trainer(_shapes_recipe(tmp_path, "optim.epochs=1", "run.max_steps_per_epoch=1"), progress=False).fit()
    image = Image.open(sorted(session_cache.rglob("images/test/*.png"))[0])
    folder = tmp_path / "photos"
    folder.mkdir()
    image.save(folder / "a.webp")
    image.save(folder / "b.png")
    results = predict(tmp_path / "run" / "best.pt", [folder], tmp_path / "pred", device="cpu", progress=False)
    assert [Path(json.loads(line)["image"]).name for line in results.read_text().splitlines()] == ["a.webp", "b.png"]


def test_predict_bad_inputs(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"Checkpoint .*nope\.pt does not exist"):
        predict(tmp_path / "nope.pt", [tmp_path], tmp_path / "out")
