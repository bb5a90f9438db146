"""Feature-extraction benchmark: our backbone's modes side by side with timm, torchvision and smp.

Every model of a configuration gets the same weights and the same input; they
are warmed up (the first call compiles), then timed in interleaved rounds so
that a busy neighbour or thermal drift hits all of them alike. Reported per
model: images/s (batch / median latency), latency p50/p95, the peak memory one
forward adds, achieved GFLOP/s (MACs from :func:`count_macs`, which ``resbackbone info``
uses too; 1 MAC = 2 FLOP) and its fraction of the machine's matmul ceiling measured in
the same run, our throughput over each library's, and the maximum absolute and
relative output difference to our fp32 eager output (TF32 off on CUDA).

Run it as ``resbackbone bench`` or ``python benchmarks/feature_extraction.py``;
from Python::

    from resbackbone.bench import BenchConfig, format_table, run_benchmark, write_reports

    result = run_benchmark(BenchConfig(backbones=("resnet50",), batch_sizes=(8,), devices=("cpu",)))
    print(format_table(result))
    write_reports(result, "bench_results")  # bench.json, bench.md, bench.png
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Sequence

from .candidates import COMPETITORS, MODES
from .flops import count_macs
from .machine import PeakMemory, machine_info, matmul_ceiling
from .runner import RESULT_FIELDS, SCHEMA_VERSION, BenchConfig, run_benchmark
from .tables import format_markdown, format_table, plot, write_reports
from .train_step import TRAIN_FIELDS, TRAIN_MODELS

__all__ = [
    "COMPETITORS",
    "MODES",
    "RESULT_FIELDS",
    "SCHEMA_VERSION",
    "TRAIN_FIELDS",
    "BenchConfig",
    "PeakMemory",
    "add_arguments",
    "config_from_args",
    "count_macs",
    "format_markdown",
    "format_table",
    "machine_info",
    "main",
    "matmul_ceiling",
    "plot",
    "run_benchmark",
    "run_from_args",
    "write_reports",
]


def _csv(kind: type) -> object:
    def parse(text: str) -> tuple:
        try:
            return tuple(kind(part) for part in text.split(",") if part)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r}: expected comma-separated {kind.__name__} values") from None

    return parse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the benchmark's options to ``parser`` (shared by the CLI and the script)."""
    defaults = BenchConfig.__dataclass_fields__
    add = parser.add_argument
    add("backbones", nargs="*", default=["resnet50"], help="registry names (default: resnet50)")
    add(
        "--models",
        type=_csv(str),
        default=(),
        help="whole models instead of backbones, from deeplabv3plus,faster_rcnn,retinanet: decoded images to "
        "predictions, ours eager/fast/onnxruntime beside smp's or torchvision's eager fp32 (with --train: the "
        "fine-tuning step in fp32, amp auto, channels-last, compiled); first batch size and input size",
    )
    add("--batch-sizes", "-b", type=_csv(int), default=defaults["batch_sizes"].default, help="e.g. 1,8,32 (8)")
    add("--input-sizes", "-s", type=_csv(int), default=defaults["input_sizes"].default, help="e.g. 224,512 (224)")
    add("--devices", type=_csv(str), default=("auto",), help="cpu, cuda or auto: cpu plus cuda when present (auto)")
    add(
        "--modes",
        type=_csv(str),
        default=defaults["modes"].default,
        help="our modes, from: " + ", ".join(f"{k} ({v.description})" for k, v in MODES.items()),
    )
    add(
        "--competitors",
        type=_csv(str),
        default=defaults["competitors"].default,
        help="libraries side by side, from: " + ", ".join(COMPETITORS) + "; '' for none",
    )
    add("--fpn", action="store_true", help="time backbone + the FPN build_fpn puts on it (max-pool level)")
    add("--train", action="store_true", help="add forward+backward figures with and without grad checkpointing")
    add("--train-only", action="store_true", help="only the training figures (implies --train)")
    add("--train-models", type=_csv(str), default=TRAIN_MODELS, help=f"from {', '.join(TRAIN_MODELS)} (both)")
    add("--train-amp", action="store_true", help="training steps under bf16 autocast")
    add(
        "--checkpoint-stages",
        type=_csv(str),
        default=None,
        help="stages the checkpointed steps recompute, from stem,C2,C3,C4,C5 "
        "(default: the backbone's own choice, the stages at stride 8 or finer)",
    )
    add("--warmup", type=int, default=3, help="untimed calls per model; the first compiles (3)")
    add("--repeats", type=int, default=10, help="timed calls per model, interleaved (10)")
    add("--weights", default=None, help="weight string for all models (default: seeded random, BN stats randomised)")
    add("--seed", type=int, default=0)
    add("--allow-emulated", action="store_true", help="run bf16/fp16 where the device only emulates it")
    add("--out", default="bench_results", help="folder for bench.json, bench.md, bench.png ('' to skip)")
    add("--stem", default="bench", help="file name stem of the reports (bench)")


def config_from_args(args: argparse.Namespace) -> BenchConfig:
    """The :class:`BenchConfig` the parsed options describe."""
    return BenchConfig(
        backbones=tuple(args.backbones),
        batch_sizes=args.batch_sizes,
        input_sizes=args.input_sizes,
        devices=args.devices,
        modes=args.modes,
        competitors=args.competitors,
        fpn=args.fpn,
        inference=not args.train_only,
        train=args.train or args.train_only,
        train_models=args.train_models,
        train_amp=args.train_amp,
        train_checkpointing=True if args.checkpoint_stages is None else args.checkpoint_stages,
        warmup=args.warmup,
        repeats=args.repeats,
        weights=args.weights,
        seed=args.seed,
        allow_emulated=args.allow_emulated,
    )


def _unused_by_models(args: argparse.Namespace) -> list[str]:
    """The options given that ``--models`` has no use for, as ``--name=value``."""
    defaults = BenchConfig.__dataclass_fields__
    unused = [f"backbones {' '.join(args.backbones[1:])}"] if len(args.backbones) > 1 else []
    for flag, value in (("--batch-sizes", args.batch_sizes), ("--input-sizes", args.input_sizes)):
        if len(value) > 1:
            unused.append(f"{flag}={','.join(map(str, value))} (only the first is used)")
    if any(device not in ("auto", "cpu") for device in args.devices):
        unused.append(f"--devices={','.join(args.devices)}")
    for flag, name in (("--modes", "modes"), ("--competitors", "competitors"), ("--train-models", "train_models")):
        if tuple(getattr(args, name)) != tuple(defaults[name].default):
            unused.append(f"{flag}={','.join(getattr(args, name))}")
    for flag, name in (("--fpn", "fpn"), ("--train-amp", "train_amp"), ("--allow-emulated", "allow_emulated")):
        if getattr(args, name):
            unused.append(flag)
    for flag, name in (("--checkpoint-stages", "checkpoint_stages"), ("--weights", "weights")):
        if getattr(args, name) is not None:
            unused.append(f"{flag}={getattr(args, name)}")
    return unused


def _run_models(args: argparse.Namespace) -> int:
    """``--models``: the whole-model table (and with ``--train`` the fine-tuning steps), printed and written."""
    import json
    from pathlib import Path

    from ..runtime import atomic_write_bytes
    from .finetune_steps import format_finetune_steps, run_finetune_steps
    from .pipelines import PipelineConfig, format_pipelines, run_pipelines

    unused = _unused_by_models(args)
    if unused:
        raise ValueError(
            f"--models times one backbone at one batch and size on the CPU, so {', '.join(unused)} would be "
            "ignored: drop them, or run the backbone table without --models."
        )
    common = {
        "backbone": args.backbones[0],
        "batch_size": args.batch_sizes[0],
        "size": args.input_sizes[0],
        "warmup": args.warmup,
        "repeats": args.repeats,
        "seed": args.seed,
    }
    result: dict = {"machine": machine_info()}
    tables = []
    if not args.train_only:
        result["inference"] = run_pipelines(PipelineConfig(models=tuple(args.models), **common))
        tables.append(format_pipelines(result["inference"]))
    if args.train or args.train_only:
        result["finetune"] = run_finetune_steps(tuple(args.models), **common)
        tables.append(format_finetune_steps(result["finetune"]))
    text = "\n\n".join(tables)
    print(text)
    if args.out:
        out = Path(args.out)
        atomic_write_bytes(out / f"{args.stem}_models.json", json.dumps(result, indent=2).encode())
        atomic_write_bytes(out / f"{args.stem}_models.md", (text + "\n").encode())
        print(f"\nwrote {out / (args.stem + '_models.json')}, {out / (args.stem + '_models.md')}")
    return 0


def run_from_args(args: argparse.Namespace, *, prog: str = "resbackbone bench") -> int:
    """Run, print the tables, write the reports; the exit status."""
    if args.models:
        return _run_models(args)
    command = " ".join([prog, *map(shlex.quote, sys.argv[1:] if prog == "feature_extraction.py" else sys.argv[2:])])
    result = run_benchmark(config_from_args(args), command=command)
    print(format_table(result))
    if args.out:
        paths = write_reports(result, args.out, stem=args.stem)
        print("\nwrote " + ", ".join(str(p) for p in paths.values()))
    failed = [r for r in result["results"] + result["train"] if r["status"] == "error"]
    return 1 if failed else 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python benchmarks/feature_extraction.py`` (the same as ``resbackbone bench``)."""
    parser = argparse.ArgumentParser(prog="feature_extraction.py", description=__doc__.splitlines()[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run_from_args(args, prog=parser.prog)
    except (ValueError, TypeError) as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 2
