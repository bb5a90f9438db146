"""``resbackbone bench``: C2–C5 extraction speed beside timm, torchvision and smp."""

from __future__ import annotations

import argparse

from .common import Subparsers

__all__ = ["add_parsers"]


def _cmd_bench(args: argparse.Namespace) -> int:
    from ..bench import run_from_args

    return run_from_args(args)


def add_parsers(sub: Subparsers) -> None:
    """Add ``bench``."""
    from ..bench import add_arguments

    p = sub.add_parser("bench", help="C2–C5 extraction speed, memory and error side by side with timm/torchvision/smp")
    add_arguments(p)
    p.set_defaults(func=_cmd_bench)
