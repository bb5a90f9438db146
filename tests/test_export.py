"""Export to ONNX (and .pt2): every family runs in ONNX Runtime as in PyTorch at sizes it was not traced at,
its metadata round-trips, and ``predict`` on the .onnx file writes what the PyTorch path writes."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from resbackbone import create_backbone
from resbackbone.bench.candidates import randomise_norms
from resbackbone.cli import main
from resbackbone.engine import predict
from resbackbone.engine.builders import build_model
from resbackbone.engine.checkpoint import best_state, load_model, save_checkpoint
from resbackbone.export import export_model, load_pt2, match_detections, max_relative_error
from resbackbone.export.checks import detection_cap
from resbackbone.recipes import load_recipe
from resbackbone.runtime import ModelInfo, OnnxBackend, predict_onnx

from .conftest import REPO_ROOT
from .data_writers import picture, save
from .engine_data import tiny_overrides, write_dataset

for _name in ("onnx", "onnxruntime", "onnxscript"):
    pytest.importorskip(_name, reason=f"{_name} is not installed: the export tests need pip install -e '.[export]'")

SIZES = [(83, 101), (117, 70)]  # neither the traced 64×64 nor multiples of the output stride
RECIPES = {
    "deeplabv3plus": "dsb2018_deeplabv3plus_cpu",
    "faster_rcnn": "bccd_faster_rcnn_cpu",
    "retinanet": "bccd_retinanet",
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A ``best.pt`` per head family, as a run writes it (untrained tiny models; detectors keep every score)."""
    root = tmp_path_factory.mktemp("runs")
    found = {}
    for head, name in RECIPES.items():
        fmt = "mask_folder" if head == "deeplabv3plus" else "voc"
        # the exported graph is the model alone: the recipe's test-time flips stay out of both paths
        sets = write_dataset(fmt, root / f"data_{head}") + tiny_overrides(root / head) + ["eval.tta=[]"]
        sets += ["model.score_thresh=0.0"] if head != "deeplabv3plus" else []
        recipe = load_recipe(REPO_ROOT / "recipes" / f"{name}.yaml", overrides=sets)
        from resbackbone.data import class_names

        classes = class_names(recipe.data, recipe.task)
        torch.manual_seed(0)
        model = build_model(recipe, len(classes) + (recipe.task == "detection"))
        randomise_norms(model, seed=1)
        state = best_state(
            model.state_dict(),
            recipe=recipe.model_dump(mode="json", by_alias=True),
            classes=classes,
            epoch=1,
            step=1,
            metrics={},
        )
        found[head] = root / head / "best.pt"
        save_checkpoint(state, found[head])
    return found


@pytest.fixture(scope="module")
def exported(runs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Each family exported once (the segmenter through the command line), shared by the tests below."""
    root = tmp_path_factory.mktemp("onnx")
    backbone = create_backbone("test_resnet").eval()
    randomise_norms(backbone, seed=1)
    files = {"backbone": root / "backbone.onnx", **{head: root / f"{head}.onnx" for head in runs}}
    checks = {"backbone": export_model(backbone, files["backbone"], example_size=(64, 64), check=True).check}
    assert main(["export", str(runs["deeplabv3plus"]), "--out", str(files["deeplabv3plus"])]) == 0
    for head in ("faster_rcnn", "retinanet"):
        checks[head] = export_model(runs[head], files[head], check=True).check
    return {**files, "backbone_model": backbone, "checks": checks}


def test_the_export_check_reports_parity_at_two_other_sizes(exported: dict[str, Any], runs: dict[str, Path]) -> None:
    checks = exported["checks"]
    for family, report in checks.items():
        sizes = [key for key in report if key != "folded_norms"]
        assert len(sizes) == 2 and "64x64" not in sizes, (family, report)
        assert report["folded_norms"] > 0
        for size in sizes:
            if family == "backbone":
                assert report[size]["max_rel_error"] < 1e-4
            else:
                assert report[size]["detections"] > 0  # untrained detectors here keep every score
                assert report[size]["missed"] == 0 and report[size]["extra"] == 0, (family, report[size])
                assert report[size]["max_score_diff"] <= 1e-3
    logits = export_model(runs["deeplabv3plus"], exported["backbone"].parent / "logits.onnx", check=True).check
    class_map = export_model(
        runs["deeplabv3plus"], exported["backbone"].parent / "class_map.onnx", check=True, argmax=True
    ).check
    for size in (key for key in logits if key != "folded_norms"):
        assert logits[size]["max_rel_error"] < 1e-4 and logits[size]["argmax_agreement"] >= 0.999
        assert class_map[size]["pixels_equal"] >= 0.999


def _pixels(batch: int, size: tuple[int, int], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((batch, 3, *size), dtype=np.float32)


def test_backbone_matches_pytorch_in_onnxruntime(exported: dict[str, Path]) -> None:
    backbone = exported["backbone_model"]
    session = OnnxBackend(exported["backbone"]).session
    assert [o.name for o in session.get_outputs()] == ["C2", "C3", "C4", "C5"]
    mean, std = torch.tensor(backbone.mean).view(1, -1, 1, 1), torch.tensor(backbone.std).view(1, -1, 1, 1)
    for size in SIZES:
        x = _pixels(3, size)
        with torch.no_grad():
            reference = [t.numpy() for t in backbone((torch.from_numpy(x) - mean) / std).values()]
        assert max_relative_error(reference, session.run(None, {"image": x})) <= 1e-4


def test_segmenter_matches_pytorch_in_onnxruntime(runs: dict[str, Path], exported: dict[str, Path]) -> None:
    model, _, _ = load_model(runs["deeplabv3plus"])
    backend = OnnxBackend(exported["deeplabv3plus"])
    info = backend.info
    for size in SIZES:
        x = _pixels(3, size)
        normalised = (torch.from_numpy(x) - torch.tensor(info.mean).view(1, -1, 1, 1)) / torch.tensor(info.std).view(
            1, -1, 1, 1
        )
        with torch.no_grad():
            reference = model(normalised).numpy()
        logits = np.stack(backend(x))
        assert logits.shape == (3, 2, *size)
        assert max_relative_error([reference], [logits]) <= 1e-4
        assert (reference.argmax(1) == logits.argmax(1)).mean() >= 0.999


@pytest.mark.parametrize("head", ["faster_rcnn", "retinanet"])
def test_detector_matches_pytorch_in_onnxruntime(head: str, runs: dict[str, Path], exported: dict[str, Path]) -> None:
    model, _, _ = load_model(runs[head])
    backend = OnnxBackend(exported[head])
    for i, size in enumerate(SIZES):
        x = _pixels(1, size, seed=i)
        with torch.no_grad():
            output = model([torch.from_numpy(x[0])])[0]
        reference = tuple(output[k].numpy() for k in ("boxes", "scores", "labels"))
        match = match_detections(reference, backend(x)[0], score_thresh=0.0, cap=detection_cap(model))
        assert match.ok and match.matched >= 10, match.unmatched[:5]


def test_metadata_round_trips(runs: dict[str, Path], exported: dict[str, Path]) -> None:
    import onnx

    props = {p.key: p.value for p in onnx.load(str(exported["faster_rcnn"])).metadata_props}
    info = ModelInfo.from_metadata(props, source="x")
    assert (info.task, info.head, info.backbone, info.classes) == (
        "detection",
        "faster_rcnn",
        "test_resnet",
        ["a", "b"],
    )
    assert (info.in_chans, info.image_size, info.exporter, info.opset, info.batch) == (
        3,
        [64, 64],
        "torchscript",
        17,
        1,
    )
    assert info.dynamic_axes == ["height", "width"] and info.bn_folded and info.mean == [0.485, 0.456, 0.406]
    assert info.resbackbone_version and info.source == str(runs["faster_rcnn"])
    segmenter = OnnxBackend(exported["deeplabv3plus"]).info
    assert (segmenter.task, segmenter.exporter, segmenter.opset, segmenter.output) == (
        "segmentation",
        "dynamo",
        18,
        "logits",
    )
    assert segmenter.dynamic_axes == ["batch", "height", "width"] and segmenter.classes == ["background", "nucleus"]
    assert OnnxBackend(exported["backbone"]).info.levels == ["C2", "C3", "C4", "C5"]


def _photos(folder: Path) -> list[Path]:
    sizes = [(64, 64), (90, 120), (150, 70)]
    return [save(folder / f"p{i}.png", picture(h, w, [(8, 8, 40, 30)])) for i, (h, w) in enumerate(sizes)]


@pytest.mark.parametrize("head", ["deeplabv3plus", "faster_rcnn"])
def test_predict_on_onnx_writes_what_pytorch_writes(
    head: str, runs: dict[str, Path], exported: dict[str, Path], tmp_path: Path
) -> None:
    images = _photos(tmp_path / "in")
    eager = predict(runs[head], images, tmp_path / "pt", device="cpu", score_thresh=0.0, progress=False, batch_size=2)
    onnx = predict_onnx(exported[head], images, tmp_path / "ort", score_thresh=0.0, progress=False, batch_size=2)
    assert eager.written == onnx.written == 3 and not eager.skipped and not onnx.skipped
    ours = [json.loads(line) for line in eager.path.read_text().splitlines()]
    theirs = [json.loads(line) for line in onnx.path.read_text().splitlines()]
    assert [r["image"] for r in ours] == [r["image"] for r in theirs] == [str(p) for p in images]
    assert sorted(p.name for p in (tmp_path / "pt").glob("*.png")) == sorted(
        p.name for p in (tmp_path / "ort").glob("*.png")
    )
    for a, b in zip(ours, theirs):
        assert a["size"] == b["size"] and set(a) == set(b)
        if head == "deeplabv3plus":
            from PIL import Image

            same = np.asarray(Image.open(a["mask"])) == np.asarray(Image.open(b["mask"]))
            assert same.mean() >= 0.999 and Image.open(a["mask"]).size == tuple(a["size"][::-1])
        else:
            classes = sorted(set(a["labels"]) | set(b["labels"]))
            to_ids = [np.array([classes.index(lb) for lb in r["labels"]]) for r in (a, b)]
            match = match_detections(
                (np.array(a["boxes"]), np.array(a["scores"]), to_ids[0]),
                (np.array(b["boxes"]), np.array(b["scores"]), to_ids[1]),
                iou=0.98,
                score_tol=2e-3,
                cap=100,
            )
            assert match.ok, match.unmatched[:5]


def test_predict_on_onnx_needs_no_torch_and_unpickles_nothing(exported: dict[str, Path], tmp_path: Path) -> None:
    images = _photos(tmp_path / "in")
    broken = tmp_path / "in" / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 not the rest of a jpeg")
    code = (
        "import pickle, sys\n"
        "def refuse(*args, **kwargs): raise AssertionError('something was unpickled')\n"
        "pickle.load = pickle.loads = pickle.Unpickler = refuse\n"
        "from resbackbone.cli import main\n"
        f"status = main(['predict', {str(exported['faster_rcnn'])!r}, {str(tmp_path / 'in')!r}, '--out', "
        f"{str(tmp_path / 'out')!r}, '--no-progress'])\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "sys.exit(status)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT)
    assert result.returncode == 1, result.stderr  # every readable image done; the broken one listed
    assert "Skipped 1 images" in result.stderr
    assert re.search(rf"{re.escape(str(broken))}: (not an image file|image is truncated)", result.stderr)
    assert len((tmp_path / "out" / "predictions.jsonl").read_text().splitlines()) == len(images)


def test_predict_on_onnx_runs_on_the_device_asked(
    exported: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from resbackbone.cli import main

    _photos(tmp_path / "in")
    args = ["predict", str(exported["deeplabv3plus"]), str(tmp_path / "in"), "--no-progress", "--no-overlays"]
    assert main([*args, "--out", str(tmp_path / "out"), "--device", "cpu"]) == 0
    assert json.loads((tmp_path / "out" / "predict.json").read_text())["provider"] == "CPUExecutionProvider"
    assert main([*args, "--out", str(tmp_path / "tpu"), "--device", "tpu"]) == 2
    assert "--device 'tpu': an .onnx model runs on auto, cpu or cuda" in capsys.readouterr().err


def test_pt2_round_trips(runs: dict[str, Path], tmp_path: Path) -> None:
    result = export_model(runs["deeplabv3plus"], tmp_path / "m.pt2", argmax=True)
    module, info = load_pt2(tmp_path / "m.pt2")
    assert info == result.info and info.output == "class_map" and info.exporter == "torch.export"
    x = torch.from_numpy(_pixels(3, SIZES[0]))
    model, _, _ = load_model(runs["deeplabv3plus"])
    with torch.no_grad():
        expected = model((x - torch.tensor(info.mean).view(1, -1, 1, 1)) / torch.tensor(info.std).view(1, -1, 1, 1))
    assert (module(x) == expected.argmax(1)).float().mean() >= 0.999


def test_what_a_format_cannot_represent_is_refused(runs: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(
        ValueError, match=r"A detector cannot be exported to pt2 .*cannot trace torchvision's detectors"
    ):
        export_model(runs["faster_rcnn"], tmp_path / "d.pt2")
    with pytest.raises(ValueError, match=r"A detector cannot leave its batch free: .*drop 'batch' from --dynamic"):
        export_model(runs["faster_rcnn"], tmp_path / "d.onnx", dynamic=("batch", "height"))
    with pytest.raises(ValueError, match=r"float16 export is for CUDA .*pass device='cuda'"):
        export_model(runs["deeplabv3plus"], tmp_path / "s.onnx", dtype="float16")
    with pytest.raises(ValueError, match=r"argmax applies to segmenters"):
        export_model(runs["faster_rcnn"], tmp_path / "d.onnx", argmax=True)
    with pytest.raises(ValueError, match=r"argmax applies to segmenters .* is a backbone model: drop --argmax"):
        export_model(create_backbone("test_resnet"), tmp_path / "b.onnx", argmax=True)
    with pytest.raises(ValueError, match=r"weights='imagenet' applies to a backbone name; .*best\.pt names its own"):
        export_model(runs["deeplabv3plus"], tmp_path / "s.onnx", weights="imagenet")
    with pytest.raises(ValueError, match=r"cannot tell the format from the suffix '\.bin'"):
        export_model(runs["faster_rcnn"], tmp_path / "d.bin")
    with pytest.raises(ValueError, match=r"a pt2 export has no such check\. Export to a \.onnx file"):
        export_model(runs["deeplabv3plus"], tmp_path / "s.pt2", check=True)
    assert not list(tmp_path.iterdir()), "a refused export left a file behind"


def test_onnx_files_and_inputs_that_are_not_ours_are_refused(
    exported: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    onnx.save(helper.make_model(graph), tmp_path / "other.onnx")
    with pytest.raises(ValueError, match=r"other\.onnx was not exported by resbackbone: its metadata has no"):
        OnnxBackend(tmp_path / "other.onnx")
    backend = OnnxBackend(exported["deeplabv3plus"])
    with pytest.raises(ValueError, match=r"takes images of shape \(N, 3, H, W\) with H, W ≥ 64, got \(1, 1, 80, 80\)"):
        backend(np.zeros((1, 1, 80, 80), np.float32))
    with pytest.raises(
        ValueError, match=r"is a test_resnet backbone \(C2, C3, C4, C5 features\): predict needs a detector"
    ):
        predict_onnx(exported["backbone"], [tmp_path], tmp_path / "out")
    with pytest.raises(
        ValueError, match=r"This onnxruntime has no NoSuchExecutionProvider \(it offers .*CPUExecutionProvider"
    ):
        OnnxBackend(exported["deeplabv3plus"], providers=["NoSuchExecutionProvider"])
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(
        ValueError, match=r"needs ONNX Runtime, which is not installed: pip install 'resbackbone\[export\]'"
    ):
        OnnxBackend(exported["deeplabv3plus"])
    with pytest.raises(ValueError, match=r"ONNX export needs onnxruntime, which is not installed"):
        export_model(create_backbone("test_resnet"), tmp_path / "b.onnx")


@pytest.mark.slow
@pytest.mark.parametrize("head", ["deeplabv3", "fpn", "unet"])
def test_other_segmentation_heads_export(head: str, tmp_path: Path) -> None:
    from resbackbone import build_segmenter
    from resbackbone.export import SegmenterGraph
    from resbackbone.export.writers import write_onnx

    model = build_segmenter(head, backbone="test_resnet", num_classes=3).eval()
    randomise_norms(model, seed=1)
    info = ModelInfo(task="segmentation", classes=["a", "b", "c"], exporter="dynamo", output_names=["logits"])
    graph = SegmenterGraph(model).eval()
    write_onnx(
        graph, torch.rand(2, 3, 64, 64), tmp_path / "m.onnx", info, dynamic=("batch", "height", "width"), opset=18
    )
    backend = OnnxBackend(tmp_path / "m.onnx")
    for size in SIZES:
        x = _pixels(2, size)
        with torch.no_grad():
            reference = graph(torch.from_numpy(x)).numpy()
        assert max_relative_error([reference], [np.stack(backend(x))]) <= 1e-4


@pytest.mark.slow
def test_aoti_package_runs(runs: dict[str, Path], tmp_path: Path) -> None:
    """AOTInductor compiles C++ (minutes on two cores)."""
    from torch._inductor import aoti_load_package

    backbone = create_backbone("test_resnet").eval()
    result = export_model(backbone, tmp_path / "b.pt2", format="aoti", example_size=(64, 64))
    package = aoti_load_package(str(tmp_path / "b.pt2"))
    assert package.get_metadata()["task"] == "backbone" and result.info.exporter == "aotinductor"
    x = torch.rand(2, 3, 96, 80)
    mean, std = torch.tensor(backbone.mean).view(1, -1, 1, 1), torch.tensor(backbone.std).view(1, -1, 1, 1)
    with torch.no_grad():
        expected = [f.numpy() for f in backbone((x - mean) / std).values()]  # the graph normalises inside
    got = [o.numpy() for o in package(x)]
    assert [o.shape for o in got] == [e.shape for e in expected]
    assert max_relative_error(expected, got) <= 1e-4


@pytest.mark.gpu
def test_float16_export_for_cuda(runs: dict[str, Path], tmp_path: Path) -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    result = export_model(runs["deeplabv3plus"], tmp_path / "s16.onnx", dtype="float16", device="cuda", check=True)
    assert result.info.dtype == "float16"
    for size in (key for key in result.check if key != "folded_norms"):
        assert result.check[size]["argmax_agreement"] >= 0.99, result.check  # fp16 against the fp16 graph
    export_model(runs["deeplabv3plus"], tmp_path / "s32.onnx")
    pixels = _pixels(2, SIZES[0])
    half = np.stack(OnnxBackend(tmp_path / "s16.onnx")(pixels))
    full = np.stack(OnnxBackend(tmp_path / "s32.onnx")(pixels))
    assert half.dtype == np.float32 and half.shape == full.shape == (2, len(result.info.classes), *SIZES[0])
    assert (half.argmax(1) == full.argmax(1)).mean() >= 0.99


def test_a_built_model_exports_with_numbered_classes(tmp_path: Path) -> None:
    from resbackbone import build_segmenter

    model = build_segmenter("deeplabv3plus", backbone="test_resnet", num_classes=3)
    result = export_model(model, tmp_path / "m.onnx", example_size=(64, 80))
    info = OnnxBackend(tmp_path / "m.onnx").info
    assert info == result.info and info.classes == ["class_0", "class_1", "class_2"] and info.image_size == [64, 80]
    with pytest.raises(ValueError, match=r"Cannot export a Linear: expected a segmenter or detector built by"):
        export_model(torch.nn.Linear(2, 2), tmp_path / "l.onnx")
    assert not (tmp_path / "l.onnx").exists()
