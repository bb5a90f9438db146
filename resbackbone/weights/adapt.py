"""Adapting RGB weights and their normalisation to ``in_chans`` inputs.

One channel sums the RGB filters and takes the average mean/std; other counts
tile the filters (rescaled by ``3 / in_chans`` so activations keep their scale)
and repeat the statistics cyclically — as timm's ``adapt_input_conv`` does.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

__all__ = ["adapt_first_conv", "adapt_stats"]


def adapt_stats(values: Sequence[float], in_chans: int) -> tuple[float, ...]:
    """Adapt a per-channel mean or std to ``in_chans`` inputs, as the first conv is adapted.

    Example:
        >>> adapt_stats((0.485, 0.456, 0.406), 1)
        (0.449,)
        >>> adapt_stats((0.5, 0.4, 0.3), 4)
        (0.5, 0.4, 0.3, 0.5)
    """
    values = tuple(float(v) for v in values)
    if len(values) == in_chans:
        return values
    if in_chans == 1:
        return (sum(values) / len(values),)
    return tuple(values[i % len(values)] for i in range(in_chans))


def adapt_first_conv(weight: Tensor, in_chans: int) -> Tensor:
    """An RGB convolution weight ``(out, 3, kh, kw)`` made to take ``in_chans`` channels."""
    from timm.models import adapt_input_conv

    return adapt_input_conv(in_chans, weight)
