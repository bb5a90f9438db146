"""RoIAlign as a weighted gather: torchvision's values and gradients, and where Faster R-CNN takes it."""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
import torchvision
from torch import Tensor

from resbackbone import build_detector
from resbackbone.heads.roi_align import MultiScaleRoIAlign, roi_align_gather


def _rois(count: int, batch: int, image: tuple[int, int], seed: int) -> Tensor:
    """Boxes of every kind: inside, on the border, under a pixel, and reaching past the map."""
    g = torch.Generator().manual_seed(seed)
    h, w = image
    size = torch.rand(count, 2, generator=g) * torch.tensor([w * 0.8, h * 0.8]) + 0.2
    start = torch.rand(count, 2, generator=g) * (torch.tensor([w, h]) - size)
    boxes = torch.cat([start, start + size], 1)
    boxes[0] = torch.tensor([0.0, 0.0, w, h])  # the whole image
    boxes[1] = torch.tensor([w - 0.3, h - 0.3, w, h])  # a sliver at the far corner
    boxes[2] = torch.tensor([-12.0, -12.0, 5.0, 4.0])  # samples before -1: zero
    boxes[3] = torch.tensor([w - 20.0, h - 20.0, w + 40.0, h + 40.0])  # samples past the map: zero
    index = torch.randint(0, batch, (count, 1), generator=g).float()
    return torch.cat([index, boxes], 1)


@pytest.mark.parametrize(
    ("map_size", "scale", "output_size", "ratio"),
    [
        ((14, 18), 1 / 8, (7, 7), 2),
        ((7, 9), 1 / 16, (3, 5), 1),
        ((1, 1), 1 / 64, (7, 7), 3),
        ((5, 4), 1 / 16, (2, 2), 2),
    ],
)
def test_roi_align_gather_equals_torchvision(map_size: tuple[int, int], scale: float, output_size, ratio: int) -> None:
    torch.manual_seed(0)
    features = torch.randn(3, 6, *map_size, dtype=torch.float64)
    rois = _rois(40, 3, (112, 144), seed=1).double()
    ours_in = features.clone().requires_grad_()
    theirs_in = features.clone().requires_grad_()
    ours = roi_align_gather(ours_in, rois, output_size, scale, ratio)
    theirs = torchvision.ops.roi_align(theirs_in, rois, output_size, scale, ratio)
    torch.testing.assert_close(ours, theirs)
    upstream = torch.randn_like(theirs)
    ours.backward(upstream)
    theirs.backward(upstream)
    torch.testing.assert_close(ours_in.grad, theirs_in.grad)
    assert ours[2].abs().sum() > 0  # partly before the map: not all zero


def test_roi_align_gather_of_no_boxes_is_empty() -> None:
    features = torch.randn(2, 4, 8, 8, requires_grad=True)
    pooled = roi_align_gather(features, torch.zeros(0, 5), (7, 7), 0.5, 2)
    assert pooled.shape == (0, 4, 7, 7)
    pooled.sum().backward()
    assert not features.grad.any()


def test_roi_align_gather_refuses_adaptive_sampling() -> None:
    with pytest.raises(ValueError, match="sampling_ratio 0; expected > 0"):
        roi_align_gather(torch.zeros(1, 2, 4, 4), torch.zeros(1, 5), (2, 2), 1.0, 0)


def _levels(seed: int) -> OrderedDict[str, Tensor]:
    torch.manual_seed(seed)
    return OrderedDict(
        (name, torch.randn(2, 4, 512 // stride, 640 // stride)) for name, stride in (("0", 8), ("1", 16), ("2", 32))
    )


def test_multiscale_training_pass_equals_torchvision() -> None:
    maps = _levels(0)
    # sizes from 6 px to the whole image: every level gets boxes
    inside = torch.tensor([640.0, 512.0, 640.0, 512.0])  # x, y, x, y: boxes clipped to the image, as proposals are
    boxes = [torch.minimum(_rois(30, 1, (512, 640), seed=s)[:, 1:].clamp(min=0), inside) for s in (2, 3)]
    image_shapes = [(512, 640), (480, 600)]
    ours_pool = MultiScaleRoIAlign(["0", "1", "2"], 7, 2).train()
    theirs_pool = torchvision.ops.MultiScaleRoIAlign(["0", "1", "2"], 7, 2).train()
    ours_maps = OrderedDict((k, v.clone().requires_grad_()) for k, v in maps.items())
    theirs_maps = OrderedDict((k, v.clone().requires_grad_()) for k, v in maps.items())
    assert ours_pool._gathers(list(ours_maps.values()))
    ours = ours_pool(ours_maps, boxes, image_shapes)
    theirs = theirs_pool(theirs_maps, boxes, image_shapes)
    levels = theirs_pool.map_levels(boxes)
    assert set(levels.tolist()) == {0, 1, 2}
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    upstream = torch.randn_like(theirs)
    ours.backward(upstream)
    theirs.backward(upstream)
    for name in maps:
        torch.testing.assert_close(ours_maps[name].grad, theirs_maps[name].grad, rtol=1e-5, atol=1e-5)


def test_multiscale_inference_is_torchvision_kernel() -> None:
    maps = list(_levels(1).values())
    pool = MultiScaleRoIAlign(["0", "1", "2"], 7, 2)
    assert pool._gathers(maps)
    assert not pool.eval()._gathers(maps)
    pool.train()
    with torch.no_grad():
        assert not pool._gathers(maps)
    assert not MultiScaleRoIAlign(["0"], 7, 0)._gathers(maps)  # adaptive sampling: torchvision's


def test_faster_rcnn_training_step_unchanged() -> None:
    """The detector's losses and gradients are those of torchvision's pooler, to float rounding."""
    images = [torch.rand(3, 64, 80, generator=torch.Generator().manual_seed(0)) for _ in range(2)]
    targets = [
        {"boxes": torch.tensor([[4.0, 6.0, 40.0, 50.0], [30.0, 8.0, 62.0, 30.0]]), "labels": torch.tensor([1, 2])},
        {"boxes": torch.tensor([[10.0, 12.0, 50.0, 60.0]]), "labels": torch.tensor([2])},
    ]
    torch.manual_seed(0)
    model = build_detector("faster_rcnn", backbone="test_resnet", num_classes=3, min_size=64, max_size=80).train()
    assert isinstance(model.roi_heads.box_roi_pool, MultiScaleRoIAlign)
    results = []
    ours = model.roi_heads.box_roi_pool
    theirs = torchvision.ops.MultiScaleRoIAlign(ours.featmap_names, ours.output_size, ours.sampling_ratio)
    for pool in (ours, theirs):
        model.roi_heads.box_roi_pool = pool
        model.zero_grad()
        torch.manual_seed(1)  # the same proposals and sampled RoIs
        losses = model(images, targets)
        sum(losses.values()).backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results.append(({k: v.detach() for k, v in losses.items()}, grads))
    (ours_losses, ours_grads), (theirs_losses, theirs_grads) = results
    torch.testing.assert_close(ours_losses, theirs_losses, rtol=1e-5, atol=1e-6)
    assert ours_grads.keys() == theirs_grads.keys()
    for name in ours_grads:
        torch.testing.assert_close(ours_grads[name], theirs_grads[name], rtol=1e-4, atol=1e-5, msg=name)
