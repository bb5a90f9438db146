"""The modules that are exported: a model with its preprocessing, and plain tensors in and out.

Every graph takes ``image``: ``(N, in_chans, H, W)`` float images in [0, 1]
(8-bit pixels divided by 255, 16-bit by 65535) and normalises them inside
with the backbone's mean and std:

- :class:`BackboneGraph`: ``C2``…``C5``, ``(N, channels, ⌈H/stride⌉, ⌈W/stride⌉)``; any N.
- :class:`SegmenterGraph`: ``logits`` ``(N, classes, H, W)``, or ``class_map``
  ``(N, H, W)`` int64 with ``argmax=True``; any N.
- :class:`DetectorGraph`: ``boxes`` ``(K, 4)`` xyxy in the input's pixels,
  ``scores`` ``(K,)``, ``labels`` ``(K,)`` int64; N = 1.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..backbone import Backbone

__all__ = ["BackboneGraph", "DetectorGraph", "SegmenterGraph"]


class _Normalize(nn.Module):
    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)


class BackboneGraph(nn.Module):
    """A :class:`~resbackbone.Backbone` taking 0–1 images and returning its levels as a tuple."""

    def __init__(self, backbone: Backbone) -> None:
        super().__init__()
        self.normalize = _Normalize(backbone.mean, backbone.std)
        self.backbone = backbone

    @property
    def output_names(self) -> list[str]:
        return list(self.backbone.feature_info.names)

    def forward(self, image: Tensor) -> tuple[Tensor, ...]:
        return tuple(self.backbone.forward_stages(self.normalize(image)).values())


class SegmenterGraph(nn.Module):
    """A segmenter taking 0–1 images and returning logits, or the class of each pixel with ``argmax=True``."""

    def __init__(self, segmenter: nn.Module, *, argmax: bool = False) -> None:
        super().__init__()
        self.normalize = _Normalize(segmenter.mean, segmenter.std)
        self.segmenter = segmenter
        self.argmax = argmax

    @property
    def output_names(self) -> list[str]:
        return ["class_map" if self.argmax else "logits"]

    def forward(self, image: Tensor) -> Tensor:
        logits = self.segmenter(self.normalize(image))
        return logits.argmax(1) if self.argmax else logits


class DetectorGraph(nn.Module):
    """A torchvision detector taking one 0–1 image as a batch of one; boxes in the input's pixels.

    The detector normalises and resizes inside (its ``transform``), as in PyTorch.
    """

    output_names = ("boxes", "scores", "labels")

    def __init__(self, detector: nn.Module) -> None:
        super().__init__()
        self.detector = detector

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        detections = self.detector([image[0]])[0]
        return detections["boxes"], detections["scores"], detections["labels"]
