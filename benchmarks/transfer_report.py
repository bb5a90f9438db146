"""The label-efficiency study's report: ``transfer.json``, ``transfer.md`` and ``transfer.png`` from the cells.

Each (task, start, fraction) row holds the mean and the sample standard deviation of the test metric
over the seeds, with the seeds' values; the ``gain`` rows are the better pretrained start minus random
init, with whether it reaches the study's target.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

from transfer_configs import START_NAMES

from resbackbone.engine.checkpoint import atomic_write_bytes

SCHEMA_VERSION = 1


def summarize(study: dict[str, Any], cells: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (task, start, fraction): mean, sd (over seeds), the values and their seeds."""
    rows = []
    for task in study["tasks"]:
        for start in study["starts"]:
            for fraction in sorted(study["fractions"]):
                mine = sorted(
                    (c for c in cells if (c["task"], c["start"], c["fraction"]) == (task["name"], start, fraction)),
                    key=lambda c: c["seed"],
                )
                values = [c["test"] for c in mine if c["test"] is not None]
                rows.append(
                    {
                        "task": task["name"],
                        "metric": task["metric"],
                        "start": start,
                        "fraction": fraction,
                        "n": len(values),
                        "mean": statistics.fmean(values) if values else None,
                        "sd": statistics.stdev(values) if len(values) > 1 else None,
                        "values": values,
                        "seeds": [c["seed"] for c in mine],
                        "val_mean": statistics.fmean(v)
                        if (v := [c["val"] for c in mine if c["val"] is not None])
                        else None,
                    }
                )
    return rows


def gains(study: dict[str, Any], rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per task and fraction: the better pretrained start (by test mean), its gain over random init, target met."""
    out = []
    for task in study["tasks"]:
        for fraction in sorted(study["fractions"]):
            by_start = {r["start"]: r for r in rows if (r["task"], r["fraction"]) == (task["name"], fraction)}
            random = by_start.get("random", {}).get("mean")
            pretrained = [r for s, r in by_start.items() if s != "random" and r["mean"] is not None]
            if random is None or not pretrained:
                continue
            best = max(pretrained, key=lambda r: r["mean"])
            gain = best["mean"] - random
            out.append(
                {
                    "task": task["name"],
                    "fraction": fraction,
                    "best_start": best["start"],
                    "gain": gain,
                    "target": study["target"] if fraction < 1 else None,
                    "met": gain >= study["target"] if fraction < 1 else None,
                }
            )
    return out


def _cell(row: dict[str, Any]) -> str:
    if row["mean"] is None:
        return "—"
    spread = f" ± {row['sd']:.3f}" if row["sd"] is not None else ""
    return f"{row['mean']:.3f}{spread} ({', '.join(f'{v:.3f}' for v in row['values'])})"


def markdown(report: dict[str, Any]) -> str:
    """The tables: one per task (starts × fractions), the gains, and the throughput."""
    study, rows = report["config"], report["summary"]
    fractions = sorted(study["fractions"])
    lines = []
    for task in study["tasks"]:
        lines += [
            f"**{task['name']}** — test {task['metric']}, mean ± sd over seeds (each seed's value); "
            f"{task['budget']} updates per cell ({task['epochs']} epochs of {task['steps_per_epoch']} steps)",
            "",
            "| start | " + " | ".join(f"{f:.0%} labels" for f in fractions) + " |",
            "|---|" + "---|" * len(fractions),
        ]
        for start in study["starts"]:
            mine = {r["fraction"]: r for r in rows if (r["task"], r["start"]) == (task["name"], start)}
            lines.append(f"| {START_NAMES[start]} | " + " | ".join(_cell(mine[f]) for f in fractions) + " |")
        gained = {g["fraction"]: g for g in report["gains"] if g["task"] == task["name"]}
        if gained:
            lines.append(
                "| **better pretrained − random** | "
                + " | ".join(_gain(gained.get(f), study["target"]) for f in fractions)
                + " |"
            )
        lines.append("")
    pretrain = report.get("pretrain") or {}
    speeds = [c["train_images_per_s"] for c in report["cells"] if c.get("train_images_per_s")]
    by_task = {
        t["name"]: statistics.median(s)
        for t in study["tasks"]
        if (
            s := [
                c["train_images_per_s"]
                for c in report["cells"]
                if c["task"] == t["name"] and c.get("train_images_per_s")
            ]
        )
    }
    if pretrain:
        lines.append(
            f"Pretraining: {pretrain['epochs']} epochs, {pretrain['images_seen']} images seen in "
            f"{pretrain['seconds'] / 60:.1f} min of training, **{pretrain['images_per_s']:.1f} images/s** "
            "(two views each)."
        )
    if speeds:
        lines.append(
            "Fine-tuning: "
            + ", ".join(f"{name} **{v:.1f} images/s**" for name, v in by_task.items())
            + " (median over cells, epochs without evaluation)."
        )
    m = report["machine"]
    lines.append(
        f"Machine: {m['hostname']}, {m['cpu_model']}, {m['cpu_cores']} cores, "
        + (", ".join(g["name"] for g in m["gpus"]) or "no GPU")
        + f", {m['torch_threads']} torch thread(s); torch {m['versions']['torch']}; load average "
        f"{m['load_average']} at the start, {report['load_average_end']} at the end. "
        f"{report['cells_done']}/{report['cells_planned']} cells done; fine-tuning "
        f"{sum(c['seconds'] for c in report['cells']) / 60:.0f} min summed over the cells."
    )
    return "\n".join(lines) + "\n"


def _gain(gain: dict[str, Any] | None, target: float) -> str:
    if gain is None:
        return "—"
    verdict = "" if gain["met"] is None else (" ✓" if gain["met"] else f" ✗ (target +{target:.2f})")
    return f"{gain['gain']:+.3f} ({gain['best_start']}){verdict}"


def plot(report: dict[str, Any], path: Path) -> Path | None:
    """Test metric against label fraction, one panel per task, a line per start (mean, seeds as dots)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    study, rows = report["config"], report["summary"]
    fig, axes = plt.subplots(1, len(study["tasks"]), figsize=(5 * len(study["tasks"]), 4), squeeze=False)
    for ax, task in zip(axes[0], study["tasks"], strict=True):
        for start in study["starts"]:
            mine = [r for r in rows if (r["task"], r["start"]) == (task["name"], start) and r["mean"] is not None]
            if not mine:
                continue
            xs = [r["fraction"] * 100 for r in mine]
            line = ax.errorbar(
                xs,
                [r["mean"] for r in mine],
                yerr=[r["sd"] or 0 for r in mine],
                marker="o",
                capsize=3,
                label=START_NAMES[start],
            )
            for r in mine:
                ax.scatter(
                    [r["fraction"] * 100] * len(r["values"]), r["values"], s=10, alpha=0.5, color=line[0].get_color()
                )
        ax.set_xscale("log")
        ax.set_xticks([f * 100 for f in study["fractions"]], [f"{f:.0%}" for f in study["fractions"]])
        ax.set_xlabel("training labels")
        ax.set_ylabel(f"test {task['metric']}")
        ax.set_title(task["name"])
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_report(
    out: Path,
    study: dict[str, Any],
    machine: dict[str, Any],
    pretrain: dict[str, Any] | None,
    cells: list[dict[str, Any]],
    started: float,
    planned: int,
) -> dict[str, Any]:
    """Write ``transfer.json``, ``transfer.md`` and ``transfer.png`` (each atomically); returns the report."""
    rows = summarize(study, cells)
    report = {
        "schema_version": SCHEMA_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "duration_s": time.time() - started,
        "config": study,
        "machine": machine,
        "load_average_end": [round(v, 2) for v in os.getloadavg()],
        "pretrain": pretrain,
        "cells_planned": planned,
        "cells_done": len(cells),
        "cells": sorted(cells, key=lambda c: (c["task"], c["start"], c["fraction"], c["seed"])),
        "summary": rows,
        "gains": gains(study, rows),
    }
    atomic_write_bytes(out / "transfer.json", json.dumps(report, indent=2, default=float).encode())
    atomic_write_bytes(out / "transfer.md", markdown(report).encode())
    tmp = out / "transfer.png.partial.png"
    if plot(report, tmp):
        tmp.replace(out / "transfer.png")
    return report
