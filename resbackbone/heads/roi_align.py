"""RoIAlign for Faster R-CNN whose training pass on the CPU is a weighted gather.

torchvision's CPU ``roi_align`` backward runs on one thread and recomputes each
sample's bilinear weights for every channel: in the BCCD CPU recipe's training
step (512 RoIs of 128 channels at stride 8) it took a quarter of the step while
the second core idled. RoIAlign is linear in the feature map: each output bin is
the mean of ``sampling_ratio``² bilinear samples, 4 map pixels each. Written as
:func:`torch.nn.functional.embedding_bag` over the map's pixels (a table of
``B·H·W`` rows of ``C`` channels, ``4·sampling_ratio²`` weighted rows a bin), the
forward is a parallel gather and the backward a parallel scatter-add
(benchmarks/README.md, "RoIAlign").

:class:`MultiScaleRoIAlign` is torchvision's (same levels, same scales, same
arguments, no parameters) and takes this path only where it pays: a training
forward with gradients on the CPU. Evaluation, prediction, CUDA and export run
torchvision's kernel unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor
from torchvision.ops import MultiScaleRoIAlign as _TorchvisionMultiScaleRoIAlign
from torchvision.ops.poolers import _convert_to_roi_format, _filter_input, _setup_scales

__all__ = ["MultiScaleRoIAlign", "roi_align_gather"]


def _axis_samples(start: Tensor, length: Tensor, size: int, bins: int, ratio: int) -> tuple[Tensor, Tensor]:
    """Map indices and weights of one axis's bilinear samples: ``(K, bins, ratio, 2)`` each.

    torchvision's rules (``aligned=False``): a sample beyond ``[-1, size]`` counts
    as zero, one in ``[-1, 0]`` reads at 0, one past ``size - 1`` reads the last
    row or column.
    """
    step = (length / bins)[:, None, None]
    bin_index = torch.arange(bins, dtype=start.dtype, device=start.device)[:, None]
    sample = torch.arange(ratio, dtype=start.dtype, device=start.device) + 0.5
    # torchvision's order of operations, so that a sample on a boundary falls on the same side
    pos = ((start[:, None, None] + bin_index * step) + sample * step / ratio).view(-1, bins * ratio)
    inside = (pos >= -1.0) & (pos <= size)
    pos = pos.clamp(min=0)
    low = pos.floor().clamp(max=size - 1)
    last = low >= size - 1
    frac = torch.where(last, torch.zeros_like(pos), pos - low)
    low_index = low.long()
    high_index = torch.where(last, low_index, low_index + 1)
    index = torch.stack([low_index, high_index], -1).view(-1, bins, ratio, 2)
    weight = (torch.stack([1 - frac, frac], -1) * inside[..., None]).view(-1, bins, ratio, 2)
    return index, weight


def roi_align_gather(
    features: Tensor, rois: Tensor, output_size: tuple[int, int], spatial_scale: float, sampling_ratio: int
) -> Tensor:
    """torchvision's ``roi_align`` (``aligned=False``, ``sampling_ratio > 0``) as a weighted gather.

    Args:
        features: ``(B, C, H, W)`` map.
        rois: ``(K, 5)`` rows of ``[image index, x1, y1, x2, y2]`` in input pixels.
        output_size: ``(height, width)`` of each pooled region.
        spatial_scale: Map pixels per input pixel.
        sampling_ratio: Samples per bin along each axis.

    Returns:
        ``(K, C, height, width)``, equal to ``torchvision.ops.roi_align`` with the
        same arguments to float rounding, forward and gradient.
    """
    if sampling_ratio <= 0:
        raise ValueError(f"roi_align_gather: sampling_ratio {sampling_ratio}; expected > 0 (samples per bin).")
    batch, channels, height, width = features.shape
    out_h, out_w = output_size
    count = rois.shape[0]
    image = rois[:, 0].long()
    x1, y1, x2, y2 = (rois[:, 1:] * spatial_scale).unbind(1)
    rows, row_w = _axis_samples(y1, (y2 - y1).clamp(min=1.0), height, out_h, sampling_ratio)
    cols, col_w = _axis_samples(x1, (x2 - x1).clamp(min=1.0), width, out_w, sampling_ratio)
    # (K, out_h, out_w, ratio, 2, ratio, 2): every bin's samples × the 4 pixels of each sample
    index = (
        image.view(-1, 1, 1, 1, 1, 1, 1) * (height * width)
        + rows.view(count, out_h, 1, sampling_ratio, 2, 1, 1) * width
        + cols.view(count, 1, out_w, 1, 1, sampling_ratio, 2)
    )
    weight = row_w.view(count, out_h, 1, sampling_ratio, 2, 1, 1) * col_w.view(count, 1, out_w, 1, 1, sampling_ratio, 2)
    weight = weight / sampling_ratio**2
    table = features.permute(0, 2, 3, 1).reshape(batch * height * width, channels)
    bags = (count * out_h * out_w, 4 * sampling_ratio**2)
    pooled = F.embedding_bag(
        index.reshape(bags),
        table,
        per_sample_weights=weight.reshape(bags).to(table.dtype),
        mode="sum",
    )
    return pooled.view(count, out_h, out_w, channels).permute(0, 3, 1, 2)


class MultiScaleRoIAlign(_TorchvisionMultiScaleRoIAlign):
    """torchvision's ``MultiScaleRoIAlign`` with :func:`roi_align_gather` for CPU training.

    The same FPN level per box (eq. 1 of the FPN paper) and the same output; a
    forward that records gradients on the CPU in training mode pools with
    :func:`roi_align_gather`, every other one with torchvision's kernel.
    """

    def _gathers(self, features: list[Tensor]) -> bool:
        return (
            self.training
            and torch.is_grad_enabled()
            and features[0].device.type == "cpu"
            and self.sampling_ratio > 0
            and not torch.jit.is_scripting()
            and not torchvision._is_tracing()
            and not torch.compiler.is_compiling()
        )

    def forward(self, x: dict[str, Tensor], boxes: list[Tensor], image_shapes: list[tuple[int, int]]) -> Tensor:
        features = _filter_input(x, self.featmap_names)
        if not self._gathers(features):
            return super().forward(x, boxes, image_shapes)
        if self.scales is None or self.map_levels is None:
            self.scales, self.map_levels = _setup_scales(
                features, image_shapes, self.canonical_scale, self.canonical_level
            )
        rois = _convert_to_roi_format(boxes)
        if len(features) == 1:
            return roi_align_gather(features[0], rois, self.output_size, self.scales[0], self.sampling_ratio)
        levels = self.map_levels(boxes)
        result = features[0].new_zeros((rois.shape[0], features[0].shape[1], *self.output_size))
        for level, (feature, scale) in enumerate(zip(features, self.scales)):
            chosen = torch.where(levels == level)[0]
            if len(chosen):
                result[chosen] = roi_align_gather(
                    feature, rois[chosen], self.output_size, scale, self.sampling_ratio
                ).to(result.dtype)
        return result
