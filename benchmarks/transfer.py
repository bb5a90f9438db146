"""The label-efficiency study: what a pretrained backbone buys when labels are scarce, on real data.

Every task (BCCD detection, test mAP@0.5; DSB2018 segmentation, test foreground Dice) is fine-tuned
with its recipe on 10%, 25% and 100% of its training images, with the same number of optimiser
updates whatever the fraction, from three starts:

- ``random``: random initialisation;
- ``ssl``: ``resbackbone pretrain`` on the union of the training images of every task (labels
  unused, never a val or test image), one run shared by all cells;
- ``supervised``: the backbone of the supervised ``random`` run on all the training images of
  the other task (same seed).

Each cell runs for every seed (the seed sets the labelled subset, the initialisation and the data
order); the best checkpoint on val is scored on test. Cells run in this process through the same
calls as ``resbackbone finetune`` / ``pretrain``; the exact equivalent commands are written to
``commands.sh``. A cell whose result JSON exists is skipped, and an interrupted run continues
from its ``last.pt``: a killed study loses at most the epoch it was in.

    python benchmarks/transfer.py --config cpu --data ../shared/data --out results/transfer
    python benchmarks/transfer.py --config cpu --data ../shared/data --out results/transfer --dry-run

Outputs in ``--out``: ``transfer.json``, ``transfer.md``, ``transfer.png``, ``commands.sh``,
``cells/*.json`` (one per cell) and ``runs/`` (the run folders).
"""

from __future__ import annotations

import argparse
import json
import shlex
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from transfer_configs import REPO, STARTS, STUDIES, Cell, Study, plan

from resbackbone.engine.checkpoint import atomic_write_bytes

# ---------------------------------------------------------------------------------------------- commands


def pretrain_overrides(study: Study, data: Path) -> list[str]:
    """The pretraining run's ``--set`` values: the study's, and the union of the tasks' training splits."""
    images = [
        {
            "recipe": str(REPO / t.recipe),
            "root": str(data / t.data),
            "split": "train",
            "overrides": [o for o in t.overrides if o.startswith("data.")],
        }
        for t in study.tasks
    ]
    return [*study.pretrain_overrides, "pretrain.images=" + json.dumps(images)]


def finetune_overrides(study: Study, cell: Cell, out: Path) -> list[str]:
    """A cell's ``--set`` values: the task's, the label fraction, the seed, the budget and the start."""
    task = cell.task
    source = next((t for t in study.tasks if t.name == task.source), task)
    weights = {
        "random": "null",
        "ssl": str(out / "runs" / "pretrain" / "backbone.safetensors"),
        "supervised": str(run_folder(out, Cell(source, "random", 1.0, cell.seed))),  # its best.pt, else last.pt
    }[cell.start]
    return [
        *task.overrides,
        f"data.train_fraction={cell.fraction}" if cell.fraction < 1 else "data.train_fraction=null",
        f"data.subset_seed={cell.seed}",
        f"run.seed={cell.seed}",
        f"optim.epochs={task.epochs}",
        f"run.max_steps_per_epoch={task.steps_per_epoch}",
        f"eval.every={task.epochs}",
        f"model.backbone_weights={weights}",
        # the study's protocol, whatever a recipe's final refit does: fractions of the train split alone,
        # val held out, the weights as trained (no EMA), as the published cells were measured
        "data.train_on_val=false",
        "optim.ema=null",
    ]


def run_folder(out: Path, cell: Cell) -> Path:
    return out / "runs" / cell.task.name / cell.key


def command(kind: str, recipe: str, sets: list[str], output: Path, data: Path | None = None) -> str:
    """The ``resbackbone`` command line a run equals."""
    args = ["resbackbone", kind, recipe, *(["--data", str(data)] if data else []), "--output", str(output)]
    args += [x for s in sets for x in ("--set", s)] + ["--no-progress"]
    return shlex.join(args)


# ---------------------------------------------------------------------------------------------- running


def _write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, json.dumps(obj, indent=2, default=float).encode())


def run_pretrain(study: Study, data: Path, out: Path) -> dict[str, Any]:
    """The self-supervised run (skipped when its backbone exists; resumed from ``last.pt``)."""
    from resbackbone.pretrain import Pretrainer, load_pretrain_recipe

    folder = out / "runs" / "pretrain"
    summary_file = folder / "summary.json"
    if not (folder / "backbone.safetensors").is_file() or not summary_file.is_file():
        recipe = load_pretrain_recipe(REPO / study.pretrain_recipe, overrides=pretrain_overrides(study, data))
        Pretrainer(recipe, resume=(folder / "last.pt").is_file(), progress=False, output=folder).fit()
    summary = json.loads(summary_file.read_text())
    return {
        "seconds": summary["images_seen"] / summary["images_per_s"],  # training time, summed over resumes
        "images_per_s": summary["images_per_s"],
        "images": summary.get("images"),
        "images_seen": summary.get("images_seen"),
        "epochs": summary["epochs"],
        "steps": summary["steps"],
        "monitor": summary.get("monitor"),
        "backbone": str(folder / "backbone.safetensors"),
        "command": command("pretrain", study.pretrain_recipe, pretrain_overrides(study, data), folder),
    }


def _train_images_per_s(history: list[dict[str, Any]], batch_size: int) -> float | None:
    """Training images per second over the epochs without an evaluation (the evaluation is timed apart)."""
    steps, seconds, previous = 0, 0.0, 0
    for row in history:
        if not any(k.startswith(("val/", "test/")) for k in row):
            steps, seconds = steps + row["step"] - previous, seconds + row["time"]
        previous = row["step"]
    return steps * batch_size / seconds if seconds else None


def run_cell(study: Study, cell: Cell, data: Path, out: Path) -> dict[str, Any]:
    """Fine-tune one cell as ``resbackbone finetune`` does; returns its result (also written to cells/)."""
    from resbackbone.engine import Trainer
    from resbackbone.recipes import load_recipe

    task, folder = cell.task, run_folder(out, cell)
    sets = finetune_overrides(study, cell, out)
    if not (folder / "summary.json").is_file():
        recipe = load_recipe(REPO / task.recipe, overrides=sets, data_root=str(data / task.data))
        trainer = Trainer(recipe, resume=(folder / "last.pt").is_file(), progress=False, output=folder)
        if trainer.steps_per_epoch != task.steps_per_epoch:
            raise ValueError(
                f"task {task.name!r}: {cell.fraction:.0%} of the training images gives {trainer.steps_per_epoch} "
                f"steps per epoch, not steps_per_epoch={task.steps_per_epoch}; lower steps_per_epoch (or the batch)"
            )
        trainer.fit()
    summary = json.loads((folder / "summary.json").read_text())
    history = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    batch = load_recipe(REPO / task.recipe, overrides=sets, data_root=str(data / task.data)).optim.batch_size
    best = summary.get("best") or {}
    result = {
        "task": task.name,
        "start": cell.start,
        "fraction": cell.fraction,
        "seed": cell.seed,
        "metric": task.metric,
        "test": summary["test"].get(task.metric),
        "val": best.get("metrics", {}).get(task.metric),
        "test_metrics": summary["test"],
        "steps": summary["steps"],
        "train_images": summary["train_images"],
        "seconds": summary["seconds"],
        "train_images_per_s": _train_images_per_s(history, batch),
        "run": str(folder),
        "command": command("finetune", task.recipe, sets, folder, data / task.data),
    }
    if summary["steps"] != task.budget:
        raise ValueError(f"cell {cell.key} made {summary['steps']} updates, not the budget {task.budget}")
    _write_json(out / "cells" / f"{cell.key}.json", result)
    return result


def run_study(study: Study, data: Path, out: Path, *, dry_run: bool = False, log: Any = print) -> dict[str, Any]:
    """Run (or continue) every cell of ``study``; write the JSON, Markdown, plot and commands after each cell."""
    from transfer_report import write_report

    for task in study.tasks:
        if not (data / task.data).is_dir():
            raise FileNotFoundError(f"task {task.name!r}: dataset folder {data / task.data} not found; check --data")
    cells = plan(study)
    out.mkdir(parents=True, exist_ok=True)
    commands = [command("pretrain", study.pretrain_recipe, pretrain_overrides(study, data), out / "runs" / "pretrain")]
    commands += [
        command("finetune", c.task.recipe, finetune_overrides(study, c, out), run_folder(out, c), data / c.task.data)
        for c in cells
    ]
    atomic_write_bytes(
        out / "commands.sh", ("#!/usr/bin/env bash\nset -euo pipefail\n" + "\n".join(commands) + "\n").encode()
    )
    if dry_run:
        log("\n".join(commands))
        return {}
    from resbackbone.bench import machine_info

    started, machine = time.time(), machine_info()
    results: dict[str, dict[str, Any]] = {}
    pretrain: dict[str, Any] | None = None
    done_times: list[float] = []
    if "ssl" in study.starts:
        log(f"[pretrain] {study.pretrain_recipe} on the training images of {', '.join(t.name for t in study.tasks)}")
        pretrain = run_pretrain(study, data, out)
        log(f"[pretrain] done: {pretrain['seconds'] / 60:.1f} min, {pretrain['images_per_s']:.1f} images/s")
    for index, cell in enumerate(cells, 1):
        path = out / "cells" / f"{cell.key}.json"
        if path.is_file():
            results[cell.key] = json.loads(path.read_text())
            continue
        t0 = time.perf_counter()
        results[cell.key] = result = run_cell(study, cell, data, out)
        done_times.append(time.perf_counter() - t0)
        left = sum(1 for c in cells[index:] if not (out / "cells" / f"{c.key}.json").is_file())
        eta = left * sum(done_times) / len(done_times) / 60
        log(
            f"[{index}/{len(cells)}] {cell.key}: test {cell.task.metric} {result['test']:.4f} "
            f"(val {result['val'] if result['val'] is None else round(result['val'], 4)}), {done_times[-1]:.0f} s; "
            f"about {eta:.0f} min left"
        )
        write_report(out, study_dict(study), machine, pretrain, list(results.values()), started, len(cells))
    return write_report(out, study_dict(study), machine, pretrain, list(results.values()), started, len(cells))


def study_dict(study: Study) -> dict[str, Any]:
    d = asdict(study)
    for task in d["tasks"]:
        task["epochs"] = task["budget"] // task["steps_per_epoch"]
    return d


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="cpu", choices=sorted(STUDIES), help="the study's configuration")
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data"), help="folder holding the datasets")
    parser.add_argument("--out", required=True, help="output folder (outside the repository, or git-ignored)")
    parser.add_argument("--seeds", type=int, nargs="+", help="seeds (default: the configuration's)")
    parser.add_argument(
        "--starts", nargs="+", choices=STARTS, help="starts to run (default: all); cells of others are kept"
    )
    parser.add_argument("--fractions", type=float, nargs="+", help="label fractions (default: the configuration's)")
    parser.add_argument("--dry-run", action="store_true", help="write and print the commands only")
    args = parser.parse_args(argv)
    study = STUDIES[args.config]
    if args.seeds:
        study = replace(study, seeds=tuple(args.seeds))
    if args.starts:
        study = replace(study, starts=tuple(s for s in STARTS if s in args.starts))
    if args.fractions:
        study = replace(study, fractions=tuple(args.fractions))
    report = run_study(study, Path(args.data).resolve(), Path(args.out).resolve(), dry_run=args.dry_run)
    if report:
        print((Path(args.out) / "transfer.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
