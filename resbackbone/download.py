"""Deprecated: the download cache moved to :mod:`resbackbone.weights.cache`."""

from __future__ import annotations

import warnings
from typing import Any

from .weights import cache

__all__ = list(cache.__all__)


def __getattr__(name: str) -> Any:
    if name in cache.__all__:
        warnings.warn(
            f"resbackbone.download.{name} moved to resbackbone.weights.cache.{name}; import it from there.",
            DeprecationWarning,
            stacklevel=2,
        )
        return getattr(cache, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
