"""Cost of large-image inference (sliding windows, tiles, test-time flips) beside the resized path, in images/s.

Each variant is the recipe with some ``--set`` overrides of its ``eval:``
section; every variant runs the same model over the same images of a split,
predictions returned at each file's resolution (what ``evaluate`` and
``predict`` do, without the metrics). Rounds alternate between the variants
to share the machine's noise; the median is reported. The weights do not
change the cost much (a detector's proposal counts are fixed by the recipe),
so a random initialisation serves unless ``--checkpoint`` is given.

    python benchmarks/inference_cost.py recipes/dsb2018_deeplabv3plus_cpu.yaml --data ../shared/data/dsb2018_nuclei \\
        --variant resized= --variant "windows=eval.sliding_window={size: 256, overlap: 0.25}" \\
        --variant "flips=eval.tta=[hflip,vflip]"
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

from resbackbone.data import build_dataset, class_names
from resbackbone.engine.builders import build_model, build_predictor, find_backbone, input_normalization
from resbackbone.engine.checkpoint import load_model
from resbackbone.recipes import load_recipe


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipe")
    parser.add_argument("--data", help="dataset root, replacing data.root")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="for every variant")
    parser.add_argument("--checkpoint", help="a run's best.pt (default: the recipe's model, random weights)")
    parser.add_argument("--split", default="val")
    parser.add_argument("--images", type=int, default=8, help="images per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--variant", action="append", default=[], metavar="NAME=KEY=VALUE;KEY=VALUE", help="repeatable")
    args = parser.parse_args()
    variants = {}
    for text in args.variant or ["resized="]:
        name, _, sets = text.partition("=")
        variants[name] = [s for s in sets.split(";") if s]

    base = load_recipe(args.recipe, overrides=args.set, data_root=args.data)
    torch.manual_seed(0)
    if args.checkpoint:
        model, _, _ = load_model(args.checkpoint)
    else:
        classes = class_names(base.data, base.task)
        model = build_model(base, len(classes) + (base.task == "detection")).eval()
    mean, std = input_normalization(find_backbone(model), base.task)
    dataset = build_dataset(base.data, args.split, task=base.task, train=False, mean=mean, std=std, native=True)
    items = [dataset[i] for i in range(min(args.images, len(dataset)))]
    predictors = {
        name: build_predictor(
            model, load_recipe(args.recipe, overrides=[*args.set, *sets], data_root=args.data), mean=mean, std=std
        )
        for name, sets in variants.items()
    }

    def one_round(predict: object) -> float:
        start = time.perf_counter()
        with torch.no_grad():
            for image, target in items:
                predict([image], [tuple(target["orig_size"])])  # type: ignore[operator]
        return len(items) / (time.perf_counter() - start)

    for predict in predictors.values():
        one_round(predict)  # warm-up
    rates: dict[str, list[float]] = {name: [] for name in predictors}
    for _ in range(args.rounds):
        for name, predict in predictors.items():
            rates[name].append(one_round(predict))
    machine = platform.processor() or platform.machine()
    print(f"machine: {machine}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    print(f"recipe {base.name}: {base.model.head}/{base.model.backbone}, input {base.data.size_hw}, ", end="")
    print(f"{len(items)} {args.split} images x {args.rounds} rounds, answers at each file's resolution")
    first = statistics.median(next(iter(rates.values())))
    for name, values in rates.items():
        rate = statistics.median(values)
        print(f"{name:<12} {rate:7.2f} images/s  ({rate / first:.2f}x)  {'; '.join(variants[name]) or 'whole image'}")


if __name__ == "__main__":
    main()
