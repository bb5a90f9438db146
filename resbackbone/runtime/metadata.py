"""What an exported model says about itself: :class:`ModelInfo` and its ONNX ``metadata_props``.

Every key is one entry of :data:`METADATA_KEYS` (name, type, meaning), the one
source that writing, reading and ``docs/export.md`` follow. Strings are stored
as they are; numbers, booleans, lists and ``null`` as JSON. A file without the
``resbackbone_format`` key was not written by ``resbackbone export``.

No torch import: an exported model is described, read and run without it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any

__all__ = ["FORMAT_VERSION", "METADATA_KEYS", "TASKS", "MetadataKey", "ModelInfo"]

FORMAT_VERSION = 2
"""The newest ``resbackbone_format`` this version reads (1 and 2), and writes for a file that needs version 2."""

# The version that added each later key: a file of an earlier version lacks it and reads it as its default.
# A file is written at the lowest version that holds what it needs, so a model without a contrast stretch
# stays readable by releases that know only version 1, and one with it is refused by them, not misread.
_ADDED_IN = {"intensity_percentiles": 2}

TASKS = ("backbone", "segmentation", "detection")


@dataclass(frozen=True)
class MetadataKey:
    """One key of the metadata: its name, its Python type and what it means."""

    name: str
    kind: type
    meaning: str


@dataclass(frozen=True)
class ModelInfo:
    """What running an exported model needs to know, and what it came from.

    Attributes:
        task: ``"backbone"``, ``"segmentation"`` or ``"detection"``.
        head: The head (``"deeplabv3plus"``, ``"faster_rcnn"``…), ``""`` for a backbone.
        backbone: The registry name of the backbone.
        classes: Class names in the order the model predicts them (detection: label ``k`` is
            ``classes[k - 1]``, 0 being the background; segmentation: class map value ``k`` is ``classes[k]``).
        in_chans: Channels of the input image.
        mean: Per-channel mean of 0–1 pixels that the graph subtracts.
        std: Per-channel std that the graph divides by.
        image_size: ``[height, width]`` the model was trained and evaluated at (the recipe's
            ``data.image_size``); ``predict`` resizes images to it. ``None`` for a bare backbone.
        resize: How images are brought to ``image_size``: ``"letterbox"`` (keep the aspect ratio,
            pad bottom/right with 0) or ``"stretch"``.
        window: DICOM ``[center, width]`` the recipe read its images with, or ``None``.
        intensity_percentiles: ``[low, high]``: each image's contrast is stretched between these
            percentiles of its pixels before the graph (the recipe's ``data.intensity_percentiles``), or ``None``.
        output: ``"features"`` (C2–C5), ``"logits"``, ``"class_map"`` or ``"detections"``.
        output_names: The graph's output names, in order.
        input_name: The graph's input name.
        dynamic_axes: Input axes of free size (``"batch"``, ``"height"``, ``"width"``).
        batch: ``None`` for a free batch size, else the only one the graph takes (1 for detectors).
        min_side: Smallest image side the graph takes.
        score_thresh: Detection: detections scoring less were dropped inside the graph.
        levels: Backbone: the output levels (``["C2", "C3", "C4", "C5"]``).
        strides: Backbone: their strides.
        exporter: ``"dynamo"`` (``torch.onnx.export(dynamo=True)``) or ``"torchscript"``.
        opset: The ONNX opset.
        dtype: ``"float32"`` or ``"float16"``: the weights' and the input's type.
        bn_folded: Batch norms were folded into the convolutions before export.
        resbackbone_version: The version that exported it.
        torch_version: The torch that traced it.
        source: The file or name it was exported from.
        recipe: The recipe's name, ``""`` for a backbone.
    """

    task: str
    classes: list[str] = field(default_factory=list)
    head: str = ""
    backbone: str = ""
    in_chans: int = 3
    mean: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])
    std: list[float] = field(default_factory=lambda: [1.0, 1.0, 1.0])
    image_size: list[int] | None = None
    resize: str = "letterbox"
    window: list[float] | None = None
    intensity_percentiles: list[float] | None = None
    output: str = "logits"
    output_names: list[str] = field(default_factory=list)
    input_name: str = "image"
    dynamic_axes: list[str] = field(default_factory=lambda: ["batch", "height", "width"])
    batch: int | None = None
    min_side: int = 32
    score_thresh: float | None = None
    levels: list[str] = field(default_factory=list)
    strides: list[int] = field(default_factory=list)
    exporter: str = ""
    opset: int = 0
    dtype: str = "float32"
    bn_folded: bool = False
    resbackbone_version: str = ""
    torch_version: str = ""
    source: str = ""
    recipe: str = ""

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"task={self.task!r} is not valid: expected one of {TASKS}.")
        if len(self.mean) != self.in_chans or len(self.std) != self.in_chans:
            raise ValueError(
                f"mean {list(self.mean)} and std {list(self.std)} must have in_chans={self.in_chans} values."
            )

    def to_metadata(self) -> dict[str, str]:
        """The ``metadata_props`` of an ONNX file: :data:`METADATA_KEYS`, values as strings."""
        values = asdict(self)
        version = max([_ADDED_IN[k] for k in _ADDED_IN if values[k] is not None], default=1)
        props = {"resbackbone_format": str(version)}
        for key in METADATA_KEYS[1:]:
            value = values[key.name]
            props[key.name] = value if isinstance(value, str) else json.dumps(value)
        return props

    @classmethod
    def from_metadata(cls, props: dict[str, str], *, source: str) -> ModelInfo:
        """Read what :meth:`to_metadata` wrote.

        Args:
            props: The file's ``metadata_props``.
            source: The file, for messages.

        Raises:
            ValueError: The file was not exported by resbackbone (no ``resbackbone_format``), by a
                newer version, or a value is missing or malformed; the message names the key.
        """
        version = props.get("resbackbone_format")
        if version is None:
            raise ValueError(
                f"{source} was not exported by resbackbone: its metadata has no 'resbackbone_format' key "
                f"(keys: {sorted(props) or 'none'}). Export the model with `resbackbone export`, which records the "
                "task, classes and preprocessing predict needs."
            )
        readable = [str(v) for v in range(1, FORMAT_VERSION + 1)]
        if version not in readable:
            raise ValueError(
                f"{source} has resbackbone_format {version}; this resbackbone reads {', '.join(readable)}. "
                "Upgrade resbackbone, or export the model again with this version."
            )
        kinds = {key.name: key.kind for key in METADATA_KEYS}
        values: dict[str, Any] = {}
        for f in fields(cls):
            if f.name not in props and _ADDED_IN.get(f.name, 1) > int(version):  # written before the key existed
                continue
            if f.name not in props:
                raise ValueError(f"{source}: metadata key {f.name!r} is missing; export the model again.")
            text = props[f.name]
            try:
                values[f.name] = text if kinds[f.name] is str else json.loads(text)
            except json.JSONDecodeError:
                raise ValueError(
                    f"{source}: metadata key {f.name!r} holds {text!r}, not a {kinds[f.name].__name__} in JSON."
                ) from None
        return cls(**values)


METADATA_KEYS: tuple[MetadataKey, ...] = (
    MetadataKey("resbackbone_format", int, "marks a file resbackbone exported; the version of its key set (1, or 2 "
                "when it needs `intensity_percentiles`)"),
    MetadataKey("task", str, "`backbone`, `segmentation` or `detection`"),
    MetadataKey("classes", list, "class names (JSON list): detection label k is classes[k-1], 0 the background; "
                "segmentation class k is classes[k]"),
    MetadataKey("head", str, "the head (`deeplabv3plus`, `faster_rcnn`, …); empty for a backbone"),
    MetadataKey("backbone", str, "the backbone's registry name"),
    MetadataKey("in_chans", int, "channels of the input image"),
    MetadataKey("mean", list, "per-channel mean of 0–1 pixels, subtracted inside the graph"),
    MetadataKey("std", list, "per-channel std, divided by inside the graph"),
    MetadataKey("image_size", list, "[height, width] the model was trained and evaluated at (`null` for a backbone)"),
    MetadataKey("resize", str, "how predict brings images to image_size: `letterbox` or `stretch`"),
    MetadataKey("window", list, "DICOM [center, width] the recipe read images with, or null"),
    MetadataKey("intensity_percentiles", list, "[low, high] percentiles each image's contrast is stretched "
                "between before the graph (0 and 1 at those percentiles of its pixels), or null"),
    MetadataKey("output", str, "`features`, `logits`, `class_map` or `detections`"),
    MetadataKey("output_names", list, "the graph's outputs, in order"),
    MetadataKey("input_name", str, "the graph's input"),
    MetadataKey("dynamic_axes", list, "input axes of free size: `batch`, `height`, `width`"),
    MetadataKey("batch", int, "null for a free batch size, else the one batch size the graph takes"),
    MetadataKey("min_side", int, "the smallest image side the graph takes"),
    MetadataKey("score_thresh", float, "detection: the score below which the graph drops detections"),
    MetadataKey("levels", list, "backbone: output levels"),
    MetadataKey("strides", list, "backbone: their strides"),
    MetadataKey("exporter", str, "`dynamo` or `torchscript` (see docs/export.md for which family uses which)"),
    MetadataKey("opset", int, "the ONNX opset"),
    MetadataKey("dtype", str, "`float32` or `float16`: the input's and the weights' type"),
    MetadataKey("bn_folded", bool, "batch norms folded into the convolutions before export"),
    MetadataKey("resbackbone_version", str, "the resbackbone that exported the file"),
    MetadataKey("torch_version", str, "the torch that traced it"),
    MetadataKey("source", str, "the checkpoint file or backbone name it was exported from"),
    MetadataKey("recipe", str, "the recipe's name (empty for a backbone)"),
)  # fmt: skip
"""Every metadata key: the first marks the file as ours, the rest are :class:`ModelInfo`'s fields."""
