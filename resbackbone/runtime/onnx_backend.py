"""Running an exported ``.onnx`` model with ONNX Runtime: no torch, no model code, nothing unpickled.

:class:`OnnxBackend` opens the file, reads its :class:`~resbackbone.runtime.metadata.ModelInfo`
from ``metadata_props`` (a file resbackbone did not export is refused) and runs
batches of 0–1 images; :func:`predict_onnx` is ``resbackbone predict MODEL.onnx``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .files import file_sha256
from .metadata import ModelInfo
from .predict import PredictResult, fitted_runner, predict_images

__all__ = ["EXPORT_EXTRA", "OnnxBackend", "predict_onnx"]

EXPORT_EXTRA = "pip install 'resbackbone[export]'"


def _onnxruntime(path: Path) -> Any:
    try:
        import onnxruntime
    except ImportError:
        raise ValueError(
            f"Running {path} needs ONNX Runtime, which is not installed: {EXPORT_EXTRA} (or pip install "
            "onnxruntime-gpu for CUDA)."
        ) from None
    return onnxruntime


class OnnxBackend:
    """An exported model in an ONNX Runtime session; ``backend(batch)`` runs it.

    Args:
        path: A ``.onnx`` file written by ``resbackbone export``.
        providers: ONNX Runtime execution providers, in order of preference; default: CUDA when
            this onnxruntime has it, then the CPU.
        threads: Intra-op threads (``None``: ONNX Runtime's default, one per core).

    Attributes:
        info: The model's :class:`~resbackbone.runtime.metadata.ModelInfo`.
        session: The ``onnxruntime.InferenceSession``.
        input_name: The graph's input.
        input_dtype: What the input takes: ``np.float32``, or ``np.float16`` for a float16 export.

    Raises:
        ValueError: The file is missing or not an ONNX model, onnxruntime is not installed, or the
            file was not exported by resbackbone.
    """

    def __init__(
        self, path: str | os.PathLike[str], *, providers: Sequence[str] | None = None, threads: int | None = None
    ):
        self.path = Path(path)
        if not self.path.is_file():
            raise ValueError(f"{self.path} does not exist. Pass a .onnx file written by `resbackbone export`.")
        ort = _onnxruntime(self.path)
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        available = ort.get_available_providers()
        missing = [p for p in providers or () if p not in available]
        if missing:
            raise ValueError(
                f"This onnxruntime has no {', '.join(missing)} (it offers {', '.join(available)}). Install "
                "onnxruntime-gpu for CUDA, or run on the CPU (--device cpu)."
            )
        chosen = list(providers) if providers else [p for p in ("CUDAExecutionProvider",) if p in available]
        chosen += ["CPUExecutionProvider"] if "CPUExecutionProvider" not in chosen else []
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=chosen)
        except Exception as exc:  # onnxruntime's errors are plain Exceptions
            raise ValueError(f"ONNX Runtime cannot load {self.path}: {str(exc).splitlines()[0]}") from None
        metadata = self.session.get_modelmeta().custom_metadata_map
        self.info = ModelInfo.from_metadata(dict(metadata), source=str(self.path))
        self.input_name = self.session.get_inputs()[0].name
        self.input_dtype = np.float16 if self.info.dtype == "float16" else np.float32

    def __call__(self, batch: np.ndarray) -> list[Any]:
        """Run the model on ``(N, in_chans, H, W)`` 0–1 images; one output per image.

        Returns:
            Segmentation: ``(classes, H, W)`` logits or an ``(H, W)`` class map per image;
            detection: ``(boxes, scores, labels)`` per image, boxes in the batch's pixels;
            backbone: a tuple of the levels' ``(channels, h, w)`` maps per image.

        Raises:
            ValueError: ``batch`` is not ``(N, in_chans, H, W)``, or a side is below ``min_side``.
            RuntimeError: ONNX Runtime failed on it.
        """
        info = self.info
        if batch.ndim != 4 or batch.shape[1] != info.in_chans or min(batch.shape[2:]) < info.min_side:
            raise ValueError(
                f"{self.path.name} takes images of shape (N, {info.in_chans}, H, W) with H, W ≥ {info.min_side}, "
                f"got {tuple(batch.shape)}. Give it {info.in_chans}-channel images (resbackbone predict converts "
                "grayscale and RGB files to what the model takes)."
            )
        batch = np.ascontiguousarray(batch, dtype=self.input_dtype)
        chunks = [batch[i : i + 1] for i in range(len(batch))] if info.batch == 1 else [batch]
        outputs: list[Any] = []
        for chunk in chunks:
            try:
                result = self.session.run(None, {self.input_name: chunk})
            except Exception as exc:  # onnxruntime's errors are plain Exceptions
                raise RuntimeError(
                    f"ONNX Runtime failed on a batch of shape {chunk.shape}: {str(exc).splitlines()[0]}"
                ) from None
            if info.task == "detection":
                outputs.append(tuple(result))
            elif info.task == "segmentation":
                outputs += list(result[0].astype(np.float32) if info.output == "logits" else result[0])
            else:
                outputs += list(zip(*result))
        return outputs


def predict_onnx(
    model: str | os.PathLike[str],
    images: Sequence[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    *,
    score_thresh: float = 0.5,
    overlays: bool = True,
    batch_size: int = 1,
    progress: bool = True,
    providers: Sequence[str] | None = None,
) -> PredictResult:
    """``resbackbone predict MODEL.onnx``: predict on image files with ONNX Runtime alone.

    Writes what the PyTorch path writes (see :mod:`resbackbone.runtime.predict`).

    Args:
        model: A ``.onnx`` file written by ``resbackbone export`` (a detector or segmenter).
        images: Image files or folders.
        out_dir: The output folder; a second run into it does only the images not done yet.
        score_thresh: Detection: the lowest score written.
        overlays: Write an overlay PNG per image.
        batch_size: Images per call (detectors take one at a time).
        progress: Show a progress bar.
        providers: ONNX Runtime execution providers (default: CUDA when available, then CPU).

    Raises:
        ValueError: See :class:`OnnxBackend` and :func:`~resbackbone.runtime.predict.predict_images`;
            a backbone (no classes to predict).
    """
    backend = OnnxBackend(model, providers=providers)
    info = backend.info
    if info.task == "backbone":
        raise ValueError(
            f"{model} is a {info.backbone} backbone ({', '.join(info.levels)} features): predict needs a detector "
            "or segmenter. "
            "Export one from a run's best.pt."
        )
    header = {"model": str(Path(model).resolve()), "model_sha256": file_sha256(model)}
    provider = backend.session.get_providers()[0]
    return predict_images(
        fitted_runner(backend, info),
        info,
        images,
        out_dir,
        header=header,
        extra_header={"backend": "onnxruntime", "provider": provider},
        score_thresh=score_thresh,
        overlays=overlays,
        batch_size=batch_size,
        progress=progress,
    )
