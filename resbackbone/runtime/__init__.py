"""Running a trained model on image files, with or without torch.

``predict`` for every backend: reading images, resizing them to the model's
input as evaluation does, mapping the results back, writing JSON lines, masks
and overlays resumably (:mod:`~resbackbone.runtime.predict`), and the ONNX
Runtime backend for exported models (:mod:`~resbackbone.runtime.onnx_backend`).
Nothing here imports torch: ``resbackbone predict MODEL.onnx`` runs where only
numpy, Pillow, OpenCV and onnxruntime are installed. The PyTorch backends are in
:mod:`resbackbone.engine.predict`.
"""

from .files import PredictionLog, atomic_write, atomic_write_bytes, collect_images, file_sha256, output_names
from .metadata import FORMAT_VERSION, METADATA_KEYS, MetadataKey, ModelInfo
from .onnx_backend import OnnxBackend, predict_onnx
from .predict import Backend, Prediction, PredictResult, Runner, fitted_runner, predict_images
from .preprocess import Fitted, fit_image, mask_to_image, resize_logits

__all__ = [
    "FORMAT_VERSION",
    "METADATA_KEYS",
    "Backend",
    "Fitted",
    "MetadataKey",
    "ModelInfo",
    "OnnxBackend",
    "PredictResult",
    "Prediction",
    "PredictionLog",
    "Runner",
    "atomic_write",
    "atomic_write_bytes",
    "collect_images",
    "file_sha256",
    "fit_image",
    "fitted_runner",
    "mask_to_image",
    "output_names",
    "predict_images",
    "predict_onnx",
    "resize_logits",
]
