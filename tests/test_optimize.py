from __future__ import annotations

import warnings
from collections import OrderedDict

import pytest
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

import resbackbone
from resbackbone import Backbone, InferenceBackbone, create_backbone, optimize_for_inference
from resbackbone.bench.candidates import randomise_norms
from resbackbone.optimize import inference_backbone

ARCHS = ("test_resnet", "test_resnet_bottleneck", "test_resnetv2")


def _backbone(name: str = "test_resnet", **options: object) -> Backbone:
    backbone = create_backbone(name, **options)
    randomise_norms(backbone, seed=1)  # non-trivial statistics: folding must really be exercised
    return backbone.eval()


def _max_rel_error(out: OrderedDict, ref: OrderedDict) -> float:
    return max(((out[k].float() - ref[k]).abs().max() / ref[k].abs().max()).item() for k in ref)


def test_reexported_from_package() -> None:
    assert resbackbone.optimize_for_inference is optimize_for_inference
    assert "optimize_for_inference" in resbackbone.__all__


@pytest.mark.parametrize("name", ARCHS)
@pytest.mark.parametrize("norm", ["bn", "frozen_bn"])
def test_fp32_matches_eager_within_1e4(name: str, norm: str) -> None:
    weights = create_backbone(name).state_dict() if norm == "frozen_bn" else None
    backbone = _backbone(name, norm=norm, weights=weights)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = backbone(x)
    fast = optimize_for_inference(backbone, compile=False)
    out = fast(x)
    assert list(out) == list(ref)
    assert _max_rel_error(out, ref) < 1e-4
    assert fast.folded_norms > 0


def test_keeps_the_backbone_contract() -> None:
    backbone = _backbone(out_levels=("C3", "C5"), output_stride=16, in_chans=1)
    fast = optimize_for_inference(backbone, compile=False, channels_last=True)
    assert isinstance(fast, InferenceBackbone)
    assert fast.feature_info == backbone.feature_info
    assert fast.out_channels == backbone.out_channels
    assert (fast.in_chans, fast.mean, fast.std, fast.name) == (1, backbone.mean, backbone.std, "test_resnet")
    out = fast(torch.randn(2, 1, 64, 64))
    assert isinstance(out, OrderedDict)
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        level.name: (2, level.channels, 64 // level.stride, 64 // level.stride) for level in backbone.feature_info
    }
    assert out["C5"].is_contiguous(memory_format=torch.channels_last)
    assert out["C5"].is_inference() and not out["C5"].requires_grad


def test_every_conv_norm_pair_is_folded_and_only_preactivation_norms_remain() -> None:
    plain = optimize_for_inference(_backbone("test_resnet_bottleneck"), compile=False)
    assert not [m for m in plain.modules() if isinstance(m, _BatchNorm)]
    preact = optimize_for_inference(_backbone("test_resnetv2"), compile=False)
    left = [name for name, m in preact.named_modules() if isinstance(m, _BatchNorm)]
    assert left and all(name.endswith(("norm1", "norm")) for name in left)


def test_original_backbone_is_untouched() -> None:
    backbone = _backbone().train()
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    optimize_for_inference(backbone, compile=False)
    assert backbone.training
    assert all(torch.equal(before[k], v) for k, v in backbone.state_dict().items())
    assert any(isinstance(m, nn.BatchNorm2d) for m in backbone.modules())


def test_fold_bn_false_folds_nothing_and_still_matches() -> None:
    backbone = _backbone()
    x = torch.randn(1, 3, 64, 64)
    fast = optimize_for_inference(backbone, compile=False, fold_bn=False, channels_last=False)
    assert fast.folded_norms == 0
    with torch.no_grad():
        assert _max_rel_error(fast(x), backbone(x)) < 1e-6


def test_auto_memory_format_is_measured() -> None:
    fast = optimize_for_inference(_backbone(), compile=False, channels_last="auto")
    assert set(fast.memory_format_timings) == {"contiguous", "channels_last"}
    timings = fast.memory_format_timings
    assert fast.channels_last == (timings["contiguous"] > 0.9 * timings["channels_last"])


@pytest.mark.parametrize(("contiguous", "expected"), [(0.5, False), (0.95, True), (2.0, True)])
def test_auto_keeps_channels_last_unless_contiguous_is_clearly_faster(
    contiguous: float, expected: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        inference_backbone, "measure_memory_format", lambda *a: {"contiguous": contiguous, "channels_last": 1.0}
    )
    fast = optimize_for_inference(_backbone(), compile=False, channels_last="auto")
    assert fast.channels_last is expected
    assert fast(torch.randn(1, 3, 64, 64))["C5"].is_contiguous(
        memory_format=torch.channels_last if expected else torch.contiguous_format
    )


def test_bf16_returns_bf16_close_to_reference() -> None:
    backbone = _backbone()
    x = torch.randn(1, 3, 64, 64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # emulated bf16 on CPUs without AVX512-BF16
        fast = optimize_for_inference(backbone, dtype=torch.bfloat16, compile=False, channels_last=True)
    out = fast(x)
    assert all(v.dtype == torch.bfloat16 for v in out.values())
    with torch.no_grad():
        assert _max_rel_error(out, backbone(x)) < 5e-2


def test_compile_is_lazy_and_keeps_the_state_dict_clean() -> None:
    fast = optimize_for_inference(_backbone(), compile=True, channels_last=True)
    assert fast.compiled
    assert not [k for k in fast.state_dict() if "_orig_mod" in k]
    assert all(k.startswith("trunk.") for k in fast.state_dict())


def test_compile_unavailable_falls_back_with_a_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    def unavailable(*args: object, **kwargs: object) -> None:
        raise RuntimeError("Dynamo is not supported on this Python")

    monkeypatch.setattr(torch, "compile", unavailable)
    with pytest.warns(UserWarning, match="torch.compile is unavailable"):
        fast = optimize_for_inference(_backbone(), compile=True, channels_last=True)
    assert not fast.compiled
    assert fast(torch.randn(1, 3, 64, 64))["C5"].shape == (1, 64, 2, 2)


def test_compile_failing_on_first_call_falls_back_to_eager(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: object, **kwargs: object) -> object:
        def run(x: torch.Tensor) -> None:
            raise RuntimeError("no C++ compiler found")

        return run

    monkeypatch.setattr(torch, "compile", broken)
    backbone = _backbone()
    x = torch.randn(1, 3, 64, 64)
    fast = optimize_for_inference(backbone, compile=True, channels_last=True)
    with pytest.warns(UserWarning, match="torch.compile failed.*no C\\+\\+ compiler"):
        out = fast(x)
    assert not fast.compiled
    with torch.no_grad():
        assert _max_rel_error(out, backbone(x)) < 1e-4


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"dtype": torch.int8}, ValueError, r"dtype=torch\.int8 is not supported"),
        ({"channels_last": "yes"}, ValueError, r"channels_last='yes' is not valid"),
        ({"compile": 1}, TypeError, r"compile=1 is not valid"),
    ],
)
def test_bad_options_raise(options: dict, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        optimize_for_inference(_backbone(), **options)


def test_rejects_a_module_that_is_not_a_backbone() -> None:
    with pytest.raises(TypeError, match="takes a resbackbone Backbone, got Conv2d"):
        optimize_for_inference(nn.Conv2d(3, 8, 3))


@pytest.mark.parametrize(
    ("shape", "match"), [((3, 64, 64), r"got \(3, 64, 64\)"), ((1, 4, 64, 64), r"expects input of shape \(N, 3")]
)
def test_wrong_input_shape_raises(shape: tuple[int, ...], match: str) -> None:
    fast = optimize_for_inference(_backbone(), compile=False, channels_last=False)
    with pytest.raises(ValueError, match=match):
        fast(torch.randn(*shape))


@pytest.mark.slow  # inductor compiles C++ kernels: 20–50 s on 2 cores
def test_compiled_fp32_matches_eager_within_1e4() -> None:
    backbone = _backbone()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = backbone(x)
    fast = optimize_for_inference(backbone, compile=True, channels_last=True)
    out = fast(x)
    assert fast.compiled, "compilation fell back to eager"
    assert _max_rel_error(out, ref) < 1e-4
