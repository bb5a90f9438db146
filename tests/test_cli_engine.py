from __future__ import annotations

import json
from pathlib import Path

import pytest

from resbackbone.cli import main

from .conftest import REPO_ROOT
from .engine_data import tiny_overrides, write_dataset

QUICKSTART = str(REPO_ROOT / "recipes" / "quickstart.yaml")


def _sets(overrides: list[str]) -> list[str]:
    return [arg for o in overrides for arg in ("--set", o)]


def test_finetune_evaluate_predict(tmp_path: Path, session_cache: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sets = _sets(tiny_overrides(tmp_path / "run"))
    assert main(["finetune", QUICKSTART, "--no-progress", *sets]) == 0
    out = capsys.readouterr().out
    assert "best val miou" in out and "outputs in" in out
    checkpoint = tmp_path / "run" / "best.pt"
    assert main(["evaluate", QUICKSTART, "--checkpoint", str(checkpoint), "--split", "test", *sets]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert {"miou", "dice", "pixel_acc"} <= set(metrics)
    images = sorted(session_cache.rglob("images/test/*.png"))[:1]
    assert main(["predict", str(checkpoint), str(images[0]), "--out", str(tmp_path / "pred"), "--device", "cpu"]) == 0
    assert (tmp_path / "pred" / "predictions.jsonl").is_file()


def test_finetune_errors_are_reported_not_raised(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["finetune", QUICKSTART, "--data", str(tmp_path / "nowhere")]) == 2
    assert "--data " in capsys.readouterr().err
    assert main(["finetune", QUICKSTART, "--data", str(tmp_path)]) == 2
    assert "takes no data folder" in capsys.readouterr().err
    assert main(["finetune", QUICKSTART, "--set", "optim.lrr=1"]) == 2
    assert "did you mean 'optim.lr'" in capsys.readouterr().err
    assert main(["finetune", str(tmp_path / "missing.yaml")]) == 2
    assert "Cannot read recipe" in capsys.readouterr().err


def test_data_check_reports_every_problem(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "voc"
    sets = write_dataset("voc", root)
    (root / "JPEGImages" / "train0.png").write_bytes(b"")  # zero-byte image
    (root / "JPEGImages" / "val1.png").unlink()  # listed but missing
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: {head: faster_rcnn, backbone: test_resnet}\ndata: {format: voc, root: voc}\n")
    assert main(["data", "check", str(recipe), *_sets(sets)]) == 1
    out = capsys.readouterr().out
    assert "train0.png: file is empty (0 bytes)" in out
    assert "image val1.png listed in val.txt is missing on disk" in out
    assert "r: 2 errors, 0 warnings." in out
