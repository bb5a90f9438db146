"""Fine-tuning speed of ``optim.amp: auto`` against fp32 (and other settings), epochs interleaved on one machine.

Each variant is the same recipe with ``--set`` overrides (default: ``optim.amp=none``
against ``optim.amp=auto``). The variants train in one process, epoch by
epoch in turn (A B, then B A, …), so that a busy neighbour or clock drift hits
them alike; each then finishes as ``resbackbone finetune`` does (test split
evaluated with its ``best.pt``, ``summary.json``). Epoch time is wall clock of
the whole epoch, data loading and the evaluation that epoch included.

Example::

    python benchmarks/finetune_amp.py recipes/dsb2018_deeplabv3plus_cpu.yaml --data ../shared/data/dsb2018_nuclei \\
        --out results/ft_dsb
    python benchmarks/finetune_amp.py recipes/bccd_faster_rcnn_cpu.yaml --data ../shared/data/bccd --out results/ft_bccd
    # more variants: --variant fp32=optim.amp=none --variant cl=optim.amp=auto,run.channels_last=true

Writes ``<out>/finetune_amp.json`` and one run folder per variant.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from resbackbone.bench import machine_info
from resbackbone.engine import Trainer
from resbackbone.recipes import load_recipe


def _variants(items: list[str]) -> dict[str, list[str]]:
    if not items:
        return {"fp32": ["optim.amp=none"], "auto": ["optim.amp=auto"]}
    found = {}
    for item in items:
        name, _, sets = item.partition("=")
        if not name or not sets:
            raise SystemExit(f"--variant {item!r}: expected NAME=KEY=VALUE[,KEY=VALUE…]")
        found[name] = sets.split(",")
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipe")
    parser.add_argument("--data", help="dataset root")
    parser.add_argument("--set", action="append", default=[], help="override for every variant (repeatable)")
    parser.add_argument("--variant", action="append", default=[], help="NAME=KEY=VALUE[,KEY=VALUE…] (repeatable)")
    parser.add_argument("--out", required=True, help="folder for the runs and finetune_amp.json")
    args = parser.parse_args(argv)

    out = Path(args.out)
    variants = _variants(args.variant)
    start_info = machine_info()
    trainers = {}
    for name, sets in variants.items():
        recipe = load_recipe(args.recipe, overrides=[*args.set, *sets], data_root=args.data)
        trainers[name] = Trainer(recipe, progress=False, output=out / name)
    epochs = next(iter(trainers.values())).recipe.optim.epochs
    names = list(trainers)
    started = time.perf_counter()
    for epoch in range(epochs):
        order = names if epoch % 2 == 0 else names[::-1]
        for name in order:
            row = trainers[name].run_epoch()
            print(f"[{name}] epoch {epoch + 1}/{epochs}: {row['time']:.1f} s", file=sys.stderr, flush=True)
    summaries = {name: trainer.fit() for name, trainer in trainers.items()}  # epochs done: evaluates test, writes
    result = {
        "command": " ".join(sys.argv),
        "recipe": args.recipe,
        "machine": start_info,
        "load_average_end": machine_info()["load_average"],
        "duration_s": time.perf_counter() - started,
        "variants": {},
    }
    reference = None
    for name, trainer in trainers.items():
        times = [row["time"] for row in trainer.history]
        summary = summaries[name]
        entry = {
            "sets": variants[name],
            "amp": summary["amp"],
            "channels_last": summary["channels_last"],
            "compiled": summary["compiled"],
            "epoch_s": times,
            "epoch_s_median": statistics.median(times),
            "epoch_s_total": sum(times),
            "best": summary["best"],
            "test": summary["test"],
        }
        reference = reference or entry
        entry["speedup_vs_first"] = reference["epoch_s_median"] / entry["epoch_s_median"]
        result["variants"][name] = entry
    out.mkdir(parents=True, exist_ok=True)
    (out / "finetune_amp.json").write_text(json.dumps(result, indent=2, default=float))
    metric = next(iter(trainers.values())).recipe.metric
    print(f"\n| variant | amp | epoch s (median) | total s | × first | best val {metric} | test |")
    print("|---|---|---|---|---|---|---|")
    for name, entry in result["variants"].items():
        test = ", ".join(f"{k} {v:.4f}" for k, v in entry["test"].items() if "/" not in k)
        best = entry["best"]["metrics"][metric] if entry["best"] else float("nan")
        print(
            f"| {name} | {entry['amp']} | {entry['epoch_s_median']:.1f} | {entry['epoch_s_total']:.0f} | "
            f"{entry['speedup_vs_first']:.2f} | {best:.4f} | {test} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
