"""RoIAlign's training pass on the CPU: the weighted gather against torchvision's kernel, side by side.

Two measures in one process, each interleaved round by round so that both sides share the machine's
noise:

- the pooling alone: forward and backward of one FPN level's RoIAlign at the BCCD CPU recipe's
  sizes (4 images, 128 channels, a 36 x 28 map at stride 8, 512 RoIs of 8-100 px);
- a whole Faster R-CNN training step of a recipe's model (``--recipe``, default the BCCD CPU
  recipe: ResNet-18, FPN on C3-C5 at 128 channels, 288 x 224 input, 128 RoIs an image), built as
  ``resbackbone finetune`` builds it, on random images and boxes at the recipe's input size and
  batch, with its own pooler or torchvision's ``MultiScaleRoIAlign`` in ``box_roi_pool``.

    python benchmarks/roi_align_step.py                  # 3 rounds of 5 steps
    python benchmarks/roi_align_step.py --rounds 5 --steps 8
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torchvision

from resbackbone.bench import machine_info
from resbackbone.engine.builders import build_model
from resbackbone.heads.roi_align import roi_align_gather
from resbackbone.recipes import load_recipe


def _boxes(count: int, width: int, height: int, small: float, large: float, g: torch.Generator) -> torch.Tensor:
    size = torch.rand(count, 2, generator=g) * (large - small) + small
    start = torch.rand(count, 2, generator=g) * (torch.tensor([width, height]) - size)
    return torch.cat([start, start + size], 1)


def _time(fn, steps: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    return (time.perf_counter() - start) / steps * 1e3


def pooling(rounds: int, steps: int) -> dict[str, list[float]]:
    g = torch.Generator().manual_seed(0)
    features = torch.randn(4, 128, 28, 36, generator=g)
    rois = torch.cat([torch.randint(0, 4, (512, 1), generator=g).float(), _boxes(512, 288, 224, 8, 100, g)], 1)
    upstream = torch.randn(512, 128, 7, 7, generator=g)
    kernels = {"torchvision": torchvision.ops.roi_align, "gather": roi_align_gather}

    def run(kernel):
        x = features.clone().requires_grad_()
        kernel(x, rois, (7, 7), 1 / 8, 2).backward(upstream)

    times: dict[str, list[float]] = {name: [] for name in kernels}
    for kernel in kernels.values():
        run(kernel)  # warm-up
    for _ in range(rounds):
        for name, kernel in kernels.items():
            times[name].append(_time(lambda k=kernel: run(k), steps))
    return times


def training_step(recipe_path: str, rounds: int, steps: int) -> dict[str, list[float]]:
    recipe = load_recipe(recipe_path)
    if recipe.task != "detection" or recipe.model.head != "faster_rcnn" or not recipe.data.classes:
        raise SystemExit(f"--recipe {recipe_path}: expected a Faster R-CNN recipe that lists data.classes")
    height, width = recipe.data.size_hw
    batch, classes = recipe.optim.batch_size, len(recipe.data.classes)
    torch.manual_seed(0)
    model = build_model(recipe, num_classes=classes + 1).train()  # + background, as the Trainer builds it
    g = torch.Generator().manual_seed(1)
    images = [torch.rand(3, height, width, generator=g) for _ in range(batch)]
    targets = []
    for _ in range(batch):
        boxes = _boxes(20, width, height, 8, 60, g)
        targets.append({"boxes": boxes, "labels": torch.randint(1, classes + 1, (20,), generator=g)})
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    ours = model.roi_heads.box_roi_pool
    theirs = torchvision.ops.MultiScaleRoIAlign(ours.featmap_names, ours.output_size, ours.sampling_ratio)
    pools = {"torchvision": theirs, "gather": ours}

    def step(pool):
        model.roi_heads.box_roi_pool = pool
        losses = model(images, targets)
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()

    for pool in pools.values():
        step(pool)  # warm-up
    times: dict[str, list[float]] = {name: [] for name in pools}
    for _ in range(rounds):
        for name, pool in pools.items():
            times[name].append(_time(lambda p=pool: step(p), steps))
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--recipe", default="recipes/bccd_faster_rcnn_cpu.yaml", help="the detection recipe whose step is timed"
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()
    machine = machine_info()
    print(
        f"{machine['cpu_model']} ({machine['cpu_cores']} cores), torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads"
    )
    for title, times in (
        ("RoIAlign forward + backward, 512 RoIs, 4 x 128 x 28 x 36", pooling(args.rounds, args.steps * 4)),
        (f"Faster R-CNN training step of {args.recipe}", training_step(args.recipe, args.rounds, args.steps)),
    ):
        print(title)
        for name, values in times.items():
            print(f"  {name:12s} ms: " + ", ".join(f"{v:.1f}" for v in values))
        ratio = statistics.median(times["gather"]) / statistics.median(times["torchvision"])
        print(f"  gather / torchvision, median: {ratio:.2f}")


if __name__ == "__main__":
    main()
