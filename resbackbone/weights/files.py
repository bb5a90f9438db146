"""Reading checkpoint files into flat state dicts, never unpickling code.

Files are read with ``torch.load(weights_only=True)`` or safetensors. A
checkpoint may nest its tensors under ``state_dict``/``model`` as Lightning,
mmdet, detectron2 and torchvision's references do: :func:`unwrap_state_dict`
finds them.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

__all__ = ["CHECKPOINT_SUFFIXES", "NESTED_KEYS", "read_checkpoint", "read_file", "torch_load", "unwrap_state_dict"]

CHECKPOINT_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".safetensors")
"""File suffixes read as checkpoints."""

NESTED_KEYS = ("state_dict", "model", "model_state_dict", "module", "network", "net")
"""Keys under which checkpoints nest their state dict, tried in this order."""


def _unpickling_reason(exc: Exception) -> str:
    """The line of torch's weights-only error that names what was refused."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    for line in lines[1:]:
        if not line.startswith(("Please file an issue", "Check the documentation", "WeightsUnpickler error")):
            return line
    return lines[0] if lines else type(exc).__name__


def torch_load(path: str | os.PathLike[str], *, what: str, advice: str) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU; pickled objects are refused with a clear message.

    Args:
        path: The file.
        what: How the message names the file (``"checkpoint "``), or ``""``.
        advice: What the user can do, appended to the refusal.

    Raises:
        ValueError: The file holds Python objects that could run code when unpickled.
    """
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise ValueError(
            f"Refused to load {what}{path}: it holds Python objects that torch.load(weights_only=True) will not "
            f"unpickle, because unpickling them can run arbitrary code ({_unpickling_reason(exc)}). {advice}"
        ) from exc


def read_checkpoint(path: str | os.PathLike[str]) -> dict[str, Tensor]:
    """Read a checkpoint file into a flat ``{key: tensor}`` dict, never unpickling code.

    Nested ``state_dict``/``model`` entries (Lightning, mmdet, detectron2,
    torchvision references) are unwrapped; non-tensor entries are dropped.

    Raises:
        ValueError: The file is not a checkpoint, or it holds pickled objects
            that ``weights_only=True`` refuses (the message says how to re-save it).
    """
    return unwrap_state_dict(read_file(path), str(path))


def read_file(path: str | os.PathLike[str]) -> Any:
    """What a checkpoint file holds, as saved (a state dict, or a training checkpoint that nests one).

    ``.safetensors`` files are read with safetensors, everything else with
    ``torch.load(weights_only=True)``; nothing is unwrapped.

    Raises:
        ValueError: As :func:`read_checkpoint`.
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            obj: Any = load_file(path, device="cpu")
        except (SafetensorError, OSError, ValueError) as exc:
            raise ValueError(f"Could not read {path} as safetensors: {exc}.") from exc
    else:
        try:
            obj = torch_load(
                path,
                what="",
                advice="If you trust the file, re-save only its tensors: torch.save(model.state_dict(), "
                "'clean.pth'), or convert it to .safetensors.",
            )
        except ValueError:
            raise
        except Exception as exc:  # torch.load raises many types on a file that is not a checkpoint
            raise ValueError(
                f"Could not read {path} as a PyTorch checkpoint ({exc}). Expected a file written by torch.save() "
                "or a .safetensors file."
            ) from exc
    return obj


def unwrap_state_dict(obj: Any, label: str) -> dict[str, Tensor]:
    """The flat ``{key: tensor}`` dict inside ``obj``, descending through :data:`NESTED_KEYS`.

    Args:
        obj: A state dict, or a checkpoint that nests one.
        label: What ``obj`` is, for messages (a file name, ``"<state dict>"``).

    Raises:
        ValueError: ``obj`` holds no tensors at any nesting level.
    """
    while isinstance(obj, Mapping) and not any(isinstance(v, Tensor) for v in obj.values()):
        key = next((k for k in NESTED_KEYS if isinstance(obj.get(k), Mapping)), None)
        if key is None:
            raise ValueError(
                f"{label} holds no tensors: top-level keys {sorted(map(str, obj))[:8]}. Expected a state dict, "
                f"or one nested under {'/'.join(NESTED_KEYS)}."
            )
        obj = obj[key]
    if not isinstance(obj, Mapping):
        raise ValueError(f"{label} holds a {type(obj).__name__}, not a state dict of tensors.")
    return {str(k): v for k, v in obj.items() if isinstance(v, Tensor)}
