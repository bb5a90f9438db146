"""Whole-model checkpoints for heads: resolving ``weights=`` and loading with a report.

A head checkpoint holds the backbone under one prefix (``backbone.body.`` for
torchvision detectors, ``backbone.`` for DeepLabV3) and the head around it.
The backbone part goes through :func:`~resbackbone.weights.load_weights`
(prefix stripping, ``in_chans`` adaptation, norm-aware statistics); the rest
must match key for key, except the class-dependent layers, which are left at
their fresh initialisation when ``num_classes`` differs and reported as such.
"""

from __future__ import annotations

import os
import re
import urllib.parse
from collections.abc import Mapping, Sequence
from pathlib import Path

from torch import Tensor, nn

from ..backbone import Backbone
from ..download import cache_dir, download_url
from ..weights import LoadReport, _unwrap, load_weights, read_checkpoint, resolve_weights

__all__ = ["load_head_checkpoint", "read_head_checkpoint"]


def read_head_checkpoint(
    weights: str | os.PathLike[str] | Mapping[str, Tensor],
    *,
    builder: str,
    arch: str,
    backbone: Backbone,
    torchvision_models: Mapping[tuple[str, str], str],
    progress: bool = True,
) -> tuple[str, dict[str, Tensor]]:
    """Resolve ``weights`` of a whole model to ``(label, state dict)``.

    Args:
        weights: ``"torchvision:<TAG>"`` (a member of the weight enum of the
            torchvision builder ``torchvision_models[(arch, backbone.name)]``),
            a local file, an ``https://…#sha256=<hex>`` URL, or a state dict.
        builder: Name of the calling builder, for messages.
        arch: The head architecture.
        backbone: The backbone the model is built on.
        torchvision_models: ``(arch, backbone name) → torchvision builder`` for
            the checkpoints torchvision publishes.
        progress: Show a progress bar while downloading.

    Raises:
        ValueError: The string names no checkpoint for this architecture and
            backbone, or names backbone weights; the message says what fits.
    """
    if isinstance(weights, Mapping):
        return "<state dict>", _unwrap(weights, "<state dict>")
    if isinstance(weights, os.PathLike):
        weights = os.fspath(weights)
    if not isinstance(weights, str):
        raise TypeError(f"{builder}(): weights must be a string, a path or a state dict, got {type(weights).__name__}.")
    text = weights.strip()
    if text == "imagenet" or text.startswith("timm:"):
        raise ValueError(
            f"{builder}(): weights={weights!r} names backbone weights; weights= selects a whole-model checkpoint. "
            f"Pass backbone_weights={weights!r} instead."
        )
    if text.startswith("torchvision:"):
        return _torchvision_checkpoint(text, builder, arch, backbone, torchvision_models, progress)
    resolved = resolve_weights(backbone.spec, text)
    return resolved.label, read_checkpoint(resolved.fetch(progress=progress))


def _torchvision_checkpoint(
    text: str,
    builder: str,
    arch: str,
    backbone: Backbone,
    torchvision_models: Mapping[tuple[str, str], str],
    progress: bool,
) -> tuple[str, dict[str, Tensor]]:
    import torchvision

    model_name = torchvision_models.get((arch, backbone.name))
    if model_name is None:
        fits = [f"arch={a!r} with backbone={b!r}" for (a, b) in torchvision_models]
        raise ValueError(
            f"{builder}(): weights={text!r}: torchvision publishes no {arch!r} checkpoint on {backbone.name!r}; "
            f"its checkpoints fit {', '.join(fits) or 'nothing here'}. Use backbone_weights= for ImageNet weights."
        )
    enum = torchvision.models.get_model_weights(model_name)
    tag = text.partition(":")[2]
    try:
        member = enum[tag]
    except KeyError:
        choices = ", ".join(f"'torchvision:{m}'" for m in enum.__members__ if m != "DEFAULT")
        raise ValueError(f"{builder}(): {text!r} is not a weight of {model_name}; choose one of {choices}.") from None
    name = Path(urllib.parse.unquote(urllib.parse.urlparse(member.url).path)).name
    prefix = re.search(r"-([a-f0-9]{6,})\.", name)
    path = download_url(
        member.url, cache_dir() / name, hash_prefix=prefix.group(1) if prefix else None, progress=progress
    )
    return f"torchvision:{member.name} ({model_name})", read_checkpoint(path)


def load_head_checkpoint(
    model: nn.Module,
    backbone: Backbone,
    state: Mapping[str, Tensor],
    *,
    label: str,
    body_prefix: str,
    class_layers: Sequence[str],
    optional: Mapping[str, str] | None = None,
) -> LoadReport:
    """Load a whole-model state dict into ``model`` and report every key.

    Args:
        model: The model, whose ``state_dict()`` keys the checkpoint must use.
        backbone: The backbone inside ``model``, found under ``body_prefix``.
        state: The checkpoint.
        label: What the checkpoint is, for the report and messages.
        body_prefix: Prefix of the backbone's keys in ``model`` (``"backbone.body."``).
        class_layers: Key prefixes of the class-dependent layers; a shape
            mismatch there keeps the fresh initialisation and is reported.
        optional: Key prefix → reason for parts of the checkpoint this model
            does not build (``{"aux_classifier.": "no auxiliary head"}``).

    Returns:
        The :class:`~resbackbone.weights.LoadReport`, with keys named as in ``model``.

    Raises:
        ValueError: The checkpoint lacks the backbone, or other keys are
            missing, unexpected or of another shape; the message lists them.
    """
    optional = dict(optional or {})
    body_state = {k[len(body_prefix) :]: v for k, v in state.items() if k.startswith(body_prefix)}
    if not body_state:
        raise ValueError(
            f"Checkpoint {label} has no backbone keys under {body_prefix!r} (first keys: {list(state)[:4]}). "
            "Expected a checkpoint saved from a model of this layout (model.state_dict())."
        )
    body = load_weights(backbone, body_state)

    target = {k: v for k, v in model.state_dict().items() if not k.startswith(body_prefix)}
    loaded: dict[str, Tensor] = {}
    ignored = {body_prefix + k: reason for k, reason in body.ignored.items()}
    unexpected: list[str] = []
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = []
    for key, value in state.items():
        if key.startswith(body_prefix):
            continue
        if key in target:
            if value.shape == target[key].shape:
                loaded[key] = value
            elif key.startswith(tuple(class_layers)):
                ignored[key] = "class-dependent, re-initialised (num_classes differs)"
            else:
                mismatched.append((key, tuple(value.shape), tuple(target[key].shape)))
        elif key.endswith("num_batches_tracked"):
            ignored[key] = "batch-norm counter"
        elif key.startswith(tuple(optional)):
            ignored[key] = next(reason for prefix, reason in optional.items() if key.startswith(prefix))
        else:
            unexpected.append(key)
    missing = [k for k in target if k not in loaded and k not in ignored and not k.endswith("num_batches_tracked")]
    missing = [k for k in missing if k not in {m[0] for m in mismatched}]
    report = LoadReport(
        source=label,
        loaded=tuple(body_prefix + k for k in body.loaded) + tuple(loaded),
        missing=tuple(missing),
        unexpected=tuple(unexpected),
        mismatched=tuple(mismatched),
        adapted=tuple(body_prefix + k for k in body.adapted),
        ignored=ignored,
        prefix=body.prefix,
    )
    if missing or unexpected or mismatched:
        raise ValueError(
            f"Checkpoint {label} does not fit this {type(model).__name__}: {report}. Was it saved from a model "
            "with other options (anchors, levels, FPN width, head)? Build the model with the options it was "
            "trained with."
        )
    model.load_state_dict(loaded, strict=False)
    return report
