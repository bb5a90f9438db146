from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from resbackbone.engine import distributed, evaluate_checkpoint
from resbackbone.engine.acceleration import TrainingSpeed
from resbackbone.recipes import load_recipe

from .conftest import REPO_ROOT
from .engine_data import tiny_overrides

QUICKSTART = REPO_ROOT / "recipes" / "quickstart.yaml"


def test_two_processes_on_gloo_agree_with_one(tmp_path: Path, session_cache: Path) -> None:
    """torchrun, 2 CPU processes: DDP training ends with identical weights on both ranks, and the
    metric the two computed over their shards equals a single-process evaluation of the checkpoint."""
    overrides = [*tiny_overrides(tmp_path / "run"), "optim.epochs=2", "run.max_steps_per_epoch=2", "run.overlays=0"]
    sets = [arg for o in overrides for arg in ("--set", o)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "-m", "resbackbone", "finetune", str(QUICKSTART), "--no-progress", *sets]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "cpu × 2" in result.stdout and "effective batch 4" in result.stdout
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["ranks_in_sync"] is True
    assert summary["steps"] == 4
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2, "rank 0 alone writes the logs"

    recipe = load_recipe(QUICKSTART, overrides=overrides)
    single = evaluate_checkpoint(recipe, tmp_path / "run" / "last.pt", split="val", device="cpu", progress=False)
    two = json.loads(lines[-1])
    assert two["val/miou"] == pytest.approx(single["miou"], abs=1e-9)
    assert two["val/dice"] == pytest.approx(single["dice"], abs=1e-9)


def _agree(rank: int, init: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    try:
        ctx = distributed.DistContext(rank=rank, world_size=2)
        measured = TrainingSpeed("bf16" if rank == 0 else "none", rank == 0, {("bf16", rank == 0): 0.1 * (rank + 1)})
        chosen = distributed.agree(measured, ctx)
        Path(out, f"{rank}.json").write_text(json.dumps([chosen.amp, chosen.channels_last, list(chosen.timings)]))
    finally:
        dist.destroy_process_group()


def test_every_rank_trains_as_rank_zero_measured(tmp_path: Path) -> None:
    """Each rank times its own steps; the precision and layout of rank 0 are taken by all (DDP ranks that
    chose apart would compute the same update in different precisions)."""
    torch.multiprocessing.spawn(_agree, args=(f"file://{tmp_path / 'rendezvous'}", str(tmp_path)), nprocs=2)
    for rank in (0, 1):
        assert json.loads((tmp_path / f"{rank}.json").read_text()) == ["bf16", True, [["bf16", True]]], rank
