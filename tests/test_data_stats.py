"""``resbackbone data stats``: object sizes at the recipe's scale, and the sizes it suggests (data.stats)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from resbackbone.cli import main
from resbackbone.data import DataConfig
from resbackbone.data.stats import dataset_stats

from .data_writers import write_mask_folder, write_voc


def _voc(root: Path) -> DataConfig:
    """Six 100x200 images, each with one 10x10 'small' box and one 40x40 'large' box."""
    items = [
        (f"im{i}", (100, 200), [("small", (5.0 + i, 5.0, 15.0 + i, 15.0)), ("large", (100.0, 20.0, 140.0, 60.0))])
        for i in range(6)
    ]
    write_voc(root, {"train": items})
    return DataConfig(format="voc", root=root, classes=["small", "large"], train="train", image_size=100)


def test_stats_of_known_boxes(tmp_path: Path) -> None:
    stats = dataset_stats(_voc(tmp_path), task="detection")
    assert stats.images == 6 and stats.image_sizes == {(100, 200): 6}
    assert stats.scales == pytest.approx([0.5] * 6)  # letterbox: 200 px -> 100
    assert stats.percentile("small", 50, resized=False) == pytest.approx(10.0)
    assert stats.percentile("small", 50) == pytest.approx(5.0) and stats.percentile("large", 50) == pytest.approx(20.0)
    assert stats.images_with == {"small": 6, "large": 6}
    # 'small' must reach 16 px (median): 10 px in a 200 px image -> a long side of 320
    assert stats.smallest_class() == "small" and stats.suggested_image_side() == 320
    assert stats.suggested_image_size() == (320, 320)
    # at 320 the boxes are 16 and 64 px: anchors from the 5th percentile (16) up; crops ~3x the large box
    assert stats.suggested_anchors(4, (320, 320)) == [[16], [32], [64], [128]]
    assert stats.suggested_anchors(2, (320, 320), octaves=3) == [[16, 20, 25], [32, 40, 50]]
    assert stats.suggested_crop((320, 320)) == 192


def test_stats_of_mask_components(tmp_path: Path) -> None:
    mask = np.zeros((64, 128), np.uint8)
    mask[4:12, 4:12] = 255  # an 8x8 component
    mask[30:60, 60:120] = 255  # a 30x60 one
    write_mask_folder(tmp_path, {"a": (np.zeros((64, 128, 3), np.uint8), mask)}, {"train": ["a"]})
    cfg = DataConfig(format="mask_folder", root=tmp_path, train="train", image_size=256)
    stats = dataset_stats(cfg, task="segmentation")
    assert sorted(stats.sizes["foreground"]) == pytest.approx([8.0, float(np.sqrt(30 * 60))])
    assert sorted(stats.resized["foreground"]) == pytest.approx([16.0, 2 * float(np.sqrt(30 * 60))])
    assert stats.pixels["foreground"] == pytest.approx((64 + 1800) / (64 * 128))


def test_data_stats_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _voc(tmp_path / "voc")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "model: {head: faster_rcnn, backbone: test_resnet, levels: [C3, C4, C5]}\n"
        "data: {format: voc, root: voc, classes: [small, large], train: train, image_size: 100}\n"
    )
    assert main(["data", "stats", str(recipe), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "smallest class 'small': p10 5.0 px, median 5.0 px" in out
    assert "data.image_size: [320, 320]" in out and "model.anchor_sizes: [[16], [32], [64], [128]]" in out
    assert main(["data", "stats", str(recipe), "--split", "val"]) == 2
    assert "data.val is not set" in capsys.readouterr().err
