"""Large-image inference: sliding windows, tiles, test-time augmentation, box merging (resbackbone.tiling)."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import Tensor, nn

from resbackbone.heads import build_segmenter
from resbackbone.tiling import (
    TTA_TRANSFORMS,
    SlidingWindowConfig,
    TilesConfig,
    merge_detections,
    resolve_tta,
    segment_windows,
    tile_origins,
    wrap_detector,
    wrap_segmenter,
)


class BrightBoxes(nn.Module):
    """A toy detector: one box (label 1, score 0.9) around the bright pixels of each input, as torchvision's API."""

    def forward(self, images: list[Tensor]) -> list[dict[str, Tensor]]:
        out = []
        for image in images:
            ys, xs = torch.nonzero(image[0] > 0.5, as_tuple=True)
            if len(ys):
                box = torch.tensor([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]], dtype=torch.float32)
                out.append({"boxes": box, "scores": torch.tensor([0.9]), "labels": torch.tensor([1])})
            else:
                out.append(
                    {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.long)}
                )
        return out


def _symmetric_conv() -> nn.Conv2d:
    """A 3x3 convolution whose kernel every flip and quarter turn leaves unchanged: an equivariant toy segmenter."""
    conv = nn.Conv2d(3, 2, 3, padding=1, bias=False)
    with torch.no_grad():
        w = torch.randn(2, 3, 3, 3)
        for t in TTA_TRANSFORMS.values():
            w = w + t.apply(w)
        conv.weight.copy_(w)
    return conv


def test_tile_origins_cover_the_image_and_end_at_its_edge() -> None:
    assert tile_origins(640, 256, 0.25) == [0, 192, 384]
    assert tile_origins(100, 64, 0.5) == [0, 32, 36]
    assert tile_origins(50, 64, 0.25) == [0]  # smaller than a tile: one, padded
    for length, size, overlap in [(1000, 192, 0.0), (333, 100, 0.3), (257, 256, 0.9)]:
        starts = tile_origins(length, size, overlap)
        covered = torch.zeros(length, dtype=torch.bool)
        for s in starts:
            covered[s : s + size] = True
        assert covered.all() and starts[-1] + size == length


def test_one_window_equals_the_plain_forward() -> None:
    model = build_segmenter("deeplabv3plus", backbone="test_resnet", num_classes=3, backbone_weights=None).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        plain = model(x)
        windowed = segment_windows(model, x, size_hw=(64, 64), overlap=0.5, blend="gaussian")
        wrapped = wrap_segmenter(model, window=SlidingWindowConfig(size=64, overlap=0.5))([x[0]])[0]
    torch.testing.assert_close(windowed, plain, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(wrapped, plain[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("blend", ["gaussian", "constant"])
def test_blending_identical_windows_is_the_identity(blend: str) -> None:
    """Every window predicts its own pixels, so any weighted blend of the overlaps gives the image back."""
    image = torch.randn(2, 3, 100, 130)
    out = segment_windows(lambda x: x * 1.0, image, size_hw=(32, 48), overlap=0.5, blend=blend)
    torch.testing.assert_close(out, image, rtol=1e-5, atol=1e-5)


def test_a_window_larger_than_the_image_pads_and_says_so() -> None:
    segment = wrap_segmenter(
        lambda x: x[:, :2] * 1.0, window=SlidingWindowConfig(size=64), pad_value=(-1.0, -2.0, -3.0)
    )
    image = torch.randn(3, 40, 50)
    with pytest.warns(UserWarning, match=r"eval.sliding_window.size 64x64 is larger than a 40x50 image.*padded"):
        out = segment([image])[0]
    torch.testing.assert_close(out, image[:2], rtol=1e-5, atol=1e-5)


def test_segmentation_tta_of_an_equivariant_model_equals_the_plain_output() -> None:
    model = _symmetric_conv()
    image = torch.randn(3, 48, 80)  # not square: quarter turns change the shape
    with torch.no_grad():
        plain = wrap_segmenter(model, multiple=1)([image])[0]
        tta = wrap_segmenter(model, tta=list(TTA_TRANSFORMS), multiple=1)([image])[0]
        # a pixel-wise model has no window-border effects: windows, TTA and the plain pass must agree everywhere
        pointwise = nn.Conv2d(3, 2, 1)
        windowed = wrap_segmenter(
            pointwise, window=SlidingWindowConfig(size=32, overlap=0.5), tta=["hflip", "vflip", "rot90"]
        )([image])[0]
        pointwise_plain = pointwise(image[None])[0]
    # float sums in another order differ by ~1e-5 of logits in the hundreds; a wrong inverse differs by tens
    torch.testing.assert_close(tta, plain, rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(windowed, pointwise_plain, rtol=1e-5, atol=1e-5)


def test_tta_inverts_every_transform_on_maps_and_boxes() -> None:
    image = torch.zeros(1, 30, 50)
    image[0, 7:12, 5:20] = 1.0
    box = torch.tensor([[5.0, 7.0, 20.0, 12.0]])
    for t in resolve_tta(list(TTA_TRANSFORMS)):
        moved = t.apply(image)
        assert torch.equal(t.invert(moved), image), t.name
        found = BrightBoxes()([moved])[0]["boxes"]
        torch.testing.assert_close(t.invert_boxes(found, (30, 50)), box, msg=t.name)


def test_detection_tta_of_an_equivariant_detector_equals_the_plain_output() -> None:
    image = torch.zeros(3, 60, 90)
    image[:, 10:25, 30:70] = 1.0
    plain = wrap_detector(BrightBoxes())([image])[0]
    fused = wrap_detector(BrightBoxes(), tta=["hflip", "vflip", "rot90"])([image])[0]
    torch.testing.assert_close(fused["boxes"], plain["boxes"])
    torch.testing.assert_close(fused["scores"], plain["scores"])


class _SizedTransform:
    """The sizes of torchvision's detection transform, which a scale pass must set and give back."""

    def __init__(self, min_size: int, max_size: int) -> None:
        self.min_size, self.max_size = (min_size,), max_size


def test_detection_scales_find_the_same_box_and_give_the_transform_back() -> None:
    """At 2x, bilinear resizing puts a sharp edge on the doubled pixel edge: the box scaled back is the box."""
    seen = []

    class SizedBrightBoxes(BrightBoxes):
        transform = _SizedTransform(60, 90)

        def forward(self, images: list[Tensor]) -> list[dict[str, Tensor]]:
            seen.append((self.transform.min_size, self.transform.max_size, tuple(images[0].shape[-2:])))
            return super().forward(images)

    image = torch.zeros(3, 60, 90)
    image[:, 10:25, 30:70] = 1.0
    plain = wrap_detector(SizedBrightBoxes())([image])[0]
    seen.clear()
    detector = SizedBrightBoxes()
    fused = wrap_detector(detector, tta=["hflip"], scales=[1.0, 2.0])([image], [(120, 180)])[0]
    assert seen == [((60,), 90, (60, 90))] * 2 + [((120,), 180, (120, 180))] * 2
    assert (detector.transform.min_size, detector.transform.max_size) == ((60,), 90)
    torch.testing.assert_close(fused["boxes"], plain["boxes"] * 2)  # in the pixels asked for
    torch.testing.assert_close(fused["scores"], plain["scores"])


def test_segmentation_scales_of_a_pointwise_model_keep_the_plain_output_inside_flat_regions() -> None:
    """Resizing changes a map only near its edges: inside 8-px blocks, every scale must give the plain logits."""
    model = nn.Conv2d(3, 2, 1)
    blocks = torch.randn(3, 6, 10)
    image = blocks.repeat_interleave(8, -2).repeat_interleave(8, -1)  # 48 x 80
    inside = torch.zeros(48, 80, dtype=torch.bool)
    for y in range(6):
        for x in range(10):
            inside[8 * y + 3 : 8 * y + 5, 8 * x + 3 : 8 * x + 5] = True
    with torch.no_grad():
        plain = wrap_segmenter(model, multiple=1)([image])[0]
        scaled = wrap_segmenter(model, tta=["vflip"], scales=[0.5, 1.0, 2.0], multiple=1)([image])[0]
        windowed = wrap_segmenter(model, window=SlidingWindowConfig(size=32, overlap=0.5), scales=[1.0, 1.5])([image])
    assert scaled.shape == plain.shape == windowed[0].shape
    torch.testing.assert_close(scaled[:, inside], plain[:, inside], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(windowed[0][:, inside], plain[:, inside], rtol=1e-4, atol=1e-4)
    assert not torch.allclose(scaled, plain, atol=1e-3)  # the edges did move: the scaled passes ran


def test_an_object_cut_by_a_tile_border_is_found_once() -> None:
    """Tiles of 64 with overlap 0.5 over 100 px start at 0, 32, 36: the first column cuts the object at x = 64."""
    image = torch.zeros(3, 100, 100)
    image[:, 40:60, 58:80] = 1.0
    truth = torch.tensor([[58.0, 40.0, 80.0, 60.0]])
    found = wrap_detector(BrightBoxes(), tiles=TilesConfig(size=64, overlap=0.5))([image])[0]
    torch.testing.assert_close(found["boxes"], truth)
    # IoU-based NMS keeps the cut part (6 px of 22: IoU 0.27) beside the whole: why nmm is the default
    nms = wrap_detector(BrightBoxes(), tiles=TilesConfig(size=64, overlap=0.5, merge="nms"))([image])[0]
    assert len(nms["boxes"]) == 2


def test_tiled_boxes_come_back_in_the_pixels_asked_for() -> None:
    image = torch.zeros(3, 100, 100)
    image[:, 20:40, 58:80] = 1.0
    found = wrap_detector(BrightBoxes(), tiles=TilesConfig(size=64, overlap=0.5))([image], [(200, 300)])[0]
    torch.testing.assert_close(found["boxes"], torch.tensor([[174.0, 40.0, 240.0, 80.0]]))


def test_a_tile_larger_than_the_image_pads_and_says_so() -> None:
    image = torch.zeros(3, 40, 50)
    image[:, 5:15, 10:30] = 1.0
    with pytest.warns(UserWarning, match=r"eval.tiles.size 64x64 is larger than a 40x50 image.*padded"):
        found = wrap_detector(BrightBoxes(), tiles=TilesConfig(size=64))([image])[0]
    torch.testing.assert_close(found["boxes"], torch.tensor([[10.0, 5.0, 30.0, 15.0]]))


def test_merges() -> None:
    boxes = torch.tensor([[0.0, 0, 10, 10], [0, 0, 6, 10], [20, 20, 30, 30], [22, 20, 32, 30]])
    scores, labels = torch.tensor([0.9, 0.8, 0.6, 0.2]), torch.tensor([1, 1, 1, 2])
    nmm = merge_detections(boxes, scores, labels, method="nmm")
    torch.testing.assert_close(nmm["boxes"], boxes[[0, 2, 3]])  # the part joins the whole; other labels stay
    wbf = merge_detections(boxes[:2], scores[:2], labels[:2], method="wbf", iou=0.5, passes=2)
    torch.testing.assert_close(wbf["boxes"], torch.tensor([[0.0, 0, (10 * 0.9 + 6 * 0.8) / 1.7, 10]]))
    torch.testing.assert_close(wbf["scores"], torch.tensor([0.85]))
    one_pass = merge_detections(boxes[:1], scores[:1], labels[:1], method="wbf", passes=4)
    torch.testing.assert_close(one_pass["scores"], torch.tensor([0.9 / 4]))  # found by one pass of four
    assert len(merge_detections(boxes, scores, labels, method="nms", iou=0.5)["boxes"]) == 3  # IoU 0.6
    assert len(merge_detections(boxes, scores, labels, method="nms", iou=0.7)["boxes"]) == 4
    with pytest.raises(ValueError, match=r"Unknown box merge 'mean'; expected one of nms, nmm, wbf"):
        merge_detections(boxes, scores, labels, method="mean")


def test_bad_inputs_name_the_value_and_the_fix() -> None:
    with pytest.raises(ValueError, match=r"Unknown test-time augmentation 'hflp'.*Close matches: 'hflip'"):
        resolve_tta(["hflp"])
    with pytest.raises(ValueError, match=r"lists 'hflip' twice"):
        resolve_tta(["hflip", "hflip"])
    with pytest.raises(ValueError, match=r"eval.tiles.overlap=1.0 is outside \[0, 1\).*e.g. 0.25"):
        tile_origins(100, 10, 1.0)
    with pytest.raises(ValueError, match=r"overlap=-0.1 is outside \[0, 1\)"):
        SlidingWindowConfig(overlap=-0.1)
    with pytest.raises(ValueError, match=r"Unknown blend 'box'"):
        segment_windows(lambda x: x, torch.zeros(1, 1, 8, 8), size_hw=(8, 8), blend="box")
    with pytest.raises(ValueError, match=r"no size and the recipe no data.crop_size"):
        wrap_segmenter(nn.Identity(), window=SlidingWindowConfig())
    with pytest.raises(ValueError, match=r"eval.tta_scales has 0.1, outside \[0.25, 4\].*e.g. \[1.0, 1.25\]"):
        wrap_segmenter(nn.Identity(), scales=[1.0, 0.1])
    with pytest.raises(ValueError, match=r"eval.tta_scales \[1.0, 1.0\] lists a scale twice"):
        wrap_detector(BrightBoxes(), scales=[1.0, 1.0])
    with pytest.raises(ValueError, match=r"eval.tta_scales is empty.*\[1.0\]"):
        wrap_detector(BrightBoxes(), scales=[])
    with pytest.raises(ValueError, match=r"eval.tta_scales \[1.0, 1.5\] with eval.tiles.*eval.tiles: null"):
        wrap_detector(BrightBoxes(), tiles=TilesConfig(size=64), scales=[1.0, 1.5])


def test_plain_segmentation_pads_to_the_stride_and_crops_back() -> None:
    seen = []

    def model(x: Tensor) -> Tensor:
        seen.append(tuple(x.shape[-2:]))
        return x[:, :2]

    image = torch.randn(3, 50, 70)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = wrap_segmenter(model, pad_value=0.0, min_size=(64, 64))([image], [(100, 140)])[0]
    assert seen == [(64, 96)] and out.shape == (2, 100, 140)


def test_whole_images_are_padded_to_the_deepest_stride_of_the_backbone() -> None:
    """A plug-in backbone whose C5 is at stride 64 needs 64, where every registered ResNet needs 32."""
    from resbackbone import create_backbone, optimize_for_inference

    from .plugin_backbones import plain_backbone

    with plain_backbone("deep_custom", stem_convs=2) as name:  # stride 4 before C2: C2..C5 at 8..64
        backbone = create_backbone(name)
        assert backbone.feature_info.strides == (8, 16, 32, 64)
        assert wrap_segmenter(nn.Sequential(backbone)).multiple == 64
        assert wrap_segmenter(nn.Sequential(optimize_for_inference(backbone, compile=False))).multiple == 64
    assert wrap_segmenter(build_segmenter("deeplabv3plus", backbone="test_resnet", num_classes=2)).multiple == 32
    assert wrap_segmenter(lambda x: x).multiple == 32  # a plain callable: no backbone to ask
