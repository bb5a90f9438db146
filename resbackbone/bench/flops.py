"""Counting multiply–accumulates: the one counter of ``resbackbone info`` and the benchmark."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..backbone import create_backbone

__all__ = ["count_macs"]


def count_macs(
    model: str | nn.Module, input_shape: Sequence[int] = (1, 3, 224, 224), *, output_stride: int = 32
) -> float:
    """Multiply–accumulates of one forward, counted by ``torch.utils.flop_counter``.

    Convolutions and matrix products are counted (1 MAC = 2 FLOP); norms,
    activations and pooling are not.

    Args:
        model: A registry name, built with ``output_stride`` and ``input_shape[1]``
            input channels on the meta device (nothing is allocated or computed),
            or a module, run on zeros where its parameters are (build it under
            ``torch.device("meta")`` to count without computing).
        input_shape: ``(N, C, H, W)`` of the input; the count covers the whole batch.
        output_stride: Output stride of a backbone built from a name.

    Returns:
        The MACs of the forward (a float, as the counter's FLOPs halved).

    Raises:
        ValueError: ``input_shape`` is not four positive ints.

    Example:
        >>> round(count_macs("resnet50") / 1e9, 2)  # the C2–C5 trunk, one 224×224 image
        4.09
        >>> with torch.device("meta"):
        ...     pyramid = build_fpn(create_backbone("resnet18")).eval()
        >>> macs = count_macs(pyramid, (1, 3, 512, 512))  # backbone + FPN
    """
    from torch.utils.flop_counter import FlopCounterMode  # imports triton: not at start-up

    shape = tuple(input_shape)
    if len(shape) != 4 or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in shape):
        raise ValueError(f"count_macs(): input_shape={input_shape!r} is not valid: expected (N, C, H, W) of ints ≥ 1.")
    if isinstance(model, str):
        with torch.device("meta"):
            model = create_backbone(model, output_stride=output_stride, in_chans=shape[1]).eval()
    device = next(model.parameters(), torch.empty(0)).device
    x = torch.zeros(shape, device=device)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x)
    return counter.get_total_flops() / 2
