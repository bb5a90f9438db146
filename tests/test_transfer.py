"""A backbone from any run: a fine-tuning checkpoint of one head is the backbone_weights of another recipe (a
segmentation run's backbone goes into a detection recipe and back), loads into create_backbone with zero missing
keys and the run's mean/std, and `resbackbone backbone export` writes it alone."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from resbackbone import create_backbone
from resbackbone.cli import main
from resbackbone.engine import Trainer
from resbackbone.engine.builders import find_backbone
from resbackbone.engine.checkpoint import load_checkpoint
from resbackbone.recipes import load_recipe
from resbackbone.weights import BackboneRecord, read_backbone_file

from .conftest import REPO_ROOT
from .engine_data import tiny_overrides, write_dataset

SEG = REPO_ROOT / "recipes" / "dsb2018_deeplabv3plus_cpu.yaml"
DET = REPO_ROOT / "recipes" / "bccd_faster_rcnn_cpu.yaml"


def _run(recipe: Path, fmt: str, tmp: Path, *extra: str) -> Trainer:
    overrides = write_dataset(fmt, tmp / "data") + tiny_overrides(tmp / "run") + ["run.overlays=0", *extra]
    trainer = Trainer(load_recipe(recipe, overrides=overrides), progress=False)
    trainer.fit()
    return trainer


@pytest.fixture(scope="module")
def seg_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A DeepLabV3+ (smp) run on a mask folder, with an EMA of the weights."""
    tmp = tmp_path_factory.mktemp("seg")
    _run(SEG, "mask_folder", tmp, "optim.ema=0.5", "optim.epochs=3")  # the EMA starts after the first update
    return tmp / "run"


def test_a_segmentation_backbone_goes_into_detection_and_back(seg_run: Path, tmp_path: Path) -> None:
    det = _run(DET, "voc", tmp_path / "det", f"model.backbone_weights={seg_run / 'best.pt'}")
    report = find_backbone(det.model).load_report
    assert report.ok and report.missing == () and report.prefix == "model.encoder.backbone."
    # the smp head (and batch-norm counters the detector's frozen norms do without) are left out
    assert set(report.ignored.values()) <= {f"outside prefix {report.prefix!r}", "batch-norm counter"}
    assert sum(why.startswith("outside") for why in report.ignored.values()) > 10
    back = _run(SEG, "mask_folder", tmp_path / "seg", f"model.backbone_weights={tmp_path / 'det' / 'run'}")
    report = find_backbone(back.model).load_report
    assert report.ok and report.missing == () and report.prefix == "backbone.body."
    assert report.source.endswith("best.pt")  # a run folder reads its best.pt


def test_create_backbone_takes_a_run_checkpoint_with_its_ema_and_statistics(seg_run: Path) -> None:
    prefix = "model.encoder.backbone."
    best = load_checkpoint(seg_run / "best.pt")  # holds the weights the run evaluated: its EMA
    backbone = create_backbone("test_resnet", weights=str(seg_run / "best.pt"))
    assert backbone.load_report.missing == ()
    for key, value in backbone.state_dict().items():
        torch.testing.assert_close(value, best["model"][prefix + key])
    last = load_checkpoint(seg_run / "last.pt")  # holds the raw weights and the EMA: the EMA is taken
    from_last = create_backbone("test_resnet", weights=str(seg_run / "last.pt"))
    ema = {k.removeprefix(prefix): v for k, v in last["ema"].items() if k.startswith(prefix)}
    for key, value in from_last.state_dict().items():
        torch.testing.assert_close(value, ema[key])
    assert not all(torch.equal(ema[k], last["model"][prefix + k]) for k in ema)
    _, record = read_backbone_file(seg_run / "best.pt")
    assert isinstance(record, BackboneRecord) and record.architecture == "test_resnet"
    assert record.origin["kind"] == "finetune" and record.origin["head"] == "deeplabv3plus"
    assert record.origin["classes"] == ["background", "nucleus"]
    assert backbone.mean == record.mean and backbone.weights == str(seg_run / "best.pt")


def test_a_run_backbone_into_another_architecture_names_both(seg_run: Path) -> None:
    with pytest.raises(
        ValueError,
        match=r"does not fit backbone 'test_resnet_bottleneck': LoadReport\(.*(missing|mismatches) .*layer1.*"
        r"The file records a 'test_resnet' backbone",
    ):
        create_backbone("test_resnet_bottleneck", weights=str(seg_run / "best.pt"))


def test_backbone_export_writes_the_backbone_alone(
    seg_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["backbone", "export", str(seg_run), "--out", str(tmp_path / "shared")]) == 0
    out = capsys.readouterr().out
    assert "fine-tuned in 'dsb2018_deeplabv3plus_cpu' (deeplabv3plus)" in out
    assert "prefix 'model.encoder.backbone.'" in out
    meta = json.loads((tmp_path / "shared" / "backbone.json").read_text())
    assert meta["architecture"] == "test_resnet" and meta["origin"]["exported_from"].endswith("best.pt")
    assert meta["file"]["name"] == "backbone.safetensors" and len(meta["file"]["sha256"]) == 64
    from safetensors.torch import load_file

    exported = load_file(tmp_path / "shared" / "backbone.safetensors")
    assert set(exported) == set(create_backbone("test_resnet").state_dict())  # no head, no optimiser
    assert create_backbone("test_resnet", weights=str(tmp_path / "shared")).load_report.ok
    assert main(["info", str(tmp_path / "shared" / "backbone.json")]) == 0
    assert "classes: background, nucleus" in capsys.readouterr().out


def test_the_record_inside_the_weights_file_outranks_a_stale_one_beside_it(seg_run: Path, tmp_path: Path) -> None:
    from resbackbone.weights import read_record

    assert main(["backbone", "export", str(seg_run), "--out", str(tmp_path / "shared")]) == 0
    beside = tmp_path / "shared" / "backbone.json"
    stale = json.loads(beside.read_text()) | {"architecture": "resnet50", "in_chans": 1}
    beside.write_text(json.dumps(stale))  # as an export killed between its two renames leaves it
    record = read_record(tmp_path / "shared" / "backbone.safetensors")
    assert record is not None and (record.architecture, record.in_chans) == ("test_resnet", 3)
    assert create_backbone("test_resnet", weights=str(tmp_path / "shared")).load_report.ok


def test_a_folder_without_a_run_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ValueError, match=r"is a folder without backbone\.safetensors, best\.pt, last\.pt: pass a run"):
        create_backbone("test_resnet", weights=str(tmp_path))
    assert main(["backbone", "export", str(tmp_path), "--out", str(tmp_path / "out")]) == 2
    assert "is a folder without backbone.safetensors, best.pt, last.pt" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_export_of_a_file_that_records_no_backbone(tmp_path: Path) -> None:
    torch.save(create_backbone("test_resnet").state_dict(), tmp_path / "plain.pth")
    with pytest.raises(ValueError, match=r"plain\.pth records no backbone .* create_backbone\(NAME, weights=FILE\)"):
        from resbackbone.pretrain import export_backbone

        export_backbone(tmp_path / "plain.pth", tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert main(["backbone", "export", str(tmp_path / "nothing"), "--out", str(tmp_path / "out")]) == 2
