"""The whole-model bench (``resbackbone bench --models``): its options are checked, and its rows compare outputs."""

from __future__ import annotations

import pytest

from resbackbone.bench.pipelines import PipelineConfig, format_pipelines, run_pipelines


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"models": ("unet",)}, "unet"),
        ({"rows": ("ours-tensorrt",)}, "ours-tensorrt"),
        ({"size": 32}, "size=32"),
        ({"batch_size": 0}, "batch_size=0"),
    ],
)
def test_options_outside_the_table_are_refused_naming_them(options, named):
    with pytest.raises(ValueError) as info:
        PipelineConfig(**options)
    assert named in str(info.value)
    assert "expected" in str(info.value)


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["resnet18", "resnet34"], "backbones resnet34"),
        (["--devices", "cuda"], "--devices=cuda"),
        (["--weights", "imagenet"], "--weights=imagenet"),
        (["-b", "1,8"], "--batch-sizes=1,8"),
        (["--train-amp"], "--train-amp"),
    ],
)
def test_bench_models_refuses_the_options_it_would_ignore(argv, named, capsys, tmp_path):
    from resbackbone.cli import main

    assert main(["bench", "--models", "deeplabv3plus", "--out", str(tmp_path), *argv]) == 2
    err = capsys.readouterr().err
    assert named in err and "would be ignored" in err
    assert not any(tmp_path.iterdir())


def test_onnxruntime_row_agrees_with_eager_and_the_library_row_says_why_it_is_skipped():
    pytest.importorskip("onnxruntime", reason="the [export] extra (onnx, onnxruntime, onnxscript) is not installed")
    config = PipelineConfig(
        models=("deeplabv3plus",),
        backbone="test_resnet",
        batch_size=2,
        size=64,
        rows=("ours-eager", "ours-onnxruntime", "library"),
        warmup=1,
        repeats=1,
    )
    result = run_pipelines(config)
    rows = {row["row"]: row for row in result["rows"]}
    assert rows["ours-eager"]["status"] == "ok" and rows["ours-eager"]["images_per_s"] > 0
    assert rows["ours-onnxruntime"]["status"] == "ok"
    assert rows["ours-onnxruntime"]["agreement"] >= 0.999
    assert rows["smp"]["status"] == "skipped" and "resnet50" in rows["smp"]["note"]
    table = format_pipelines(result)
    assert "| deeplabv3plus | ours-onnxruntime |" in table and "skipped" in table
