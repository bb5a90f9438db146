"""Training speed settings (``optim.amp: auto``, ``run.channels_last: auto``, ``run.compile``, ``run.malloc``)
and ``best.pt``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from resbackbone.engine import Trainer
from resbackbone.engine import acceleration as acc
from resbackbone.engine.checkpoint import BEST_FORMAT, load_checkpoint, load_model, resume_state
from resbackbone.optimize import native_low_precision, prefers_bf16
from resbackbone.recipes import RecipeError, load_recipe

from .conftest import REPO_ROOT
from .engine_data import tiny_overrides

MEASURE = acc.measure_training_steps  # the real one, kept from the tests that time fakes


def _recipe(tmp_path: Path, *extra: str) -> object:
    return load_recipe(
        REPO_ROOT / "recipes" / "quickstart.yaml",
        overrides=[*tiny_overrides(tmp_path / "run"), "run.overlays=0", "optim.epochs=1", *extra],
    )


@pytest.mark.parametrize(("faster", "expected"), [(False, "none"), (True, "bf16")], ids=["fp32-faster", "bf16-faster"])
def test_amp_auto_is_bf16_only_where_it_is_faster(faster: bool, expected: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(acc, "prefers_bf16", lambda device: faster)
    assert acc.resolve_amp("auto", torch.device("cpu")) == expected
    assert acc.resolve_amp("none", torch.device("cpu")) == "none"
    assert acc.resolve_amp("bf16", torch.device("cpu")) == "bf16"


def test_amp_auto_is_fp32_on_a_cpu_without_native_bf16() -> None:
    """The check is made on the machine, not assumed of a CPU: oneDNN capped at AVX2 (``ONEDNN_MAX_CPU_ISA``)
    computes no bf16 natively, whatever the processor underneath has."""
    code = (
        "import torch; from resbackbone.engine.acceleration import resolve_amp; "
        "from resbackbone.optimize import native_low_precision; "
        "print(resolve_amp('auto', torch.device('cpu')), native_low_precision('cpu', torch.bfloat16))"
    )
    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["none", "False"]


def test_amp_auto_follows_the_cpu_instructions_found_at_run_time() -> None:
    """bf16 where AMX is found; measured where AVX512-BF16 alone is (faster on some processors, slower on others);
    fp32 where bf16 is not native."""
    amx = torch.cpu._is_amx_tile_supported()
    native = native_low_precision("cpu", torch.bfloat16)
    assert prefers_bf16("cpu") == (native and amx)
    assert acc.resolve_amp("auto", torch.device("cpu")) == ("bf16" if native and amx else "none")
    assert acc.resolve_amp("bf16", torch.device("cpu")) == "bf16"  # asked for, it is run
    expected = ("bf16",) if native and amx else ("none", "bf16") if native else ("none",)
    assert acc.amp_candidates("auto", torch.device("cpu")) == expected
    assert acc.amp_candidates("none", torch.device("cpu")) == ("none",)
    assert acc.amp_candidates("bf16", torch.device("cpu")) == ("bf16",)


def test_amp_fp16_on_cpu_is_refused() -> None:
    with pytest.raises(ValueError, match=r"optim\.amp='fp16' needs a CUDA device; use amp: bf16"):
        acc.resolve_amp("fp16", torch.device("cpu"))


def test_autocast_takes_a_resolved_precision_only() -> None:
    with pytest.raises(
        ValueError, match=r"autocast precision 'auto': expected 'none', 'bf16' or 'fp16'; .*resolve_amp"
    ):
        acc.autocast(torch.device("cpu"), "auto")


def test_evaluating_a_checkpoint_repeats_the_runs_own_evaluation(
    tmp_path: Path, session_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``amp: auto`` resolves the same way in ``evaluate`` as in training (it once reached autocast as fp16),
    and ``--fast`` scores as eager does. fp32 on every machine: an AMX CPU or a GPU would pick bf16, and
    training on AVX512-BF16 alone could measure bf16 faster, where evaluation takes the static answer."""
    from resbackbone.engine import evaluate_checkpoint
    from resbackbone.optimize import models as fast_models

    monkeypatch.setattr(acc, "prefers_bf16", lambda device: False)
    monkeypatch.setattr(acc, "native_low_precision", lambda device, dtype: False)
    monkeypatch.setattr(fast_models, "prefers_bf16", lambda device: False)

    trainer = Trainer(_recipe(tmp_path, "optim.amp=auto"), progress=False)
    summary = trainer.fit()
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # the recipe it was trained with: nothing to say
        again = evaluate_checkpoint(trainer.recipe, tmp_path / "run" / "best.pt", split="val", progress=False)
    best = summary["best"]["metrics"]
    assert {k: again[k] for k in best if k != "images_per_s"} == pytest.approx(
        {k: v for k, v in best.items() if k != "images_per_s"}, abs=1e-6
    )
    fast = evaluate_checkpoint(trainer.recipe, tmp_path / "run" / "best.pt", split="val", progress=False, fast=True)
    for key in ("miou", "dice", "pixel_acc"):  # the fast path (folded, compiled, fp32) scores as eager does
        assert fast[key] == pytest.approx(best[key], abs=0.005), key
    other = _recipe(tmp_path, "optim.amp=auto", "model.loss=ce")
    with pytest.warns(UserWarning, match=r"evaluated as it was trained; the recipe's model\.loss='ce' \(checkpoint: "):
        evaluate_checkpoint(other, tmp_path / "run" / "best.pt", split="val", progress=False)


def test_recipes_default_to_amp_auto() -> None:
    recipe = load_recipe(REPO_ROOT / "recipes" / "quickstart.yaml")
    assert recipe.optim.amp == "auto"
    assert (
        load_recipe(REPO_ROOT / "recipes" / "quickstart.yaml", overrides=["run.channels_last=auto"]).run.channels_last
        == "auto"
    )


def _timed(monkeypatch: pytest.MonkeyPatch, timings: dict[tuple[str, bool], float]) -> list[dict[str, object]]:
    """Measure for real (the model must be left alone), then report ``timings`` for the variants asked."""
    calls: list[dict[str, object]] = []

    def measure(model: torch.nn.Module, variants: list[tuple[str, bool]], **kwargs: object) -> dict:
        calls.append({"variants": list(variants), **kwargs})
        assert set(MEASURE(model, variants, rounds=1, **kwargs)) == set(variants)
        return {variant: timings[variant] for variant in variants}

    monkeypatch.setattr(acc, "measure_training_steps", measure)
    return calls


def test_auto_settings_are_chosen_said_and_recorded(
    tmp_path: Path, session_cache: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A CPU without native bf16 trains in fp32 under amp: auto; channels_last: auto times both formats,
    leaves the model and the random state as they were, and the choice reaches the log and summary.json."""
    monkeypatch.setattr(acc, "native_low_precision", lambda device, dtype: False)
    monkeypatch.setattr(acc, "prefers_bf16", lambda device: False)
    calls = _timed(monkeypatch, {("none", False): 1.0, ("none", True): 2.0})  # contiguous clearly faster
    plain = Trainer(_recipe(tmp_path / "plain", "optim.amp=none", "run.channels_last=false"), progress=False)
    assert not calls, "nothing left to measure was measured"
    rng = torch.get_rng_state()
    trainer = Trainer(_recipe(tmp_path, "optim.amp=auto", "run.channels_last=auto"), progress=True)
    assert torch.equal(torch.get_rng_state(), rng), "measuring consumed the random state"
    plain_state = plain.model.state_dict()
    assert all(torch.equal(plain_state[k], v) for k, v in trainer.model.state_dict().items()), "measuring moved weights"
    assert trainer.amp == "none" and trainer.channels_last is False
    assert calls[0]["variants"] == [("none", True), ("none", False)] and calls[0]["batch"] == 2
    summary = trainer.fit()
    assert (summary["amp"], summary["channels_last"], summary["compiled"]) == ("none", False, [])
    log = capsys.readouterr().out
    assert "fp32 (amp: auto; bf16 is not faster than fp32 on this cpu), contiguous" in log
    assert "contiguous (measured: contiguous 1000 ms, channels-last 2000 ms a step)" in log
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["amp"] == "none"
    glibc = acc.configure_malloc("reuse")  # the recipe's default, already in force
    assert summary["malloc_reuse"] is glibc and ("freed buffers kept for reuse" in log) is glibc


@pytest.mark.parametrize(
    ("bf16_s", "expected"), [(0.5, "bf16"), (0.95, "none"), (1.5, "none")], ids=["bf16-faster", "near-tie", "slower"]
)
def test_amp_auto_is_measured_where_bf16_is_native_without_amx(
    bf16_s: float, expected: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """AVX512-BF16 without AMX: bf16 only when a step is at least 10 % faster; the layout chosen under it."""
    monkeypatch.setattr(acc, "native_low_precision", lambda device, dtype: True)
    monkeypatch.setattr(acc, "prefers_bf16", lambda device: False)
    timings = {("none", True): 1.0, ("none", False): 1.05, ("bf16", True): bf16_s * 1.3, ("bf16", False): bf16_s}
    from resbackbone import build_segmenter

    model = build_segmenter("deeplabv3plus", backbone="test_resnet", num_classes=3).train()
    shape = {
        "task": "segmentation",
        "loss_fn": lambda out, y: {"ce": torch.nn.functional.cross_entropy(out, y)},
        "batch": 2,
        "hw": (32, 32),
        "in_chans": 3,
        "num_classes": 3,
        "device": torch.device("cpu"),
    }
    _timed(monkeypatch, timings)
    speed = acc.choose_training_speed(model, amp="auto", channels_last="auto", **shape)
    assert speed.amp == expected and speed.amp_measured
    assert speed.channels_last is (expected == "none"), "the layout follows the timings of the precision chosen"
    assert "fp32 channels-last 1000 ms" in speed.measured_text()
    text = acc.precision_text("auto", speed.amp, torch.device("cpu"), measured=True)
    assert text.endswith(f"bf16 measured {'faster' if expected == 'bf16' else 'not faster'} than fp32 on this cpu)")
    fixed = acc.choose_training_speed(model, amp="auto", channels_last=True, **shape)
    assert (fixed.amp, fixed.channels_last) == ("bf16" if bf16_s * 1.3 <= 0.9 else "none", True)
    assert set(fixed.timings) == {("none", True), ("bf16", True)}
    assert acc.choose_training_speed(model, amp="none", channels_last=False, **shape).timings == {}


def test_a_resumed_run_goes_on_in_the_precision_it_began_in(
    tmp_path: Path, session_cache: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(acc, "native_low_precision", lambda device, dtype: True)
    monkeypatch.setattr(acc, "prefers_bf16", lambda device: False)
    faster = {("none", False): 1.0, ("bf16", False): 0.5}
    _timed(monkeypatch, faster)
    first = Trainer(_recipe(tmp_path, "optim.amp=auto"), progress=False)
    assert first.amp == "bf16"
    first.fit()
    assert load_checkpoint(tmp_path / "run" / "last.pt")["amp"] == "bf16"
    _timed(monkeypatch, {("none", False): 0.5, ("bf16", False): 1.0})  # this start measures fp32 faster
    resumed = Trainer(_recipe(tmp_path, "optim.amp=auto", "optim.epochs=2"), progress=False, resume=True)
    assert resumed.amp == "bf16"
    assert "The run began in bf16 autocast and goes on in it" in capsys.readouterr().out
    assert resumed.fit()["amp"] == "bf16"
    start = capsys.readouterr().out
    assert "bf16 autocast (amp: auto; as the run began, kept on --resume)" in start
    assert "(measured: fp32 contiguous 500 ms, bf16 contiguous 1000 ms a step)" in start


def test_step_measurement_leaves_the_model_alone() -> None:
    from resbackbone import build_segmenter

    model = build_segmenter("deeplabv3plus", backbone="test_resnet", num_classes=3).train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    variants = [("none", False), ("none", True), ("bf16", True)]
    times = acc.measure_training_steps(
        model,
        variants,
        task="segmentation",
        loss_fn=lambda out, y: {"ce": torch.nn.functional.cross_entropy(out, y)},
        batch=2,
        hw=(32, 32),
        in_chans=3,
        num_classes=3,
        device=torch.device("cpu"),
        rounds=1,
    )
    assert list(times) == variants and all(t > 0 for t in times.values())
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert acc.prefer_channels_last({"contiguous": 1.0, "channels_last": 1.05})
    assert not acc.prefer_channels_last({"contiguous": 1.0, "channels_last": 1.2})


def test_best_pt_holds_weights_recipe_and_classes_only(tmp_path: Path, session_cache: Path) -> None:
    trainer = Trainer(_recipe(tmp_path, "optim.ema=0.9"), progress=False)
    trainer.fit()
    best = load_checkpoint(tmp_path / "run" / "best.pt")
    last = load_checkpoint(tmp_path / "run" / "last.pt")
    assert best["format"] == BEST_FORMAT and best["format_version"] == 1
    assert set(best) == {
        "format", "format_version", "model", "recipe", "classes", "epoch", "step", "metrics", "resbackbone_version"
    }  # fmt: skip
    assert "optimizer" in last and "rng" in last
    # best.pt's weights are the evaluated ones: the EMA's
    for key, value in last["ema"].items():
        assert torch.equal(best["model"][key], value), key
    assert (tmp_path / "run" / "best.pt").stat().st_size < (tmp_path / "run" / "last.pt").stat().st_size
    _, recipe, classes = load_model(tmp_path / "run" / "best.pt")
    assert classes == trainer.classes and recipe.name == trainer.recipe.name
    with pytest.raises(ValueError, match=r"--resume: .*best\.pt is a best\.pt .* resumes from its last\.pt"):
        resume_state(tmp_path / "run" / "best.pt", trainer.classes)
    # a run's best.pt is a backbone weight file too (backbone_weights: runs/x/best.pt)
    from resbackbone import create_backbone

    backbone = create_backbone("test_resnet", weights=str(tmp_path / "run" / "best.pt"))
    assert torch.equal(backbone.state_dict()["conv1.0.weight"], best["model"]["model.encoder.backbone.conv1.0.weight"])


def test_compiled_training_step_keeps_the_state_dict_keys(tmp_path: Path, session_cache: Path) -> None:
    plain = Trainer(_recipe(tmp_path / "a"), progress=False)
    compiled = Trainer(_recipe(tmp_path / "b", "run.compile=true"), progress=False)
    assert compiled.compiled == [""]
    assert list(compiled.model.state_dict()) == list(plain.model.state_dict())


@pytest.mark.slow
@pytest.mark.parametrize("head", ["deeplabv3plus", "faster_rcnn"])
def test_compiled_training_step_trains(head: str, tmp_path: Path, session_cache: Path) -> None:
    """Compiling takes a minute on two cores: one compiled epoch per head family, with its checkpoints."""
    extra = [f"model.head={head}", "run.compile=true", "run.channels_last=true"]
    if head == "faster_rcnn":
        from .engine_data import write_dataset

        extra = write_dataset("voc", tmp_path / "data") + extra
    recipe = load_recipe(
        REPO_ROOT / "recipes" / ("quickstart.yaml" if head != "faster_rcnn" else "bccd_faster_rcnn.yaml"),
        overrides=[*tiny_overrides(tmp_path / "run"), "run.overlays=0", *extra],
    )
    summary = Trainer(recipe, progress=False).fit()
    assert summary["compiled"] == (["backbone"] if head == "faster_rcnn" else [""]) and summary["channels_last"]
    assert load_model(tmp_path / "run" / "best.pt")[2]


_BUFFERS_MB = (8, 16, 4, 12, 20, 2, 30, 6)  # a training step's pattern: 2-30 MB alive at once, then all freed
_FAULTS = f"""
import resource, sys, torch
from resbackbone.engine.acceleration import configure_malloc
applied = configure_malloc(sys.argv[1])
def step():
    buffers = [torch.empty(mb << 18).fill_(1.0) for mb in {_BUFFERS_MB}]  # float32: mb MB each
    del buffers
step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    step()
print(applied, (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 5)
"""


def _faults_per_step(mode: str) -> tuple[bool, float]:
    out = subprocess.run([sys.executable, "-c", _FAULTS, mode], capture_output=True, text=True, check=True).stdout
    applied, faults = out.split()
    return applied == "True", float(faults)


@pytest.mark.skipif(acc.glibc() is None, reason="run.malloc: reuse sets glibc's mallopt; this C library is not glibc")
def test_malloc_reuse_keeps_freed_buffers_for_the_next_step() -> None:
    """With run.malloc: reuse, buffers freed at the end of a step serve the next one without touching new
    pages; glibc as it is gives them back (the heap's free top is trimmed) and faults on every page again."""
    system_applied, system = _faults_per_step("system")
    reuse_applied, reuse = _faults_per_step("reuse")
    assert (system_applied, reuse_applied) == (False, True)
    pages = sum(_BUFFERS_MB) * (1 << 20) / os.sysconf("SC_PAGE_SIZE")  # here: 5,300-19,300 as it is, 300 with reuse
    assert system > 0.1 * pages, f"glibc as it is kept the buffers ({system:.0f} faults a step); the test shows nothing"
    assert reuse < min(0.03 * pages, 0.25 * system), f"{reuse:.0f} page faults a step with reuse, {system:.0f} without"


def test_malloc_mode_is_checked() -> None:
    with pytest.raises(ValueError, match=r"run.malloc 'keep'.*'reuse'.*'system'"):
        acc.configure_malloc("keep")
    with pytest.raises(RecipeError, match=r"run\.malloc.*'reuse' or 'system'"):
        load_recipe(REPO_ROOT / "recipes" / "quickstart.yaml", overrides=["run.malloc=keep"])
