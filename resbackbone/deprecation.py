"""Module paths that moved: importing the old path still works, warns, and names the new one.

:data:`MOVED_MODULES` is the table; :func:`install` (called when ``resbackbone``
is imported) adds a finder that serves each old path as a module forwarding to
the new one, so ``from resbackbone.inference import optimize_for_inference``
goes on working with a ``DeprecationWarning`` naming ``resbackbone.optimize``.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import types
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

__all__ = ["MOVED_MODULES", "install", "moved_names"]

MOVED_MODULES: dict[str, tuple[str, Mapping[str, str]]] = {
    "resbackbone.download": ("resbackbone.weights.cache", {}),
    "resbackbone.inference": ("resbackbone.optimize", {}),
    "resbackbone.data.download": ("resbackbone.data.acquire.download", {}),
    "resbackbone.data.archives": ("resbackbone.data.acquire.archives", {}),
    "resbackbone.data.catalog": ("resbackbone.data.acquire.catalog", {}),
    "resbackbone.data.layouts": ("resbackbone.data.acquire.converters", {}),
    "resbackbone.data.shapes": ("resbackbone.data.acquire.shapes_generator", {}),
    "resbackbone.data.layout": ("resbackbone.data.formats.records", {"resolve_split": "resbackbone.data.index"}),
    "resbackbone.data.coco": ("resbackbone.data.formats.coco", {}),
    "resbackbone.data.voc": ("resbackbone.data.formats.voc", {}),
    "resbackbone.data.yolo": ("resbackbone.data.formats.yolo", {}),
    "resbackbone.data.masks": ("resbackbone.data.formats.masks", {"VOC_CLASSES": "resbackbone.data.formats.voc_seg"}),
    "resbackbone.bench.engine": ("resbackbone.bench.runner", {"TRAIN_FIELDS": "resbackbone.bench.train_step"}),
    "resbackbone.bench.models": ("resbackbone.bench.candidates", {}),
    "resbackbone.bench.report": ("resbackbone.bench.tables", {}),
    "resbackbone.bench.train": ("resbackbone.bench.train_step", {}),
}
"""Old module path → (new module path, {name: module it moved to, for names that went elsewhere})."""


def _forwarding_module(old: str, new: str, elsewhere: Mapping[str, str]) -> types.ModuleType:
    target = importlib.import_module(new)
    module = types.ModuleType(old, f"Deprecated: moved to {new}.")
    module.__all__ = [*getattr(target, "__all__", ()), *elsewhere]  # type: ignore[attr-defined]

    def __getattr__(name: str) -> Any:
        source = importlib.import_module(elsewhere[name]) if name in elsewhere else target
        try:
            return getattr(source, name)
        except AttributeError:
            raise AttributeError(f"module {old!r} (moved to {new!r}) has no attribute {name!r}") from None

    module.__getattr__ = __getattr__  # type: ignore[method-assign]
    module.__dir__ = lambda: sorted(module.__all__)  # type: ignore[method-assign, attr-defined]
    return module


class _MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds the old paths of :data:`MOVED_MODULES` (after the regular finders found no file there)."""

    def find_spec(self, fullname: str, path: Sequence[str] | None, target: types.ModuleType | None = None) -> Any:
        if fullname not in MOVED_MODULES:
            return None
        return importlib.machinery.ModuleSpec(fullname, self)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        new, elsewhere = MOVED_MODULES[spec.name]
        warnings.warn(
            f"{spec.name} moved to {new}; import from there (the old path will be removed).",
            DeprecationWarning,
            stacklevel=2,
        )
        return _forwarding_module(spec.name, new, elsewhere)

    def exec_module(self, module: types.ModuleType) -> None:
        pass


def install() -> None:
    """Add the finder of moved module paths to ``sys.meta_path`` (once)."""
    if not any(isinstance(finder, _MovedModules) for finder in sys.meta_path):
        sys.meta_path.append(_MovedModules())


def moved_names(old: str, moved: Mapping[str, types.ModuleType]) -> Callable[[str], Any]:
    """A module ``__getattr__`` for ``old`` serving names that left it, with a ``DeprecationWarning``.

    Args:
        old: The module the names left (``__name__``).
        moved: Name → the module it lives in now.

    Example:
        At the end of ``resbackbone/engine/predict.py``::

            __getattr__ = moved_names(__name__, {"evaluate_checkpoint": evaluate})
    """

    def __getattr__(name: str) -> Any:
        if name in moved:
            new = moved[name].__name__
            warnings.warn(
                f"{old}.{name} moved to {new}.{name}; import it from there.", DeprecationWarning, stacklevel=2
            )
            return getattr(moved[name], name)
        raise AttributeError(f"module {old!r} has no attribute {name!r}")

    return __getattr__
