"""``resbackbone finetune``, ``evaluate`` and ``predict``: runs of a recipe and their checkpoints."""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import Subparsers, add_recipe_args

__all__ = ["add_parsers"]


def _cmd_finetune(args: argparse.Namespace) -> int:
    from ..engine import Trainer, distributed
    from ..recipes import load_recipe

    recipe = load_recipe(args.recipe, overrides=args.set, data_root=args.data)
    output = Path(args.output) if args.output else None
    try:
        Trainer(recipe, resume=args.resume, progress=not args.no_progress, output=output).fit()
        distributed.teardown(wait=True)
    finally:
        distributed.teardown()
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    import json
    import sys

    from ..engine import evaluate_checkpoint
    from ..engine.builders import describe_inference
    from ..recipes import load_recipe

    recipe = load_recipe(args.recipe, overrides=args.set, data_root=args.data)
    out = Path(args.out) if args.out else Path(args.checkpoint).parent / f"eval_{args.split}"
    metrics = evaluate_checkpoint(
        recipe, args.checkpoint, split=args.split, device=args.device, out_dir=out, worst=args.worst
    )
    print(json.dumps(metrics, indent=2))
    print(
        f"{args.split}: {describe_inference(recipe)}, {metrics['images_per_s']:.2f} images/s; "
        f"per-image metrics in {out / 'per_image.csv'}, the {args.worst} worst images drawn in {out}/",
        file=sys.stderr,
    )
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from ..engine import predict

    path = predict(args.checkpoint, args.images, args.out, device=args.device, score_thresh=args.score_thresh)
    print(f"Predictions in {path}; overlays in {path.parent}/")
    return 0


def add_parsers(sub: Subparsers) -> None:
    """Add ``finetune``, ``evaluate`` and ``predict``."""
    p = sub.add_parser("finetune", help="fine-tune a detector or segmenter from a recipe")
    add_recipe_args(p)
    p.add_argument("--resume", action="store_true", help="continue from the run folder's last.pt")
    p.add_argument("--output", metavar="DIR", help="run folder (default: run.output of the recipe)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (logs only)")
    p.set_defaults(func=_cmd_finetune)

    p = sub.add_parser("evaluate", help="metrics of a checkpoint on a split of a recipe's dataset")
    add_recipe_args(p)
    p.add_argument("--checkpoint", required=True, help="best.pt or last.pt of a run")
    p.add_argument("--split", default="val", choices=("train", "val", "test"))
    p.add_argument("--device", default="auto")
    p.add_argument(
        "--out",
        metavar="DIR",
        help="folder for per_image.csv and the worst images (default: CHECKPOINT's folder/eval_SPLIT)",
    )
    p.add_argument("--worst", type=int, default=8, metavar="N", help="how many of the worst images to draw (default 8)")
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser("predict", help="predict on image files: JSON results plus overlay PNGs")
    p.add_argument("checkpoint", help="best.pt or last.pt of a run")
    p.add_argument("images", nargs="+", help="image files or folders")
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--device", default="auto")
    p.add_argument("--score-thresh", type=float, default=0.5, help="detection: minimum score kept")
    p.set_defaults(func=_cmd_predict)
