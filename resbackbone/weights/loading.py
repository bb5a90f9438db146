"""Matching a checkpoint's keys against a model's: one key classifier, one :class:`LoadReport`.

:func:`match_keys` sorts every checkpoint key into loaded, missing,
unexpected, mismatched, adapted or ignored (with a reason), for a backbone
(:func:`match_backbone_state`: wrapping prefixes found, classifier dropped,
removed stages recognised, the first convolution adapted to ``in_chans``) and
for the head around it (``resbackbone.heads.checkpoints``: class-dependent
layers re-initialised).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from ..specs import BackboneSpec, WeightSpec
from .adapt import adapt_first_conv, adapt_stats
from .files import unwrap_state_dict
from .records import read_backbone_file
from .sources import WeightsArg, resolve_weights

__all__ = [
    "KeyMatch",
    "LoadReport",
    "detect_prefix",
    "load_weights",
    "match_backbone_state",
    "match_keys",
    "preview",
    "read_weights",
]

STATS = ("running_mean", "running_var", "num_batches_tracked")
"""Buffers of a batch norm, which GroupNorm and frozen layers do without."""

Mismatch = tuple[str, tuple[int, ...], tuple[int, ...]]


@dataclass(frozen=True)
class LoadReport:
    """What a weight load did, key by key.

    Attributes:
        source: The weights loaded (weight string or file).
        loaded: Keys copied into the model.
        missing: Model keys the checkpoint lacks.
        unexpected: Checkpoint keys that fit nothing in the model.
        mismatched: ``(key, checkpoint shape, model shape)`` for shape conflicts.
        adapted: Keys changed to fit (first conv for ``in_chans != 3``).
        ignored: Checkpoint keys deliberately left out, with the reason.
        prefix: The wrapping prefix stripped from the checkpoint keys.
    """

    source: str
    loaded: tuple[str, ...] = ()
    missing: tuple[str, ...] = ()
    unexpected: tuple[str, ...] = ()
    mismatched: tuple[Mismatch, ...] = ()
    adapted: tuple[str, ...] = ()
    ignored: dict[str, str] = field(default_factory=dict)
    prefix: str = ""

    @property
    def ok(self) -> bool:
        """Something loaded, and nothing is missing, unexpected or of another shape."""
        return bool(self.loaded) and not (self.missing or self.unexpected or self.mismatched)

    def __str__(self) -> str:
        parts = [f"{len(self.loaded)} loaded"]
        for label, keys in (("missing", self.missing), ("unexpected", self.unexpected), ("adapted", self.adapted)):
            if keys:
                parts.append(f"{len(keys)} {label} ({preview(keys)})")
        if self.mismatched:
            parts.append(f"{len(self.mismatched)} shape mismatches ({_preview_mismatch(self.mismatched)})")
        if self.ignored:
            reasons = Counter(self.ignored.values())
            parts.append("ignored: " + ", ".join(f"{n} {reason}" for reason, n in reasons.items()))
        prefix = f", prefix {self.prefix!r} stripped" if self.prefix else ""
        return f"LoadReport({self.source}: " + "; ".join(parts) + prefix + ")"


def preview(keys: Iterable[str], n: int = 4) -> str:
    """The first ``n`` keys, comma-separated, and how many more there are."""
    keys = list(keys)
    shown = ", ".join(keys[:n])
    return shown + (f", … {len(keys) - n} more" if len(keys) > n else "")


def _preview_mismatch(items: tuple[Mismatch, ...], n: int = 3) -> str:
    shown = [f"{k}: checkpoint {tuple(a)} vs model {tuple(b)}" for k, a, b in items[:n]]
    return ", ".join(shown) + (f", … {len(items) - n} more" if len(items) > n else "")


@dataclass
class KeyMatch:
    """The outcome of :func:`match_keys`: what to load and what the report says of every key."""

    loaded: dict[str, Tensor] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[Mismatch] = field(default_factory=list)
    adapted: list[str] = field(default_factory=list)
    ignored: dict[str, str] = field(default_factory=dict)

    def report(self, source: str, *, prefix: str = "") -> LoadReport:
        return LoadReport(
            source=source,
            loaded=tuple(self.loaded),
            missing=tuple(self.missing),
            unexpected=tuple(self.unexpected),
            mismatched=tuple(self.mismatched),
            adapted=tuple(self.adapted),
            ignored=self.ignored,
            prefix=prefix,
        )


def match_keys(
    state: Mapping[str, Tensor],
    target: Mapping[str, Tensor],
    *,
    ignore: Mapping[str, str] | None = None,
    reinit: Iterable[str] = (),
    known: Callable[[str], str | None] | None = None,
    adapt: Callable[[str, Tensor, Tensor], Tensor | None] | None = None,
) -> KeyMatch:
    """Sort the keys of ``state`` against the model keys ``target``.

    Args:
        state: Checkpoint ``{key: tensor}``, keys named as in ``target``.
        target: The model's state dict (only keys and shapes are read).
        ignore: Key prefix → reason, for parts of the checkpoint the model does not
            have on purpose (a classifier, an auxiliary head not built). A key the
            model has is loaded whatever its prefix.
        reinit: Key prefixes of class-dependent layers: a shape mismatch there keeps
            the model's fresh initialisation and is reported as ignored.
        known: For a key the model lacks, the reason to ignore it, or ``None`` when
            it is unexpected (a removed stage, statistics a norm has no use for).
        adapt: ``adapt(key, value, target value)`` returns the value made to fit, or
            ``None`` to leave it as it is (the first conv for ``in_chans != 3``).

    Returns:
        The :class:`KeyMatch`; batch-norm counters are never missing nor unexpected,
        and every model key is loaded, missing, mismatched or (class-dependent) re-initialised.
    """
    ignore = dict(ignore or {})
    reinit = tuple(reinit)
    out = KeyMatch()
    reinitialised: set[str] = set()
    for key, value in state.items():
        reason = next((why for prefix, why in ignore.items() if key.startswith(prefix)), None)
        if key in target:
            want = target[key]
            if adapt is not None and value.shape != want.shape:
                fitted = adapt(key, value, want)
                if fitted is not None:
                    value = fitted
                    out.adapted.append(key)
            if value.shape == want.shape:
                out.loaded[key] = value
            elif key.startswith(reinit) and reinit:
                out.ignored[key] = "class-dependent, re-initialised (num_classes differs)"
                reinitialised.add(key)
            else:
                out.mismatched.append((key, tuple(value.shape), tuple(want.shape)))
        elif reason is not None:  # a part left out, its batch-norm counters included
            out.ignored[key] = reason
        elif key.endswith("num_batches_tracked"):
            out.ignored[key] = "batch-norm counter"
        elif known is not None and (why := known(key)) is not None:
            out.ignored[key] = why
        else:
            out.unexpected.append(key)
    settled = set(out.loaded) | reinitialised | {m[0] for m in out.mismatched}
    out.missing = [k for k in target if k not in settled and not k.endswith("num_batches_tracked")]
    return out


def detect_prefix(keys: Iterable[str], reference: frozenset[str]) -> str:
    """The wrapping prefix (``module.``, ``backbone.body.``) that makes the most keys reference keys."""
    counts: Counter[str] = Counter()
    for key in keys:
        parts = key.split(".")
        for i in range(len(parts)):
            if ".".join(parts[i:]) in reference:
                counts[".".join(parts[:i]) + "." if i else ""] += 1
                break
    if not counts:
        return ""
    best = max(counts.values())
    return min((p for p, n in counts.items() if n == best), key=len)


def match_backbone_state(
    state: Mapping[str, Tensor],
    target: Mapping[str, Tensor],
    *,
    reference_keys: frozenset[str],
    classifier: tuple[str, ...],
    first_conv: str,
    in_chans: int,
    label: str,
    name: str,
) -> tuple[dict[str, Tensor], LoadReport]:
    """Match a backbone checkpoint against a backbone's state dict.

    The wrapping prefix is found and stripped (keys outside it are ignored), the
    classifier dropped, keys of stages the backbone removed and batch-norm
    statistics a GroupNorm has no use for are ignored, and a 3-channel first
    convolution is adapted to ``in_chans``.

    Args:
        state: The checkpoint.
        target: The backbone's ``state_dict()``.
        reference_keys: Every key a full checkpoint of the architecture has.
        classifier: Key prefixes of the classifier.
        first_conv: Module path of the first convolution.
        in_chans: The backbone's input channels.
        label: What the checkpoint is, for the report.
        name: The backbone's registry name, for messages.

    Returns:
        ``(tensors to load, report)``.

    Raises:
        ValueError: None of the checkpoint's keys fits.
    """
    prefix = detect_prefix(state, reference_keys)
    conv_key = f"{first_conv}.weight"

    def adapt(key: str, value: Tensor, want: Tensor) -> Tensor | None:
        if key == conv_key and value.ndim == 4 and value.shape[1] == 3 and value.shape[1] != want.shape[1]:
            return adapt_first_conv(value, in_chans)
        return None

    def known(key: str) -> str | None:
        if key not in reference_keys:
            return None
        return "batch-norm statistics unused by this norm" if key.rsplit(".", 1)[-1] in STATS else "removed stage"

    inside = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    match = match_keys(inside, target, ignore=dict.fromkeys(classifier, "classifier"), known=known, adapt=adapt)
    match.ignored = {prefix + k: why for k, why in match.ignored.items()}
    match.ignored.update({k: f"outside prefix {prefix!r}" for k in state if not k.startswith(prefix)})
    match.unexpected = [prefix + k for k in match.unexpected]
    if not match.loaded:
        raise ValueError(
            f"Checkpoint {label} does not fit backbone {name!r}: none of its {len(state)} keys match "
            f"(first keys: {preview(state)}). Is it a checkpoint of another architecture? "
            "See resbackbone.list_backbones()."
        )
    return match.loaded, match.report(label, prefix=prefix)


def read_weights(
    spec: BackboneSpec, source: WeightsArg, *, progress: bool = True
) -> tuple[str, dict[str, Tensor], WeightSpec | None]:
    """Resolve, fetch and read ``source`` for the architecture ``spec``.

    A run's checkpoint (``best.pt``/``last.pt``) or an exported backbone file
    (``backbone.safetensors`` + ``backbone.json``) comes with the record of its
    backbone: the returned metadata then carries its mean/std, architecture and
    ``in_chans`` (see :mod:`~resbackbone.weights.records`).

    Args:
        spec: The architecture.
        source: A weight string, a path (a run folder reads its ``backbone.safetensors``,
            else ``best.pt``, else ``last.pt``) or a state dict.
        progress: Show a progress bar while downloading.

    Returns:
        ``(label, flat state dict, the weights' metadata where known)``.

    Raises:
        TypeError: ``source`` is none of the accepted kinds.
        ValueError: The string names no checkpoint, or the file is not one.
    """
    if isinstance(source, Mapping):
        return "<state dict>", unwrap_state_dict(source, "<state dict>"), None
    if source is None:
        raise TypeError("weights=None loads nothing: pass a weight string, a path or a state dict.")
    resolved = resolve_weights(spec, source)
    state, record = read_backbone_file(resolved.fetch(progress=progress), resolved.label)
    return resolved.label, state, record.weight_spec(resolved.label) if record is not None else resolved.spec


def _recorded_mismatch(wspec: WeightSpec | None, name: str, in_chans: int) -> str:
    """A sentence for errors when the file records another architecture or other input channels."""
    if wspec is None or wspec.architecture is None:
        return ""
    if wspec.architecture != name:
        return (
            f" The file records a {wspec.architecture!r} backbone (in_chans {wspec.in_chans}): build "
            f"create_backbone({wspec.architecture!r}) / model.backbone: {wspec.architecture}, or pass a {name!r} "
            "checkpoint."
        )
    if wspec.in_chans is not None and wspec.in_chans != in_chans:
        return (
            f" The file records in_chans={wspec.in_chans}, this backbone takes in_chans={in_chans}: build it with "
            f"in_chans={wspec.in_chans} (model.in_chans: {wspec.in_chans})."
        )
    return ""


def load_weights(
    backbone: Any, source: WeightsArg, *, strict: bool = True, progress: bool = True, label: str | None = None
) -> LoadReport:
    """Load a checkpoint into ``backbone`` and report what happened to every key.

    What :meth:`Backbone.load_weights <resbackbone.Backbone.load_weights>` does
    (see there); kept as a function for code written before the method existed.
    Where the file records its backbone (a run's checkpoint, an exported
    backbone), the backbone takes its mean/std, and an error names the
    architecture or input channels the file was made for.

    Example:
        >>> report = load_weights(create_backbone("resnet50"), "torchvision:IMAGENET1K_V2")
        >>> print(report)
        LoadReport(torchvision:IMAGENET1K_V2: 318 loaded; ignored: 2 classifier)
    """
    read_label, state, wspec = read_weights(backbone.spec, source, progress=progress)
    label = label or read_label
    note = _recorded_mismatch(wspec, backbone.name, backbone.in_chans)
    try:
        loaded, report = match_backbone_state(
            state,
            backbone.state_dict(),
            reference_keys=backbone.reference_keys,
            classifier=backbone.classifier,
            first_conv=backbone.first_conv,
            in_chans=backbone.in_chans,
            label=label,
            name=backbone.name,
        )
    except ValueError as exc:
        raise ValueError(f"{exc}{note}") from None
    if strict and not report.ok:
        why = note or " Is it a checkpoint of another architecture or built with other options?"
        raise ValueError(
            f"Checkpoint {label} does not fit backbone {backbone.name!r}: {report}.{why} Pass strict=False to "
            "load_weights() to load what fits."
        )
    backbone.load_state_dict(loaded, strict=False)
    backbone.weights = label
    backbone.load_report = report
    if wspec is not None:
        backbone.mean = adapt_stats(wspec.mean, backbone.in_chans)
        backbone.std = adapt_stats(wspec.std, backbone.in_chans)
    return report
