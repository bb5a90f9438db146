"""``resbackbone data check|stats|download|list``: dataset tools."""

from __future__ import annotations

import argparse

from .common import Subparsers, add_recipe_args

__all__ = ["COMMANDS", "add_parsers"]

COMMANDS = ("data",)


def _cmd_data_check(args: argparse.Namespace) -> int:
    from ..data import check_dataset
    from ..recipes import load_recipe

    recipe = load_recipe(args.recipe, overrides=args.set, data_root=args.data)
    problems = check_dataset(recipe.data, task=recipe.task)
    errors = [p for p in problems if p.severity == "error"]
    for problem in problems:
        print(problem)
    print(f"{recipe.name}: {len(errors)} errors, {len(problems) - len(errors)} warnings.")
    return 1 if errors else 0


def _cmd_data_stats(args: argparse.Namespace) -> int:
    from ..data.stats import dataset_stats
    from ..heads import DETECTORS
    from ..recipes import load_recipe

    recipe = load_recipe(args.recipe, overrides=args.set, data_root=args.data)
    stats = dataset_stats(recipe.data, task=recipe.task, split=args.split, progress=not args.no_progress)
    levels, octaves = 0, 1
    if recipe.task == "detection":
        spec = DETECTORS[recipe.model.head]
        maps = len(recipe.model.levels or spec.levels)
        levels = maps + (1 if spec.extra_blocks == "maxpool" else 2)
        octaves = 3 if recipe.model.head == "retinanet" else 1
    print(f"{recipe.name}: " + stats.report(anchor_levels=levels, octaves=octaves))
    return 0


def _cmd_data_download(args: argparse.Namespace) -> int:
    from ..data.acquire import data_yaml, download_dataset, get_entry

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
    from ..data.acquire import DATASETS

    rows = [("name", "task", "size", "access", "licence")]
    rows += [(e.name, e.task, e.size, e.access, e.licence) for e in DATASETS.values()]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for row in rows:
        print("  ".join(f"{v:<{w}}" for v, w in zip(row, widths)) + f"  {row[4]}")
    print("manual: fetch by hand (registration, terms or size); `resbackbone data download NAME` says how.")
    return 0


def add_parsers(sub: Subparsers) -> None:
    """Add ``data`` and its actions."""
    p = sub.add_parser("data", help="dataset tools")
    data_sub = p.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    q = data_sub.add_parser("check", help="report every problem of a recipe's dataset at once")
    add_recipe_args(q)
    q.set_defaults(func=_cmd_data_check)
    q = data_sub.add_parser(
        "stats", help="image and object sizes at the recipe's scale; suggested image_size, crop_size, anchor_sizes"
    )
    add_recipe_args(q)
    q.add_argument("--split", default="train", choices=("train", "val", "test"), help="split measured (default train)")
    q.add_argument("--no-progress", action="store_true", help="no progress bar")
    q.set_defaults(func=_cmd_data_stats)
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
