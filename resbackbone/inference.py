"""Deprecated: the inference fast path moved to :mod:`resbackbone.optimize`."""

from __future__ import annotations

from . import optimize
from .deprecation import moved_names

MOVED = (
    "CompileFallbackWarning",
    "InferenceBackbone",
    "compile_frozen",
    "fold_batch_norms",
    "native_low_precision",
    "optimize_for_inference",
)
__getattr__ = moved_names(__name__, optimize, MOVED)
