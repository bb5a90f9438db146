"""Deprecated: the inference fast path moved to :mod:`resbackbone.optimize`."""

from __future__ import annotations

import warnings
from typing import Any

from . import optimize

_MOVED = (
    "CompileFallbackWarning",
    "InferenceBackbone",
    "compile_frozen",
    "fold_batch_norms",
    "native_low_precision",
    "optimize_for_inference",
)

__all__ = list(_MOVED)


def __getattr__(name: str) -> Any:
    if name in _MOVED:
        warnings.warn(
            f"resbackbone.inference.{name} moved to resbackbone.optimize.{name}; import it from there.",
            DeprecationWarning,
            stacklevel=2,
        )
        return getattr(optimize, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
