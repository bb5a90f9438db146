"""The torch-free runtime: preprocessing as evaluation does it, metadata, resumable result files, the predict loop."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from resbackbone.runtime import (
    METADATA_KEYS,
    ModelInfo,
    Prediction,
    PredictionLog,
    fit_image,
    mask_to_image,
    output_names,
    predict_images,
    resize_logits,
)

from .conftest import REPO_ROOT
from .data_writers import picture, save


@pytest.mark.parametrize("resize", ["letterbox", "stretch"])
@pytest.mark.parametrize(
    ("shape", "dtype"), [((97, 131, 3), np.uint8), ((300, 180, 1), np.float32), ((64, 64, 3), np.uint8)], ids=str
)
def test_fit_image_is_the_evaluation_transform(shape: tuple[int, ...], dtype: type, resize: str) -> None:
    """What predict feeds a model is what evaluation fed it: the recipe's albumentations pipeline, pixel for pixel."""
    from resbackbone.data import build_transforms, image_to_tensor
    from resbackbone.data.config import DataConfig

    rng = np.random.default_rng(0)
    image = (rng.random(shape) * (255 if dtype == np.uint8 else 1)).astype(dtype)
    cfg = DataConfig(format="mask_folder", root=".", classes=["a", "b"], image_size=[96, 80], resize=resize)
    transform = build_transforms(cfg, task="segmentation", train=False)
    expected = image_to_tensor(transform(image=image)["image"], (0,), (1,))
    fitted = fit_image(image, cfg.size_hw, resize)
    np.testing.assert_array_equal(fitted.pixels, expected.numpy())
    assert fitted.size == shape[:2]


def test_results_map_back_to_the_image() -> None:
    fitted = fit_image(np.zeros((50, 100, 3), np.uint8), (64, 64))
    assert fitted.valid == (32, 64) and fitted.scale == (0.64, 0.64)
    class_map = np.zeros((64, 64), np.int64)
    class_map[:16, :32] = 1  # the top-left quarter of the image; the padding below holds class 2
    class_map[32:] = 2
    mask = mask_to_image(class_map, fitted)
    assert mask.shape == (50, 100) and set(np.unique(mask)) == {0, 1}
    assert mask[:25, :50].all() and not mask[25:].any() and not mask[:, 50:].any()
    logits = np.stack([np.zeros((64, 64)), (class_map == 1) * 5.0 - 1.0])
    assert np.array_equal(resize_logits(logits, fitted) > 0, mask > 0)


def test_output_names_are_distinct(tmp_path: Path) -> None:
    files = [tmp_path / "a" / "x.png", tmp_path / "b" / "x.png", tmp_path / "a" / "y.png"]
    assert output_names(files) == {files[0]: "a__x", files[1]: "b__x", files[2]: "y"}
    # the extension alone tells these apart (a/x.png and a/x.jpg once both wrote x_mask.png)
    files = [tmp_path / "a" / "x.png", tmp_path / "a" / "x.jpg", tmp_path / "b" / "x.png"]
    assert output_names(files) == {files[0]: "a__x_png", files[1]: "a__x_jpg", files[2]: "b__x"}
    names = output_names([tmp_path / "x.png", tmp_path / "x.tif"])
    assert sorted(names.values()) == ["x_png", "x_tif"]


def _info(**changes: object) -> ModelInfo:
    values = {"task": "segmentation", "classes": ["background", "cell"], "image_size": [64, 64], "head": "unet"}
    return ModelInfo(**(values | changes))


def test_metadata_round_trips_and_is_described() -> None:
    info = _info(window=[40.0, 400.0], intensity_percentiles=[1.0, 99.8], batch=None, levels=["C2"], bn_folded=True)
    props = info.to_metadata()
    assert all(isinstance(v, str) for v in props.values())
    assert props["classes"] == '["background", "cell"]' and props["task"] == "segmentation"
    assert ModelInfo.from_metadata(props, source="m.onnx") == info
    from dataclasses import fields

    assert [k.name for k in METADATA_KEYS] == ["resbackbone_format", *(f.name for f in fields(ModelInfo))]
    doc = (REPO_ROOT / "docs" / "export.md").read_text()
    missing = [k.name for k in METADATA_KEYS if f"`{k.name}`" not in doc]
    assert not missing, f"docs/export.md does not describe {missing}"


def test_metadata_written_before_a_key_was_added_still_reads() -> None:
    props = _info().to_metadata()
    assert props["resbackbone_format"] == "1"  # nothing in it needs version 2: older releases still read it
    assert _info(intensity_percentiles=[1.0, 99.8]).to_metadata()["resbackbone_format"] == "2"
    del props["intensity_percentiles"]  # files exported before the key existed
    assert ModelInfo.from_metadata(props, source="m.onnx").intensity_percentiles is None
    del props["window"]  # a key of the first files stays required
    with pytest.raises(ValueError, match=r"metadata key 'window' is missing"):
        ModelInfo.from_metadata(props, source="m.onnx")


def test_predict_reads_images_as_the_recipe_trained_on_them(tmp_path: Path) -> None:
    """A recipe's contrast stretch travels in the model's info to predict (and to exported files)."""
    from resbackbone import create_backbone
    from resbackbone.engine.predict import model_info
    from resbackbone.recipes import load_recipe
    from resbackbone.runtime.predict import _read

    recipe = load_recipe(REPO_ROOT / "recipes" / "quickstart.yaml", overrides=["data.intensity_percentiles=[0, 100]"])
    info = model_info(recipe, ["background", "cell"], create_backbone("resnet18"), source="m.pt")
    assert info.intensity_percentiles == [0.0, 100.0]
    dim = save(tmp_path / "dim.png", np.tile(np.arange(40, dtype=np.uint8)[None, :, None], (8, 1, 3)))
    pixels = _read(dim, info)
    assert pixels.min() == 0 and pixels.max() == 255
    assert _read(dim, ModelInfo.from_metadata(info.to_metadata(), source="m.onnx")).max() == 255
    assert _read(dim, _info()).max() == 39


def test_metadata_of_another_file_is_refused() -> None:
    with pytest.raises(ValueError, match=r"m\.onnx was not exported by resbackbone: .*no 'resbackbone_format'.*export"):
        ModelInfo.from_metadata({"producer": "x"}, source="m.onnx")
    props = _info().to_metadata()
    with pytest.raises(ValueError, match=r"m\.onnx: metadata key 'in_chans' holds 'three', not a int in JSON"):
        ModelInfo.from_metadata(props | {"in_chans": "three"}, source="m.onnx")
    with pytest.raises(ValueError, match=r"resbackbone_format 9; this resbackbone reads 1, 2\. Upgrade"):
        ModelInfo.from_metadata(props | {"resbackbone_format": "9"}, source="m.onnx")


def _images(folder: Path) -> list[Path]:
    paths = [save(folder / f"im{i}.png", picture(40 + 20 * i, 60, [(5, 5, 30, 30)])) for i in range(3)]
    bad = folder / "broken.jpg"
    save(bad, picture(50, 50))
    bad.write_bytes(bad.read_bytes()[: bad.stat().st_size * 2 // 3])  # truncated, as a copy cut short
    return [*paths, bad]


def _fake_runner(calls: list[int]) -> object:
    def run(images: list[np.ndarray]) -> list[Prediction]:
        calls.append(len(images))
        return [Prediction(mask=(image[..., 0] > 100).astype(np.int64)) for image in images]

    return run


def test_predict_skips_what_it_cannot_read_and_resumes(tmp_path: Path) -> None:
    """One truncated file in the lot is listed and skipped; a killed run loses only the line it was writing,
    and the same command again does the rest."""
    images = _images(tmp_path / "in")
    out = tmp_path / "out"
    calls: list[int] = []
    header = {"model": "m.onnx", "model_sha256": "abc"}
    result = predict_images(_fake_runner(calls), _info(), [tmp_path / "in"], out, header=header, progress=False)
    assert result.written == 3 and [s["image"] for s in result.skipped] == [str(images[3])]
    assert "truncated or corrupt" in result.skipped[0]["reason"]
    assert json.loads((out / "skipped.jsonl").read_text())["image"] == str(images[3])
    lines = (out / "predictions.jsonl").read_text().splitlines()
    assert [json.loads(line)["image"] for line in lines] == [str(p) for p in images[:3]]
    record = json.loads(lines[1])
    assert record["size"] == [60, 60] and record["pixels"]["cell"] == 25 * 25
    assert (out / "im1_mask.png").is_file() and (out / "im1_overlay.png").is_file()

    # killed while writing the third line: the second and third are done again, nothing twice
    (out / "predictions.jsonl").write_text(lines[0] + "\n" + lines[1][:20])
    calls.clear()
    again = predict_images(_fake_runner(calls), _info(), [tmp_path / "in"], out, header=header, progress=False)
    assert again.already_done == 1 and again.written == 2 and calls == [1, 1]
    assert (out / "predictions.jsonl").read_text().splitlines() == lines

    with pytest.raises(ValueError, match=r"holds predictions made otherwise \(model_sha256: 'abc' there, 'def' now\)"):
        predict_images(_fake_runner(calls), _info(), images[:1], out, header={"model_sha256": "def"}, progress=False)


def test_a_batch_the_model_fails_on_is_retried_image_by_image(tmp_path: Path) -> None:
    images = _images(tmp_path / "in")[:3]

    def run(batch: list[np.ndarray]) -> list[Prediction]:
        if any(image.shape[0] == 60 for image in batch):
            raise RuntimeError("this one")
        return [Prediction(mask=np.zeros(image.shape[:2], np.int64)) for image in batch]

    result = predict_images(run, _info(), images, tmp_path / "out", header={}, batch_size=3, progress=False)
    assert result.written == 2
    assert result.skipped == [{"image": str(images[1]), "reason": "the model failed on it: RuntimeError: this one"}]


def test_prediction_log_needs_the_same_threshold(tmp_path: Path) -> None:
    PredictionLog(tmp_path, {"model_sha256": "a", "score_thresh": 0.5}).write({"image": "x"})
    with pytest.raises(ValueError, match=r"score_thresh: 0\.5 there, 0\.3 now\)\. Pass another --out"):
        PredictionLog(tmp_path, {"model_sha256": "a", "score_thresh": 0.3})


def test_a_damaged_prediction_log_is_named_with_its_line(tmp_path: Path) -> None:
    (tmp_path / "predictions.jsonl").write_text('{"image": "a.png"}\n{"mask": "b_mask.png"}\n')
    with pytest.raises(
        ValueError, match=r"predictions\.jsonl, line 2: not a prediction line \(KeyError.*another --out"
    ):
        PredictionLog(tmp_path, {"model_sha256": "a"})
    (tmp_path / "predictions.jsonl").write_text('{"image": "a.png"}\nnot json\n')
    with pytest.raises(ValueError, match=r"line 2: not a prediction line \(JSONDecodeError"):
        PredictionLog(tmp_path, {"model_sha256": "a"})


def test_runtime_imports_no_torch() -> None:
    code = (
        "import sys, resbackbone.runtime, resbackbone.cli; from resbackbone.data.images import read_image; "
        "from resbackbone.cli import build_parser; build_parser('predict'); "
        "assert 'torch' not in sys.modules, 'torch imported'; assert 'albumentations' not in sys.modules"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT)
    assert result.returncode == 0, result.stderr
