"""Module paths that moved: the old module keeps working and says where its names went."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable
from types import ModuleType
from typing import Any

__all__ = ["moved_names"]


def moved_names(old: str, new: ModuleType, names: Iterable[str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` for ``old`` that serves ``names`` from ``new`` with a ``DeprecationWarning``.

    Example:
        In ``resbackbone/download.py``::

            __getattr__ = moved_names(__name__, cache, cache.__all__)
    """
    served = frozenset(names)

    def __getattr__(name: str) -> Any:
        if name in served:
            warnings.warn(
                f"{old}.{name} moved to {new.__name__}.{name}; import it from there.", DeprecationWarning, stacklevel=2
            )
            return getattr(new, name)
        raise AttributeError(f"module {old!r} has no attribute {name!r}")

    return __getattr__
