"""One callable per task that runs a model the way the recipe's ``eval:`` section says.

:func:`wrap_segmenter` and :func:`wrap_detector` take a model and return a
callable from images *at the model's scale* (as the evaluation transform
resizes them) to predictions *at the size asked for* (the file's, for metrics
at native resolution): sliding windows or tiles, test-time augmentation (flips
and turns, at each input scale of ``eval.tta_scales``), and the resize back.
Evaluation, prediction and the end-of-training test all call these, so the
three see the same numbers.

Example:
    >>> segment = wrap_segmenter(model, window=SlidingWindowConfig(overlap=0.5), window_size=(192, 192),
    ...                          tta=["hflip"], pad_value=(-2.1, -2.0, -1.8))
    >>> [logits] = segment([image], [(1040, 1388)])  # image [3, 287, 384] -> logits [K, 1040, 1388]
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from typing import Any

import torch
from torch import Tensor, nn

from .config import SlidingWindowConfig, TilesConfig, check_tiles_and_scales, size_hw
from .merge import merge_detections
from .tiles import detect_tiles
from .tta import check_scales, rescale, resolve_tta, scaled_size
from .windows import pad_to, segment_windows

__all__ = ["Detector", "Segmenter", "wrap_detector", "wrap_segmenter"]


def _logits(output: Any) -> Tensor:
    return output["out"] if isinstance(output, dict) else output


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


class Segmenter:
    """Images at the model's scale -> ``float32 [K, H, W]`` logits at the size asked for (:func:`wrap_segmenter`)."""

    def __init__(
        self,
        model: nn.Module,
        *,
        window: SlidingWindowConfig | None,
        window_size: tuple[int, int] | None,
        tta: Sequence[str],
        scales: Sequence[float],
        pad_value: Sequence[float] | float,
        min_size: tuple[int, int] | None,
        multiple: int,
    ) -> None:
        self.model = model
        self.window = window
        self.window_size = size_hw(window.size) if window is not None and window.size is not None else window_size
        if window is not None and self.window_size is None:
            raise ValueError("eval.sliding_window has no size and the recipe no data.crop_size; set one of them")
        self.transforms = resolve_tta(tta)
        self.scales = check_scales(scales)
        self.pad_value = pad_value
        self.min_size = min_size
        self.multiple = multiple
        self._warned = False

    def _plain(self, images: list[Tensor]) -> list[Tensor]:
        """One forward pass, the batch padded to a common size (at least ``min_size``, a multiple of the stride)."""
        h = max(max(x.shape[-2] for x in images), (self.min_size or (0, 0))[0])
        w = max(max(x.shape[-1] for x in images), (self.min_size or (0, 0))[1])
        size = (_round_up(h, self.multiple), _round_up(w, self.multiple))
        batch = torch.stack([pad_to(x, size, self.pad_value) for x in images])
        logits = _logits(self.model(batch)).float()
        return [logits[i, :, : x.shape[-2], : x.shape[-1]] for i, x in enumerate(images)]

    def _windows(self, images: list[Tensor]) -> list[Tensor]:
        assert self.window is not None and self.window_size is not None
        wh, ww = self.window_size
        out = []
        for x in images:
            if (x.shape[-2] < wh or x.shape[-1] < ww) and not self._warned:
                self._warned = True
                warnings.warn(
                    f"eval.sliding_window.size {wh}x{ww} is larger than a {x.shape[-2]}x{x.shape[-1]} image at the "
                    "model's scale; the image is padded to one window. Set a smaller eval.sliding_window.size "
                    "(or data.crop_size) to avoid it.",
                    stacklevel=3,
                )
            out.append(
                segment_windows(
                    lambda b: _logits(self.model(b)),
                    x[None],
                    size_hw=(wh, ww),
                    overlap=self.window.overlap,
                    blend=self.window.blend,
                    batch_size=self.window.batch_size,
                    pad_value=self.pad_value,
                )[0]
            )
        return out

    def __call__(
        self, images: Tensor | Sequence[Tensor], out_sizes: Sequence[tuple[int, int]] | None = None
    ) -> list[Tensor]:
        """Logits per image.

        Args:
            images: ``[B, C, h, w]`` or a list of ``[C, h, w]`` (sizes may differ), normalised.
            out_sizes: ``(H, W)`` per image to resize the logits to (bilinear); ``None`` keeps ``(h, w)``.

        Returns:
            One ``float32 [K, H, W]`` tensor per image.
        """
        images = list(images)
        total: list[Tensor] | None = None
        run = self._windows if self.window is not None else self._plain
        for scale in self.scales:
            inputs = images if scale == 1 else [rescale(x, scaled_size(x.shape[-2:], scale)) for x in images]
            for t in self.transforms:
                logits = [t.invert(y) for y in run([t.apply(x) for x in inputs])]
                if scale != 1:
                    logits = [rescale(y, x.shape[-2:]) for y, x in zip(logits, images)]
                total = logits if total is None else [a + b for a, b in zip(total, logits)]
        assert total is not None  # there is at least one scale, and the identity is always one of the transforms
        n = len(self.transforms) * len(self.scales)
        results = [y / n for y in total]
        if out_sizes is not None:
            results = [
                y
                if tuple(y.shape[-2:]) == tuple(s)
                else nn.functional.interpolate(y[None], size=tuple(s), mode="bilinear")[0]
                for y, s in zip(results, out_sizes)
            ]
        return results


class Detector:
    """Images at the model's scale -> detections in the pixels of the size asked for (see :func:`wrap_detector`)."""

    def __init__(
        self,
        model: nn.Module,
        *,
        tiles: TilesConfig | None,
        tile_size: tuple[int, int] | None,
        tta: Sequence[str],
        scales: Sequence[float],
        tta_iou: float,
        max_detections: int,
    ) -> None:
        self.model = model
        self.tiles = tiles
        self.tile_size = size_hw(tiles.size) if tiles is not None and tiles.size is not None else tile_size
        if tiles is not None and self.tile_size is None:
            raise ValueError("eval.tiles has no size and the recipe no data.crop_size; set one of them")
        self.transforms = resolve_tta(tta)
        self.scales = check_scales(scales)
        check_tiles_and_scales(tiles, self.scales)
        self.tta_iou = tta_iou
        self.max_detections = max_detections
        self._warned = False

    def _detect(self, image: Tensor) -> dict[str, Tensor]:
        if self.tiles is None:
            return self.model([image])[0]
        assert self.tile_size is not None
        th, tw = self.tile_size
        if (image.shape[-2] < th or image.shape[-1] < tw) and not self._warned:
            self._warned = True
            warnings.warn(
                f"eval.tiles.size {th}x{tw} is larger than a {image.shape[-2]}x{image.shape[-1]} image at the model's "
                "scale; the image is padded to one tile. Set a smaller eval.tiles.size (or data.crop_size).",
                stacklevel=4,
            )
        t = self.tiles
        return detect_tiles(
            self.model,
            image,
            size_hw=(th, tw),
            overlap=t.overlap,
            merge=t.merge,
            iou=t.iou,
            whole=t.whole,
            batch_size=t.batch_size,
            max_detections=self.max_detections,
        )

    def _one(self, image: Tensor) -> dict[str, Tensor]:
        size = (image.shape[-2], image.shape[-1])
        found = []
        for scale in self.scales:
            x = image if scale == 1 else rescale(image, scaled_size(size, scale))
            back = image.new_tensor([size[1] / x.shape[-1], size[0] / x.shape[-2]] * 2)
            with nullcontext() if scale == 1 else _takes_as_is(self.model, x.shape[-2:]):
                for t in self.transforms:
                    det = self._detect(t.apply(x))
                    found.append({**det, "boxes": t.invert_boxes(det["boxes"], x.shape[-2:]) * back})
        if len(found) == 1:
            return found[0]
        return merge_detections(
            torch.cat([f["boxes"] for f in found]),
            torch.cat([f["scores"] for f in found]),
            torch.cat([f["labels"] for f in found]),
            method="wbf",
            iou=self.tta_iou,
            passes=len(found),
            max_detections=self.max_detections,
        )

    def __call__(
        self, images: Sequence[Tensor], out_sizes: Sequence[tuple[int, int]] | None = None
    ) -> list[dict[str, Tensor]]:
        """Detections per image.

        Args:
            images: ``[C, h, w]`` images as the detector takes them.
            out_sizes: ``(H, W)`` per image whose pixels the boxes are given in; ``None`` keeps ``(h, w)``.

        Returns:
            One ``{"boxes", "scores", "labels"}`` per image.
        """
        images = list(images)
        if self.tiles is None and len(self.transforms) == 1 and self.scales == [1.0]:
            outputs = self.model(images)  # one batched call, as the plain detector runs
        else:
            outputs = [self._one(x) for x in images]
        if out_sizes is None:
            return outputs
        scaled = []
        for x, out, (oh, ow) in zip(images, outputs, out_sizes):
            scale = out["boxes"].new_tensor([ow / x.shape[-1], oh / x.shape[-2]] * 2)
            scaled.append({**out, "boxes": out["boxes"] * scale})
        return scaled


@contextmanager
def _takes_as_is(model: Any, size_hw: Sequence[int]) -> Iterator[None]:
    """A torchvision detector's transform set to take an image of ``size_hw`` as it is, not resized back.

    torchvision's ``GeneralizedRCNNTransform`` resizes every input to its ``min_size`` /
    ``max_size``, which would undo a scale pass; a detector without one takes any size.
    """
    transform = getattr(model, "transform", None)
    if transform is None or not hasattr(transform, "min_size"):
        yield
        return
    saved = transform.min_size, transform.max_size
    transform.min_size, transform.max_size = (int(min(size_hw)),), int(max(size_hw))
    try:
        yield
    finally:
        transform.min_size, transform.max_size = saved


def wrap_segmenter(
    model: nn.Module,
    *,
    window: SlidingWindowConfig | None = None,
    window_size: tuple[int, int] | None = None,
    tta: Sequence[str] = (),
    scales: Sequence[float] = (1.0,),
    pad_value: Sequence[float] | float = 0.0,
    min_size: tuple[int, int] | None = None,
    multiple: int | None = None,
) -> Segmenter:
    """A callable running a segmenter with sliding windows and test-time augmentation.

    Args:
        model: A segmenter in eval mode: ``[N, C, h, w]`` -> logits ``[N, K, h, w]`` (or ``{"out": ...}``).
        window: ``eval.sliding_window``; ``None`` runs each image whole, padded.
        window_size: The window when ``window.size`` is unset (the training crop).
        tta: ``eval.tta`` names; the logits of every pass are averaged.
        scales: ``eval.tta_scales``: each pass runs on the input resized by each scale, its logits
            resized back.
        pad_value: Normalised value of a black pixel, per channel (what the data pipeline pads with).
        min_size: Pad whole images to at least this ``(h, w)`` (the evaluation size the model was checked at).
        multiple: Pad whole images to a multiple of this; ``None``: the deepest stride of the model's
            backbone levels, at least 32 (smp's U-Net and FPN decoders halve the input five times).

    Raises:
        ValueError: An unknown TTA name or a scale out of range, or a window with no size.
    """
    return Segmenter(
        model,
        window=window,
        window_size=window_size,
        tta=tta,
        scales=scales,
        pad_value=pad_value,
        min_size=min_size,
        multiple=multiple or _input_multiple(model),
    )


def _input_multiple(model: nn.Module) -> int:
    """What a whole image is padded to a multiple of: the deepest backbone stride, at least 32."""
    from ..backbone import Backbone
    from ..optimize import InferenceBackbone

    modules = model.modules() if isinstance(model, nn.Module) else ()  # a plain callable: 32
    body = next((m for m in modules if isinstance(m, (Backbone, InferenceBackbone))), None)
    return max([32, *(level.stride for level in body.feature_info)] if body is not None else [32])


def wrap_detector(
    model: nn.Module,
    *,
    tiles: TilesConfig | None = None,
    tile_size: tuple[int, int] | None = None,
    tta: Sequence[str] = (),
    scales: Sequence[float] = (1.0,),
    tta_iou: float = 0.55,
    max_detections: int | None = None,
) -> Detector:
    """A callable running a torchvision detector on tiles and with test-time augmentation.

    Args:
        model: A detector in eval mode (list of ``[C, h, w]`` -> list of dicts).
        tiles: ``eval.tiles``; ``None`` runs each image whole.
        tile_size: The tile when ``tiles.size`` is unset (the training crop).
        tta: ``eval.tta`` names; the passes' boxes are fused (weighted box fusion).
        scales: ``eval.tta_scales``: each pass runs on the image resized by each scale (a torchvision
            detector's transform then takes it at that size), its boxes scaled back.
        tta_iou: IoU at which boxes of different passes are one object.
        max_detections: Boxes kept per image; default the detector's own cap (100 in torchvision).

    Raises:
        ValueError: An unknown TTA name or a scale out of range, tiles with no size, or tiles with scales.
    """
    if max_detections is None:
        heads = getattr(model, "roi_heads", model)
        max_detections = int(getattr(heads, "detections_per_img", 100))
    return Detector(
        model,
        tiles=tiles,
        tile_size=tile_size,
        tta=tta,
        scales=scales,
        tta_iou=tta_iou,
        max_detections=max_detections,
    )
