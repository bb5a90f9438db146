"""``export_model(check=True)``: the exported file run in ONNX Runtime against PyTorch at two new sizes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..runtime import ModelInfo, OnnxBackend
from .parity import argmax_agreement, match_detections, max_relative_error
from .writers import MIN_SIDE

__all__ = ["check_onnx", "check_sizes", "detection_cap"]


def check_sizes(size: tuple[int, int]) -> list[tuple[int, int]]:
    """Two input sizes unlike the traced ``size``: one larger and one smaller, neither a multiple of 32."""
    h, w = size
    return [
        (max(MIN_SIDE, round(h * 1.25) + 3), max(MIN_SIDE, round(w * 0.8) + 5)),
        (max(MIN_SIDE, round(h * 0.7) + 1), max(MIN_SIDE, round(w * 1.1) + 7)),
    ]


def detection_cap(detector: nn.Module) -> int | None:
    """The detections-per-image cap of a torchvision Faster R-CNN or RetinaNet."""
    heads = getattr(detector, "roi_heads", None)
    return getattr(heads, "detections_per_img", None) or getattr(detector, "detections_per_img", None)


def check_onnx(
    graph: nn.Module, path: Path, info: ModelInfo, size: tuple[int, int], *, seed: int = 0
) -> dict[str, Any]:
    """Run ``path`` in ONNX Runtime and ``graph`` in PyTorch on the same random 0–1 images at :func:`check_sizes`.

    Returns:
        Per size ``"HxW"``: ``max_rel_error`` (and ``argmax_agreement`` for logits), or for a detector
        ``matched``, ``missed``, ``extra``, ``max_score_diff``, ``min_iou``.
    """
    device = next(graph.parameters()).device
    # On the export's device where ONNX Runtime offers it: a float16 export is for CUDA, and ONNX Runtime's
    # CPU kernels lack most of float16.
    import onnxruntime

    cuda = device.type == "cuda" and "CUDAExecutionProvider" in onnxruntime.get_available_providers()
    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if cuda else ["CPUExecutionProvider"]
    backend = OnnxBackend(path, providers=providers)
    generator = torch.Generator().manual_seed(seed)
    report: dict[str, Any] = {}
    for h, w in check_sizes(size):
        batch = 1 if info.batch == 1 else 3
        x = torch.rand(batch, info.in_chans, h, w, generator=generator)
        with torch.no_grad():
            reference = graph(x.to(device, dtype=next(graph.parameters()).dtype))
        key = f"{h}x{w}"
        if info.task == "detection":
            ours = backend(x.numpy())[0]
            match = match_detections(
                tuple(t.float().cpu().numpy() for t in reference),
                ours,
                score_thresh=info.score_thresh or 0.0,
                cap=detection_cap(graph.detector),
            )
            report[key] = {
                "detections": len(reference[0]),
                "matched": match.matched,
                "missed": match.missed,
                "extra": match.extra,
                "max_score_diff": match.max_score_diff,
                "min_iou": match.min_iou,
            }
            continue
        ref = [t.float().cpu().numpy() for t in (reference if isinstance(reference, tuple) else (reference,))]
        per_image = backend(x.numpy())  # what predict runs: the input checks and outputs per image
        run = [np.stack(level) for level in zip(*per_image)] if info.task == "backbone" else [np.stack(per_image)]
        if info.output == "class_map":
            report[key] = {"pixels_equal": float((ref[0] == run[0]).mean())}
            continue
        report[key] = {"max_rel_error": max_relative_error(ref, run)}
        if info.output == "logits":
            report[key]["argmax_agreement"] = argmax_agreement(ref[0], run[0])
    return report
