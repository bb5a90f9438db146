"""A recipe's splits, and data loaders for training and evaluation, seeded so that a run (and its resume) repeats.

The training loader's order and each item's augmentations are a function of
``run.seed``, the epoch and the item alone (:class:`EpochSampler` yields
``(index, seed)`` pairs, :class:`SeededItems` seeds torch's generator with the
pair's seed while it loads the item), so epoch ``k`` sees the same batches
whether or not the run was resumed before it, whatever ``run.workers`` is. The
workers therefore persist from epoch to epoch: forking them anew each epoch cost
the next steps the copy-on-write faults of the training process's memory (about
1.3 s an epoch on the BCCD recipe). Under ``torchrun`` each process takes its
:class:`~torch.utils.data.DistributedSampler` shard of the order, and evaluation
splits into exact shards (no padding), so metrics reduced over processes equal
one process's.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler, Subset

from ..data import build_dataset, detection_collate, has_split, take_train_subset
from ..recipes import Recipe, RunConfig
from .distributed import DistContext

__all__ = [
    "PERSISTENT_WORKERS",
    "WORKER_NICENESS",
    "EpochSampler",
    "SeededItems",
    "build_splits",
    "item_seed",
    "make_loader",
    "seed_everything",
    "seed_worker",
]

# How much lower than the training process a loader worker is scheduled (``nice``): on a
# machine whose cores the step's threads fill, workers then decode in the step's idle gaps
# instead of preempting one of its threads (which stalls the others at their next barrier)
WORKER_NICENESS = 19
# Whether a training loader keeps its workers from epoch to epoch (read by make_loader; the
# benchmarks turn it off to compare): forking them anew makes the training process copy the
# pages it writes next, which cost the BCCD recipe's first step of every epoch 1.3 s
PERSISTENT_WORKERS = True


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


def item_seed(seed: int, epoch: int, index: int) -> int:
    """The seed of one training item's augmentations: a function of ``run.seed``, the epoch and the item alone.

    Example:
        >>> item_seed(0, 3, 7) == item_seed(0, 3, 7) != item_seed(0, 4, 7)
        True
    """
    return int(np.random.SeedSequence([seed % 2**63, epoch, index]).generate_state(1)[0])


class EpochSampler(Sampler[tuple[int, int]]):
    """One epoch of training items as ``(index, seed)`` pairs, shuffled by ``run.seed + epoch``.

    Set the epoch with :meth:`set_epoch` before iterating. With ``ctx.distributed``
    the order is the process's :class:`~torch.utils.data.DistributedSampler` shard.

    Args:
        dataset: The training split.
        seed: ``run.seed``.
        ctx: This process's place in the process group.
    """

    def __init__(self, dataset: Dataset, seed: int, ctx: DistContext) -> None:
        self.size = len(dataset)  # type: ignore[arg-type]
        self.seed = seed
        self.epoch = 0
        self.shard = (
            DistributedSampler(dataset, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True, seed=seed)
            if ctx.distributed
            else None
        )

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.shard) if self.shard is not None else self.size

    def __iter__(self) -> Iterator[tuple[int, int]]:
        if self.shard is not None:
            self.shard.set_epoch(self.epoch)
            order = list(self.shard)
        else:
            order = torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed + self.epoch)).tolist()
        for index in order:
            yield index, item_seed(self.seed, self.epoch, index)


class SeededItems(Dataset):
    """``dataset[index]`` for an :class:`EpochSampler`'s ``(index, seed)``, torch's generator seeded with ``seed``.

    The generator's state is restored afterwards, so loading in the training process
    (``run.workers: 0``) leaves the training's own draws as they were.
    """

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, item: tuple[int, int]) -> object:
        index, seed = item
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.dataset[index]


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

    A training loader's workers persist between epochs; set its epoch with
    ``loader.sampler.set_epoch(epoch)`` (an :class:`EpochSampler`) before each.

    Args:
        dataset: The split.
        batch_size: Images per batch and process.
        train: Shuffle (per process under ``torchrun``), seed each item, drop a last partial batch.
        task: ``"detection"`` batches images as lists (sizes may differ); segmentation stacks them,
            unless the split is at native resolution (``dataset.native``), whose sizes differ too.
        run: The recipe's ``run`` section (seed, workers).
        ctx: This process's place in the process group.
    """
    as_lists = task == "detection" or bool(getattr(dataset, "native", False))
    sampler = None
    if train:
        sampler = EpochSampler(dataset, run.seed, ctx)
        dataset = SeededItems(dataset)
    elif ctx.distributed:  # exact shards, no padding: metrics equal one process's
        dataset = Subset(dataset, range(ctx.rank, len(dataset), ctx.world_size))
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=run.workers,
        collate_fn=detection_collate if as_lists else None,
        drop_last=train and len(dataset) > batch_size,
        generator=torch.Generator().manual_seed(run.seed),
        worker_init_fn=seed_worker,
        persistent_workers=train and run.workers > 0 and PERSISTENT_WORKERS,
        pin_memory=ctx.device.type == "cuda",
    )
