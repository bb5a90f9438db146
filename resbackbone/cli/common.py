"""What the commands share: the recipe arguments."""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["Subparsers", "add_recipe_args"]

Subparsers = Any
"""``argparse``'s sub-parser action (its class is private to argparse)."""


def add_recipe_args(p: argparse.ArgumentParser) -> None:
    """Add the recipe file, ``--data`` and ``--set``."""
    p.add_argument("recipe", help="recipe YAML file, e.g. recipes/quickstart.yaml")
    p.add_argument("--data", metavar="PATH", help="dataset root folder, replacing data.root")
    p.add_argument(
        "--set",
        metavar="KEY=VALUE",
        action="append",
        default=[],
        help="override a recipe value, e.g. --set optim.lr=0.005 (repeatable)",
    )
