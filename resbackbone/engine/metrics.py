"""Evaluation metrics, computed by the field's libraries and reduced across processes.

Detection: COCO mAP, mAP@0.5 and per-class AP through torchmetrics'
``MeanAveragePrecision`` on the faster-coco-eval backend (pycocotools when it is
missing). Segmentation: per-class IoU and Dice and pixel accuracy from the
true/false positive counts of ``segmentation_models_pytorch.metrics.get_stats``,
summed over the whole split (not averaged per image).

Per image (for the per-image CSV and the worst-image overlays): Dice and IoU
from the same counts (:func:`segmentation_row`), and true/false positives and
misses of the boxes at IoU 0.5 (:func:`detection_counts`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "COUNT_IOU",
    "COUNT_SCORE",
    "DetectionMetric",
    "SegmentationMetric",
    "detection_counts",
    "detection_row",
    "segmentation_row",
]


class DetectionMetric:
    """COCO box metrics: ``map``, ``map50``, ``map75``, ``ap/<class>`` (AP@[.5:.95]) and ``ap50/<class>``.

    ``ap50/<class>`` is the class's AP at IoU 0.5 (all areas, 100 detections), read from the
    precision table COCOeval builds for ``map50``: their mean over the classes is ``map50``.
    """

    def __init__(self, class_names: Sequence[str]) -> None:
        from torchmetrics.detection import MeanAveragePrecision

        try:
            import faster_coco_eval  # noqa: F401

            backend = "faster_coco_eval"
        except ImportError:
            backend = "pycocotools"
        self.class_names = list(class_names)
        self.metric = MeanAveragePrecision(iou_type="bbox", class_metrics=True, extended_summary=True, backend=backend)

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
        if classes is None or per_class is None:
            return out
        classes, per_class = classes.reshape(-1), per_class.reshape(-1)  # 0-d when there is a single class
        # precision[iou threshold, recall, class, area, max detections]; -1 where a class has no boxes
        precision = result.get("precision")
        for k, (label, ap) in enumerate(zip(classes.tolist(), per_class.tolist())):
            if not 1 <= label <= len(self.class_names):
                continue
            name = self.class_names[label - 1]
            out[f"ap/{name}"] = float(ap)
            if precision is not None and precision.ndim == 5:
                at_50 = precision[0, :, k, 0, -1]
                at_50 = at_50[at_50 > -1]
                out[f"ap50/{name}"] = float(at_50.mean()) if len(at_50) else -1.0
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

    def update(self, logits: Tensor, target: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Add logits ``[B, K, H, W]`` against masks ``[B, H, W]``; returns ``(tp, fp, fn)``, ``[B, K]`` each."""
        return self.update_labels(logits.argmax(1), target)

    def update_labels(self, pred: Tensor, target: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Add a batch of predicted class-index masks ``[B, H, W]``; returns its ``(tp, fp, fn)``, ``[B, K]`` each."""
        import segmentation_models_pytorch as smp

        pred = pred.cpu()
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
        return tp, fp, fn

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


def segmentation_row(tp: Tensor, fp: Tensor, fn: Tensor, class_names: Sequence[str]) -> dict[str, float]:
    """One image's ``dice`` (mean over foreground classes present), ``iou`` and per-class Dice/IoU.

    A class absent from both the mask and the prediction has no score (NaN), as in
    the split-level metric; an image with no foreground at all has ``dice`` NaN.

    Example:
        >>> tp, fp, fn = torch.tensor([90, 6]), torch.tensor([2, 1]), torch.tensor([1, 3])
        >>> segmentation_row(tp, fp, fn, ["background", "nucleus"])["dice"]
        0.75
    """
    tp, fp, fn = tp.double(), fp.double(), fn.double()
    present = (tp + fp + fn) > 0
    iou = torch.where(present, tp / (tp + fp + fn).clamp(min=1), torch.nan)
    dice = torch.where(present, 2 * tp / (2 * tp + fp + fn).clamp(min=1), torch.nan)
    fg_dice, fg_iou = (dice[1:], iou[1:]) if len(dice) > 1 else (dice, iou)
    row = {"dice": float(fg_dice.nanmean()), "iou": float(fg_iou.nanmean())}
    for name, d, i in zip(class_names, dice.tolist(), iou.tolist()):
        row[f"dice/{name}"] = d
        row[f"iou/{name}"] = i
    return row


COUNT_IOU, COUNT_SCORE = 0.5, 0.5
"""The IoU a detection must reach to count as found, and the score it must have to count at all, in the
per-image TP/FP/FN counts (mAP ranks every detection instead)."""


def detection_counts(
    prediction: dict[str, Tensor],
    target: dict[str, Any],
    num_classes: int,
    *,
    iou: float = COUNT_IOU,
    score_thresh: float = COUNT_SCORE,
) -> tuple[Tensor, Tensor, Tensor]:
    """True positives, false positives and misses per class (labels 1..K) in one image.

    Detections scoring at least ``score_thresh`` are matched greedily, best score
    first, to the unmatched ground-truth box of their class with the highest IoU
    (at least ``iou``), as COCO matches them.

    Returns:
        ``(tp, fp, fn)``, ``int64 [num_classes]`` each (index ``k`` is label ``k + 1``).
    """
    from torchvision.ops import box_iou

    tp = torch.zeros(num_classes, dtype=torch.long)
    fp = torch.zeros(num_classes, dtype=torch.long)
    fn = torch.zeros(num_classes, dtype=torch.long)
    keep = prediction["scores"].detach().cpu() >= score_thresh
    p_boxes = prediction["boxes"].detach().float().cpu()[keep]
    p_labels = prediction["labels"].cpu()[keep]
    p_scores = prediction["scores"].detach().float().cpu()[keep]
    g_boxes, g_labels = target["boxes"].float().cpu(), target["labels"].cpu()
    for k in range(num_classes):
        pb, ps = p_boxes[p_labels == k + 1], p_scores[p_labels == k + 1]
        gb = g_boxes[g_labels == k + 1]
        matched = torch.zeros(len(gb), dtype=torch.bool)
        overlaps = box_iou(pb, gb) if len(pb) and len(gb) else torch.zeros(len(pb), len(gb))
        for i in ps.argsort(descending=True).tolist():
            candidates = overlaps[i].masked_fill(matched, -1.0)
            j = int(candidates.argmax()) if len(gb) else -1
            if j >= 0 and candidates[j] >= iou:
                matched[j] = True
                tp[k] += 1
            else:
                fp[k] += 1
        fn[k] = int((~matched).sum())
    return tp, fp, fn


def detection_row(tp: Tensor, fp: Tensor, fn: Tensor, class_names: Sequence[str]) -> dict[str, float]:
    """One image's ``tp``, ``fp``, ``fn`` (all classes), per-class counts, and F1."""
    t, f, n = int(tp.sum()), int(fp.sum()), int(fn.sum())
    row: dict[str, float] = {"tp": t, "fp": f, "fn": n, "f1": 2 * t / (2 * t + f + n) if t + f + n else float("nan")}
    for name, a, b, c in zip(class_names, tp.tolist(), fp.tolist(), fn.tolist()):
        row |= {f"tp/{name}": a, f"fp/{name}": b, f"fn/{name}": c}
    return row
