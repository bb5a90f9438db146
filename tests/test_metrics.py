"""Evaluation metrics against values worked out by hand."""

from __future__ import annotations

import pytest
import torch

from resbackbone.engine.metrics import DetectionMetric


def _boxes(*rows: tuple[float, float, float, float]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32).reshape(-1, 4)


def test_detection_metric_gives_each_class_its_ap_at_iou_half() -> None:
    """cells: found exactly; platelets: one found at IoU 0.6, one missed; wbc: one false positive ranked
    above the true one. By hand at IoU 0.5: 1.0, 0.5 (recall stops at half) and 0.5 (precision 1/2 at
    recall 1); map50 is their mean."""
    metric = DetectionMetric(["cell", "platelet", "wbc"])
    square = (10.0, 10.0, 50.0, 50.0)
    platelet_gt = (100.0, 100.0, 130.0, 130.0)
    platelet_hit = (100.0, 100.0, 130.0, 150.0)  # IoU 900 / 1500 = 0.6
    metric.update(
        [
            {
                "boxes": _boxes(square, platelet_hit, (200.0, 200.0, 240.0, 240.0), (300.0, 10.0, 340.0, 50.0)),
                "scores": torch.tensor([0.9, 0.8, 0.95, 0.7]),
                "labels": torch.tensor([1, 2, 3, 3]),
            }
        ],
        [
            {
                "boxes": _boxes(square, platelet_gt, (60.0, 100.0, 90.0, 130.0), (300.0, 10.0, 340.0, 50.0)),
                "labels": torch.tensor([1, 2, 2, 3]),
            }
        ],
    )
    out = metric.compute()
    assert out["ap50/cell"] == pytest.approx(1.0, abs=1e-6)
    assert out["ap50/platelet"] == pytest.approx(0.5, abs=0.01)  # 51 of 101 recall points reach precision 1
    assert out["ap50/wbc"] == pytest.approx(0.5, abs=1e-6)
    assert out["map50"] == pytest.approx((out["ap50/cell"] + out["ap50/platelet"] + out["ap50/wbc"]) / 3, abs=1e-6)
    assert out["ap/cell"] == pytest.approx(1.0, abs=1e-6)
    assert out["ap/platelet"] < out["ap50/platelet"]  # the IoU 0.6 box fails the stricter thresholds


def test_a_single_class_keeps_its_per_class_ap() -> None:
    """torchmetrics returns 0-d per-class tensors for one class; they were once dropped."""
    metric = DetectionMetric(["lesion"])
    metric.update(
        [{"boxes": _boxes((10.0, 10.0, 50.0, 50.0)), "scores": torch.tensor([0.9]), "labels": torch.tensor([1])}],
        [{"boxes": _boxes((10.0, 10.0, 50.0, 50.0), (60.0, 60.0, 90.0, 90.0)), "labels": torch.tensor([1, 1])}],
    )
    out = metric.compute()
    assert out["ap50/lesion"] == pytest.approx(0.5, abs=0.01) == out["map50"]
    assert "ap/lesion" in out


def test_a_class_only_predicted_scores_minus_one_and_leaves_the_mean() -> None:
    """COCO marks a class with no ground truth -1 and leaves it out of map50."""
    metric = DetectionMetric(["cell", "platelet"])
    metric.update(
        [
            {
                "boxes": _boxes((10.0, 10.0, 50.0, 50.0), (100.0, 100.0, 120.0, 120.0)),
                "scores": torch.tensor([0.9, 0.8]),
                "labels": torch.tensor([1, 2]),
            }
        ],
        [{"boxes": _boxes((10.0, 10.0, 50.0, 50.0)), "labels": torch.tensor([1])}],
    )
    out = metric.compute()
    assert out["ap50/cell"] == pytest.approx(1.0, abs=1e-6) == out["map50"]
    assert out["ap50/platelet"] == -1.0
