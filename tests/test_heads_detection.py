"""FPN, Faster R-CNN and RetinaNet on registered backbones, torchvision checkpoints included."""

from __future__ import annotations

import hashlib
import math
from pathlib import Path
from typing import Any

import pytest
import torch
import torchvision
from torch import Tensor, nn
from torchvision.models.detection import FasterRCNN, MaskRCNN, RetinaNet
from torchvision.models.detection.anchor_utils import AnchorGenerator

from resbackbone import Backbone, build_detector, build_fpn, create_backbone

TINY = ["test_resnet", "test_resnet_bottleneck"]
STEM = ("conv1.", "bn1.")  # the stem of timm's ResNet, frozen with layer1 by trainable_stages=3


def _images(size: int = 64) -> list[Tensor]:
    torch.manual_seed(0)
    return [torch.rand(3, size, size + 16), torch.rand(3, size + 8, size)]


def _targets(masks: bool = False) -> list[dict[str, Tensor]]:
    boxes = [torch.tensor([[4.0, 6.0, 40.0, 50.0]]), torch.tensor([[10.0, 12.0, 50.0, 60.0], [0.0, 0.0, 20.0, 24.0]])]
    labels = [torch.tensor([1]), torch.tensor([2, 1])]
    targets = [{"boxes": b, "labels": lb} for b, lb in zip(boxes, labels)]
    if masks:
        for target, size in zip(targets, [(64, 80), (72, 64)]):
            mask = torch.zeros(len(target["boxes"]), *size, dtype=torch.uint8)
            for i, (x0, y0, x1, y1) in enumerate(target["boxes"].int().tolist()):
                mask[i, y0:y1, x0:x1] = 1
            target["masks"] = mask
    return targets


# Fewer proposals and sampled RoIs than torchvision's defaults keep a step fast on 2 CPU cores.
LIGHT = {
    "rpn_pre_nms_top_n_train": 200,
    "rpn_post_nms_top_n_train": 100,
    "rpn_pre_nms_top_n_test": 100,
    "rpn_post_nms_top_n_test": 50,
    "box_batch_size_per_image": 64,
    "box_detections_per_img": 10,
}


def _lighten(model: nn.Module) -> nn.Module:
    """The LIGHT settings on a built Faster R-CNN (torchvision keeps them in these attributes)."""
    if isinstance(model, FasterRCNN):
        model.rpn._pre_nms_top_n = {"training": 200, "testing": 100}
        model.rpn._post_nms_top_n = {"training": 100, "testing": 50}
        model.roi_heads.fg_bg_sampler.batch_size_per_image = 64
    return model


def _train_step(model: nn.Module, backbone: Backbone, masks: bool = False) -> dict[str, Tensor]:
    model.train()
    losses = model(_images(), _targets(masks))
    total = sum(losses.values())
    assert all(math.isfinite(v.item()) for v in losses.values()), losses
    total.backward()
    for name, param in backbone.named_parameters():
        assert (param.grad is not None) == param.requires_grad, name
    assert any(p.grad is not None for n, p in model.named_parameters() if not n.startswith("backbone.body."))
    return losses


def _check_detections(model: nn.Module, num_classes: int) -> None:
    model.eval()
    with torch.no_grad():
        out = model(_images())
    assert len(out) == 2
    for det in out:
        assert det["boxes"].shape[1:] == (4,)
        assert det["scores"].shape == det["labels"].shape == det["boxes"].shape[:1]
        assert det["labels"].numel() == 0 or int(det["labels"].max()) < num_classes


# ---------------------------------------------------------------- build_fpn


@pytest.mark.parametrize("name", [*TINY, "resnet18"])
@pytest.mark.parametrize("extra", ["maxpool", "p6p7", "p6p7_c5", None])
def test_fpn_keys_channels_and_sizes_follow_the_backbone(name: str, extra: str | None) -> None:
    backbone = create_backbone(
        name, out_levels=("C3", "C4", "C5") if extra and "p6" in extra else ("C2", "C3", "C4", "C5")
    )
    fpn = build_fpn(backbone, out_channels=32, extra_blocks=extra)
    assert [m.in_channels for m in fpn.fpn.inner_blocks.modules() if isinstance(m, nn.Conv2d)] == list(
        backbone.feature_info.channels
    )
    with torch.no_grad():
        out = fpn(torch.randn(1, 3, 128, 128))
    names = [str(i) for i in range(len(backbone.feature_info))]
    names += {"maxpool": ["pool"], "p6p7": ["p6", "p7"], "p6p7_c5": ["p6", "p7"], None: []}[extra]
    assert list(out) == names == list(fpn.strides)
    for key, value in out.items():
        assert value.shape == (1, 32, math.ceil(128 / fpn.strides[key]), math.ceil(128 / fpn.strides[key])), key
    if extra == "p6p7_c5":  # P6 reads C5, whose width comes from feature_info
        assert fpn.fpn.extra_blocks.p6.in_channels == backbone.feature_info["C5"].channels
        assert not fpn.fpn.extra_blocks.use_P5


def test_fpn_norm_and_levels() -> None:
    backbone = create_backbone("test_resnet")
    fpn = build_fpn(backbone, norm="gn", levels=("C4", "C5"), extra_blocks=None)
    assert any(isinstance(m, nn.GroupNorm) for m in fpn.modules())
    assert list(fpn(torch.randn(1, 3, 64, 64))) == ["0", "1"]
    assert fpn.strides == {"0": 16, "1": 32}


def test_fpn_bad_input() -> None:
    backbone = create_backbone("test_resnet")
    with pytest.raises(TypeError, match="takes a resbackbone Backbone"):
        build_fpn(nn.Conv2d(3, 8, 3))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"extra_blocks='p5'.*expected one of"):
        build_fpn(backbone, extra_blocks="p5")
    with pytest.raises(ValueError, match="norm='ln'"):
        build_fpn(backbone, norm="ln")
    with pytest.raises(ValueError, match="out_channels=0"):
        build_fpn(backbone, out_channels=0)
    with pytest.raises(ValueError, match=r"subset of the levels .*got \('C2', 'C6'\)"):
        build_fpn(backbone, levels=("C2", "C6"))
    with pytest.raises(ValueError, match="output_stride=32"):
        build_fpn(create_backbone("test_resnet", output_stride=16))


# ---------------------------------------------------------------- torchvision-style user code


@pytest.mark.parametrize("name", TINY)
def test_user_code_faster_rcnn(name: str) -> None:
    backbone = create_backbone(name, trainable_stages=3)
    model = FasterRCNN(build_fpn(backbone, out_channels=64), num_classes=3, min_size=64, max_size=96, **LIGHT)
    _train_step(model, backbone)
    _check_detections(model, 3)


@pytest.mark.parametrize("name", TINY)
def test_user_code_mask_rcnn(name: str) -> None:
    backbone = create_backbone(name, trainable_stages=3)
    model = MaskRCNN(build_fpn(backbone, out_channels=64), num_classes=3, min_size=64, max_size=96, **LIGHT)
    losses = _train_step(model, backbone, masks=True)
    assert "loss_mask" in losses
    model.eval()
    with torch.no_grad():
        out = model(_images())
    assert out[0]["masks"].shape[1:] == (1, 64, 80)


@pytest.mark.parametrize("name", TINY)
def test_user_code_retinanet(name: str) -> None:
    backbone = create_backbone(name, out_levels=("C3", "C4", "C5"), trainable_stages=3)
    anchors = AnchorGenerator(
        tuple((s, int(s * 1.26), int(s * 1.59)) for s in (32, 64, 128, 256, 512)), ((0.5, 1.0, 2.0),) * 5
    )
    model = RetinaNet(
        build_fpn(backbone, out_channels=64, extra_blocks="p6p7"),
        num_classes=3,
        anchor_generator=anchors,
        min_size=64,
        max_size=96,
    )
    _train_step(model, backbone)
    _check_detections(model, 3)


# ---------------------------------------------------------------- build_detector


@pytest.mark.parametrize("arch", ["faster_rcnn", "retinanet"])
@pytest.mark.parametrize("name", ["test_resnet_bottleneck", "resnet18"])  # Bottleneck and BasicBlock
def test_build_detector_trains_and_detects(arch: str, name: str) -> None:
    model = _lighten(build_detector(arch, backbone=name, num_classes=3, min_size=64, max_size=96))
    assert isinstance(model, FasterRCNN if arch == "faster_rcnn" else RetinaNet)
    body = model.backbone.body
    assert body.frozen_stages == ("stem", "layer1")
    assert body.feature_info.names == (("C2", "C3", "C4", "C5") if arch == "faster_rcnn" else ("C3", "C4", "C5"))
    _train_step(model, body)
    for name_, param in body.named_parameters():
        assert param.requires_grad != name_.startswith((*STEM, "layer1.")), name_
    _check_detections(model, 3)


def test_build_detector_anchors_follow_a_built_backbone() -> None:
    backbone = create_backbone("test_resnet", out_levels=("C3", "C4", "C5"))
    model = build_detector(
        "faster_rcnn", backbone=backbone, num_classes=3, min_size=64, max_size=64, trainable_stages=5
    )
    assert model.backbone.body is backbone
    assert model.rpn.anchor_generator.sizes == ((64,), (128,), (256,), (512,))
    assert model.roi_heads.box_roi_pool.featmap_names == ["0", "1", "2"]
    _train_step(_lighten(model), backbone)
    retina = build_detector(
        "retinanet",
        backbone="test_resnet",
        num_classes=2,
        anchor_sizes=[(16,), (32,), (64,), (128,), (256,)],
        aspect_ratios=[(1.0,)],
    )
    assert retina.anchor_generator.num_anchors_per_location() == [1] * 5
    assert retina.head.classification_head.num_anchors == 1


def _small_faster_rcnn(**kwargs: Any) -> FasterRCNN:
    return build_detector("faster_rcnn", backbone="test_resnet", num_classes=3, min_size=64, max_size=64, **kwargs)


def test_build_detector_passes_head_options_to_torchvision() -> None:
    model = _small_faster_rcnn(box_batch_size_per_image=64, rpn_post_nms_top_n_train=300)
    assert model.roi_heads.fg_bg_sampler.batch_size_per_image == 64
    assert model.rpn._post_nms_top_n["training"] == 300
    retina = build_detector("retinanet", backbone="test_resnet", num_classes=3, topk_candidates=100)
    assert retina.topk_candidates == 100
    with pytest.raises(TypeError, match=r"'box_batch_size_per_img' .*Did you mean 'box_batch_size_per_image'\?"):
        build_detector("faster_rcnn", backbone="test_resnet", num_classes=3, box_batch_size_per_img=64)
    with pytest.raises(TypeError, match=r"'box_roi_pool' is not an option of torchvision's FasterRCNN"):
        build_detector("faster_rcnn", backbone="test_resnet", num_classes=3, box_roi_pool=None)
    with pytest.raises(TypeError, match=r"'rpn_nms_thresh' is not an option of torchvision's RetinaNet"):
        build_detector("retinanet", backbone="test_resnet", num_classes=3, rpn_nms_thresh=0.5)


def test_build_detector_on_c3_c5_with_a_narrow_fpn() -> None:
    model = _small_faster_rcnn(levels=("C3", "C4", "C5"), fpn_channels=32, anchor_sizes=[(16,), (32,), (64,), (128,)])
    body = model.backbone.body
    assert body.feature_info.names == ("C3", "C4", "C5")
    assert model.backbone.out_channels == 32
    assert model.roi_heads.box_roi_pool.featmap_names == ["0", "1", "2"]
    assert model.roi_heads.box_head.fc6.in_features == 32 * 7 * 7
    _train_step(_lighten(model), body)
    _check_detections(model, 3)
    with pytest.raises(ValueError, match=r"RetinaNet uses C3–C5"):
        build_detector("retinanet", backbone="test_resnet", num_classes=3, levels=("C2", "C3", "C4", "C5"))
    with pytest.raises(ValueError, match=r"levels=\('C6',\) is not valid"):
        build_detector("faster_rcnn", backbone="test_resnet", num_classes=3, levels=("C6",))
    with pytest.raises(ValueError, match=r"Faster R-CNN needs levels \('C2', 'C3'\).*C2 missing"):
        build_detector(
            "faster_rcnn",
            backbone=create_backbone("test_resnet", out_levels=("C3", "C4")),
            num_classes=3,
            levels=("C2", "C3"),
        )
    with pytest.raises(ValueError, match="out_channels=0 is not valid"):
        build_detector("faster_rcnn", backbone="test_resnet", num_classes=3, fpn_channels=0)


def test_build_detector_narrows_the_box_head() -> None:
    narrow = {"levels": ("C3", "C4", "C5"), "fpn_channels": 32}
    model = _small_faster_rcnn(**narrow, box_head_width=48)
    head, predictor = model.roi_heads.box_head, model.roi_heads.box_predictor
    assert (head.fc6.in_features, head.fc6.out_features, head.fc7.out_features) == (32 * 7 * 7, 48, 48)
    assert (predictor.cls_score.in_features, predictor.cls_score.out_features) == (48, 3)
    assert predictor.bbox_pred.out_features == 3 * 4
    _train_step(_lighten(model), model.backbone.body)
    assert head.fc6.weight.grad is not None and predictor.cls_score.weight.grad is not None
    _check_detections(model, 3)
    # its own checkpoint reloads; one with torchvision's 1024-wide head does not fit, and says where
    again = _small_faster_rcnn(**narrow, box_head_width=48, weights=model.state_dict())
    assert torch.equal(again.roi_heads.box_head.fc6.weight, head.fc6.weight)
    wide = _small_faster_rcnn(**narrow).state_dict()
    with pytest.raises(ValueError, match=r"roi_heads\.box_head\.fc6\.weight.*FPN or box head width"):
        _small_faster_rcnn(**narrow, box_head_width=48, weights=wide)
    with pytest.raises(ValueError, match=r"box_head_width=0 is not valid: expected an int ≥ 1"):
        _small_faster_rcnn(box_head_width=0)
    with pytest.raises(ValueError, match=r"box_head_width=512 applies to Faster R-CNN's box head only; RetinaNet"):
        build_detector("retinanet", backbone="test_resnet", num_classes=3, box_head_width=512)


def test_build_detector_adapts_in_chans() -> None:
    model = build_detector("faster_rcnn", backbone="test_resnet", num_classes=3, in_chans=1, min_size=64, max_size=64)
    assert model.backbone.body.in_chans == 1
    assert len(model.transform.image_mean) == len(model.transform.image_std) == 1
    model.eval()
    with torch.no_grad():
        out = model([torch.rand(1, 64, 64)])
    assert out[0]["boxes"].shape[1:] == (4,)
    with pytest.raises(ValueError, match=r"images\[0\] is \(3, 64, 64\); this detector takes \(1, H, W\)"):
        model([torch.rand(3, 64, 64)])


def test_build_detector_bad_input() -> None:
    with pytest.raises(ValueError, match="unknown arch 'mask_rcnn'; expected one of 'faster_rcnn', 'retinanet'"):
        build_detector("mask_rcnn", backbone="test_resnet", num_classes=3)
    with pytest.raises(ValueError, match="num_classes=0 is not valid"):
        build_detector("faster_rcnn", backbone="test_resnet", num_classes=0)
    with pytest.raises(TypeError, match="registry name such as 'resnet50' or a resbackbone Backbone"):
        build_detector("faster_rcnn", backbone=nn.Identity(), num_classes=3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"RetinaNet needs levels \('C3', 'C4', 'C5'\).*C3 missing"):
        build_detector("retinanet", backbone=create_backbone("test_resnet", out_levels=("C4", "C5")), num_classes=3)
    with pytest.raises(ValueError, match=r"output_stride=32.*built with output_stride=16"):
        build_detector("faster_rcnn", backbone=create_backbone("test_resnet", output_stride=16), num_classes=3)
    with pytest.raises(ValueError, match="in_chans=3 but backbone 'test_resnet' takes 1-channel"):
        build_detector("faster_rcnn", backbone=create_backbone("test_resnet", in_chans=1), num_classes=3)
    with pytest.raises(ValueError, match="anchor_sizes has 2 entries but the pyramid has 5 maps"):
        build_detector("faster_rcnn", backbone="test_resnet", num_classes=3, anchor_sizes=[(32,), (64,)])
    with pytest.raises(ValueError, match="same number on every map"):
        build_detector(
            "faster_rcnn",
            backbone="test_resnet",
            num_classes=3,
            anchor_sizes=[(32,), (64,), (128,), (256,), (512, 600)],
        )
    with pytest.raises(ValueError, match="not both"):
        build_detector("faster_rcnn", backbone="test_resnet", num_classes=3, weights="a.pth", backbone_weights="b.pth")
    with pytest.raises(ValueError, match="max_size=10 is not valid"):
        build_detector("faster_rcnn", backbone="test_resnet", num_classes=3, min_size=64, max_size=10)
    with pytest.raises(ValueError, match=r"names backbone weights.*backbone_weights='imagenet'"):
        build_detector("faster_rcnn", backbone="test_resnet", num_classes=3, weights="imagenet")
    with pytest.raises(ValueError, match=r"no 'faster_rcnn' checkpoint on 'test_resnet'.*backbone='resnet50'"):
        build_detector("faster_rcnn", backbone="test_resnet", num_classes=3, weights="torchvision:COCO_V1")


def test_detector_input_errors() -> None:
    model = build_detector("faster_rcnn", backbone="test_resnet", num_classes=3, min_size=64, max_size=64)
    targets = _targets()
    targets[1]["labels"] = torch.tensor([3, 1])
    with pytest.raises(
        ValueError, match=r"targets\[1\]\['labels'\] holds 3.*labels must be in 1…2 \(0 is the background\)"
    ):
        model(_images(), targets)
    model.eval()
    with pytest.raises(ValueError, match=r"images\[0\] is \(4, 64, 64\)"):
        model([torch.rand(4, 64, 64)])


# ---------------------------------------------------------------- detector checkpoints


def test_retinanet_checkpoint_with_other_num_classes_reinitialises_the_classifier(tmp_path: Path) -> None:
    source = build_detector("retinanet", backbone="test_resnet_bottleneck", num_classes=4, min_size=64, max_size=64)
    torch.save({"model": source.state_dict()}, tmp_path / "retina.pth")  # nested, as training scripts save it
    model = build_detector(
        "retinanet", backbone="test_resnet_bottleneck", num_classes=7, weights=tmp_path / "retina.pth"
    )
    report = model.load_report
    reinit = {k for k, reason in report.ignored.items() if reason.startswith("class-dependent")}
    assert reinit == {"head.classification_head.cls_logits.weight", "head.classification_head.cls_logits.bias"}
    assert not report.missing and not report.unexpected
    state = model.state_dict()
    for key, value in source.state_dict().items():
        if key not in reinit and not key.endswith("num_batches_tracked"):
            assert torch.equal(state[key], value), key
    assert model.head.classification_head.cls_logits.out_channels == 9 * 7
    assert isinstance(model.backbone.body.bn1, torchvision.ops.FrozenBatchNorm2d)  # pretrained: frozen, as torchvision
    gray = build_detector(
        "retinanet", backbone="test_resnet_bottleneck", num_classes=4, in_chans=1, weights=source.state_dict()
    )
    assert gray.load_report.adapted == ("backbone.body.conv1.0.weight",)
    assert gray.transform.image_mean == [sum(source.transform.image_mean) / 3]


def test_checkpoint_of_another_layout_is_refused(tmp_path: Path) -> None:
    source = build_detector("faster_rcnn", backbone="test_resnet", num_classes=3)
    state = source.state_dict()
    del state["rpn.head.conv.0.0.weight"]
    with pytest.raises(ValueError, match=r"does not fit this FasterRCNN: .*1 missing \(rpn.head.conv.0.0.weight\)"):
        build_detector("faster_rcnn", backbone="test_resnet", num_classes=3, weights=state)
    with pytest.raises(ValueError, match="does not fit backbone 'test_resnet_bottleneck'"):
        build_detector("faster_rcnn", backbone="test_resnet_bottleneck", num_classes=3, weights=source.state_dict())


@pytest.fixture(scope="module")
def fasterrcnn_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, nn.Module]:
    """A checkpoint saved from torchvision's own fasterrcnn_resnet50_fpn, and that model."""
    torch.manual_seed(0)
    model = torchvision.models.detection.fasterrcnn_resnet50_fpn(
        weights=None, weights_backbone=None, min_size=128, max_size=128
    )
    with torch.no_grad():  # spread the class scores so that eval keeps detections to compare
        model.roi_heads.box_predictor.cls_score.bias.normal_(0.0, 3.0)
    path = tmp_path_factory.mktemp("tv") / "fasterrcnn.pth"
    torch.save(model.state_dict(), path)
    return path, model.eval()


def test_torchvision_fasterrcnn_checkpoint_loads_with_identical_outputs(
    fasterrcnn_checkpoint: tuple[Path, nn.Module],
) -> None:
    path, reference = fasterrcnn_checkpoint
    model = build_detector("faster_rcnn", backbone="resnet50", num_classes=91, weights=path, min_size=128, max_size=128)
    report = model.load_report
    assert report.ok and not report.missing and not report.mismatched
    assert set(report.loaded) == set(reference.state_dict())
    model.eval()
    images = [torch.rand(3, 128, 160)]
    with torch.no_grad():
        expected, got = reference(images), model(images)
    assert len(expected[0]["boxes"]) > 0
    for key in ("boxes", "scores", "labels"):
        torch.testing.assert_close(got[0][key], expected[0][key])


def test_coco_v1_weight_string_downloads_verifies_and_loads(
    fasterrcnn_checkpoint: tuple[Path, nn.Module],
    http_server: tuple[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    path, reference = fasterrcnn_checkpoint
    data = path.read_bytes()
    name = f"fasterrcnn_resnet50_fpn_coco-{hashlib.sha256(data).hexdigest()[:8]}.pth"  # torchvision's naming
    base, root = http_server
    (root / name).write_bytes(data)
    member = torchvision.models.get_model_weights("fasterrcnn_resnet50_fpn").COCO_V1
    monkeypatch.setattr(member.value, "url", f"{base}/{name}")  # only where the enum points
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))

    model = build_detector("faster_rcnn", backbone="resnet50", num_classes=3, weights="torchvision:COCO_V1")
    assert (tmp_path / "torch_home" / "hub" / "checkpoints" / name).read_bytes() == data
    report = model.load_report
    assert "torchvision:COCO_V1" in report.source and not report.missing and not report.unexpected
    reinit = sorted(k for k, reason in report.ignored.items() if reason.startswith("class-dependent"))
    assert reinit == [
        f"roi_heads.box_predictor.{layer}.{p}" for layer in ("bbox_pred", "cls_score") for p in ("bias", "weight")
    ]
    torch.testing.assert_close(
        model.backbone.fpn.layer_blocks[0][0].weight, reference.backbone.fpn.layer_blocks[0][0].weight
    )
    assert model.roi_heads.box_predictor.cls_score.out_features == 3

    (root / name).write_bytes(
        data[:1000] + bytes([data[1000] ^ 0xFF]) + data[1001:]
    )  # a corrupted mirror is refused by the hash in the file name
    (tmp_path / "torch_home" / "hub" / "checkpoints" / name).unlink()
    with pytest.raises(ValueError, match=r"has sha256 .*expected"):
        build_detector("faster_rcnn", backbone="resnet50", num_classes=3, weights="torchvision:COCO_V1")
    with pytest.raises(
        ValueError,
        match=r"build_detector\(\): 'torchvision:COCO_V2' is not a torchvision weight of fasterrcnn_resnet50_fpn; "
        r"choose one of 'torchvision:COCO_V1'",
    ):
        build_detector("faster_rcnn", backbone="resnet50", num_classes=3, weights="torchvision:COCO_V2")
