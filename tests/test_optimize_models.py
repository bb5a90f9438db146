"""optimize_model: the fast copy of a whole segmenter or detector answers as the model does."""

from __future__ import annotations

import warnings

import pytest
import torch

from resbackbone import build_detector, build_segmenter
from resbackbone.bench.candidates import randomise_norms
from resbackbone.export.checks import detection_cap
from resbackbone.export.parity import match_detections
from resbackbone.optimize import CompileFallbackWarning, optimize_model
from resbackbone.optimize import models as fast_models


def _segmenter() -> torch.nn.Module:
    model = build_segmenter("deeplabv3plus", backbone="test_resnet", num_classes=3)
    randomise_norms(model, seed=1)  # statistics unlike a fresh network's: folding must really be exercised
    return model.eval()


def _detector(arch: str) -> torch.nn.Module:
    model = build_detector(arch, backbone="test_resnet", num_classes=3, min_size=64, max_size=96, score_thresh=0.0)
    randomise_norms(model, seed=1)
    return model.eval()


def test_segmenter_copy_matches_eager_pads_small_batches_and_leaves_the_model_alone() -> None:
    model = _segmenter()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        reference = model(x)
    fast = optimize_model(model, dtype="float32", compile=False, channels_last=True)
    out = fast(x)
    assert out.dtype == torch.float32 and out.shape == reference.shape
    assert ((out - reference).abs().max() / reference.abs().max()).item() < 1e-4
    small = fast(x[:1])  # padded to the first batch's size inside, sliced back
    assert small.shape == (1, *reference.shape[1:])
    assert torch.allclose(small, reference[:1], rtol=1e-4, atol=1e-4 * reference.abs().max().item())
    settings = fast.fast_settings
    assert settings["dtype"] == "float32" and settings["channels_last"] is True and settings["compiled"] is False
    assert settings["folded_norms"] > 0
    assert not model.training and all(p.requires_grad for p in model.parameters())
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize("arch", ["faster_rcnn", "retinanet"])
def test_detector_copy_finds_the_boxes_eager_finds(arch: str) -> None:
    model = _detector(arch)
    images = [torch.rand(3, 64, 80, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    with torch.no_grad():
        reference = model(images)
    fast = optimize_model(model, dtype="float32", compile=False, channels_last=False)
    assert fast.fast_settings["folded_norms"] > 0
    out = fast(images)
    assert len(out) == len(reference)
    for ref, got in zip(reference, out, strict=True):
        assert len(ref["boxes"]) > 0
        match = match_detections(
            tuple(ref[k].numpy() for k in ("boxes", "scores", "labels")),
            tuple(got[k].numpy() for k in ("boxes", "scores", "labels")),
            cap=detection_cap(model),
        )
        assert match.missed == 0 and match.extra == 0, match


def test_a_compile_that_fails_at_its_first_call_falls_back_and_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    def compiled_that_fails(module: torch.nn.Module, mode: str | None = None):
        def run(x: torch.Tensor) -> torch.Tensor:
            raise RuntimeError("inductor: no C++ compiler")

        return run

    monkeypatch.setattr(fast_models, "compile_frozen", compiled_that_fails)
    model = _segmenter()
    fast = optimize_model(model, dtype="float32", compile=True, channels_last=False)
    assert fast.fast_settings["compiled"] is True  # asked for and set up; not yet run
    x = torch.randn(2, 3, 64, 64)
    with pytest.warns(CompileFallbackWarning, match="no C\\+\\+ compiler"):
        out = fast(x)
    assert fast.fast_settings["compiled"] is False and fast.compiled is False
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("error")  # the eager run does not warn again
        assert torch.allclose(fast(x), model(x), rtol=1e-4, atol=1e-4)
    assert torch.allclose(out, model(x).detach(), rtol=1e-4, atol=1e-4)


def test_something_that_is_neither_a_segmenter_nor_a_detector_is_refused() -> None:
    with pytest.raises(TypeError, match="takes a segmenter or detector"):
        optimize_model(torch.nn.Conv2d(3, 3, 1))
    from torchvision.models.detection import FCOS

    fcos = FCOS(_detector("retinanet").backbone, num_classes=3)  # a torchvision detector it does not know
    with pytest.raises(TypeError, match=r"Faster R-CNN, RetinaNet\), got FCOS"):
        optimize_model(fcos)
