"""Command line: ``resbackbone list|info|finetune|evaluate|predict|data|bench``.

Run ``resbackbone --help`` or ``resbackbone COMMAND --help``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

__all__ = ["main"]


def _cmd_list(args: argparse.Namespace) -> int:
    from .registry import get_spec, list_backbones

    names = list_backbones(args.pattern, include_hidden=args.all)
    if not names:
        print(f"No backbone matches {args.pattern!r}. Run `resbackbone list` to see them all.", file=sys.stderr)
        return 1
    width = max(map(len, names))
    for name in names:
        spec = get_spec(name)
        imagenet = spec.imagenet.string if spec.imagenet else "-"
        print(f"{name:<{width}}  {spec.description:<48}  imagenet={imagenet}")
    return 0


def _available_weights(name: str) -> list[str]:
    from .registry import get_spec
    from .weights import weight_tags

    return weight_tags(get_spec(name))


def _cmd_info(args: argparse.Namespace) -> int:
    import torch

    from .backbone import create_backbone
    from .bench import count_macs
    from .registry import get_spec

    spec = get_spec(args.name)
    print(f"{spec.name}: {spec.description}")
    strides = {}
    for output_stride in (32, 16, 8):
        with torch.device("meta"):  # shapes only: nothing is allocated or initialised for real
            backbone = create_backbone(spec.name, output_stride=output_stride)
        strides[output_stride] = backbone.feature_info.strides
    info = backbone.feature_info
    params = sum(p.numel() for p in backbone.parameters())
    print(f"  parameters: {params / 1e6:.2f} M (C2–C5 trunk, no classifier)")
    print(f"  GMACs at 224×224: {count_macs(spec.name) / 1e9:.2f}")
    print(f"  {'level':<6}{'channels':>9}{'stride@32':>11}{'stride@16':>11}{'stride@8':>10}")
    for i, level in enumerate(info):
        print(f"  {level.name:<6}{level.channels:>9}{strides[32][i]:>11}{strides[16][i]:>11}{strides[8][i]:>10}")
    if spec.imagenet:
        w = spec.imagenet
        print(f"  imagenet = {w.string} ({w.licence}; mean {w.mean}, std {w.std})")
    weights = _available_weights(spec.name)
    print("  weights: " + (", ".join(["imagenet", *weights]) if weights else "(none registered)"))
    print("           or a local .pth/.safetensors file, or an https://…#sha256=<hex> URL")
    return 0


def _cmd_finetune(args: argparse.Namespace) -> int:
    from .engine import Trainer, distributed
    from .recipes import load_recipe

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

    from .engine import evaluate_checkpoint
    from .recipes import load_recipe

    recipe = load_recipe(args.recipe, overrides=args.set, data_root=args.data)
    metrics = evaluate_checkpoint(recipe, args.checkpoint, split=args.split, device=args.device)
    print(json.dumps(metrics, indent=2))
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from .engine import predict

    path = predict(args.checkpoint, args.images, args.out, device=args.device, score_thresh=args.score_thresh)
    print(f"Predictions in {path}; overlays in {path.parent}/")
    return 0


def _cmd_data_check(args: argparse.Namespace) -> int:
    from .data import check_dataset
    from .recipes import load_recipe

    recipe = load_recipe(args.recipe, overrides=args.set, data_root=args.data)
    problems = check_dataset(recipe.data, task=recipe.task)
    errors = [p for p in problems if p.severity == "error"]
    for problem in problems:
        print(problem)
    print(f"{recipe.name}: {len(errors)} errors, {len(problems) - len(errors)} warnings.")
    return 1 if errors else 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from .bench import run_from_args

    return run_from_args(args)


def _cmd_data_download(args: argparse.Namespace) -> int:
    from .data.acquire import data_yaml, download_dataset, get_entry

    entry = get_entry(args.name)
    path = download_dataset(
        entry,
        root=args.root,
        progress=not args.no_progress,
        sha256=args.sha256,
        trust=args.trust,
        allow_large=args.allow_large,
        keep_archive=args.keep_archive,
    )
    print(f"{entry.name}: {path}")
    for data in entry.data:
        print(f"  data: {data_yaml(data, path)}")
    return 0


def _cmd_data_list(args: argparse.Namespace) -> int:
    from .data.acquire import DATASETS

    rows = [("name", "task", "size", "access", "licence")]
    rows += [(e.name, e.task, e.size, e.access, e.licence) for e in DATASETS.values()]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for row in rows:
        print("  ".join(f"{v:<{w}}" for v, w in zip(row, widths)) + f"  {row[4]}")
    print("manual: fetch by hand (registration, terms or size); `resbackbone data download NAME` says how.")
    return 0


def _add_recipe_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("recipe", help="recipe YAML file, e.g. recipes/quickstart.yaml")
    p.add_argument("--data", metavar="PATH", help="dataset root folder, replacing data.root")
    p.add_argument(
        "--set",
        metavar="KEY=VALUE",
        action="append",
        default=[],
        help="override a recipe value, e.g. --set optim.lr=0.005 (repeatable)",
    )


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog="resbackbone", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"resbackbone {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("list", help="list registered backbones")
    p.add_argument("pattern", nargs="?", help="fnmatch pattern, e.g. 'resnext*'")
    p.add_argument("--all", action="store_true", help="include the tiny test architectures")
    p.set_defaults(func=_cmd_list)

    p = sub.add_parser("info", help="levels, channels, strides, parameters, GMACs and weights of a backbone")
    p.add_argument("name")
    p.set_defaults(func=_cmd_info)

    p = sub.add_parser("finetune", help="fine-tune a detector or segmenter from a recipe")
    _add_recipe_args(p)
    p.add_argument("--resume", action="store_true", help="continue from the run folder's last.pt")
    p.add_argument("--output", metavar="DIR", help="run folder (default: run.output of the recipe)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (logs only)")
    p.set_defaults(func=_cmd_finetune)

    p = sub.add_parser("evaluate", help="metrics of a checkpoint on a split of a recipe's dataset")
    _add_recipe_args(p)
    p.add_argument("--checkpoint", required=True, help="best.pt or last.pt of a run")
    p.add_argument("--split", default="val", choices=("train", "val", "test"))
    p.add_argument("--device", default="auto")
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser("predict", help="predict on image files: JSON results plus overlay PNGs")
    p.add_argument("checkpoint", help="best.pt or last.pt of a run")
    p.add_argument("images", nargs="+", help="image files or folders")
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--device", default="auto")
    p.add_argument("--score-thresh", type=float, default=0.5, help="detection: minimum score kept")
    p.set_defaults(func=_cmd_predict)

    p = sub.add_parser("data", help="dataset tools")
    data_sub = p.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    q = data_sub.add_parser("check", help="report every problem of a recipe's dataset at once")
    _add_recipe_args(q)
    q.set_defaults(func=_cmd_data_check)
    q = data_sub.add_parser("download", help="download a dataset from its official source, laid out for a recipe")
    q.add_argument("name", help="dataset name, e.g. kvasir_seg (see `resbackbone data list`)")
    q.add_argument("--root", metavar="DIR", help="parent folder of the dataset (default: $TORCH_HOME/hub/datasets)")
    q.add_argument("--sha256", metavar="HEX", help="expected sha256 of the archive (pins one with no recorded hash)")
    q.add_argument("--trust", action="store_true", help="extract an archive whose checksum is not known")
    q.add_argument("--allow-large", action="store_true", help="allow datasets of many GB (COCO 2017)")
    q.add_argument("--keep-archive", action="store_true", help="keep the downloaded archives after extraction")
    q.add_argument("--no-progress", action="store_true", help="no progress bar or step messages")
    q.set_defaults(func=_cmd_data_download)
    q = data_sub.add_parser("list", help="datasets `data download` knows: task, size, access, licence")
    q.set_defaults(func=_cmd_data_list)

    from .bench import add_arguments as add_bench_arguments

    p = sub.add_parser("bench", help="C2–C5 extraction speed, memory and error side by side with timm/torchvision/smp")
    add_bench_arguments(p)
    p.set_defaults(func=_cmd_bench)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``resbackbone`` command."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, TypeError, OSError) as exc:
        print(f"resbackbone {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except RuntimeError as exc:
        from .engine import TrainingError

        if not isinstance(exc, TrainingError):
            raise
        print(f"resbackbone {args.command}: error: {exc}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        print(f"resbackbone {args.command}: interrupted. A fine-tune continues with --resume.", file=sys.stderr)
        return 130
