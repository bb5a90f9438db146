"""The metrics of a split, fed one batch of predictions at a time, with a row per image.

:class:`SplitScores` is what :func:`~resbackbone.engine.evaluate.evaluate_model`
feeds: it knows whether the split is at native resolution (targets in each
file's pixels, :func:`~resbackbone.data.build_dataset` with ``native=True``),
asks the predictor for answers at those sizes, adds each image to the split's
metric and, when given an :class:`~resbackbone.engine.image_log.ImageLog`,
records the image's row (Dice/IoU, or TP/FP/FN) and keeps the worst to draw.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from torch import Tensor
from torch.utils.data import Dataset, Subset

from .image_log import ImageLog
from .metrics import DetectionMetric, SegmentationMetric, detection_counts, detection_row, segmentation_row

__all__ = ["SplitScores", "is_native"]


def is_native(dataset: Dataset) -> bool:
    """Whether a split (or a subset of one) keeps its targets at each file's resolution."""
    while isinstance(dataset, Subset):
        dataset = dataset.dataset
    return bool(getattr(dataset, "native", False))


def _name(target: Any, index: int) -> str:
    path = target.get("path") if isinstance(target, dict) else None
    return Path(path).name if path else f"#{index}"


def _to_cpu(value: Any) -> Any:
    if isinstance(value, Tensor):
        return value.cpu()
    if isinstance(value, dict):
        return {k: v.cpu() if isinstance(v, Tensor) else v for k, v in value.items()}
    return value


class SplitScores:
    """The split's metric and per-image rows.

    Args:
        task: ``"detection"`` or ``"segmentation"``.
        classes: Class names (detection: object classes; segmentation: mask classes).
        native: Targets are at each file's resolution (see :func:`is_native`).
        ignore_index: Mask label not scored.
        image_log: Receives one row per image (and keeps the worst images for overlays).
    """

    def __init__(
        self,
        task: str,
        classes: list[str],
        *,
        native: bool,
        ignore_index: int = 255,
        image_log: ImageLog | None = None,
    ) -> None:
        self.detection = task == "detection"
        self.classes = classes
        self.native = native
        self.image_log = image_log
        self.metric: DetectionMetric | SegmentationMetric = (
            DetectionMetric(classes) if self.detection else SegmentationMetric(classes, ignore_index=ignore_index)
        )
        self.seen = 0
        self.start = time.perf_counter()

    def sizes(self, targets: list[Any] | Tensor) -> list[tuple[int, int]] | None:
        """The ``(H, W)`` to ask the predictor to answer at: each file's at native resolution, else ``None``."""
        return [tuple(t["orig_size"]) for t in targets] if self.native else None

    def add(self, images: Any, targets: Any, outputs: list[Any]) -> None:
        """Score a batch: ``outputs`` are the predictor's answers for ``images`` (logits or detection dicts)."""
        truths = [t["mask"] for t in targets] if self.native and not self.detection else list(targets)
        for i, (output, truth) in enumerate(zip(outputs, truths)):
            if self.detection:
                prediction = {k: v.float() if k != "labels" else v for k, v in output.items()}
                self.metric.update([prediction], [truth])
                row = detection_row(*detection_counts(prediction, truth, len(self.classes)), self.classes)
                badness = row["fp"] + row["fn"]
            else:
                prediction = output.argmax(0)
                assert isinstance(self.metric, SegmentationMetric)
                counts = self.metric.update_labels(prediction[None], truth[None])
                row = segmentation_row(*(c[0] for c in counts), self.classes)
                badness = 1.0 - row["dice"]
            if self.image_log is not None:
                target, name = targets[i], _name(targets[i], self.seen + i)
                h, w = target["orig_size"] if self.native else images[i].shape[-2:]
                self.image_log.add(
                    {"image": name, "height": int(h), "width": int(w), **row},
                    badness=badness,
                    case={
                        "name": name,
                        "image": images[i].cpu(),
                        "path": target.get("path") if self.native and isinstance(target, dict) else None,
                        "truth": _to_cpu(truth),
                        "prediction": _to_cpu(prediction),
                    },
                )
        self.seen += len(outputs)

    def compute(self) -> dict[str, float]:
        """The split's metrics (reduced over processes) and ``images_per_s`` since construction."""
        elapsed = time.perf_counter() - self.start
        if self.image_log is not None:
            self.image_log.gather()
        return {**self.metric.compute(), "images_per_s": self.seen / elapsed if elapsed > 0 else float("nan")}
