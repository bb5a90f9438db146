"""Evaluation metrics, computed by the field's libraries and reduced across processes.

Detection: COCO mAP, mAP@0.5 and per-class AP through torchmetrics'
``MeanAveragePrecision`` on the faster-coco-eval backend (pycocotools when it is
missing). Segmentation: per-class IoU and Dice and pixel accuracy from the
true/false positive counts of ``segmentation_models_pytorch.metrics.get_stats``,
summed over the whole split (not averaged per image).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

__all__ = ["DetectionMetric", "SegmentationMetric"]


class DetectionMetric:
    """COCO box metrics: ``map``, ``map50``, ``map75`` and ``ap/<class>`` (AP@[.5:.95])."""

    def __init__(self, class_names: Sequence[str]) -> None:
        from torchmetrics.detection import MeanAveragePrecision

        try:
            import faster_coco_eval  # noqa: F401

            backend = "faster_coco_eval"
        except ImportError:
            backend = "pycocotools"
        self.class_names = list(class_names)
        self.metric = MeanAveragePrecision(iou_type="bbox", class_metrics=True, backend=backend)

    def update(self, predictions: list[dict[str, Tensor]], targets: list[dict[str, Any]]) -> None:
        preds = [
            {k: p[k].detach().float().cpu() if k != "labels" else p[k].cpu() for k in ("boxes", "scores", "labels")}
            for p in predictions
        ]
        gts = [{"boxes": t["boxes"].float().cpu(), "labels": t["labels"].cpu()} for t in targets]
        self.metric.update(preds, gts)

    def compute(self) -> dict[str, float]:
        result = self.metric.compute()
        out = {"map": float(result["map"]), "map50": float(result["map_50"]), "map75": float(result["map_75"])}
        classes = result.get("classes")
        per_class = result.get("map_per_class")
        if classes is not None and per_class is not None and per_class.ndim == 1:
            for label, ap in zip(classes.tolist(), per_class.tolist()):
                if 1 <= label <= len(self.class_names):
                    out[f"ap/{self.class_names[label - 1]}"] = float(ap)
        return out


class SegmentationMetric:
    """Split-level ``miou`` (all classes), ``dice`` (foreground classes), ``pixel_acc``, per-class IoU/Dice."""

    def __init__(self, class_names: Sequence[str], *, ignore_index: int = 255) -> None:
        self.class_names = list(class_names)
        self.ignore_index = ignore_index
        n = len(self.class_names)
        self.tp = torch.zeros(n, dtype=torch.long)
        self.fp = torch.zeros(n, dtype=torch.long)
        self.fn = torch.zeros(n, dtype=torch.long)

    def update(self, logits: Tensor, target: Tensor) -> None:
        import segmentation_models_pytorch as smp

        pred = logits.argmax(1).cpu()
        tp, fp, fn, _ = smp.metrics.get_stats(
            pred,
            target.cpu().long(),
            mode="multiclass",
            num_classes=len(self.class_names),
            ignore_index=self.ignore_index,
        )
        self.tp += tp.sum(0)
        self.fp += fp.sum(0)
        self.fn += fn.sum(0)

    def reduce(self) -> None:
        """Sum the counts over all processes (DDP); a no-op in a single process."""
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            counts = torch.stack([self.tp, self.fp, self.fn])
            if torch.distributed.get_backend() == "nccl":
                counts = counts.cuda()
            torch.distributed.all_reduce(counts)
            self.tp, self.fp, self.fn = (c.cpu() for c in counts)

    def compute(self) -> dict[str, float]:
        self.reduce()
        tp, fp, fn = self.tp.double(), self.fp.double(), self.fn.double()
        present = (tp + fp + fn) > 0
        iou = torch.where(present, tp / (tp + fp + fn).clamp(min=1), torch.nan)
        dice = torch.where(present, 2 * tp / (2 * tp + fp + fn).clamp(min=1), torch.nan)
        foreground = dice[1:] if len(dice) > 1 else dice
        out = {
            "miou": float(iou.nanmean()),
            "dice": float(foreground.nanmean()),
            "pixel_acc": float(tp.sum() / (tp.sum() + fn.sum()).clamp(min=1)),
        }
        for name, i, d in zip(self.class_names, iou.tolist(), dice.tolist()):
            out[f"iou/{name}"] = i
            out[f"dice/{name}"] = d
        return out
