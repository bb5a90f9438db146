"""ResNet-family backbones as a plug-in for detection and segmentation.

Every backbone returns the C2–C5 feature pyramid with its channels and strides
declared in ``feature_info``, and loads torchvision, timm, local or URL checkpoints.

The names below are loaded on first use, so that ``import resbackbone`` (and
``resbackbone predict MODEL.onnx``, which needs no torch) stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import deprecation
from .lazy import lazy_exports

__version__ = "0.1.0"

_HOMES = {
    "Backbone": "backbone",
    "create_backbone": "backbone",
    "InferenceBackbone": "optimize",
    "optimize_for_inference": "optimize",
    "get_spec": "registry",
    "list_backbones": "registry",
    "register_backbone": "registry",
    "unregister_backbone": "registry",
    "LEVELS": "specs",
    "FeatureInfo": "specs",
    "LevelInfo": "specs",
    "StageSpec": "specs",
    "WeightSpec": "specs",
    "LoadReport": "weights",
    "load_weights": "weights",
    "build_detector": "heads",
    "build_fpn": "heads",
    "build_segmenter": "heads",
}
"""Public name → the module that defines it."""

if TYPE_CHECKING:
    from .backbone import Backbone, create_backbone
    from .heads import build_detector, build_fpn, build_segmenter
    from .optimize import InferenceBackbone, optimize_for_inference
    from .registry import get_spec, list_backbones, register_backbone, unregister_backbone
    from .specs import LEVELS, FeatureInfo, LevelInfo, StageSpec, WeightSpec
    from .weights import LoadReport, load_weights

deprecation.install()  # old module paths keep working, with a warning naming the new one


__getattr__, __dir__ = lazy_exports(__name__, _HOMES, globals())


__all__ = [
    "LEVELS",
    "Backbone",
    "FeatureInfo",
    "InferenceBackbone",
    "LevelInfo",
    "LoadReport",
    "StageSpec",
    "WeightSpec",
    "__version__",
    "build_detector",
    "build_fpn",
    "build_segmenter",
    "create_backbone",
    "get_spec",
    "list_backbones",
    "load_weights",
    "optimize_for_inference",
    "register_backbone",
    "unregister_backbone",
]
