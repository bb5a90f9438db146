"""Out of PyTorch: backbones, segmenters and detectors exported to ONNX, ``torch.export`` and AOTInductor.

- :func:`export_model` (``resbackbone export``): from a run's checkpoint, a recipe or a backbone;
- :data:`FAMILIES`: what each model family exports to, with which exporter, with which free axes;
- :mod:`~resbackbone.export.graphs`: the exported modules (preprocessing inside, tensors out);
- :mod:`~resbackbone.export.writers`: writing ONNX (with ``metadata_props``), ``.pt2`` and AOTInductor packages;
- :mod:`~resbackbone.export.parity`: comparing runs (relative error, argmax agreement, matched detections).

Running an exported ``.onnx`` needs no torch: :mod:`resbackbone.runtime`. See ``docs/export.md``.
"""

from .api import ExportResult, export_model, load_source
from .families import AXES, FAMILIES, FORMATS, FamilySpec
from .graphs import BackboneGraph, DetectorGraph, SegmenterGraph
from .parity import DetectionMatch, argmax_agreement, box_iou, match_detections, max_relative_error
from .writers import METADATA_FILE, load_pt2

__all__ = [
    "AXES",
    "FAMILIES",
    "FORMATS",
    "METADATA_FILE",
    "BackboneGraph",
    "DetectionMatch",
    "DetectorGraph",
    "ExportResult",
    "FamilySpec",
    "SegmenterGraph",
    "argmax_agreement",
    "box_iou",
    "export_model",
    "load_pt2",
    "load_source",
    "match_detections",
    "max_relative_error",
]
