"""The inference fast path for a whole segmenter or detector, as ``predict --fast`` and ``evaluate --fast`` run it.

:func:`optimize_model` returns a frozen copy that takes and returns what the
model does (float32 in, float32 logits or torchvision's detection dicts out):

- batch norms folded into the convolutions before them: the backbone's found by
  tracing its stages, the heads' in their ``nn.Sequential`` blocks;
- bf16 where the device computes it natively (``dtype="auto"``), else fp32;
- the memory format measured (``channels_last="auto"``), as
  :func:`~resbackbone.optimize.optimize_for_inference` measures it;
- ``torch.compile`` with frozen weights: the whole segmenter; a detector's
  backbone and FPN (its proposal sampling, RoI pooling and NMS stay eager).

The compiled code is specialised to the input shape; a batch smaller than the
first one is padded to it (and the padding dropped), so that the last, partial
batch of a split does not compile again.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import Tensor, nn

from .compiling import (
    CompileFallbackWarning,
    compile_frozen,
    measure_memory_format,
    native_low_precision,
    prefer_channels_last,
    prefers_bf16,
)
from .folding import frozen_copy

__all__ = ["FrozenModule", "optimize_model"]

_DTYPES = {"auto": None, "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _float32(value: Any) -> Any:
    if isinstance(value, Tensor):
        return value.float() if value.is_floating_point() else value
    if isinstance(value, dict):
        return type(value)((k, _float32(v)) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return type(value)(_float32(v) for v in value)
    return value


def _take(value: Any, n: int) -> Any:
    if isinstance(value, Tensor):
        return value[:n]
    if isinstance(value, dict):
        return type(value)((k, _take(v, n)) for k, v in value.items())
    return value


class FrozenModule(nn.Module):
    """A module run frozen: in its dtype and memory format, compiled when asked, outputs back in float32.

    Build it with :func:`optimize_model`. Calls run under ``torch.inference_mode``;
    a batch smaller than the first one seen is padded to that size.

    Attributes:
        module: The (folded, cast) module.
        dtype: The dtype of its weights and activations.
        channels_last: Whether inputs are moved to channels-last.
        compiled: Whether ``torch.compile`` is in use (``False`` after a fallback).
        fast_settings: What was chosen (``dtype``, ``channels_last``, ``compiled``, and what
            :func:`optimize_model` adds), kept up to date when a compile falls back to eager.
    """

    def __init__(self, module: nn.Module, *, dtype: torch.dtype, channels_last: bool) -> None:
        super().__init__()
        self.module = module
        self.dtype = dtype
        self.channels_last = channels_last
        self.batch: int | None = None
        self.fast_settings: dict[str, Any] = {
            "dtype": str(dtype).removeprefix("torch."),
            "channels_last": channels_last,
        }
        self._use(module, compiled=False)

    def _use(self, run: Any, *, compiled: bool) -> None:
        # Kept out of _modules: the state dict stays the module's, with no "_orig_mod." duplicate.
        self.__dict__["_run"] = run
        self.compiled = self.fast_settings["compiled"] = compiled

    def compile(self, mode: str | None = None) -> None:  # type: ignore[override]
        """Compile :attr:`module` with frozen weights (falls back to eager, with a warning, where it cannot)."""
        try:
            self._use(compile_frozen(self.module, mode=mode), compiled=True)
        except Exception as exc:  # torch.compile unsupported on this Python/platform
            warnings.warn(
                f"torch.compile is unavailable ({exc!r}); running eagerly.", CompileFallbackWarning, stacklevel=2
            )

    def forward(self, x: Tensor) -> Any:
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        n = x.shape[0]
        if self.batch is None:
            self.batch = n
        elif n < self.batch:
            x = torch.cat([x, x[-1:].expand(self.batch - n, *x.shape[1:])])
        with torch.inference_mode():
            x = x.to(dtype=self.dtype, memory_format=fmt)
            try:
                out = self._run(x)
            except torch.cuda.OutOfMemoryError:
                raise
            except Exception as exc:
                if not self.compiled:
                    raise
                warnings.warn(
                    f"torch.compile failed ({type(exc).__name__}: {exc}); running eagerly from now on.",
                    CompileFallbackWarning,
                    stacklevel=2,
                )
                self._use(self.module, compiled=False)
                out = self._run(x)
        return _take(_float32(out), n)


def optimize_model(
    model: nn.Module,
    *,
    dtype: str | torch.dtype = "auto",
    compile: bool = True,
    channels_last: bool | str = "auto",
    fold_bn: bool = True,
) -> nn.Module:
    """A frozen, faster copy of a segmenter or detector that takes and returns what the model does.

    Args:
        model: A :class:`~resbackbone.heads.segmentation.Segmenter` or a torchvision detector from
            :func:`~resbackbone.build_detector` (not changed; its copy is put in eval mode).
        dtype: ``"auto"`` (bf16 where the device computes it natively, else fp32), ``"float32"``,
            ``"bfloat16"``, ``"float16"`` or a ``torch.dtype``. Outputs are float32 in any case.
        compile: Compile with ``torch.compile`` and frozen weights.
        channels_last: ``True``, ``False`` or ``"auto"`` (time both formats, as
            :func:`~resbackbone.optimize.measure_memory_format` does).
        fold_bn: Fold eval batch norms into the convolutions before them.

    Returns:
        The fast copy: call it as the model (``fast(x)`` for a segmenter, ``fast([image, …])`` for a detector).
        ``fast.fast_settings`` says what was chosen (``dtype``, ``channels_last``, ``compiled``, ``folded_norms``).

    Raises:
        TypeError: ``model`` is neither a segmenter nor a detector with a ``backbone``.
        ValueError: An unknown ``dtype`` or ``channels_last``.
    """

    if isinstance(dtype, str):
        if dtype not in _DTYPES:
            raise ValueError(f"dtype={dtype!r} is not valid: expected one of {tuple(_DTYPES)} or a torch.dtype.")
        dtype = _DTYPES[dtype]  # type: ignore[assignment]
    if not (isinstance(channels_last, bool) or channels_last == "auto"):
        raise ValueError(f"channels_last={channels_last!r} is not valid: expected True, False or 'auto'.")
    from ..heads import Segmenter, detector_head

    detector = detector_head(model) is not None
    if not detector and not isinstance(model, Segmenter):
        raise TypeError(
            f"optimize_model() takes a segmenter or detector from resbackbone (build_segmenter, build_detector: "
            f"Faster R-CNN, RetinaNet), got {type(model).__name__}."
        )
    device = next(model.parameters()).device
    if dtype is None:
        dtype = torch.bfloat16 if prefers_bf16(device) else torch.float32
    fast, body, folded = frozen_copy(model, fold_bn=fold_bn)
    target = fast.backbone if detector else fast
    target = target.to(dtype=dtype)
    in_chans = body.in_chans
    timings: dict[str, float] = {}
    if channels_last == "auto":
        if native_low_precision(device, dtype):
            timings = measure_memory_format(target, in_chans, device, dtype)
            channels_last = prefer_channels_last(timings)
        else:
            channels_last = True
    if channels_last:
        target = target.to(memory_format=torch.channels_last)
    runner = FrozenModule(target, dtype=dtype, channels_last=bool(channels_last))
    if compile:
        runner.compile()
    if detector:
        fast.backbone = runner
        result: nn.Module = _FastDetector(fast)
    else:
        result = runner
    runner.fast_settings.update(folded_norms=folded, memory_format_timings=timings)
    result.fast_settings = runner.fast_settings  # type: ignore[assignment]  # one dict: a fallback shows in both
    return result


class _FastDetector(nn.Module):
    """A detector whose backbone is a :class:`FrozenModule`, called under ``torch.inference_mode``."""

    def __init__(self, detector: nn.Module) -> None:
        super().__init__()
        self.detector = detector

    def forward(self, images: list[Tensor]) -> list[dict[str, Tensor]]:
        with torch.inference_mode():
            return self.detector(images)

    @property
    def transform(self) -> nn.Module:
        return self.detector.transform
