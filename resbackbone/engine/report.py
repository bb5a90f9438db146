"""What a run leaves behind: metrics files, curves, overlays and the summary table."""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from ..tiling import wrap_detector, wrap_segmenter
from .checkpoint import atomic_write_bytes
from .image_log import ImageCase, ImageLog, draw_case, draw_worst, save_png
from .metrics import SegmentationMetric, detection_counts, detection_row, segmentation_row
from .overlays import COLORS

__all__ = ["RunArtifacts", "draw_prediction", "epoch_line", "finish_run", "write_metrics"]


@dataclass(frozen=True)
class RunArtifacts:
    """What the end-of-run report draws from: the run's folder and history, and how to show predictions.

    Attributes:
        output: The run folder (``last.pt``, ``best.pt``, ``metrics.jsonl`` are in it).
        task: ``"detection"`` or ``"segmentation"``.
        classes: Class names, as the model predicts them.
        mean: Per-channel mean the data pipeline subtracted (undone for the overlays).
        std: Per-channel std the data pipeline divided by.
        metric: The metric that picks the best epoch (``recipe.metric``).
        split: The split it was measured on (``eval.split``).
        history: One row per epoch, as written to ``metrics.jsonl``.
        overlay_set: Images to draw predictions on (the eval split, else the test split), or ``None``.
        overlays: How many overlays to draw (``run.overlays``).
        device: Where the model runs.
        log: Prints a line (the trainer's main-process logger).
        predictor: Runs the model as the recipe's ``eval:`` says
            (:func:`~resbackbone.engine.builders.build_predictor`); ``None``: the plain model.
        test_log: The test split's per-image results: written to ``test_per_image.csv``,
            its worst images drawn to ``overlays/worst_test_*.png``.
        window: DICOM window the images are read with (for drawing at their own resolution).
        ignore_index: Mask label of ignored pixels (drawn grey).
    """

    output: Path
    task: str
    classes: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    metric: str
    split: str
    history: list[dict[str, Any]]
    overlay_set: Dataset | None = None
    overlays: int = 0
    device: torch.device | str = "cpu"
    log: Callable[[str], None] = print
    predictor: Callable[..., list[Any]] | None = None
    test_log: ImageLog | None = None
    window: tuple[float, float] | None = None
    ignore_index: int | None = None


def _json(obj: Any) -> str:
    return json.dumps(obj, default=float, allow_nan=True)


def write_metrics(output: Path, history: list[dict[str, Any]], row: dict[str, Any]) -> None:
    """Append ``row`` to ``metrics.jsonl`` and rewrite ``metrics.csv`` from ``history`` (both atomically)."""
    jsonl = output / "metrics.jsonl"
    atomic_write_bytes(jsonl, "".join(_json(r) + "\n" for r in history).encode())
    columns = list(dict.fromkeys(k for r in history for k in r))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    writer.writerows(history)
    atomic_write_bytes(output / "metrics.csv", buffer.getvalue().encode())
    _tensorboard(output, row)


def _tensorboard(output: Path, row: dict[str, Any]) -> None:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional
        return
    with SummaryWriter(str(output / "tensorboard")) as writer:
        for key, value in row.items():
            if isinstance(value, (int, float)) and key != "epoch":
                writer.add_scalar(key, value, row["epoch"])


def _plot_curves(output: Path, history: list[dict[str, Any]], metric: str, split: str) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not history:
        return None
    epochs = [r["epoch"] for r in history]
    fig, (ax_loss, ax_metric) = plt.subplots(1, 2, figsize=(10, 4))
    for key in sorted({k for r in history for k in r if k.startswith("train/loss")}):
        ax_loss.plot(epochs, [r.get(key, math.nan) for r in history], marker="o", label=key.removeprefix("train/"))
    ax_loss.set(xlabel="epoch", ylabel="training loss", title="loss")
    ax_loss.legend()
    key = f"{split}/{metric}"
    points = [(r["epoch"], r[key]) for r in history if key in r]
    if points:
        ax_metric.plot(*zip(*points), marker="o", color="tab:green")
    ax_metric.set(xlabel="epoch", ylabel=key, title=f"{split} {metric}")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    path = output / "curves.png"
    atomic_write_bytes(path, buffer.getvalue())
    return path


def _denormalize(image: Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> Tensor:
    m = torch.tensor(mean).view(-1, 1, 1)
    s = torch.tensor(std).view(-1, 1, 1)
    pixels = (image.float().cpu() * s + m).clamp(0, 1)
    if pixels.shape[0] == 1:
        pixels = pixels.expand(3, -1, -1)
    return (pixels[:3] * 255).round().to(torch.uint8)


def draw_prediction(
    image: Tensor,
    output: Any,
    *,
    task: str,
    classes: list[str],
    mean: tuple[float, ...],
    std: tuple[float, ...],
    score_thresh: float = 0.5,
) -> Tensor:
    """A uint8 ``(3, H, W)`` picture of ``image`` with its predicted boxes or mask drawn over it."""
    from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks

    canvas = _denormalize(image, mean, std)
    if task == "detection":
        keep = output["scores"] >= score_thresh
        boxes, labels, scores = output["boxes"][keep].cpu(), output["labels"][keep].cpu(), output["scores"][keep].cpu()
        names = [f"{classes[int(lb) - 1] if 0 < lb <= len(classes) else lb} {s:.2f}" for lb, s in zip(labels, scores)]
        colors = [COLORS[(int(lb) - 1) % len(COLORS)] for lb in labels]
        return draw_bounding_boxes(canvas, boxes, labels=names, colors=colors, width=2) if len(boxes) else canvas
    logits = output["out"] if isinstance(output, dict) else output
    pred = logits.argmax(0).cpu()
    masks = torch.stack([pred == c for c in range(1, len(classes))]) if len(classes) > 1 else None
    if masks is None or not masks.any():
        return canvas
    return draw_segmentation_masks(canvas, masks, alpha=0.45, colors=COLORS[: len(masks)] * 4)


def _overlays(run: RunArtifacts, model: nn.Module) -> list[Path]:
    """The first ``run.overlays`` images of the overlay split, ground truth beside prediction."""
    dataset = run.overlay_set
    if dataset is None or run.overlays == 0:
        return []
    model.eval()
    detection = run.task == "detection"
    predictor = run.predictor or (wrap_detector(model) if detection else wrap_segmenter(model))
    native = bool(getattr(dataset, "native", False))
    paths = []
    for index in range(min(run.overlays, len(dataset))):
        image, target = dataset[index]
        size = [tuple(target["orig_size"])] if native else None
        with torch.no_grad():
            output = predictor([image.to(run.device)], size)[0]
        if detection:
            truth = target
            prediction = {k: v.cpu() for k, v in output.items()}
            row = detection_row(*detection_counts(prediction, truth, len(run.classes)), run.classes)
        else:
            truth = target["mask"] if native else target
            prediction = output.argmax(0).cpu()
            counts = SegmentationMetric(run.classes, ignore_index=run.ignore_index or 255).update_labels(
                prediction[None], truth[None]
            )
            row = segmentation_row(*(c[0] for c in counts), run.classes)
        path = target.get("path") if native or detection else None
        name = Path(path).name if path else f"#{index}"
        case = ImageCase(0.0, index, name=name, row=row, image=image, path=path, truth=truth, prediction=prediction)
        picture = draw_case(case, run.task, run.classes, run.mean, run.std, run.window, run.ignore_index)
        paths.append(save_png(run.output / "overlays" / f"val_{index:03d}.png", picture))
    return paths


def _table(summary: dict[str, Any], split: str) -> str:
    rows = [
        ("recipe", summary["recipe"]),
        ("epochs", summary["epochs"]),
        ("steps", summary["steps"]),
        ("time", f"{summary['seconds'] / 60:.1f} min"),
        ("device", f"{summary['device']} × {summary['world_size']}"),
    ]
    if "amp" in summary:  # what optim.amp, run.channels_last and run.compile came to
        layout = "channels-last" if summary.get("channels_last") else "contiguous"
        compiled = ", compiled" if summary.get("compiled") else ""
        rows.append(("precision", f"{'fp32' if summary['amp'] == 'none' else summary['amp']}, {layout}{compiled}"))
    if summary.get("evaluation"):
        rows.append(("evaluated", summary["evaluation"]))
    best = summary.get("best")
    if best:
        rows.append(
            (f"best {split} {summary['metric']}", f"{best['metrics'][summary['metric']]:.4f} (epoch {best['epoch']})")
        )
    for key, value in summary.get("test", {}).items():
        if "/" not in key:
            rows.append((f"test {key}", f"{value:.4f}"))
    if summary["skipped_batches"]:
        rows.append(("skipped batches (non-finite loss)", summary["skipped_batches"]))
    if summary.get("overflow_steps"):
        rows.append(("updates skipped by the fp16 scaler", summary["overflow_steps"]))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"  {k:<{width}}  {v}" for k, v in rows)


def epoch_line(row: dict[str, Any], metric: str, split: str) -> str:
    """The line logged after an epoch: its mean training loss, its eval metric when it has one, its time."""
    value = row.get(f"{split}/{metric}")
    shown = f", {split} {metric} {value:.4f}" if isinstance(value, float) else ""
    return f"epoch {row['epoch']}: loss {row.get('train/loss', float('nan')):.4f}{shown} ({row['time']:.0f}s)"


def finish_run(run: RunArtifacts, summary: dict[str, Any], model: nn.Module) -> None:
    """Write ``summary.json``, ``curves.png`` and overlays; print the summary table.

    Args:
        run: The run's folder, history and display settings.
        summary: The run summary; its ``files`` entry is filled in here.
        model: The model the overlays show (the EMA when the run kept one).
    """
    summary["files"] = {"last": str(run.output / "last.pt")}
    if (run.output / "best.pt").is_file():
        summary["files"]["best"] = str(run.output / "best.pt")
    summary["files"]["metrics"] = str(run.output / "metrics.jsonl")
    curves = _plot_curves(run.output, run.history, run.metric, run.split)
    if curves:
        summary["files"]["curves"] = str(curves)
    (run.output / "overlays").mkdir(exist_ok=True)
    overlays = _overlays(run, model)
    if run.test_log is not None and run.test_log.rows:
        summary["files"]["test_per_image"] = str(run.test_log.write_csv(run.output / "test_per_image.csv"))
        overlays += draw_worst(
            run.test_log,
            run.output / "overlays",
            prefix="worst_test",
            task=run.task,
            classes=run.classes,
            mean=run.mean,
            std=run.std,
            window=run.window,
            ignore_index=run.ignore_index,
        )
    if overlays:
        summary["files"]["overlays"] = str(overlays[0].parent)
    atomic_write_bytes(run.output / "summary.json", json.dumps(summary, indent=2, default=float).encode())
    run.log("\n" + _table(summary, run.split) + f"\n  outputs in {run.output}/")
