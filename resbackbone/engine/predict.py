"""Prediction with a trained checkpoint on image files: the PyTorch backends (eager, and ``fast``).

The loop, the files it writes and how it resumes are shared with the ONNX
Runtime backend (:mod:`resbackbone.runtime.predict`): :func:`torch_backend`
is the one piece that differs, ``backend(batch) -> outputs``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..backbone import Backbone
from ..deprecation import moved_names
from ..recipes import Recipe
from ..runtime import (
    Backend,
    ModelInfo,
    Prediction,
    PredictResult,
    Runner,
    file_sha256,
    fitted_runner,
    predict_images,
)
from . import evaluate
from .acceleration import configure_malloc
from .builders import build_predictor, find_backbone, input_normalization
from .checkpoint import load_model
from .distributed import pick_device

__all__ = ["model_info", "predict", "recipe_runner", "torch_backend"]


def model_info(recipe: Recipe, classes: list[str], backbone: Backbone, *, source: str) -> ModelInfo:
    """What a trained model takes and predicts, from its recipe: task, classes, input size and normalisation."""
    from .. import __version__

    return ModelInfo(
        task=recipe.task,
        classes=list(classes),
        head=recipe.model.head,
        backbone=backbone.name,
        in_chans=backbone.in_chans,
        mean=list(backbone.mean),
        std=list(backbone.std),
        image_size=list(recipe.data.size_hw),
        resize=recipe.data.resize,
        window=list(recipe.data.window) if recipe.data.window else None,
        intensity_percentiles=list(recipe.data.intensity_percentiles) if recipe.data.intensity_percentiles else None,
        output="detections" if recipe.task == "detection" else "logits",
        score_thresh=recipe.model.score_thresh if recipe.task == "detection" else None,
        source=source,
        recipe=recipe.name,
        resbackbone_version=__version__,
        torch_version=torch.__version__,
    )


def torch_backend(model: nn.Module, info: ModelInfo, *, device: torch.device) -> Backend:
    """``backend(batch)``: a PyTorch detector or segmenter (eager, or :func:`~resbackbone.optimize.optimize_model`'s).

    Segmenters get the batch normalised with ``info.mean``/``info.std`` (detectors normalise inside).
    """
    mean = torch.tensor(info.mean, dtype=torch.float32).view(1, -1, 1, 1)
    std = torch.tensor(info.std, dtype=torch.float32).view(1, -1, 1, 1)

    @torch.no_grad()
    def run(batch: np.ndarray) -> list[Any]:
        x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))
        if info.task == "detection":
            outputs = model([image.to(device) for image in x])
            return [tuple(o[k].float().cpu().numpy() for k in ("boxes", "scores", "labels")) for o in outputs]
        logits = model(((x - mean) / std).to(device))
        logits = logits["out"] if isinstance(logits, dict) else logits
        return list(logits.float().cpu().numpy())

    return run


def recipe_runner(model: nn.Module, recipe: Recipe, backbone: Backbone, *, device: torch.device) -> Runner:
    """``runner(images)`` that runs ``model`` as ``recipe.eval`` says: sliding windows or tiles, test-time
    augmentation, predictions at each image's own size (:func:`~resbackbone.engine.builders.build_predictor`)."""
    from ..data import build_transforms, image_to_tensor

    mean, std = input_normalization(backbone, recipe.task)
    transform = build_transforms(recipe.data, task=recipe.task, train=False, pad=False)
    run_model = build_predictor(model, recipe, mean=mean, std=std)
    detection = recipe.task == "detection"

    @torch.no_grad()
    def run(images: list[np.ndarray]) -> list[Prediction]:
        predictions = []
        for pixels in images:
            h, w = pixels.shape[:2]
            extra = {"bboxes": np.zeros((0, 4)), "labels": []} if detection else {}
            tensor = image_to_tensor(transform(image=pixels, **extra)["image"], mean, std)
            output = run_model([tensor.to(device)], [(h, w)])[0]
            if detection:
                boxes, scores, labels = (output[k].float().cpu().numpy() for k in ("boxes", "scores", "labels"))
                predictions.append(
                    Prediction(
                        boxes=boxes.astype(np.float64), scores=scores.astype(np.float64), labels=labels.astype(np.int64)
                    )
                )
            else:
                predictions.append(Prediction(mask=output.argmax(0).to(torch.uint8).cpu().numpy()))
        return predictions

    return run


def predict(
    checkpoint: str | os.PathLike[str],
    images: Sequence[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    *,
    device: str = "auto",
    score_thresh: float = 0.5,
    overlays: bool = True,
    progress: bool = True,
    fast: bool = False,
    batch_size: int = 1,
) -> PredictResult:
    """Run a checkpoint over image files; write ``predictions.jsonl``, masks and overlay PNGs to ``out_dir``.

    Each line of ``predictions.jsonl`` holds the image path and size and, for
    detection, ``boxes`` (xyxy in the original image's pixels), ``scores`` and
    ``labels`` (class names); for segmentation, the path of the class-index mask
    PNG written beside it and the pixel count per class (see
    :mod:`resbackbone.runtime.predict`). The model runs as the checkpoint's
    recipe says: resized and padded as evaluation does, or over sliding windows
    or tiles and with test-time augmentation where ``eval`` asks for them
    (:func:`recipe_runner`). An image that cannot be read is skipped and listed; a run
    into an ``out_dir`` that holds results of the same model does only the rest.

    Args:
        checkpoint: A run's ``best.pt`` or ``last.pt``.
        images: Image files or folders.
        out_dir: The output folder.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``…
        score_thresh: Detection: the lowest score written.
        overlays: Write ``<name>_overlay.png`` per image.
        progress: Show a progress bar.
        fast: Run :func:`~resbackbone.optimize.optimize_model`'s copy (batch norms folded, memory format
            measured, compiled, bf16 where the device computes it natively).
        batch_size: Images per forward.

    Returns:
        The :class:`~resbackbone.runtime.PredictResult` (``path`` is ``predictions.jsonl``).

    Raises:
        ValueError: The checkpoint cannot be read, no image is found, or ``out_dir`` holds results of
            another model.
    """
    dev = pick_device(device)
    model, recipe, classes = load_model(checkpoint, device=dev)
    configure_malloc(recipe.run.malloc)
    backbone = find_backbone(model)
    info = model_info(recipe, classes, backbone, source=str(checkpoint))
    if fast:
        from ..optimize import optimize_model

        model = optimize_model(model)
    ev = recipe.eval
    if ev.sliding_window is not None or ev.tiles is not None or ev.tta or ev.tta_scales != [1.0]:
        runner = recipe_runner(model, recipe, backbone, device=dev)
    else:
        runner = fitted_runner(torch_backend(model, info, device=dev), info)
    header = {"model": str(Path(checkpoint).resolve()), "model_sha256": file_sha256(checkpoint)}
    return predict_images(
        runner,
        info,
        images,
        out_dir,
        header=header,
        extra_header={"backend": "pytorch-fast" if fast else "pytorch", "device": str(dev)},
        score_thresh=score_thresh,
        overlays=overlays,
        batch_size=batch_size,
        progress=progress,
    )


__getattr__ = moved_names(__name__, {"evaluate_checkpoint": evaluate})
