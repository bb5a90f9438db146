"""Test-time augmentation: the eight symmetries of a square (flips and quarter turns) as one table, and input scales.

Each transform is a horizontal flip (or not) followed by ``k`` counter-clockwise
quarter turns (``torch.rot90`` on the last two dimensions), so its inverse is
the opposite turns followed by the same flip. :meth:`Dihedral.apply` moves an
image, :meth:`Dihedral.invert` moves logits back, :meth:`Dihedral.invert_boxes`
moves ``xyxy`` boxes back (pixel-edge coordinates, as torchvision uses them).
:func:`check_scales` and :func:`rescale` are the other axis of test-time
augmentation: the input resized by each of ``eval.tta_scales`` (DeepLab's
multi-scale inference, mmdet's multi-scale test).

Example:
    >>> t = TTA_TRANSFORMS["rot90"]
    >>> x = torch.rand(1, 3, 40, 60)
    >>> t.apply(x).shape, torch.equal(t.invert(t.apply(x)), x)
    (torch.Size([1, 3, 60, 40]), True)
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

__all__ = ["IDENTITY", "TTA_TRANSFORMS", "Dihedral", "check_scales", "rescale", "resolve_tta", "scaled_size"]

SCALE_RANGE = (0.25, 4.0)
"""The input scales ``eval.tta_scales`` accepts."""


def _hflip_boxes(boxes: Tensor, width: float) -> Tensor:
    x1, y1, x2, y2 = boxes.unbind(-1)
    return torch.stack([width - x2, y1, width - x1, y2], -1)


def _rot90_boxes(boxes: Tensor, width: float) -> Tensor:
    """Boxes of an image ``width`` wide, in the image turned a quarter counter-clockwise: (x, y) -> (y, width - x)."""
    x1, y1, x2, y2 = boxes.unbind(-1)
    return torch.stack([y1, width - x2, y2, width - x1], -1)


@dataclass(frozen=True)
class Dihedral:
    """One symmetry of the image plane: an optional horizontal flip, then ``k`` quarter turns.

    Attributes:
        name: The name a recipe uses (``eval.tta``).
        flip: Flip left-right first.
        k: Counter-clockwise quarter turns after the flip (0–3).
    """

    name: str
    flip: bool
    k: int

    def apply(self, x: Tensor) -> Tensor:
        """The transformed image (or batch): ``[..., H, W]`` -> ``[..., H, W]`` or ``[..., W, H]``."""
        if self.flip:
            x = x.flip(-1)
        return torch.rot90(x, self.k, dims=(-2, -1)) if self.k else x

    def invert(self, y: Tensor) -> Tensor:
        """Logits (or any map) of a transformed image moved back onto the original image."""
        if self.k:
            y = torch.rot90(y, -self.k, dims=(-2, -1))
        return y.flip(-1) if self.flip else y

    def invert_boxes(self, boxes: Tensor, size_hw: tuple[int, int]) -> Tensor:
        """``xyxy`` boxes found in the transformed image, in the original image's pixels.

        Args:
            boxes: ``(N, 4)`` boxes in the transformed image.
            size_hw: ``(height, width)`` of the original image.
        """
        h, w = size_hw
        # undo the turns: k quarter turns back = 4 - k more quarter turns forward; track the width as it turns
        widths = [w, h]  # width of the image after 0, 1, 2, 3 turns alternates w, h, w, h
        for turn in range((4 - self.k) % 4):
            boxes = _rot90_boxes(boxes, widths[(self.k + turn) % 2])
        return _hflip_boxes(boxes, w) if self.flip else boxes


IDENTITY = Dihedral("identity", flip=False, k=0)

TTA_TRANSFORMS: dict[str, Dihedral] = {
    t.name: t
    for t in (
        Dihedral("hflip", flip=True, k=0),
        Dihedral("vflip", flip=True, k=2),
        Dihedral("rot90", flip=False, k=1),
        Dihedral("rot180", flip=False, k=2),
        Dihedral("rot270", flip=False, k=3),
        Dihedral("transpose", flip=True, k=1),
        Dihedral("antitranspose", flip=True, k=3),
    )
}
"""Name -> transform; :data:`IDENTITY` (the plain input) is always part of test-time augmentation."""


def resolve_tta(names: Sequence[str]) -> list[Dihedral]:
    """The transforms of ``eval.tta``, the plain input first.

    Raises:
        ValueError: An unknown or repeated name (the message lists close matches and every name).

    Example:
        >>> [t.name for t in resolve_tta(["hflip", "vflip"])]
        ['identity', 'hflip', 'vflip']
    """
    chosen = [IDENTITY]
    for name in names:
        if name not in TTA_TRANSFORMS:
            close = difflib.get_close_matches(name, TTA_TRANSFORMS, n=3, cutoff=0.5)
            hint = f"Close matches: {', '.join(map(repr, close))}. " if close else ""
            raise ValueError(
                f"Unknown test-time augmentation {name!r} in eval.tta. {hint}Expected names from "
                f"{', '.join(TTA_TRANSFORMS)} (the plain image is always included)."
            )
        if any(t.name == name for t in chosen):
            raise ValueError(f"eval.tta lists {name!r} twice; list each transform once.")
        chosen.append(TTA_TRANSFORMS[name])
    return chosen


def check_scales(scales: Sequence[float]) -> list[float]:
    """``eval.tta_scales`` as a list, if it is not empty and each scale is in :data:`SCALE_RANGE` and listed once.

    Raises:
        ValueError: The message names the offending value and what is expected.

    Example:
        >>> check_scales([1.0, 1.25])
        [1.0, 1.25]
    """
    low, high = SCALE_RANGE
    if not scales:
        raise ValueError("eval.tta_scales is empty; give at least one input scale, e.g. [1.0] (the plain input)")
    for scale in scales:
        if not low <= scale <= high:
            raise ValueError(
                f"eval.tta_scales has {scale}, outside [{low:g}, {high:g}]: each is a factor on the model's input "
                "size (1.0 the plain input); use e.g. [1.0, 1.25]"
            )
    if len(set(scales)) < len(scales):
        raise ValueError(f"eval.tta_scales {list(scales)} lists a scale twice; list each scale once.")
    return [float(s) for s in scales]


def scaled_size(size_hw: Sequence[int], scale: float) -> tuple[int, int]:
    """``(height, width)`` times ``scale``, rounded to whole pixels (at least one).

    Example:
        >>> scaled_size((224, 288), 1.25)
        (280, 360)
    """
    return max(1, round(size_hw[0] * scale)), max(1, round(size_hw[1] * scale))


def rescale(x: Tensor, size_hw: Sequence[int]) -> Tensor:
    """An image or map ``[..., H, W]`` resized to ``size_hw`` (bilinear; antialiased when it shrinks)."""
    size = (int(size_hw[0]), int(size_hw[1]))
    if tuple(x.shape[-2:]) == size:
        return x
    shrinks = size[0] < x.shape[-2] or size[1] < x.shape[-1]
    batch = x.reshape(-1, *x.shape[-3:]) if x.dim() >= 3 else x[None, None]
    out = nn.functional.interpolate(batch, size=size, mode="bilinear", antialias=shrinks)
    return out.reshape(*x.shape[:-2], *size)
