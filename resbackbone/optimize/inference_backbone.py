"""An inference fast path for a :class:`~resbackbone.backbone.Backbone`.

:func:`optimize_for_inference` returns a frozen copy that computes the same
C2–C5 pyramid faster:

- batch norms in eval mode (``norm="bn"`` after ``.eval()``, or ``"frozen_bn"``)
  are folded into the convolution before them, found by tracing the real
  execution graph with ``torch.fx`` (``torch.nn.utils.fusion.fuse_conv_bn_eval``
  does the arithmetic);
- the memory format (channels-last or contiguous) is the one measured faster
  on the backbone's device;
- ``torch.compile`` with inductor's *freezing* turns the weights into
  constants, so that convolution weights are prepacked once for oneDNN (CPU)
  or cuDNN/Triton (CUDA) and convolution + bias + add + ReLU are fused;
- the forward runs under ``torch.inference_mode`` with no per-call hooks;
- optionally the weights and activations are bf16 or fp16.

Output contract::

    fast = optimize_for_inference(create_backbone("resnet50").eval())
    fast(torch.randn(2, 3, 224, 224))
    # OrderedDict(C2: (2, 256, 56, 56), C3: (2, 512, 28, 28), C4: (2, 1024, 14, 14), C5: (2, 2048, 7, 7))

The fp32 result equals the eager backbone's within 1e-4 relative (max abs
difference over the max abs value of each level). bf16/fp16 results are
returned *in that dtype* (cast them with ``.float()`` where a head needs fp32);
their error is what ``resbackbone bench`` reports.
"""

from __future__ import annotations

import copy
import warnings
from collections import OrderedDict
from typing import Any

import torch
from torch import Tensor, nn

from ..backbone import Backbone, check_input
from .compiling import (
    CompileFallbackWarning,
    compile_frozen,
    measure_memory_format,
    native_low_precision,
    prefer_channels_last,
)
from .folding import fold_batch_norms, stages_module

__all__ = ["InferenceBackbone", "optimize_for_inference", "stages_module"]

_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


class InferenceBackbone(nn.Module):
    """A frozen, faster copy of a :class:`~resbackbone.backbone.Backbone`, keeping its contract.

    Build one with :func:`optimize_for_inference`. It has the backbone's
    ``feature_info``, ``out_channels``, ``in_chans``, ``mean``, ``std``,
    ``output_stride`` and ``name``, and returns the same ``OrderedDict``.

    Attributes:
        dtype: The dtype of the weights, activations and outputs.
        channels_last: Whether activations run channels-last.
        compiled: Whether ``torch.compile`` is in use (``False`` after a fallback).
        folded_norms: Number of batch norms folded into convolutions.
        memory_format_timings: Seconds per forward measured for each format
            when ``channels_last="auto"`` measured them, else empty.
    """

    def __init__(
        self,
        trunk: nn.Module,
        *,
        source: Backbone,
        dtype: torch.dtype,
        channels_last: bool,
        folded_norms: int,
        memory_format_timings: dict[str, float],
    ) -> None:
        super().__init__()
        self.trunk = trunk
        self.name = source.name
        self.feature_info = source.feature_info
        self.out_channels = dict(source.out_channels)
        self.in_chans = source.in_chans
        self.mean = source.mean
        self.std = source.std
        self.output_stride = source.output_stride
        self.dtype = dtype
        self.channels_last = channels_last
        self.folded_norms = folded_norms
        self.memory_format_timings = memory_format_timings
        self.compiled = False
        self._use(trunk)

    def _use(self, fn: Any) -> None:
        # Kept out of _modules: the state dict stays the trunk's, with no "_orig_mod." duplicate.
        self.__dict__["_run"] = fn

    def _compile(self, mode: str | None) -> None:
        try:
            self._use(compile_frozen(self.trunk, mode=mode))
            self.compiled = True
        except Exception as exc:  # torch.compile unsupported on this Python/platform
            warnings.warn(
                f"torch.compile is unavailable ({exc!r}); running the folded model eagerly.",
                CompileFallbackWarning,
                stacklevel=3,
            )

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor]:
        """Compute the pyramid.

        Args:
            x: Images ``(N, in_chans, H, W)`` normalised with ``mean``/``std``,
                of any float dtype; they are cast to :attr:`dtype`.

        Returns:
            ``OrderedDict`` level → ``(N, channels, ⌈H/stride⌉, ⌈W/stride⌉)`` in
            :attr:`dtype`, computed under ``torch.inference_mode`` (use the
            eager backbone where gradients are needed).

        Raises:
            TypeError: ``x`` is not a tensor.
            ValueError: ``x`` is not 4-D or has the wrong number of channels.
        """
        check_input(self.name, self.in_chans, x)
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        with torch.inference_mode():
            x = x.to(dtype=self.dtype, memory_format=fmt)
            if self.compiled:
                try:
                    outputs = self._run(x)
                except torch.cuda.OutOfMemoryError:
                    raise
                except Exception as exc:  # no C++ compiler / Triton: keep working, eagerly
                    warnings.warn(
                        f"torch.compile failed ({type(exc).__name__}: {exc}); running the folded model eagerly "
                        "from now on.",
                        CompileFallbackWarning,
                        stacklevel=2,
                    )
                    self._use(self.trunk)
                    self.compiled = False
                    outputs = self._run(x)
            else:
                outputs = self._run(x)
        return OrderedDict(zip(self.feature_info.names, outputs))

    def extra_repr(self) -> str:
        return (
            f"name={self.name!r}, levels={self.feature_info.names}, dtype={self.dtype}, "
            f"channels_last={self.channels_last}, compiled={self.compiled}, folded_norms={self.folded_norms}"
        )


def optimize_for_inference(
    backbone: Backbone,
    *,
    dtype: torch.dtype = torch.float32,
    compile: bool | str = True,
    channels_last: bool | str = "auto",
    fold_bn: bool = True,
) -> InferenceBackbone:
    """A frozen copy of ``backbone`` for fast inference, returning the same pyramid.

    Move the backbone to its device first; the copy stays there. The original
    is not modified. The copy's weights are frozen (folded and, when compiled,
    baked into the compiled code): change the backbone and optimise it again.

    Args:
        backbone: A :class:`~resbackbone.backbone.Backbone` (put in eval mode by the copy).
        dtype: ``torch.float32``, ``torch.bfloat16`` or ``torch.float16``; outputs
            come back in this dtype. Low precision warns on a CPU without native
            support for it, where it is slower than fp32.
        compile: ``True`` compiles with ``torch.compile`` (inductor, weight
            freezing); a string is a ``torch.compile`` mode
            (``"max-autotune"``, ``"reduce-overhead"``); ``False`` runs eagerly.
            If compiling is impossible, the copy warns and runs eagerly. Compiled
            code is specialised to the input shape: a new shape compiles again.
        channels_last: ``True``, ``False`` or ``"auto"``: measure both formats on
            the device (about a second on a CPU) and keep channels-last unless
            contiguous is at least 10 % faster.
        fold_bn: Fold eval batch norms into the convolutions before them.

    Returns:
        An :class:`InferenceBackbone`.

    Raises:
        TypeError: ``backbone`` is not a Backbone, or an option has the wrong type.
        ValueError: An unsupported ``dtype`` or ``channels_last`` value.

    Example:
        >>> fast = optimize_for_inference(create_backbone("resnet18").eval(), compile=False)
        >>> {k: tuple(v.shape) for k, v in fast(torch.randn(1, 3, 64, 64)).items()}
        {'C2': (1, 64, 16, 16), 'C3': (1, 128, 8, 8), 'C4': (1, 256, 4, 4), 'C5': (1, 512, 2, 2)}
    """
    if not isinstance(backbone, Backbone):
        raise TypeError(
            f"optimize_for_inference() takes a resbackbone Backbone, got {type(backbone).__name__}. "
            "Build one with resbackbone.create_backbone()."
        )
    if dtype not in _DTYPES:
        raise ValueError(f"dtype={dtype!r} is not supported: expected one of {_DTYPES}.")
    if not (isinstance(channels_last, bool) or channels_last == "auto"):
        raise ValueError(f"channels_last={channels_last!r} is not valid: expected True, False or 'auto'.")
    if not isinstance(compile, (bool, str)):
        raise TypeError(f"compile={compile!r} is not valid: expected True, False or a torch.compile mode string.")

    body = copy.deepcopy(backbone).eval()
    body.set_grad_checkpointing(False)
    for param in body.parameters():
        param.requires_grad_(False)
    device = next(body.parameters()).device
    if fold_bn:
        from timm.layers import unfreeze_batch_norm_2d

        body = unfreeze_batch_norm_2d(body).eval()  # frozen norms become foldable eval BatchNorm2d
        trunk, folded = fold_batch_norms(stages_module(body))
    else:
        trunk, folded = stages_module(body), 0
    if dtype != torch.float32 and not native_low_precision(device, dtype):
        warnings.warn(
            f"dtype={dtype} on this {device.type} is emulated, not native: expect it to be slower than float32.",
            stacklevel=2,
        )
    trunk = trunk.to(dtype=dtype)

    timings: dict[str, float] = {}
    if channels_last == "auto":
        if native_low_precision(device, dtype):
            timings = measure_memory_format(trunk, backbone.in_chans, device, dtype)
            # channels-last is the native layout of oneDNN and of tensor-core kernels, and what
            # the compiled code prefers: keep it unless contiguous is clearly faster
            channels_last = prefer_channels_last(timings)
        else:  # measuring emulated kernels would take long and tell nothing
            channels_last = True
    if channels_last:
        trunk = trunk.to(memory_format=torch.channels_last)

    fast = InferenceBackbone(
        trunk,
        source=backbone,
        dtype=dtype,
        channels_last=bool(channels_last),
        folded_norms=folded,
        memory_format_timings=timings,
    )
    if compile:
        fast._compile(compile if isinstance(compile, str) else None)
    return fast.eval()
