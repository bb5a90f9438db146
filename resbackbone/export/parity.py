"""Comparing two runs of a model (PyTorch and ONNX Runtime, eager and fast): numpy only.

The measures the export's parity targets are stated in:

- :func:`max_relative_error`: per output, the largest absolute difference over
  the largest absolute reference value; the worst output's;
- :func:`argmax_agreement`: the fraction of pixels whose class is the same;
- :func:`match_detections`: every reference detection paired with one of the
  other run's of the same label, with IoU ≥ 0.99 and a score within 1e-3.
  Detections whose score is within the tolerance of the score threshold or of
  the lowest score kept under the detections-per-image cap may be present in
  one run and not the other, and are not counted as misses.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

__all__ = ["DetectionMatch", "argmax_agreement", "box_iou", "match_detections", "max_relative_error"]


def max_relative_error(reference: Sequence[np.ndarray], other: Sequence[np.ndarray]) -> float:
    """The largest ``max |a - b| / max |a|`` over corresponding outputs.

    Raises:
        ValueError: The outputs differ in number or shape.
    """
    if len(reference) != len(other):
        raise ValueError(f"{len(reference)} reference outputs but {len(other)} to compare.")
    worst = 0.0
    for ref, out in zip(reference, other):
        ref, out = np.asarray(ref, dtype=np.float64), np.asarray(out, dtype=np.float64)
        if ref.shape != out.shape:
            raise ValueError(f"output of shape {out.shape} does not match the reference's {ref.shape}.")
        worst = max(worst, float(np.abs(ref - out).max(initial=0.0) / max(np.abs(ref).max(initial=0.0), 1e-12)))
    return worst


def argmax_agreement(reference: np.ndarray, other: np.ndarray, axis: int = 1) -> float:
    """The fraction of positions where the argmax over ``axis`` (the classes) is the same."""
    return float((np.asarray(reference).argmax(axis) == np.asarray(other).argmax(axis)).mean())


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box of ``a`` ``(n, 4)`` with every box of ``b`` ``(m, 4)``, xyxy; ``(n, m)``."""
    a, b = np.asarray(a, dtype=np.float64).reshape(-1, 4), np.asarray(b, dtype=np.float64).reshape(-1, 4)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(-1)

    def area(x: np.ndarray) -> np.ndarray:
        return np.clip(x[:, 2] - x[:, 0], 0, None) * np.clip(x[:, 3] - x[:, 1], 0, None)

    return inter / np.maximum(area(a)[:, None] + area(b)[None] - inter, 1e-12)


@dataclass
class DetectionMatch:
    """How two runs' detections of one image pair up.

    Attributes:
        matched: Pairs found.
        missed: Reference detections with no partner (not counting those at a margin).
        extra: The other run's detections with no partner (not counting those at a margin).
        marginal: Unpaired detections within the score tolerance of the threshold or the cap.
        max_score_diff: Largest score difference among the pairs.
        min_iou: Smallest IoU among the pairs (1 when there are none).
    """

    matched: int = 0
    missed: int = 0
    extra: int = 0
    marginal: int = 0
    max_score_diff: float = 0.0
    min_iou: float = 1.0
    unmatched: list[tuple[str, list[float], float, int]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Every detection paired (margins aside)."""
        return self.missed == 0 and self.extra == 0


def match_detections(
    reference: tuple[np.ndarray, np.ndarray, np.ndarray],
    other: tuple[np.ndarray, np.ndarray, np.ndarray],
    *,
    iou: float = 0.99,
    score_tol: float = 1e-3,
    score_thresh: float = 0.0,
    cap: int | None = None,
) -> DetectionMatch:
    """Pair ``reference``'s detections ``(boxes, scores, labels)`` with ``other``'s, greedily by score.

    Two detections pair when their labels are equal, their IoU is at least
    ``iou`` (or every coordinate is within 0.01 px, for boxes of no area) and
    their scores differ by at most ``score_tol``.

    Args:
        reference: Boxes ``(K, 4)``, scores ``(K,)``, labels ``(K,)``.
        other: The same for the other run.
        iou: Smallest IoU of a pair.
        score_tol: Largest score difference of a pair.
        score_thresh: The threshold both runs applied: an unpaired detection scoring within
            ``score_tol`` of it is marginal.
        cap: The detections-per-image cap both runs applied: when a run is at it, an unpaired
            detection scoring within ``score_tol`` of the lowest kept score is marginal.
    """
    rb, rs, rl = (np.asarray(v) for v in reference)
    ob, os_, ol = (np.asarray(v) for v in other)
    rb, ob = rb.reshape(-1, 4).astype(np.float64), ob.reshape(-1, 4).astype(np.float64)
    ious = box_iou(rb, ob)
    close = (np.abs(rb[:, None, :] - ob[None, :, :]) <= 0.01).all(-1) if len(rb) and len(ob) else ious > 1
    result = DetectionMatch()
    used = np.zeros(len(ob), dtype=bool)
    floors = [score_thresh]
    for scores in (rs, os_):
        if cap is not None and len(scores) >= cap:
            floors.append(float(scores.min()))
    floor = max(floors)

    def marginal(score: float) -> bool:
        return score <= floor + score_tol

    for i in np.argsort(-rs, kind="stable"):
        candidates = (~used) & (ol == rl[i]) & ((ious[i] >= iou) | close[i]) & (np.abs(os_ - rs[i]) <= score_tol)
        if candidates.any():
            j = np.flatnonzero(candidates)[np.argmax(ious[i][candidates])]
            used[j] = True
            result.matched += 1
            result.max_score_diff = max(result.max_score_diff, float(abs(os_[j] - rs[i])))
            result.min_iou = min(result.min_iou, 1.0 if close[i, j] else float(ious[i, j]))
        elif marginal(float(rs[i])):
            result.marginal += 1
        else:
            result.missed += 1
            result.unmatched.append(("missed", rb[i].round(2).tolist(), float(rs[i]), int(rl[i])))
    for j in np.flatnonzero(~used):
        if marginal(float(os_[j])):
            result.marginal += 1
        else:
            result.extra += 1
            result.unmatched.append(("extra", ob[j].round(2).tolist(), float(os_[j]), int(ol[j])))
    return result
