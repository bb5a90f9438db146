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

import math
import time
from pathlib import Path
from typing import Any

import torch
from timm.utils import ModelEmaV3
from torch.utils.data import DataLoader, Dataset

from ..data import class_names
from ..recipes import Recipe
from . import distributed
from .acceleration import (
    TrainingSpeed,
    choose_training_speed,
    compile_for_training,
    configure_malloc,
    precision_text,
)
from .builders import (
    build_model,
    build_optimizer,
    build_predictor,
    build_scheduler,
    describe_inference,
    find_backbone,
    input_normalization,
)
from .checkpoint import (
    CheckpointedRun,
    best_state,
    load_checkpoint,
    resume_state,
    save_checkpoint,
)
from .evaluate import evaluate_model
from .image_log import ImageLog
from .loaders import build_splits, make_loader, seed_everything
from .loop import TrainingError, TrainState, train_epoch
from .losses import SegmentationLoss
from .report import RunArtifacts, epoch_line, finish_run, write_metrics

__all__ = ["Trainer", "TrainingError"]


def _train_images(dataset: Dataset) -> dict[str, Any]:
    """What the summary records of the training images: the label subset when one was taken."""
    subset = getattr(dataset, "subset", None)
    return subset.as_dict() if subset is not None else {"images": len(dataset)}  # type: ignore[arg-type]


class Trainer(CheckpointedRun):
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

    # What a checkpoint keeps of the run's progress, beside the weights and optimisation state
    progress_fields = ("epoch", "step", "best", "history", "bad_evals", "skipped_batches", "overflow_steps")

    def __init__(self, recipe: Recipe, *, resume: bool = False, progress: bool = True, output: Path | None = None):
        self.recipe = recipe
        self.ctx = distributed.setup(recipe.run.device)
        self.device = self.ctx.device
        self.malloc_reuse = configure_malloc(recipe.run.malloc)
        self.output = Path(output or recipe.run.output.format(name=recipe.name))
        self.progress = progress and self.ctx.is_main
        self.task = recipe.task
        seed_everything(recipe.run.seed)

        self.classes = class_names(recipe.data, self.task)
        num_classes = len(self.classes) + 1 if self.task == "detection" else len(self.classes)
        model = build_model(recipe, num_classes).to(self.device)
        self.backbone = find_backbone(model)
        self.mean, self.std = input_normalization(self.backbone, self.task)
        self.train_set, self.eval_set, self.test_set = build_splits(recipe, self.mean, self.std)
        self.selects_last = recipe.data.train_on_val and recipe.eval.split == "val"
        self.seg_loss = (
            SegmentationLoss(recipe.model.loss, recipe.data.ignore_index) if self.task == "segmentation" else None
        )
        self.speed = distributed.agree(self._choose_speed(model, num_classes), self.ctx)  # one choice for all ranks
        self.amp, self.channels_last = self.speed.amp, self.speed.channels_last
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model = model

        optim = recipe.optim
        self.train_loader = self._loader(self.train_set, optim.batch_size, train=True)
        batches = len(self.train_loader)
        if recipe.run.max_steps_per_epoch:
            batches = min(batches, recipe.run.max_steps_per_epoch * optim.accumulate)
        self.batches_per_epoch = batches
        self.steps_per_epoch = max(1, batches // optim.accumulate)
        self.optimizer = build_optimizer(model, self.backbone, optim)
        self.scheduler = build_scheduler(self.optimizer, optim, self.steps_per_epoch)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp == "fp16")
        # warm-up: the decay at the k-th update is 1 - k**(-2/3) until it reaches optim.ema (update 1 copies), so
        # the first, untrained weights do not linger (at a fixed 0.99, 7 % of update 1 is left after 270 steps)
        self.ema = ModelEmaV3(model, decay=optim.ema, use_warmup=True) if optim.ema else None
        self.compiled = compile_for_training(model, self.task) if recipe.run.compile else []
        self._train_model = distributed.TrainModel(model, self.ctx)

        self.epoch = 0  # epochs completed
        self.step = 0  # optimiser updates done
        self.best: dict[str, Any] | None = None
        self.history: list[dict[str, Any]] = []
        self.bad_evals = 0
        self.skipped_batches = 0
        self.overflow_steps = 0  # fp16 updates the gradient scaler skipped (inf/NaN gradients)
        self._test_log: ImageLog | None = None  # the test split's per-image results, at the end
        if resume:
            self._resume()

    # ------------------------------------------------------------------ setup helpers

    def _choose_speed(self, model: torch.nn.Module, num_classes: int) -> TrainingSpeed:
        """``optim.amp`` and ``run.channels_last``, timed on a training step of the run's shape where ``auto``."""
        return choose_training_speed(
            model,
            amp=self.recipe.optim.amp,
            channels_last=self.recipe.run.channels_last,
            task=self.task,
            loss_fn=self.seg_loss,
            batch=self.recipe.optim.batch_size,
            hw=self.recipe.data.crop_hw,
            in_chans=self.backbone.in_chans,
            num_classes=num_classes,
            device=self.device,
        )

    def _loader(self, dataset: Dataset, batch_size: int, *, train: bool) -> DataLoader:
        return make_loader(dataset, batch_size, train=train, task=self.task, run=self.recipe.run, ctx=self.ctx)

    def _train_state(self) -> TrainState:
        """The model and its optimisation objects, as an update changes them and a checkpoint keeps them."""
        return TrainState(
            self.model, self.optimizer, self.scheduler, self.scaler, self.ema, self.recipe.optim.clip_grad
        )

    # ------------------------------------------------------------------ checkpoints

    def _state(self) -> dict[str, Any]:
        return {
            **self._run_state(),
            "amp": self.amp,
            "classes": self.classes,
            "recipe": self.recipe.model_dump(mode="json", by_alias=True),
        }

    def _best_state(self, epoch: int, metrics: dict[str, float]) -> dict[str, Any]:
        evaluated = self.ema.module if self.ema is not None else self.model
        return best_state(
            evaluated.state_dict(),
            recipe=self.recipe.model_dump(mode="json", by_alias=True),
            classes=self.classes,
            epoch=epoch,
            step=self.step,
            metrics=metrics,
        )

    def _resume(self) -> None:
        path = self.output / "last.pt"
        state = resume_state(path, self.classes)
        self._restore(state, path)
        if state.get("amp", self.amp) != self.amp:  # a last.pt from before the precision was kept: as chosen now
            began = precision_text(state["amp"], state["amp"], self.device)
            self._log(f"The run began in {began} and goes on in it (this start measured otherwise).")
            self.amp = state["amp"]

    # ------------------------------------------------------------------ training

    def _train_epoch(self, epoch: int) -> dict[str, float]:
        cfg = self.recipe.model
        self.backbone.set_trainable_stages(0 if epoch < cfg.freeze_backbone_epochs else cfg.trainable_stages)
        model = self._train_model.get()
        model.train()
        tally = train_epoch(
            self.recipe,
            self.ctx,
            model,
            self.train_loader,
            self._train_state(),
            self.seg_loss,
            epoch=epoch,
            step=self.step,
            total=self.batches_per_epoch,
            last_good=self.output / "last.pt",
            progress=self.progress,
            amp=self.amp,
            channels_last=self.channels_last,
        )
        self.step += tally.updates
        self.skipped_batches += tally.skipped
        self.overflow_steps += tally.overflows
        if tally.overflows:
            self._log(
                f"epoch {epoch + 1}: the fp16 gradient scaler skipped {tally.overflows} of {self.steps_per_epoch} "
                f"updates (inf/NaN gradients); scale now {self.scaler.get_scale():g}."
            )
        return {**tally.means(), "lr": max(g["lr"] for g in self.optimizer.param_groups)}

    def _predictor(self, model: torch.nn.Module, *, single_pass: bool = False) -> Any:
        return build_predictor(model, self.recipe, mean=self.mean, std=self.std, single_pass=single_pass)

    def evaluate(self, dataset: Dataset | None = None, *, image_log: ImageLog | None = None) -> dict[str, float]:
        """Metrics of the current model (its EMA when enabled) on ``dataset`` (default: the eval split).

        The model runs as ``recipe.eval`` says (resolution, windows or tiles, TTA);
        ``image_log`` receives one row per image. An eval split that is trained on
        (``data.train_on_val``) only checks the fit: one pass, the TTA kept for the test.
        """
        dataset = dataset if dataset is not None else self.eval_set
        if dataset is None:
            return {}
        model = self.ema.module if self.ema is not None else self.model
        distributed.broadcast_buffers(model, self.ctx)
        return evaluate_model(
            model,
            self._loader(dataset, self.recipe.eval.batch_size or self.recipe.optim.batch_size, train=False),
            task=self.task,
            classes=self.classes,
            device=self.device,
            amp=self.amp,
            ignore_index=self.recipe.data.ignore_index,
            channels_last=self.channels_last,
            progress=self.progress,
            predictor=self._predictor(model, single_pass=self.selects_last and dataset is self.eval_set),
            image_log=image_log,
        )

    def ranks_in_sync(self) -> bool:
        """Whether every process holds the same parameters (always true in one process)."""
        return distributed.ranks_in_sync(self.model, self.ctx)

    def _improved(self, metrics: dict[str, float]) -> bool:
        key = self.recipe.metric
        value = metrics.get(key)
        if value is None or math.isnan(value):
            return False
        if self.selects_last:  # the eval split was trained on: its best score picks nothing
            return True
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
                    save_checkpoint(self._best_state(epoch + 1, metrics), self.output / "best.pt")
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
            subset = getattr(self.train_set, "subset", None)
            self._log(
                f"{self.recipe.name}: {subset.describe() if subset else f'{len(self.train_set)} training images'}, "
                f"{len(self.classes)} classes, "
                f"{self.steps_per_epoch} steps/epoch on {self.device} × {self.ctx.world_size}; effective batch "
                f"{optim.batch_size * optim.accumulate * self.ctx.world_size} (lr {optim.lr:g} as given, "
                f"not rescaled); {self._speed_line()}."
            )
            if self.selects_last:
                self._log(
                    "data.train_on_val: the val images are trained on, so val scores are not held out (scored "
                    "with one pass, no TTA) and best.pt is the last evaluation; the test split is the held-out figure."
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
        self._test_log = ImageLog(keep_worst=self.recipe.run.overlays)
        if self.test_set is not None:
            best = self.output / "best.pt"
            target = self.ema.module if self.ema is not None else self.model
            if self.ctx.is_main and best.is_file():
                state = load_checkpoint(best)
                target.load_state_dict(state["ema"] if state.get("ema") is not None else state["model"])
            distributed.broadcast_state(target, self.ctx)  # rank 0's file may be on another machine
            test_metrics = self.evaluate(self.test_set, image_log=self._test_log)
        summary = {
            "recipe": self.recipe.name,
            "epochs": self.epoch,
            "steps": self.step,
            "seconds": seconds,
            "stopped_early": stopped_early,
            "skipped_batches": self.skipped_batches,
            "overflow_steps": self.overflow_steps,
            "metric": self.recipe.metric,
            "evaluation": describe_inference(self.recipe),
            "best": self.best,
            "test": test_metrics,
            "device": str(self.device),
            "world_size": self.ctx.world_size,
            "amp": self.amp,
            "channels_last": self.channels_last,
            "compiled": self.compiled,
            "malloc_reuse": self.malloc_reuse,
            "train_images": _train_images(self.train_set),
            "ranks_in_sync": self.ranks_in_sync(),
        }
        if not summary["ranks_in_sync"]:
            raise TrainingError(f"The {self.ctx.world_size} processes ended with different weights; please report it.")
        if self.ctx.is_main:
            finish_run(self._artifacts(), summary, self.ema.module if self.ema is not None else self.model)
        return summary

    def _speed_line(self) -> str:
        """What ``optim.amp``, ``run.channels_last``, ``run.compile`` and ``run.malloc`` came to, for the start line."""
        run = self.recipe.run
        kept = self.amp != self.speed.amp  # resumed in the precision the run began in, not the one measured now
        amp = precision_text(self.recipe.optim.amp, self.amp, self.device, measured=self.speed.amp_measured, kept=kept)
        layout = "channels-last" if self.channels_last else "contiguous"
        if self.speed.timings:
            layout += f" (measured: {self.speed.measured_text()})"
        return (
            f"{amp}, {layout}"
            + (", compiled" if run.compile else "")
            + (", freed buffers kept for reuse" if self.malloc_reuse else "")
        )

    def _artifacts(self) -> RunArtifacts:
        """What the end-of-run report draws from (see :func:`~resbackbone.engine.report.finish_run`)."""
        model = self.ema.module if self.ema is not None else self.model
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
            predictor=self._predictor(model),
            test_log=self._test_log,
            window=self.recipe.data.window,
            ignore_index=self.recipe.data.ignore_index,
        )
