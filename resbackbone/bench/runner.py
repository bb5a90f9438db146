"""The benchmark run: configuration, side-by-side timing, errors, ratios and ceilings."""

from __future__ import annotations

import datetime
import gc
import shlex
import sys
import time
import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..backbone import Backbone, create_backbone
from ..optimize import CompileFallbackWarning, native_low_precision
from ..registry import get_spec
from ..specs import LEVELS
from .candidates import (
    COMPETITORS,
    MODES,
    Candidate,
    CompetitorUnavailable,
    build_competitor,
    build_mode,
    build_reference,
    make_fpn,
)
from .flops import count_macs
from .machine import (
    DTYPE_NAMES,
    MatmulProbe,
    PeakMemory,
    ceiling_key,
    ceiling_settings,
    exact_fp32,
    machine_info,
    matmul_ceilings,
    median,
    percentile,
    synchronize,
    timed,
)
from .train_step import TRAIN_MODELS, detector_recipe, run_train

__all__ = ["RESULT_FIELDS", "SCHEMA_VERSION", "BenchConfig", "run_benchmark"]

SCHEMA_VERSION = 2
"""2: ``fasterrcnn_fpn`` is build_detector's model as a recipe builds it; ``--fpn`` is build_fpn's FPN."""

RESULT_FIELDS: tuple[str, ...] = (
    "backbone", "device", "batch_size", "input_size", "fpn", "impl", "mode", "dtype", "channels_last", "compiled",
    "status", "note", "images_per_s", "latency_ms_p50", "latency_ms_p95", "latency_ms_min", "peak_memory_mib",
    "memory_method", "peak_rss_mib", "gmacs_per_image", "gflops_per_s", "ceiling_key", "ceiling_gflops_per_s",
    "ceiling_fraction", "ratio_vs", "max_abs_diff", "max_rel_diff", "setup_s", "repeats",
)  # fmt: skip
"""Fields of every row of ``results`` in the JSON (all present, ``None`` where not measured)."""


def _check_tuple(name: str, values: Any, allowed: tuple[str, ...] | None = None) -> tuple:
    values = (values,) if isinstance(values, (str, int)) else tuple(values)
    if not values:
        raise ValueError(f"{name} is empty: give at least one value.")
    if allowed is not None:
        bad = [v for v in values if v not in allowed]
        if bad:
            raise ValueError(f"{name} has {bad[0]!r}, which is not one of {allowed}.")
    return values


@dataclass
class BenchConfig:
    """What to benchmark.

    Attributes:
        backbones: Registry names.
        batch_sizes: Images per forward.
        input_sizes: Square input sizes in pixels.
        devices: ``"cpu"``, ``"cuda"`` or ``"auto"`` (CPU, plus CUDA when present).
        modes: Our modes, keys of :data:`~resbackbone.bench.candidates.MODES`.
        competitors: Libraries run side by side, keys of ``COMPETITORS`` (may be empty).
        fpn: Time backbone + the FPN :func:`~resbackbone.build_fpn` puts on it
            (torchvision's ``FeaturePyramidNetwork`` and a max-pool level) instead of the backbone alone.
        fpn_channels: FPN output channels.
        inference: Run the inference comparison.
        train: Add forward+backward figures with and without gradient checkpointing.
        train_models: ``"backbone"`` (:func:`~resbackbone.create_backbone`'s) and/or
            ``"fasterrcnn_fpn"`` (:func:`~resbackbone.build_detector`'s, as a recipe builds it).
        train_amp: Train steps under bf16 autocast.
        train_checkpointing: What the checkpointed steps pass to
            ``set_grad_checkpointing``: ``True`` (the backbone's default, the
            stages at stride 8 or finer) or ``"stem"`` and levels (``("stem", "C2")``).
        warmup: Untimed calls per model (the first one compiles).
        repeats: Timed calls per model, interleaved across models.
        weights: Weight string for every model, or ``None`` for seeded random
            weights with randomised batch-norm statistics.
        seed: Seed of the weights and the input.
        allow_emulated: Run bf16/fp16 modes on a device without native support
            (otherwise they are reported as skipped).
        ceiling_s: Seconds spent timing each ceiling matmul.
        train_model_options: Fields of a recipe's ``model:`` section for ``fasterrcnn_fpn``
            over the recipe's defaults, from :data:`~resbackbone.bench.train_step.DETECTOR_OPTIONS`,
            e.g. ``{"levels": ["C3", "C4", "C5"], "fpn_channels": 128}`` (a CPU recipe's).
    """

    backbones: tuple[str, ...] = ("resnet50",)
    batch_sizes: tuple[int, ...] = (8,)
    input_sizes: tuple[int, ...] = (224,)
    devices: tuple[str, ...] = ("auto",)
    modes: tuple[str, ...] = ("eager", "fold", "fast", "fast-bf16")
    competitors: tuple[str, ...] = ("timm", "torchvision", "smp")
    fpn: bool = False
    fpn_channels: int = 256
    inference: bool = True
    train: bool = False
    train_models: tuple[str, ...] = TRAIN_MODELS
    train_amp: bool = False
    train_checkpointing: bool | tuple[str, ...] = True
    warmup: int = 3
    repeats: int = 10
    weights: str | None = None
    seed: int = 0
    allow_emulated: bool = False
    ceiling_s: float = 1.0
    train_model_options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.backbones = _check_tuple("backbones", self.backbones)
        for name in self.backbones:
            get_spec(name)
        self.modes = _check_tuple("modes", self.modes, tuple(MODES))
        self.competitors = tuple(self.competitors)
        _check_tuple("competitors", self.competitors or ("timm",), tuple(COMPETITORS))
        self.devices = _check_tuple("devices", self.devices, ("auto", "cpu", "cuda"))
        self.train_models = _check_tuple("train_models", self.train_models, TRAIN_MODELS)
        if not isinstance(self.train_model_options, Mapping):
            raise TypeError(
                f"train_model_options={self.train_model_options!r} is not valid: expected a dict of recipe "
                "model fields, such as {'fpn_channels': 128}."
            )
        self.train_model_options = dict(self.train_model_options)
        if self.train_model_options:
            detector_recipe(self.backbones[0], weights=self.weights, options=self.train_model_options)
        if self.train_checkpointing is False:
            raise ValueError("train_checkpointing=False would time two plain steps: pass True or stage names.")
        if self.train_checkpointing is not True:
            self.train_checkpointing = _check_tuple("train_checkpointing", self.train_checkpointing, ("stem", *LEVELS))
        for name in ("batch_sizes", "input_sizes"):
            values = _check_tuple(name, getattr(self, name))
            if any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in values):
                raise ValueError(f"{name}={values!r} is not valid: expected positive ints.")
            setattr(self, name, values)
        if min(self.input_sizes) < 32:
            raise ValueError(f"input_sizes={self.input_sizes!r}: sizes under 32 px leave no C5 map; use 32 or more.")
        for name, minimum in (("warmup", 0), ("repeats", 1), ("fpn_channels", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ValueError(f"{name}={value!r} is not valid: expected an int ≥ {minimum}.")
        if "cuda" in self.devices and not torch.cuda.is_available():
            raise ValueError("devices includes 'cuda' but no CUDA device is available; use 'cpu' or 'auto'.")

    def resolved_devices(self) -> list[torch.device]:
        names: list[str] = []
        for d in self.devices:
            names += ["cpu", "cuda"] if d == "auto" and torch.cuda.is_available() else ["cpu"] if d == "auto" else [d]
        return [torch.device(n) for n in dict.fromkeys(names)]


def _macs(name: str, size: int, fpn_channels: int | None) -> float:
    """MACs of one image through the C2–C5 trunk (and the FPN), counted on the meta device."""
    from ..heads import build_fpn  # torchvision: not at start-up

    with torch.device("meta"):
        backbone = create_backbone(name).eval()
        model = build_fpn(backbone, out_channels=fpn_channels).eval() if fpn_channels else backbone
    return count_macs(model, (1, backbone.in_chans, size, size))


def _differences(outputs: list[Tensor], reference: list[Tensor]) -> tuple[float, float]:
    if len(outputs) != len(reference) or any(o.shape != r.shape for o, r in zip(outputs, reference)):
        shapes = [tuple(o.shape) for o in outputs]
        raise ValueError(
            f"outputs of shapes {shapes} do not match the reference's {[tuple(r.shape) for r in reference]}"
        )
    abs_diff = rel_diff = 0.0
    for out, ref in zip(outputs, reference):
        diff = (out.float() - ref.float()).abs().max().item()
        abs_diff = max(abs_diff, diff)
        rel_diff = max(rel_diff, diff / max(ref.abs().max().item(), 1e-12))
    return abs_diff, rel_diff


def _empty_row(**values: Any) -> dict[str, Any]:
    row = dict.fromkeys(RESULT_FIELDS)
    row.update(values)
    return row


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _run_config(
    config: BenchConfig, name: str, device: torch.device, batch: int, size: int, macs: float
) -> list[dict[str, Any]]:
    base = {
        "backbone": name,
        "device": device.type,
        "batch_size": batch,
        "input_size": size,
        "fpn": config.fpn,
        "gmacs_per_image": macs / 1e9,
        "repeats": config.repeats,
    }
    reference_model: Backbone = build_reference(name, weights=config.weights, seed=config.seed, device=device)
    fpn = make_fpn(reference_model, config.fpn_channels, config.seed).to(device) if config.fpn else None
    x = torch.randn(
        batch, reference_model.in_chans, size, size, generator=torch.Generator().manual_seed(config.seed)
    ).to(device)

    rows: list[dict[str, Any]] = []
    candidates: list[tuple[Candidate, dict[str, Any]]] = []
    jobs = [("resbackbone", mode) for mode in config.modes] + [(impl, "eager") for impl in config.competitors]
    for impl, mode in jobs:
        dtype = MODES[mode].dtype if impl == "resbackbone" else torch.float32
        row = _empty_row(**base, impl=impl, mode=mode, dtype=DTYPE_NAMES[dtype])
        rows.append(row)
        if not native_low_precision(device, dtype) and not config.allow_emulated:
            row.update(
                status="skipped",
                note=f"{DTYPE_NAMES[dtype]} is emulated on this {device.type}, not native "
                "(no AVX512-BF16/AMX); --allow-emulated runs it anyway, slowly",
            )
            continue
        _log(f"  building {impl}/{mode} …")
        start = time.perf_counter()
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                candidate = (
                    build_mode(mode, reference_model, fpn=fpn)
                    if impl == "resbackbone"
                    else build_competitor(impl, reference_model, fpn=fpn)
                )
                with torch.inference_mode():
                    for _ in range(max(config.warmup, 1)):  # the first call compiles
                        candidate.fn(x)
                    synchronize(device)
        except CompetitorUnavailable as exc:
            row.update(status="skipped", note=str(exc))
            continue
        except Exception as exc:  # one broken candidate must not sink the run
            row.update(status="error", note=f"{type(exc).__name__}: {exc}"[:300])
            continue
        if candidate.fast is not None:  # a failed compilation falls back on the first call
            candidate.compiled = candidate.fast.compiled
        # only the fallbacks: torch's own deprecation notices also name torch.compile
        fallback = [str(w.message) for w in caught if issubclass(w.category, CompileFallbackWarning)]
        row.update(
            status="ok",
            note="; ".join([candidate.note, *fallback]).strip("; ")[:300],
            channels_last=candidate.channels_last,
            compiled=candidate.compiled,
            setup_s=time.perf_counter() - start,
        )
        candidates.append((candidate, row))

    with torch.inference_mode(), exact_fp32(device):
        reference = [t.float().clone() for t in build_mode("eager", reference_model, fpn=fpn).fn(x)]
    for candidate, row in candidates:
        with torch.inference_mode():
            try:
                row["max_abs_diff"], row["max_rel_diff"] = _differences(candidate.fn(x), reference)
            except ValueError as exc:
                row["note"] = (row["note"] + "; " if row["note"] else "") + str(exc)
            with PeakMemory(device) as peak:
                candidate.fn(x)
        row.update(peak_memory_mib=peak.mib, memory_method=peak.method, peak_rss_mib=peak.rss_mib)

    # The ceiling matmuls join the rounds: the fraction of the ceiling compares like with like
    keys = sorted({ceiling_key(c.dtype, device) for c, _ in candidates})
    settings = {key: ceiling_settings(key) for key in keys}
    probes = {key: MatmulProbe(device, dtype, tf32=tf32) for key, (dtype, tf32) in settings.items()}
    times: dict[int, list[float]] = {id(c): [] for c, _ in candidates}
    probe_times: dict[str, list[float]] = {key: [] for key in probes}
    with torch.inference_mode():
        for _ in range(config.repeats):  # interleaved: drift and neighbours hit every model alike
            for candidate, _ in candidates:
                times[id(candidate)].append(timed(lambda c=candidate: c.fn(x), device))
            for key, probe in probes.items():
                probe_times[key].append(timed(probe, device))
    same_run = {key: probes[key].gflops(median(probe_times[key])) for key in probes}
    for candidate, row in candidates:
        p50 = median(times[id(candidate)])
        row.update(
            images_per_s=batch / p50,
            latency_ms_p50=p50 * 1e3,
            latency_ms_p95=percentile(times[id(candidate)], 95) * 1e3,
            latency_ms_min=min(times[id(candidate)]) * 1e3,
            gflops_per_s=2 * macs * batch / p50 / 1e9,
        )
        key = ceiling_key(candidate.dtype, device)
        row.update(ceiling_key=key, ceiling_gflops_per_s=same_run[key])
        row["ceiling_fraction"] = row["gflops_per_s"] / same_run[key]
    speeds = {
        row["impl"]: row["images_per_s"] for row in rows if row["impl"] != "resbackbone" and row["status"] == "ok"
    }
    for row in rows:
        row["ratio_vs"] = {
            impl: (row["images_per_s"] / speed if row["images_per_s"] else None) for impl, speed in speeds.items()
        }
    del candidates
    gc.collect()
    return rows


def run_benchmark(config: BenchConfig, *, command: str | None = None) -> dict[str, Any]:
    """Run the benchmark ``config`` describes; progress goes to stderr.

    Args:
        config: What to run.
        command: The command line recorded in the result (default: ``sys.argv``).

    Returns:
        The JSON-ready result: ``schema_version``, ``created``, ``command``,
        ``config``, ``machine``, ``ceilings`` (GFLOP/s by device and dtype),
        ``results`` (rows with :data:`RESULT_FIELDS`) and ``train`` (rows with
        :data:`~resbackbone.bench.train_step.TRAIN_FIELDS`). See ``benchmarks/README.md``.

    Example:
        >>> result = run_benchmark(BenchConfig(backbones=("resnet18",), batch_sizes=(1,), input_sizes=(64,)))
        >>> [(r["impl"], r["mode"], round(r["images_per_s"])) for r in result["results"]]
    """
    started = time.perf_counter()
    document: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": command or " ".join([Path(sys.argv[0]).name, *map(shlex.quote, sys.argv[1:])]),
        "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(config).items()},
        "machine": machine_info(),
        "ceilings": {},
        "results": [],
        "train": [],
    }
    for device in config.resolved_devices():
        dtypes = {torch.float32} | {MODES[m].dtype for m in config.modes}
        dtypes = {d for d in dtypes if d == torch.float32 or d == torch.bfloat16 or native_low_precision(device, d)}
        _log(f"[{device.type}] matmul ceilings for {sorted(DTYPE_NAMES[d] for d in dtypes)} …")
        document["ceilings"][device.type] = matmul_ceilings(device, dtypes, budget_s=config.ceiling_s)
        for name in config.backbones:
            for size in config.input_sizes:
                macs = _macs(name, size, config.fpn_channels if config.fpn else None)
                for batch in config.batch_sizes:
                    if config.inference:
                        _log(f"[{device.type}] {name} batch {batch} {size}×{size}")
                        document["results"] += _run_config(config, name, device, batch, size, macs)
                    if config.train:
                        _log(f"[{device.type}] {name} batch {batch} {size}×{size}: training steps")
                        document["train"] += run_train(
                            name,
                            device=device,
                            batch=batch,
                            size=size,
                            models=config.train_models,
                            weights=config.weights,
                            seed=config.seed,
                            warmup=max(1, config.warmup),
                            repeats=config.repeats,
                            amp=config.train_amp,
                            checkpointing=config.train_checkpointing,
                            options=config.train_model_options,
                        )
    document["machine"]["load_average_end"] = machine_info()["load_average"]
    document["duration_s"] = time.perf_counter() - started
    return document
