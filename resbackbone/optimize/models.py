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

import copy
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
from .folding import fold_batch_norms_in_place, fold_sequential_batch_norms

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
    """

    def __init__(self, module: nn.Module, *, dtype: torch.dtype, channels_last: bool) -> None:
        super().__init__()
        self.module = module
        self.dtype = dtype
        self.channels_last = channels_last
        self.compiled = False
        self.batch: int | None = None
        self.__dict__["_run"] = module

    def compile(self, mode: str | None = None) -> None:  # type: ignore[override]
        """Compile :attr:`module` with frozen weights (falls back to eager, with a warning, where it cannot)."""
        try:
            self.__dict__["_run"] = compile_frozen(self.module, mode=mode)
            self.compiled = True
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
                self.__dict__["_run"] = self.module
                self.compiled = False
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
    from ..backbone import Backbone

    if isinstance(dtype, str):
        if dtype not in _DTYPES:
            raise ValueError(f"dtype={dtype!r} is not valid: expected one of {tuple(_DTYPES)} or a torch.dtype.")
        dtype = _DTYPES[dtype]  # type: ignore[assignment]
    if not (isinstance(channels_last, bool) or channels_last == "auto"):
        raise ValueError(f"channels_last={channels_last!r} is not valid: expected True, False or 'auto'.")
    detector = hasattr(model, "roi_heads") or hasattr(model, "anchor_generator")
    if not detector and not hasattr(model, "backbone"):
        raise TypeError(f"optimize_model() takes a segmenter or detector from resbackbone, got {type(model).__name__}.")
    device = next(model.parameters()).device
    if dtype is None:
        dtype = torch.bfloat16 if prefers_bf16(device) else torch.float32
    fast = copy.deepcopy(model).eval()
    for param in fast.parameters():
        param.requires_grad_(False)
    body = next(m for m in fast.modules() if isinstance(m, Backbone))
    body.set_grad_checkpointing(False)
    folded = 0
    if fold_bn:
        from timm.layers import unfreeze_batch_norm_2d

        from .inference_backbone import stages_module

        unfreeze_batch_norm_2d(body).eval()  # in place: frozen norms become foldable eval BatchNorm2d
        folded = fold_batch_norms_in_place(body, stages_module(body)) + fold_sequential_batch_norms(fast)
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
    result.fast_settings = {  # type: ignore[assignment]
        "dtype": str(dtype).removeprefix("torch."),
        "channels_last": bool(channels_last),
        "compiled": compile,
        "folded_norms": folded,
        "memory_format_timings": timings,
    }
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
