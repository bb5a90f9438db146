"""Weight strings → :class:`ResolvedWeights`: which file to read, where to fetch it, how inputs were normalised.

Accepted ``weights`` values:

- ``"imagenet"``: the checkpoint recorded as recommended for the architecture;
- ``"torchvision:<TAG>"``: a member of torchvision's weight enum (``IMAGENET1K_V2``);
- ``"timm:<tag>"``: a timm pretrained tag (``a1_in1k``), fetched as safetensors;
- ``"https://host/file.pth#sha256=<hex>"``: any URL, with its sha256;
- a local ``.pth``/``.pt``/``.bin``/``.ckpt``/``.safetensors`` file: a state dict, a
  run's ``best.pt``/``last.pt``, an exported ``backbone.safetensors``;
- a run folder: its ``backbone.safetensors`` (pretraining, export), else ``best.pt``, else ``last.pt``.
"""

from __future__ import annotations

import os
import re
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import Tensor

from ..specs import BackboneSpec, WeightSpec
from .cache import cache_dir, download_url
from .files import CHECKPOINT_SUFFIXES

__all__ = [
    "RUN_FILES",
    "ResolvedWeights",
    "WeightsArg",
    "cached_path",
    "resolve_url",
    "resolve_weights",
    "run_file",
    "torchvision_weight",
    "weight_tags",
]

RUN_FILES = ("backbone.safetensors", "best.pt", "last.pt")
"""What a run folder given as weights is read from, in this order."""


def run_file(folder: Path) -> Path:
    """The file a run folder is read from: its ``backbone.safetensors``, else ``best.pt``, else ``last.pt``.

    Raises:
        ValueError: The folder holds none of them.
    """
    found = next((folder / name for name in RUN_FILES if (folder / name).is_file()), None)
    if found is None:
        raise ValueError(
            f"{folder} is a folder without {', '.join(RUN_FILES)}: pass a run folder of `resbackbone finetune` or "
            "`resbackbone pretrain`, or a weights file."
        )
    return found


WeightsArg = str | os.PathLike[str] | Mapping[str, Tensor] | None
"""What ``weights=`` takes everywhere: a weight string, a path, a state dict, or ``None`` (random init)."""


@dataclass(frozen=True)
class ResolvedWeights:
    """A weight string made concrete: the file to read and how inputs were normalised.

    Attributes:
        label: The weight string as reports and messages name it.
        path: The local file (where a download lands).
        url: Where to download it from, or ``None`` for a local file.
        sha256: The file's full expected sha256.
        hash_prefix: The leading hex digits of its sha256 (torchvision's file names carry them).
        spec: The weights' metadata (normalisation, licence), where known.
    """

    label: str
    path: Path
    url: str | None = None
    sha256: str | None = None
    hash_prefix: str | None = None
    spec: WeightSpec | None = None

    def fetch(self, *, progress: bool = True) -> Path:
        """The local file, downloaded and verified first if needed."""
        if self.url is None:
            return self.path
        return download_url(self.url, self.path, sha256=self.sha256, hash_prefix=self.hash_prefix, progress=progress)


def cached_path(url: str, fallback: str = "download.pth") -> tuple[Path, str | None]:
    """Where the download cache keeps ``url``, and the sha256 prefix its file name carries.

    The file name is the URL's last path component, percent-decoded, as
    ``torch.hub`` names it, so files torchvision already downloaded are reused.
    torchvision and timm name files ``<name>-<hex>.<ext>`` where ``<hex>`` starts
    the file's sha256.

    Args:
        url: The address.
        fallback: The file name when the URL's path has none.

    Returns:
        ``(path in the cache, hash prefix or None)``.
    """
    name = Path(urllib.parse.unquote(urllib.parse.urlparse(url).path)).name or fallback
    prefix = re.search(r"-([a-f0-9]{6,})\.", name)
    return cache_dir() / name, prefix.group(1) if prefix else None


def torchvision_weight(builder: str, tag: str, *, label: str, owner: str | None = None, context: str = "") -> Any:
    """The member ``tag`` of the weight enum of torchvision's model builder ``builder``.

    Args:
        builder: torchvision's builder name (``"resnet50"``, ``"fasterrcnn_resnet50_fpn"``).
        tag: The member's name (``"IMAGENET1K_V2"``).
        label: The weight string as the user wrote it, for the message.
        owner: What the message says the weights are for; ``builder`` by default.
        context: What starts the message (``"build_detector(): "``).

    Raises:
        ValueError: ``tag`` is not a member; the message lists the members as weight strings.
    """
    import torchvision

    enum = torchvision.models.get_model_weights(builder)
    try:
        return enum[tag]
    except KeyError:
        choices = ", ".join(f"'torchvision:{m}'" for m in _torchvision_tags(builder))
        raise ValueError(
            f"{context}{label!r} is not a torchvision weight of {owner or builder}; choose one of {choices}."
        ) from None


def _torchvision_tags(builder: str) -> list[str]:
    import torchvision

    return [m for m in torchvision.models.get_model_weights(builder).__members__ if m != "DEFAULT"]


def _timm_tags(timm_name: str) -> list[str]:
    import timm

    return [n.split(".", 1)[1] for n in timm.list_pretrained(f"{timm_name}.*")]


def weight_tags(spec: BackboneSpec) -> list[str]:
    """Every ``torchvision:<TAG>`` and ``timm:<tag>`` weight string published for ``spec``'s architecture."""
    found = [f"torchvision:{t}" for t in _torchvision_tags(spec.torchvision_name)] if spec.torchvision_name else []
    return found + ([f"timm:{t}" for t in _timm_tags(spec.timm_name)] if spec.timm_name else [])


def _forms() -> str:
    return (
        "expected 'imagenet', 'torchvision:<TAG>', 'timm:<tag>', an 'https://…#sha256=<hex>' URL, "
        f"or an existing local file ({'/'.join(CHECKPOINT_SUFFIXES)})"
    )


def resolve_weights(spec: BackboneSpec, weights: str | os.PathLike[str]) -> ResolvedWeights:
    """Turn a weight string into a local path or a verified download.

    Args:
        spec: The architecture the weights are for.
        weights: A weight string (see the module docs) or a path.

    Raises:
        TypeError: ``weights`` is neither a string nor a path.
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
        return resolve_url(text)
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
        found = run_file(path)
        return ResolvedWeights(label=str(found), path=found)
    if path.suffix in CHECKPOINT_SUFFIXES or os.sep in text:
        raise ValueError(f"weights={weights!r}: no such file. Check the path; {_forms()}.")
    raise ValueError(f"weights={weights!r} is not a weight string for {spec.name!r}: {_forms()}.")


def resolve_url(text: str) -> ResolvedWeights:
    """An ``https://…#sha256=<hex>`` weight string as a download into the cache.

    Raises:
        ValueError: The URL carries no ``#sha256=<64 hex digits>``.
    """
    url, _, fragment = text.partition("#")
    match = re.fullmatch(r"sha256=([0-9a-fA-F]{64})", fragment)
    if not match:
        raise ValueError(
            f"weights={text!r}: a URL must carry the file's sha256 as '#sha256=<64 hex digits>' "
            "(compute it with `sha256sum FILE`), so that what is downloaded is what you meant."
        )
    path, _ = cached_path(url, fallback=f"{match.group(1)[:16]}.pth")
    return ResolvedWeights(label=url, path=path, url=url, sha256=match.group(1).lower())


def _resolve_spec(spec: BackboneSpec, wspec: WeightSpec, *, label: str) -> ResolvedWeights:
    if wspec.source == "url":
        resolved = resolve_url(wspec.string)
        return ResolvedWeights(label=label, path=resolved.path, url=resolved.url, sha256=resolved.sha256, spec=wspec)
    if wspec.source == "torchvision":
        return _resolve_torchvision(spec, wspec, label)
    return _resolve_timm(spec, wspec, label)


def _resolve_torchvision(spec: BackboneSpec, wspec: WeightSpec, label: str) -> ResolvedWeights:
    if spec.torchvision_name is None:
        raise ValueError(
            f"{label!r}: torchvision publishes no weights for {spec.name!r}. Use 'imagenet' or 'timm:<tag>' instead."
        )
    member = torchvision_weight(spec.torchvision_name, wspec.ref, label=label, owner=repr(spec.name))
    transforms = member.transforms()
    full = WeightSpec(
        source="torchvision",
        ref=member.name,
        mean=tuple(transforms.mean),
        std=tuple(transforms.std),
        licence=wspec.licence or "BSD-3-Clause",
        origin=wspec.origin or f"torchvision {member.name}",
    )
    path, prefix = cached_path(member.url)
    return ResolvedWeights(label=label, path=path, url=member.url, hash_prefix=prefix, spec=full)


def _resolve_timm(spec: BackboneSpec, wspec: WeightSpec, label: str) -> ResolvedWeights:
    from timm.models import get_pretrained_cfg

    if spec.timm_name is None:
        raise ValueError(f"{label!r}: {spec.name!r} has no timm counterpart; pass a file or URL instead.")
    try:
        cfg = get_pretrained_cfg(f"{spec.timm_name}.{wspec.ref}") if wspec.ref else None
    except RuntimeError:  # timm's answer to an unknown tag
        cfg = None
    if cfg is None or not (cfg.hf_hub_id or cfg.url):
        choices = ", ".join(f"'timm:{t}'" for t in _timm_tags(spec.timm_name)) or "(none)"
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
    path, prefix = cached_path(cfg.url)
    return ResolvedWeights(label=label, path=path, url=cfg.url, hash_prefix=prefix, spec=full)


def _huggingface_cached(repo: str) -> Path | None:
    """The file where the Hugging Face cache already holds it (timm's own downloads)."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    found = try_to_load_from_cache(repo, "model.safetensors")
    return Path(found) if isinstance(found, str) else None
