"""Registered backbones as segmentation_models_pytorch encoders: the contract and user code written the smp way."""

from __future__ import annotations

from pathlib import Path

import pytest
import segmentation_models_pytorch as smp
import torch
from torch import nn

from resbackbone import create_backbone, list_backbones
from resbackbone.heads.smp import ResBackboneEncoder, register_smp_encoders

TINY = ["test_resnet", "test_resnet_bottleneck"]


@pytest.fixture(autouse=True)
def _registered(monkeypatch: pytest.MonkeyPatch) -> None:
    register_smp_encoders()

    def no_hub(*args: object, **kwargs: object) -> None:
        raise AssertionError("smp's hub download was called")

    monkeypatch.setattr(smp.encoders, "hf_hub_download", no_hub)


def test_registration_covers_the_registry_and_is_idempotent() -> None:
    names = register_smp_encoders()
    assert names == ["rb-" + n for n in list_backbones(include_hidden=True)]
    entry = smp.encoders.encoders["rb-resnet50"]
    assert register_smp_encoders() == names
    assert smp.encoders.encoders["rb-resnet50"]["params"] == entry["params"] == {"backbone": "resnet50"}
    assert set(names) <= set(smp.encoders.get_encoder_names())
    routed = smp.encoders.get_encoder
    register_smp_encoders()
    assert smp.encoders.get_encoder is routed  # not wrapped twice
    assert register_smp_encoders("mine-")[0].startswith("mine-")
    assert smp.Unet("mine-test_resnet", encoder_weights=None, classes=2)(torch.randn(1, 3, 64, 64)).shape == (
        1,
        2,
        64,
        64,
    )
    assert smp.Unet("resnet18", encoder_weights=None).encoder.__class__.__name__ == "ResNetEncoder"  # smp's own


def test_bad_prefix_and_clashes() -> None:
    for prefix in ("", "tu-", "timm-x"):
        with pytest.raises(ValueError, match=r"prefix=.* is not valid"):
            register_smp_encoders(prefix)
    with pytest.raises(ValueError, match="'se_resnet50' is one of smp's own encoders"):
        register_smp_encoders("se_")
    assert "se_resnet18" not in smp.encoders.encoders  # nothing registered
    with pytest.raises(TypeError, match="takes no extra options; got typo_option"):
        smp.Unet("rb-test_resnet", encoder_weights=None, typo_option=1)


@pytest.mark.parametrize("name", [*TINY, "resnet18"])
@pytest.mark.parametrize("output_stride", [8, 16])
def test_user_code_deeplabv3plus(name: str, output_stride: int) -> None:
    model = smp.DeepLabV3Plus(
        encoder_name=f"rb-{name}", encoder_weights=None, encoder_output_stride=output_stride, classes=3
    )
    encoder = model.encoder
    assert isinstance(encoder, ResBackboneEncoder)
    info = encoder.backbone.feature_info
    assert encoder.output_stride == encoder.backbone.output_stride == info["C5"].stride == output_stride
    assert encoder.out_channels[2:] == list(info.channels)
    model.train()
    out = model(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, 3, 64, 64)
    out.mean().backward()
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("name", TINY)
@pytest.mark.parametrize("arch", [smp.Unet, smp.FPN, smp.DeepLabV3])
def test_user_code_other_smp_models(name: str, arch: type[nn.Module]) -> None:
    model = arch(f"rb-{name}", encoder_weights=None, classes=2, in_channels=1)
    assert model.encoder.backbone.in_chans == 1
    assert model.eval()(torch.randn(1, 1, 64, 96)).shape == (1, 2, 64, 96)


def test_issue_example_resnet50() -> None:
    model = smp.DeepLabV3Plus(encoder_name="rb-resnet50", encoder_weights=None)
    assert model.encoder.out_channels == [3, 64, 256, 512, 1024, 2048]
    assert model.eval()(torch.randn(1, 3, 64, 64)).shape == (1, 1, 64, 64)


@pytest.mark.parametrize("name", TINY)
@pytest.mark.parametrize("depth", [1, 3, 4, 5])
def test_encoder_contract_depth_and_shapes(name: str, depth: int) -> None:
    encoder = ResBackboneEncoder(name, depth=depth)
    features = encoder(torch.randn(2, 3, 64, 64))
    assert len(features) == len(encoder.out_channels) == depth + 1
    assert [f.shape[1] for f in features] == encoder.out_channels
    assert [f.shape[-1] for f in features] == [64 // 2**i for i in range(depth + 1)]
    assert encoder.output_stride == min(32, 2**depth)
    with pytest.raises(ValueError, match="depth=6 is not valid"):
        ResBackboneEncoder(name, depth=6)


def test_make_dilated_rebuilds_with_the_backbones_own_dilation() -> None:
    torch.manual_seed(0)
    encoder = ResBackboneEncoder("test_resnet_bottleneck")
    encoder.backbone.set_trainable_stages(2)
    encoder.backbone.set_grad_checkpointing(True)
    state = {k: v.clone() for k, v in encoder.backbone.state_dict().items()}
    encoder.make_dilated(8)
    assert encoder.output_stride == 8 and encoder.backbone.feature_info["C5"].stride == 8
    assert encoder.backbone.trainable_stages == 2
    # True means the stages at stride 8 or finer, which now include C4 and C5
    assert encoder.backbone.checkpoint_stages == ("stem", "layer1", "layer2", "layer3", "layer4")
    reference = create_backbone("test_resnet_bottleneck", output_stride=8, weights=state).eval()
    x = torch.randn(1, 3, 64, 64)
    torch.testing.assert_close(encoder.eval()(x)[-1], reference(x)["C5"])
    encoder.make_dilated(8)  # no-op
    with pytest.raises(ValueError, match="Output stride should be 8, 16 or 32, got 12"):
        encoder.make_dilated(12)


def test_set_in_channels_adapts_the_first_conv() -> None:
    encoder = ResBackboneEncoder("test_resnet")
    rgb = encoder.backbone.get_submodule("conv1.0").weight.detach().clone()
    encoder.set_in_channels(1, pretrained=True)
    assert encoder.out_channels[0] == 1 and encoder.backbone.in_chans == 1
    torch.testing.assert_close(encoder.backbone.get_submodule("conv1.0").weight, rgb.sum(1, keepdim=True))
    assert len(encoder.backbone.mean) == 1
    assert encoder(torch.randn(1, 1, 64, 64))[1].shape == (1, 16, 32, 32)
    with pytest.raises(ValueError, match="only RGB filters can be adapted"):
        encoder.set_in_channels(4)


def test_smps_own_registry_path_uses_make_dilated_and_set_in_channels() -> None:
    smp_get_encoder = smp.encoders.get_encoder.__wrapped__  # smp's function, reading the encoders dict
    encoder = smp_get_encoder("rb-test_resnet", in_channels=2, depth=5, weights=None, output_stride=16)
    assert isinstance(encoder, ResBackboneEncoder)
    assert encoder.out_channels[0] == 2 and encoder.output_stride == 16
    assert [f.shape[-1] for f in encoder(torch.randn(1, 2, 64, 64))] == [64, 32, 16, 8, 4, 4]
    with pytest.raises(ValueError, match="never smp hub weights"):
        smp_get_encoder("rb-test_resnet", weights="imagenet")


def test_encoder_weights_are_resbackbone_weight_strings(tmp_path: Path) -> None:
    source = create_backbone("test_resnet")
    torch.save(source.state_dict(), tmp_path / "tiny.pth")
    model = smp.Unet("rb-test_resnet", encoder_weights=str(tmp_path / "tiny.pth"), classes=2)
    for key, value in source.state_dict().items():
        assert torch.equal(model.encoder.backbone.state_dict()[key], value), key
    assert model.encoder.backbone.weights == str(tmp_path / "tiny.pth")
    with pytest.raises(ValueError, match="'test_resnet' records no ImageNet checkpoint"):
        smp.Unet("rb-test_resnet")  # smp's default encoder_weights="imagenet" is resolved by resbackbone
    with pytest.raises(ValueError, match="is not a weight string for 'test_resnet'"):
        smp.Unet("rb-test_resnet", encoder_weights="instagram")


def test_built_backbone_must_have_the_levels() -> None:
    with pytest.raises(ValueError, match=r"returns \('C3', 'C4', 'C5'\).*C2 missing"):
        ResBackboneEncoder(create_backbone("test_resnet", out_levels=("C3", "C4", "C5")))
    with pytest.raises(ValueError, match="has output_stride=16, not 32"):
        ResBackboneEncoder(create_backbone("test_resnet", output_stride=16))
