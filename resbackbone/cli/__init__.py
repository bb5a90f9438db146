"""Command line: ``resbackbone list|info|backbone|finetune|evaluate|predict|pretrain|data|bench``.

Run ``resbackbone --help`` or ``resbackbone COMMAND --help``. Each module
adds its commands (``add_parsers``); a command's work is imported when it runs.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from . import backbones, benchmark, datasets, pretrain, training

__all__ = ["build_parser", "main"]

COMMAND_GROUPS = (backbones, training, pretrain, datasets, benchmark)
"""Modules whose ``add_parsers(sub)`` add the commands, in the order ``--help`` lists them."""


def build_parser() -> argparse.ArgumentParser:
    """The ``resbackbone`` argument parser with every command."""
    from .. import __version__

    parser = argparse.ArgumentParser(prog="resbackbone", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"resbackbone {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in COMMAND_GROUPS:
        group.add_parsers(sub)
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
        from ..engine import TrainingError

        if not isinstance(exc, TrainingError):
            raise
        print(f"resbackbone {args.command}: error: {exc}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        print(f"resbackbone {args.command}: interrupted. A run continues with --resume.", file=sys.stderr)
        return 130
