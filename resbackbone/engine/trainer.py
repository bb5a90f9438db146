"""The fine-tuning loop: one class for detection and segmentation, one process or many.

``Trainer(recipe).fit()`` trains, evaluates every ``eval.every`` epochs, writes
``last.pt`` every epoch and ``best.pt`` on improvement (atomically), logs
metrics to ``metrics.jsonl``/``metrics.csv`` (and TensorBoard when installed),
and at the end evaluates the best model on the test split, prints a summary
table and draws the curves and prediction overlays. ``resume=True`` continues
from ``last.pt`` with the same optimiser, schedule, scaler, EMA and random
states, so a resumed run reproduces the uninterrupted one.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from ..data import class_names
from ..recipes import Recipe
from . import distributed
from .builders import build_model, build_optimizer, build_scheduler, find_backbone, input_normalization
from .checkpoint import load_checkpoint, remove_partial_writes, rng_state, save_checkpoint, set_rng_state
from .evaluate import autocast, evaluate_model, to_device
from .loaders import build_splits, make_loader, seed_everything
from .losses import SegmentationLoss
from .report import RunArtifacts, epoch_line, finish_run, write_metrics

__all__ = ["Trainer", "TrainingError"]


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. a NaN loss); the message names the step and the last good checkpoint."""


class Trainer:
    """Fine-tune the model a :class:`~resbackbone.recipes.Recipe` describes.

    Args:
        recipe: The validated recipe.
        resume: Continue from ``<output>/last.pt``.
        progress: Show tqdm progress bars (main process only).
        output: Run folder; default ``recipe.run.output`` with ``{name}`` filled in.

    Example:
        >>> trainer = Trainer(load_recipe("recipes/quickstart.yaml"))
        >>> summary = trainer.fit()
        >>> summary["best"]["miou"]
    """

    def __init__(self, recipe: Recipe, *, resume: bool = False, progress: bool = True, output: Path | None = None):
        self.recipe = recipe
        self.ctx = distributed.setup(recipe.run.device)
        self.device = self.ctx.device
        if recipe.optim.amp == "fp16" and self.device.type != "cuda":
            raise ValueError("optim.amp='fp16' needs a CUDA device; use amp: bf16 on the CPU, or amp: none.")
        self.output = Path(output or recipe.run.output.format(name=recipe.name))
        self.progress = progress and self.ctx.is_main
        self.task = recipe.task
        seed_everything(recipe.run.seed)

        self.classes = class_names(recipe.data, self.task)
        num_classes = len(self.classes) + 1 if self.task == "detection" else len(self.classes)
        model = build_model(recipe, num_classes).to(self.device)
        if recipe.run.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model = model
        self.backbone = find_backbone(model)
        self.mean, self.std = input_normalization(self.backbone, self.task)
        self.train_set, self.eval_set, self.test_set = build_splits(recipe, self.mean, self.std)

        optim = recipe.optim
        self.train_loader = self._loader(self.train_set, optim.batch_size, train=True)
        batches = len(self.train_loader)
        if recipe.run.max_steps_per_epoch:
            batches = min(batches, recipe.run.max_steps_per_epoch * optim.accumulate)
        self.batches_per_epoch = batches
        self.steps_per_epoch = max(1, batches // optim.accumulate)
        self.optimizer = build_optimizer(model, self.backbone, optim)
        self.scheduler = build_scheduler(self.optimizer, optim, self.steps_per_epoch)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=optim.amp == "fp16")
        self.ema = None
        if optim.ema:
            from timm.utils import ModelEmaV3

            self.ema = ModelEmaV3(model, decay=optim.ema)
        self.seg_loss = (
            SegmentationLoss(recipe.model.loss, recipe.data.ignore_index) if self.task == "segmentation" else None
        )

        self.epoch = 0  # epochs completed
        self.step = 0  # optimiser updates done
        self.best: dict[str, Any] | None = None
        self.history: list[dict[str, Any]] = []
        self.bad_evals = 0
        self.skipped_batches = 0
        self.overflow_steps = 0  # fp16 updates the gradient scaler skipped (inf/NaN gradients)
        self._ddp: nn.Module | None = None
        self._trainable_key: tuple[bool, ...] | None = None
        if resume:
            self._resume()

    # ------------------------------------------------------------------ setup helpers

    def _loader(self, dataset: Dataset, batch_size: int, *, train: bool) -> DataLoader:
        return make_loader(dataset, batch_size, train=train, task=self.task, run=self.recipe.run, ctx=self.ctx)

    def _eval_loader(self, dataset: Dataset) -> DataLoader:
        return self._loader(dataset, self.recipe.eval.batch_size or self.recipe.optim.batch_size, train=False)

    def _train_model(self) -> nn.Module:
        """The model to train: DDP-wrapped when distributed, rebuilt when the trainable set changes."""
        if not self.ctx.distributed:
            return self.model
        key = tuple(p.requires_grad for p in self.model.parameters())
        if self._ddp is None or key != self._trainable_key:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            self._ddp = DistributedDataParallel(self.model, device_ids=ids, find_unused_parameters=False)
            self._trainable_key = key
        return self._ddp

    def _set_trainable_for(self, epoch: int) -> None:
        cfg = self.recipe.model
        frozen = epoch < cfg.freeze_backbone_epochs
        self.backbone.set_trainable_stages(0 if frozen else cfg.trainable_stages)

    # ------------------------------------------------------------------ checkpoints

    def _state(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "ema": self.ema.module.state_dict() if self.ema is not None else None,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": self.epoch,
            "step": self.step,
            "best": self.best,
            "history": self.history,
            "bad_evals": self.bad_evals,
            "skipped_batches": self.skipped_batches,
            "overflow_steps": self.overflow_steps,
            "classes": self.classes,
            "recipe": self.recipe.model_dump(mode="json", by_alias=True),
            "rng": rng_state(),
        }

    def _resume(self) -> None:
        path = self.output / "last.pt"
        if not path.is_file():
            raise ValueError(f"--resume: {path} does not exist; start without --resume, or pass the run's folder.")
        state = load_checkpoint(path)
        if state["classes"] != self.classes:
            raise ValueError(
                f"--resume: {path} was trained on classes {state['classes']}, this recipe has {self.classes}."
            )
        self.model.load_state_dict(state["model"])
        if self.ema is not None and state.get("ema") is not None:
            self.ema.module.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.epoch, self.step = state["epoch"], state["step"]
        self.best, self.history = state["best"], state["history"]
        self.bad_evals, self.skipped_batches = state["bad_evals"], state["skipped_batches"]
        self.overflow_steps = state.get("overflow_steps", 0)
        set_rng_state(state["rng"])
        self._log(f"Resumed from {path}: epoch {self.epoch}, step {self.step}.")
        if self.ctx.is_main:
            removed = remove_partial_writes(self.output)
            if removed:
                names = ", ".join(p.name for p in removed)
                self._log(f"Removed {len(removed)} partial file(s) an interrupted write left behind: {names}.")

    # ------------------------------------------------------------------ logging

    def _log(self, message: str) -> None:
        if self.ctx.is_main:
            from tqdm.auto import tqdm

            tqdm.write(message)

    # ------------------------------------------------------------------ training

    def _loss(self, model: nn.Module, images: Any, targets: Any) -> dict[str, Tensor]:
        with autocast(self.device, self.recipe.optim.amp):
            if self.task == "detection":
                return model(images, targets)
            output = model(images)
        assert self.seg_loss is not None
        return self.seg_loss(output, targets)

    def _batches(self, epoch: int) -> Iterator[tuple[int, Any]]:
        sampler = self.train_loader.sampler
        if isinstance(sampler, DistributedSampler):
            sampler.set_epoch(epoch)
        self.train_loader.generator.manual_seed(self.recipe.run.seed + epoch)
        for i, batch in enumerate(self.train_loader):
            if i >= self.batches_per_epoch:
                break
            yield i, batch

    def _train_epoch(self, epoch: int) -> dict[str, float]:
        from tqdm.auto import tqdm

        optim, run = self.recipe.optim, self.recipe.run
        self._set_trainable_for(epoch)
        model = self._train_model()
        model.train()
        self.optimizer.zero_grad(set_to_none=True)
        sums: dict[str, float] = {}
        count = overflows = 0
        bar = tqdm(
            total=self.batches_per_epoch,
            desc=f"epoch {epoch + 1}/{optim.epochs}",
            disable=not self.progress,
            leave=False,
        )
        for i, (images, targets) in self._batches(epoch):
            images, targets = to_device(images, targets, self.device, run.channels_last)
            update = (i + 1) % optim.accumulate == 0 or i + 1 == self.batches_per_epoch
            sync = model.no_sync() if (self.ctx.distributed and not update) else contextlib.nullcontext()
            with sync:
                parts = self._loss(model, images, targets)
                loss = sum(parts.values())
                if not self._finite(loss):
                    if run.nan_policy == "stop":
                        last = self.output / "last.pt"
                        where = (
                            f"the last good checkpoint is {last}" if last.is_file() else "no checkpoint was saved yet"
                        )
                        raise TrainingError(
                            f"Loss is {loss.item()} at epoch {epoch + 1}, step {self.step + 1} (batch {i + 1}); "
                            f"{where}. Lower optim.lr, set optim.clip_grad, check the data, "
                            "or set run.nan_policy: skip."
                        )
                    self.skipped_batches += 1
                    self.optimizer.zero_grad(set_to_none=True)
                    bar.update(1)
                    continue
                self.scaler.scale(loss / optim.accumulate).backward()
            if update:
                if optim.clip_grad:
                    self.scaler.unscale_(self.optimizer)
                    torch.nn.utils.clip_grad_norm_(self.model.parameters(), optim.clip_grad)
                scale = self.scaler.get_scale() if self.scaler.is_enabled() else None
                self.scaler.step(self.optimizer)
                self.scaler.update()
                self.optimizer.zero_grad(set_to_none=True)
                if scale is not None and self.scaler.get_scale() < scale:
                    # inf/NaN gradients: the scaler skipped this update and lowered its scale; not a step done
                    self.overflow_steps += 1
                    overflows += 1
                else:
                    self.scheduler.step()
                    self.step += 1
                    if self.ema is not None:
                        self.ema.update(self.model, step=self.step)
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach())
            sums["loss"] = sums.get("loss", 0.0) + float(loss.detach())
            count += 1
            bar.set_postfix(loss=f"{sums['loss'] / count:.4f}", lr=f"{self.optimizer.param_groups[0]['lr']:.2e}")
            bar.update(1)
        bar.close()
        if overflows:
            self._log(
                f"epoch {epoch + 1}: the fp16 gradient scaler skipped {overflows} of {self.steps_per_epoch} updates "
                f"(inf/NaN gradients); scale now {self.scaler.get_scale():g}."
            )
        means = {f"train/{k}": v / max(1, count) for k, v in sums.items()}
        means["lr"] = max(g["lr"] for g in self.optimizer.param_groups)
        return means

    def _finite(self, loss: Tensor) -> bool:
        flag = torch.isfinite(loss.detach()).to(torch.int32)
        if self.ctx.distributed:
            flag = flag.to(self.device)
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MIN)
        return bool(flag.item())

    def evaluate(self, dataset: Dataset | None = None) -> dict[str, float]:
        """Metrics of the current model (its EMA when enabled) on ``dataset`` (default: the eval split)."""
        dataset = dataset if dataset is not None else self.eval_set
        if dataset is None:
            return {}
        model = self.ema.module if self.ema is not None else self.model
        self._sync_buffers(model)
        return evaluate_model(
            model,
            self._eval_loader(dataset),
            task=self.task,
            classes=self.classes,
            device=self.device,
            amp=self.recipe.optim.amp,
            ignore_index=self.recipe.data.ignore_index,
            channels_last=self.recipe.run.channels_last,
            progress=self.progress,
        )

    def _sync_buffers(self, model: nn.Module) -> None:
        """Give every process rank 0's buffers (BN statistics drift per rank in the last step)."""
        if self.ctx.distributed:
            for buffer in model.buffers():
                torch.distributed.broadcast(buffer.data, src=0)

    def ranks_in_sync(self) -> bool:
        """Whether every process holds the same parameters (always true in one process)."""
        if not self.ctx.distributed:
            return True
        flat = torch.cat([p.detach().double().flatten() for p in self.model.parameters()])
        weights = torch.arange(1, flat.numel() + 1, dtype=torch.float64, device=flat.device) / flat.numel()
        digest = torch.stack([flat.sum(), flat.square().sum(), (flat * weights).sum()])
        gathered = [torch.empty_like(digest) for _ in range(self.ctx.world_size)]
        torch.distributed.all_gather(gathered, digest)
        return all(torch.equal(g, gathered[0]) for g in gathered)

    def _improved(self, metrics: dict[str, float]) -> bool:
        key = self.recipe.metric
        value = metrics.get(key)
        if value is None or math.isnan(value):
            return False
        return self.best is None or value > self.best["metrics"][key]

    def run_epoch(self) -> dict[str, Any]:
        """Train one epoch, evaluate when due, save ``last.pt`` (and ``best.pt``) and log; returns its row."""
        optim, ev = self.recipe.optim, self.recipe.eval
        epoch = self.epoch
        t0 = time.perf_counter()
        row: dict[str, Any] = {"epoch": epoch + 1, **self._train_epoch(epoch)}
        if (epoch + 1) % ev.every == 0 or epoch + 1 == optim.epochs:
            metrics = self.evaluate()
            row.update({f"{ev.split}/{k}": v for k, v in metrics.items()})
            if self._improved(metrics):
                self.best = {"epoch": epoch + 1, "metrics": metrics}
                self.bad_evals = 0
                if self.ctx.is_main:
                    save_checkpoint(self._state() | {"epoch": epoch + 1}, self.output / "best.pt")
            elif metrics:
                self.bad_evals += 1
        row.update(
            {
                "step": self.step,
                "time": time.perf_counter() - t0,
                "skipped_batches": self.skipped_batches,
                "overflow_steps": self.overflow_steps,
            }
        )
        self.history.append(row)
        self.epoch = epoch + 1
        if self.ctx.is_main:
            self.output.mkdir(parents=True, exist_ok=True)
            save_checkpoint(self._state(), self.output / "last.pt")
            write_metrics(self.output, self.history, row)
        self._log(epoch_line(row, self.recipe.metric, ev.split))
        return row

    def fit(self) -> dict[str, Any]:
        """Train to the end of the schedule (or an early stop); returns the run summary."""
        optim = self.recipe.optim
        if self.ctx.is_main:
            self.output.mkdir(parents=True, exist_ok=True)
            self._log(
                f"{self.recipe.name}: {len(self.train_set)} training images, {len(self.classes)} classes, "
                f"{self.steps_per_epoch} steps/epoch on {self.device} × {self.ctx.world_size}; effective batch "
                f"{optim.batch_size * optim.accumulate * self.ctx.world_size} (lr {optim.lr:g} as given, not rescaled)."
            )
        start = time.perf_counter()
        stopped_early = False
        while self.epoch < optim.epochs:
            self.run_epoch()
            patience = self.recipe.run.early_stopping
            if patience and self.bad_evals >= patience:
                self._log(f"Early stop: {self.recipe.metric} did not improve in {patience} evaluations.")
                stopped_early = True
                break
        return self._finish(time.perf_counter() - start, stopped_early)

    def _finish(self, seconds: float, stopped_early: bool) -> dict[str, Any]:
        test_metrics: dict[str, float] = {}
        if self.test_set is not None:
            best = self.output / "best.pt"
            target = self.ema.module if self.ema is not None else self.model
            if self.ctx.is_main and best.is_file():
                state = load_checkpoint(best)
                target.load_state_dict(state["ema"] if state.get("ema") is not None else state["model"])
            if self.ctx.distributed:  # rank 0's file may be on another machine: send its weights
                for tensor in target.state_dict().values():
                    torch.distributed.broadcast(tensor, src=0)
            test_metrics = self.evaluate(self.test_set)
        summary = {
            "recipe": self.recipe.name,
            "epochs": self.epoch,
            "steps": self.step,
            "seconds": seconds,
            "stopped_early": stopped_early,
            "skipped_batches": self.skipped_batches,
            "overflow_steps": self.overflow_steps,
            "metric": self.recipe.metric,
            "best": self.best,
            "test": test_metrics,
            "device": str(self.device),
            "world_size": self.ctx.world_size,
            "ranks_in_sync": self.ranks_in_sync(),
        }
        if not summary["ranks_in_sync"]:
            raise TrainingError(f"The {self.ctx.world_size} processes ended with different weights; please report it.")
        if self.ctx.is_main:
            finish_run(self._artifacts(), summary, self.ema.module if self.ema is not None else self.model)
        return summary

    def _artifacts(self) -> RunArtifacts:
        """What the end-of-run report draws from (see :func:`~resbackbone.engine.report.finish_run`)."""
        return RunArtifacts(
            output=self.output,
            task=self.task,
            classes=self.classes,
            mean=self.mean,
            std=self.std,
            metric=self.recipe.metric,
            split=self.recipe.eval.split,
            history=self.history,
            overlay_set=self.eval_set or self.test_set,
            overlays=self.recipe.run.overlays,
            device=self.device,
            log=self._log,
        )
