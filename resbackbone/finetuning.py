"""The fine-tuning controls of a :class:`~resbackbone.Backbone`: freezing stages and activation checkpointing.

:class:`FineTuningMixin` works on any ``nn.Module`` that lists its stages as
:class:`~resbackbone.specs.StageSpec` (``all_stages``, ``kept_stages``) and
returns their modules from ``stage_modules(stage)``.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import TypeVar

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from .specs import NOMINAL_STRIDES, StageSpec

__all__ = ["FineTuningMixin"]

_T = TypeVar("_T", bound="FineTuningMixin")


class FineTuningMixin:
    """Stage freezing and activation checkpointing, mixed into :class:`~resbackbone.Backbone`.

    Attributes:
        trainable_stages: What :meth:`set_trainable_stages` was given (``None``: all train).
        checkpoint_stages: The stages recomputed in backward.
        checkpoint_reentrant: Whether checkpointing is reentrant where it can be.
    """

    name: str
    output_stride: int
    training: bool
    all_stages: tuple[StageSpec, ...]
    kept_stages: tuple[StageSpec, ...]
    trainable_stages: int | None = None
    checkpoint_stages: tuple[str, ...] = ()
    checkpoint_reentrant: bool = True
    _grad_checkpointing: bool | tuple[str, ...] = False

    def stage_modules(self, stage: StageSpec | str) -> list[nn.Module]:
        raise NotImplementedError(f"{type(self).__name__} mixes in FineTuningMixin and must define stage_modules().")

    def set_trainable_stages(self, trainable_stages: int | None) -> None:
        """Freeze all but the last ``trainable_stages`` stages, counted from C5 down to the stem.

        ``None`` or the number of stages (5) trains everything; 0 freezes everything.
        Frozen parameters get ``requires_grad=False``, and the batch norms of frozen
        stages stay in eval mode across ``.train()``.

        Raises:
            ValueError: ``trainable_stages`` is outside 0 … number of stages.
        """
        n = len(self.all_stages)
        if trainable_stages is not None and (
            isinstance(trainable_stages, bool)
            or not isinstance(trainable_stages, numbers.Integral)
            or not 0 <= trainable_stages <= n
        ):
            raise ValueError(
                f"trainable_stages={trainable_stages!r} is not valid: expected None or an int from 0 (all frozen) "
                f"to {n} (all trainable), counting stages from C5 down to the stem."
            )
        self.trainable_stages = None if trainable_stages is None else int(trainable_stages)
        n_trainable = n if trainable_stages is None else trainable_stages
        for index, stage in enumerate(self.all_stages):
            trainable = index >= n - n_trainable
            for module in self.stage_modules(stage):
                for param in module.parameters():
                    param.requires_grad_(trainable)
        self.train(self.training)

    @property
    def frozen_stages(self) -> tuple[str, ...]:
        """Names of the stages whose parameters are frozen."""
        n = len(self.all_stages)
        n_trainable = n if self.trainable_stages is None else self.trainable_stages
        return tuple(stage.name for stage in self.all_stages[: n - n_trainable])

    def set_grad_checkpointing(self, enable: bool | Sequence[str] = True, *, reentrant: bool = True) -> None:
        """Recompute activations in backward instead of storing them, block by block.

        ``True`` checkpoints the stages that run at stride 8 or finer: the
        stem, C2 and C3, and C4/C5 too when dilated to output stride 8. They
        hold most of the activation memory, which grows with resolution, for
        about half of the recomputation (resnet50, batch 64, 224×224, one
        H100: 47 % less peak memory for +28 % step time; every stage: 62 %
        for +62 %). Name the stages to choose otherwise. Batch norms in
        training mode update their running statistics again when recomputed.

        Args:
            enable: ``True``, ``False``, or the stages to checkpoint by level or
                stage name (``("stem", "C2", "C3", "C4", "C5")`` for all).
            reentrant: Use reentrant checkpointing for blocks whose input
                requires grad (the others always use the non-reentrant form).
                On a GPU it takes two thirds of the host time of the
                non-reentrant form, which at batch 64 sets the step time
                (+28 % instead of +50 %), but the model then trains with
                ``loss.backward()`` only: pass ``False`` for
                ``torch.autograd.grad``, double backward, or DDP with
                ``find_unused_parameters=True``.

        Raises:
            ValueError: A name that is neither a level nor a stage of this backbone.
            TypeError: ``enable`` is neither a bool nor a sequence of names.
        """
        if isinstance(enable, numbers.Integral):  # bool, numpy bools, 0/1
            enable = bool(enable)
            chosen = [stage.name for stage in self.all_stages if enable and self._stage_stride(stage) <= 8]
        elif isinstance(enable, str) or (isinstance(enable, Sequence) and all(isinstance(n, str) for n in enable)):
            names = (enable,) if isinstance(enable, str) else tuple(enable)
            by_name = {key: stage.name for stage in self.all_stages for key in (stage.name, stage.level) if key}
            unknown = [n for n in names if n not in by_name]
            if unknown:
                raise ValueError(
                    f"grad_checkpointing={enable!r} is not valid: {unknown} name no stage of {self.name!r}; "
                    f"expected True, False or levels or stage names from {list(by_name)}."
                )
            chosen = [by_name[n] for n in names]
            enable = names
        else:
            raise TypeError(
                f"grad_checkpointing={enable!r} is not valid: expected True, False or a list of stage names "
                "such as ['stem', 'C2', 'C3']."
            )
        # the stages this backbone runs (a pruned one has nothing to recompute)
        self.checkpoint_stages = tuple(stage.name for stage in self.kept_stages if stage.name in chosen)
        self.checkpoint_reentrant = bool(reentrant)
        # what was asked, kept for a rebuild with another output stride; checkpoint_stages is what it means here
        self._grad_checkpointing = enable

    @property
    def grad_checkpointing(self) -> bool | tuple[str, ...]:
        return self._grad_checkpointing

    @grad_checkpointing.setter
    def grad_checkpointing(self, enable: bool | Sequence[str]) -> None:
        self.set_grad_checkpointing(enable)

    def _stage_stride(self, stage: StageSpec) -> int:
        """The stride of a stage's output: the level's nominal one up to ``output_stride``; the stem's is C2's."""
        return min(NOMINAL_STRIDES[stage.level or "C2"], self.output_stride)

    def train(self: _T, mode: bool = True) -> _T:
        """``nn.Module.train``, keeping the batch norms of frozen stages in eval mode."""
        super().train(mode)  # type: ignore[misc]
        if mode:
            frozen = set(self.frozen_stages)
            for stage in self.all_stages:
                if stage.name in frozen:
                    for module in self.stage_modules(stage):
                        for sub in module.modules():
                            if isinstance(sub, _BatchNorm):
                                sub.eval()
        return self
