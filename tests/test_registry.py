from __future__ import annotations

import pytest
import torch
from timm.models.resnet import BasicBlock, ResNet

import resbackbone
from resbackbone import create_backbone, list_backbones, register_backbone, unregister_backbone
from resbackbone.registry import get_spec

from .plugin_backbones import plain_backbone

REQUIRED = [
    "resnet18", "resnet34", "resnet50", "resnet101", "resnet152",
    "resnext50_32x4d", "resnext101_32x8d", "resnext101_64x4d",
    "wide_resnet50_2", "wide_resnet101_2", "resnet50d", "resnet101d",
    "resnetv2_50", "resnetv2_101",
]  # fmt: skip


def test_required_backbones_are_registered() -> None:
    assert set(REQUIRED) <= set(list_backbones())


def test_test_architectures_hidden_by_default() -> None:
    assert not [n for n in list_backbones() if n.startswith("test_")]
    assert {"test_resnet", "test_resnet_bottleneck", "test_resnetv2"} <= set(list_backbones(include_hidden=True))


def test_listing_is_natural_sorted_and_filtered() -> None:
    assert list_backbones("resnet1*") == ["resnet18", "resnet101", "resnet101d", "resnet152"]
    assert list_backbones("resnext*") == ["resnext50_32x4d", "resnext101_32x8d", "resnext101_64x4d"]
    assert list_backbones("nothing*") == []


def test_unknown_name_suggests_close_matches() -> None:
    with pytest.raises(ValueError, match=r"Unknown backbone 'resnet5'\. Close matches: 'resnet50'"):
        create_backbone("resnet5")
    with pytest.raises(TypeError, match="must be a string"):
        get_spec(50)  # type: ignore[arg-type]


def test_every_builtin_records_imagenet_weights() -> None:
    for name in list_backbones():
        spec = get_spec(name)
        assert spec.imagenet is not None, name
        assert spec.imagenet.licence and len(spec.imagenet.mean) == 3


def test_register_custom_backbone_and_duplicate_raises() -> None:
    @register_backbone("resnet10_custom", description="ResNet-10")
    def resnet10(*, in_chans: int, output_stride: int, drop_path_rate: float) -> ResNet:
        return ResNet(
            BasicBlock,
            [1, 1, 1, 1],
            in_chans=in_chans,
            output_stride=output_stride,
            drop_path_rate=drop_path_rate,
            num_classes=0,
        )

    try:
        assert "resnet10_custom" in list_backbones()
        out = create_backbone("resnet10_custom")(torch.randn(1, 3, 64, 64))
        assert out["C5"].shape == (1, 512, 2, 2)
        with pytest.raises(ValueError, match="already registered"):
            register_backbone("resnet10_custom")(resnet10)
    finally:
        unregister_backbone("resnet10_custom")
    assert "resnet10_custom" not in list_backbones()


def test_custom_module_with_declared_stages_is_measured() -> None:
    with plain_backbone("plain_custom") as name:
        backbone = create_backbone(name)
        assert backbone.feature_info.channels == (6, 8, 10, 12)
        assert backbone.feature_info.strides == (4, 8, 16, 32)
    assert name not in list_backbones()


def test_builder_of_unknown_class_without_stages_is_refused() -> None:
    register_backbone("opaque_custom")(lambda **_: torch.nn.Conv2d(3, 3, 1))
    try:
        with pytest.raises(TypeError, match=r"stages cannot be inferred.*stages="):
            create_backbone("opaque_custom")
    finally:
        unregister_backbone("opaque_custom")


def test_invalid_registry_name() -> None:
    with pytest.raises(ValueError, match="not valid"):
        register_backbone("bad name!")


def test_entry_point_plugins_load_lazily(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A real installed distribution (dist-info on sys.path) registers through the entry-point group."""
    import resbackbone.registry as registry

    (tmp_path / "demo_plugin.py").write_text(
        "from resbackbone import register_backbone, get_spec\n"
        "CALLS = []\n"
        "def register():\n"
        "    CALLS.append(1)\n"
        "    register_backbone('plugin_resnet')(get_spec('test_resnet').builder)\n"
    )
    dist = tmp_path / "demo_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: demo-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(f"[{registry.ENTRY_POINT_GROUP}]\ndemo = demo_plugin:register\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(registry, "_entry_points_loaded", False)
    try:
        assert "plugin_resnet" in list_backbones()
        list_backbones()
        import demo_plugin

        assert demo_plugin.CALLS == [1], "plugins load once"
        assert create_backbone("plugin_resnet").feature_info.channels == (8, 16, 32, 64)
    finally:
        unregister_backbone("plugin_resnet")


def test_public_api_exports() -> None:
    for name in ("create_backbone", "list_backbones", "register_backbone", "load_weights", "Backbone", "LoadReport"):
        assert name in resbackbone.__all__ and hasattr(resbackbone, name)
