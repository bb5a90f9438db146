"""How a training run is made fast: the precision ``optim.amp: auto`` picks, the memory format
``run.channels_last: auto`` measures, the compiled training step of ``run.compile``, and the
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
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn

from ..optimize.compiling import prefer_channels_last, prefers_bf16

__all__ = [
    "autocast",
    "compile_for_training",
    "configure_malloc",
    "glibc",
    "measure_training_memory_format",
    "precision_text",
    "prefer_channels_last",
    "resolve_amp",
    "sample_batch",
]


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
    """The autocast precision ``optim.amp`` means on ``device``: ``"none"``, ``"bf16"`` or ``"fp16"``.

    ``"auto"`` is ``"bf16"`` where bf16 is native and faster than fp32 (CUDA with
    bf16 support; a CPU with AMX, as :func:`~resbackbone.optimize.prefers_bf16`
    checks), else ``"none"``: an emulated bf16 step is slower than fp32, and so is
    a native one on AVX512-BF16 without AMX.

    Raises:
        ValueError: ``"fp16"`` on a device other than CUDA.
    """
    if amp == "fp16" and device.type != "cuda":
        raise ValueError("optim.amp='fp16' needs a CUDA device; use amp: bf16 on the CPU, or amp: none (or auto).")
    if amp != "auto":
        return amp
    return "bf16" if prefers_bf16(device) else "none"


def precision_text(asked: str, resolved: str, device: torch.device) -> str:
    """What ``optim.amp: asked`` came to on ``device``, for a run's start line and summary."""
    text = {"none": "fp32", "bf16": "bf16 autocast", "fp16": "fp16 autocast"}[resolved]
    if asked == "auto":
        faster = "faster" if resolved == "bf16" else "not faster"
        text += f" (amp: auto; bf16 is {faster} than fp32 on this {device.type})"
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


def measure_training_memory_format(
    model: nn.Module,
    *,
    task: str,
    loss_fn: Any,
    batch: int,
    hw: tuple[int, int],
    in_chans: int,
    num_classes: int,
    device: torch.device,
    amp: str,
    rounds: int = 2,
) -> dict[str, float]:
    """Seconds of one training step (forward and backward, no update) in each memory format.

    Copies of ``model`` take the steps on a synthetic batch of the run's shape, in
    alternating rounds (best of ``rounds`` after one warm-up each); the model, its
    batch-norm statistics and the random state are left as they were.

    Args:
        model: The model to train (not changed).
        task: ``"detection"`` or ``"segmentation"``.
        loss_fn: Segmentation: ``(output, masks) -> {name: loss}``; ignored for detection.
        batch: Images per step.
        hw: Training crop ``(height, width)``.
        in_chans: Input channels.
        num_classes: Classes the head predicts.
        device: Where the run trains.
        amp: The resolved autocast precision.
        rounds: Timed steps per format.

    Returns:
        ``{"contiguous": seconds, "channels_last": seconds}``.
    """
    images, targets = sample_batch(task, batch, in_chans, hw, num_classes)
    formats = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}
    times: dict[str, list[float]] = {name: [] for name in formats}
    with _rng_kept():
        runs = {}
        for name, fmt in formats.items():
            trial = copy.deepcopy(model).to(device, memory_format=fmt).train()
            if isinstance(images, Tensor):
                x: Any = images.to(device, memory_format=fmt)
                y: Any = targets.to(device)
            else:
                x = [im.to(device) for im in images]
                y = [{k: v.to(device) for k, v in t.items()} for t in targets]
            runs[name] = (trial, x, y)

        def step(trial: nn.Module, x: Any, y: Any) -> None:
            with autocast(device, amp):
                losses = trial(x, y) if task == "detection" else loss_fn(trial(x), y)
            sum(losses.values()).backward()
            trial.zero_grad(set_to_none=True)

        for run in runs.values():
            step(*run)
        for _ in range(rounds):
            for name, run in runs.items():
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                start = time.perf_counter()
                step(*run)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                times[name].append(time.perf_counter() - start)
    return {name: min(values) for name, values in times.items()}


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
