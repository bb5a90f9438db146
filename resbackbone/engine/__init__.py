"""Training, evaluation and prediction for detection and segmentation recipes."""

from .checkpoint import load_checkpoint, save_checkpoint
from .predict import evaluate_checkpoint, load_model, predict
from .trainer import Trainer, TrainingError, evaluate_model

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
