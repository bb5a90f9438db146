from __future__ import annotations

import subprocess
import sys

import pytest

from resbackbone.bench import count_macs
from resbackbone.cli import main


def test_list(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list", "resnext*"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == ["resnext50_32x4d", "resnext101_32x8d", "resnext101_64x4d"]
    assert "imagenet=torchvision:IMAGENET1K_V2" in lines[0]


def test_list_no_match(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list", "vgg*"]) == 1
    assert "No backbone matches 'vgg*'" in capsys.readouterr().err


def test_info(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", "resnet18"]) == 0
    out = capsys.readouterr().out
    assert "parameters: 11.18 M" in out
    assert "GMACs at 224×224: 1.81" in out
    assert "  C5          512         32         16         8" in out
    assert "torchvision:IMAGENET1K_V1" in out and "timm:a1_in1k" in out
    assert "stem: one 7×7 convolution; first conv conv1 " in out


def test_info_names_the_deep_stem_from_the_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", "resnet50d"]) == 0
    assert "stem: three 3×3 convolutions; first conv conv1.0 " in capsys.readouterr().out


def test_info_unknown_name(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", "resnet5"]) == 2
    assert "Unknown backbone 'resnet5'. Close matches: 'resnet50'" in capsys.readouterr().err


def test_macs_of_resnet50_match_the_published_figure() -> None:
    assert count_macs("resnet50") / 1e9 == pytest.approx(4.09, abs=0.02)


def test_module_entry_point() -> None:
    result = subprocess.run([sys.executable, "-m", "resbackbone", "--version"], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.startswith("resbackbone ")
