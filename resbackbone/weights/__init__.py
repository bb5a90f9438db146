"""Weights: resolving weight strings, reading checkpoint files, matching keys, and the download cache.

- :mod:`~resbackbone.weights.sources`: ``"imagenet"``, ``"torchvision:<TAG>"``,
  ``"timm:<tag>"``, ``https://…#sha256=<hex>`` and local files →
  :class:`ResolvedWeights`;
- :mod:`~resbackbone.weights.files`: checkpoint files → flat state dicts,
  ``torch.load(weights_only=True)`` or safetensors, never unpickling code;
- :mod:`~resbackbone.weights.loading`: one key classifier for backbones and
  whole-model checkpoints, and the :class:`LoadReport`;
- :mod:`~resbackbone.weights.adapt`: RGB filters and statistics → ``in_chans``;
- :mod:`~resbackbone.weights.cache`: verified, atomic, resumable downloads
  into ``$TORCH_HOME/hub``.
"""

from .adapt import adapt_first_conv, adapt_stats
from .cache import DownloadError, cache_dir, download_url, sha256_file
from .files import CHECKPOINT_SUFFIXES, read_checkpoint, torch_load, unwrap_state_dict
from .loading import KeyMatch, LoadReport, detect_prefix, load_weights, match_backbone_state, match_keys, read_weights
from .sources import (
    ResolvedWeights,
    WeightsArg,
    cached_path,
    resolve_url,
    resolve_weights,
    torchvision_weight,
    weight_tags,
)

__all__ = [
    "CHECKPOINT_SUFFIXES",
    "DownloadError",
    "KeyMatch",
    "LoadReport",
    "ResolvedWeights",
    "WeightsArg",
    "adapt_first_conv",
    "adapt_stats",
    "cache_dir",
    "cached_path",
    "detect_prefix",
    "download_url",
    "load_weights",
    "match_backbone_state",
    "match_keys",
    "read_checkpoint",
    "read_weights",
    "resolve_url",
    "resolve_weights",
    "sha256_file",
    "torch_load",
    "torchvision_weight",
    "unwrap_state_dict",
    "weight_tags",
]
