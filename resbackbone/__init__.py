"""ResNet-family backbones as a plug-in for detection and segmentation.

Every backbone returns the C2–C5 feature pyramid with its channels and strides
declared in ``feature_info``, and loads torchvision, timm, local or URL checkpoints.
"""

from . import deprecation
from .backbone import Backbone, create_backbone
from .optimize import InferenceBackbone, optimize_for_inference
from .registry import get_spec, list_backbones, register_backbone, unregister_backbone
from .specs import LEVELS, FeatureInfo, LevelInfo, StageSpec, WeightSpec
from .weights import LoadReport, load_weights

__version__ = "0.1.0"

deprecation.install()  # old module paths keep working, with a warning naming the new one

_HEADS = ("build_detector", "build_fpn", "build_segmenter")


def __getattr__(name: str) -> object:
    # The heads import torchvision's detection and segmentation models: loaded on first use.
    if name in _HEADS:
        from . import heads

        return getattr(heads, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
