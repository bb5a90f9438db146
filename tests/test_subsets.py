"""Label fractions (data.train_fraction / train_count): nested, seeded, recorded, and refused when a class is lost."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from resbackbone.data import DataConfig, build_dataset, subset_indices, take_train_subset
from resbackbone.engine import Trainer
from resbackbone.engine.checkpoint import load_checkpoint
from resbackbone.recipes import RecipeError, load_recipe

from .conftest import REPO_ROOT
from .data_writers import write_mask_folder, write_voc
from .engine_data import tiny_overrides, write_dataset

KEYS = [f"img_{i:03d}.png" for i in range(40)]


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_subsets_are_nested_and_sized(seed: int) -> None:
    small, mid, full = (set(subset_indices(KEYS, fraction=f, seed=seed)) for f in (0.1, 0.25, 1.0))
    assert (len(small), len(mid), len(full)) == (4, 10, 40)
    assert small <= mid <= full
    by_count = [set(subset_indices(KEYS, count=c, seed=seed)) for c in (3, 4, 11)]
    assert by_count[0] <= by_count[1] == small <= by_count[2]


def test_subsets_depend_on_the_images_not_their_listing_order() -> None:
    chosen = {KEYS[i] for i in subset_indices(KEYS, fraction=0.25, seed=3)}
    shuffled = list(np.random.default_rng(5).permutation(KEYS))
    assert {shuffled[i] for i in subset_indices(shuffled, fraction=0.25, seed=3)} == chosen
    assert {KEYS[i] for i in subset_indices(KEYS, fraction=0.25, seed=4)} != chosen  # the seed matters
    assert subset_indices(KEYS, fraction=0.25, seed=3) == sorted(subset_indices(KEYS, fraction=0.25, seed=3))


def test_a_fraction_rounds_up_to_whole_images() -> None:
    assert len(subset_indices(KEYS[:7], fraction=0.1)) == 1
    assert len(subset_indices([f"{i}.png" for i in range(73)], fraction=0.1)) == 8


def test_count_larger_than_the_split_is_refused() -> None:
    with pytest.raises(ValueError, match=r"data\.train_count=41 is more than the 40 images .* use at most 40"):
        subset_indices(KEYS, count=41)


def test_fraction_and_count_together_are_refused() -> None:
    with pytest.raises(ValueError, match=r"data\.train_fraction=0\.5 and data\.train_count=3 both set; keep one"):
        DataConfig(format="shapes", train_fraction=0.5, train_count=3)


def test_fraction_out_of_range_names_the_key(tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match=r"data\.train_fraction: .*greater than 0 \(got 0\)"):
        load_recipe(REPO_ROOT / "recipes" / "quickstart.yaml", overrides=["data.train_fraction=0"])


def _voc_with_rare_class(root: Path) -> DataConfig:
    """10 images of class 'a'; one of them also has the only 'b'."""
    items = [
        (f"im{i}", (64, 64), [("a", (4.0, 4.0, 30.0, 30.0))] + ([("b", (34.0, 34.0, 60.0, 60.0))] if i == 6 else []))
        for i in range(10)
    ]
    write_voc(root, {"train": items})
    return DataConfig(format="voc", root=root, classes=["a", "b"], train="train", image_size=64)


def _train_set(cfg: DataConfig, task: str = "detection") -> object:
    return build_dataset(cfg, "train", task=task, train=True, mean=(0.5,) * 3, std=(0.5,) * 3)


def test_a_subset_without_a_class_is_refused_naming_it(tmp_path: Path) -> None:
    cfg = _voc_with_rare_class(tmp_path / "voc")
    keys = [str(tmp_path / "voc" / "JPEGImages" / f"im{i}.png") for i in range(10)]
    seed = next(s for s in range(50) if 6 not in subset_indices(keys, fraction=0.3, seed=s))
    with pytest.raises(
        ValueError, match=r"3 of 10 training images \(data\.train_fraction 0\.3, subset_seed \d+\): none "
    ):
        take_train_subset(_train_set(cfg), cfg.model_copy(update={"train_fraction": 0.3, "subset_seed": seed}))
    with pytest.raises(
        ValueError, match=r"none of them has class 'b'.*raise data\.train_fraction .* data\.subset_seed"
    ):
        take_train_subset(_train_set(cfg), cfg.model_copy(update={"train_fraction": 0.3, "subset_seed": seed}))
    kept = next(s for s in range(50) if 6 in subset_indices(keys, fraction=0.3, seed=s))
    subset = take_train_subset(_train_set(cfg), cfg.model_copy(update={"train_fraction": 0.3, "subset_seed": kept}))
    assert len(subset) == 3 and subset.subset.of == 10


def test_a_segmentation_subset_with_background_only_is_refused(tmp_path: Path) -> None:
    image = np.full((32, 32, 3), 90, np.uint8)
    empty, nucleus = np.zeros((32, 32), np.uint8), np.zeros((32, 32), np.uint8)
    nucleus[8:20, 8:20] = 255
    items = {f"m{i}": (image, nucleus if i == 0 else empty) for i in range(6)}
    write_mask_folder(tmp_path / "m", items, {"train": list(items)})
    cfg = DataConfig(format="mask_folder", root=tmp_path / "m", train="train", image_size=32)
    with pytest.raises(ValueError, match=r"1 of 6 training images .*none of them has class 'foreground'"):
        keys = [str(tmp_path / "m" / "images" / f"{n}.png") for n in items]
        seed = next(s for s in range(50) if subset_indices(keys, count=1, seed=s) != [0])
        take_train_subset(
            _train_set(cfg, "segmentation"), cfg.model_copy(update={"train_count": 1, "subset_seed": seed})
        )


def test_the_run_trains_on_the_subset_and_records_it(tmp_path: Path, session_cache: Path) -> None:
    overrides = write_dataset("voc", tmp_path / "data") + tiny_overrides(tmp_path / "run")
    subset = ["data.train_fraction=0.5", "data.subset_seed=2", "data.train_on_val=false", "run.overlays=0"]
    recipe = load_recipe(REPO_ROOT / "recipes" / "bccd_faster_rcnn_cpu.yaml", overrides=[*overrides, *subset])
    trainer = Trainer(recipe, progress=False)
    assert len(trainer.train_set) == 2
    trainer.fit()
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    recorded = summary["train_images"]
    assert recorded["images"] == 2 and recorded["of"] == 4 and recorded["fraction"] == 0.5 and recorded["seed"] == 2
    assert sorted(recorded["paths"]) == sorted(map(str, trainer.train_set.paths))


def test_train_on_val_trains_on_both_splits_and_needs_a_val_split(tmp_path: Path) -> None:
    image, mask = np.full((32, 32, 3), 90, np.uint8), np.zeros((32, 32), np.uint8)
    mask[8:20, 8:20] = 255
    items = {f"m{i}": (image, mask) for i in range(5)}
    write_mask_folder(tmp_path / "m", items, {"train": ["m0", "m1", "m2"], "val": ["m3", "m4"]})
    cfg = DataConfig(format="mask_folder", root=tmp_path / "m", image_size=32, train_on_val=True)
    assert [p.name for p in _train_set(cfg, "segmentation").paths] == [f"m{i}.png" for i in range(5)]
    val = build_dataset(cfg, "val", task="segmentation", train=False, mean=(0.5,) * 3, std=(0.5,) * 3)
    listed = build_dataset(cfg, "train", task="segmentation", train=False, mean=(0.5,) * 3, std=(0.5,) * 3)
    assert (len(val), len(listed)) == (2, 3), "the splits themselves (as data stats and pretraining read them) stay"
    (tmp_path / "m" / "val.txt").unlink()
    fix = r"; set data.val to it, or data.train_on_val: false"
    with pytest.raises(ValueError, match=r"data.train_on_val is true but .* has no val split .*" + fix):
        _train_set(cfg, "segmentation")


@pytest.mark.parametrize("train_on_val", [False, True])
def test_a_run_that_trains_on_val_keeps_its_last_evaluation(
    train_on_val: bool, tmp_path: Path, session_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Val scores falling from one evaluation to the next: a held-out val keeps the better epoch in best.pt,
    a trained-on val keeps the last."""
    overrides = write_dataset("voc", tmp_path / "data") + tiny_overrides(tmp_path / "run")
    settings = [f"data.train_on_val={train_on_val}", "optim.epochs=2", "eval.every=1", "run.overlays=0"]
    recipe = load_recipe(REPO_ROOT / "recipes" / "bccd_faster_rcnn_cpu.yaml", overrides=[*overrides, *settings])
    trainer = Trainer(recipe, progress=False)
    assert len(trainer.train_set) == 4 + len(trainer.eval_set) * train_on_val
    scores, evaluate = iter([0.9, 0.5]), trainer.evaluate

    def falling_val(dataset: object = None, **kwargs: object) -> dict[str, float]:
        return {"map50": next(scores)} if dataset is None else evaluate(dataset, **kwargs)

    monkeypatch.setattr(trainer, "evaluate", falling_val)
    summary = trainer.fit()
    assert summary["best"]["epoch"] == (2 if train_on_val else 1)
    assert load_checkpoint(tmp_path / "run" / "best.pt")["epoch"] == summary["best"]["epoch"]


@pytest.mark.parametrize("train_on_val", [False, True])
def test_a_trained_on_val_is_checked_with_one_pass_and_the_test_with_the_recipes_tta(
    train_on_val: bool, tmp_path: Path, session_cache: Path
) -> None:
    overrides = write_dataset("voc", tmp_path / "data") + tiny_overrides(tmp_path / "run")
    settings = [f"data.train_on_val={train_on_val}", "eval.tta=[hflip]", "eval.tta_scales=[1.0, 1.5]"]
    recipe = load_recipe(REPO_ROOT / "recipes" / "bccd_faster_rcnn_cpu.yaml", overrides=[*overrides, *settings])
    trainer = Trainer(recipe, progress=False)
    images: list[int] = []
    trainer.model.register_forward_pre_hook(lambda _, args: images.append(len(args[0])))
    trainer.evaluate()
    assert sum(images) == len(trainer.eval_set) * (1 if train_on_val else 4)
    images.clear()
    trainer.evaluate(trainer.test_set)
    assert sum(images) == len(trainer.test_set) * 4  # hflip at two scales: the held-out figure gets every pass


def test_early_stopping_on_a_trained_on_val_is_refused(tmp_path: Path) -> None:
    overrides = [*write_dataset("voc", tmp_path / "data"), "data.train_on_val=true", "run.early_stopping=3"]
    with pytest.raises(RecipeError, match=r"run.early_stopping=3 watches val, but data.train_on_val trains on val"):
        load_recipe(REPO_ROOT / "recipes" / "bccd_faster_rcnn_cpu.yaml", overrides=overrides)
    load_recipe(REPO_ROOT / "recipes" / "bccd_faster_rcnn_cpu.yaml", overrides=[*overrides, "run.early_stopping=null"])
