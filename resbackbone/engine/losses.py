"""Training losses of the engine (detectors compute their own)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["SegmentationLoss"]


class SegmentationLoss(nn.Module):
    """Cross-entropy, Dice (``smp.losses.DiceLoss``) or their sum; auxiliary logits weigh 0.4."""

    def __init__(self, kind: str, ignore_index: int) -> None:
        super().__init__()
        import segmentation_models_pytorch as smp

        self.kind = kind
        self.ignore_index = ignore_index
        self.dice = smp.losses.DiceLoss(mode="multiclass", from_logits=True, ignore_index=ignore_index)

    def _one(self, logits: Tensor, target: Tensor) -> Tensor:
        logits = logits.float()
        loss = logits.new_zeros(())
        if "ce" in self.kind:
            loss = loss + F.cross_entropy(logits, target, ignore_index=self.ignore_index)
        if "dice" in self.kind:
            loss = loss + self.dice(logits, target)
        return loss

    def forward(self, output: Tensor | dict[str, Tensor], target: Tensor) -> dict[str, Tensor]:
        if isinstance(output, dict):
            parts = {"loss_seg": self._one(output["out"], target)}
            if "aux" in output:
                parts["loss_aux"] = 0.4 * self._one(output["aux"], target)
            return parts
        return {"loss_seg": self._one(output, target)}
