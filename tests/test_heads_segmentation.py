"""build_segmenter: DeepLabV3 (torchvision), DeepLabV3+, FPN and U-Net (smp) on registered backbones."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn

from resbackbone import build_segmenter, create_backbone
from resbackbone.heads import Segmenter

ARCHS = ["deeplabv3", "deeplabv3plus", "fpn", "unet"]
TINY = ["test_resnet", "test_resnet_bottleneck"]


def _batch(size: tuple[int, int] = (64, 64), in_chans: int = 3) -> tuple[Tensor, Tensor]:
    torch.manual_seed(0)
    images = torch.randn(2, in_chans, *size)
    masks = torch.zeros(2, *size, dtype=torch.long)
    masks[:, 8:40, 10:50] = 1
    masks[1, 30:, :20] = 2
    return images, masks


def _train_step(model: Segmenter, trainable_stages: int | None) -> None:
    images, masks = _batch()
    model.train()
    out = model(images)
    logits = out["out"] if isinstance(out, dict) else out
    assert logits.shape == (2, 3, 64, 64)
    loss = F.cross_entropy(logits, masks)
    if isinstance(out, dict):
        loss = loss + 0.5 * F.cross_entropy(out["aux"], masks)
    assert math.isfinite(loss.item())
    loss.backward()
    backbone = model.backbone
    frozen = backbone.frozen_stages
    assert len(frozen) == (0 if trainable_stages is None else 5 - trainable_stages)
    for name, param in model.named_parameters():
        assert (param.grad is not None) == param.requires_grad, name
    stems = {"stem": ("conv1.", "bn1."), "layer1": ("layer1.",), "layer2": ("layer2.",)}
    for name, param in backbone.named_parameters():
        in_frozen = any(name.startswith(stems[stage]) for stage in frozen)
        assert param.requires_grad != in_frozen, name


@pytest.mark.parametrize("name", ["test_resnet_bottleneck", "resnet18"])  # Bottleneck and BasicBlock
@pytest.mark.parametrize("arch", ARCHS)
def test_training_step_and_eval_logits(arch: str, name: str) -> None:
    model = build_segmenter(arch, backbone=name, num_classes=3, trainable_stages=3)
    _train_step(model, 3)
    model.eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64)).shape == (1, 3, 64, 64)


@pytest.mark.parametrize("arch", ARCHS)
def test_aux_output_in_training_only(arch: str) -> None:
    model = build_segmenter(arch, backbone="test_resnet", num_classes=3, aux_loss=True)
    assert model.aux_classifier is not None
    assert model.aux_classifier[0].in_channels == model.backbone.feature_info["C4"].channels
    _train_step(model, None)
    out = model.train()(torch.randn(2, 3, 50, 70))
    assert set(out) == {"out", "aux"} and out["aux"].shape == out["out"].shape == (2, 3, 50, 70)
    with torch.no_grad():
        assert model.eval()(torch.randn(2, 3, 50, 70)).shape == (2, 3, 50, 70)


@pytest.mark.parametrize("arch", ARCHS)
def test_logits_at_any_input_size(arch: str) -> None:
    model = build_segmenter(arch, backbone="test_resnet_bottleneck", num_classes=4).eval()
    for size in [(64, 64), (37, 101), (1, 1)]:
        with torch.no_grad():
            assert model(torch.randn(1, 3, *size)).shape == (1, 4, *size)


def _dilations(module: nn.Module) -> set[int]:
    return {m.dilation[0] for m in module.modules() if isinstance(m, nn.Conv2d) and m.dilation[0] > 1}


@pytest.mark.parametrize("name", TINY)
@pytest.mark.parametrize(("output_stride", "rates"), [(16, {6, 12, 18}), (8, {12, 24, 36})])
@pytest.mark.parametrize("arch", ["deeplabv3", "deeplabv3plus"])
def test_output_stride_and_aspp_rates(arch: str, name: str, output_stride: int, rates: set[int]) -> None:
    model = build_segmenter(arch, backbone=name, num_classes=3, output_stride=output_stride)
    assert model.output_stride == output_stride
    assert model.backbone.feature_info["C5"].stride == output_stride
    head = model.classifier if arch == "deeplabv3" else model.model.decoder
    assert _dilations(head) == rates
    assert model.eval()(torch.randn(1, 3, 64, 64)).shape == (1, 3, 64, 64)


def test_in_chans_and_normalisation() -> None:
    model = build_segmenter("deeplabv3plus", backbone="test_resnet", num_classes=2, in_chans=4)
    assert model.in_chans == 4 and len(model.mean) == len(model.std) == 4
    assert model.eval()(torch.randn(1, 4, 64, 64)).shape == (1, 2, 64, 64)


def test_built_backbone_is_used_as_is() -> None:
    backbone = create_backbone("test_resnet", output_stride=8)
    model = build_segmenter("deeplabv3plus", backbone=backbone, num_classes=2, output_stride=8, trainable_stages=2)
    assert model.backbone is backbone and backbone.frozen_stages == ("stem", "layer1", "layer2")
    deeplab = build_segmenter(
        "deeplabv3", backbone=create_backbone("test_resnet", out_levels=("C5",), output_stride=16), num_classes=2
    )
    assert deeplab.backbone.feature_info.names == ("C5",)


def test_bad_input() -> None:
    with pytest.raises(
        ValueError, match="unknown arch 'pspnet'; expected one of 'deeplabv3', 'deeplabv3plus', 'fpn', 'unet'"
    ):
        build_segmenter("pspnet", backbone="test_resnet", num_classes=3)
    with pytest.raises(ValueError, match="num_classes=0 is not valid"):
        build_segmenter("deeplabv3", backbone="test_resnet", num_classes=0)
    with pytest.raises(ValueError, match=r"DeepLabV3\+ \(smp encoder\) needs levels .*C2 missing"):
        build_segmenter(
            "deeplabv3plus",
            backbone=create_backbone("test_resnet", out_levels=("C3", "C4", "C5"), output_stride=16),
            num_classes=3,
        )
    with pytest.raises(ValueError, match=r"DeepLabV3 with aux_loss needs levels \('C4', 'C5'\).*C4 missing"):
        build_segmenter(
            "deeplabv3",
            backbone=create_backbone("test_resnet", out_levels=("C5",), output_stride=16),
            num_classes=3,
            aux_loss=True,
        )
    with pytest.raises(
        ValueError, match=r"needs output_stride=16, but backbone 'test_resnet' was built with output_stride=32"
    ):
        build_segmenter("deeplabv3", backbone=create_backbone("test_resnet"), num_classes=3)
    with pytest.raises(ValueError, match=r"output_stride=16 is not valid for 'fpn': expected one of \(32,\)"):
        build_segmenter("fpn", backbone="test_resnet", num_classes=3, output_stride=16)
    with pytest.raises(
        ValueError, match=r"output_stride=32 is not valid for 'deeplabv3plus': expected one of \(8, 16\)"
    ):
        build_segmenter("deeplabv3plus", backbone="test_resnet", num_classes=3, output_stride=32)
    with pytest.raises(TypeError, match="aux_loss must be True or False"):
        build_segmenter("deeplabv3", backbone="test_resnet", num_classes=3, aux_loss="yes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="not both"):
        build_segmenter("unet", backbone="test_resnet", num_classes=3, weights="a.pth", backbone_weights="b.pth")
    with pytest.raises(ValueError, match="torchvision publishes no 'unet' checkpoint on 'test_resnet'"):
        build_segmenter("unet", backbone="test_resnet", num_classes=3, weights="torchvision:COCO_WITH_VOC_LABELS_V1")


@pytest.mark.parametrize("arch", ["deeplabv3", "unet"])
def test_forward_input_errors(arch: str) -> None:
    model = build_segmenter(arch, backbone="test_resnet", num_classes=3)
    with pytest.raises(ValueError, match=r"takes images of shape \(N, 3, H, W\) .*got \(3, 64, 64\)"):
        model(torch.randn(3, 64, 64))
    with pytest.raises(ValueError, match=r"got \(2, 1, 64, 64\)"):
        model(torch.randn(2, 1, 64, 64))
    with pytest.raises(TypeError, match="takes a Tensor"):
        model([torch.randn(3, 64, 64)])  # type: ignore[arg-type]
    if arch == "deeplabv3":
        with pytest.raises(ValueError, match="batch of at least 2 images"):
            model.train()(torch.randn(1, 3, 64, 64))


@pytest.mark.parametrize("arch", ["deeplabv3", "deeplabv3plus"])  # torchvision's layout and smp's
def test_checkpoint_with_other_num_classes_reinitialises_the_last_layers(arch: str, tmp_path: Path) -> None:
    source = build_segmenter(arch, backbone="test_resnet", num_classes=3, aux_loss=True)
    torch.save(source.state_dict(), tmp_path / "seg.pth")
    model = build_segmenter(arch, backbone="test_resnet", num_classes=5, weights=tmp_path / "seg.pth")
    report = model.load_report
    reinit = {k for k, reason in report.ignored.items() if reason.startswith("class-dependent")}
    assert reinit and all(k.startswith(("classifier.4.", "model.segmentation_head.")) for k in reinit)
    assert any(reason.startswith("auxiliary head not built") for reason in report.ignored.values())
    assert not report.missing and not report.unexpected
    state = model.state_dict()
    for key, value in source.state_dict().items():
        if key in state and key not in reinit:
            assert torch.equal(state[key], value), key
    same = build_segmenter(arch, backbone="test_resnet", num_classes=3, aux_loss=True, weights=source.state_dict())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(same.eval()(x), source.eval()(x))


def test_torchvision_deeplabv3_checkpoint_loads_with_identical_outputs(tmp_path: Path) -> None:
    torch.manual_seed(0)
    reference = torchvision.models.segmentation.deeplabv3_resnet50(
        weights=None, weights_backbone=None, num_classes=4, aux_loss=True
    ).eval()
    torch.save(reference.state_dict(), tmp_path / "deeplab.pth")
    model = build_segmenter(
        "deeplabv3",
        backbone="resnet50",
        num_classes=4,
        aux_loss=True,
        output_stride=8,
        weights=tmp_path / "deeplab.pth",
    )
    assert set(model.load_report.loaded) == set(reference.state_dict()) and model.load_report.ok
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), reference(x)["out"])
