"""Self-supervised pretraining: every method trains, losses fall, runs resume exactly, and the backbone it writes
loads into every head; bad images, channels and recipes are refused with a message naming the value."""

from __future__ import annotations

import json
import math
import re
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from resbackbone import build_detector, build_segmenter, create_backbone
from resbackbone.cli import main
from resbackbone.data import DataWarning
from resbackbone.engine.builders import find_backbone
from resbackbone.engine.checkpoint import load_checkpoint
from resbackbone.pretrain import METHODS, MonitorConfig, Pretrainer, ViewsConfig, build_method
from resbackbone.pretrain.images import collect_images
from resbackbone.pretrain.monitor import build_probe_set, dense_probe
from resbackbone.pretrain.views import MultiViews
from resbackbone.recipes import RecipeError

from .conftest import REPO_ROOT
from .engine_data import write_dataset
from .pretrain_data import blobs, tiny_recipe, write_images

pytest.importorskip("lightly")

# memory banks sized for a handful of images
SMALL = {"mocov2": ("pretrain.memory_bank=16",), "densecl": ("pretrain.memory_bank=64",)}


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One SimCLR run's folder (backbone.safetensors, backbone.json, last.pt, metrics)."""
    tmp = tmp_path_factory.mktemp("pretrained")
    Pretrainer(tiny_recipe(tmp, "optim.epochs=2"), progress=False).fit()
    return tmp / "run"


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_trains_a_few_steps(method: str, tmp_path: Path) -> None:
    trainer = Pretrainer(tiny_recipe(tmp_path, *SMALL.get(method, ()), method=method), progress=False)
    summary = trainer.fit()
    row = trainer.history[-1]
    losses = {k: v for k, v in row.items() if k.startswith("train/loss")}
    assert losses and all(math.isfinite(v) for v in losses.values()), losses
    assert summary["steps"] == 2 and summary["images_seen"] == 8 and summary["images_per_s"] > 0
    assert 0 <= summary["monitor"]["monitor/embedding_std"] <= 2
    record = json.loads((tmp_path / "run" / "backbone.json").read_text())
    assert record["architecture"] == "test_resnet" and record["origin"]["method"] == method
    assert record["origin"]["images"] == 8 and record["origin"]["images_seen"] == 8
    for name in ("backbone.safetensors", "last.pt", "metrics.jsonl", "metrics.csv", "summary.json", "curves.png"):
        assert (tmp_path / "run" / name).is_file(), name


@pytest.mark.parametrize("method", sorted(METHODS))
def test_the_loss_falls_on_a_fixed_batch(method: str) -> None:
    torch.manual_seed(0)
    banked = "memory_bank" in METHODS[method].defaults
    options = {"memory_bank": 32} if banked else {}
    model = build_method(method, create_backbone("test_resnet", out_levels=("C3", "C4", "C5")), options)
    views = MultiViews(METHODS[method].views, ViewsConfig(crop_size=32), (0.5,) * 3, (0.25,) * 3, 3)
    batch = [torch.stack(v) for v in zip(*(views(blobs(i)) for i in range(8)))]
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(4 if banked else 0):  # fill the memory bank with this batch's keys (random negatives are easy)
        model(batch)
    losses = []
    for step in range(1, 16):
        loss = sum(model(batch).values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        model.momentum_update(step, 15)
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses)
    assert np.mean(losses[-3:]) < losses[0] - 0.05, losses


@pytest.mark.parametrize(
    ("head", "build"),
    [
        ("faster_rcnn", lambda w: build_detector("faster_rcnn", backbone="test_resnet", num_classes=3, **w)),
        ("retinanet", lambda w: build_detector("retinanet", backbone="test_resnet", num_classes=3, **w)),
        ("deeplabv3", lambda w: build_segmenter("deeplabv3", backbone="test_resnet", num_classes=2, **w)),
        ("deeplabv3plus", lambda w: build_segmenter("deeplabv3plus", backbone="test_resnet", num_classes=2, **w)),
    ],
)
def test_the_pretrained_backbone_loads_into_every_head(head: str, build: object, pretrained: Path) -> None:
    from safetensors.torch import load_file

    saved = load_file(pretrained / "backbone.safetensors")
    torch.manual_seed(0)
    model = build({"backbone_weights": str(pretrained / "backbone.safetensors")})  # type: ignore[operator]
    backbone = find_backbone(model)
    report = backbone.load_report
    assert report.missing == () and report.unexpected == () and report.mismatched == ()
    assert {k for k in backbone.state_dict() if not k.endswith("num_batches_tracked")} <= set(report.loaded)
    for key, value in backbone.state_dict().items():
        if not key.endswith("num_batches_tracked"):
            torch.testing.assert_close(value, saved[key])
    torch.manual_seed(0)
    random = find_backbone(build({}))  # type: ignore[operator]
    x = torch.randn(2, 3, 64, 64)
    backbone.eval(), random.eval()
    with torch.no_grad():
        assert not torch.allclose(backbone(x)["C5"], random(x)["C5"])
    # the run folder itself is accepted too, and the mean/std come from the record
    assert create_backbone("test_resnet", weights=str(pretrained)).weights.endswith("backbone.safetensors")


@pytest.mark.parametrize(("amp", "dtype"), [("bf16", torch.bfloat16), ("none", torch.float32)])
def test_the_training_step_runs_at_the_precision_asked(amp: str, dtype: torch.dtype, tmp_path: Path) -> None:
    trainer = Pretrainer(tiny_recipe(tmp_path, f"optim.amp={amp}", "pretrain.monitor_every=10"), progress=False)
    seen: list[torch.dtype] = []
    conv = trainer.backbone.get_submodule(trainer.backbone.first_conv)
    hook = conv.register_forward_hook(lambda mod, args, out: seen.append(out.dtype))
    trainer.run_epoch()
    hook.remove()
    assert seen and set(seen) == {dtype}
    assert trainer.fit()["amp"] == amp


@pytest.mark.parametrize("faster", [False, True], ids=["fp32-faster", "bf16-faster"])
def test_amp_auto_resolves_before_it_reaches_autocast(
    faster: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from resbackbone.engine import acceleration

    monkeypatch.setattr(acceleration, "prefers_bf16", lambda device: faster)
    trainer = Pretrainer(tiny_recipe(tmp_path, "optim.amp=auto"), progress=False)
    assert trainer.amp == ("bf16" if faster else "none")
    spread = trainer.fit()["monitor"]["monitor/embedding_std"]
    assert math.isfinite(spread) and spread > 0


@pytest.mark.parametrize("method", ["byol", "densecl"])
def test_resume_continues_exactly(method: str, tmp_path: Path) -> None:
    """Two epochs in one go == one epoch, a fresh process state, and --resume: momentum encoder and memory bank."""
    extra = (*SMALL.get(method, ()), "optim.epochs=2", "optim.warmup_epochs=0.5")
    straight = Pretrainer(tiny_recipe(tmp_path / "a", *extra, method=method), progress=False)
    straight.fit()
    first = Pretrainer(tiny_recipe(tmp_path / "b", *extra, method=method), progress=False)
    first.run_epoch()
    del first
    torch.manual_seed(1234)
    np.random.seed(99)
    resumed = Pretrainer(tiny_recipe(tmp_path / "b", *extra, method=method), resume=True, progress=False)
    assert resumed.epoch == 1 and resumed.step == 2
    resumed.fit()
    losses = [r["train/loss"] for r in straight.history if "train/loss" in r]
    assert [r["train/loss"] for r in resumed.history if "train/loss" in r] == pytest.approx(losses, rel=1e-5)
    a, b = load_checkpoint(tmp_path / "a" / "run" / "last.pt"), load_checkpoint(tmp_path / "b" / "run" / "last.pt")
    assert a["model"].keys() == b["model"].keys()
    for key, value in a["model"].items():
        if isinstance(value, torch.Tensor):
            torch.testing.assert_close(b["model"][key], value, rtol=1e-5, atol=1e-6)
    assert a["images_seen"] == b["images_seen"] == 16


def test_resume_with_another_method_is_refused(pretrained: Path, tmp_path: Path) -> None:
    recipe = tiny_recipe(tmp_path, f"run.output={pretrained}", method="byol")
    with pytest.raises(ValueError, match=r"--resume: .*last\.pt was pretrained with 'simclr', this recipe uses 'byol'"):
        Pretrainer(recipe, resume=True, progress=False)


# --- images: sources, modalities, channels ---------------------------------------------------


def test_images_from_the_train_splits_of_recipes(tmp_path: Path) -> None:
    voc = write_dataset("voc", tmp_path / "voc")
    masks = write_dataset("mask_folder", tmp_path / "masks")
    root = lambda sets: next(s.split("=", 1)[1] for s in sets if s.startswith("data.root="))  # noqa: E731
    recipe = tiny_recipe(
        tmp_path,
        f"pretrain.images=[{{recipe: {REPO_ROOT / 'recipes/bccd_faster_rcnn_cpu.yaml'}, root: {root(voc)}, "
        "overrides: ['data.classes=[a, b]']}, "
        f"{{recipe: {REPO_ROOT / 'recipes/dsb2018_deeplabv3plus_cpu.yaml'}, root: {root(masks)}, split: train, "
        "overrides: ['data.intensity_percentiles=[2, 98]']}]",
    )
    found = collect_images(recipe.pretrain.images, in_chans=3)
    assert [s["images"] for s in found.sources] == [4, 4] and len(found.paths) == 8
    assert all("train" in p.name for p in found.paths)
    # each source's images are read as its recipe reads them: a contrast stretch travels with them
    assert found.percentiles == [None] * 4 + [(2.0, 98.0)] * 4


def test_a_test_split_is_never_a_pretraining_source(tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match=r"pretrain\.images\.0\.split: Input should be 'train' or 'val'"):
        tiny_recipe(tmp_path, "pretrain.images=[{recipe: r.yaml, split: test}]")
    with pytest.raises(RecipeError, match=r"pretrain\.monitor\.0\.split: Input should be 'train' or 'val'"):
        tiny_recipe(tmp_path, "pretrain.monitor=[{recipe: r.yaml, split: test}]")


@pytest.mark.parametrize(("mode", "in_chans"), [("I;16", 1), ("L", 3), ("RGBA", 4), ("RGBA", 3), ("RGB", 1)])
def test_views_of_every_modality(mode: str, in_chans: int, tmp_path: Path) -> None:
    folder = write_images(tmp_path / mode.replace(";", ""), 2, mode=mode)
    with pytest.warns(DataWarning) if (mode, in_chans) in (("L", 3), ("RGB", 1)) else _no_warning():
        found = collect_images(tiny_recipe(tmp_path, folder=folder).pretrain.images, in_chans=in_chans)
    views = MultiViews("byol", ViewsConfig(crop_size=32), (0.5,) * in_chans, (0.25,) * in_chans, in_chans)
    from resbackbone.data import read_image

    image = read_image(found.paths[0], in_chans=in_chans)
    assert image.dtype == (np.float32 if mode == "I;16" else np.uint8)
    out = views(image)
    assert [tuple(v.shape) for v in out] == [(in_chans, 32, 32)] * 2
    assert all(torch.isfinite(v).all() for v in out) and not torch.equal(out[0], out[1])


class _no_warning:
    def __enter__(self) -> None:
        import warnings

        self._catch = warnings.catch_warnings()
        self._catch.__enter__()
        warnings.simplefilter("error", DataWarning)

    def __exit__(self, *exc: object) -> None:
        self._catch.__exit__(*exc)


def test_a_16_bit_grayscale_run_with_one_channel(tmp_path: Path) -> None:
    folder = write_images(tmp_path / "gray16", 8, mode="I;16")
    summary = Pretrainer(tiny_recipe(tmp_path, "model.in_chans=1", folder=folder), progress=False).fit()
    record = json.loads((tmp_path / "run" / "backbone.json").read_text())
    assert record["in_chans"] == 1 and len(record["mean"]) == 1 and summary["steps"] == 2
    assert create_backbone("test_resnet", in_chans=1, weights=summary["backbone"]).load_report.ok
    with pytest.raises(
        ValueError,
        match=r"conv1\S*weight: checkpoint \(\d+, 1, .*The file records in_chans=1, this backbone takes in_chans=3: "
        r"build it with in_chans=1",
    ):
        create_backbone("test_resnet", weights=summary["backbone"])


def test_dicom_images_are_read_through_pydicom(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    class Dataset:
        SamplesPerPixel, PhotometricInterpretation = 1, "MONOCHROME2"
        pixel_array = (blobs(0, 48, 1)[..., 0].astype(np.int16) * 8) - 1000
        RescaleSlope, RescaleIntercept = 1, 0

    module = types.ModuleType("pydicom")
    module.dcmread = lambda path, **kwargs: Dataset()  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "pydicom", module)
    folder = tmp_path / "scans"
    folder.mkdir()
    for i in range(4):
        (folder / f"s{i}.dcm").write_bytes(b"DICM")
    found = collect_images(tiny_recipe(tmp_path, folder=folder).pretrain.images, in_chans=1)
    assert found.channels == {1: 4}
    views = MultiViews("simclr", ViewsConfig(crop_size=32), (0.5,), (0.25,), 1)
    from resbackbone.data import read_image

    assert [tuple(v.shape) for v in views(read_image(found.paths[0], in_chans=1))] == [(1, 32, 32)] * 2


# --- bad input --------------------------------------------------------------------------------


def test_an_empty_folder_is_named(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    recipe = tiny_recipe(tmp_path, folder=tmp_path / "empty")
    with pytest.raises(ValueError, match=r"pretrain\.images\[0\]: folder .*empty is empty; put images in it"):
        Pretrainer(recipe, progress=False)
    recipe = tiny_recipe(tmp_path, folder=tmp_path / "missing")
    with pytest.raises(ValueError, match=r"pretrain\.images\[0\]: folder .*missing does not exist"):
        Pretrainer(recipe, progress=False)


def test_a_folder_without_readable_images_counts_what_it_skipped(tmp_path: Path) -> None:
    folder = tmp_path / "junk"
    folder.mkdir()
    (folder / "notes.txt").write_text("x")
    (folder / "labels.csv").write_text("x")
    (folder / "empty.png").write_bytes(b"")
    (folder / "fake.jpg").write_bytes(b"not a jpeg at all")
    recipe = tiny_recipe(tmp_path, folder=folder)
    with pytest.raises(
        ValueError,
        match=r"folder .*junk has no readable image: 4 files skipped: 2 not image files by name \(.*\); "
        r"1 file is empty \(0 bytes\) \(empty\.png\); 1 not an image file that can be read \(fake\.jpg\)",
    ):
        Pretrainer(recipe, progress=False)
    write_images(folder, 4)  # readable images beside the junk: a warning with the same counts
    with pytest.warns(DataWarning, match=r"4 files skipped: 2 not image files by name"):
        found = collect_images(recipe.pretrain.images, in_chans=3)
    assert len(found.paths) == 4


def test_in_chans_that_does_not_fit_the_images(tmp_path: Path) -> None:
    recipe = tiny_recipe(tmp_path, "model.in_chans=4")
    with pytest.raises(
        ValueError,
        match=r"model\.in_chans=4 does not fit the images: 8 images have 3 channels \(e\.g\. .*im0\.png\)"
        r".*Set model\.in_chans: 3",
    ):
        Pretrainer(recipe, progress=False)


def test_a_frozen_backbone_is_refused(tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match=r"model: .*trainable_stages=0 freezes the whole backbone"):
        tiny_recipe(tmp_path, "model.trainable_stages=0")
    with pytest.raises(RecipeError, match=r"model: .*norm='frozen_bn' freezes the batch norms"):
        tiny_recipe(tmp_path, "model.norm=frozen_bn")


def test_recipe_keys_and_options_are_checked(tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match=r"pretrain\.methd: unknown key; did you mean 'pretrain\.method'\?"):
        tiny_recipe(tmp_path, "pretrain.methd=byol")
    with pytest.raises(RecipeError, match=r"method 'simclar' is not known: expected one of \['byol', 'densecl'"):
        tiny_recipe(tmp_path, "pretrain.method=simclar")
    with pytest.raises(RecipeError, match=r"memory_bank does not apply to method 'simclr' .* remove pretrain\.memory"):
        tiny_recipe(tmp_path, "pretrain.memory_bank=128")
    with pytest.raises(
        RecipeError, match=r"optim\.ema=0\.99: pretraining writes the trained backbone.*remove optim\.ema"
    ):
        tiny_recipe(tmp_path, "optim.ema=0.99")


def test_weights_of_another_architecture_name_the_keys(pretrained: Path) -> None:
    with pytest.raises(
        ValueError,
        match=r"does not fit backbone 'test_resnet_bottleneck'.*(missing|shape mismatches) \(.*layer1\.0\..*"
        r"The file records a 'test_resnet' backbone \(in_chans 3\): build create_backbone\('test_resnet'\)",
    ):
        create_backbone("test_resnet_bottleneck", weights=str(pretrained / "backbone.safetensors"))


# --- monitor ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "recipe"), [("mask_folder", "dsb2018_deeplabv3plus_cpu"), ("voc", "bccd_faster_rcnn_cpu")]
)
def test_the_dense_probe_reads_masks_and_boxes(fmt: str, recipe: str, tmp_path: Path) -> None:
    sets = write_dataset(fmt, tmp_path / fmt)
    root = next(s.split("=", 1)[1] for s in sets if s.startswith("data.root="))
    sets = [s for s in sets if s.startswith("data.classes")]
    recipe_path = REPO_ROOT / "recipes" / f"{recipe}.yaml"
    cfg = MonitorConfig(recipe=recipe_path, root=Path(root), split="train", images=4, overrides=sets)
    probe = build_probe_set(cfg, mean=(0.5,) * 3, std=(0.25,) * 3, in_chans=3)
    assert probe.images.shape[0] == 4 and probe.labels.shape == (4, *probe.images.shape[2:])
    assert set(probe.labels.unique().tolist()) - {-1} == set(range(len(probe.classes)))
    backbone = create_backbone("test_resnet", out_levels=("C3", "C4", "C5"))
    assert 0.0 < dense_probe(backbone, probe, torch.device("cpu")) <= 1.0


def test_a_run_logs_the_probe_before_and_after(tmp_path: Path) -> None:
    sets = write_dataset("mask_folder", tmp_path / "masks")
    root = next(s.split("=", 1)[1] for s in sets if s.startswith("data.root="))
    monitor = f"[{{recipe: {REPO_ROOT / 'recipes/dsb2018_deeplabv3plus_cpu.yaml'}, root: {root}, split: val}}]"
    Pretrainer(tiny_recipe(tmp_path, f"pretrain.monitor={monitor}"), progress=False).fit()
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1]
    assert all(0 <= r["monitor/probe_miou"] <= 1 and "monitor/embedding_std" in r for r in rows)
    assert "monitor/dsb2018_deeplabv3plus_cpu/val/probe_miou" in rows[1]


# --- command line and recipes -------------------------------------------------------------


def test_cli_pretrain_export_and_info(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    recipe = REPO_ROOT / "recipes" / "pretrain" / "simclr_resnet18_cpu.yaml"
    folder = write_images(tmp_path / "images", 8)
    sets = [
        "model.backbone=test_resnet",
        "pretrain.views.resize=48",
        "pretrain.views.crop_size=32",
        "optim.epochs=1",
        "optim.batch_size=4",
        "run.max_steps_per_epoch=1",
        "run.workers=0",
        "run.device=cpu",
        "pretrain.monitor=[]",
        "optim.amp=none",
    ]
    args = ["pretrain", str(recipe), "--images", str(folder), "--output", str(tmp_path / "run"), "--no-progress"]
    assert main([*args, *(x for s in sets for x in ("--set", s))]) == 0
    assert main(["backbone", "export", str(tmp_path / "run" / "last.pt"), "--out", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "backbone.safetensors").is_file() and (tmp_path / "out" / "backbone.json").is_file()
    capsys.readouterr()
    assert main(["info", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "test_resnet backbone, in_chans 3, pretrained with simclr on 8 images" in out
    assert re.search(r"loads as: LoadReport\(.*: \d+ loaded\)", out)


def test_cli_without_lightly_says_how_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "lightly" else real(name, *a))
    assert main(["pretrain", str(REPO_ROOT / "recipes" / "pretrain" / "simclr_resnet18_cpu.yaml")]) == 2
    assert "pip install 'resbackbone[pretrain]'" in capsys.readouterr().err


PRETRAIN_RECIPES = sorted((REPO_ROOT / "recipes" / "pretrain").glob("*.yaml"))


@pytest.mark.parametrize("path", PRETRAIN_RECIPES, ids=[p.stem for p in PRETRAIN_RECIPES])
def test_every_pretraining_recipe_loads(path: Path) -> None:
    from resbackbone.pretrain import PretrainRecipe, load_pretrain_recipe

    recipe = load_pretrain_recipe(path)
    assert recipe.pretrain.method in METHODS
    assert PretrainRecipe.model_validate(recipe.model_dump(mode="json", by_alias=True)) == recipe
