from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

from resbackbone.engine import Trainer, TrainingError, loaders, predict
from resbackbone.engine.checkpoint import load_checkpoint
from resbackbone.engine.distributed import DistContext
from resbackbone.engine.loaders import WORKER_NICENESS, seed_worker
from resbackbone.engine.report import RunArtifacts, finish_run
from resbackbone.recipes import RunConfig, load_recipe

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
    """Three updates of two batches each under bf16 autocast: every update's gradient is clipped to
    ``optim.clip_grad``, and the EMA in ``last.pt`` is the exponential average of the weights after each
    update (timm's ModelEmaV3 copies the weights at update 1, then decays by ``1 - k ** (-2/3)`` at update
    k, capped at ``optim.ema``: the warm-up)."""
    clip, decay, steps = 1e-3, 0.9, 3
    trainer = Trainer(
        _shapes_recipe(
            tmp_path,
            "optim.amp=bf16",
            f"optim.ema={decay}",
            "optim.accumulate=2",
            f"optim.clip_grad={clip}",
            "optim.epochs=1",
            f"run.max_steps_per_epoch={steps}",
        ),
        progress=False,
    )
    autocast_dtypes: list[torch.dtype | None] = []
    norms: list[float] = []
    weights: list[dict[str, torch.Tensor]] = []

    def count_forward(module: torch.nn.Module, args: object) -> None:
        if module.training:
            autocast_dtypes.append(torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None)

    def gradient_norm(optimizer: torch.optim.Optimizer, args: object, kwargs: object) -> None:
        grads = [p.grad.double() for p in trainer.model.parameters() if p.grad is not None]
        norms.append(float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))))

    def snapshot(optimizer: torch.optim.Optimizer, args: object, kwargs: object) -> None:
        weights.append({k: v.detach().clone() for k, v in trainer.model.state_dict().items()})

    trainer.model.register_forward_pre_hook(count_forward)
    trainer.optimizer.register_step_pre_hook(gradient_norm)
    trainer.optimizer.register_step_post_hook(snapshot)
    summary = trainer.fit()

    assert trainer.step == steps and autocast_dtypes == [torch.bfloat16] * (2 * steps)  # two batches an update
    assert norms == pytest.approx([clip] * steps, rel=1e-3), "gradients not clipped to optim.clip_grad"
    expected = {k: v.double() if v.is_floating_point() else v for k, v in weights[0].items()}
    for k_th, later in enumerate(weights[1:], start=1):  # floats averaged, counters (num_batches_tracked) copied
        d = min(decay, 1 - (1 + k_th) ** (-2 / 3))
        expected = {k: d * e + (1 - d) * later[k] if e.is_floating_point() else later[k] for k, e in expected.items()}
    ema = load_checkpoint(tmp_path / "run" / "last.pt")["ema"]
    assert ema.keys() == expected.keys()
    for key, value in ema.items():
        value = value.double() if value.is_floating_point() else value
        torch.testing.assert_close(value, expected[key], rtol=1e-5, atol=1e-6, msg=f"EMA of {key}")
    moved = [k for k, v in expected.items() if v.is_floating_point() and not torch.allclose(v, weights[-1][k].double())]
    assert moved, "the EMA equals the last weights: the test would not see a missing decay"
    assert math.isfinite(summary["best"]["metrics"]["miou"])


def test_finish_run_from_artifacts_built_by_hand(tmp_path: Path) -> None:
    """The end-of-run report needs no Trainer: a RunArtifacts, a summary and a model."""
    images = torch.rand(2, 3, 16, 16)
    history = [
        {"epoch": 1, "train/loss": 1.0, "val/miou": 0.2, "time": 1.0},
        {"epoch": 2, "train/loss": 0.5, "val/miou": 0.4, "time": 1.0},
    ]
    lines: list[str] = []
    run = RunArtifacts(
        output=tmp_path,
        task="segmentation",
        classes=["background", "object"],
        mean=(0.5, 0.5, 0.5),
        std=(0.25, 0.25, 0.25),
        metric="miou",
        split="val",
        history=history,
        overlay_set=TensorDataset(images, torch.zeros(2, 16, 16, dtype=torch.long)),
        overlays=1,
        log=lines.append,
    )
    summary = {
        "recipe": "by-hand",
        "epochs": 2,
        "steps": 4,
        "seconds": 90.0,
        "stopped_early": False,
        "skipped_batches": 0,
        "overflow_steps": 0,
        "metric": "miou",
        "best": {"epoch": 2, "metrics": {"miou": 0.4}},
        "test": {"miou": 0.35},
        "device": "cpu",
        "world_size": 1,
        "ranks_in_sync": True,
    }
    finish_run(run, summary, torch.nn.Conv2d(3, 2, 1))
    written = json.loads((tmp_path / "summary.json").read_text())
    assert written["files"]["curves"] == str(tmp_path / "curves.png") and (tmp_path / "curves.png").is_file()
    assert sorted(p.name for p in (tmp_path / "overlays").iterdir()) == ["val_000.png"]
    assert written["best"] == summary["best"] and written["test"] == {"miou": 0.35}
    (table,) = lines
    assert re.search(r"best val miou\s+0\.4000 \(epoch 2\)", table) and f"outputs in {tmp_path}/" in table


def test_detection_run_and_predict(tmp_path: Path, session_cache: Path) -> None:
    recipe = _shapes_recipe(tmp_path, "optim.epochs=1", "eval.metric=map50", head="faster_rcnn")
    summary = Trainer(recipe, progress=False).fit()
    assert {"map", "map50"} <= set(summary["best"]["metrics"])
    images = sorted(session_cache.rglob("images/test/*.png"))[:2]
    assert images
    results = predict(
        tmp_path / "run" / "best.pt", images, tmp_path / "pred", device="cpu", score_thresh=0.0, progress=False
    )
    lines = [json.loads(line) for line in results.path.read_text().splitlines()]
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
    record = json.loads(results.path.read_text())
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
    assert [Path(json.loads(line)["image"]).name for line in results.path.read_text().splitlines()] == [
        "a.webp",
        "b.png",
    ]


def test_predict_bad_inputs(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"Checkpoint .*nope\.pt does not exist"):
        predict(tmp_path / "nope.pt", [tmp_path], tmp_path / "out")


class _WorkerState(Dataset):
    """Each item: the niceness of the process that loads it, and a draw from torch's generator."""

    def __len__(self) -> int:
        return 4

    def __getitem__(self, index: int) -> tuple[int, float]:
        return os.nice(0), torch.rand(()).item()


@pytest.mark.skipif(not hasattr(os, "nice"), reason="the platform has no os.nice")
def test_loader_workers_run_below_the_training_process_and_draw_the_same_values(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def items() -> list[tuple[int, float]]:
        loader = DataLoader(
            _WorkerState(),
            batch_size=None,
            num_workers=2,
            worker_init_fn=seed_worker,
            generator=torch.Generator().manual_seed(3),
        )
        return [(int(n), float(x)) for n, x in loader]

    parent = os.nice(0)
    lowered = items()
    assert {n for n, _ in lowered} == {min(19, parent + WORKER_NICENESS)}
    assert os.nice(0) == parent  # the training process keeps its priority
    monkeypatch.setattr(loaders, "WORKER_NICENESS", 0)  # read by each worker as it starts
    same = items()
    assert {n for n, _ in same} == {parent}
    assert [x for _, x in lowered] == [x for _, x in same]  # priority changes when a worker runs, not what it draws


class _Draws(Dataset):
    """Item ``i``: ``i`` and a draw from torch's generator."""

    def __len__(self) -> int:
        return 10

    def __getitem__(self, index: int) -> tuple[int, float]:
        return index, torch.rand(()).item()


def test_training_items_are_a_function_of_the_seed_epoch_and_index_whatever_the_workers() -> None:
    def epochs(workers: int, start: int = 0, count: int = 3) -> list[list[tuple[int, float]]]:
        run = RunConfig(seed=5, workers=workers)
        loader = loaders.make_loader(_Draws(), 2, train=True, task="segmentation", run=run, ctx=DistContext())
        assert loader.persistent_workers == (workers > 0)
        seen = []
        for epoch in range(start, start + count):
            loader.sampler.set_epoch(epoch)
            seen.append([(int(i), float(x)) for index, draw in loader for i, x in zip(index, draw)])
        return seen

    state = torch.get_rng_state()
    inline = epochs(0)
    assert torch.equal(torch.get_rng_state(), state)  # loading in the training process leaves its draws alone
    assert epochs(2) == inline  # workers that persist from epoch to epoch draw what the training process would
    assert epochs(2, start=1, count=2) == inline[1:]  # a run resumed at epoch 1
    assert all(sorted(i for i, _ in epoch) == list(range(10)) for epoch in inline)
    assert [i for i, _ in inline[0]] != [i for i, _ in inline[1]]  # shuffled anew each epoch
    draws = [dict(epoch) for epoch in inline]
    assert all(draws[0][i] != draws[1][i] for i in range(10))  # and augmented anew
