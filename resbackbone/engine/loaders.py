"""A recipe's splits, and data loaders for training and evaluation, seeded so that a run (and its resume) repeats.

The training loader shuffles with a generator the trainer re-seeds every epoch
(``run.seed + epoch``), so epoch ``k`` sees the same order whether or not the
run was resumed before it. Under ``torchrun`` training batches come from a
:class:`~torch.utils.data.DistributedSampler`, and evaluation splits into exact
shards (no padding), so metrics reduced over processes equal one process's.
"""

from __future__ import annotations

import os
import random

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset

from ..data import build_dataset, detection_collate, has_split, take_train_subset
from ..recipes import Recipe, RunConfig
from .distributed import DistContext

__all__ = ["WORKER_NICENESS", "build_splits", "make_loader", "seed_everything", "seed_worker"]

# How much lower than the training process a loader worker is scheduled (``nice``): on a
# machine whose cores the step's threads fill, workers then decode in the step's idle gaps
# instead of preempting one of its threads (which stalls the others at their next barrier)
WORKER_NICENESS = 19


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's random generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def seed_worker(worker_id: int) -> None:
    """``worker_init_fn`` of the loaders: seeds a worker from its torch seed, one OpenCV thread in it.

    The worker also runs at a lower priority (:data:`WORKER_NICENESS`, where the platform has
    ``os.nice``). Neither its seed nor its results change, only when it runs: on two cores
    this took an epoch of the BCCD recipe from 57-59 s to 50-54 s, as fast as loading in the
    training process, while still decoding in parallel where cores are free.
    """
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)
    # OpenCV (under albumentations) would start a thread pool per worker, competing with the
    # training step's threads for the cores: the albumentations docs advise one thread in workers
    import cv2

    cv2.setNumThreads(0)
    cv2.ocl.setUseOpenCL(False)
    if hasattr(os, "nice"):
        os.nice(WORKER_NICENESS)


def build_splits(
    recipe: Recipe, mean: tuple[float, ...], std: tuple[float, ...]
) -> tuple[Dataset, Dataset | None, Dataset | None]:
    """The train, eval (``eval.split``) and test splits of ``recipe``'s data; ``None`` for a split it lacks.

    With ``data.train_fraction`` (or ``train_count``) the train split keeps that
    nested, seeded subset of its images (:func:`~resbackbone.data.take_train_subset`),
    described by its ``subset`` attribute. The eval and test splits keep their
    targets at each file's resolution when ``eval.resolution`` is ``native``
    (``build_dataset(native=True)``).

    Args:
        recipe: Names the data, the task and the input channels.
        mean: Per-channel mean the images are normalised with.
        std: Per-channel std the images are normalised with.

    Raises:
        ValueError: The train split is empty, or its label subset lacks a class.
    """
    data = recipe.data
    common = {"task": recipe.task, "mean": mean, "std": std, "in_chans": recipe.model.in_chans}
    train = build_dataset(data, "train", train=True, **common)
    if len(train) == 0:
        raise ValueError(f"The train split of {recipe.name} is empty; check data.train.")
    train = take_train_subset(train, data)
    split = recipe.eval.split
    native = recipe.eval.resolution == "native"
    evaluation = build_dataset(data, split, train=False, native=native, **common) if has_split(data, split) else None
    test = build_dataset(data, "test", train=False, native=native, **common) if has_split(data, "test") else None
    return train, evaluation, test


def make_loader(
    dataset: Dataset, batch_size: int, *, train: bool, task: str, run: RunConfig, ctx: DistContext
) -> DataLoader:
    """A loader over ``dataset`` for training (shuffled, last partial batch dropped) or evaluation.

    Args:
        dataset: The split.
        batch_size: Images per batch and process.
        train: Shuffle (per process under ``torchrun``) and drop a last partial batch.
        task: ``"detection"`` batches images as lists (sizes may differ); segmentation stacks them,
            unless the split is at native resolution (``dataset.native``), whose sizes differ too.
        run: The recipe's ``run`` section (seed, workers).
        ctx: This process's place in the process group.
    """
    as_lists = task == "detection" or bool(getattr(dataset, "native", False))
    sampler = None
    if train and ctx.distributed:
        sampler = DistributedSampler(dataset, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True, seed=run.seed)
    elif not train and ctx.distributed:  # exact shards, no padding: metrics equal one process's
        dataset = Subset(dataset, range(ctx.rank, len(dataset), ctx.world_size))
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=train and sampler is None,
        sampler=sampler,
        num_workers=run.workers,
        collate_fn=detection_collate if as_lists else None,
        drop_last=train and len(dataset) > batch_size,
        generator=torch.Generator().manual_seed(run.seed),
        worker_init_fn=seed_worker,
        pin_memory=ctx.device.type == "cuda",
    )
