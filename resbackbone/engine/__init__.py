"""Training, evaluation and prediction for detection and segmentation recipes."""

from .checkpoint import load_checkpoint, save_checkpoint
from .evaluate import evaluate_model
from .predict import evaluate_checkpoint, load_model, predict
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
