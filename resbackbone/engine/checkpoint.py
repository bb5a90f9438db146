"""Training checkpoints: written atomically, read without unpickling code.

A run writes two files:

- ``last.pt`` (every epoch) holds everything ``--resume`` needs to continue
  exactly where the run stopped: the model (and its EMA), optimiser, scheduler,
  gradient scaler, the epoch and step it completed, the best metric so far, the
  metric history, the random-number states, the class names and the recipe.
- ``best.pt`` (when the evaluation metric improves) is the file to ship and
  share: only what rebuilds the trained model (:func:`best_state`), a third of
  ``last.pt``'s size under AdamW. Its entries: ``format`` (``"resbackbone.best"``),
  ``format_version`` (1), ``model`` (the state dict that was evaluated: the EMA's
  when the run keeps one), ``recipe`` (the recipe as a dict), ``classes``,
  ``epoch``, ``step``, ``metrics`` (its evaluation) and ``resbackbone_version``.

:func:`load_model` rebuilds the model from either. A file is written to a
temporary file beside the target, flushed to disk and renamed into place, so a
crash mid-write leaves the previous checkpoint intact.
"""

from __future__ import annotations

import os
import random
import re
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from ..recipes import Recipe
from ..runtime import atomic_write, atomic_write_bytes
from .builders import build_model

__all__ = [
    "BEST_FORMAT",
    "CheckpointedRun",
    "atomic_write_bytes",
    "best_state",
    "load_checkpoint",
    "load_model",
    "remove_partial_writes",
    "resume_state",
    "rng_state",
    "save_checkpoint",
    "set_rng_state",
]

BEST_FORMAT = "resbackbone.best"
"""The ``format`` entry of a ``best.pt`` (:func:`best_state`)."""

_PARTIAL = re.compile(r"\..+\.[a-z0-9_]{8}\.tmp")  # what atomic_write's mkstemp names look like


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike[str]) -> None:
    """``torch.save`` ``state`` to ``path`` atomically."""
    atomic_write(path, lambda f: torch.save(state, f))


def best_state(
    weights: dict[str, Any],
    *,
    recipe: dict[str, Any],
    classes: list[str],
    epoch: int,
    step: int,
    metrics: dict[str, float],
) -> dict[str, Any]:
    """What ``best.pt`` holds: the evaluated weights, the recipe and class names, no optimiser state.

    Args:
        weights: The state dict that was evaluated (the EMA's when the run keeps one).
        recipe: The recipe, as ``Recipe.model_dump(mode="json", by_alias=True)``.
        classes: The class names, in the order the model predicts them.
        epoch: Epochs completed.
        step: Optimiser updates done.
        metrics: The evaluation that made it the best.
    """
    from .. import __version__

    return {
        "format": BEST_FORMAT,
        "format_version": 1,
        "model": weights,
        "recipe": recipe,
        "classes": list(classes),
        "epoch": epoch,
        "step": step,
        "metrics": dict(metrics),
        "resbackbone_version": __version__,
    }


def remove_partial_writes(folder: str | os.PathLike[str]) -> list[Path]:
    """Delete the temporary files a process killed mid-write left in ``folder`` (``.last.pt.<random>.tmp``).

    They are never read (the write they belonged to never reached its rename),
    only taking disk space. Call it when no other process writes to ``folder``.

    Returns:
        The files removed.
    """
    removed = []
    for path in sorted(Path(folder).glob(".*.tmp")):
        if _PARTIAL.fullmatch(path.name) and path.is_file():
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (``weights_only=True``).

    Raises:
        ValueError: The file is missing, truncated, not a training checkpoint,
            or holds pickled Python objects (which could run code when loaded).
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"Checkpoint {path} does not exist. Pass the last.pt or best.pt of a run folder.")
    from ..weights import torch_load

    try:
        state = torch_load(
            path,
            what="checkpoint ",
            advice="A resbackbone checkpoint holds only tensors and plain values, so `resbackbone finetune` did "
            "not write this file; pass the last.pt or best.pt of a run.",
        )
    except ValueError:
        raise
    except Exception as exc:  # truncated or not a checkpoint
        raise ValueError(f"Cannot read checkpoint {path}: {str(exc).splitlines()[0]}") from exc
    if not isinstance(state, dict) or "model" not in state or "recipe" not in state:
        raise ValueError(f"{path} is not a resbackbone training checkpoint (no 'model' and 'recipe' entries).")
    return state


def resume_state(path: str | os.PathLike[str], classes: list[str]) -> dict[str, Any]:
    """The state in ``path`` (a run's ``last.pt``) that a run on ``classes`` resumes from.

    Raises:
        ValueError: ``path`` does not exist, is not a checkpoint, or was trained on other classes.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"--resume: {path} does not exist; start without --resume, or pass the run's folder.")
    state = load_checkpoint(path)
    if state.get("format") == BEST_FORMAT:
        raise ValueError(
            f"--resume: {path} is a best.pt (weights, recipe and classes only, no optimiser state); a run resumes "
            "from its last.pt."
        )
    if state["classes"] != classes:
        raise ValueError(f"--resume: {path} was trained on classes {state['classes']}, this recipe has {classes}.")
    state.setdefault("overflow_steps", 0)  # checkpoints written before it was counted have none
    return state


def load_model(
    checkpoint: str | os.PathLike[str], *, device: str | torch.device = "cpu"
) -> tuple[nn.Module, Recipe, list[str]]:
    """Rebuild the model a training checkpoint holds (its EMA weights when it has them).

    Nothing is downloaded: the weights come from the checkpoint alone.

    Returns:
        ``(model in eval mode, recipe, class names)``.
    """
    state = load_checkpoint(checkpoint)
    recipe = Recipe.model_validate(state["recipe"])
    offline = recipe.model.model_copy(update={"weights": None, "backbone_weights": None})
    recipe_offline = recipe.model_copy(update={"model": offline})
    classes = list(state["classes"])
    num_classes = len(classes) + 1 if recipe.task == "detection" else len(classes)
    if recipe.model.norm == "frozen_bn":  # frozen statistics come from the checkpoint, not from pretrained weights
        recipe_offline = recipe_offline.model_copy(update={"model": offline.model_copy(update={"norm": "bn"})})
    model = build_model(recipe_offline, num_classes)
    weights = state["ema"] if state.get("ema") is not None else state["model"]
    missing, unexpected = model.load_state_dict(weights, strict=False)
    real_missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if real_missing or unexpected:
        raise ValueError(
            f"Checkpoint {checkpoint} does not fit the model its recipe builds: missing {real_missing[:4]}, "
            f"unexpected {list(unexpected)[:4]}."
        )
    return model.to(device).eval(), recipe, classes


def rng_state() -> dict[str, Any]:
    """Python, NumPy and torch (CPU and CUDA) random states, in types ``weights_only`` loading accepts."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class CheckpointedRun:
    """What a fine-tuning and a pretraining run share: the progress ``last.pt`` keeps, resuming from it, and
    messages from the main process only.

    A subclass sets ``progress_fields`` (the attributes a checkpoint keeps beside the optimisation state) and
    ``ctx``, ``output``, and implements ``_train_state()`` (a :class:`~resbackbone.engine.loop.TrainState`).
    """

    progress_fields: ClassVar[tuple[str, ...]] = ()
    ctx: Any
    output: Path

    def _train_state(self) -> Any:
        raise NotImplementedError

    def _run_state(self) -> dict[str, Any]:
        """The optimisation state, the progress fields and the random states, as ``last.pt`` keeps them."""
        return {
            **self._train_state().state_dict(),
            **{name: getattr(self, name) for name in self.progress_fields},
            "rng": rng_state(),
        }

    def _restore(self, state: dict[str, Any], path: Path) -> None:
        """Continue from ``state`` (read from ``path``): weights, optimiser, progress and random states; then
        remove the temporary files an interrupted write left in the run folder."""
        self._train_state().load_state_dict(state)
        for name in self.progress_fields:
            setattr(self, name, state[name])
        set_rng_state(state["rng"])
        self._log(f"Resumed from {path}: epoch {state['epoch']}, step {state['step']}.")
        if self.ctx.is_main:
            removed = remove_partial_writes(self.output)
            if removed:
                names = ", ".join(p.name for p in removed)
                self._log(f"Removed {len(removed)} partial file(s) an interrupted write left behind: {names}.")

    def _log(self, message: str) -> None:
        if self.ctx.is_main:
            from tqdm.auto import tqdm

            tqdm.write(message)
