"""The machine a benchmark runs on: description, matmul ceiling, timing and peak memory."""

from __future__ import annotations

import contextlib
import gc
import os
import platform
import statistics
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from functools import partial
from importlib import metadata
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

__all__ = [
    "DTYPE_NAMES",
    "MatmulProbe",
    "PeakMemory",
    "ceiling_key",
    "ceiling_settings",
    "machine_info",
    "matmul_ceiling",
    "matmul_ceilings",
    "synchronize",
    "timed",
]

DTYPE_NAMES: dict[torch.dtype, str] = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}
"""Names of the compute dtypes in the rows and of the ceilings (``"tf32"`` besides: fp32 with TF32 on CUDA)."""

_LIBRARIES = ("torch", "torchvision", "timm", "segmentation-models-pytorch", "numpy", "resbackbone")
_CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_tile", "avx_vnni")


def _cpu_model_and_flags() -> tuple[str, list[str]]:
    model, flags = platform.processor() or platform.machine(), []
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key.strip() == "model name" and model in ("", platform.machine(), platform.processor()):
                model = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = value.split()
    return model, [flag for flag in _CPU_FLAGS if flag in flags]


def machine_info() -> dict[str, Any]:
    """CPU model and flags, cores, threads, memory, GPUs, library versions and load.

    Returns:
        A JSON-ready dict (see ``benchmarks/README.md`` for the fields).
    """
    cpu_model, flags = _cpu_model_and_flags()
    versions = {}
    for name in _LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    versions["python"] = platform.python_version()
    gpus = []
    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(index)
            gpus.append(
                {
                    "name": props.name,
                    "memory_gib": round(props.total_memory / 2**30, 1),
                    "capability": f"{props.major}.{props.minor}",
                }
            )
    memory_gib = None
    with contextlib.suppress(OSError, ValueError, AttributeError):
        memory_gib = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    return {
        "hostname": platform.node(),
        "platform": platform.platform(),
        "cpu_model": cpu_model,
        "cpu_flags": flags,
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "memory_gib": memory_gib,
        "gpus": gpus,
        "cuda": torch.version.cuda if torch.cuda.is_available() else None,
        "cudnn": torch.backends.cudnn.version() if torch.cuda.is_available() else None,
        "load_average": [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else None,
        "versions": versions,
    }


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device) -> float:
    """Seconds one call of ``fn`` takes, the device's queue drained before and after."""
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


class MatmulProbe:
    """A square matmul sized to take about 50 ms on ``device``: the machine's practical ceiling.

    The size doubles from 256 until one product takes 50 ms (or reaches 8192
    on a GPU, 4096 on a CPU), each size warmed up first. Call the probe to run
    one product; :meth:`gflops` turns a duration into GFLOP/s.

    Args:
        device: Where to run.
        dtype: Matrix dtype.
        tf32: On CUDA in fp32, allow TF32 tensor cores (else exact fp32).
    """

    def __init__(self, device: torch.device, dtype: torch.dtype, *, tf32: bool = False) -> None:
        self.device, self.tf32 = device, tf32
        largest = 8192 if device.type == "cuda" else 4096
        n = 256
        while True:
            self.a = torch.randn(n, n, device=device, dtype=dtype)
            self.b = torch.randn(n, n, device=device, dtype=dtype)
            timed(self, device)  # warm-up: library initialisation, kernel selection
            if timed(self, device) >= 0.05 or n >= largest:
                break
            n *= 2
        self.flop = 2 * n**3

    def __call__(self) -> None:
        if self.device.type != "cuda":
            with torch.inference_mode():
                self.a @ self.b
            return
        saved = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = self.tf32
        try:
            with torch.inference_mode():
                self.a @ self.b
        finally:
            torch.backends.cuda.matmul.allow_tf32 = saved

    def gflops(self, seconds: float) -> float:
        return self.flop / seconds / 1e9


def matmul_ceiling(device: torch.device, dtype: torch.dtype, *, budget_s: float = 1.0, tf32: bool = False) -> float:
    """GFLOP/s of a :class:`MatmulProbe`: the best of the products that fit in ``budget_s`` (at least 3)."""
    probe = MatmulProbe(device, dtype, tf32=tf32)
    times: list[float] = []
    deadline = time.perf_counter() + budget_s
    while time.perf_counter() < deadline or len(times) < 3:
        times.append(timed(probe, device))
    return probe.gflops(min(times))


def ceiling_settings(key: str) -> tuple[torch.dtype, bool]:
    """The dtype and TF32 switch of a ceiling key (``"tf32"`` is fp32 with TF32 allowed, CUDA only)."""
    if key == "tf32":
        return torch.float32, True
    by_name = {name: dtype for dtype, name in DTYPE_NAMES.items()}
    if key not in by_name:
        raise ValueError(f"Unknown ceiling key {key!r}: expected one of {(*by_name, 'tf32')}.")
    return by_name[key], False


def ceiling_key(dtype: torch.dtype, device: torch.device) -> str:
    """The ceiling a model computing in ``dtype`` on ``device`` is compared with."""
    if dtype == torch.float32 and device.type == "cuda" and torch.backends.cudnn.allow_tf32:
        return "tf32"  # cuDNN convolutions run in TF32 by default
    return DTYPE_NAMES[dtype]


def matmul_ceilings(device: torch.device, dtypes: set[torch.dtype], *, budget_s: float = 1.0) -> dict[str, float]:
    """:func:`matmul_ceiling` of each dtype by key, and of TF32 too where fp32 runs on CUDA."""
    keys = [DTYPE_NAMES[d] for d in sorted(dtypes, key=str)]
    if device.type == "cuda" and "fp32" in keys:
        keys.append("tf32")
    ceilings = {}
    for key in keys:
        dtype, tf32 = ceiling_settings(key)
        ceilings[key] = matmul_ceiling(device, dtype, budget_s=budget_s, tf32=tf32)
    return ceilings


def _status_kib(field: str) -> int | None:
    with contextlib.suppress(OSError), open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return None


class _TensorPeak(TorchDispatchMode):
    """Live bytes of the tensors allocated inside the block, and their peak.

    Only storages that an op freshly allocates count (views and in-place
    results alias existing memory); a weak reference to each storage says
    when it is freed. Sees every eager op, forward and backward, not the
    buffers inside compiled code.
    """

    def __init__(self) -> None:
        super().__init__()
        self.live = self.peak = 0
        self._refs: dict[int, weakref.ref] = {}

    def _freed(self, key: int, nbytes: int) -> None:
        self.live -= nbytes
        self._refs.pop(key, None)

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        if any(r.alias_info is not None for r in func._schema.returns):
            return out
        for tensor in tree_leaves(out):
            if isinstance(tensor, torch.Tensor) and tensor.device.type == "cpu":
                storage = tensor.untyped_storage()
                key = storage._cdata
                if key not in self._refs:
                    nbytes = storage.nbytes()
                    self.live += nbytes
                    self.peak = max(self.peak, self.live)
                    self._refs[key] = weakref.ref(storage, partial(_call_freed, self, key, nbytes))
        return out


def _call_freed(mode: _TensorPeak, key: int, nbytes: int, _ref: object) -> None:
    mode._freed(key, nbytes)


class PeakMemory:
    """Peak memory a block of code adds over what was allocated before it.

    CUDA: ``torch.cuda.max_memory_allocated`` after a reset, minus the
    allocation before (method ``"cuda-max-allocated"``).

    CPU, ``tensors=True``: the peak of the live bytes of the tensors the block
    allocates, followed op by op with a dispatch mode (``"cpu-tensor-peak"``):
    the CPU analogue of the CUDA figure, for eager code only (training steps).

    CPU, ``tensors=False``: the process's resident-set high-water mark
    (``VmHWM``, reset through ``/proc/self/clear_refs``) minus its resident set
    before, after handing the allocator's free pages back with ``malloc_trim``
    (``"cpu-rss-hwm"``); where the reset is not allowed, a thread samples
    ``VmRSS`` every millisecond (``"cpu-rss-sampled"``). This works for
    compiled code too, and includes allocator slack. :attr:`rss_mib` holds
    this figure on CPU whatever ``tensors`` is.

    Example:
        >>> with PeakMemory(torch.device("cpu")) as peak:
        ...     model(x)
        >>> peak.mib, peak.method
    """

    def __init__(self, device: torch.device, *, tensors: bool = False) -> None:
        self.device = device
        self.mib: float | None = None
        self.rss_mib: float | None = None
        if device.type == "cuda":
            self.method = "cuda-max-allocated"
        else:
            self.method = "cpu-tensor-peak" if tensors else "cpu-rss-hwm"
        self._rss_method = "cpu-rss-hwm"
        self._tensors = _TensorPeak() if self.method == "cpu-tensor-peak" else None
        self._base = 0
        self._samples: list[int] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> PeakMemory:
        gc.collect()
        if self.device.type == "cuda":
            synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
            return self
        from ..engine.acceleration import glibc  # the engine: not at start-up

        libc = glibc()
        if libc is not None:  # hand freed memory back, so the peak is this block's
            libc.malloc_trim(0)
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            self._rss_method = "cpu-rss-sampled"
            self.method = self.method.replace("cpu-rss-hwm", "cpu-rss-sampled")
        self._base = _status_kib("VmRSS") or 0
        if self._rss_method == "cpu-rss-sampled":
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        if self._tensors is not None:
            self._tensors.__enter__()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            self._samples.append(_status_kib("VmRSS") or 0)
            time.sleep(0.001)

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            synchronize(self.device)
            self.mib = (torch.cuda.max_memory_allocated(self.device) - self._base) / 2**20
            return
        if self._tensors is not None:
            self._tensors.__exit__(*exc)
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            peak = max(self._samples, default=self._base)
        else:
            peak = _status_kib("VmHWM") or self._base
        self.rss_mib = max(peak - self._base, 0) / 1024
        self.mib = self._tensors.peak / 2**20 if self._tensors is not None else self.rss_mib


def percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile (0–100) with linear interpolation, as numpy's default."""
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def median(values: list[float]) -> float:
    return statistics.median(values)


@contextlib.contextmanager
def exact_fp32(device: torch.device) -> Iterator[None]:
    """Disable TF32 on CUDA for the block, so an fp32 reference is fp32."""
    if device.type != "cuda":
        yield
        return
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved
