"""The inference fast path: :func:`optimize_for_inference` and the pieces it is made of.

- :mod:`~resbackbone.optimize.inference_backbone`: :class:`InferenceBackbone`,
  a frozen, faster copy of a backbone keeping its contract;
- :mod:`~resbackbone.optimize.folding`: batch norms folded into convolutions;
- :mod:`~resbackbone.optimize.compiling`: ``torch.compile`` with frozen
  weights, native bf16/fp16 detection, memory-format measurement.
"""

from .compiling import CompileFallbackWarning, compile_frozen, measure_memory_format, native_low_precision
from .folding import fold_batch_norms
from .inference_backbone import InferenceBackbone, optimize_for_inference

__all__ = [
    "CompileFallbackWarning",
    "InferenceBackbone",
    "compile_frozen",
    "fold_batch_norms",
    "measure_memory_format",
    "native_low_precision",
    "optimize_for_inference",
]
