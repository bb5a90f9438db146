"""Evaluation of a model over a data loader or of a checkpoint on a split, and the helpers shared with training."""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from ..data import build_dataset
from ..recipes import Recipe
from ..tiling import wrap_detector, wrap_segmenter
from .acceleration import autocast, configure_malloc, resolve_amp
from .builders import build_predictor, find_backbone, input_normalization
from .checkpoint import load_model
from .distributed import DistContext, pick_device
from .image_log import ImageLog, write_image_log
from .loaders import make_loader
from .scoring import SplitScores, is_native

__all__ = ["evaluate_checkpoint", "evaluate_model", "to_device"]


def to_device(images: Any, targets: Any, device: torch.device, channels_last: bool) -> tuple[Any, Any]:
    """A batch (a tensor or a list of images; a tensor or a list of target dicts) on ``device``."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    if isinstance(images, Tensor):
        images = images.to(device, non_blocking=True, memory_format=fmt)
    else:
        images = [im.to(device, non_blocking=True) for im in images]
    if isinstance(targets, Tensor):
        targets = targets.to(device, non_blocking=True)
    else:
        targets = [{k: v.to(device) if isinstance(v, Tensor) else v for k, v in t.items()} for t in targets]
    return images, targets


@torch.no_grad()
def evaluate_model(
    model: nn.Module,
    loader: DataLoader,
    *,
    task: str,
    classes: list[str],
    device: torch.device,
    amp: str = "none",
    ignore_index: int = 255,
    channels_last: bool = False,
    progress: bool = False,
    predictor: Callable[..., list[Any]] | None = None,
    image_log: ImageLog | None = None,
) -> dict[str, float]:
    """Metrics of ``model`` over ``loader`` (reduced over processes when distributed).

    A split built with ``native=True`` (:func:`~resbackbone.data.build_dataset`) is
    scored at each file's resolution: the predictor resizes logits back to the
    file's size, or gives boxes in its pixels. Otherwise the metrics are on the
    model's input, as resized and padded.

    Args:
        predictor: What runs the model (windows, tiles, TTA; see
            :func:`~resbackbone.engine.builders.build_predictor`); default the plain model.
        image_log: Receives one row per image (and keeps the worst images for overlays).

    Returns:
        The metrics by name, and ``images_per_s``, the evaluation's throughput.
    """
    from tqdm.auto import tqdm

    model.eval()
    if predictor is None:
        predictor = wrap_detector(model) if task == "detection" else wrap_segmenter(model)
    scores = SplitScores(
        task, classes, native=is_native(loader.dataset), ignore_index=ignore_index, image_log=image_log
    )
    for images, targets in tqdm(loader, desc="eval", leave=False, disable=not progress):
        images, targets = to_device(images, targets, device, channels_last)
        with autocast(device, amp):
            outputs = predictor(images, scores.sizes(targets))
        scores.add(images, targets, outputs)
    return scores.compute()


def evaluate_checkpoint(
    recipe: Recipe,
    checkpoint: str | os.PathLike[str],
    *,
    split: str = "val",
    device: str = "auto",
    progress: bool = True,
    out_dir: str | os.PathLike[str] | None = None,
    worst: int = 8,
    fast: bool = False,
) -> dict[str, float]:
    """Metrics of a checkpoint on a split of ``recipe``'s dataset.

    The model runs as ``recipe.eval`` says (resolution, sliding windows or
    tiles, test-time augmentation), so a checkpoint can be scored with other
    inference settings than it was trained with (``--set eval.tta=[hflip]``).

    Args:
        recipe: Names the dataset, how to load and batch it, and how to run the model.
        checkpoint: A ``last.pt`` or ``best.pt`` (its EMA weights when it has them).
        split: The split to evaluate on.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, …
        progress: Show a tqdm bar.
        out_dir: Where to write ``per_image.csv`` and overlays of the ``worst`` images; ``None`` writes nothing.
        worst: How many of the worst images to draw.
        fast: Evaluate :func:`~resbackbone.optimize.optimize_model`'s copy of the model (batch norms
            folded, memory format measured, compiled, bf16 where the device computes it natively).

    Returns:
        The metrics by name (``miou``, ``dice``, … or ``map``, ``map50``, …) and ``images_per_s``.

    Raises:
        ValueError: The checkpoint's task differs from the recipe's, or it does not fit its model.
    """
    dev = pick_device(device)
    configure_malloc(recipe.run.malloc)
    model, trained, classes = load_model(checkpoint, device=dev)
    if trained.task != recipe.task:
        raise ValueError(f"Checkpoint {checkpoint} is a {trained.task} model; recipe {recipe.name} is {recipe.task}.")
    _warn_unused_model_settings(recipe, trained, checkpoint)
    backbone = find_backbone(model)
    mean, std = input_normalization(backbone, recipe.task)
    dataset = build_dataset(
        recipe.data,
        split,
        task=recipe.task,
        train=False,
        mean=mean,
        std=std,
        in_chans=backbone.in_chans,
        native=recipe.eval.resolution == "native",
    )
    batch_size = recipe.eval.batch_size or recipe.optim.batch_size
    loader = make_loader(
        dataset, batch_size, train=False, task=recipe.task, run=recipe.run, ctx=DistContext(device=dev)
    )
    if fast:
        from ..optimize import optimize_model

        model = optimize_model(model)
    log = ImageLog(keep_worst=worst if out_dir is not None else 0)
    metrics = evaluate_model(
        model,
        loader,
        task=recipe.task,
        classes=classes,
        device=dev,
        amp=resolve_amp(recipe.optim.amp, dev),
        ignore_index=recipe.data.ignore_index,
        progress=progress,
        predictor=build_predictor(model, recipe, mean=mean, std=std),
        image_log=log,
    )
    if out_dir is not None:
        write_image_log(log, Path(out_dir), f"worst_{split}", recipe=recipe, classes=classes, mean=mean, std=std)
    return metrics


# where a model is built from: these name the starting weights of training, not the trained model
_STARTING_WEIGHTS = ("backbone_weights", "weights")


def _warn_unused_model_settings(recipe: Recipe, trained: Recipe, checkpoint: str | os.PathLike[str]) -> None:
    """Say which ``model.*`` settings of ``recipe`` differ from the checkpoint's: the model is rebuilt as the
    checkpoint records it, so they are not used (``--set model.score_thresh=…`` at evaluation, say)."""
    ours, theirs = recipe.model.model_dump(), trained.model.model_dump()
    differ = [k for k in ours if k not in _STARTING_WEIGHTS and ours[k] != theirs.get(k)]
    if differ:
        listed = ", ".join(f"model.{k}={ours[k]!r} (checkpoint: {theirs.get(k)!r})" for k in differ)
        warnings.warn(
            f"{checkpoint} is evaluated as it was trained; the recipe's {listed} {'is' if len(differ) == 1 else 'are'} "
            "not used. The eval.* and data.* settings apply; model.* ones need a run trained with them.",
            UserWarning,
            stacklevel=3,
        )
