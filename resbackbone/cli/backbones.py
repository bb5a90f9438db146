"""``resbackbone list``, ``info`` and ``backbone export``: the registered backbones and backbone files."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .common import Subparsers

__all__ = ["COMMANDS", "add_parsers"]

COMMANDS = ("list", "info", "backbone")


def _cmd_list(args: argparse.Namespace) -> int:
    from ..registry import get_spec, list_backbones

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
    from ..registry import get_spec
    from ..weights import weight_tags

    return weight_tags(get_spec(name))


def _is_file_argument(name: str) -> bool:
    """Whether ``resbackbone info`` was given a file (or run folder) rather than a registry name."""
    from ..registry import list_backbones
    from ..weights import CHECKPOINT_SUFFIXES

    if name in list_backbones(include_hidden=True):
        return False
    return Path(name).exists() or name.endswith((*CHECKPOINT_SUFFIXES, ".json")) or "/" in name


def _info_file(name: str) -> int:
    from ..backbone import backbone_for_record
    from ..weights import read_backbone_file, run_file

    path = Path(name)
    if path.is_dir():
        path = run_file(path)
    if path.suffix == ".json" and path.with_suffix(".safetensors").is_file():
        path = path.with_suffix(".safetensors")
    if not path.is_file():
        raise ValueError(f"{name}: no such file or registered backbone. Run `resbackbone list` for the names.")
    state, record = read_backbone_file(path)
    params = sum(t.numel() for t in state.values() if t.is_floating_point())
    print(f"{path}: {record.describe() if record else 'a state dict that records no backbone'}")
    print(f"  tensors: {len(state)} ({params / 1e6:.2f} M values)")
    if record is None:
        print("  load it with create_backbone(NAME, weights=FILE): the architecture is not recorded.")
        return 0
    print(f"  architecture: {record.architecture}; in_chans {record.in_chans}")
    print(f"  mean {tuple(round(v, 4) for v in record.mean)}, std {tuple(round(v, 4) for v in record.std)}")
    for key, value in record.origin.items():
        if key == "sources":
            for source in value:
                print(f"  source: {source.get('source')} ({source.get('images')} images)")
        elif key not in ("views", "classes") and value not in (None, {}, []):
            print(f"  {key}: {value}")
    if record.origin.get("classes"):
        print(f"  classes: {', '.join(record.origin['classes'])}")
    print(f"  loads as: {backbone_for_record(record).load_weights(path)}")
    print(
        f"  use: model.backbone_weights: {path}   or   create_backbone({record.architecture!r}, weights={str(path)!r})"
    )
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    import torch

    from ..backbone import create_backbone
    from ..bench import count_macs
    from ..registry import get_spec

    if _is_file_argument(args.name):
        return _info_file(args.name)
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
    stem = {"7x7": "one 7×7 convolution", "deep": "three 3×3 convolutions"}.get(backbone.stem_type, backbone.stem_type)
    print(f"  stem: {stem}; first conv {backbone.first_conv} (adapted for in_chans ≠ 3)")
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


def _cmd_backbone_export(args: argparse.Namespace) -> int:
    from ..pretrain import export_backbone
    from ..weights import read_record

    path, report = export_backbone(args.source, args.out)
    record = read_record(path)
    print(f"Wrote {path} and {path.with_suffix('.json')}: {record.describe() if record else ''}")
    print(f"  taken from the checkpoint: {report}")
    return 0


def add_parsers(sub: Subparsers) -> None:
    """Add ``list``, ``info`` and ``backbone export``."""
    p = sub.add_parser("list", help="list registered backbones")
    p.add_argument("pattern", nargs="?", help="fnmatch pattern, e.g. 'resnext*'")
    p.add_argument("--all", action="store_true", help="include the tiny test architectures")
    p.set_defaults(func=_cmd_list)

    p = sub.add_parser(
        "info",
        help="levels, channels, strides, parameters, GMACs and weights of a backbone; or what a weights file holds",
    )
    p.add_argument("name", help="a registered name (resnet50), or a file: backbone.safetensors, a run's best.pt, a run")
    p.set_defaults(func=_cmd_info)

    p = sub.add_parser("backbone", help="backbone files: `resbackbone backbone export RUN --out DIR`")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    e = actions.add_parser(
        "export",
        help="write a run's backbone alone (backbone.safetensors + backbone.json), without head and optimiser",
    )
    e.add_argument("source", help="a run folder, its best.pt or last.pt (finetune or pretrain), or a backbone file")
    e.add_argument("--out", required=True, metavar="DIR", help="folder for backbone.safetensors and backbone.json")
    e.set_defaults(func=_cmd_backbone_export)
