"""Inference on images larger than the model's input: sliding windows, tiles, test-time augmentation.

* :mod:`~resbackbone.tiling.windows`: segmentation over windows, logits blended (MONAI).
* :mod:`~resbackbone.tiling.tiles`: detection over overlapping tiles, boxes shifted back and merged.
* :mod:`~resbackbone.tiling.merge`: ``nms`` (torchvision), ``nmm`` and ``wbf`` for boxes found twice.
* :mod:`~resbackbone.tiling.tta`: flips and quarter turns, and their inverses on logits and boxes.
* :mod:`~resbackbone.tiling.predictors`: :func:`wrap_segmenter` and :func:`wrap_detector`, what
  evaluation, prediction and the end-of-training test call.
* :mod:`~resbackbone.tiling.config`: the ``eval.sliding_window`` and ``eval.tiles`` recipe sections.
"""

from .config import SlidingWindowConfig, TilesConfig
from .merge import MERGES, merge_detections
from .predictors import Detector, Segmenter, wrap_detector, wrap_segmenter
from .tiles import detect_tiles, tile_origins
from .tta import TTA_TRANSFORMS, resolve_tta
from .windows import segment_windows

__all__ = [
    "MERGES",
    "TTA_TRANSFORMS",
    "Detector",
    "Segmenter",
    "SlidingWindowConfig",
    "TilesConfig",
    "detect_tiles",
    "merge_detections",
    "resolve_tta",
    "segment_windows",
    "tile_origins",
    "wrap_detector",
    "wrap_segmenter",
]
