"""Adapters from any registered backbone to detection and segmentation heads.

- :mod:`~resbackbone.heads.fpn`: :func:`build_fpn` for torchvision detectors.
- :mod:`~resbackbone.heads.detection`: :func:`build_detector` (Faster R-CNN,
  RetinaNet), one :class:`DetectorSpec` per architecture.
- :mod:`~resbackbone.heads.segmentation`: :func:`build_segmenter` (DeepLabV3
  through torchvision; DeepLabV3+, FPN and U-Net through smp), one
  :class:`SegmenterSpec` per head.
- :mod:`~resbackbone.heads.smp`: :func:`~resbackbone.heads.smp.register_smp_encoders`
  makes every backbone a ``segmentation_models_pytorch`` encoder (imports smp).
"""

from .detection import DETECTOR_ARCHS, DETECTORS, DetectorSpec, build_detector, detector_head
from .fpn import FeaturePyramid, build_fpn
from .segmentation import SEGMENTER_ARCHS, SEGMENTERS, Segmenter, SegmenterSpec, build_segmenter

__all__ = [
    "DETECTORS",
    "DETECTOR_ARCHS",
    "SEGMENTERS",
    "SEGMENTER_ARCHS",
    "DetectorSpec",
    "FeaturePyramid",
    "Segmenter",
    "SegmenterSpec",
    "build_detector",
    "build_fpn",
    "build_segmenter",
    "detector_head",
]
