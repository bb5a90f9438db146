"""Whole-model checkpoints for heads: resolving ``weights=`` and loading with a report.

A head checkpoint holds the backbone under one prefix (``backbone.body.`` for
torchvision detectors, ``backbone.`` for DeepLabV3) and the head around it.
The backbone part goes through :meth:`Backbone.load_weights <resbackbone.Backbone.load_weights>`
(prefix stripping, ``in_chans`` adaptation, norm-aware statistics); the rest
must match key for key (:func:`~resbackbone.weights.match_keys`), except the class-dependent layers, which are left at
their fresh initialisation when ``num_classes`` differs and reported as such.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

from torch import Tensor, nn

from ..backbone import Backbone
from ..weights import (
    LoadReport,
    WeightsArg,
    cached_path,
    download_url,
    match_keys,
    read_checkpoint,
    resolve_weights,
    torchvision_weight,
    unwrap_state_dict,
)

__all__ = ["load_head_checkpoint", "read_head_checkpoint"]


def read_head_checkpoint(
    weights: WeightsArg,
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
        return "<state dict>", unwrap_state_dict(weights, "<state dict>")
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
    model_name = torchvision_models.get((arch, backbone.name))
    if model_name is None:
        fits = [f"arch={a!r} with backbone={b!r}" for (a, b) in torchvision_models]
        raise ValueError(
            f"{builder}(): weights={text!r}: torchvision publishes no {arch!r} checkpoint on {backbone.name!r}; "
            f"its checkpoints fit {', '.join(fits) or 'nothing here'}. Use backbone_weights= for ImageNet weights."
        )
    member = torchvision_weight(model_name, text.partition(":")[2], label=text, context=f"{builder}(): ")
    path, prefix = cached_path(member.url)
    path = download_url(member.url, path, hash_prefix=prefix, progress=progress)
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
    body_state = {k[len(body_prefix) :]: v for k, v in state.items() if k.startswith(body_prefix)}
    if not body_state:
        raise ValueError(
            f"Checkpoint {label} has no backbone keys under {body_prefix!r} (first keys: {list(state)[:4]}). "
            "Expected a checkpoint saved from a model of this layout (model.state_dict())."
        )
    body = backbone.load_weights(body_state, label=label)

    rest = {k: v for k, v in state.items() if not k.startswith(body_prefix)}
    target = {k: v for k, v in model.state_dict().items() if not k.startswith(body_prefix)}
    match = match_keys(rest, target, ignore=optional, reinit=class_layers)
    match.ignored.update({body_prefix + k: reason for k, reason in body.ignored.items()})
    report = LoadReport(
        source=label,
        loaded=tuple(body_prefix + k for k in body.loaded) + tuple(match.loaded),
        missing=tuple(match.missing),
        unexpected=tuple(match.unexpected),
        mismatched=tuple(match.mismatched),
        adapted=tuple(body_prefix + k for k in body.adapted),
        ignored=match.ignored,
        prefix=body.prefix,
    )
    if match.missing or match.unexpected or match.mismatched:
        raise ValueError(
            f"Checkpoint {label} does not fit this {type(model).__name__}: {report}. Was it saved from a model "
            "with other options (anchors, levels, FPN or box head width, head)? Build the model with the options "
            "it was trained with."
        )
    model.load_state_dict(match.loaded, strict=False)
    return report
