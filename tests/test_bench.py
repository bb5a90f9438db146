from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch

from resbackbone import build_detector, build_fpn, cli, create_backbone
from resbackbone.bench import (
    RESULT_FIELDS,
    TRAIN_FIELDS,
    BenchConfig,
    PeakMemory,
    count_macs,
    format_markdown,
    format_table,
    main,
    matmul_ceiling,
    run_benchmark,
    runner,
    write_reports,
)
from resbackbone.bench.candidates import make_fpn
from resbackbone.bench.machine import ceiling_settings
from resbackbone.bench.train_step import build_train_model
from resbackbone.engine import builders

TOP_LEVEL = {"schema_version", "created", "command", "config", "machine", "ceilings", "results", "train", "duration_s"}
MACHINE = {"cpu_model", "cpu_flags", "cpu_cores", "torch_threads", "gpus", "versions", "load_average", "platform"}


def _tiny(**overrides: object) -> BenchConfig:
    options = dict(
        backbones=("test_resnet",),
        batch_sizes=(1,),
        input_sizes=(64,),
        devices=("cpu",),
        modes=("eager", "fold"),
        competitors=(),
        warmup=1,
        repeats=2,
        ceiling_s=0.02,
    )
    options.update(overrides)
    return BenchConfig(**options)


@pytest.fixture(scope="module")
def tiny_result() -> dict:
    return run_benchmark(_tiny())


def test_end_to_end_writes_json_with_every_field(tiny_result: dict, tmp_path: Path) -> None:
    paths = write_reports(tiny_result, tmp_path, stem="tiny")
    document = json.loads(paths["json"].read_text())
    assert set(document) >= TOP_LEVEL
    assert set(document["machine"]) >= MACHINE
    assert set(document["ceilings"]["cpu"]) >= {"fp32"}
    assert [(r["impl"], r["mode"]) for r in document["results"]] == [("resbackbone", "eager"), ("resbackbone", "fold")]
    for row in document["results"]:
        assert set(row) == set(RESULT_FIELDS)
        assert row["status"] == "ok", row["note"]
        assert row["images_per_s"] > 0 and row["latency_ms_p50"] <= row["latency_ms_p95"]
        assert row["gflops_per_s"] > 0 and row["ceiling_key"] == "fp32" and row["ceiling_gflops_per_s"] > 0
        assert row["ceiling_fraction"] == pytest.approx(row["gflops_per_s"] / row["ceiling_gflops_per_s"])
        assert row["peak_memory_mib"] is not None and row["memory_method"].startswith("cpu-rss")
        assert row["max_rel_diff"] < 1e-4
    assert document["results"][0]["max_abs_diff"] == 0.0  # the reference itself
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| impl | mode | dtype |" in paths["markdown"].read_text()


def test_terminal_table_lists_every_row(tiny_result: dict) -> None:
    table = format_table(tiny_result)
    assert "test_resnet · cpu · batch 1 · 64×64 · C2–C5" in table
    assert "img/s" in table and "matmul ceiling" in table
    assert table.count("resbackbone  ") == 2
    assert "AMD" in format_markdown(tiny_result) or tiny_result["machine"]["cpu_model"] in format_markdown(tiny_result)


def test_libraries_run_side_by_side_on_the_same_weights() -> None:
    result = run_benchmark(
        _tiny(backbones=("resnet18",), modes=("eager",), competitors=("timm", "torchvision", "smp"), repeats=1)
    )
    rows = {r["impl"]: r for r in result["results"]}
    assert set(rows) == {"resbackbone", "timm", "torchvision", "smp"}
    for impl in ("timm", "torchvision", "smp"):
        assert rows[impl]["status"] == "ok", rows[impl]["note"]
        assert rows[impl]["max_rel_diff"] < 1e-5, f"{impl} did not get our weights"
    assert set(rows["resbackbone"]["ratio_vs"]) == {"timm", "torchvision", "smp"}
    ratio = rows["resbackbone"]["ratio_vs"]["timm"]
    assert ratio == pytest.approx(rows["resbackbone"]["images_per_s"] / rows["timm"]["images_per_s"])


def test_fpn_and_missing_library_models() -> None:
    result = run_benchmark(_tiny(fpn=True, fpn_channels=16, modes=("eager",), competitors=("timm", "torchvision")))
    rows = {r["impl"]: r for r in result["results"]}
    assert rows["resbackbone"]["fpn"] is True and rows["resbackbone"]["status"] == "ok"
    assert rows["timm"]["status"] == "skipped" and "timm has no model" in rows["timm"]["note"]
    assert rows["torchvision"]["status"] == "skipped"


def test_emulated_low_precision_is_skipped_unless_allowed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runner, "native_low_precision", lambda device, dtype: dtype == torch.float32)
    result = run_benchmark(_tiny(modes=("fold-bf16",), repeats=1))
    (row,) = result["results"]
    assert row["status"] == "skipped" and "--allow-emulated" in row["note"]
    assert set(row) == set(RESULT_FIELDS)
    result = run_benchmark(_tiny(modes=("fold-bf16",), repeats=1, allow_emulated=True))
    (row,) = result["results"]
    assert row["status"] == "ok" and row["dtype"] == "bf16" and row["ceiling_key"] == "bf16"
    assert row["max_rel_diff"] < 5e-2


def test_failed_compilation_is_reported_and_measured_eagerly(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: object, **kwargs: object) -> object:
        def run(*inputs: object) -> None:
            # as torch's own deprecation notices do: not a fallback, not for the row's note
            warnings.warn("`torch.jit.script_method` is deprecated. Please switch to `torch.compile`.", stacklevel=1)
            raise RuntimeError("no working C++ compiler")

        return run

    monkeypatch.setattr(torch, "compile", broken)
    (row,) = run_benchmark(_tiny(modes=("fast",), repeats=1))["results"]
    assert row["status"] == "ok" and row["compiled"] is False
    assert "torch.compile failed" in row["note"] and "no working C++ compiler" in row["note"]
    assert "deprecated" not in row["note"]
    assert row["max_rel_diff"] < 1e-4


@pytest.mark.parametrize(
    "model",
    ["backbone", pytest.param("fasterrcnn_fpn", marks=pytest.mark.slow)],  # Faster R-CNN: ~20 s
)
def test_training_figures_with_and_without_checkpointing(model: str) -> None:
    result = run_benchmark(_tiny(inference=False, train=True, train_models=(model,), repeats=1, warmup=1))
    assert result["results"] == []
    rows = result["train"]
    assert [(r["model"], r["grad_checkpointing"]) for r in rows] == [(model, False), (model, True)]
    assert [r["checkpoint_stages"] for r in rows] == [[], ["stem", "layer1", "layer2"]]
    for row in rows:
        assert set(row) == set(TRAIN_FIELDS)
        assert row["status"] == "ok" and row["step_ms_p50"] > 0 and row["peak_memory_mib"] > 0
        assert row["memory_method"] == "cpu-tensor-peak" and row["peak_rss_mib"] is not None
        assert (row["memory_saving"] is None) == (not row["grad_checkpointing"])
    assert "memory saved" in format_table(result)


def test_fpn_rows_run_the_fpn_build_fpn_builds() -> None:
    backbone = create_backbone("test_resnet").eval()
    fpn = make_fpn(backbone, 16, seed=0)
    assert repr(fpn) == repr(build_fpn(backbone, out_channels=16).fpn)
    levels = backbone(torch.rand(1, 3, 64, 64))
    assert list(fpn(levels)) == [*backbone.feature_info.names, "pool"]


def test_training_model_is_the_detector_a_recipe_builds() -> None:
    model, body = build_train_model(
        "fasterrcnn_fpn", "test_resnet", size=64, weights=None, seed=0, device=torch.device("cpu")
    )
    # a recipe's defaults: trainable_stages 3, images at data.image_size, anchors and FPN as build_detector's
    expected = build_detector("faster_rcnn", backbone="test_resnet", num_classes=91, min_size=64, max_size=64)
    assert repr(model) == repr(expected)
    assert [p.requires_grad for p in model.parameters()] == [p.requires_grad for p in expected.parameters()]
    assert body is model.backbone.body and model.training


def test_recipe_options_reach_build_detector(monkeypatch: pytest.MonkeyPatch) -> None:
    options = {"levels": ["C3", "C4", "C5"], "fpn_channels": 16, "head_options": {"box_batch_size_per_image": 32}}
    model, _ = build_train_model(
        "fasterrcnn_fpn", "test_resnet", size=64, weights=None, seed=0, device=torch.device("cpu"), options=options
    )
    assert model.backbone.out_channels == 16 and model.backbone.levels == ("C3", "C4", "C5")
    assert model.roi_heads.fg_bg_sampler.batch_size_per_image == 32

    seen: dict = {}

    def recording(arch: str, **kwargs: object) -> None:
        seen.update(kwargs, arch=arch)
        raise InterruptedError  # what the bench passed is known: no need to time it

    monkeypatch.setattr(builders, "build_detector", recording)  # what resbackbone finetune calls, too
    config = _tiny(inference=False, train=True, train_models=("fasterrcnn_fpn",), train_model_options=options)
    with pytest.raises(InterruptedError):
        run_benchmark(config)
    assert seen["arch"] == "faster_rcnn" and seen["backbone"] == "test_resnet"
    assert seen["levels"] == ["C3", "C4", "C5"] and seen["fpn_channels"] == 16
    assert seen["box_batch_size_per_image"] == 32 and seen["trainable_stages"] == 3 and seen["min_size"] == 64


def test_recipe_norm_builds_the_detector_backbone_with_it() -> None:
    options = {"norm": "gn", "trainable_stages": None}
    model, body = build_train_model(
        "fasterrcnn_fpn", "test_resnet", size=64, weights=None, seed=0, device=torch.device("cpu"), options=options
    )
    assert any(isinstance(m, torch.nn.GroupNorm) for m in body.modules())
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in body.modules())
    assert all(p.requires_grad for p in model.parameters())


def test_count_macs_counts_multiply_accumulates() -> None:
    conv = torch.nn.Conv2d(3, 8, 3, padding=1, bias=False)
    assert count_macs(conv, (2, 3, 10, 10)) == 2 * 8 * 3 * 3 * 3 * 10 * 10  # batch, out, in, kernel, pixels
    with torch.device("meta"):
        backbone = create_backbone("test_resnet").eval()
        pyramid = build_fpn(backbone, out_channels=16).eval()
    assert count_macs("test_resnet", (1, 3, 64, 64)) == count_macs(backbone, (1, 3, 64, 64))
    assert count_macs(pyramid, (1, 3, 64, 64)) > count_macs(backbone, (1, 3, 64, 64))
    assert count_macs("test_resnet", (1, 3, 64, 64), output_stride=8) > count_macs("test_resnet", (1, 3, 64, 64))


@pytest.mark.parametrize("shape", [(3, 64, 64), (1, 3, 0, 64), (1, 3, 64.0, 64)])
def test_count_macs_bad_input_shape_raises(shape: tuple) -> None:
    with pytest.raises(ValueError, match=r"input_shape=.* is not valid: expected \(N, C, H, W\) of ints ≥ 1"):
        count_macs("test_resnet", shape)


def test_cli_info_and_bench_count_the_same_macs(tiny_result: dict, capsys: pytest.CaptureFixture[str]) -> None:
    macs = count_macs("test_resnet", (1, 3, 64, 64))
    assert [r["gmacs_per_image"] for r in tiny_result["results"]] == [macs / 1e9] * 2
    (row,) = run_benchmark(_tiny(input_sizes=(224,), modes=("eager",), repeats=1))["results"]
    assert cli.main(["info", "test_resnet"]) == 0
    assert f"GMACs at 224×224: {row['gmacs_per_image']:.2f}\n" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"modes": ("fastest",)}, r"modes has 'fastest', which is not one of"),
        ({"competitors": ("mmdet",)}, r"competitors has 'mmdet'"),
        ({"batch_sizes": (0,)}, r"batch_sizes=\(0,\) is not valid"),
        ({"input_sizes": (16,)}, r"sizes under 32 px"),
        ({"repeats": 0}, r"repeats=0 is not valid"),
        ({"backbones": ("resnet5",)}, r"Unknown backbone 'resnet5'"),
        ({"train_checkpointing": False}, r"train_checkpointing=False would time two plain steps"),
        ({"train_checkpointing": ("C2", "C7")}, r"train_checkpointing has 'C7', which is not one of \('stem', 'C2'"),
        ({"train_model_options": {"backbone": "resnet50"}}, r"train_model_options has 'backbone', which is not one"),
        ({"train_model_options": {"fpn_channels": 4}}, r"\{'fpn_channels': 4\} is not a valid .*: fpn_channels: Input"),
    ],
)
def test_bad_config_raises(overrides: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        _tiny(**overrides)


def test_train_model_options_not_a_dict_raises() -> None:
    with pytest.raises(TypeError, match=r"train_model_options=\['fpn_channels'\] is not valid: expected a dict"):
        _tiny(train_model_options=["fpn_channels"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on machines without CUDA")
def test_cuda_requested_without_cuda_raises() -> None:
    with pytest.raises(ValueError, match="no CUDA device is available"):
        _tiny(devices=("cuda",))


def test_cli_bench_command_writes_reports(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["test_resnet", "-b", "1", "-s", "64", "--devices", "cpu", "--modes", "eager", "--competitors", ""]
    argv += ["--warmup", "1", "--repeats", "1", "--out", str(tmp_path)]
    assert cli.main(["bench", *argv]) == 0
    assert "resbackbone  eager" in capsys.readouterr().out
    document = json.loads((tmp_path / "bench.json").read_text())
    assert document["config"]["modes"] == ["eager"]
    assert main([*argv[:-1], str(tmp_path / "script")]) == 0
    assert (tmp_path / "script" / "bench.png").is_file()


def test_cli_bench_checkpoint_stages(tmp_path: Path) -> None:
    argv = ["bench", "test_resnet", "-b", "1", "-s", "64", "--devices", "cpu", "--train-only"]
    argv += ["--train-models", "backbone", "--checkpoint-stages", "C5,stem", "--warmup", "1", "--repeats", "1"]
    assert cli.main([*argv, "--out", str(tmp_path)]) == 0
    document = json.loads((tmp_path / "bench.json").read_text())
    assert [r["checkpoint_stages"] for r in document["train"]] == [[], ["stem", "layer4"]]
    assert "stem,layer4" in (tmp_path / "bench.md").read_text()


def test_cli_bench_reports_bad_options(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["bench", "test_resnet", "--modes", "fastest", "--out", ""]) == 2
    assert "modes has 'fastest'" in capsys.readouterr().err


def test_peak_memory_sees_a_64_mib_tensor() -> None:
    with PeakMemory(torch.device("cpu")) as peak:
        block = torch.ones(16 * 2**20)  # 64 MiB, touched
        del block
    assert peak.method.startswith("cpu-rss") and 56 < peak.mib < 200


def test_tensor_peak_counts_live_tensors_not_views_or_existing_ones() -> None:
    existing = torch.ones(4 * 2**20)  # 16 MiB allocated before: not counted
    with PeakMemory(torch.device("cpu"), tensors=True) as peak:
        existing.add_(1)  # in place
        view = existing[::2]  # a view
        a = torch.ones(8 * 2**20)  # 32 MiB
        b = a * 2  # 32 MiB more: peak 64 MiB
        del a, b
        c = torch.ones(4 * 2**20)  # 16 MiB after the others were freed
        del c, view
    assert peak.method == "cpu-tensor-peak"
    assert peak.mib == pytest.approx(64, abs=0.01)
    assert peak.rss_mib is not None


def test_matmul_ceiling_is_positive() -> None:
    assert matmul_ceiling(torch.device("cpu"), torch.float32, budget_s=0.01) > 0.1


@pytest.mark.parametrize(
    ("key", "expected"),
    [("fp32", (torch.float32, False)), ("tf32", (torch.float32, True)), ("bf16", (torch.bfloat16, False))],
)
def test_ceiling_keys_map_to_matmul_settings(key: str, expected: tuple) -> None:
    # "tf32" is probed on CUDA only: this is its one check on a machine without a GPU
    assert ceiling_settings(key) == expected


def test_unknown_ceiling_key_raises() -> None:
    with pytest.raises(ValueError, match=r"Unknown ceiling key 'fp8': expected one of \('fp32', 'bf16'"):
        ceiling_settings("fp8")
