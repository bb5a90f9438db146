"""Deprecated: the download cache moved to :mod:`resbackbone.weights.cache`."""

from __future__ import annotations

from .deprecation import moved_names
from .weights import cache

MOVED = tuple(cache.__all__)
__getattr__ = moved_names(__name__, cache, MOVED)
