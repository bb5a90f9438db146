"""Merging boxes found more than once (by overlapping tiles, or by test-time augmentation), per class.

* ``nms``: torchvision's ``batched_nms`` (IoU), the highest-scoring box of a group survives.
* ``nmm``: greedy non-maximum *merging* as SAHI does it for slices: a box whose
  intersection over the *smaller* box (IoS) with a kept box passes ``iou`` is
  merged into it (the union box, the higher score). An object cut by a tile
  border leaves a partial box inside the whole one: IoS sees it, IoU does not.
* ``wbf``: weighted box fusion (Solovyev et al., 2021), for test-time
  augmentation: boxes matching by IoU are averaged, weighted by score, and the
  score is the sum over the cluster divided by the number of passes, so that a
  box only one pass of four found scores a quarter.

torchvision has NMS only, and the packages that have the other two (SAHI,
ensemble-boxes) pull in OpenCV builds or numba that clash with the
albumentations stack; both fit in a few lines over ``torchvision.ops.box_iou``.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.ops import batched_nms, box_area, box_iou

__all__ = ["MERGES", "box_ios", "merge_detections"]

MERGES = ("nms", "nmm", "wbf")


def box_ios(a: Tensor, b: Tensor) -> Tensor:
    """Intersection over the smaller box's area, ``(N, M)`` for boxes ``(N, 4)`` and ``(M, 4)`` (xyxy)."""
    lt = torch.max(a[:, None, :2], b[None, :, :2])
    rb = torch.min(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    smaller = torch.min(box_area(a)[:, None], box_area(b)[None, :]).clamp(min=1e-9)
    return inter / smaller


def _greedy(boxes: Tensor, scores: Tensor, iou: float, method: str, passes: int) -> tuple[Tensor, Tensor]:
    """``nmm`` or ``wbf`` on boxes of one class; returns the merged boxes and scores."""
    order = scores.argsort(descending=True)
    kept_boxes: list[Tensor] = []  # the cluster's current box
    members: list[list[int]] = []
    for i in order.tolist():
        box = boxes[i]
        if kept_boxes:
            current = torch.stack(kept_boxes)
            overlap = box_ios(box[None], current)[0] if method == "nmm" else box_iou(box[None], current)[0]
            best = int(overlap.argmax())
            if overlap[best] > iou:
                members[best].append(i)
                if method == "nmm":  # union box
                    kept_boxes[best] = torch.cat(
                        [torch.min(current[best, :2], box[:2]), torch.max(current[best, 2:], box[2:])]
                    )
                else:  # score-weighted mean of the cluster
                    idx = torch.tensor(members[best])
                    w = scores[idx]
                    kept_boxes[best] = (boxes[idx] * w[:, None]).sum(0) / w.sum().clamp(min=1e-9)
                continue
        kept_boxes.append(box.clone())
        members.append([i])
    if not kept_boxes:
        return boxes.new_zeros((0, 4)), scores.new_zeros((0,))
    if method == "nmm":
        merged_scores = torch.stack([scores[m].max() for m in members])
    else:
        merged_scores = torch.stack([scores[m].sum() / max(passes, len(m)) for m in members])
    return torch.stack(kept_boxes), merged_scores


def merge_detections(
    boxes: Tensor,
    scores: Tensor,
    labels: Tensor,
    *,
    method: str = "nmm",
    iou: float = 0.5,
    passes: int = 1,
    max_detections: int | None = None,
) -> dict[str, Tensor]:
    """Merge duplicate detections of the same class.

    Args:
        boxes: ``(N, 4)`` xyxy boxes, all in one image's pixels.
        scores: ``(N,)`` scores.
        labels: ``(N,)`` class labels; boxes of different labels never merge.
        method: ``nms``, ``nmm`` or ``wbf`` (see the module docs).
        iou: Overlap above which two boxes are one object (IoU; IoS for ``nmm``).
        passes: ``wbf``: how many predictions were pooled (test-time passes).
        max_detections: Keep this many highest-scoring boxes; ``None`` keeps all.

    Returns:
        ``{"boxes", "scores", "labels"}``, sorted by descending score.

    Raises:
        ValueError: An unknown method, or ``iou`` outside [0, 1].

    Example:
        >>> b = torch.tensor([[0.0, 0, 10, 10], [0, 0, 6, 10]])  # a whole box and a part of it
        >>> merge_detections(b, torch.tensor([0.9, 0.8]), torch.tensor([1, 1]), method="nmm")["boxes"]
        tensor([[ 0.,  0., 10., 10.]])
    """
    if method not in MERGES:
        raise ValueError(f"Unknown box merge {method!r}; expected one of {', '.join(MERGES)}")
    if not 0.0 <= iou <= 1.0:
        raise ValueError(f"Merge threshold iou={iou} is outside [0, 1]; use e.g. 0.5")
    boxes, scores = boxes.float(), scores.float()
    if method == "nms":
        keep = batched_nms(boxes, scores, labels, iou)
        out_boxes, out_scores, out_labels = boxes[keep], scores[keep], labels[keep]
    else:
        parts = []
        for label in labels.unique().tolist():
            mask = labels == label
            b, s = _greedy(boxes[mask], scores[mask], iou, method, passes)
            parts.append((b, s, torch.full((len(b),), label, dtype=labels.dtype, device=labels.device)))
        if parts:
            out_boxes = torch.cat([p[0] for p in parts])
            out_scores = torch.cat([p[1] for p in parts])
            out_labels = torch.cat([p[2] for p in parts])
        else:
            out_boxes, out_scores, out_labels = boxes[:0], scores[:0], labels[:0]
    order = out_scores.argsort(descending=True)[:max_detections]
    return {"boxes": out_boxes[order], "scores": out_scores[order], "labels": out_labels[order]}
