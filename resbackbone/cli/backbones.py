"""``resbackbone list`` and ``resbackbone info``: the registered backbones."""

from __future__ import annotations

import argparse
import sys

from .common import Subparsers

__all__ = ["add_parsers"]


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


def _cmd_info(args: argparse.Namespace) -> int:
    import torch

    from ..backbone import create_backbone
    from ..bench import count_macs
    from ..registry import get_spec

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


def add_parsers(sub: Subparsers) -> None:
    """Add ``list`` and ``info``."""
    p = sub.add_parser("list", help="list registered backbones")
    p.add_argument("pattern", nargs="?", help="fnmatch pattern, e.g. 'resnext*'")
    p.add_argument("--all", action="store_true", help="include the tiny test architectures")
    p.set_defaults(func=_cmd_list)

    p = sub.add_parser("info", help="levels, channels, strides, parameters, GMACs and weights of a backbone")
    p.add_argument("name")
    p.set_defaults(func=_cmd_info)
