"""Checks that need a CUDA device (marker ``gpu``; deselected by default, skipped without CUDA)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from resbackbone import create_backbone
from resbackbone.engine import Trainer
from resbackbone.heads import build_segmenter
from resbackbone.recipes import load_recipe

from .conftest import REPO_ROOT
from .engine_data import tiny_overrides

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "resnetv2_50"])
def test_backbone_on_cuda_matches_cpu(name: str) -> None:
    backbone = create_backbone(name, output_stride=16).eval()
    x = torch.randn(2, 3, 128, 128)
    with torch.no_grad():
        reference = backbone(x)
        gpu = backbone.cuda().to(memory_format=torch.channels_last)(x.cuda().to(memory_format=torch.channels_last))
        with torch.autocast("cuda", dtype=torch.bfloat16):
            low = backbone(x.cuda())
    for level, ref in reference.items():
        # cuDNN may use TF32 for fp32 convolutions: compare relative to the feature's norm
        assert ((gpu[level].float().cpu() - ref).norm() / ref.norm()) < 5e-3
        assert low[level].dtype == torch.bfloat16
        assert ((low[level].float().cpu() - ref).norm() / ref.norm()) < 0.05


@pytest.mark.parametrize("amp", ["fp16", "bf16"])
@pytest.mark.parametrize("head", ["deeplabv3plus", "faster_rcnn", "retinanet"])
def test_engine_runs_on_cuda_with_amp(head: str, amp: str, tmp_path: Path, session_cache: Path) -> None:
    overrides = [
        *tiny_overrides(tmp_path / "run", backbone="resnet18"),
        f"model.head={head}",
        f"optim.amp={amp}",
        "run.device=cuda",
        "run.channels_last=true",
        "optim.batch_size=4",
        "run.max_steps_per_epoch=3",
    ]
    if head != "deeplabv3plus":
        overrides.append("eval.metric=map50")
    trainer = Trainer(load_recipe(REPO_ROOT / "recipes" / "quickstart.yaml", overrides=overrides), progress=False)
    summary = trainer.fit()
    # fp16: the gradient scaler skips updates whose gradients overflow at its initial scale (2**16),
    # common in a detector's first steps from random weights; those are counted apart, not as steps
    assert summary["steps"] + summary["overflow_steps"] == 3 and summary["device"].startswith("cuda")
    assert amp == "fp16" or summary["overflow_steps"] == 0
    assert all(p.device.type == "cuda" for p in trainer.model.parameters())


@pytest.mark.parametrize("output_stride", [8, 16])
def test_smp_segmenter_on_cuda(output_stride: int) -> None:
    model = build_segmenter("deeplabv3plus", backbone="resnet18", num_classes=3, output_stride=output_stride).cuda()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        logits = model(torch.randn(2, 3, 96, 96, device="cuda"))
    assert logits.shape == (2, 3, 96, 96) and logits.device.type == "cuda"


@pytest.mark.parametrize("method", ["nms", "nmm", "wbf"])
def test_box_merging_on_cuda_matches_cpu(method: str) -> None:
    # test-time augmentation and tiles merge a detector's boxes where it ran: on CUDA, the merged
    # labels were made on the CPU and indexing them failed at the first evaluation of a TTA recipe
    from resbackbone.tiling.merge import merge_detections

    generator = torch.Generator().manual_seed(0)
    xy = torch.rand(40, 2, generator=generator) * 100
    boxes = torch.cat([xy, xy + 10 + torch.rand(40, 2, generator=generator) * 20], dim=1)
    scores = torch.rand(40, generator=generator)
    labels = torch.randint(1, 4, (40,), generator=generator)
    cpu = merge_detections(boxes, scores, labels, method=method, iou=0.5, passes=2)
    gpu = merge_detections(boxes.cuda(), scores.cuda(), labels.cuda(), method=method, iou=0.5, passes=2)
    for key, value in cpu.items():
        assert gpu[key].device.type == "cuda"
        torch.testing.assert_close(gpu[key].cpu(), value)


def test_detection_tta_evaluates_on_cuda(tmp_path: Path, session_cache: Path) -> None:
    overrides = [
        *tiny_overrides(tmp_path / "run", backbone="resnet18"),
        "model.head=faster_rcnn",
        "eval.metric=map50",
        "eval.tta=[hflip, vflip]",
        "run.device=cuda",
        "run.max_steps_per_epoch=2",
    ]
    summary = Trainer(load_recipe(REPO_ROOT / "recipes" / "quickstart.yaml", overrides=overrides), progress=False).fit()
    assert summary["device"].startswith("cuda") and "TTA" in summary["evaluation"]
    assert 0.0 <= summary["best"]["metrics"]["map50"] <= 1.0
