"""The inference fast path: :func:`optimize_for_inference` and the pieces it is made of.

- :mod:`~resbackbone.optimize.inference_backbone`: :class:`InferenceBackbone`,
  a frozen, faster copy of a backbone keeping its contract;
- :mod:`~resbackbone.optimize.folding`: batch norms folded into convolutions;
- :mod:`~resbackbone.optimize.compiling`: ``torch.compile`` with frozen
  weights, native bf16/fp16 detection, memory-format measurement;
- :mod:`~resbackbone.optimize.models`: :func:`optimize_model`, the same for a
  whole segmenter or detector (``predict --fast``, ``evaluate --fast``).
"""

from .compiling import (
    CompileFallbackWarning,
    compile_frozen,
    measure_memory_format,
    native_low_precision,
    prefers_bf16,
)
from .folding import fold_batch_norms, fold_batch_norms_in_place, fold_sequential_batch_norms, frozen_copy
from .inference_backbone import InferenceBackbone, optimize_for_inference, stages_module
from .models import FrozenModule, optimize_model

__all__ = [
    "CompileFallbackWarning",
    "FrozenModule",
    "InferenceBackbone",
    "compile_frozen",
    "fold_batch_norms",
    "fold_batch_norms_in_place",
    "fold_sequential_batch_norms",
    "frozen_copy",
    "measure_memory_format",
    "native_low_precision",
    "optimize_for_inference",
    "optimize_model",
    "prefers_bf16",
    "stages_module",
]
