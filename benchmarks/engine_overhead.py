"""Cost of the fine-tuning engine's training step over a bare PyTorch loop, side by side.

Both loops train the same model (copies of one initialisation) on the same
in-memory batch with the same loss and optimiser; the engine adds its
progress bar, loss bookkeeping, NaN check, gradient scaler, scheduler and
parameter groups. Rounds alternate between the two to share the machine's
noise; the ratio of medians is reported.

    python benchmarks/engine_overhead.py                     # quickstart recipe, 10 steps x 5 rounds
    python benchmarks/engine_overhead.py --recipe recipes/quickstart.yaml --steps 20 --rounds 7
"""

from __future__ import annotations

import argparse
import copy
import inspect
import platform
import statistics
import time

import torch
from torch.utils.data import DataLoader, TensorDataset

from resbackbone.engine import Trainer
from resbackbone.engine.losses import SegmentationLoss
from resbackbone.recipes import load_recipe


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="recipes/quickstart.yaml", help="a segmentation recipe")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    recipe = load_recipe(
        args.recipe,
        overrides=["run.workers=0", "run.device=cpu", "optim.warmup_epochs=0", "run.output=/tmp/rb-overhead"],
    )
    if recipe.task != "segmentation":
        raise SystemExit("engine_overhead.py measures segmentation recipes (one tensor batch).")
    trainer = Trainer(recipe, progress=True)
    images, masks = next(iter(trainer.train_loader))
    batch = TensorDataset(images.repeat(args.steps, 1, 1, 1), masks.repeat(args.steps, 1, 1))
    trainer.train_loader = DataLoader(batch, batch_size=len(images), generator=torch.Generator())
    trainer.batches_per_epoch = args.steps

    bare_model = copy.deepcopy(trainer.model)
    # the same optimiser (class, fused kernel, settings) as the engine's, without its parameter groups
    opt_cls = type(trainer.optimizer)
    accepted = inspect.signature(opt_cls).parameters
    bare_opt = opt_cls(
        bare_model.parameters(), **{k: v for k, v in trainer.optimizer.defaults.items() if k in accepted}
    )
    loss_fn = SegmentationLoss(recipe.model.loss, recipe.data.ignore_index)

    def bare() -> float:
        bare_model.train()
        start = time.perf_counter()
        for x, y in DataLoader(batch, batch_size=len(images)):
            loss = sum(loss_fn(bare_model(x), y).values())
            loss.backward()
            bare_opt.step()
            bare_opt.zero_grad(set_to_none=True)
        return (time.perf_counter() - start) / args.steps

    def engine() -> float:
        start = time.perf_counter()
        trainer._train_epoch(0)
        return (time.perf_counter() - start) / args.steps

    bare(), engine()  # warm-up
    times: dict[str, list[float]] = {"bare": [], "engine": []}
    for _ in range(args.rounds):
        times["bare"].append(bare())
        times["engine"].append(engine())
    b, e = statistics.median(times["bare"]), statistics.median(times["engine"])
    machine = platform.processor() or platform.machine()
    print(f"machine: {machine}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    model = f"{recipe.model.head}/{recipe.model.backbone}"
    print(f"recipe {recipe.name}: {model}, batch {len(images)}, {args.steps} steps x {args.rounds} rounds")
    print(f"bare loop   {b * 1000:8.1f} ms/step   (rounds: {', '.join(f'{t * 1000:.0f}' for t in times['bare'])})")
    print(f"engine      {e * 1000:8.1f} ms/step   (rounds: {', '.join(f'{t * 1000:.0f}' for t in times['engine'])})")
    print(f"engine / bare = {e / b:.3f}  (overhead {100 * (e / b - 1):+.1f}%)")


if __name__ == "__main__":
    main()
