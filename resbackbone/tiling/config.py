"""The large-image keys of a recipe's ``eval:`` section: sliding windows, tiles, test-time augmentation.

Example::

    eval:
      sliding_window: {size: 256, overlap: 0.25, blend: gaussian}   # segmentation
      tiles: {size: 256, overlap: 0.25, merge: nmm, iou: 0.5}        # detection
      tta: [hflip, vflip]
      tta_scales: [1.0, 1.25]

A window or tile ``size`` left out is the recipe's training crop
(``data.crop_size``), so the model sees at inference the scale and extent it
was trained on.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from .tta import check_scales, resolve_tta

__all__ = [
    "SlidingWindowConfig",
    "TilesConfig",
    "check_overlap",
    "check_scales",
    "check_tiles_and_scales",
    "check_tta_names",
    "size_hw",
]


def size_hw(size: int | tuple[int, int]) -> tuple[int, int]:
    """A side or ``(height, width)`` as ``(height, width)``."""
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def _check_size(value: int | tuple[int, int] | None, key: str) -> int | tuple[int, int] | None:
    if value is not None and min(size_hw(value)) < 16:
        raise ValueError(f"{key}={value} is too small; give a side (e.g. 256) or [height, width], each >= 16")
    return value


def check_overlap(value: float, key: str) -> float:
    """``value`` if it is in [0, 1), the fraction of a window or tile shared with its neighbour.

    Raises:
        ValueError: It is not; the message names ``key``.
    """
    if not 0.0 <= value < 1.0:
        raise ValueError(
            f"{key}={value} is outside [0, 1): it is the fraction of a window shared with its neighbour; "
            "use e.g. 0.25 (0 for no overlap)"
        )
    return value


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SlidingWindowConfig(_Section):
    """``eval.sliding_window`` — segmentation over windows at the training scale, logits blended.

    Attributes:
        size: Window side or ``[height, width]`` at the model's scale; ``null``: ``data.crop_size``.
            A window larger than an image is run on the image padded to it (a warning says so).
        overlap: Fraction of a window shared with its neighbour, in [0, 1).
        blend: ``gaussian`` (centre weighted, sigma 1/8 of the window, nnU-Net's) or ``constant``.
        batch_size: Windows per forward pass.
    """

    size: int | tuple[int, int] | None = None
    overlap: float = 0.25
    blend: Literal["gaussian", "constant"] = "gaussian"
    batch_size: int = Field(default=4, ge=1)

    @field_validator("size")
    @classmethod
    def _size(cls, value: int | tuple[int, int] | None) -> int | tuple[int, int] | None:
        return _check_size(value, "eval.sliding_window.size")

    @field_validator("overlap")
    @classmethod
    def _overlap(cls, value: float) -> float:
        return check_overlap(value, "eval.sliding_window.overlap")


class TilesConfig(_Section):
    """``eval.tiles`` — detection on overlapping tiles at the training scale, boxes merged per class.

    Attributes:
        size: Tile side or ``[height, width]`` at the model's scale; ``null``: ``data.crop_size``.
            An image smaller than a tile is padded to it (a warning says so).
        overlap: Fraction of a tile shared with its neighbour, in [0, 1); make the overlap at
            least as large as the objects, so that each is whole in some tile.
        merge: ``nmm`` (merge boxes whose intersection over the smaller box passes ``iou``: a box
            cut by a tile border joins the whole one) or ``nms`` (torchvision's, on IoU).
        iou: Overlap threshold of the merge.
        whole: Also detect on the whole image, shrunk to the model's input size (SAHI's
            "standard prediction"): helps objects larger than a tile.
        batch_size: Tiles per forward pass.
    """

    size: int | tuple[int, int] | None = None
    overlap: float = 0.25
    merge: Literal["nmm", "nms"] = "nmm"
    iou: float = Field(default=0.5, ge=0.0, le=1.0)
    whole: bool = False
    batch_size: int = Field(default=4, ge=1)

    @field_validator("size")
    @classmethod
    def _size(cls, value: int | tuple[int, int] | None) -> int | tuple[int, int] | None:
        return _check_size(value, "eval.tiles.size")

    @field_validator("overlap")
    @classmethod
    def _overlap(cls, value: float) -> float:
        return check_overlap(value, "eval.tiles.overlap")


def check_tta_names(value: list[str]) -> list[str]:
    """``eval.tta`` if every name is known and listed once (see :func:`~resbackbone.tiling.tta.resolve_tta`)."""
    resolve_tta(value)
    return value


def check_tiles_and_scales(tiles: TilesConfig | None, scales: Sequence[float]) -> None:
    """Refuse ``eval.tiles`` with input scales other than ``[1.0]``: tiles are cut at the model's scale.

    Raises:
        ValueError: Both are set; the message says which to drop.
    """
    if tiles is not None and list(scales) != [1.0]:
        raise ValueError(
            f"eval.tta_scales {list(scales)} with eval.tiles: tiles already run at the model's scale; "
            "set eval.tta_scales: [1.0], or eval.tiles: null to run whole images at several scales"
        )
