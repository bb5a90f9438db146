"""Backbones carried between runs: what a file records about the backbone it holds.

Two kinds of file carry a backbone from one run into another recipe:

- a run's checkpoint (``runs/<run>/best.pt`` or ``last.pt`` of ``resbackbone
  finetune`` or ``resbackbone pretrain``): its ``model`` (its ``ema`` when the
  run kept one) holds the backbone under the head's prefix, and its ``recipe``
  names the architecture, the input channels and the weights it started from;
- an exported backbone, ``backbone.safetensors`` with ``backbone.json`` beside
  it (written by ``resbackbone pretrain`` and ``resbackbone backbone export``):
  the JSON (also kept in the safetensors header) is a :class:`BackboneRecord`.

Either way the record gives the architecture, ``in_chans`` and the mean/std the
backbone was trained with, so that a backbone built from the file normalises
its inputs as the run did, and a file of another architecture is named as such.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import Tensor

from ..registry import get_spec
from ..specs import IMAGENET_MEAN, IMAGENET_STD, WeightSpec
from .adapt import adapt_stats
from .files import read_file, unwrap_state_dict
from .sources import resolve_weights

__all__ = [
    "METADATA_KEY",
    "RECORD_FORMAT",
    "BackboneRecord",
    "is_run_checkpoint",
    "read_backbone_file",
    "read_record",
    "record_path",
    "run_checkpoint_backbone",
    "trained_stats",
]

RECORD_FORMAT = "resbackbone-backbone/1"
"""The ``format`` value of a backbone record (``backbone.json``)."""

METADATA_KEY = "resbackbone"
"""The safetensors header entry holding the record as JSON."""


@dataclass(frozen=True)
class BackboneRecord:
    """What a backbone file records: architecture, inputs, normalisation and where it came from.

    Attributes:
        architecture: Registry name (``resbackbone list --all``).
        in_chans: Input channels.
        mean: Per-channel input mean (0–1 scale) the backbone was trained with.
        std: Per-channel input std.
        origin: How it was trained: ``kind`` (``"pretrain"`` or ``"finetune"``) and, for
            pretraining, ``method``, ``images_seen``, ``epochs``, ``steps``, ``sources``;
            for fine-tuning, ``recipe``, ``head``, ``task``, ``classes``, ``epoch``; and
            ``checkpoint``, the file it was taken from.
    """

    architecture: str
    in_chans: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    origin: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The record as ``backbone.json`` holds it."""
        return {
            "format": RECORD_FORMAT,
            "architecture": self.architecture,
            "in_chans": self.in_chans,
            "mean": list(self.mean),
            "std": list(self.std),
            "origin": self.origin,
        }

    @classmethod
    def from_json(cls, data: Any, where: str) -> BackboneRecord:
        """Read a record written by :meth:`to_json`.

        Raises:
            ValueError: ``data`` is not a record; the message names ``where``.
        """
        if not isinstance(data, Mapping) or data.get("format") != RECORD_FORMAT:
            raise ValueError(f"{where} is not a resbackbone backbone record (no format {RECORD_FORMAT!r}).")
        try:
            in_chans = int(data["in_chans"])
            mean = tuple(float(v) for v in data["mean"])
            std = tuple(float(v) for v in data["std"])
            record = cls(str(data["architecture"]), in_chans, mean, std, dict(data.get("origin") or {}))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(
                f"{where}: backbone record is incomplete or malformed ({type(exc).__name__}: {exc}); it needs "
                "architecture, in_chans, mean and std. Export the backbone again with `resbackbone backbone export`."
            ) from None
        if len(mean) != in_chans or len(std) != in_chans:
            raise ValueError(f"{where}: mean {mean} and std {std} must have in_chans={in_chans} values each.")
        return record

    def describe(self) -> str:
        """A phrase: ``"resnet18 backbone, in_chans 3, pretrained with simclr on 278 images"``."""
        text = f"{self.architecture} backbone, in_chans {self.in_chans}"
        origin = self.origin
        if origin.get("kind") == "pretrain":
            text += f", pretrained with {origin.get('method')}"
            if origin.get("images"):
                text += f" on {origin['images']} images"
        elif origin.get("kind") == "finetune":
            text += f", fine-tuned in {origin.get('recipe')!r} ({origin.get('head')})"
        return text

    def weight_spec(self, label: str) -> WeightSpec:
        """The :class:`~resbackbone.specs.WeightSpec` a backbone built from the file takes its mean/std from."""
        return WeightSpec(
            source="file",
            ref=label,
            mean=self.mean,
            std=self.std,
            origin=self.describe(),
            architecture=self.architecture,
            in_chans=self.in_chans,
        )


def record_path(weights_file: str | Path) -> Path:
    """The record beside a weights file: ``backbone.json`` for ``backbone.safetensors``."""
    return Path(weights_file).with_suffix(".json")


def read_record(weights_file: str | Path) -> BackboneRecord | None:
    """The record of a weights file: its safetensors header, else the JSON beside it; ``None`` without one.

    The header comes first: it is written in the same file as the tensors, where the JSON beside it
    is a second file that an interrupted re-export can leave from the previous one. A JSON file beside
    it that is not a backbone record (another tool's) is not read as one.

    Raises:
        ValueError: A record that is there but malformed.
    """
    path = Path(weights_file)
    if path.suffix == ".safetensors" and path.is_file():
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                text = (f.metadata() or {}).get(METADATA_KEY)
        except Exception:  # not readable as safetensors: read_file names the problem
            return None
        if text:
            return BackboneRecord.from_json(json.loads(text), f"{path} (safetensors header)")
    beside = record_path(path)
    if beside.is_file() and beside != path:
        try:
            data = json.loads(beside.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            data = None
        if isinstance(data, Mapping) and data.get("format") == RECORD_FORMAT:
            return BackboneRecord.from_json(data, str(beside))
    return None


def is_run_checkpoint(obj: Any) -> bool:
    """Whether ``obj`` (a loaded file) is a resbackbone training checkpoint: ``model`` and ``recipe`` entries."""
    return (
        isinstance(obj, Mapping)
        and isinstance(obj.get("model"), Mapping)
        and isinstance(obj.get("recipe"), Mapping)
        and isinstance(obj["recipe"].get("model"), Mapping)
    )


def trained_stats(architecture: str, in_chans: int, weights: str | None) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The mean/std a run built ``architecture`` with, from the weight string it started from.

    Random init and unknown sources give the architecture's default (its
    ImageNet checkpoint's statistics); a weight tag gives its preprocessing
    (read from torchvision's or timm's tables, nothing downloaded); a file gives
    what its record says. Adapted to ``in_chans``.
    """
    try:
        spec = get_spec(architecture)
    except ValueError:  # a plug-in architecture that is not installed here
        return adapt_stats(IMAGENET_MEAN, in_chans), adapt_stats(IMAGENET_STD, in_chans)
    mean, std = (spec.imagenet.mean, spec.imagenet.std) if spec.imagenet else (IMAGENET_MEAN, IMAGENET_STD)
    if weights:
        try:
            resolved = resolve_weights(spec, weights)
            record = read_record(resolved.path) if resolved.url is None else None
        except (ValueError, OSError):  # the file has moved since: keep the default
            resolved, record = None, None
        if record is not None:
            mean, std = record.mean, record.std
        elif resolved is not None and resolved.spec is not None:
            mean, std = resolved.spec.mean, resolved.spec.std
    return adapt_stats(mean, in_chans), adapt_stats(std, in_chans)


def run_checkpoint_backbone(checkpoint: Mapping[str, Any], label: str) -> tuple[dict[str, Tensor], BackboneRecord]:
    """The weights of a run's checkpoint (its EMA when kept) and the record of the backbone inside.

    The state keeps the model's keys (``backbone.body.conv1.weight``…): the
    backbone's prefix is found when it is loaded.

    Args:
        checkpoint: A loaded ``best.pt``/``last.pt`` (:func:`is_run_checkpoint`).
        label: The file, for the record and messages.
    """
    weights = checkpoint.get("ema") if isinstance(checkpoint.get("ema"), Mapping) else checkpoint["model"]
    recipe = checkpoint["recipe"]
    model = recipe["model"]
    architecture = str(model.get("backbone"))
    in_chans = int(model.get("in_chans") or 3)
    if "head" in model:  # a fine-tuning recipe
        started = model.get("backbone_weights") if model.get("weights") is None else None
        origin: dict[str, Any] = {
            "kind": "finetune",
            "recipe": recipe.get("name"),
            "head": model.get("head"),
            "classes": list(checkpoint.get("classes") or []),
            "epoch": checkpoint.get("epoch"),
            "norm": model.get("norm"),
        }
    else:  # a pretraining recipe
        started = model.get("weights")
        pretrain = recipe.get("pretrain") or {}
        origin = {
            "kind": "pretrain",
            "recipe": recipe.get("name"),
            "method": pretrain.get("method"),
            "norm": model.get("norm"),
        }
        origin.update(checkpoint.get("origin") or {})
        origin["epoch"] = checkpoint.get("epoch")
    origin["checkpoint"] = label
    mean, std = trained_stats(architecture, in_chans, started)
    state = unwrap_state_dict(weights, label)
    return state, BackboneRecord(architecture, in_chans, mean, std, origin)


def read_backbone_file(path: str | Path, label: str | None = None) -> tuple[dict[str, Tensor], BackboneRecord | None]:
    """Read a weights file: its flat state dict and, where it has one, the record of the backbone it holds.

    A run's checkpoint gives its model's weights (EMA preferred) and a record
    made from its recipe; any other file its tensors and the record beside it
    (or in its safetensors header), if any.

    Raises:
        ValueError: The file is not a checkpoint, or its record is malformed.
    """
    path = Path(path)
    label = label or str(path)
    obj = read_file(path)
    if is_run_checkpoint(obj):
        return run_checkpoint_backbone(obj, label)
    return unwrap_state_dict(obj, label), read_record(path)
