"""Epoch time of a recipe with its loader's workers kept, forked each epoch, at the step's priority, or none.

Each round trains ``--epochs`` epochs per mode in a fresh ``Trainer`` (same seed, so the same batches
and augmentations) and times the epochs after the first (the first forks the workers in every mode);
modes are interleaved, in reverse every other round, to share the machine's noise, and rounds and
medians are reported. ``kept`` is the loader as it is (workers kept from epoch to epoch at ``nice``
``WORKER_NICENESS``); ``forked`` forks them anew each epoch (``PERSISTENT_WORKERS`` off); ``same``
keeps them at the training process's niceness; ``inline`` loads in the training process
(``run.workers=0``).

    python benchmarks/loader_priority.py                               # the BCCD CPU recipe, 2 rounds
    python benchmarks/loader_priority.py --steps 20 --epochs 4         # shorter epochs, more of them
    python benchmarks/loader_priority.py --modes kept,forked --rounds 3
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

MODES = ("kept", "forked", "same", "inline")


def epoch_seconds(args: argparse.Namespace, mode: str, output: str) -> list[float]:
    """Seconds of each epoch after the first, ``mode``'s loader."""
    niceness, persistent = loaders.WORKER_NICENESS, loaders.PERSISTENT_WORKERS
    # one epoch more in the schedule than run, evaluated after it: the timed epochs only train
    beyond = args.epochs + 1
    overrides = [f"run.output={output}/{mode}", "run.channels_last=true"]
    overrides += [f"optim.epochs={beyond}", f"eval.every={beyond}"]
    if mode == "inline":
        overrides.append("run.workers=0")
    if args.steps:
        overrides.append(f"run.max_steps_per_epoch={args.steps}")
    loaders.WORKER_NICENESS = 0 if mode == "same" else niceness  # read by each worker as it starts
    loaders.PERSISTENT_WORKERS = mode != "forked"  # read as the trainer builds its loader
    try:
        trainer = Trainer(load_recipe(args.recipe, overrides=overrides, data_root=args.data), progress=False)
        seconds = []
        for _ in range(args.epochs):
            start = time.perf_counter()
            trainer.run_epoch()
            seconds.append(time.perf_counter() - start)
        return seconds[1:]
    finally:
        loaders.WORKER_NICENESS, loaders.PERSISTENT_WORKERS = niceness, persistent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="recipes/bccd_faster_rcnn_cpu.yaml")
    parser.add_argument("--data", default="../shared/data/bccd")
    parser.add_argument("--steps", type=int, default=None, help="steps an epoch (default: the whole split)")
    parser.add_argument("--epochs", type=int, default=2, help="epochs a trainer; all but the first are timed")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--modes", default=",".join(MODES), help=f"comma-separated, of {', '.join(MODES)}")
    args = parser.parse_args()
    modes = args.modes.split(",")
    if unknown := sorted(set(modes) - set(MODES)):
        parser.error(f"--modes: {', '.join(unknown)} unknown; choose from {', '.join(MODES)}")
    if args.epochs < 2:
        parser.error(f"--epochs {args.epochs}: the first epoch is not timed, so give 2 or more")

    warnings.simplefilter("ignore")  # the dataset's warnings, once per trainer
    times: dict[str, list[float]] = {mode: [] for mode in modes}
    with tempfile.TemporaryDirectory() as output:
        for i in range(args.rounds):
            for mode in modes if i % 2 == 0 else modes[::-1]:  # ABBA: a drifting host favours no mode
                times[mode] += epoch_seconds(args, mode, output)
    machine = machine_info()
    where = f"{machine['cpu_model']} ({machine['cpu_cores']} cores), {args.recipe}"
    print(f"{where}, epochs 2-{args.epochs} per mode and round")
    for mode, seconds in times.items():
        print(f"  {mode:6s} s/epoch {', '.join(f'{s:.1f}' for s in seconds)}; median {statistics.median(seconds):.1f}")
    if "kept" in times:
        for mode in (m for m in modes if m != "kept"):
            print(f"  kept / {mode}, median: {statistics.median(times['kept']) / statistics.median(times[mode]):.2f}")


if __name__ == "__main__":
    main()
