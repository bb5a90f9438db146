"""``torch.compile`` with frozen weights, native low-precision detection, and memory-format measurement."""

from __future__ import annotations

import copy
import time
from typing import Any

import torch
from torch import nn

__all__ = [
    "CONTIGUOUS_MARGIN",
    "CompileFallbackWarning",
    "compile_frozen",
    "measure_memory_format",
    "native_low_precision",
    "prefer_channels_last",
    "prefers_bf16",
]

CONTIGUOUS_MARGIN = 0.9
"""Contiguous is chosen over channels-last only when it is 10 % faster (channels-last wins ties)."""


class CompileFallbackWarning(UserWarning):
    """``torch.compile`` is unavailable or failed: the folded model runs eagerly."""


def native_low_precision(device: torch.device | str, dtype: torch.dtype) -> bool:
    """Whether ``device`` computes convolutions in ``dtype`` natively (fast), not by emulation.

    On CPU this is checked when called, not assumed: oneDNN must take the dtype at
    the instruction set it is allowed (``ONEDNN_MAX_CPU_ISA`` caps it), and for
    bf16 the processor must have AVX512-BF16 or AMX (oneDNN also accepts plain
    AVX512 for bf16, by conversion, which is slower than fp32); fp16 needs
    AVX512-FP16/AMX-FP16. On CUDA bf16 needs compute capability 8.0 or newer.
    """
    device = torch.device(device)
    if dtype == torch.float32:
        return True
    if device.type == "cuda":
        return dtype == torch.float16 or torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return True
    probe = "_is_mkldnn_bf16_supported" if dtype == torch.bfloat16 else "_is_mkldnn_fp16_supported"
    try:
        if not getattr(torch.ops.mkldnn, probe)():
            return False
    except (AttributeError, RuntimeError):
        return False
    if dtype != torch.bfloat16:
        return True
    instructions = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in instructions)


def prefers_bf16(device: torch.device | str) -> bool:
    """Whether ``auto`` runs bf16 on ``device``: native bf16 that is also faster than fp32.

    On CUDA, native bf16 (compute capability 8.0 or newer). On a CPU, native bf16
    *and* AMX tiles, checked when called. AVX512-BF16 alone computes bf16
    natively, faster on some processors and slower on others: on a 2-core Xeon
    without AMX, bf16 autocast made a ResNet-18 DeepLabV3+ training step 0.79x and
    a Faster R-CNN step 0.80x as fast as fp32, and a whole ResNet-50 DeepLabV3+
    inference 0.91x (``resbackbone bench --models``); on a 2-core Zen 5 EPYC both
    training steps ran 1.8x as fast. So this answers no there, and training times
    the two (``resbackbone.engine.acceleration.amp_candidates``); with AMX the bf16
    fast path is several times faster than fp32. An explicit ``amp: bf16`` or
    ``dtype=torch.bfloat16`` still runs bf16.
    """
    device = torch.device(device)
    if not native_low_precision(device, torch.bfloat16):
        return False
    if device.type != "cpu":
        return True
    return bool(getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)())


def measure_memory_format(
    trunk: nn.Module, in_chans: int, device: torch.device, dtype: torch.dtype, rounds: int = 5
) -> dict[str, float]:
    """Seconds per forward in each memory format: the best of ``rounds`` alternating calls.

    The minimum, not the median, and alternating calls: a busy neighbour then
    slows both formats alike instead of deciding the choice.
    """
    batch, size = (8, 224) if device.type == "cuda" else (1, 128)
    x = torch.randn(batch, in_chans, size, size, device=device, dtype=dtype)
    formats = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}
    runs = {
        name: (copy.deepcopy(trunk).to(memory_format=fmt), x.contiguous(memory_format=fmt))
        for name, fmt in formats.items()
    }
    times: dict[str, list[float]] = {name: [] for name in formats}
    with torch.inference_mode():
        for model, inputs in runs.values():
            model(inputs)
        for _ in range(rounds):
            for name, (model, inputs) in runs.items():
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                start = time.perf_counter()
                model(inputs)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                times[name].append(time.perf_counter() - start)
    return {name: min(values) for name, values in times.items()}


class _FrozenCompiled:
    """``torch.compile`` output whose calls run with inductor's ``freezing`` on."""

    def __init__(self, module: nn.Module, mode: str | None) -> None:
        self.compiled = torch.compile(module, mode=mode, dynamic=False)

    def __call__(self, *args: Any) -> Any:
        from torch._inductor import config

        # Dynamo reads the flag while it traces, so it must be set around the call
        # (options={"freezing": True} passed to torch.compile comes too late: pytorch#139272).
        with config.patch(freezing=True):
            return self.compiled(*args)


def compile_frozen(module: nn.Module, *, mode: str | None = None) -> Any:
    """``torch.compile`` with weights frozen into constants: prepacked, folded and fused.

    With freezing, inductor folds constants and, on CPU, prepacks convolution
    weights for oneDNN and fuses convolution + add + ReLU into one oneDNN call.
    Call the result under ``torch.no_grad``/``torch.inference_mode``, after the
    module's weights are final.

    Args:
        module: The module to compile; its parameters must not change afterwards.
        mode: A ``torch.compile`` mode, or ``None`` for the default.

    Returns:
        A callable with the module's signature.
    """
    return _FrozenCompiled(module, mode)


def prefer_channels_last(timings: dict[str, float]) -> bool:
    """Channels-last unless contiguous was at least 10 % faster in the ``timings`` of a measurement
    (:func:`measure_memory_format`, or training's ``measure_training_steps``)."""
    return timings["contiguous"] > CONTIGUOUS_MARGIN * timings["channels_last"]
