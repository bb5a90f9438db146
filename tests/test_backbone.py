from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
from torch import nn

from resbackbone import LEVELS, create_backbone, list_backbones

ALL = list_backbones(include_hidden=True)
TINY = ["test_resnet", "test_resnet_bottleneck", "test_resnetv2"]


def _device_for(name: str) -> str:
    # Large architectures run on the meta device: real shapes from the real
    # modules, without initialising or computing a hundred million weights.
    return "cpu" if name in TINY or name == "resnet18" else "meta"


@pytest.mark.parametrize("name", ALL)
def test_feature_info_matches_real_shapes_at_every_output_stride(name: str) -> None:
    for output_stride in (8, 16, 32):
        with torch.device(_device_for(name)):
            backbone = create_backbone(name, output_stride=output_stride).eval()
            x = torch.randn(1, 3, 64, 64)
        with torch.no_grad():
            out = backbone(x)
        assert list(out) == list(LEVELS)
        for level in backbone.feature_info:
            feature = out[level.name]
            assert feature.shape[1] == level.channels, (name, output_stride, level)
            assert 64 // feature.shape[-1] == level.stride, (name, output_stride, level)
            assert level.stride == min(output_stride, {"C2": 4, "C3": 8, "C4": 16, "C5": 32}[level.name])
        assert backbone.out_channels == {lv.name: lv.channels for lv in backbone.feature_info}


@pytest.mark.parametrize("name", ["resnet18", "resnet34"])
def test_basic_block_depths_dilate(name: str) -> None:
    backbone = create_backbone(name, output_stride=8, out_levels=("C5",)).eval()
    with torch.no_grad():
        assert backbone(torch.randn(1, 3, 64, 64))["C5"].shape == (1, 512, 8, 8)


def test_module_names_follow_torchvision() -> None:
    names = {n for n, _ in create_backbone("resnet18").named_children()}
    assert {"conv1", "bn1", "layer1", "layer2", "layer3", "layer4"} <= names
    assert "fc" not in names


@pytest.mark.parametrize("levels", [("C2",), ("C3", "C4"), ("C4",), ("C3", "C4", "C5")])
def test_out_levels_returned_in_order_and_stops_early(levels: tuple[str, ...]) -> None:
    backbone = create_backbone("test_resnet", out_levels=levels)
    out = backbone(torch.randn(2, 3, 64, 64))
    assert isinstance(out, OrderedDict) and tuple(out) == levels
    assert backbone.feature_info.names == levels
    deepest = int(levels[-1][1])
    present = {n for n, _ in backbone.named_children()}
    assert f"layer{deepest - 1}" in present and f"layer{deepest}" not in present


def test_stop_early_computes_nothing_past_the_deepest_level() -> None:
    backbone = create_backbone("test_resnet", out_levels=("C3",))
    ran = []
    for name, module in backbone.named_modules():
        if name.count(".") == 0 and name:
            module.register_forward_hook(lambda m, i, o, name=name: ran.append(name))
    backbone(torch.randn(1, 3, 64, 64))
    assert "layer3" not in ran and "layer4" not in ran and ran[-1] == "layer2"


def test_v2_stop_early_prunes_stages() -> None:
    backbone = create_backbone("test_resnetv2", out_levels=("C2", "C3"))
    assert len(backbone.stages) == 2
    assert tuple(backbone(torch.randn(1, 3, 64, 64))) == ("C2", "C3")


@pytest.mark.parametrize(
    ("option", "value", "match"),
    [
        ("out_levels", ("C1",), r"'C1' is not a level"),
        ("out_levels", ("C6", "C5"), r"'C6' is not a level"),
        ("out_levels", (), "non-empty subset"),
        ("out_levels", ("C3", "C3"), "names a level twice"),
        ("output_stride", 4, r"output_stride=4 is not valid: expected one of \(8, 16, 32\)"),
        ("output_stride", 16.0, r"output_stride=16.0 is not valid"),
        ("in_chans", 0, r"in_chans=0 is not valid"),
        ("norm", "batchnorm", r"norm='batchnorm' is not valid: expected one of"),
        ("trainable_stages", 6, r"trainable_stages=6 is not valid.*0 \(all frozen\) to 5"),
        ("trainable_stages", -1, r"trainable_stages=-1"),
        ("drop_path_rate", 1.5, r"drop_path_rate=1.5 is not valid"),
    ],
)
def test_bad_options_raise_clear_errors(option: str, value: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        create_backbone("test_resnet", **{option: value})


def test_unknown_keyword_raises_instead_of_being_dropped() -> None:
    with pytest.raises(TypeError, match="weight"):
        create_backbone("test_resnet", weight="imagenet")  # type: ignore[call-arg]


def test_frozen_bn_with_random_weights_is_refused() -> None:
    with pytest.raises(ValueError, match=r"norm='frozen_bn' with weights=None.*Pass pretrained weights"):
        create_backbone("test_resnet", norm="frozen_bn")


@pytest.mark.parametrize(
    ("x", "match"),
    [
        (torch.randn(3, 64, 64), r"expects input of shape \(N, 3, H, W\), got \(3, 64, 64\).*unsqueeze"),
        (torch.randn(1, 1, 64, 64), r"got \(1, 1, 64, 64\).*in_chans=1"),
    ],
)
def test_wrong_input_rank_or_channels(x: torch.Tensor, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        create_backbone("test_resnet")(x)


def _frozen_counts(name: str, trainable_stages: int | None) -> tuple[int, int]:
    with torch.device("meta"):
        backbone = create_backbone(name, trainable_stages=trainable_stages)
    frozen = sum(p.numel() for p in backbone.parameters() if not p.requires_grad)
    return frozen, sum(p.numel() for p in backbone.parameters())


def _stage_params(name: str) -> list[int]:
    with torch.device("meta"):
        backbone = create_backbone(name)
    stem = sum(p.numel() for n in ("conv1", "bn1") for p in getattr(backbone, n).parameters())
    return [stem] + [sum(p.numel() for p in getattr(backbone, f"layer{i}").parameters()) for i in range(1, 5)]


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_frozen_parameter_counts_per_trainable_stages(name: str) -> None:
    stem, l1, l2, l3, l4 = _stage_params(name)
    total = stem + l1 + l2 + l3 + l4
    expected_frozen = {
        None: 0,
        5: 0,
        4: stem,
        3: stem + l1,
        2: stem + l1 + l2,
        1: stem + l1 + l2 + l3,
        0: total,
    }
    for trainable, frozen in expected_frozen.items():
        assert _frozen_counts(name, trainable) == (frozen, total), trainable


def test_resnet18_frozen_table_numbers() -> None:
    # Hard numbers for one architecture, so that a change of counting is noticed.
    assert _frozen_counts("resnet18", 3) == (9536 + 147968, 11176512)
    assert _frozen_counts("resnet18", 0) == (11176512, 11176512)


def test_frozen_norms_stay_in_eval_and_get_no_gradient() -> None:
    backbone = create_backbone("test_resnet", trainable_stages=2)
    backbone.train()
    assert not backbone.bn1.training and not backbone.layer1[0].bn1.training and not backbone.layer2[0].bn1.training
    assert backbone.layer3[0].bn1.training and backbone.layer4[0].bn1.training
    before = backbone.layer1[0].bn1.running_mean.clone()
    out = backbone(torch.randn(2, 3, 64, 64))
    sum(o.mean() for o in out.values()).backward()
    assert torch.equal(before, backbone.layer1[0].bn1.running_mean), "frozen BN statistics changed"
    assert all(p.grad is None for p in backbone.layer1.parameters())
    assert all(p.grad is not None for p in backbone.layer4.parameters())
    assert backbone.frozen_stages == ("stem", "layer1", "layer2")


def test_gn_norm_replaces_batch_norm() -> None:
    backbone = create_backbone("test_resnet", norm="gn")
    assert not any(isinstance(m, nn.BatchNorm2d) for m in backbone.modules())
    assert any(isinstance(m, nn.GroupNorm) for m in backbone.modules())
    backbone(torch.randn(1, 3, 64, 64))["C5"].sum().backward()


def test_gn_norm_for_preactivation() -> None:
    backbone = create_backbone("test_resnetv2", norm="gn")
    assert not any(isinstance(m, nn.BatchNorm2d) for m in backbone.modules())
    assert backbone(torch.randn(1, 3, 64, 64))["C5"].shape[1] == backbone.feature_info["C5"].channels


def test_sync_bn_norm() -> None:
    backbone = create_backbone("test_resnet", norm="sync_bn")
    assert any(isinstance(m, nn.SyncBatchNorm) for m in backbone.modules())


def test_frozen_bn_with_weights(tmp_path) -> None:
    source = create_backbone("test_resnet")
    path = tmp_path / "w.pth"
    torch.save(source.state_dict(), path)
    backbone = create_backbone("test_resnet", norm="frozen_bn", weights=path)
    from torchvision.ops import FrozenBatchNorm2d

    assert any(isinstance(m, FrozenBatchNorm2d) for m in backbone.modules())
    assert not any(isinstance(m, nn.BatchNorm2d) for m in backbone.modules())
    source.eval()
    x = torch.randn(1, 3, 64, 64)
    torch.testing.assert_close(backbone.train()(x)["C5"], source(x)["C5"])


ALL_STAGES = ("stem", "C2", "C3", "C4", "C5")


@pytest.mark.parametrize("name", TINY)
@pytest.mark.parametrize(
    ("enable", "trainable_stages", "reentrant", "drop_path_rate"),
    [(True, None, True, 0.0), (ALL_STAGES, None, True, 0.5), (ALL_STAGES, 3, True, 0.0), (ALL_STAGES, 3, False, 0.5)],
)
def test_grad_checkpointing_gives_same_gradients(
    name: str, enable: object, trainable_stages: int | None, reentrant: bool, drop_path_rate: float
) -> None:
    # trainable_stages=3: the input of C3 does not require grad, the case reentrant checkpointing cannot take;
    # drop path: the recomputation must draw the same random masks as the forward
    x = torch.randn(2, 3, 64, 64)
    grads = []
    for checkpointing in (False, enable):
        torch.manual_seed(0)
        backbone = create_backbone(name, trainable_stages=trainable_stages, drop_path_rate=drop_path_rate)
        backbone.set_grad_checkpointing(checkpointing, reentrant=reentrant)
        torch.manual_seed(1)
        sum(o.square().mean() for o in backbone(x).values()).backward()
        grads.append([p.grad for p in backbone.parameters() if p.requires_grad])
    assert all(g is not None for g in grads[1]), "a checkpointed stage lost its parameters' gradients"
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-6)


def _saved_bytes(backbone: nn.Module, x: torch.Tensor) -> int:
    """Bytes of activations the forward keeps for backward, parameters aside.

    Only the innermost saved-tensor hooks see a tensor: inside a non-reentrant
    checkpoint, those are the checkpoint's own, so what it keeps is not counted.
    Reentrant checkpoints (every block here, the input requiring grad) save
    their inputs through these hooks, and the checkpointed stem's are kept by
    the first block's reentrant checkpoint.
    """
    weights = {p.untyped_storage().data_ptr() for p in backbone.parameters()}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        if t.untyped_storage().data_ptr() not in weights:
            seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        backbone(x)
    return sum(seen.values())


@pytest.mark.parametrize("name", ["resnet18", "test_resnetv2"])
def test_grad_checkpointing_keeps_less_for_backward(name: str) -> None:
    x = torch.randn(2, 3, 64, 64)
    torch.manual_seed(0)
    backbone = create_backbone(name)
    plain = _saved_bytes(backbone, x)
    backbone.set_grad_checkpointing(True)
    default = _saved_bytes(backbone, x)
    backbone.set_grad_checkpointing(ALL_STAGES)
    every = _saved_bytes(backbone, x)
    assert every < default < 0.5 * plain


@pytest.mark.parametrize(
    ("output_stride", "expected"),
    [(32, ("stem", "layer1", "layer2")), (8, ("stem", "layer1", "layer2", "layer3", "layer4"))],
)
def test_grad_checkpointing_default_takes_the_fine_stages(output_stride: int, expected: tuple[str, ...]) -> None:
    backbone = create_backbone("test_resnet", output_stride=output_stride, grad_checkpointing=True)
    assert backbone.checkpoint_stages == expected and backbone.grad_checkpointing is True
    backbone.set_grad_checkpointing(["C4", "stem"])
    assert backbone.checkpoint_stages == ("stem", "layer3") and backbone.grad_checkpointing == ("C4", "stem")
    backbone.set_grad_checkpointing(False)
    assert backbone.checkpoint_stages == () and not backbone.grad_checkpointing
    backbone.grad_checkpointing = True  # timm-style assignment goes through the method
    assert backbone.checkpoint_stages == expected


def test_grad_checkpointing_lists_only_stages_that_run() -> None:
    backbone = create_backbone("test_resnet", out_levels=("C2", "C3"), output_stride=8, grad_checkpointing=True)
    assert backbone.checkpoint_stages == ("stem", "layer1", "layer2")


def test_grad_checkpointing_names_an_unknown_stage() -> None:
    with pytest.raises(ValueError, match=r"\['C6'\] name no stage of 'test_resnet'.*'layer1', 'C2'"):
        create_backbone("test_resnet", grad_checkpointing=["C2", "C6"])
    with pytest.raises(TypeError, match=r"grad_checkpointing=None is not valid: expected True, False or a list"):
        create_backbone("test_resnet", grad_checkpointing=None)


def test_drop_path_rate_reaches_the_blocks() -> None:
    backbone = create_backbone("resnet18", drop_path_rate=0.2)
    rates = [m.drop_prob for m in backbone.modules() if type(m).__name__ == "DropPath"]
    assert rates and max(rates) == pytest.approx(0.2, abs=0.05)


def test_in_chans_without_weights() -> None:
    backbone = create_backbone("test_resnet", in_chans=1)
    assert backbone(torch.randn(1, 1, 64, 64))["C5"].shape[1] == 64
    assert len(backbone.mean) == 1 and len(backbone.std) == 1


def test_every_norm_create_backbone_takes_has_a_converter() -> None:
    from resbackbone.norms import NORM_CONVERTERS
    from resbackbone.specs import NORMS

    assert tuple(NORM_CONVERTERS) == NORMS
