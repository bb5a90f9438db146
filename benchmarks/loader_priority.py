"""Epoch time of a recipe with its loader's workers at the training process's priority, below it, or none.

Each round trains one epoch per mode, a fresh ``Trainer`` each (same seed, so the same batches and
augmentations), modes interleaved to share the machine's noise; rounds and medians are reported.
``nice`` is the loader as it is (workers at ``nice`` ``WORKER_NICENESS``); ``same`` sets the
niceness to 0 for the run; ``inline`` loads in the training process (``run.workers=0``).

    python benchmarks/loader_priority.py                               # the BCCD CPU recipe, 2 rounds
    python benchmarks/loader_priority.py --steps 20 --rounds 3         # shorter epochs, more rounds
    python benchmarks/loader_priority.py --recipe recipes/dsb2018_deeplabv3plus_cpu.yaml --data ../shared/data/dsb2018
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import warnings

from resbackbone.bench import machine_info
from resbackbone.engine import loaders
from resbackbone.engine.trainer import Trainer
from resbackbone.recipes import load_recipe

MODES = ("nice", "same", "inline")


def epoch_seconds(args: argparse.Namespace, mode: str, output: str) -> float:
    niceness = loaders.WORKER_NICENESS
    overrides = [f"run.output={output}/{mode}", "run.channels_last=true"]
    if mode == "inline":
        overrides.append("run.workers=0")
    if args.steps:
        overrides.append(f"run.max_steps_per_epoch={args.steps}")
    if mode == "same":
        loaders.WORKER_NICENESS = 0  # read by each worker as it starts
    try:
        trainer = Trainer(load_recipe(args.recipe, overrides=overrides, data_root=args.data), progress=False)
        start = time.perf_counter()
        trainer.run_epoch()
        return time.perf_counter() - start
    finally:
        loaders.WORKER_NICENESS = niceness


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="recipes/bccd_faster_rcnn_cpu.yaml")
    parser.add_argument("--data", default="../shared/data/bccd")
    parser.add_argument("--steps", type=int, default=None, help="steps an epoch (default: the whole split)")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()

    warnings.simplefilter("ignore")  # the dataset's warnings, once per trainer
    times: dict[str, list[float]] = {mode: [] for mode in MODES}
    with tempfile.TemporaryDirectory() as output:
        for _ in range(args.rounds):
            for mode in MODES:
                times[mode].append(epoch_seconds(args, mode, output))
    machine = machine_info()
    print(f"{machine['cpu_model']} ({machine['cpu_cores']} cores), {args.recipe}, one epoch per mode and round")
    for mode, seconds in times.items():
        print(f"  {mode:6s} s/epoch {', '.join(f'{s:.1f}' for s in seconds)}; median {statistics.median(seconds):.1f}")
    for mode in ("same", "inline"):
        print(f"  nice / {mode}, median: {statistics.median(times['nice']) / statistics.median(times[mode]):.2f}")


if __name__ == "__main__":
    main()
