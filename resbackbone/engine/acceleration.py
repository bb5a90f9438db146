"""How a training run is made fast: the precision ``optim.amp: auto`` picks (or measures), the
memory format ``run.channels_last: auto`` measures, the compiled training step of ``run.compile``, and the
process's ``malloc`` kept from returning tensor buffers to the system (``run.malloc``).

``auto`` settings are resolved once, when the :class:`~resbackbone.engine.Trainer`
is built; the run's start line and ``summary.json`` say what was chosen.
"""

from __future__ import annotations

import contextlib
import copy
import ctypes
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from ..optimize.compiling import native_low_precision, prefer_channels_last, prefers_bf16

__all__ = [
    "BF16_MARGIN",
    "TrainingSpeed",
    "amp_candidates",
    "autocast",
    "choose_training_speed",
    "compile_for_training",
    "configure_malloc",
    "glibc",
    "measure_training_steps",
    "precision_text",
    "prefer_channels_last",
    "resolve_amp",
    "sample_batch",
]

BF16_MARGIN = 0.9
"""Measured under ``amp: auto``, bf16 is chosen only when its step is at least 10 % faster than fp32's."""


_AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(device: torch.device, amp: str) -> contextlib.AbstractContextManager[Any]:
    """Autocast to ``amp`` (``"bf16"``/``"fp16"``) on ``device``, or nothing for ``"none"``.

    Raises:
        ValueError: ``amp`` is not resolved (``"auto"``: pass it through :func:`resolve_amp` first) or unknown.
    """
    if amp == "none":
        return contextlib.nullcontext()
    if amp not in _AUTOCAST_DTYPES:
        raise ValueError(
            f"autocast precision {amp!r}: expected 'none', 'bf16' or 'fp16'; resolve optim.amp with "
            "resolve_amp(amp, device) first."
        )
    return torch.autocast(device_type=device.type, dtype=_AUTOCAST_DTYPES[amp])


def resolve_amp(amp: str, device: torch.device) -> str:
    """The autocast precision ``optim.amp`` means on ``device`` without measuring: ``"none"``, ``"bf16"`` or ``"fp16"``.

    ``"auto"`` is ``"bf16"`` where bf16 is native and known to be faster than fp32
    (CUDA with bf16 support; a CPU with AMX, as :func:`~resbackbone.optimize.prefers_bf16`
    checks), else ``"none"``. Training measures where this cannot know (see
    :func:`amp_candidates`); evaluation and prediction on their own take this answer.

    Raises:
        ValueError: ``"fp16"`` on a device other than CUDA.
    """
    if amp == "fp16" and device.type != "cuda":
        raise ValueError("optim.amp='fp16' needs a CUDA device; use amp: bf16 on the CPU, or amp: none (or auto).")
    if amp != "auto":
        return amp
    return "bf16" if prefers_bf16(device) else "none"


def amp_candidates(amp: str, device: torch.device) -> tuple[str, ...]:
    """The precisions a training run chooses from under ``optim.amp``: one, or ``("none", "bf16")`` to measure.

    ``auto`` on a CPU that computes bf16 natively (AVX512-BF16) but has no AMX is
    measured, since the answer depends on the processor: bf16 autocast made a
    Faster R-CNN training step 0.80x as fast as fp32 on a 2-core Xeon, and 1.8x
    as fast on a 2-core AMD EPYC of the Zen 5 generation. Elsewhere the answer
    of :func:`resolve_amp` stands.
    """
    resolved = resolve_amp(amp, device)
    if amp == "auto" and resolved == "none" and device.type == "cpu" and native_low_precision(device, torch.bfloat16):
        return ("none", "bf16")
    return (resolved,)


def precision_text(
    asked: str, resolved: str, device: torch.device, *, measured: bool = False, kept: bool = False
) -> str:
    """What ``optim.amp: asked`` came to on ``device``, for a run's start line and summary.

    ``measured``: chosen by timing both; ``kept``: a resumed run's, the precision the run began in."""
    text = {"none": "fp32", "bf16": "bf16 autocast", "fp16": "fp16 autocast"}[resolved]
    if asked == "auto" and kept:
        text += " (amp: auto; as the run began, kept on --resume)"
    elif asked == "auto":
        faster = "faster" if resolved == "bf16" else "not faster"
        text += f" (amp: auto; bf16 {'measured ' if measured else 'is '}{faster} than fp32 on this {device.type})"
    return text


def glibc() -> ctypes.CDLL | None:
    """The process's C library when it is glibc (Linux), else ``None`` (macOS, Windows, musl)."""
    if "CS_GNU_LIBC_VERSION" not in getattr(os, "confstr_names", {}) or not os.confstr("CS_GNU_LIBC_VERSION"):
        return None
    with contextlib.suppress(OSError):
        return ctypes.CDLL("libc.so.6")
    return None


# glibc's mallopt parameters (malloc.h) and the values run.malloc: reuse sets
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
_REUSE = {_M_MMAP_THRESHOLD: 32 << 20, _M_TRIM_THRESHOLD: (1 << 31) - 1, _M_TOP_PAD: 256 << 20}


def configure_malloc(mode: str) -> bool:
    """``run.malloc``: with ``"reuse"``, glibc's ``malloc`` keeps freed tensor buffers; returns whether it does.

    By default glibc serves every buffer above a few MB with its own ``mmap`` and
    unmaps it when freed, and gives the heap's free top back to the system: a
    training step that allocates the same activations again touches every page
    afresh (a DeepLabV3+ step of 8x256² crops takes about 290,000 page faults,
    a quarter of its CPU time in the kernel). This sets, for the whole process
    and the data-loading workers it forks: buffers up to 32 MB (glibc's
    ceiling) from the heap, no trimming, and heap growth in 256 MB steps — what
    ``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_`` and ``MALLOC_TOP_PAD_``
    would set at start-up, and what jemalloc or tcmalloc do by design. The
    process then keeps the memory of its peak until it exits.

    ``"system"`` leaves ``malloc`` as the process found it (an earlier ``"reuse"`` in the same
    process stays). Only Linux with glibc has ``mallopt``; elsewhere nothing changes and this
    returns ``False``.

    Raises:
        ValueError: ``mode`` is neither ``"reuse"`` nor ``"system"``.
    """
    if mode not in ("reuse", "system"):
        raise ValueError(f"run.malloc {mode!r}: expected 'reuse' (keep freed buffers) or 'system' (malloc as it is)")
    libc = glibc() if mode == "reuse" else None
    return libc is not None and all(libc.mallopt(param, value) == 1 for param, value in _REUSE.items())


@contextlib.contextmanager
def _rng_kept() -> Iterator[None]:
    state = torch.get_rng_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    try:
        yield
    finally:
        torch.set_rng_state(state)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)


def sample_batch(task: str, batch: int, in_chans: int, hw: tuple[int, int], num_classes: int) -> tuple[Any, Any]:
    """A seeded synthetic training batch: images and masks, or a list of images and of target dicts
    (4 boxes each)."""
    generator = torch.Generator().manual_seed(0)
    h, w = hw
    images = torch.rand(batch, in_chans, h, w, generator=generator)
    if task == "segmentation":
        return images, torch.randint(0, num_classes, (batch, h, w), generator=generator)
    targets = []
    for _ in range(batch):
        xy = torch.rand(4, 2, generator=generator) * torch.tensor([w, h]) * 0.6
        wh = torch.rand(4, 2, generator=generator) * torch.tensor([w, h]) * 0.3 + 4
        boxes = torch.cat([xy, torch.minimum(xy + wh, torch.tensor([w, h]))], dim=1)
        targets.append({"boxes": boxes, "labels": torch.randint(1, max(2, num_classes), (4,), generator=generator)})
    return list(images), targets


def _layout_name(channels_last: bool) -> str:
    return "channels_last" if channels_last else "contiguous"


def measure_training_steps(
    model: nn.Module,
    variants: Sequence[tuple[str, bool]],
    *,
    task: str,
    loss_fn: Any,
    batch: int,
    hw: tuple[int, int],
    in_chans: int,
    num_classes: int,
    device: torch.device,
    rounds: int = 2,
) -> dict[tuple[str, bool], float]:
    """Seconds of one training step (forward and backward, no update) in each ``(amp, channels_last)`` variant.

    Copies of ``model`` take the steps on a synthetic batch of the run's shape, in
    alternating rounds (best of ``rounds`` after one warm-up each); the model, its
    batch-norm statistics and the random state are left as they were.

    Args:
        model: The model to train (not changed).
        variants: ``(resolved autocast precision, channels-last)`` pairs to time.
        task: ``"detection"`` or ``"segmentation"``.
        loss_fn: Segmentation: ``(output, masks) -> {name: loss}``; ignored for detection.
        batch: Images per step.
        hw: Training crop ``(height, width)``.
        in_chans: Input channels.
        num_classes: Classes the head predicts.
        device: Where the run trains.
        rounds: Timed steps per variant.

    Returns:
        ``{(amp, channels_last): seconds}``.
    """
    images, targets = sample_batch(task, batch, in_chans, hw, num_classes)
    times: dict[tuple[str, bool], list[float]] = {variant: [] for variant in variants}
    with _rng_kept():
        runs = {}
        for amp, channels_last in variants:
            fmt = torch.channels_last if channels_last else torch.contiguous_format
            trial = copy.deepcopy(model).to(device, memory_format=fmt).train()
            if isinstance(images, Tensor):
                x: Any = images.to(device, memory_format=fmt)
                y: Any = targets.to(device)
            else:
                x = [im.to(device) for im in images]
                y = [{k: v.to(device) for k, v in t.items()} for t in targets]
            runs[(amp, channels_last)] = (trial, x, y)

        def step(amp: str, trial: nn.Module, x: Any, y: Any) -> None:
            with autocast(device, amp):
                losses = trial(x, y) if task == "detection" else loss_fn(trial(x), y)
            sum(losses.values()).backward()
            trial.zero_grad(set_to_none=True)

        for (amp, _), run in runs.items():
            step(amp, *run)
        for _ in range(rounds):
            for variant, run in runs.items():
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                start = time.perf_counter()
                step(variant[0], *run)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                times[variant].append(time.perf_counter() - start)
    return {variant: min(values) for variant, values in times.items()}


@dataclass(frozen=True)
class TrainingSpeed:
    """What ``optim.amp`` and ``run.channels_last`` came to for a run, and the step timings that chose them."""

    amp: str
    channels_last: bool
    timings: dict[tuple[str, bool], float] = field(default_factory=dict)

    @property
    def amp_measured(self) -> bool:
        """Whether the precision was chosen by timing both."""
        return len({amp for amp, _ in self.timings}) > 1

    def measured_text(self) -> str:
        """The timings, e.g. ``"bf16 channels-last 232 ms, fp32 channels-last 425 ms a step"``; ``""`` if none."""
        if not self.timings:
            return ""
        parts = [
            (f"{'fp32' if amp == 'none' else amp} " if self.amp_measured else "")
            + f"{_layout_name(cl).replace('_', '-')} {s * 1e3:.0f} ms"
            for (amp, cl), s in sorted(self.timings.items(), key=lambda item: item[1])
        ]
        return ", ".join(parts) + " a step"


def choose_training_speed(model: nn.Module, *, amp: str, channels_last: bool | str, **shape: Any) -> TrainingSpeed:
    """Resolve ``optim.amp`` and ``run.channels_last`` for a run, timing a training step where either is ``auto``.

    The precisions are :func:`amp_candidates`'s; bf16 is taken over fp32 only when
    its best step is :data:`BF16_MARGIN` of fp32's or less, and the memory format is
    then chosen under that precision as :func:`prefer_channels_last` does.

    Args:
        model: The model to train (not changed).
        amp: ``optim.amp``.
        channels_last: ``run.channels_last``: ``True``, ``False`` or ``"auto"``.
        **shape: The keyword arguments of :func:`measure_training_steps` (task, loss_fn, batch, hw,
            in_chans, num_classes, device).
    """
    amps = amp_candidates(amp, shape["device"])
    layouts = (True, False) if channels_last == "auto" else (bool(channels_last),)
    if len(amps) == 1 and len(layouts) == 1:
        return TrainingSpeed(amps[0], layouts[0])
    timings = measure_training_steps(model, [(a, cl) for a in amps for cl in layouts], **shape)
    best = {a: min(timings[(a, cl)] for cl in layouts) for a in amps}
    chosen = "bf16" if len(amps) > 1 and best["bf16"] <= BF16_MARGIN * best["none"] else amps[0]
    layout = layouts[0]
    if len(layouts) > 1:
        layout = prefer_channels_last({_layout_name(cl): timings[(chosen, cl)] for cl in layouts})
    return TrainingSpeed(chosen, layout, timings)


def compile_for_training(model: nn.Module, task: str) -> list[str]:
    """Compile the training step in place (``nn.Module.compile``: the state-dict keys stay the same).

    A segmenter is compiled whole; for a torchvision detector, its backbone and
    FPN (the bulk of the step; proposal sampling and NMS stay eager).

    Returns:
        The names of the submodules compiled (``""`` for the whole model).
    """
    if task == "segmentation":
        model.compile()
        return [""]
    model.backbone.compile()
    return ["backbone"]
