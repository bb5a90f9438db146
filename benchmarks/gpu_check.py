"""A few fine-tuning steps of real recipes on a GPU, with AMP bf16 and channels-last; prints throughput.

Runs on the built-in shapes dataset (generated on first use, no download), so
it needs nothing but the package and a CUDA device. Each recipe trains for a
warm-up epoch and a timed one; images/s counts training images per second.

    python benchmarks/gpu_check.py                      # default recipes, batch 32
    python benchmarks/gpu_check.py --batch 64 --steps 30
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch

from resbackbone.engine import Trainer
from resbackbone.recipes import load_recipe

# recipe, overrides that point it at the built-in dataset
CHECKS: dict[str, list[str]] = {
    "deeplabv3plus/resnet50 (quickstart)": ["model.backbone=resnet50"],
    "faster_rcnn/resnet50 (detection)": ["model.head=faster_rcnn", "model.backbone=resnet50", "eval.metric=map50"],
    "retinanet/resnet50 (detection)": ["model.head=retinanet", "model.backbone=resnet50", "eval.metric=map50"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--amp", default="bf16", choices=("bf16", "fp16", "none"))
    parser.add_argument("--json", default=os.path.join(os.environ.get("OUT", "."), "gpu_check.json"))
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("gpu_check.py needs a CUDA device.")
    print(f"GPU: {torch.cuda.get_device_name()}, torch {torch.__version__}, CUDA {torch.version.cuda}")
    results = []
    for label, extra in CHECKS.items():
        overrides = [
            *extra,
            "model.backbone_weights=null",
            f"data.image_size={args.size}",
            f"optim.batch_size={args.batch}",
            f"optim.amp={args.amp}",
            "optim.epochs=2",
            f"run.max_steps_per_epoch={args.steps}",
            "run.device=cuda",
            "run.channels_last=true",
            "run.workers=8",
            "run.overlays=0",
            "run.output=/tmp/rb-gpu-check",
        ]
        trainer = Trainer(load_recipe("recipes/quickstart.yaml", overrides=overrides), progress=False)
        trainer._train_epoch(0)  # warm-up: cuDNN autotuning, allocator
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        row = trainer._train_epoch(1)
        torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        images = trainer.batches_per_epoch * args.batch
        result = {
            "check": label,
            "batch": args.batch,
            "size": args.size,
            "amp": args.amp,
            "images_per_s": images / seconds,
            "step_ms": 1000 * seconds / trainer.batches_per_epoch,
            "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30,
            "loss": row["train/loss"],
        }
        results.append(result)
        print(
            f"{label:<38} {result['images_per_s']:8.1f} images/s  {result['step_ms']:7.1f} ms/step  "
            f"{result['peak_mem_gib']:5.1f} GiB  loss {result['loss']:.3f}"
        )
        del trainer
        torch.cuda.empty_cache()
    with open(args.json, "w") as f:
        json.dump({"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
