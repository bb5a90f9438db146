"""Reliability: killed runs resume exactly, numerical faults are reported, untrusted files are refused.

The crash tests start ``resbackbone finetune`` on the quick-start recipe (made
tiny) as a separate process, freeze it with SIGSTOP at the moment wanted, check
that it is that moment, and SIGKILL it — nothing inside the package knows it is
being tested. They then ``--resume`` and compare ``metrics.jsonl`` row by row
with an uninterrupted run of the same seed. Everything here runs on one
intra-op thread (``OMP_NUM_THREADS=1`` in the subprocesses): processes then
compute bit for bit alike, and a busy machine cannot stall a thread pool.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from resbackbone.cli import main
from resbackbone.data import DataConfig, check_dataset, ensure_shapes_dataset, verify_shapes_dataset
from resbackbone.engine import Trainer, TrainingError
from resbackbone.engine.checkpoint import load_checkpoint
from resbackbone.recipes import load_recipe

from .conftest import REPO_ROOT
from .data_writers import picture, save, write_coco, write_mask_folder
from .engine_data import tiny_overrides

QUICKSTART = REPO_ROOT / "recipes" / "quickstart.yaml"
EPOCHS, STEPS = 3, 4
posix_only = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs POSIX signals and /proc")


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    """One intra-op thread in this process too, like the subprocesses (see the module docs)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny mask-folder dataset (16 train, 2 val, 2 test images of 64 px) for the quick-start recipe."""
    root = tmp_path_factory.mktemp("data")
    items = {}
    for i in range(20):
        x, y = 4 + 3 * i % 30, 6 + 5 * i % 28
        mask = np.zeros((64, 64), np.uint8)
        mask[y : y + 24, x : x + 20] = 255
        items[f"im{i:02d}"] = (picture(64, 64, [(x, y, x + 20, y + 24)]), mask)
    names = sorted(items)
    return write_mask_folder(root, items, {"train": names[:16], "val": names[16:18], "test": names[18:]})


def _crash_sets(output: Path, data: Path) -> list[str]:
    return [
        *tiny_overrides(output),
        "data.format=mask_folder",
        f"data.root={data}",
        "data.classes=[background, object]",
        "data.class_map=null",
        *(f"data.{split}={split}" for split in ("train", "val", "test")),
        f"optim.epochs={EPOCHS}",
        f"run.max_steps_per_epoch={STEPS}",
        "run.seed=3",
        "run.overlays=0",
    ]


def _cli_sets(output: Path, data: Path, *extra: str) -> list[str]:
    return [arg for o in (*_crash_sets(output, data), *extra) for arg in ("--set", o)]


def _rows(run: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _same_rows(got: list[dict[str, object]], want: list[dict[str, object]]) -> None:
    assert [r["epoch"] for r in got] == [r["epoch"] for r in want]
    for a, b in zip(got, want):
        assert a.keys() == b.keys()
        for key in a.keys() - {"time"}:
            if key.endswith("images_per_s"):  # a speed, not a result
                continue
            assert a[key] == pytest.approx(b[key], rel=1e-6, abs=1e-7, nan_ok=True), (a["epoch"], key)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, data: Path) -> Path:
    """An uninterrupted run of the crash tests' recipe: its folder."""
    run = tmp_path_factory.mktemp("reference") / "run"
    Trainer(load_recipe(QUICKSTART, overrides=_crash_sets(run, data)), progress=False).fit()
    return run


# ------------------------------------------------------------------ killing a process at a chosen moment


def _proc_state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "?"


def _kill_when(
    cmd: list[str], env: dict[str, str], log: Path, moment: Callable[[], object], timeout: float = 240
) -> object:
    """Run ``cmd``; when ``moment()`` is truthy, freeze the process and, if it still holds, SIGKILL it.

    Returns ``moment()``'s value at the kill. Fails if the process ends first.
    """
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                pytest.fail(f"the run ended (rc {proc.returncode}) before the moment came:\n{log.read_text()[-2000:]}")
            if moment():
                proc.send_signal(signal.SIGSTOP)
                while _proc_state(proc.pid) not in ("T", "t", "Z", "?"):  # stopped (or already gone)
                    time.sleep(0.0002)
                found = moment()
                if found:
                    proc.kill()
                    proc.wait()
                    return found
                proc.send_signal(signal.SIGCONT)
            time.sleep(0.001)
        pytest.fail(f"the moment did not come in {timeout} s:\n{log.read_text()[-2000:]}")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _env(cache: Path) -> dict[str, str]:
    path = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "TORCH_HOME": str(cache), "PYTHONPATH": path, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}


def _finetune(run: Path, data: Path) -> list[str]:
    return [sys.executable, "-m", "resbackbone", "finetune", str(QUICKSTART), *_cli_sets(run, data)]


def _partials(run: Path) -> list[str]:
    return sorted(n for n in os.listdir(run) if n.endswith(".tmp")) if run.is_dir() else []


def _resume_and_compare(run: Path, data: Path, reference: Path, capsys: pytest.CaptureFixture[str], epoch: int) -> str:
    assert main(["finetune", str(QUICKSTART), *_cli_sets(run, data), "--resume", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert f"Resumed from {run / 'last.pt'}: epoch {epoch}, step {epoch * STEPS}." in out
    assert _partials(run) == []
    _same_rows(_rows(run), _rows(reference))
    return out


@posix_only
def test_sigkill_mid_epoch_then_resume_matches_an_uninterrupted_run(
    tmp_path: Path, data: Path, reference: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run, log = tmp_path / "run", tmp_path / "log.txt"
    bar = re.compile(rf"epoch ([2-{EPOCHS}])/{EPOCHS}:[^\r\n|]*\|[^\r\n|]*\|\s*([1-{STEPS - 1}])/{STEPS}")

    def mid_epoch() -> int | None:
        """The epoch in progress once its progress bar shows 1..STEPS-1 steps done, if its last.pt is the previous."""
        found = bar.findall(log.read_text(errors="replace")) if log.exists() else []
        if not found:
            return None
        epoch = int(found[-1][0])
        return epoch if load_checkpoint(run / "last.pt")["epoch"] == epoch - 1 else None

    epoch = _kill_when(_finetune(run, data), _env(tmp_path), log, mid_epoch)
    saved = load_checkpoint(run / "last.pt")["epoch"]
    assert saved == epoch - 1 and len(_rows(run)) == saved  # what was saved is whole; the epoch in progress is lost
    _same_rows(_rows(run), _rows(reference)[:saved])
    _resume_and_compare(run, data, reference, capsys, saved)


@posix_only
def test_sigkill_mid_checkpoint_write_then_resume_matches(
    tmp_path: Path, data: Path, reference: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"

    def writing_last() -> list[str]:
        """The partial files of a last.pt being written over an existing one."""
        names = _partials(run)
        return [n for n in names if n.startswith(".last.pt.")] if (run / "last.pt").is_file() else []

    partial = _kill_when(_finetune(run, data), _env(tmp_path), tmp_path / "log.txt", writing_last)
    assert isinstance(partial, list) and len(partial) == 1
    assert (run / partial[0]).is_file()  # killed between the temporary file's creation and its rename
    saved = load_checkpoint(run / "last.pt")["epoch"]
    assert 1 <= saved < EPOCHS and len(_rows(run)) == saved
    out = _resume_and_compare(run, data, reference, capsys, saved)
    assert f"Removed 1 partial file(s) an interrupted write left behind: {partial[0]}." in out


@posix_only
def test_sigkill_while_generating_the_dataset_cache_leaves_no_half_dataset(tmp_path: Path) -> None:
    root = tmp_path / "cache" / "shapes"
    params = {"n_train": 100, "n_val": 2, "n_test": 2, "image_size": 64}
    code = f"from resbackbone.data import ensure_shapes_dataset as e; e({str(root)!r}, **{params!r})"

    def generating() -> bool:
        temps = list(root.parent.glob(".shapes.tmp-*/images/train")) if root.parent.is_dir() else []
        return bool(temps) and len(os.listdir(temps[0])) >= 5 and not root.exists()

    _kill_when([sys.executable, "-c", code], _env(tmp_path / "th"), tmp_path / "log.txt", generating)
    assert not root.exists()
    assert ensure_shapes_dataset(root, **params) == root  # the leftover temporary folder is ignored
    verify_shapes_dataset(root, {"seed": 0, **params})


# ------------------------------------------------------------------ numerical faults


def _tiny_trainer(tmp_path: Path, data: Path, *extra: str) -> Trainer:
    sets = [*_crash_sets(tmp_path / "run", data), "run.max_steps_per_epoch=2", *extra]
    return Trainer(load_recipe(QUICKSTART, overrides=sets), progress=False)


def _infinite_loss(trainer: Trainer) -> None:
    loss = trainer.seg_loss
    assert loss is not None
    trainer.seg_loss = lambda output, target: {k: v * float("inf") for k, v in loss(output, target).items()}


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_inf_loss_stops_naming_step_and_checkpoint_and_keeps_it(tmp_path: Path, data: Path) -> None:
    trainer = _tiny_trainer(tmp_path, data, "optim.epochs=2")
    trainer.run_epoch()
    last = tmp_path / "run" / "last.pt"
    before = _digest(last)
    _infinite_loss(trainer)
    with pytest.raises(
        TrainingError,
        match=r"Loss is inf at epoch 2, step 3 \(batch 1\); the last good checkpoint is .*last\.pt\. Lower optim\.lr",
    ):
        trainer.run_epoch()
    assert _digest(last) == before and len(_rows(tmp_path / "run")) == 1


def test_inf_loss_skip_policy_counts_and_reports(tmp_path: Path, data: Path) -> None:
    trainer = _tiny_trainer(tmp_path, data, "run.nan_policy=skip", "optim.epochs=1")
    _infinite_loss(trainer)
    row = trainer.run_epoch()
    assert trainer.skipped_batches == 2 and trainer.step == 0 and row["skipped_batches"] == 2


def test_cli_exit_code_3_on_a_diverging_run(tmp_path: Path, data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sets = _cli_sets(tmp_path / "run", data, "optim.lr=1e30", "optim.epochs=2", "run.max_steps_per_epoch=1")
    assert main(["finetune", str(QUICKSTART), "--no-progress", *sets]) == 3
    err = capsys.readouterr().err
    assert re.search(
        r"resbackbone finetune: error: Loss is (nan|inf) at epoch 2, step 2 \(batch 1\); "
        r"the last good checkpoint is .*last\.pt",
        err,
    ), err
    assert load_checkpoint(tmp_path / "run" / "last.pt")["epoch"] == 1


def test_fp16_overflow_skips_the_update_and_is_counted_not_reported_as_a_step(
    tmp_path: Path, data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The trainer's handling of a scaler-skipped update, on the CPU: the first backward pass overflows.

    fp16 autocast itself needs CUDA (test_fp16_on_cuda_overflow_is_counted); bf16 needs no scaler.
    """
    trainer = _tiny_trainer(tmp_path, data, "optim.epochs=1", f"run.max_steps_per_epoch={STEPS}")
    trainer.scaler = torch.amp.GradScaler("cpu")  # the scaler fp16 gets; autocast stays off on the CPU
    calls: list[int] = []

    def overflow_once(grad: torch.Tensor) -> torch.Tensor:
        calls.append(1)
        return grad * float("inf") if len(calls) == 1 else grad

    next(trainer.model.parameters()).register_hook(overflow_once)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    summary = trainer.fit()
    assert trainer.overflow_steps == 1 and trainer.step == STEPS - 1
    assert summary["overflow_steps"] == 1 and summary["steps"] == STEPS - 1
    assert _rows(tmp_path / "run")[0]["overflow_steps"] == 1
    assert trainer.scheduler.state_dict()["last_epoch"] == STEPS - 1
    assert any(not torch.equal(before[k], v) for k, v in trainer.model.state_dict().items())
    out = capsys.readouterr().out
    assert f"the fp16 gradient scaler skipped 1 of {STEPS} updates (inf/NaN gradients)" in out
    assert re.search(r"updates skipped by the fp16 scaler\s+1", out)
    assert load_checkpoint(tmp_path / "run" / "last.pt")["overflow_steps"] == 1


@pytest.mark.gpu
def test_fp16_on_cuda_overflow_is_counted(tmp_path: Path, data: Path) -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    trainer = _tiny_trainer(tmp_path, data, "optim.epochs=2", "optim.amp=fp16", "run.device=cuda")
    trainer.scaler = torch.amp.GradScaler("cuda", init_scale=2.0**60)  # fp16 gradients overflow at 65504
    before = {k: v.clone() for k, v in trainer.model.state_dict().items() if v.is_floating_point()}
    row = trainer.run_epoch()
    assert trainer.overflow_steps == 2 and trainer.step == 0 and row["overflow_steps"] == 2
    for k, v in before.items():
        if "running" not in k:  # batch-norm statistics move in the forward pass; weights must not
            assert torch.equal(v, trainer.model.state_dict()[k]), k
    trainer.scaler = torch.amp.GradScaler("cuda")
    row = trainer.run_epoch()
    assert trainer.step >= 1 and np.isfinite(row["train/loss"])


# ------------------------------------------------------------------ untrusted files


class _Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {shlex.quote(str(self.marker))}",))


def _evil_checkpoint(path: Path, marker: Path, *, zipped: bool) -> Path:
    state = {"model": _Exploit(marker), "recipe": {}, "classes": [], "epoch": 1}
    path.parent.mkdir(parents=True, exist_ok=True)
    if zipped:
        torch.save(state, path)
    else:
        path.write_bytes(pickle.dumps(state))
    return path


@pytest.mark.parametrize("zipped", [True, False], ids=["torch.save", "raw-pickle"])
@pytest.mark.parametrize("command", ["predict", "evaluate", "resume"])
@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_pickled_code_in_a_checkpoint_is_refused_by_every_command(
    tmp_path: Path, data: Path, capsys: pytest.CaptureFixture[str], command: str, zipped: bool
) -> None:
    marker = tmp_path / "pwned"
    evil = _evil_checkpoint(tmp_path / "run" / "last.pt", marker, zipped=zipped)
    image = save(tmp_path / "x.png", picture(32, 32))
    sets = _cli_sets(tmp_path / "run", data)
    argv = {
        "predict": ["predict", str(evil), str(image), "--out", str(tmp_path / "out"), "--device", "cpu"],
        "evaluate": ["evaluate", str(QUICKSTART), "--checkpoint", str(evil), "--device", "cpu", *sets],
        "resume": ["finetune", str(QUICKSTART), "--resume", "--no-progress", *sets],
    }[command]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert re.search(r"error: Refused to load checkpoint .*last\.pt: it holds Python objects", err), err
    assert "can run arbitrary code" in err
    assert not marker.exists()


def test_yaml_python_tags_are_refused_in_recipes_and_overrides(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    marker = tmp_path / "pwned"
    tag = f"!!python/object/apply:os.system [{shlex.quote('touch ' + str(marker))}]"
    recipe = tmp_path / "r.yaml"
    recipe.write_text(QUICKSTART.read_text() + f"extra: {tag}\n")
    assert main(["finetune", str(recipe)]) == 2
    assert "not valid YAML (safe loader; Python tags are refused)" in capsys.readouterr().err
    assert main(["finetune", str(QUICKSTART), "--set", f"run.output={tag}"]) == 2
    assert re.search(r"--set [\"']run\.output=!!python.*[\"']: cannot parse the value", capsys.readouterr().err)
    assert not marker.exists()


def test_absolute_image_paths_in_annotations_are_refused(tmp_path: Path) -> None:
    """Relative escapes ('../') are tested per format in test_data_formats/test_data_check; absolute paths here."""
    outside = save(tmp_path / "outside.png", picture(16, 16))
    root = tmp_path / "ds"
    write_coco(root, "train", [(str(outside), (16, 16), [])], {1: "x"}, draw=False)
    spec = {"annotations": "annotations/train.json", "images": "images/train"}
    problems = check_dataset(DataConfig(format="coco", root=root, train=spec), task="detection")
    assert any(f"path {str(outside)!r} points outside the dataset root" in p.message for p in problems), problems
    (root / "train.txt").write_text(f"{outside}\n")
    problems = check_dataset(DataConfig(format="yolo", root=root, classes=["x"], train="train.txt"), task="detection")
    assert any(f"path {str(outside)!r} points outside the dataset root" in p.message for p in problems), problems


def test_a_truncated_checkpoint_is_reported_and_nothing_else_is_touched(
    tmp_path: Path, data: Path, reference: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    run.mkdir()
    whole = (reference / "last.pt").read_bytes()
    (run / "last.pt").write_bytes(whole[: len(whole) // 2])
    (run / "metrics.jsonl").write_bytes((reference / "metrics.jsonl").read_bytes())
    assert main(["finetune", str(QUICKSTART), "--resume", "--no-progress", *_cli_sets(run, data)]) == 2
    assert re.search(r"error: Cannot read checkpoint .*last\.pt: .*zip archive", capsys.readouterr().err)
    assert (run / "metrics.jsonl").read_bytes() == (reference / "metrics.jsonl").read_bytes()
    assert (run / "last.pt").stat().st_size == len(whole) // 2


# ------------------------------------------------------------------ load


def _memory_kib(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of a process in KiB: its resident memory now and at its peak."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])


@posix_only
def test_predicting_1000_images_keeps_memory_flat_and_writes_every_result(tmp_path: Path, reference: Path) -> None:
    from PIL import Image

    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(1000):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(images / f"{i:04d}.png")
    out = tmp_path / "out"
    results = out / "predictions.jsonl"
    cmd = [sys.executable, "-m", "resbackbone", "predict", str(reference / "best.pt"), str(images)]
    with open(tmp_path / "log.txt", "wb") as log:
        proc = subprocess.Popen(
            [*cmd, "--out", str(out), "--device", "cpu"], env=_env(tmp_path), stdout=log, stderr=log
        )
    samples: list[tuple[int, int, int]] = []  # (results written, VmRSS, VmHWM)
    try:
        while proc.poll() is None:
            done = results.read_bytes().count(b"\n") if results.exists() else 0
            try:
                samples.append((done, *_memory_kib(proc.pid)))
            except (OSError, KeyError):  # the process just ended
                break
            time.sleep(0.05)
    finally:
        proc.wait(timeout=600)
    assert proc.returncode == 0, (tmp_path / "log.txt").read_text()[-2000:]
    start = next(s for s in samples if s[0] >= 100)
    end = [s for s in samples if 900 <= s[0] < 1000][-1]  # still predicting: interpreter shutdown allocates too
    print(
        f"\nresults {start[0]}: RSS {start[1] / 1024:.0f} MiB, peak {start[2] / 1024:.0f} MiB; "
        f"results {end[0]}: RSS {end[1] / 1024:.0f} MiB, peak {end[2] / 1024:.0f} MiB"
    )
    assert end[2] - start[2] < 16 * 1024, f"peak RSS grew from {start[2]} KiB to {end[2]} KiB"
    records = [json.loads(line) for line in results.read_text().splitlines()]
    assert [Path(r["image"]).name for r in records] == sorted(p.name for p in images.iterdir())
    assert all(Path(r["mask"]).is_file() and sum(r["pixels"].values()) == 32 * 32 for r in records)


def test_atomic_writes_get_the_permissions_a_plain_open_would(tmp_path: Path) -> None:
    from resbackbone.engine.checkpoint import save_checkpoint

    (tmp_path / "plain").write_bytes(b"")
    save_checkpoint({"x": torch.zeros(1)}, tmp_path / "ckpt.pt")
    assert (tmp_path / "ckpt.pt").stat().st_mode & 0o777 == (tmp_path / "plain").stat().st_mode & 0o777
    (tmp_path / "dir").mkdir()
    root = ensure_shapes_dataset(tmp_path / "shapes", n_train=1, n_val=1, n_test=1, image_size=32)
    assert root.stat().st_mode & 0o777 == (tmp_path / "dir").stat().st_mode & 0o777
