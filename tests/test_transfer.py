"""A backbone from any run: a fine-tuning checkpoint of one head is the backbone_weights of another recipe (a
segmentation run's backbone goes into a detection recipe and back), loads into create_backbone with zero missing
keys and the run's mean/std."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from resbackbone import create_backbone
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
    state = load_checkpoint(seg_run / "best.pt")
    backbone = create_backbone("test_resnet", weights=str(seg_run / "best.pt"))
    assert backbone.load_report.missing == ()
    prefix = "model.encoder.backbone."
    ema = {k.removeprefix(prefix): v for k, v in state["ema"].items() if k.startswith(prefix)}
    for key, value in backbone.state_dict().items():
        torch.testing.assert_close(value, ema[key])  # the EMA weights, which the run evaluated, not the raw ones
    assert not all(torch.equal(ema[k], state["model"][prefix + k]) for k in ema)
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
