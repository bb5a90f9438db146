"""``resbackbone pretrain``: self-supervised pretraining of a backbone on unlabeled images."""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

from .common import Subparsers

__all__ = ["add_parsers"]

_HINT = "pip install 'resbackbone[pretrain]' (or pip install lightly)"


def _cmd_pretrain(args: argparse.Namespace) -> int:
    if importlib.util.find_spec("lightly") is None:
        print(
            f"resbackbone pretrain: error: self-supervised pretraining needs the lightly package: {_HINT}",
            file=sys.stderr,
        )
        return 2
    from ..engine import distributed
    from ..pretrain import Pretrainer, load_pretrain_recipe

    recipe = load_pretrain_recipe(args.recipe, overrides=args.set, images=args.images)
    output = Path(args.output) if args.output else None
    try:
        Pretrainer(recipe, resume=args.resume, progress=not args.no_progress, output=output).fit()
        distributed.teardown(wait=True)
    finally:
        distributed.teardown()
    return 0


def add_parsers(sub: Subparsers) -> None:
    """Add ``pretrain``."""
    p = sub.add_parser(
        "pretrain",
        help="self-supervised pretraining of a backbone on unlabeled images (SimCLR, MoCo v2, BYOL, DenseCL)",
        description="Pretrain a backbone on unlabeled images; writes backbone.safetensors + backbone.json, which "
        "model.backbone_weights and create_backbone(weights=...) take.",
    )
    p.add_argument("recipe", help="pretraining recipe YAML, e.g. recipes/pretrain/simclr_resnet18_cpu.yaml")
    p.add_argument(
        "--images",
        metavar="FOLDER",
        nargs="+",
        help="folders of unlabeled images, replacing pretrain.images (searched recursively)",
    )
    p.add_argument(
        "--set",
        metavar="KEY=VALUE",
        action="append",
        default=[],
        help="override a recipe value, e.g. --set pretrain.method=byol (repeatable)",
    )
    p.add_argument("--resume", action="store_true", help="continue from the run folder's last.pt")
    p.add_argument("--output", metavar="DIR", help="run folder (default: run.output of the recipe)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (logs only)")
    p.set_defaults(func=_cmd_pretrain)
