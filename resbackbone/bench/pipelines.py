"""Whole-model benchmark: a segmenter or detector from decoded images to predictions, ours beside the libraries'.

``resbackbone bench --models deeplabv3plus,faster_rcnn,retinanet`` times what
``predict`` runs per batch: 8-bit images in, scaling and normalisation, the model,
and the post-processing (class map per pixel; boxes, scores and labels) out.
Rows, on the same weights and the same images, timed in interleaved rounds:

- ``ours-eager``: :func:`~resbackbone.build_segmenter` / :func:`~resbackbone.build_detector`, fp32;
- ``ours-fast``: :func:`~resbackbone.optimize.optimize_model` of it (``predict --fast``);
- ``ours-onnxruntime``: the ``resbackbone export`` file in ONNX Runtime, fp32 (segmenters with ``argmax``
  in the graph; detectors take one image per call);
- ``smp`` (DeepLabV3+) or ``torchvision`` (Faster R-CNN, RetinaNet): the library's own model, eager fp32,
  with our weights loaded key for key.

Each row's output is compared with ``ours-eager``'s: the fraction of pixels of the
same class, or of detections matched (IoU ≥ 0.99, scores within 1e-3, as
:func:`~resbackbone.export.match_detections` pairs them).
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .candidates import randomise_norms

__all__ = ["PIPELINE_MODELS", "PIPELINE_ROWS", "PipelineConfig", "format_pipelines", "run_pipelines"]

PIPELINE_MODELS = {"deeplabv3plus": "smp", "faster_rcnn": "torchvision", "retinanet": "torchvision"}
"""Whole models the benchmark builds → the library whose own model is timed beside ours."""

PIPELINE_ROWS = ("ours-eager", "ours-fast", "ours-onnxruntime", "library")
"""Rows per model (``library`` is the one :data:`PIPELINE_MODELS` names)."""

Predict = Callable[[np.ndarray], list[Any]]


@dataclass(frozen=True)
class PipelineConfig:
    """What :func:`run_pipelines` times.

    Attributes:
        models: From :data:`PIPELINE_MODELS`.
        backbone: The registry name (the libraries' models exist for ``resnet50``; other names time ours only).
        batch_size: Images per call.
        size: Square image side (detectors are built to keep it: no resize inside).
        num_classes: Segmentation classes, or detection classes with the background.
        rows: From :data:`PIPELINE_ROWS`.
        warmup: Untimed calls per row (the first compiles).
        repeats: Timed calls per row, interleaved.
        seed: Weights and images.
    """

    models: tuple[str, ...] = tuple(PIPELINE_MODELS)
    backbone: str = "resnet50"
    batch_size: int = 8
    size: int = 320
    num_classes: int = 5
    rows: tuple[str, ...] = PIPELINE_ROWS
    warmup: int = 2
    repeats: int = 5
    seed: int = 0

    def __post_init__(self) -> None:
        for name, values, allowed in (("models", self.models, PIPELINE_MODELS), ("rows", self.rows, PIPELINE_ROWS)):
            unknown = [v for v in values if v not in allowed]
            if unknown:
                raise ValueError(f"{name} {unknown} not known: expected some of {tuple(allowed)}.")
        if self.batch_size < 1 or self.size < 64 or self.repeats < 1:
            raise ValueError(
                f"batch_size={self.batch_size}, size={self.size}, repeats={self.repeats}: expected a batch ≥ 1, "
                "a side ≥ 64 and repeats ≥ 1."
            )


def _images(config: PipelineConfig) -> np.ndarray:
    """``(N, H, W, 3)`` uint8: smooth shapes over noise, so a detector's scores spread as on photographs."""
    rng = np.random.default_rng(config.seed)
    n, s = config.batch_size, config.size
    yy, xx = np.mgrid[0:s, 0:s]
    images = rng.integers(0, 60, (n, s, s, 3)).astype(np.float32)
    for image in images:
        for _ in range(6):
            cy, cx, r = rng.integers(0, s), rng.integers(0, s), rng.integers(s // 16, s // 5)
            image[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] += rng.integers(60, 190, 3)
    return np.clip(images, 0, 255).astype(np.uint8)


def _to_unit(batch: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(batch).permute(0, 3, 1, 2).float().div_(255)


def _segmenter_call(model: Callable[[torch.Tensor], Any], mean: torch.Tensor, std: torch.Tensor) -> Predict:
    @torch.inference_mode()
    def run(batch: np.ndarray) -> list[Any]:
        logits = model((_to_unit(batch) - mean) / std)
        return list(logits.argmax(1).to(torch.uint8).numpy())

    return run


def _detector_call(model: Callable[[list[torch.Tensor]], Any]) -> Predict:
    @torch.inference_mode()
    def run(batch: np.ndarray) -> list[Any]:
        outputs = model(list(_to_unit(batch)))
        return [tuple(o[k].float().numpy() for k in ("boxes", "scores", "labels")) for o in outputs]

    return run


def _onnx_call(path: Path, task: str) -> Predict:
    from ..runtime import OnnxBackend

    backend = OnnxBackend(path, providers=["CPUExecutionProvider"])

    def run(batch: np.ndarray) -> list[Any]:
        pixels = batch.transpose(0, 3, 1, 2).astype(np.float32) * np.float32(1 / 255)
        outputs = backend(pixels)
        return [o.astype(np.uint8) for o in outputs] if task == "segmentation" else outputs

    return run


def _library_model(arch: str, backbone: str, num_classes: int, size: int) -> nn.Module:
    if backbone != "resnet50":
        raise ValueError(f"the library's {arch} is built on resnet50 here, not {backbone}")
    if arch == "deeplabv3plus":
        import segmentation_models_pytorch as smp

        return smp.DeepLabV3Plus(encoder_name="resnet50", encoder_weights=None, classes=num_classes)
    from torchvision.models import detection

    builder = detection.fasterrcnn_resnet50_fpn if arch == "faster_rcnn" else detection.retinanet_resnet50_fpn
    return builder(weights=None, weights_backbone=None, num_classes=num_classes, min_size=size, max_size=size)


def _same_weights(ours: nn.Module, library: nn.Module, arch: str) -> None:
    """Load ``ours``'s weights into the library's model (smp: our encoder's keys without ``backbone.``)."""
    state = ours.state_dict()
    if arch == "deeplabv3plus":
        state = {k.removeprefix("model.").replace("encoder.backbone.", "encoder."): v for k, v in state.items()}
    missing, unexpected = library.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"our {arch} weights do not fit the library's: missing {missing[:3]}, extra {unexpected[:3]}")


def _build(
    arch: str, config: PipelineConfig, workdir: Path
) -> tuple[dict[str, Predict], dict[str, str], str, dict[str, Any]]:
    """Each row's predict function for ``arch``, the rows skipped with the reason, the task, and the fast
    path's ``fast_settings`` (live: a compile that falls back at its first call shows there)."""
    from .. import Backbone, build_detector, build_segmenter

    torch.manual_seed(config.seed)
    task = "segmentation" if arch in ("deeplabv3plus",) else "detection"
    if task == "segmentation":
        ours = build_segmenter(arch, backbone=config.backbone, num_classes=config.num_classes)
    else:
        ours = build_detector(
            arch, backbone=config.backbone, num_classes=config.num_classes, min_size=config.size, max_size=config.size
        )
    randomise_norms(ours, config.seed)
    ours.eval()
    body = next(m for m in ours.modules() if isinstance(m, Backbone))
    mean = torch.tensor(body.mean).view(1, -1, 1, 1)
    std = torch.tensor(body.std).view(1, -1, 1, 1)

    def wrap(model: Any) -> Predict:
        return _segmenter_call(model, mean, std) if task == "segmentation" else _detector_call(model)

    rows: dict[str, Predict] = {"ours-eager": wrap(ours)}
    skipped: dict[str, str] = {}
    settings: dict[str, Any] = {}
    if "ours-fast" in config.rows:
        from ..optimize import optimize_model

        fast = optimize_model(ours)
        rows["ours-fast"] = wrap(fast)
        settings = fast.fast_settings
    if "ours-onnxruntime" in config.rows:
        from ..export import export_model

        path = workdir / f"{arch}.onnx"
        export_model(ours, path, argmax=task == "segmentation", example_size=(config.size, config.size))
        rows["ours-onnxruntime"] = _onnx_call(path, task)
    if "library" in config.rows:
        name = PIPELINE_MODELS[arch]
        try:
            library = _library_model(arch, config.backbone, config.num_classes, config.size).eval()
            _same_weights(ours, library, arch)
            rows[name] = wrap(library)
        except (ImportError, ValueError) as exc:
            skipped[name] = str(exc)
    return rows, skipped, task, settings


def _agreement(task: str, reference: list[Any], other: list[Any]) -> float:
    from ..export.parity import match_detections

    if task == "segmentation":
        return float(np.mean([(a == b).mean() for a, b in zip(reference, other)]))
    matched = total = 0
    for ref, out in zip(reference, other):
        match = match_detections(ref, out)
        matched += match.matched
        total += match.matched + match.missed + match.extra + match.marginal
    return matched / total if total else 1.0


def run_pipelines(config: PipelineConfig) -> dict[str, Any]:
    """Time every row of every model; compare outputs with ``ours-eager``'s.

    Returns:
        ``{"config", "rows": [{model, row, status, images_per_s, batch_ms_p50, agreement,
        speedup_vs_library, note}]}``.
    """
    images = _images(config)
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="resbackbone-pipelines-") as tmp:
        for arch in config.models:
            print(f"[pipelines] {arch}: building and warming up", flush=True)
            rows, skipped, task, settings = _build(arch, config, Path(tmp))
            outputs = {name: fn(images) for name, fn in rows.items()}  # the first call of each: compiles
            for _ in range(config.warmup - 1):
                for fn in rows.values():
                    fn(images)
            times: dict[str, list[float]] = {name: [] for name in rows}
            for _ in range(config.repeats):  # interleaved: a busy neighbour slows every row alike
                for name, fn in rows.items():
                    start = time.perf_counter()
                    fn(images)
                    times[name].append(time.perf_counter() - start)
            library = PIPELINE_MODELS[arch]
            base = statistics.median(times[library]) if library in times else None
            note = (
                f"{settings['dtype']}, channels_last={settings['channels_last']}, compiled={settings['compiled']}"
                if settings
                else ""
            )
            for name in rows:
                p50 = statistics.median(times[name])
                results.append(
                    {
                        "model": arch,
                        "row": name,
                        "status": "ok",
                        "images_per_s": config.batch_size / p50,
                        "batch_ms_p50": p50 * 1e3,
                        "agreement": _agreement(task, outputs["ours-eager"], outputs[name]),
                        "speedup_vs_library": base / p50 if base else None,
                        "note": note if name == "ours-fast" else "",
                    }
                )
            results += [{"model": arch, "row": n, "status": "skipped", "note": why} for n, why in skipped.items()]
    return {"config": asdict(config), "rows": results}


def format_pipelines(result: dict[str, Any]) -> str:
    """A Markdown table of :func:`run_pipelines`'s rows."""
    config = result["config"]
    lines = [
        f"Whole models on {config['backbone']}, batch {config['batch_size']}, {config['size']}×{config['size']} "
        f"uint8 images to class maps / boxes (pre- and post-processing included), median of {config['repeats']} "
        "interleaved calls; agreement with ours-eager (same class per pixel / detections matched).",
        "",
        "| model | row | images/s | batch ms (p50) | × library eager fp32 | agreement | note |",
        "| --- | --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for row in result["rows"]:
        if row["status"] != "ok":
            lines.append(f"| {row['model']} | {row['row']} | – | – | – | – | {row['status']}: {row['note']} |")
            continue
        speedup = f"{row['speedup_vs_library']:.2f}×" if row["speedup_vs_library"] else "–"
        lines.append(
            f"| {row['model']} | {row['row']} | {row['images_per_s']:.2f} | {row['batch_ms_p50']:.0f} | {speedup} "
            f"| {row['agreement'] * 100:.2f} % | {row['note']} |"
        )
    return "\n".join(lines)
