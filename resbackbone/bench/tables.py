"""Presenting a benchmark result: terminal table, Markdown, JSON and a PNG plot."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from itertools import groupby
from pathlib import Path
from typing import Any

__all__ = ["format_markdown", "format_table", "plot", "write_reports"]

_SHORT = {"timm": "timm", "timm-cl": "timm-cl", "torchvision": "tv", "smp": "smp"}


def _num(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def _pct(value: float | None, fmt: str = ".0f", suffix: str = "") -> str:
    return "-" if value is None else format(100 * value, fmt) + suffix


def _config_key(row: dict[str, Any]) -> tuple:
    return row["backbone"], row["device"], row["batch_size"], row["input_size"]


def _title(row: dict[str, Any]) -> str:
    what = "C2–C5 + FPN" if row.get("fpn") else "C2–C5"
    size = f"{row['input_size']}×{row['input_size']}"
    return f"{row['backbone']} · {row['device']} · batch {row['batch_size']} · {size} · {what}"


def _inference_table(rows: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    competitors = list(dict.fromkeys(k for row in rows for k in (row["ratio_vs"] or {})))
    header = (
        ["impl", "mode", "dtype", "CL", "compiled", "img/s", "p50 ms", "p95 ms", "peak MiB", "GFLOP/s", "% ceil"]
        + [f"×{_SHORT.get(c, c)}" for c in competitors]
        + ["max abs err", "max rel err", "status"]
    )
    body = []
    for row in rows:
        ok = row["status"] == "ok"
        ratios = row["ratio_vs"] or {}
        body.append(
            [
                row["impl"],
                row["mode"],
                row["dtype"],
                "y" if row["channels_last"] else "n" if ok else "-",
                "y" if row["compiled"] else "n" if ok else "-",
                _num(row["images_per_s"], ".1f"),
                _num(row["latency_ms_p50"], ".1f"),
                _num(row["latency_ms_p95"], ".1f"),
                _num(row["peak_memory_mib"], ".0f"),
                _num(row["gflops_per_s"], ".1f"),
                _pct(row["ceiling_fraction"]),
            ]
            + [_num(ratios.get(c), ".2f") for c in competitors]
            + [
                _num(row["max_abs_diff"], ".1e"),
                _num(row["max_rel_diff"], ".1e"),
                row["status"] + (f": {row['note']}" if row["note"] else ""),
            ]
        )
    return header, body


def _train_table(rows: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    header = [
        "model",
        "checkpointed",
        "amp",
        "img/s",
        "step p50 ms",
        "step p95 ms",
        "peak MiB",
        "memory saved",
        "time added",
    ]
    body = [
        [
            row["model"],
            ",".join(row["checkpoint_stages"]) or "n",
            "bf16" if row["amp_bf16"] else "fp32",
            _num(row["images_per_s"], ".1f"),
            _num(row["step_ms_p50"], ".0f"),
            _num(row["step_ms_p95"], ".0f"),
            _num(row["peak_memory_mib"], ".0f"),
            _pct(row["memory_saving"], ".0f", "%"),
            _pct(row["time_overhead"], "+.0f", "%"),
        ]
        for row in rows
    ]
    return header, body


def _text_grid(header: list[str], body: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header) - 1)]
    lines = []
    for r in [header, *body]:
        lines.append(
            "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) + "  " + r[-1]
        )
    return "\n".join(lines)


def _md_grid(header: list[str], body: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(c.replace("|", "/") for c in r) + " |" for r in body]
    return "\n".join(lines)


def _sections(
    result: dict[str, Any], grid: Callable[[list[str], list[list[str]]], str], heading: Callable[[str], str]
) -> Iterable[str]:
    machine = result["machine"]
    gpus = ", ".join(g["name"] for g in machine["gpus"]) or "none"
    yield heading(
        f"Machine: {machine['cpu_model']} ({machine['cpu_cores']} cores, {machine['torch_threads']} threads, "
        f"flags {' '.join(machine['cpu_flags']) or '-'}), GPU: {gpus}"
    )
    versions = machine["versions"]
    yield ", ".join(f"{k} {v}" for k, v in versions.items() if v) + f"; load average {machine['load_average']}"
    for device, ceilings in result["ceilings"].items():
        yield f"{device} matmul ceiling, best of 1 s at the start: " + ", ".join(
            f"{k} {v:.0f} GFLOP/s" for k, v in ceilings.items()
        )
    for _, group in groupby(result["results"], key=_config_key):
        rows = list(group)
        yield heading(_title(rows[0]) + f" · {rows[0]['gmacs_per_image']:.2f} GMACs/image (1 MAC = 2 FLOP)")
        same_run = {r["ceiling_key"]: r["ceiling_gflops_per_s"] for r in rows if r["ceiling_key"]}
        if same_run:
            yield "% ceil: of the matmul ceiling timed in the same rounds as the models, median " + ", ".join(
                f"{k} {v:.0f} GFLOP/s" for k, v in same_run.items()
            )
        yield grid(*_inference_table(rows))
    for _, group in groupby(result["train"], key=_config_key):
        rows = list(group)
        yield heading(
            f"training: {rows[0]['backbone']} · {rows[0]['device']} · batch {rows[0]['batch_size']} · "
            f"{rows[0]['input_size']}×{rows[0]['input_size']}, forward+backward"
        )
        yield grid(*_train_table(rows))


def format_table(result: dict[str, Any]) -> str:
    """The result as plain-text tables, one per configuration."""
    return "\n\n".join(_sections(result, _text_grid, lambda s: f"== {s}"))


def format_markdown(result: dict[str, Any]) -> str:
    """The result as Markdown: machine, ceilings, then one table per configuration."""
    body = "\n\n".join(_sections(result, _md_grid, lambda s: f"### {s}"))
    return f"# Feature-extraction benchmark\n\n`{result['command']}` ({result['created']})\n\n{body}\n"


def plot(result: dict[str, Any], path: Path) -> None:
    """Images/s of every model, one panel per configuration, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = [list(g) for _, g in groupby(result["results"], key=_config_key)]
    groups = [[r for r in g if r["status"] == "ok"] for g in groups]
    groups = [g for g in groups if g] or [[]]
    fig, axes = plt.subplots(
        len(groups), 1, figsize=(8, 0.45 * sum(max(len(g), 2) for g in groups) + 1.2), squeeze=False
    )
    for ax, rows in zip(axes[:, 0], groups):
        if not rows:
            ax.set_axis_off()
            continue
        labels = [f"{r['impl']} {r['mode']} {r['dtype']}" for r in rows]
        values = [r["images_per_s"] for r in rows]
        colors = ["tab:blue" if r["impl"] == "resbackbone" else "tab:gray" for r in rows]
        ax.barh(labels, values, color=colors)
        ax.invert_yaxis()
        for y, v in enumerate(values):
            ax.text(v, y, f" {v:.1f}", va="center", fontsize=8)
        ax.set_xlabel("images/s (higher is better)")
        ax.set_title(_title(rows[0]), fontsize=9)
        ax.margins(x=0.15)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_reports(result: dict[str, Any], out_dir: str | Path, *, stem: str = "bench") -> dict[str, Path]:
    """Write ``<stem>.json``, ``<stem>.md`` and ``<stem>.png`` into ``out_dir``.

    Returns:
        ``{"json": path, "markdown": path, "png": path}``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / f"{stem}.json", "markdown": out / f"{stem}.md", "png": out / f"{stem}.png"}
    paths["json"].write_text(json.dumps(result, indent=2) + "\n")
    paths["markdown"].write_text(format_markdown(result))
    plot(result, paths["png"])
    return paths
