"""The prediction loop over image files, shared by every backend; numpy, PIL and OpenCV only.

Three layers, each replaceable:

- a **backend** (``backend(batch) -> outputs``) runs the model on a batch of
  0–1 images at the model's input size: PyTorch (eager or fast,
  :mod:`resbackbone.engine.predict`) or ONNX Runtime (:class:`~resbackbone.runtime.onnx.OnnxBackend`);
- a **runner** (``runner(images) -> predictions``) turns decoded images at
  their own size into :class:`Prediction` s at that size; :func:`fitted_runner`
  resizes and pads each image to the model's size, calls the backend and maps
  the results back. A tiled or test-time-augmented runner replaces it;
- :func:`predict_images` reads the files, calls the runner, and writes
  ``predictions.jsonl``, the masks and the overlays, resumably
  (:class:`~resbackbone.runtime.files.PredictionLog`).

Output files, per image: one line of ``predictions.jsonl`` with ``image``
(its path), ``size`` ``[H, W]`` and, for detection, ``boxes`` (xyxy in the
image's pixels), ``scores`` and ``labels`` (class names) of the detections
scoring at least ``score_thresh``; for segmentation, ``mask`` (the path of a
PNG of class indices at the image's size, ``<name>_mask.png``) and ``pixels``
(pixels per class). ``<name>_overlay.png`` shows the prediction on the image.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .draw import display_image, draw_boxes, draw_mask, readable_scale
from .files import PredictionLog, atomic_write_bytes, collect_images, output_names
from .metadata import ModelInfo
from .preprocess import Fitted, fit_image, mask_to_image, resize_logits

__all__ = [
    "Backend",
    "PredictResult",
    "Prediction",
    "Runner",
    "fitted_runner",
    "predict_images",
]

Backend = Callable[[np.ndarray], list[Any]]
"""``backend(batch)``: ``batch`` is ``(N, C, H, W)`` float32 in [0, 1] at the model's input size. Returns one
output per image: segmentation ``(classes, H, W)`` logits or an ``(H, W)`` class map; detection a
``(boxes (K, 4) xyxy in the batch's pixels, scores (K,), labels (K,))`` tuple."""


@dataclass
class Prediction:
    """What a model predicts for one image, in that image's pixels.

    Attributes:
        boxes: Detection: ``(K, 4)`` xyxy.
        scores: Detection: ``(K,)``.
        labels: Detection: ``(K,)`` class labels (1 is ``classes[0]``; 0 is the background).
        mask: Segmentation: ``(H, W)`` class indices.
    """

    boxes: np.ndarray | None = None
    scores: np.ndarray | None = None
    labels: np.ndarray | None = None
    mask: np.ndarray | None = None


Runner = Callable[[list[np.ndarray]], list[Prediction]]
"""``runner(images)``: decoded ``(H, W, C)`` images (uint8, or float in [0, 1]) → one :class:`Prediction` each."""


@dataclass
class PredictResult:
    """What :func:`predict_images` did.

    Attributes:
        path: ``predictions.jsonl``.
        written: Images predicted on in this run.
        already_done: Images skipped because an earlier run with the same output folder did them.
        skipped: ``{"image", "reason"}`` of each image that could not be read or predicted on
            (also in ``skipped.jsonl``).
    """

    path: Path
    written: int = 0
    already_done: int = 0
    skipped: list[dict[str, str]] = field(default_factory=list)


def fitted_runner(backend: Backend, info: ModelInfo) -> Runner:
    """A runner that resizes and pads images to ``info.image_size`` as evaluation does, runs ``backend``
    on them as one batch, and maps the results back to each image's pixels.

    It takes decoded images: read them as the model was trained on them, with
    ``read_image(path, in_chans=info.in_chans, window=info.window, percentiles=info.intensity_percentiles)``.
    """
    if info.image_size is None:
        raise ValueError(
            f"A {info.task} model without an image size cannot predict on files; export a detector or segmenter."
        )

    def run(images: list[np.ndarray]) -> list[Prediction]:
        fitted = [fit_image(image, info.image_size, info.resize) for image in images]
        outputs = backend(np.stack([f.pixels for f in fitted]))
        return [_to_image(output, f, info) for output, f in zip(outputs, fitted)]

    return run


def _to_image(output: Any, fitted: Fitted, info: ModelInfo) -> Prediction:
    if info.task == "detection":
        boxes, scores, labels = (np.asarray(v) for v in output)
        sy, sx = fitted.scale
        boxes = boxes.astype(np.float64) / np.array([sx, sy, sx, sy])
        return Prediction(boxes=boxes, scores=scores.astype(np.float64), labels=labels.astype(np.int64))
    output = np.asarray(output)
    mask = mask_to_image(output, fitted) if output.ndim == 2 else resize_logits(output, fitted)
    return Prediction(mask=mask)


def _png(array: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def _write(
    path: Path, image: np.ndarray, prediction: Prediction, info: ModelInfo, out: Path, name: str, *, score_thresh: float
) -> tuple[dict[str, Any], np.ndarray]:
    """The record of one image (its mask file written) and its overlay (not written), enlarged or reduced to
    a readable size (:func:`~resbackbone.runtime.draw.readable_scale`)."""
    h, w = image.shape[:2]
    scale = readable_scale(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    record: dict[str, Any] = {"image": str(path), "size": [h, w]}
    classes = info.classes
    if info.task == "detection":
        keep = prediction.scores >= score_thresh
        boxes, scores, labels = prediction.boxes[keep], prediction.scores[keep], prediction.labels[keep]
        names = [classes[int(lb) - 1] if 0 < lb <= len(classes) else str(int(lb)) for lb in labels]
        record |= {
            "boxes": [[round(float(v), 2) for v in box] for box in boxes],
            "scores": [round(float(s), 4) for s in scores],
            "labels": names,
        }
        picture = _resized(display_image(image), size, smooth=True)
        return record, draw_boxes(picture, boxes * scale, names, scores, [int(lb) for lb in labels])
    mask = prediction.mask
    dtype = np.uint8 if len(classes) <= 256 else np.uint16
    mask_path = out / f"{name}_mask.png"
    atomic_write_bytes(mask_path, _png(mask.astype(dtype)))
    counts = np.bincount(mask.ravel(), minlength=len(classes))
    record |= {"mask": str(mask_path), "pixels": {c: int(n) for c, n in zip(classes, counts)}}
    return record, draw_mask(_resized(display_image(image), size, smooth=True), _resized(mask, size, smooth=False))


def _resized(array: np.ndarray, size: tuple[int, int], *, smooth: bool) -> np.ndarray:
    """``array`` at ``size`` (W, H): bilinear for pictures, nearest for class maps."""
    from PIL import Image

    if array.shape[1] == size[0] and array.shape[0] == size[1]:
        return array
    image = Image.fromarray(array if smooth else array.astype(np.int32))
    return np.asarray(image.resize(size, Image.BILINEAR if smooth else Image.NEAREST))


def _read(path: Path, info: ModelInfo) -> np.ndarray:
    from ..data.images import read_image

    window = tuple(info.window) if info.window else None
    percentiles = tuple(info.intensity_percentiles) if info.intensity_percentiles else None
    return read_image(path, in_chans=info.in_chans, window=window, percentiles=percentiles)  # type: ignore[arg-type]


def predict_images(
    runner: Runner,
    info: ModelInfo,
    images: Sequence[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    *,
    header: dict[str, Any],
    extra_header: dict[str, Any] | None = None,
    score_thresh: float = 0.5,
    overlays: bool = True,
    batch_size: int = 1,
    progress: bool = True,
) -> PredictResult:
    """Predict on image files; write ``predictions.jsonl``, masks and overlays into ``out_dir``.

    Every image that can be read is predicted on; one that cannot (missing,
    truncated, not an image, a channel count the model cannot take) is skipped
    and listed with the reason (``skipped.jsonl`` and the result). Images
    already in ``out_dir/predictions.jsonl`` are not done again.

    Args:
        runner: Decoded images → :class:`Prediction` s (:func:`fitted_runner` of a backend).
        info: The model's task, classes, channels and input size.
        images: Image files or folders.
        out_dir: The output folder.
        header: What made the results (``model`` file, ``model_sha256``), kept in ``predict.json``; a
            second run into the same folder must have the same model (and threshold).
        extra_header: Recorded in ``predict.json``, not compared (``backend``, ``device``).
        score_thresh: Detection: the lowest score written.
        overlays: Write ``<name>_overlay.png`` per image.
        batch_size: Images per runner call.
        progress: Show a progress bar.

    Returns:
        The :class:`PredictResult`.

    Raises:
        ValueError: No images found, an input that does not exist, or ``out_dir`` holding results made otherwise.
    """
    from tqdm.auto import tqdm

    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r} is not valid: expected an int ≥ 1.")
    files = collect_images(images)
    names = output_names(files)
    out = Path(out_dir)
    compared = {**header, "score_thresh": score_thresh if info.task == "detection" else None}
    log = PredictionLog(out, compared, extra_header)
    result = PredictResult(path=log.path)
    todo = [p for p in files if str(p) not in log.done]
    result.already_done = len(files) - len(todo)
    bar = tqdm(total=len(todo), desc="predict", disable=not progress)
    try:
        for start in range(0, len(todo), batch_size):
            batch: list[tuple[Path, np.ndarray]] = []
            for path in todo[start : start + batch_size]:
                try:
                    batch.append((path, _read(path, info)))
                except (ValueError, ImportError) as exc:  # DataError is a ValueError; pydicom missing
                    log.skip(str(path), str(exc).removeprefix(f"{path}: "))
                    bar.update(1)
            groups = [batch] if batch else []
            while groups:
                group = groups.pop(0)
                try:
                    predictions = runner([image for _, image in group])
                except (ValueError, RuntimeError) as exc:
                    if len(group) > 1:  # retried image by image: one bad image must not sink the others
                        groups = [[item] for item in group] + groups
                    else:
                        log.skip(str(group[0][0]), f"the model failed on it: {type(exc).__name__}: {exc}")
                        bar.update(1)
                    continue
                for (path, image), prediction in zip(group, predictions):
                    record, picture = _write(path, image, prediction, info, out, names[path], score_thresh=score_thresh)
                    if overlays:
                        atomic_write_bytes(out / f"{names[path]}_overlay.png", _png(picture))
                    log.write(record)
                    result.written += 1
                    bar.update(1)
    finally:
        bar.close()
        log.close()
    result.skipped = log.skipped
    return result
