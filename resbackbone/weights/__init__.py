"""Weights: resolving weight strings, reading checkpoint files, matching keys, and the download cache.

- :mod:`~resbackbone.weights.sources`: ``"imagenet"``, ``"torchvision:<TAG>"``,
  ``"timm:<tag>"``, ``https://…#sha256=<hex>`` and local files →
  :class:`ResolvedWeights`;
- :mod:`~resbackbone.weights.files`: checkpoint files → flat state dicts,
  ``torch.load(weights_only=True)`` or safetensors, never unpickling code;
- :mod:`~resbackbone.weights.loading`: one key classifier for backbones and
  whole-model checkpoints, and the :class:`LoadReport`;
- :mod:`~resbackbone.weights.records`: backbones carried between runs: a run's
  checkpoint or an exported ``backbone.safetensors`` and the :class:`BackboneRecord`
  (architecture, ``in_chans``, mean/std, origin) that comes with it;
- :mod:`~resbackbone.weights.adapt`: RGB filters and statistics → ``in_chans``;
- :mod:`~resbackbone.weights.cache`: verified, atomic, resumable downloads
  into ``$TORCH_HOME/hub``.
"""

from .adapt import adapt_first_conv, adapt_stats
from .cache import DownloadError, cache_dir, download_url, sha256_file
from .files import CHECKPOINT_SUFFIXES, read_checkpoint, read_file, torch_load, unwrap_state_dict
from .loading import KeyMatch, LoadReport, detect_prefix, load_weights, match_backbone_state, match_keys, read_weights
from .records import (
    RECORD_FORMAT,
    BackboneRecord,
    is_run_checkpoint,
    read_backbone_file,
    read_record,
    record_path,
    trained_stats,
)
from .sources import (
    RUN_FILES,
    ResolvedWeights,
    WeightsArg,
    cached_path,
    resolve_url,
    resolve_weights,
    run_file,
    torchvision_weight,
    weight_tags,
)

__all__ = [
    "CHECKPOINT_SUFFIXES",
    "RECORD_FORMAT",
    "RUN_FILES",
    "BackboneRecord",
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
    "is_run_checkpoint",
    "load_weights",
    "match_backbone_state",
    "match_keys",
    "read_backbone_file",
    "read_checkpoint",
    "read_file",
    "read_record",
    "read_weights",
    "record_path",
    "resolve_url",
    "resolve_weights",
    "run_file",
    "sha256_file",
    "torch_load",
    "torchvision_weight",
    "trained_stats",
    "unwrap_state_dict",
    "weight_tags",
]
