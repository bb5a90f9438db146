"""Weight strings → state dicts → a loaded :class:`~resbackbone.backbone.Backbone`.

Accepted ``weights`` values:

- ``"imagenet"``: the checkpoint recorded as recommended for the architecture;
- ``"torchvision:<TAG>"``: a member of torchvision's weight enum (``IMAGENET1K_V2``);
- ``"timm:<tag>"``: a timm pretrained tag (``a1_in1k``), fetched as safetensors;
- ``"https://host/file.pth#sha256=<hex>"``: any URL, with its sha256;
- a local ``.pth``/``.pt``/``.bin``/``.ckpt``/``.safetensors`` file, or a state dict.

Checkpoints may use torchvision's or timm's key layout, be wrapped under a
prefix (``module.``, ``model.``, ``backbone.``, ``encoder.``, ``backbone.body.``)
or nested under ``state_dict``/``model`` as Lightning, mmdet and detector
checkpoints are. Files are read with ``torch.load(weights_only=True)`` or
safetensors: a checkpoint can never run code.
"""

from __future__ import annotations

import os
import pickle
import re
import urllib.parse
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from .download import cache_dir, download_url
from .specs import BackboneSpec, WeightSpec

if TYPE_CHECKING:
    from .backbone import Backbone

__all__ = ["LoadReport", "load_weights", "read_checkpoint", "resolve_weights", "torch_load"]

CHECKPOINT_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".safetensors")
_NESTED_KEYS = ("state_dict", "model", "model_state_dict", "module", "network", "net")
_STATS = ("running_mean", "running_var", "num_batches_tracked")


@dataclass(frozen=True)
class ResolvedWeights:
    """A weight string made concrete: the file to read and how inputs were normalised."""

    label: str
    path: Path | None
    url: str | None = None
    sha256: str | None = None
    hash_prefix: str | None = None
    spec: WeightSpec | None = None

    def fetch(self, *, progress: bool = True) -> Path:
        """The local file, downloaded and verified first if needed."""
        if self.url is not None and self.path is not None:
            return download_url(
                self.url, self.path, sha256=self.sha256, hash_prefix=self.hash_prefix, progress=progress
            )
        assert self.path is not None
        return self.path


@dataclass(frozen=True)
class LoadReport:
    """What a weight load did, key by key.

    Attributes:
        source: The weights loaded (weight string or file).
        loaded: Keys copied into the backbone.
        missing: Backbone keys the checkpoint lacks.
        unexpected: Checkpoint keys that fit nothing in the backbone.
        mismatched: ``(key, checkpoint shape, backbone shape)`` for shape conflicts.
        adapted: Keys changed to fit (first conv for ``in_chans != 3``).
        ignored: Checkpoint keys deliberately left out, with the reason.
        prefix: The wrapping prefix stripped from the checkpoint keys.
    """

    source: str
    loaded: tuple[str, ...] = ()
    missing: tuple[str, ...] = ()
    unexpected: tuple[str, ...] = ()
    mismatched: tuple[tuple[str, tuple[int, ...], tuple[int, ...]], ...] = ()
    adapted: tuple[str, ...] = ()
    ignored: dict[str, str] = field(default_factory=dict)
    prefix: str = ""

    @property
    def ok(self) -> bool:
        return bool(self.loaded) and not (self.missing or self.unexpected or self.mismatched)

    def __str__(self) -> str:
        parts = [f"{len(self.loaded)} loaded"]
        for label, keys in (("missing", self.missing), ("unexpected", self.unexpected), ("adapted", self.adapted)):
            if keys:
                parts.append(f"{len(keys)} {label} ({_preview(keys)})")
        if self.mismatched:
            parts.append(f"{len(self.mismatched)} shape mismatches ({_preview_mismatch(self.mismatched)})")
        if self.ignored:
            reasons = Counter(self.ignored.values())
            parts.append("ignored: " + ", ".join(f"{n} {reason}" for reason, n in reasons.items()))
        prefix = f", prefix {self.prefix!r} stripped" if self.prefix else ""
        return f"LoadReport({self.source}: " + "; ".join(parts) + prefix + ")"


def _preview(keys: tuple[str, ...] | list[str], n: int = 4) -> str:
    shown = ", ".join(keys[:n])
    return shown + (f", … {len(keys) - n} more" if len(keys) > n else "")


def _preview_mismatch(items: Any, n: int = 3) -> str:
    shown = [f"{k}: checkpoint {tuple(a)} vs backbone {tuple(b)}" for k, a, b in items[:n]]
    return ", ".join(shown) + (f", … {len(items) - n} more" if len(items) > n else "")


# ------------------------------------------------------------------ resolving weight strings


def _forms() -> str:
    return (
        "expected 'imagenet', 'torchvision:<TAG>', 'timm:<tag>', an 'https://…#sha256=<hex>' URL, "
        f"or an existing local file ({'/'.join(CHECKPOINT_SUFFIXES)})"
    )


def resolve_weights(spec: BackboneSpec, weights: str | os.PathLike[str]) -> ResolvedWeights:
    """Turn a weight string into a local path or a verified download.

    Raises:
        ValueError: The string names no known checkpoint for this architecture;
            the message lists the valid choices.
    """
    if isinstance(weights, os.PathLike):
        weights = os.fspath(weights)
    if not isinstance(weights, str):
        raise TypeError(f"weights must be a string, a path or a state dict, got {type(weights).__name__}.")
    text = weights.strip()
    if text == "imagenet":
        if spec.imagenet is None:
            raise ValueError(f"Backbone {spec.name!r} records no ImageNet checkpoint; pass a file or URL instead.")
        return _resolve_spec(spec, spec.imagenet, label=f"imagenet ({spec.imagenet.string})")
    if text.startswith(("http://", "https://")):
        return _resolve_url(text)
    source, sep, ref = text.partition(":")
    if sep and source in ("torchvision", "timm"):
        return _resolve_spec(spec, WeightSpec(source=source, ref=ref), label=text)
    try:
        path = Path(text).expanduser()
        is_file, is_dir = path.is_file(), path.is_dir()
    except RuntimeError:  # pathlib's answer to '~user' for an unknown user
        raise ValueError(f"weights={weights!r}: cannot find the home folder of {text.split('/')[0]!r}.") from None
    except OSError as exc:  # e.g. a name too long for the file system
        raise ValueError(f"weights={weights!r} is not a usable path ({exc.strerror}); {_forms()}.") from None
    if is_file:
        return ResolvedWeights(label=str(path), path=path)
    if is_dir:
        raise ValueError(f"weights={weights!r} is a folder; {_forms()}.")
    if path.suffix in CHECKPOINT_SUFFIXES or os.sep in text:
        raise ValueError(f"weights={weights!r}: no such file. Check the path; {_forms()}.")
    raise ValueError(f"weights={weights!r} is not a weight string for {spec.name!r}: {_forms()}.")


def _resolve_url(text: str) -> ResolvedWeights:
    url, _, fragment = text.partition("#")
    match = re.fullmatch(r"sha256=([0-9a-fA-F]{64})", fragment)
    if not match:
        raise ValueError(
            f"weights={text!r}: a URL must carry the file's sha256 as '#sha256=<64 hex digits>' "
            "(compute it with `sha256sum FILE`), so that what is downloaded is what you meant."
        )
    name = Path(urllib.parse.unquote(urllib.parse.urlparse(url).path)).name or f"{match.group(1)[:16]}.pth"
    return ResolvedWeights(label=url, path=cache_dir() / name, url=url, sha256=match.group(1).lower())


def _resolve_spec(spec: BackboneSpec, wspec: WeightSpec, *, label: str) -> ResolvedWeights:
    if wspec.source == "url":
        resolved = _resolve_url(wspec.string)
        return ResolvedWeights(label=label, path=resolved.path, url=resolved.url, sha256=resolved.sha256, spec=wspec)
    if wspec.source == "torchvision":
        return _resolve_torchvision(spec, wspec, label)
    return _resolve_timm(spec, wspec, label)


def _resolve_torchvision(spec: BackboneSpec, wspec: WeightSpec, label: str) -> ResolvedWeights:
    import torchvision

    if spec.torchvision_name is None:
        raise ValueError(
            f"{label!r}: torchvision publishes no weights for {spec.name!r}. Use 'imagenet' or 'timm:<tag>' instead."
        )
    enum = torchvision.models.get_model_weights(spec.torchvision_name)
    try:
        member = enum[wspec.ref]
    except KeyError:
        choices = ", ".join(f"'torchvision:{m}'" for m in enum.__members__ if m != "DEFAULT")
        raise ValueError(f"{label!r} is not a torchvision weight of {spec.name!r}; choose one of {choices}.") from None
    name = Path(urllib.parse.urlparse(member.url).path).name
    prefix = re.search(r"-([a-f0-9]{6,})\.", name)
    transforms = member.transforms()
    full = WeightSpec(
        source="torchvision",
        ref=member.name,
        mean=tuple(transforms.mean),
        std=tuple(transforms.std),
        licence=wspec.licence or "BSD-3-Clause",
        origin=wspec.origin or f"torchvision {member.name}",
    )
    return ResolvedWeights(
        label=label,
        path=cache_dir() / name,
        url=member.url,
        hash_prefix=prefix.group(1) if prefix else None,
        spec=full,
    )


def _resolve_timm(spec: BackboneSpec, wspec: WeightSpec, label: str) -> ResolvedWeights:
    import timm
    from timm.models import get_pretrained_cfg

    if spec.timm_name is None:
        raise ValueError(f"{label!r}: {spec.name!r} has no timm counterpart; pass a file or URL instead.")
    try:
        cfg = get_pretrained_cfg(f"{spec.timm_name}.{wspec.ref}") if wspec.ref else None
    except RuntimeError:  # timm's answer to an unknown tag
        cfg = None
    if cfg is None or not (cfg.hf_hub_id or cfg.url):
        tags = [n.split(".", 1)[1] for n in timm.list_pretrained(f"{spec.timm_name}.*")]
        choices = ", ".join(f"'timm:{t}'" for t in tags) or "(none)"
        raise ValueError(f"{label!r} is not a timm weight of {spec.name!r}; choose one of {choices}.")
    full = WeightSpec(
        source="timm",
        ref=wspec.ref,
        mean=tuple(cfg.mean),
        std=tuple(cfg.std),
        licence=wspec.licence or str(cfg.license or ""),
        origin=wspec.origin or f"timm {spec.timm_name}.{wspec.ref}",
    )
    if cfg.hf_hub_id:
        repo = cfg.hf_hub_id + (f"{spec.timm_name}.{wspec.ref}" if cfg.hf_hub_id.endswith("/") else "")
        local = _huggingface_cached(repo)
        if local is not None:
            return ResolvedWeights(label=label, path=local, spec=full)
        endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
        url = f"{endpoint}/{repo}/resolve/main/model.safetensors"
        path = cache_dir() / f"{repo.replace('/', '--')}.safetensors"
        return ResolvedWeights(label=label, path=path, url=url, spec=full)
    name = Path(urllib.parse.urlparse(cfg.url).path).name
    prefix = re.search(r"-([a-f0-9]{6,})\.", name)
    return ResolvedWeights(
        label=label, path=cache_dir() / name, url=cfg.url, hash_prefix=prefix.group(1) if prefix else None, spec=full
    )


def _huggingface_cached(repo: str) -> Path | None:
    """The file where the Hugging Face cache already holds it (timm's own downloads)."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    found = try_to_load_from_cache(repo, "model.safetensors")
    return Path(found) if isinstance(found, str) else None


# ------------------------------------------------------------------ reading files


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
    return _unwrap(obj, str(path))


def _unwrap(obj: Any, label: str) -> dict[str, Tensor]:
    seen = []
    while isinstance(obj, Mapping) and not any(isinstance(v, Tensor) for v in obj.values()):
        key = next((k for k in _NESTED_KEYS if isinstance(obj.get(k), Mapping)), None)
        if key is None:
            raise ValueError(
                f"{label} holds no tensors: top-level keys {sorted(map(str, obj))[:8]}. Expected a state dict, "
                f"or one nested under {'/'.join(_NESTED_KEYS)}."
            )
        seen.append(key)
        obj = obj[key]
    if not isinstance(obj, Mapping):
        raise ValueError(f"{label} holds a {type(obj).__name__}, not a state dict of tensors.")
    return {str(k): v for k, v in obj.items() if isinstance(v, Tensor)}


# ------------------------------------------------------------------ loading into a backbone


def _detect_prefix(keys: list[str], reference: frozenset[str]) -> str:
    """The wrapping prefix that makes the most checkpoint keys reference keys."""
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


def load_weights(
    backbone: Backbone,
    source: str | os.PathLike[str] | Mapping[str, Tensor],
    *,
    strict: bool = True,
    progress: bool = True,
) -> LoadReport:
    """Load a checkpoint into ``backbone`` and report what happened to every key.

    The classifier is dropped, keys of stages removed by ``out_levels`` and
    batch-norm statistics that GroupNorm has no use for are ignored, and the
    first convolution is adapted when ``in_chans != 3``. Everything else must
    match.

    Args:
        backbone: A :class:`~resbackbone.backbone.Backbone`.
        source: A weight string (see module docs), a path or a state dict.
        strict: Raise when keys are missing, unexpected or of another shape.
        progress: Show a progress bar while downloading.

    Returns:
        The :class:`LoadReport`, also kept as ``backbone.load_report``.

    Raises:
        ValueError: Nothing in the checkpoint fits, or (with ``strict``) part does
            not; the message lists the keys.

    Example:
        >>> report = load_weights(create_backbone("resnet50"), "torchvision:IMAGENET1K_V2")
        >>> print(report)
        LoadReport(torchvision:IMAGENET1K_V2: 318 loaded; ignored: 2 classifier)
    """
    from timm.models import adapt_input_conv

    spec = backbone.spec
    wspec: WeightSpec | None = None
    if isinstance(source, Mapping):
        label = "<state dict>"
        state = _unwrap(source, label)
    else:
        resolved = resolve_weights(spec, source)
        label, wspec = resolved.label, resolved.spec
        state = read_checkpoint(resolved.fetch(progress=progress))

    reference = backbone._reference_keys
    prefix = _detect_prefix(list(state), reference)
    target = backbone.state_dict()
    first_conv = f"{backbone.first_conv}.weight"

    ignored: dict[str, str] = {}
    loaded: dict[str, Tensor] = {}
    unexpected: list[str] = []
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = []
    adapted: list[str] = []
    for raw_key, value in state.items():
        if not raw_key.startswith(prefix):
            ignored[raw_key] = f"outside prefix {prefix!r}"
            continue
        key = raw_key[len(prefix) :]
        if key.startswith(spec.classifier):
            ignored[raw_key] = "classifier"
        elif key in target:
            if key == first_conv and value.ndim == 4 and value.shape[1] != target[key].shape[1]:
                if value.shape[1] != 3:
                    mismatched.append((key, tuple(value.shape), tuple(target[key].shape)))
                    continue
                value = adapt_input_conv(backbone.in_chans, value)
                adapted.append(key)
            if value.shape != target[key].shape:
                mismatched.append((key, tuple(value.shape), tuple(target[key].shape)))
            else:
                loaded[key] = value
        elif key.endswith("num_batches_tracked"):
            ignored[raw_key] = "batch-norm counter"
        elif key in reference:
            stat = key.rsplit(".", 1)[-1] in _STATS
            ignored[raw_key] = "batch-norm statistics unused by this norm" if stat else "removed stage"
        else:
            unexpected.append(raw_key)
    missing = [k for k in target if k not in loaded and not k.endswith("num_batches_tracked")]
    missing = [k for k in missing if k not in {m[0] for m in mismatched}]

    report = LoadReport(
        source=label,
        loaded=tuple(loaded),
        missing=tuple(missing),
        unexpected=tuple(unexpected),
        mismatched=tuple(mismatched),
        adapted=tuple(adapted),
        ignored=ignored,
        prefix=prefix,
    )
    if not loaded:
        raise ValueError(
            f"Checkpoint {label} does not fit backbone {spec.name!r}: none of its {len(state)} keys match "
            f"(first keys: {_preview(list(state))}). Is it a checkpoint of another architecture? "
            "See resbackbone.list_backbones()."
        )
    if strict and not report.ok:
        raise ValueError(
            f"Checkpoint {label} does not fit backbone {spec.name!r}: {report}. Is it a checkpoint of another "
            "architecture or built with other options? Pass strict=False to load_weights() to load what fits."
        )
    backbone.load_state_dict(loaded, strict=False)
    backbone.weights = label
    backbone.load_report = report
    if wspec is not None:
        from .backbone import adapt_stats

        backbone.mean = adapt_stats(wspec.mean, backbone.in_chans)
        backbone.std = adapt_stats(wspec.std, backbone.in_chans)
    return report
