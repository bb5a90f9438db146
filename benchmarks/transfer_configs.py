"""What the label-efficiency study runs: its tasks, configurations (CPU, GPU) and cells, as data.

A :class:`Study` is a table of :class:`Task` entries (a dataset, its recipe, the metric, the
fine-tuning budget) plus the pretraining recipe; :data:`STUDIES` holds the configurations
``benchmarks/transfer.py --config`` takes, and :func:`plan` lists the cells in the order they run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
STARTS = ("random", "ssl", "supervised")
START_NAMES = {
    "random": "random init",
    "ssl": "self-supervised (train images of both datasets)",
    "supervised": "supervised on the other dataset",
}


@dataclass(frozen=True)
class Task:
    """One dataset of the study and how every cell fine-tunes on it.

    Attributes:
        name: Short name (``bccd``); also the folder of run outputs.
        recipe: The fine-tuning recipe, relative to the repository root.
        data: The dataset folder, relative to ``--data``.
        metric: The test metric reported (the recipe's ``eval.metric``).
        budget: Optimiser updates of every cell, whatever the label fraction.
        steps_per_epoch: ``run.max_steps_per_epoch``: no more than the smallest fraction
            gives, so that every cell's epochs hold the same number of updates.
        source: The task whose supervised run gives the ``supervised`` start.
        overrides: ``--set`` values for every cell (image size, batch, ...).
    """

    name: str
    recipe: str
    data: str
    metric: str
    budget: int
    steps_per_epoch: int
    source: str
    overrides: tuple[str, ...] = ()

    @property
    def epochs(self) -> int:
        return self.budget // self.steps_per_epoch


@dataclass(frozen=True)
class Study:
    """A configuration of the study: tasks, fractions, seeds and the pretraining run."""

    name: str
    tasks: tuple[Task, ...]
    pretrain_recipe: str
    pretrain_overrides: tuple[str, ...] = ()
    fractions: tuple[float, ...] = (0.1, 0.25, 1.0)
    seeds: tuple[int, ...] = (0, 1)
    starts: tuple[str, ...] = STARTS
    note: str = ""
    target: float = 0.05  # the better pretrained start beats random init by this much at fractions < 1
    extra: dict[str, Any] = field(default_factory=dict)


_CPU_RUN = ("run.overlays=0", "run.workers=2", "run.device=cpu")
STUDIES: dict[str, Study] = {
    "cpu": Study(
        name="cpu",
        # Sized for a 2-core machine with nothing else running, the whole study in about an hour: 160x120
        # BCCD (60 updates a cell, 0.8 s a step), 192 px DSB2018 with 128 px crops (120 updates, 0.5 s a
        # step), 100 pretraining epochs of 64 px views (60 images/s: 7 minutes); two seeds. A first run on a
        # shared machine (load average 5-11) afforded 25-30 updates a cell, where random init stayed near
        # chance, and 15 pretraining epochs.
        note="ResNet-18, 2 CPU cores, about an hour",
        seeds=(0, 1),
        tasks=(
            Task(
                "bccd",
                "recipes/bccd_faster_rcnn_cpu.yaml",
                "bccd",
                "map50",
                budget=60,
                steps_per_epoch=5,
                source="dsb2018",
                overrides=("data.image_size=[120, 160]", "optim.warmup_epochs=1", *_CPU_RUN),
            ),
            Task(
                "dsb2018",
                "recipes/dsb2018_deeplabv3plus_cpu.yaml",
                "dsb2018_nuclei",
                "dice",
                budget=120,
                steps_per_epoch=2,
                source="bccd",
                overrides=(
                    "data.image_size=192",
                    "data.crop_size=128",
                    "optim.batch_size=4",
                    "optim.warmup_epochs=4",
                    "eval.batch_size=4",
                    *_CPU_RUN,
                ),
            ),
        ),
        pretrain_recipe="recipes/pretrain/simclr_resnet18_cpu.yaml",
        pretrain_overrides=(
            "pretrain.views.resize=192",
            "pretrain.views.crop_size=64",
            "optim.epochs=100",
            "optim.warmup_epochs=5",
            "pretrain.monitor_every=20",
            "run.workers=2",
            "run.device=cpu",
        ),
    ),
    "gpu": Study(
        name="gpu",
        note="ResNet-18, one GPU: full-resolution BCCD, 512 px DSB2018, 10x the updates and 200 pretraining epochs",
        tasks=(
            Task(
                "bccd",
                "recipes/bccd_faster_rcnn_cpu.yaml",
                "bccd",
                "map50",
                budget=600,
                steps_per_epoch=5,
                source="dsb2018",
                overrides=(
                    "data.image_size=[480, 640]",
                    "optim.warmup_epochs=10",
                    "optim.amp=bf16",
                    "run.channels_last=true",
                    "run.overlays=0",
                    "run.workers=8",
                ),
            ),
            Task(
                "dsb2018",
                "recipes/dsb2018_deeplabv3plus_cpu.yaml",
                "dsb2018_nuclei",
                "dice",
                budget=600,
                steps_per_epoch=2,
                source="bccd",
                overrides=(
                    "data.image_size=512",
                    "data.crop_size=256",
                    "optim.batch_size=4",
                    "optim.warmup_epochs=20",
                    "eval.batch_size=4",
                    "optim.amp=bf16",
                    "run.channels_last=true",
                    "run.overlays=0",
                    "run.workers=8",
                ),
            ),
        ),
        pretrain_recipe="recipes/pretrain/simclr_resnet18_cpu.yaml",
        pretrain_overrides=(
            "pretrain.views.resize=512",
            "pretrain.views.crop_size=160",
            "optim.epochs=200",
            "optim.batch_size=256",
            "optim.lr=0.004",
            "optim.warmup_epochs=10",
            "optim.amp=bf16",
            "run.channels_last=true",
            "pretrain.monitor_every=20",
            "run.workers=8",
        ),
    ),
}


@dataclass(frozen=True)
class Cell:
    task: Task
    start: str
    fraction: float
    seed: int

    @property
    def key(self) -> str:
        return f"{self.task.name}-{self.start}-f{round(self.fraction * 100):03d}-s{self.seed}"


def plan(study: Study) -> list[Cell]:
    """Every cell, in the order they run: the supervised start's sources first (the random-init runs on
    100% of each task, planned whenever ``supervised`` is, whatever the starts and fractions asked for),
    then seed by seed, fewest labels first."""
    names = {t.name for t in study.tasks}
    for task in study.tasks:
        if "supervised" in study.starts and task.source not in names:
            raise ValueError(f"task {task.name!r}: source {task.source!r} is not a task of the study {sorted(names)}")
    sources = [Cell(t, "random", 1.0, s) for s in study.seeds for t in study.tasks if "supervised" in study.starts]
    rest = [
        Cell(t, start, f, s)
        for s in study.seeds
        for f in sorted(study.fractions)
        for t in study.tasks
        for start in study.starts
    ]
    return sources + [c for c in rest if c not in sources]
