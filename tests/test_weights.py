from __future__ import annotations

import hashlib
import os
import pickle
from pathlib import Path

import pytest
import timm
import torch
import torchvision
from safetensors.torch import save_file
from torchvision.models.feature_extraction import create_feature_extractor

from resbackbone import create_backbone, list_backbones, load_weights
from resbackbone.registry import get_spec
from resbackbone.weights import DownloadError

from .conftest import _RangeHandler

TORCHVISION_ARCHS = [
    "resnet18", "resnet34", "resnet50", "resnet101", "resnet152",
    "resnext50_32x4d", "resnext101_32x8d", "resnext101_64x4d", "wide_resnet50_2", "wide_resnet101_2",
]  # fmt: skip
RETURN_NODES = {"layer1": "C2", "layer2": "C3", "layer3": "C4", "layer4": "C5"}


def _perturb_norms(model: torch.nn.Module) -> None:
    """Random BN statistics and affine parameters, so a skipped BN key shows in the outputs."""
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            with torch.no_grad():
                m.running_mean.copy_(torch.rand(m.num_features, generator=g) - 0.5)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.rand(m.num_features, generator=g) - 0.5)


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("arch", TORCHVISION_ARCHS)
def test_torchvision_checkpoint_gives_torchvision_features(arch: str, tmp_path: Path) -> None:
    reference = getattr(torchvision.models, arch)()
    _perturb_norms(reference)
    path = tmp_path / f"{arch}.pth"
    torch.save(reference.state_dict(), path)
    backbone = create_backbone(arch, weights=path).eval()
    assert backbone.load_report.ok and set(backbone.load_report.ignored.values()) == {"classifier"}
    extractor = create_feature_extractor(reference.eval(), RETURN_NODES)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ours, theirs = backbone(x), extractor(x)
    for level in RETURN_NODES.values():
        assert _rel_err(ours[level], theirs[level]) <= 1e-5, level


@pytest.mark.parametrize("arch", ["resnet50d", "resnetv2_50"])
def test_timm_checkpoint_gives_timm_features(arch: str, tmp_path: Path) -> None:
    reference = timm.create_model(arch)
    _perturb_norms(reference)
    path = tmp_path / f"{arch}.safetensors"
    save_file(reference.state_dict(), path)
    features = timm.create_model(
        arch, pretrained=True, features_only=True, out_indices=(1, 2, 3, 4),
        pretrained_cfg_overlay={"file": str(path), "hf_hub_id": None, "url": None},
    ).eval()  # fmt: skip
    backbone = create_backbone(arch, weights=path).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ours, theirs = backbone(x), features(x)
    for level, feature in zip(ours.values(), theirs):
        assert _rel_err(level, feature) <= 1e-5


@pytest.fixture
def tiny_checkpoint(tmp_path: Path) -> tuple[dict[str, torch.Tensor], torch.nn.Module]:
    source = create_backbone("test_resnet")
    _perturb_norms(source)
    state = dict(source.state_dict())
    state["fc.weight"] = torch.randn(10, 64)  # a classifier, to be dropped
    state["fc.bias"] = torch.randn(10)
    return state, source.eval()


def _assert_same_features(backbone: torch.nn.Module, source: torch.nn.Module) -> None:
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        for a, b in zip(backbone.eval()(x).values(), source(x).values()):
            torch.testing.assert_close(a, b)


@pytest.mark.parametrize(
    "wrap",
    [
        pytest.param(lambda s: s, id="plain"),
        pytest.param(lambda s: {f"module.{k}": v for k, v in s.items()}, id="module."),
        pytest.param(lambda s: {f"model.{k}": v for k, v in s.items()}, id="model."),
        pytest.param(lambda s: {f"encoder.{k}": v for k, v in s.items()}, id="encoder."),
        pytest.param(lambda s: {"state_dict": {f"backbone.{k}": v for k, v in s.items()}, "epoch": 3}, id="lightning"),
        pytest.param(
            lambda s: {
                "model": {**{f"backbone.body.{k}": v for k, v in s.items()}, "rpn.head.conv.weight": torch.ones(1)}
            },
            id="detector",
        ),
    ],
)
def test_wrapped_checkpoints_load(wrap, tiny_checkpoint, tmp_path: Path) -> None:
    state, source = tiny_checkpoint
    path = tmp_path / "ckpt.pth"
    torch.save(wrap(state), path)
    backbone = create_backbone("test_resnet", weights=str(path))
    _assert_same_features(backbone, source)
    assert backbone.weights == str(path)
    assert (
        backbone.load_report.ignored[
            "fc.weight" if not backbone.load_report.prefix else backbone.load_report.prefix + "fc.weight"
        ]
        == "classifier"
    )


def test_safetensors_and_state_dict_sources(tiny_checkpoint, tmp_path: Path) -> None:
    state, source = tiny_checkpoint
    path = tmp_path / "ckpt.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, path)
    _assert_same_features(create_backbone("test_resnet", weights=path), source)
    _assert_same_features(create_backbone("test_resnet", weights=state), source)


def test_report_lists_missing_and_unexpected_keys(tiny_checkpoint, tmp_path: Path) -> None:
    state, _ = tiny_checkpoint
    broken = dict(state)
    del broken["layer2.0.conv1.weight"]
    broken["layer2.0.extra.weight"] = torch.ones(3)
    path = tmp_path / "broken.pth"
    torch.save(broken, path)
    with pytest.raises(ValueError, match=r"1 missing \(layer2\.0\.conv1\.weight\); 1 unexpected \(layer2\.0\.extra"):
        create_backbone("test_resnet", weights=path)
    backbone = create_backbone("test_resnet")
    report = load_weights(backbone, path, strict=False)
    assert report.missing == ("layer2.0.conv1.weight",) and report.unexpected == ("layer2.0.extra.weight",)


def test_checkpoint_of_another_architecture(tmp_path: Path) -> None:
    path = tmp_path / "other.pth"
    torch.save(create_backbone("test_resnet_bottleneck").state_dict(), path)
    with pytest.raises(ValueError, match=r"does not fit backbone 'test_resnet'.*another architecture"):
        create_backbone("test_resnet", weights=path)
    torch.save({"encoder.weight": torch.ones(3)}, path)
    with pytest.raises(ValueError, match=r"none of its 1 keys match"):
        create_backbone("test_resnet", weights=path)


def test_pruned_stages_ignore_their_keys(tiny_checkpoint) -> None:
    state, _ = tiny_checkpoint
    backbone = create_backbone("test_resnet", weights=state, out_levels=("C2", "C3"))
    assert backbone.load_report.ignored["layer4.0.conv1.weight"] == "removed stage"


def test_group_norm_loads_affine_and_ignores_statistics(tiny_checkpoint) -> None:
    state, _ = tiny_checkpoint
    backbone = create_backbone("test_resnet", weights=state, norm="gn")
    torch.testing.assert_close(backbone.layer1[0].bn1.weight, state["layer1.0.bn1.weight"])
    assert backbone.load_report.ignored["layer1.0.bn1.running_mean"] == "batch-norm statistics unused by this norm"


def test_one_channel_input_sums_rgb_filters(tiny_checkpoint) -> None:
    state, source = tiny_checkpoint
    gray = create_backbone("test_resnet", weights=state, in_chans=1).eval()
    assert gray.load_report.adapted == ("conv1.0.weight",)
    x = torch.randn(1, 1, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(gray(x)["C5"], source(x.repeat(1, 3, 1, 1))["C5"], rtol=1e-4, atol=1e-5)
    assert gray.mean == (pytest.approx(sum(source.mean) / 3),)


def test_many_channel_input_tiles_filters(tiny_checkpoint) -> None:
    state, _ = tiny_checkpoint
    backbone = create_backbone("test_resnet", weights=state, in_chans=5)
    w = backbone.conv1[0].weight
    torch.testing.assert_close(w[:, :3], state["conv1.0.weight"] * 3 / 5)
    torch.testing.assert_close(w[:, 3:], state["conv1.0.weight"][:, :2] * 3 / 5)
    assert len(backbone.mean) == 5 and backbone.mean[3] == backbone.mean[0]


class _Exploit:
    def __reduce__(self):
        return (os.system, ("echo pwned > /tmp/resbackbone-pwned",))


def _classification_checkpoint(name: str) -> dict[str, torch.Tensor]:
    """What a classification run of the architecture saves: the trunk with its classifier."""
    spec = get_spec(name)
    if spec.timm_name:
        return timm.create_model(spec.timm_name, pretrained=False, num_classes=10).state_dict()
    return spec.builder(in_chans=3, output_stride=32, drop_path_rate=0.0).state_dict()


@pytest.mark.parametrize("name", list_backbones(include_hidden=True))
def test_own_checkpoint_loads_with_one_and_four_input_channels(name: str) -> None:
    """The registry's first conv and classifier are right for every architecture: the RGB filters are
    adapted, exactly the classifier is dropped, and nothing else moves."""
    state = _classification_checkpoint(name)
    for in_chans in (1, 4):
        backbone = create_backbone(name, in_chans=in_chans, weights=state)
        conv = f"{backbone.first_conv}.weight"
        classifier = {k for k in state if k.startswith(backbone.classifier)}
        report = backbone.load_report
        assert report.ok and report.adapted == (conv,), report
        assert report.ignored == dict.fromkeys(classifier, "classifier"), report
        assert classifier or get_spec(name).timm_name is None  # a published architecture has one
        weight = backbone.state_dict()[conv]
        if in_chans == 1:
            torch.testing.assert_close(weight, state[conv].sum(1, keepdim=True))
        else:  # tiled and rescaled by 3/4, so activations keep their scale
            torch.testing.assert_close(weight, torch.cat([state[conv], state[conv][:, :1]], 1) * 0.75)


@pytest.mark.parametrize("name", list_backbones(include_hidden=True))
def test_registry_table_agrees_with_the_built_trunk(name: str) -> None:
    """What the table records is what would be inferred from the module: it is data, not a guess."""
    from resbackbone.stages import describe_stem, find_first_conv, unstaged_children

    spec = get_spec(name)
    with torch.device("meta"):
        trunk = spec.builder(in_chans=3, output_stride=32, drop_path_rate=0.0)
        backbone = create_backbone(name)
    assert spec.classifier == unstaged_children(trunk, spec.stages)
    assert spec.first_conv == find_first_conv(backbone, spec.stages[0], name)
    assert spec.stem == describe_stem(backbone, spec.stages[0])


def test_plug_in_first_conv_is_found_in_its_stem() -> None:
    from torch import nn

    from resbackbone import StageSpec, register_backbone, unregister_backbone

    class Trunk(nn.Module):
        def __init__(self, in_chans: int) -> None:
            super().__init__()
            self.stem = nn.Sequential(nn.Identity(), nn.Conv2d(in_chans, 4, 3, stride=4, padding=1))
            self.s1, self.s2, self.s3, self.s4 = (nn.Conv2d(c, c, 3, stride=2, padding=1) for c in (4, 4, 4, 4))
            self.classify = nn.Linear(4, 2)

    stages = (StageSpec("stem", ("stem",)), *(StageSpec(f"s{i}", (f"s{i}",), f"C{i + 1}") for i in range(1, 5)))
    register_backbone("resnext_like_plugin", stages=stages)(
        lambda *, in_chans, output_stride, drop_path_rate: Trunk(in_chans)
    )
    try:
        state = Trunk(3).state_dict()
        backbone = create_backbone("resnext_like_plugin", in_chans=1, weights=state)
        assert backbone.first_conv == "stem.1" and backbone.load_report.adapted == ("stem.1.weight",)
        assert backbone.classifier == ("classify.",) and backbone.stem_type == "1 convolution (3x3)"
        assert backbone.load_report.ignored == {"classify.weight": "classifier", "classify.bias": "classifier"}
    finally:
        unregister_backbone("resnext_like_plugin")


def test_a_key_the_backbone_has_loads_whatever_its_prefix() -> None:
    """A plug-in whose stem is named like a classifier ('head') loads it: nothing is left random."""
    from torch import nn

    from resbackbone import StageSpec, register_backbone, unregister_backbone

    class Trunk(nn.Module):
        def __init__(self, in_chans: int) -> None:
            super().__init__()
            self.head = nn.Sequential(nn.Conv2d(in_chans, 4, 3, stride=4, padding=1))
            self.s1, self.s2, self.s3, self.s4 = (nn.Conv2d(4, 4, 3, stride=2, padding=1) for _ in range(4))

    stages = (StageSpec("stem", ("head",)), *(StageSpec(f"s{i}", (f"s{i}",), f"C{i + 1}") for i in range(1, 5)))
    register_backbone("head_named_stem", stages=stages, classifier=("head.",))(
        lambda *, in_chans, output_stride, drop_path_rate: Trunk(in_chans)
    )
    try:
        state = create_backbone("head_named_stem").state_dict()
        backbone = create_backbone("head_named_stem", weights=state)
        assert "head.0.weight" in backbone.load_report.loaded and not backbone.load_report.ignored
        torch.testing.assert_close(backbone.state_dict()["head.0.weight"], state["head.0.weight"])
        with pytest.raises(ValueError, match=r"2 missing \(head\.0\.weight, head\.0\.bias\)"):
            create_backbone("head_named_stem", weights={k: v for k, v in state.items() if not k.startswith("head.")})
    finally:
        unregister_backbone("head_named_stem")


def test_pickle_that_runs_code_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"conv1.weight": _Exploit()}, f)
    with pytest.raises(ValueError, match=r"Refused to load .*evil\.pth.*weights_only=True"):
        create_backbone("test_resnet", weights=path)
    assert not Path("/tmp/resbackbone-pwned").exists()


def test_not_a_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "notes.pth"
    path.write_text("hello")
    with pytest.raises(ValueError, match=r"notes\.pth"):
        create_backbone("test_resnet", weights=path)


@pytest.mark.parametrize(
    ("weights", "match"),
    [
        ("missing/file.pth", r"'missing/file\.pth': no such file"),
        ("imagenett", r"not a weight string for 'resnet18': expected 'imagenet'"),
        (
            "torchvision:IMAGENET1K_V3",
            r"not a torchvision weight of 'resnet18'; choose one of 'torchvision:IMAGENET1K_V1'",
        ),
        ("timm:nope", r"not a timm weight of 'resnet18'; choose one of .*'timm:a1_in1k'"),
        ("https://example.com/w.pth", r"must carry the file's sha256"),
    ],
)
def test_bad_weight_strings(weights: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        create_backbone("resnet18", weights=weights)


def test_torchvision_weights_for_timm_only_arch() -> None:
    with pytest.raises(ValueError, match="torchvision publishes no weights for 'resnet50d'"):
        create_backbone("resnet50d", weights="torchvision:IMAGENET1K_V1")


def test_url_weights_download_verify_and_cache(tiny_checkpoint, http_server, torch_home: Path) -> None:
    state, source = tiny_checkpoint
    base, served = http_server
    torch.save(state, served / "tiny.pth")
    digest = hashlib.sha256((served / "tiny.pth").read_bytes()).hexdigest()
    url = f"{base}/tiny.pth#sha256={digest}"
    _assert_same_features(create_backbone("test_resnet", weights=url), source)
    cached = torch_home / "hub" / "checkpoints" / "tiny.pth"
    assert cached.is_file()
    create_backbone("test_resnet", weights=url)
    assert _RangeHandler.requests == ["/tiny.pth"], "the second load must come from the cache"


def test_url_weights_wrong_hash_leaves_no_file(tiny_checkpoint, http_server, torch_home: Path) -> None:
    state, _ = tiny_checkpoint
    base, served = http_server
    torch.save(state, served / "tiny.pth")
    with pytest.raises(ValueError, match=r"expected f{64}"):
        create_backbone("test_resnet", weights=f"{base}/tiny.pth#sha256={'f' * 64}")
    folder = torch_home / "hub" / "checkpoints"
    assert not folder.exists() or list(folder.iterdir()) == []


def test_failed_download_names_where_to_put_the_file(torch_home: Path) -> None:
    with pytest.raises(DownloadError, match=r"place it at .*checkpoints/w\.pth or pass the local file path"):
        create_backbone("test_resnet", weights=f"http://127.0.0.1:9/w.pth#sha256={'a' * 64}")


def test_imagenet_alias_uses_torchvision_cache(torch_home: Path) -> None:
    """Offline use: a file placed where torchvision caches it is picked up without a download."""
    reference = torchvision.models.resnet18()
    _perturb_norms(reference)
    url = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url
    cached = torch_home / "hub" / "checkpoints" / url.rsplit("/", 1)[1]
    cached.parent.mkdir(parents=True)
    torch.save(reference.state_dict(), cached)
    backbone = create_backbone("resnet18", weights="imagenet")
    assert backbone.weights == "imagenet (torchvision:IMAGENET1K_V1)"
    torch.testing.assert_close(backbone.conv1.weight, reference.conv1.weight)
    assert backbone.mean == (0.485, 0.456, 0.406)


def test_timm_weights_download_from_hub_endpoint(http_server, torch_home: Path, monkeypatch) -> None:
    """timm tags download model.safetensors from the Hugging Face endpoint (here a local server)."""
    base, served = http_server
    monkeypatch.setenv("HF_ENDPOINT", base)
    monkeypatch.setenv("HF_HUB_CACHE", str(torch_home / "hf"))
    reference = timm.create_model("resnet18")
    _perturb_norms(reference)
    target = served / "timm" / "resnet18.a1_in1k" / "resolve" / "main"
    target.mkdir(parents=True)
    save_file(reference.state_dict(), target / "model.safetensors")
    backbone = create_backbone("resnet18", weights="timm:a1_in1k")
    torch.testing.assert_close(backbone.layer4[1].bn2.running_var, reference.layer4[1].bn2.running_var)
    assert (torch_home / "hub" / "checkpoints" / "timm--resnet18.a1_in1k.safetensors").is_file()
    assert backbone.mean == tuple(get_spec("resnet18").imagenet.mean)
