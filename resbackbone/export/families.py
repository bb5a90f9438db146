"""What each model family can be exported to, and with which exporter: one table, :data:`FAMILIES`.

The exporter per family was chosen by what exports *correctly* at sizes other
than the one traced (``tests/test_export.py`` checks each at two):

- backbones and segmenters: the dynamo exporter (``torch.onnx.export(dynamo=True)``,
  built on ``torch.export``), with batch, height and width free. Shape arithmetic
  (the segmenters' padding to a multiple of the output stride, the decoders'
  upsampling to the input size) stays symbolic in the graph.
- detectors: the TorchScript-based exporter (``dynamo=False``), height and width
  free at batch 1. ``torch.export`` — hence the dynamo exporter and ``.pt2`` —
  cannot trace torchvision's detectors: the number of proposals and detections
  depends on the data (NMS, score thresholds), and torchvision's post-processing
  loops over the images of a batch in Python, so a traced graph holds one image.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["AXES", "FAMILIES", "FORMATS", "FamilySpec"]

AXES = ("batch", "height", "width")
"""Input axes an export can leave free (``--dynamic``)."""

FORMATS = {
    "onnx": "ONNX (.onnx), for ONNX Runtime and other ONNX runtimes",
    "pt2": "torch.export program (.pt2), for torch.export.load / torch.export runtimes",
    "aoti": "AOTInductor package (.pt2): compiled C++, loadable from C++ without Python",
}
"""Export formats, by name."""


@dataclass(frozen=True)
class FamilySpec:
    """How one family of models exports.

    Attributes:
        title: The family in messages.
        exporter: ``"dynamo"`` or ``"torchscript"`` (the ONNX exporter used).
        opset: The default ONNX opset.
        axes: Input axes that may be free.
        batch: The only batch size the graph takes, or ``None`` when the batch is free.
        formats: Formats it exports to.
        why: Why the other exporter or formats are not used, for messages.
    """

    title: str
    exporter: str
    opset: int
    axes: tuple[str, ...]
    batch: int | None
    formats: tuple[str, ...]
    why: str


_TORCH_EXPORT = "the dynamo exporter and torch.export"
FAMILIES: dict[str, FamilySpec] = {
    "backbone": FamilySpec(
        title="backbone",
        exporter="dynamo",
        opset=18,
        axes=AXES,
        batch=None,
        formats=("onnx", "pt2", "aoti"),
        why="",
    ),
    "segmentation": FamilySpec(
        title="segmenter",
        exporter="dynamo",
        opset=18,
        axes=AXES,
        batch=None,
        formats=("onnx", "pt2", "aoti"),
        why="",
    ),
    "detection": FamilySpec(
        title="detector",
        exporter="torchscript",
        opset=17,
        axes=("height", "width"),
        batch=1,
        formats=("onnx",),
        why=f"{_TORCH_EXPORT} cannot trace torchvision's detectors (data-dependent shapes in NMS and score "
        "thresholds), and its post-processing loops over a batch's images in Python, so the traced graph "
        "takes one image",
    ),
}
"""Task → :class:`FamilySpec`."""
