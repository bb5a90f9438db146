"""The pretraining run: a backbone, a self-supervised method and unlabeled images, on the fine-tuning engine.

``Pretrainer(recipe).fit()`` trains with the engine's epoch loop
(:func:`~resbackbone.engine.loop.train_epoch`: AMP, accumulation, clipping,
NaN policy, progress bar, DDP under ``torchrun``), writes ``last.pt`` every
epoch (atomically) with everything ``--resume`` needs to continue exactly (the
momentum encoder and memory banks included), logs ``metrics.jsonl``/``.csv``
with the losses, throughput and the monitor (dense probe, collapse check), and
at the end writes ``backbone.safetensors`` + ``backbone.json``,
``summary.json`` and ``curves.png``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from ..backbone import create_backbone
from ..engine import distributed
from ..engine.acceleration import autocast, precision_text, resolve_amp
from ..engine.builders import build_optimizer, build_scheduler
from ..engine.checkpoint import CheckpointedRun, resume_state, rng_state, save_checkpoint, set_rng_state
from ..engine.loaders import make_loader, seed_everything
from ..engine.loop import TrainState, train_epoch
from ..engine.report import RunArtifacts, epoch_line, finish_run, write_metrics
from ..weights import BackboneRecord
from .config import PretrainRecipe
from .export import write_backbone
from .images import UnlabeledImages, collect_images
from .methods import METHODS, build_method
from .monitor import ProbeSet, build_probe_set, dense_probe, embedding_spread
from .views import MultiViews

__all__ = ["LIGHTLY_HINT", "Pretrainer"]

LIGHTLY_HINT = "pip install 'resbackbone[pretrain]' (or pip install lightly)"
"""How to install what pretraining needs."""

_SPREAD_IMAGES = 64  # images of the collapse check


def _require_lightly() -> None:
    try:
        import lightly.loss  # noqa: F401
    except ImportError:
        raise ImportError(f"Self-supervised pretraining needs the lightly package: {LIGHTLY_HINT}.") from None


class Pretrainer(CheckpointedRun):
    """Pretrain the backbone a :class:`~resbackbone.pretrain.PretrainRecipe` describes.

    Args:
        recipe: The validated pretraining recipe.
        resume: Continue from ``<output>/last.pt``.
        progress: Show tqdm progress bars (main process only).
        output: Run folder; default ``recipe.run.output`` with ``{name}`` filled in.

    Raises:
        ImportError: lightly is not installed (the message says how to install it).
        ValueError: Bad images or sources, ``in_chans`` that does not fit them, a frozen
            backbone, fp16 without CUDA, or a ``--resume`` that does not fit.

    Example:
        >>> summary = Pretrainer(load_pretrain_recipe("recipes/pretrain/simclr_resnet18_cpu.yaml")).fit()
        >>> summary["backbone"]   # 'runs/simclr_resnet18_cpu/backbone.safetensors'
    """

    progress_fields = ("epoch", "step", "history", "skipped_batches", "overflow_steps", "images_seen", "train_seconds")

    def __init__(
        self, recipe: PretrainRecipe, *, resume: bool = False, progress: bool = True, output: Path | None = None
    ) -> None:
        _require_lightly()
        self.recipe = recipe
        self.ctx = distributed.setup(recipe.run.device)
        self.device = self.ctx.device
        optim, m, p = recipe.optim, recipe.model, recipe.pretrain
        # optim.amp: auto and run.channels_last: auto are not measured for pretraining (the methods differ in their
        # step): auto takes resolve_amp's answer, which is fp32 on a CPU without AMX, and the default layout
        self.amp = resolve_amp(optim.amp, self.device)
        self.channels_last = recipe.run.channels_last is True
        self.output = Path(output or recipe.run.output.format(name=recipe.name))
        self.progress = progress and self.ctx.is_main
        seed_everything(recipe.run.seed)

        self.images = collect_images(p.images, in_chans=m.in_chans)
        if len(self.images.paths) < 2:
            raise ValueError(
                f"pretrain.images yields {len(self.images.paths)} image: a self-supervised method needs a batch of at "
                "least 2 (other images are its negatives or its batch statistics); add images."
            )
        self.backbone = create_backbone(
            m.backbone,
            weights=m.weights,
            out_levels=("C3", "C4", "C5"),
            in_chans=m.in_chans,
            norm=m.norm,
            trainable_stages=m.trainable_stages,
            grad_checkpointing=m.grad_checkpointing,
        )
        views = MultiViews(METHODS[p.method].views, p.views, self.backbone.mean, self.backbone.std, m.in_chans)
        self.dataset = UnlabeledImages(
            self.images, views, in_chans=m.in_chans, resize=p.views.resize, cache=p.cache_images
        )
        model = build_method(p.method, self.backbone, p.options(), gather=self.ctx.distributed).to(self.device)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model = model

        self.loader = make_loader(
            self.dataset, optim.batch_size, train=True, task="pretrain", run=recipe.run, ctx=self.ctx
        )
        batches = len(self.loader)
        if recipe.run.max_steps_per_epoch:
            batches = min(batches, recipe.run.max_steps_per_epoch * optim.accumulate)
        self.batches_per_epoch = batches
        self.steps_per_epoch = max(1, batches // optim.accumulate)
        self.total_steps = self.steps_per_epoch * optim.epochs
        self.optimizer = build_optimizer(model, self.backbone, optim)
        self.scheduler = build_scheduler(self.optimizer, optim, self.steps_per_epoch)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp == "fp16")
        self.ema = None  # the recipe refuses optim.ema: the backbone written is the trained one
        self._train_model = distributed.TrainModel(model, self.ctx)

        self.epoch = 0
        self.step = 0
        self.history: list[dict[str, Any]] = []
        self.skipped_batches = 0
        self.overflow_steps = 0
        self.images_seen = 0
        self.train_seconds = 0.0
        self._probes: list[ProbeSet] | None = None
        if resume:
            self._resume()

    # ------------------------------------------------------------------ state

    def _train_state(self) -> TrainState:
        return TrainState(
            self.model,
            self.optimizer,
            self.scheduler,
            self.scaler,
            self.ema,
            self.recipe.optim.clip_grad,
            after_update=lambda step: self.model.momentum_update(step, self.total_steps),
        )

    def origin(self) -> dict[str, Any]:
        """How the backbone was pretrained, as ``backbone.json`` records it."""
        p = self.recipe.pretrain
        last = next((r for r in reversed(self.history) if "monitor/embedding_std" in r), {})
        return {
            "kind": "pretrain",
            "recipe": self.recipe.name,
            "method": p.method,
            "images": len(self.dataset),
            "images_seen": self.images_seen,
            "epochs": self.epoch,
            "steps": self.step,
            "sources": self.images.sources,
            "started_from": self.recipe.model.weights,
            "views": p.views.model_dump(),
            "norm": self.recipe.model.norm,
            "seed": self.recipe.run.seed,
            "monitor": {k.removeprefix("monitor/"): v for k, v in last.items() if k.startswith("monitor/")},
        }

    def _state(self) -> dict[str, Any]:
        return {
            **self._run_state(),
            "classes": [],
            "recipe": self.recipe.model_dump(mode="json", by_alias=True),
            "origin": self.origin(),
        }

    def _resume(self) -> None:
        path = self.output / "last.pt"
        state = resume_state(path, [])
        pretrain = state["recipe"].get("pretrain")
        if not isinstance(pretrain, dict):
            raise ValueError(f"--resume: {path} is a fine-tuning checkpoint, not a pretraining one; pick another run.")
        if pretrain.get("method") != self.recipe.pretrain.method:
            raise ValueError(
                f"--resume: {path} was pretrained with {pretrain.get('method')!r}, this recipe uses "
                f"{self.recipe.pretrain.method!r}; resume with the same method or start a new run folder."
            )
        self._restore(state, path)

    # ------------------------------------------------------------------ monitor

    def monitor(self) -> dict[str, float]:
        """The dense probe on each ``pretrain.monitor`` split and the collapse check (main process only).

        Random states are restored afterwards, so monitoring does not change training.
        """
        if not self.ctx.is_main:
            return {}
        saved = rng_state()
        try:
            m = self.recipe.model
            if self._probes is None:
                self._probes = [
                    build_probe_set(cfg, mean=self.backbone.mean, std=self.backbone.std, in_chans=m.in_chans)
                    for cfg in self.recipe.pretrain.monitor
                ]
                step = max(1, len(self.dataset) // _SPREAD_IMAGES)
                self._spread_images = torch.stack([self.dataset.plain(i) for i in range(0, len(self.dataset), step)])
            row: dict[str, float] = {}
            with autocast(self.device, self.amp):
                values = [dense_probe(self.backbone, probe, self.device) for probe in self._probes]
                spread = embedding_spread(self.model, self._spread_images, self.device)
            for probe, value in zip(self._probes, values):
                row[f"monitor/{probe.name}/probe_miou"] = value
            if values:
                row["monitor/probe_miou"] = sum(values) / len(values)
            row["monitor/embedding_std"] = spread
            return row
        finally:
            set_rng_state(saved)

    # ------------------------------------------------------------------ training

    def run_epoch(self) -> dict[str, Any]:
        """Train one epoch, monitor when due, save ``last.pt`` and log; returns its row."""
        optim, epoch = self.recipe.optim, self.epoch
        t0 = time.perf_counter()
        model = self._train_model.get()
        model.train()
        tally = train_epoch(
            self.recipe,  # type: ignore[arg-type]  # the loop reads its optim and run sections
            self.ctx,
            model,
            self.loader,
            self._train_state(),
            None,
            epoch=epoch,
            step=self.step,
            total=self.batches_per_epoch,
            last_good=self.output / "last.pt",
            progress=self.progress,
            amp=self.amp,
            channels_last=self.channels_last,
        )
        seconds = time.perf_counter() - t0
        seen = (tally.batches + tally.skipped) * optim.batch_size * self.ctx.world_size
        self.step += tally.updates
        self.skipped_batches += tally.skipped
        self.overflow_steps += tally.overflows
        self.images_seen += seen
        self.train_seconds += seconds
        row: dict[str, Any] = {
            "epoch": epoch + 1,
            **tally.means(),
            "lr": max(g["lr"] for g in self.optimizer.param_groups),
            "images_per_s": seen / max(seconds, 1e-9),
            "images_seen": self.images_seen,
        }
        every = self.recipe.pretrain.monitor_every
        if (epoch + 1) % every == 0 or epoch + 1 == optim.epochs:
            row.update(self.monitor())
        row.update({"step": self.step, "time": time.perf_counter() - t0, "skipped_batches": self.skipped_batches})
        self.history.append(row)
        self.epoch = epoch + 1
        if self.ctx.is_main:
            self.output.mkdir(parents=True, exist_ok=True)
            save_checkpoint(self._state(), self.output / "last.pt")
            write_metrics(self.output, self.history, row)
        self._log(epoch_line(row, "probe_miou", "monitor") + f", {row['images_per_s']:.1f} img/s")
        return row

    def fit(self) -> dict[str, Any]:
        """Pretrain to the end of the schedule; write the backbone; returns the run summary."""
        optim, p = self.recipe.optim, self.recipe.pretrain
        if self.ctx.is_main:
            self.output.mkdir(parents=True, exist_ok=True)
            layout = "channels-last" if self.channels_last else "contiguous"
            if self.recipe.run.channels_last == "auto":
                layout += " (run.channels_last: auto is not measured in pretraining)"
            self._log(
                f"{self.recipe.name}: {p.method} on {len(self.dataset)} images from {len(self.images.sources)} "
                f"source(s), {self.recipe.model.backbone} (in_chans {self.recipe.model.in_chans}), "
                f"{self.steps_per_epoch} steps/epoch on {self.device} × {self.ctx.world_size}; effective batch "
                f"{optim.batch_size * optim.accumulate * self.ctx.world_size}; "
                f"{precision_text(optim.amp, self.amp, self.device)}, {layout}."
            )
        if self.epoch == 0 and not self.history and self.ctx.is_main:
            initial = {"epoch": 0, **self.monitor()}
            self.history.append(initial)
            self._log(f"before pretraining: {_monitor_text(initial)}")
        start = time.perf_counter()
        while self.epoch < optim.epochs:
            self.run_epoch()
        return self._finish(time.perf_counter() - start)

    def _finish(self, seconds: float) -> dict[str, Any]:
        last = self.history[-1] if self.history else {}
        summary: dict[str, Any] = {
            "recipe": self.recipe.name,
            "method": self.recipe.pretrain.method,
            "epochs": self.epoch,
            "steps": self.step,
            "seconds": seconds,
            "images": len(self.dataset),
            "images_seen": self.images_seen,
            "images_per_s": self.images_seen / max(self.train_seconds, 1e-9),
            "skipped_batches": self.skipped_batches,
            "overflow_steps": self.overflow_steps,
            "metric": "probe_miou",
            "best": None,
            "test": {},
            "initial": {k: v for k, v in self.history[0].items() if k.startswith("monitor/")} if self.history else {},
            "monitor": {k: v for k, v in last.items() if k.startswith("monitor/")},
            "device": str(self.device),
            "amp": self.amp,
            "world_size": self.ctx.world_size,
            "ranks_in_sync": distributed.ranks_in_sync(self.model, self.ctx),
        }
        if self.ctx.is_main:
            record = BackboneRecord(
                self.backbone.name, self.backbone.in_chans, self.backbone.mean, self.backbone.std, self.origin()
            )
            summary["backbone"] = str(write_backbone(self.backbone, record, self.output))
            artifacts = RunArtifacts(
                output=self.output,
                task="pretrain",
                classes=[],
                mean=self.backbone.mean,
                std=self.backbone.std,
                metric="probe_miou",
                split="monitor",
                history=self.history,
                device=self.device,
                log=self._log,
            )
            finish_run(artifacts, summary, self.model)
            self._log(
                f"  {summary['images_per_s']:.1f} images/s; {_monitor_text(summary['initial'])} before, "
                f"{_monitor_text(summary['monitor'])} after\n  backbone: {summary['backbone']} (+ backbone.json)"
            )
        return summary


def _monitor_text(row: dict[str, Any]) -> str:
    parts = []
    if "monitor/probe_miou" in row:
        parts.append(f"probe mIoU {row['monitor/probe_miou']:.3f}")
    if "monitor/embedding_std" in row:
        parts.append(f"embedding std {row['monitor/embedding_std']:.3f}")
    return ", ".join(parts) or "no monitor"
