"""Sliding-window segmentation: MONAI's ``sliding_window_inference``, Gaussian or constant blending.

A segmenter trained on crops runs on windows of the crop's size at the
training scale; the windows' logits are blended back into one map the size of
the image (Gaussian weights, sigma 1/8 of the window, favour each window's
centre, as nnU-Net does). MONAI's implementation is used rather than our own:
it is maintained, tested on 2D and 3D, and places the last window flush with
the image's edge.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from .config import check_overlap

__all__ = ["BLENDS", "pad_to", "segment_windows"]

BLENDS = ("gaussian", "constant")


def pad_to(image: Tensor, size_hw: tuple[int, int], value: Sequence[float] | float = 0.0) -> Tensor:
    """``image`` (``[..., C, H, W]``) padded at the bottom and right to at least ``size_hw``, per-channel ``value``."""
    h, w = image.shape[-2:]
    ph, pw = max(0, size_hw[0] - h), max(0, size_hw[1] - w)
    if not ph and not pw:
        return image
    shape = (*image.shape[:-2], h + ph, w + pw)
    out = image.new_empty(shape)
    fill = torch.as_tensor(value, dtype=image.dtype, device=image.device)
    out[...] = fill.view(-1, 1, 1) if fill.ndim else fill
    out[..., :h, :w] = image
    return out


def segment_windows(
    segment: Callable[[Tensor], Tensor],
    images: Tensor,
    *,
    size_hw: tuple[int, int],
    overlap: float = 0.25,
    blend: str = "gaussian",
    batch_size: int = 4,
    pad_value: Sequence[float] | float = 0.0,
) -> Tensor:
    """Logits of ``images`` from windows of ``size_hw``, blended.

    Args:
        segment: The model: ``[N, C, h, w]`` -> logits ``[N, K, h, w]``.
        images: ``[B, C, H, W]``. Sides shorter than the window are padded with
            ``pad_value`` (per channel: the normalised value of a black pixel),
            and the padding is cut off the result.
        size_hw: Window ``(height, width)``.
        overlap: Fraction of a window shared with its neighbour, in [0, 1).
        blend: ``gaussian`` or ``constant`` weights.
        batch_size: Windows per model call.
        pad_value: Fill of the padding, one value or one per channel.

    Returns:
        ``float32 [B, K, H, W]`` logits.

    Raises:
        ValueError: An unknown blend or an overlap outside [0, 1).
    """
    from monai.inferers import sliding_window_inference

    if blend not in BLENDS:
        raise ValueError(f"Unknown blend {blend!r} for eval.sliding_window.blend; expected one of {', '.join(BLENDS)}")
    check_overlap(overlap, "eval.sliding_window.overlap")
    h, w = images.shape[-2:]
    padded = pad_to(images, size_hw, pad_value)
    logits = sliding_window_inference(
        padded,
        roi_size=tuple(size_hw),
        sw_batch_size=batch_size,
        predictor=lambda x: segment(x).float(),
        overlap=overlap,
        mode=blend,
        sigma_scale=0.125,
    )
    assert isinstance(logits, Tensor)  # one tensor in, one out
    return logits[..., :h, :w]
