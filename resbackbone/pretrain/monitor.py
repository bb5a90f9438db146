"""Signals that features learn without labels: a dense linear probe on a labelled split, and a collapse check.

- **Dense linear probe** (``pretrain.monitor``): the frozen backbone's C3, C4 and
  C5 maps, brought to stride 8 and concatenated, are classified pixel by pixel
  with a ridge-regression probe fitted in closed form on half of the split's
  images and scored (mean IoU over the classes) on the other half. Masks label
  the pixels of a segmentation split; for a detection split, pixels inside a box
  take its class (smaller boxes on top), the rest is background. A few seconds
  per epoch; it tracks what the dense heads will find in the features, before
  any fine-tuning. Never a test split.
- **Collapse check**: the standard deviation of L2-normalised embeddings over a
  fixed set of training images (``lightly.utils.debug.std_of_l2_normalized``),
  times ``sqrt(dim)``: about 1 for embeddings spread over the sphere, 0 when
  every image maps to the same point.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..data import build_dataset
from ..recipes import load_recipe
from .config import MonitorConfig

__all__ = ["ProbeSet", "build_probe_set", "dense_probe", "embedding_spread"]

_IGNORE = -1


@dataclass
class ProbeSet:
    """Images and per-pixel labels of a labelled split, ready for :func:`dense_probe`.

    Attributes:
        name: The recipe's name and split (``"bccd_faster_rcnn_cpu/val"``).
        images: ``float32 (N, C, H, W)``, normalised with the backbone's mean/std.
        labels: ``int64 (N, H, W)``, classes ``0..K-1``, ``-1`` ignored.
        classes: Class names (background first).
    """

    name: str
    images: Tensor
    labels: Tensor
    classes: list[str]


def _box_map(target: dict, shape: tuple[int, int]) -> Tensor:
    labels = torch.zeros(shape, dtype=torch.int64)
    boxes, classes = target["boxes"], target["labels"]
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    for i in torch.argsort(areas, descending=True).tolist():
        x1, y1, x2, y2 = (round(float(v)) for v in boxes[i])
        labels[max(y1, 0) : y2, max(x1, 0) : x2] = int(classes[i])
    return labels


def build_probe_set(cfg: MonitorConfig, *, mean: tuple[float, ...], std: tuple[float, ...], in_chans: int) -> ProbeSet:
    """Read the first ``cfg.images`` images of a recipe's split, with labels per pixel.

    Raises:
        ValueError: The recipe or split cannot be read.
    """
    recipe = load_recipe(cfg.recipe, data_root=cfg.root, overrides=cfg.overrides)
    dataset = build_dataset(
        recipe.data, cfg.split, task=recipe.task, train=False, mean=mean, std=std, in_chans=in_chans
    )
    images, labels = [], []
    for index in range(min(cfg.images, len(dataset))):
        image, target = dataset[index]
        images.append(image)
        if recipe.task == "detection":
            labels.append(_box_map(target, tuple(image.shape[1:])))
        else:
            mask = target.clone()
            mask[mask == recipe.data.ignore_index] = _IGNORE
            labels.append(mask)
    classes = list(dataset.classes)
    if recipe.task == "detection":
        classes = ["background", *classes]
    return ProbeSet(f"{recipe.name}/{cfg.split}", torch.stack(images), torch.stack(labels), classes)


def _hypercolumns(backbone: nn.Module, images: Tensor, device: torch.device, batch: int = 8) -> Tensor:
    """The backbone's levels (C3, C4 and C5 in pretraining) at the finest one's stride, concatenated:
    ``(N, h, w, their channels summed)``."""
    maps = []
    for start in range(0, len(images), batch):
        x = images[start : start + batch].to(device)
        features = backbone(x)
        size = features[backbone.out_levels[0]].shape[-2:]
        levels = [
            F.interpolate(features[lv].float(), size=size, mode="bilinear", align_corners=False)
            for lv in backbone.out_levels
        ]
        maps.append(torch.cat(levels, 1).permute(0, 2, 3, 1).cpu())
    return torch.cat(maps)


def _pixels(features: Tensor, labels: Tensor, limit: int, seed: int) -> tuple[Tensor, Tensor]:
    """Pixel features and their labels (nearest label at stride 8), ignored pixels dropped, at most ``limit``."""
    h, w = features.shape[1:3]
    small = F.interpolate(labels[:, None].float(), size=(h, w), mode="nearest-exact")[:, 0].long()  # cell centres
    x, y = features.reshape(-1, features.shape[-1]), small.reshape(-1)
    keep = y != _IGNORE
    x, y = x[keep], y[keep]
    if len(y) > limit:
        pick = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))[:limit]
        x, y = x[pick], y[pick]
    return x.double(), y


@torch.no_grad()
def dense_probe(backbone: nn.Module, probe: ProbeSet, device: torch.device, *, max_pixels: int = 20000) -> float:
    """Mean IoU of a closed-form ridge probe on the frozen backbone's features (see the module docs).

    Even-numbered images fit the probe, odd-numbered ones score it; classes
    absent from both the scoring labels and the predictions are left out of the mean.
    The backbone is put in eval mode and back.

    Args:
        backbone: A :class:`~resbackbone.Backbone` returning C3, C4 and C5.
        probe: The labelled images (:func:`build_probe_set`).
        device: Where the backbone runs.
        max_pixels: At most this many pixels fit the probe.
    """
    was_training = backbone.training
    backbone.eval()
    try:
        features = _hypercolumns(backbone, probe.images, device)
    finally:
        backbone.train(was_training)
    k = len(probe.classes)
    x_fit, y_fit = _pixels(features[0::2], probe.labels[0::2], max_pixels, seed=0)
    x_score, y_score = _pixels(features[1::2], probe.labels[1::2], 10**9, seed=1)
    if len(y_fit) == 0 or len(y_score) == 0:
        return math.nan
    mu, sigma = x_fit.mean(0), x_fit.std(0).clamp_min(1e-6)
    x_fit, x_score = (x_fit - mu) / sigma, (x_score - mu) / sigma
    x_fit = torch.cat([x_fit, torch.ones(len(x_fit), 1, dtype=x_fit.dtype)], 1)
    x_score = torch.cat([x_score, torch.ones(len(x_score), 1, dtype=x_score.dtype)], 1)
    targets = F.one_hot(y_fit, k).double()
    gram = x_fit.T @ x_fit
    ridge = 1e-2 * gram.diagonal().mean() * torch.eye(len(gram), dtype=gram.dtype)
    weights = torch.linalg.solve(gram + ridge, x_fit.T @ targets)
    predicted = (x_score @ weights).argmax(1)
    ious = []
    for c in range(k):
        union = ((predicted == c) | (y_score == c)).sum().item()
        if union:
            ious.append(((predicted == c) & (y_score == c)).sum().item() / union)
    return sum(ious) / len(ious)


@torch.no_grad()
def embedding_spread(model: nn.Module, images: Tensor, device: torch.device) -> float:
    """``sqrt(dim) ×`` the std of the L2-normalised embeddings of ``images``: ~1 spread, 0 collapsed."""
    from lightly.utils.debug import std_of_l2_normalized

    was_training = model.training
    model.eval()
    try:
        z = torch.cat([model.embed(images[i : i + 16].to(device)).float().cpu() for i in range(0, len(images), 16)])
    finally:
        model.train(was_training)
    return float(std_of_l2_normalized(z)) * math.sqrt(z.shape[1])
