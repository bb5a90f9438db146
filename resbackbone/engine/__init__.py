"""Training, evaluation and prediction for detection and segmentation recipes."""

from .checkpoint import load_checkpoint, load_model, save_checkpoint
from .evaluate import evaluate_checkpoint, evaluate_model
from .predict import predict
from .trainer import Trainer, TrainingError

__all__ = [
    "Trainer",
    "TrainingError",
    "evaluate_checkpoint",
    "evaluate_model",
    "load_checkpoint",
    "load_model",
    "predict",
    "save_checkpoint",
]
