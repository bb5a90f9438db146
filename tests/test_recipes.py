from __future__ import annotations

from pathlib import Path

import pytest

from resbackbone.engine.builders import build_model, describe_inference
from resbackbone.recipes import Recipe, RecipeError, load_recipe

from .conftest import REPO_ROOT

RECIPES = sorted((REPO_ROOT / "recipes").glob("*.yaml"))


@pytest.mark.parametrize("path", RECIPES, ids=[p.stem for p in RECIPES])
def test_every_recipe_loads_and_validates(path: Path) -> None:
    recipe = load_recipe(path)
    assert isinstance(recipe, Recipe) and recipe.name
    assert recipe.task in ("detection", "segmentation")
    # checkpoints store the dumped recipe, with every field set: it must validate again unchanged
    assert Recipe.model_validate(recipe.model_dump(mode="json", by_alias=True)) == recipe


def _write(tmp_path: Path, text: str, name: str = "r.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


BASE = """
name: base
model: {head: deeplabv3plus, backbone: test_resnet, backbone_weights: null}
data: {format: shapes, image_size: 64}
optim: {lr: 0.01, epochs: 2, batch_size: 4}
"""


def test_misspelt_key_names_its_path_and_suggests(tmp_path: Path) -> None:
    path = _write(tmp_path, BASE.replace("lr: 0.01", "lrr: 0.01"))
    with pytest.raises(RecipeError, match=r"optim\.lrr: unknown key; did you mean 'optim\.lr'\?"):
        load_recipe(path)


def test_unknown_section(tmp_path: Path) -> None:
    path = _write(tmp_path, BASE + "optimizer: {lr: 1}\n")
    with pytest.raises(RecipeError, match=r"optimizer: unknown key; did you mean 'optim'\?"):
        load_recipe(path)


def test_unknown_key_in_data_section(tmp_path: Path) -> None:
    path = _write(tmp_path, BASE.replace("image_size: 64", "image_sise: 64"))
    with pytest.raises(RecipeError, match=r"data\.image_sise: unknown key; did you mean 'data\.image_size'\?"):
        load_recipe(path)


def test_bad_value_names_path_and_value(tmp_path: Path) -> None:
    path = _write(tmp_path, BASE.replace("epochs: 2", "epochs: 0"))
    with pytest.raises(RecipeError, match=r"optim\.epochs: .*greater than or equal to 1 \(got 0\)"):
        load_recipe(path)


def test_unknown_backbone_in_recipe(tmp_path: Path) -> None:
    path = _write(tmp_path, BASE.replace("test_resnet", "resnet5"))
    with pytest.raises(RecipeError, match=r"model: Unknown backbone 'resnet5'\. Close matches: 'resnet50'"):
        load_recipe(path)


def test_head_options_are_checked_against_the_torchvision_head(tmp_path: Path) -> None:
    detection = BASE.replace("deeplabv3plus", "faster_rcnn").replace(
        "format: shapes, image_size: 64", "format: voc, root: ."
    )
    recipe = load_recipe(
        _write(
            tmp_path,
            detection.replace(
                "backbone_weights: null", "backbone_weights: null, head_options: {box_batch_size_per_image: 128}"
            ),
        )
    )
    assert recipe.model.head_options == {"box_batch_size_per_image": 128}
    path = _write(
        tmp_path,
        detection.replace("backbone_weights: null", "backbone_weights: null, head_options: {box_batch_size: 128}"),
    )
    with pytest.raises(RecipeError, match=r"model: .*'box_batch_size' is not an option of torchvision's FasterRCNN"):
        load_recipe(path)
    path = _write(
        tmp_path, BASE.replace("backbone_weights: null", "backbone_weights: null, head_options: {topk_candidates: 9}")
    )
    with pytest.raises(
        RecipeError, match=r"head_options \['topk_candidates'\] apply to detection heads only, not to 'deeplabv3plus'"
    ):
        load_recipe(path)


def test_levels_fpn_channels_and_box_head_width_apply_to_the_heads_that_have_them(tmp_path: Path) -> None:
    detection = BASE.replace("deeplabv3plus", "faster_rcnn").replace(
        "format: shapes, image_size: 64", "format: voc, root: ."
    )
    recipe = load_recipe(_write(tmp_path, detection), overrides=["model.levels=[C3,C4,C5]", "model.fpn_channels=128"])
    assert recipe.model.levels == ["C3", "C4", "C5"] and recipe.model.fpn_channels == 128
    with pytest.raises(RecipeError, match=r"model\.levels\.0: .*'C2', 'C3', 'C4' or 'C5'"):
        load_recipe(_write(tmp_path, detection), overrides=["model.levels=[P3]"])
    with pytest.raises(RecipeError, match=r"levels=\['C3', 'C4', 'C5'\] applies to faster_rcnn.*remove model\.levels"):
        load_recipe(_write(tmp_path, BASE), overrides=["model.levels=[C3,C4,C5]"])
    with pytest.raises(RecipeError, match=r"fpn_channels=128 applies to detection.*remove model\.fpn_channels"):
        load_recipe(_write(tmp_path, BASE), overrides=["model.fpn_channels=128"])
    recipe = load_recipe(_write(tmp_path, detection), overrides=["model.box_head_width=512"])
    assert build_model(recipe, num_classes=4).roi_heads.box_head.fc7.out_features == 512
    with pytest.raises(RecipeError, match=r"box_head_width=512 applies to faster_rcnn.*remove model\.box_head_width"):
        load_recipe(_write(tmp_path, BASE), overrides=["model.box_head_width=512"])


def test_tta_scales_are_checked_and_named_in_the_summary(tmp_path: Path) -> None:
    recipe = load_recipe(_write(tmp_path, BASE), overrides=["eval.tta=[hflip]", "eval.tta_scales=[1.0, 1.25]"])
    assert recipe.eval.tta_scales == [1.0, 1.25]
    assert describe_inference(recipe) == "native resolution; TTA hflip; scales 1, 1.25"
    assert describe_inference(load_recipe(_write(tmp_path, BASE))) == "native resolution"
    with pytest.raises(RecipeError, match=r"eval\.tta_scales: .*has 5\.0, outside \[0\.25, 4\]"):
        load_recipe(_write(tmp_path, BASE), overrides=["eval.tta_scales=[1.0, 5.0]"])
    detection = BASE.replace("deeplabv3plus", "faster_rcnn").replace(
        "format: shapes, image_size: 64", "format: voc, root: ."
    )
    with pytest.raises(RecipeError, match=r"eval\.tta_scales \[1\.0, 1\.5\] with eval\.tiles.*eval\.tiles: null"):
        load_recipe(_write(tmp_path, detection), overrides=["eval.tiles={size: 64}", "eval.tta_scales=[1.0, 1.5]"])


def test_grad_checkpointing_takes_true_or_stages(tmp_path: Path) -> None:
    recipe = load_recipe(_write(tmp_path, BASE), overrides=["model.grad_checkpointing=true"])
    assert recipe.model.grad_checkpointing is True
    recipe = load_recipe(_write(tmp_path, BASE), overrides=["model.grad_checkpointing=[stem,C2]"])
    assert recipe.model.grad_checkpointing == ["stem", "C2"]
    with pytest.raises(RecipeError, match=r"model\.grad_checkpointing\..*'C4' or 'C5' \(got 'C6'\)"):
        load_recipe(_write(tmp_path, BASE), overrides=["model.grad_checkpointing=[C2,C6]"])


def test_head_must_fit_data_format(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        BASE.replace("format: shapes, image_size: 64", "format: voc, root: .").replace("deeplabv3plus", "deeplabv3"),
    )
    with pytest.raises(RecipeError, match=r"segmentation head, but data\.format 'voc' holds detection annotations"):
        load_recipe(path)


def test_extends_merges_sections(tmp_path: Path) -> None:
    _write(tmp_path, BASE, "base.yaml")
    path = _write(tmp_path, "extends: base.yaml\nname: child\noptim: {lr: 0.05}\nmodel: {backbone: test_resnetv2}\n")
    recipe = load_recipe(path)
    assert recipe.name == "child" and recipe.optim.lr == 0.05 and recipe.optim.epochs == 2
    assert recipe.model.backbone == "test_resnetv2" and recipe.model.head == "deeplabv3plus"


def test_extends_cycle(tmp_path: Path) -> None:
    _write(tmp_path, "extends: b.yaml\n", "a.yaml")
    _write(tmp_path, "extends: a.yaml\n", "b.yaml")
    with pytest.raises(RecipeError, match="'extends' forms a cycle"):
        load_recipe(tmp_path / "a.yaml")


def test_set_overrides(tmp_path: Path) -> None:
    path = _write(tmp_path, BASE)
    recipe = load_recipe(path, overrides=["optim.lr=0.005", "run.seed=7", "model.trainable_stages=null"])
    assert recipe.optim.lr == 0.005 and recipe.run.seed == 7 and recipe.model.trainable_stages is None
    with pytest.raises(RecipeError, match=r"optim\.lrr: unknown key; did you mean 'optim\.lr'"):
        load_recipe(path, overrides=["optim.lrr=1"])
    with pytest.raises(RecipeError, match=r"is not KEY=VALUE"):
        load_recipe(path, overrides=["optim.lr"])


def test_yaml_python_tags_are_refused(tmp_path: Path) -> None:
    path = _write(tmp_path, BASE + "extra: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(RecipeError, match=r"not valid YAML \(safe loader; Python tags are refused\)"):
        load_recipe(path)


def test_missing_recipe_file(tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match=r"Cannot read recipe .*nope\.yaml"):
        load_recipe(tmp_path / "nope.yaml")


def test_data_override_must_exist(tmp_path: Path) -> None:
    path = _write(tmp_path, BASE)
    with pytest.raises(RecipeError, match=r"--data .*missing: no such folder"):
        load_recipe(path, data_root=tmp_path / "missing")


def test_data_override_refused_for_builtin_dataset(tmp_path: Path) -> None:
    path = _write(tmp_path, BASE)
    with pytest.raises(
        RecipeError, match=r"built-in generated dataset \(format 'shapes'\), which takes no data folder"
    ):
        load_recipe(path, data_root=tmp_path)


def test_relative_root_resolves_against_the_recipe(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    path = _write(
        tmp_path,
        BASE.replace("format: shapes, image_size: 64", "format: voc, root: data").replace(
            "deeplabv3plus", "faster_rcnn"
        ),
    )
    assert load_recipe(path).data.root == (tmp_path / "data").resolve()
