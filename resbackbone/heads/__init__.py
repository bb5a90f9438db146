"""Adapters from any registered backbone to detection and segmentation heads.

- :mod:`~resbackbone.heads.detection`: :func:`build_fpn` for torchvision
  detectors, :func:`build_detector` (Faster R-CNN, RetinaNet).
- :mod:`~resbackbone.heads.segmentation`: :func:`build_segmenter` (DeepLabV3
  through torchvision; DeepLabV3+, FPN and U-Net through smp).
- :mod:`~resbackbone.heads.smp`: :func:`~resbackbone.heads.smp.register_smp_encoders`
  makes every backbone a ``segmentation_models_pytorch`` encoder (imports smp).
"""

from .detection import DETECTOR_ARCHS, FeaturePyramid, build_detector, build_fpn
from .segmentation import SEGMENTER_ARCHS, Segmenter, build_segmenter

__all__ = [
    "DETECTOR_ARCHS",
    "SEGMENTER_ARCHS",
    "FeaturePyramid",
    "Segmenter",
    "build_detector",
    "build_fpn",
    "build_segmenter",
]
