"""Self-supervised methods as a table: one :class:`MethodSpec` per method, the modules built from lightly.

Each method wraps a :class:`~resbackbone.Backbone` (its C5 map, average-pooled
for the image-level heads) in the heads, losses and momentum encoder that
`lightly <https://github.com/lightly-ai/lightly>`_ (MIT) provides, and follows
the training step of lightly's reference examples:

- ``simclr`` (contrastive): two views, SimCLR's projection head, NT-Xent loss.
- ``mocov2`` (contrastive): a momentum encoder and a memory bank of negatives
  (MoCo v2's two-layer head, InfoNCE).
- ``byol`` (self-distillation): an online network with a prediction head
  regresses the momentum (target) network's projection of the other view.
- ``densecl`` (dense contrastive): MoCo v2 plus a pixel-level InfoNCE loss on
  the C5 map, each query location paired with the most similar key location
  (DenseCL, Wang et al. 2021) — a pre-text task shaped like the dense heads the
  backbone is fine-tuned for.

A module's ``forward(views, _)`` returns ``{loss name: loss}``, as a torchvision
detector does, so the fine-tuning engine's epoch loop (AMP, accumulation,
clipping, NaN policy, DDP) trains it unchanged; momentum encoders move after
each optimiser update through :meth:`SSLModel.momentum_update`. Losses are
computed in float32 outside autocast.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["METHODS", "OPTIONS", "MethodSpec", "SSLModel", "build_method"]

OPTIONS = ("temperature", "projection_dim", "hidden_dim", "momentum", "memory_bank", "dense_weight")
"""Method options a recipe's ``pretrain:`` section may set; each method takes some of them."""


class SSLModel(nn.Module):
    """A backbone with a self-supervised method's heads and loss.

    Attributes:
        backbone: The :class:`~resbackbone.Backbone` being pretrained (the online / student one).
        method: The method's name.
    """

    method = ""

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone

    def features(self, x: Tensor) -> Tensor:
        """The backbone's C5 map ``(N, C, h, w)``."""
        return self.backbone(x)["C5"]

    def embed(self, x: Tensor) -> Tensor:
        """The projection of ``x`` the loss compares (for the collapse check), ``(N, D)``."""
        return self.projection_head(self.features(x).mean((2, 3)))

    def momentum_update(self, step: int, total: int) -> None:
        """Move the momentum encoder after optimiser update ``step`` of ``total`` (no-op without one)."""

    def forward(self, views: list[Tensor], _: Any = None) -> dict[str, Tensor]:
        raise NotImplementedError


def _no_autocast(device: torch.device) -> Any:
    return torch.autocast(device_type=device.type, enabled=False)


def _momentum_copy(module: nn.Module) -> nn.Module:
    from lightly.models.utils import deactivate_requires_grad

    twin = copy.deepcopy(module)
    deactivate_requires_grad(twin)
    return twin


class SimCLR(SSLModel):
    """SimCLR (Chen et al. 2020): NT-Xent between the projections of two views."""

    method = "simclr"

    def __init__(self, backbone: nn.Module, channels: int, o: dict[str, Any], *, gather: bool) -> None:
        from lightly.loss import NTXentLoss
        from lightly.models.modules import SimCLRProjectionHead

        super().__init__(backbone)
        self.projection_head = SimCLRProjectionHead(channels, o["hidden_dim"], o["projection_dim"])
        self.criterion = NTXentLoss(temperature=o["temperature"], gather_distributed=gather)

    def forward(self, views: list[Tensor], _: Any = None) -> dict[str, Tensor]:
        z0, z1 = (self.embed(v) for v in views[:2])
        with _no_autocast(z0.device):
            return {"loss_ntxent": self.criterion(z0.float(), z1.float())}


class BYOL(SSLModel):
    """BYOL (Grill et al. 2020): the online prediction regresses the target projection of the other view."""

    method = "byol"

    def __init__(self, backbone: nn.Module, channels: int, o: dict[str, Any], *, gather: bool) -> None:
        from lightly.loss import NegativeCosineSimilarity
        from lightly.models.modules import BYOLPredictionHead, BYOLProjectionHead

        super().__init__(backbone)
        self.projection_head = BYOLProjectionHead(channels, o["hidden_dim"], o["projection_dim"])
        self.prediction_head = BYOLPredictionHead(o["projection_dim"], o["hidden_dim"], o["projection_dim"])
        self.backbone_momentum = _momentum_copy(backbone)
        self.projection_head_momentum = _momentum_copy(self.projection_head)
        self.criterion = NegativeCosineSimilarity()
        self.start_momentum = o["momentum"]

    def momentum_update(self, step: int, total: int) -> None:
        from lightly.models.utils import update_momentum
        from lightly.utils.scheduler import cosine_schedule

        m = cosine_schedule(min(step, total), max(total, 1), self.start_momentum, 1.0)
        update_momentum(self.backbone, self.backbone_momentum, m=m)
        update_momentum(self.projection_head, self.projection_head_momentum, m=m)

    def _target(self, x: Tensor) -> Tensor:
        with torch.no_grad():
            return self.projection_head_momentum(self.backbone_momentum(x)["C5"].mean((2, 3)))

    def forward(self, views: list[Tensor], _: Any = None) -> dict[str, Tensor]:
        x0, x1 = views[:2]
        p0, p1 = (self.prediction_head(self.embed(x)) for x in (x0, x1))
        z0, z1 = self._target(x0), self._target(x1)
        with _no_autocast(p0.device):
            loss = 0.5 * (self.criterion(p0.float(), z1.float()) + self.criterion(p1.float(), z0.float()))
        return {"loss_byol": loss}


class MoCo(SSLModel):
    """MoCo v2 (Chen et al. 2020) and, with ``dense_weight > 0``, DenseCL (Wang et al. 2021).

    The query view goes through the online encoder, the key view through the
    momentum encoder; InfoNCE against a memory bank of past keys. DenseCL adds
    the same loss between C5 locations, each query location paired with the key
    location most similar in backbone features (``lightly.models.utils.select_most_similar``).
    The memory banks are saved with the weights, so a resumed run continues exactly.
    """

    def __init__(self, backbone: nn.Module, channels: int, o: dict[str, Any], *, gather: bool) -> None:
        from lightly.loss import NTXentLoss
        from lightly.models.modules import DenseCLProjectionHead

        super().__init__(backbone)
        self.dense_weight = float(o.get("dense_weight") or 0.0)
        self.method = "densecl" if self.dense_weight > 0 else "mocov2"
        dim = o["projection_dim"]
        bank = (o["memory_bank"], dim)
        self.projection_head = DenseCLProjectionHead(channels, o["hidden_dim"], dim)
        self.criterion = NTXentLoss(temperature=o["temperature"], memory_bank_size=bank, gather_distributed=gather)
        self.backbone_momentum = _momentum_copy(backbone)
        self.projection_head_momentum = _momentum_copy(self.projection_head)
        if self.dense_weight > 0:
            self.projection_head_local = DenseCLProjectionHead(channels, o["hidden_dim"], dim)
            self.projection_head_local_momentum = _momentum_copy(self.projection_head_local)
            self.criterion_local = NTXentLoss(
                temperature=o["temperature"], memory_bank_size=bank, gather_distributed=gather
            )
        self.start_momentum = o["momentum"]

    def _pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        pairs = [(self.backbone, self.backbone_momentum), (self.projection_head, self.projection_head_momentum)]
        if self.dense_weight > 0:
            pairs.append((self.projection_head_local, self.projection_head_local_momentum))
        return pairs

    def momentum_update(self, step: int, total: int) -> None:
        from lightly.models.utils import update_momentum
        from lightly.utils.scheduler import cosine_schedule

        m = cosine_schedule(min(step, total), max(total, 1), self.start_momentum, 1.0)
        for online, momentum in self._pairs():
            update_momentum(online, momentum, m=m)

    def _banks(self) -> list[nn.Module]:
        losses = [self.criterion] + ([self.criterion_local] if self.dense_weight > 0 else [])
        return [loss.memory_bank for loss in losses]

    def get_extra_state(self) -> dict[str, Tensor]:
        """The memory banks (lightly keeps them out of the state dict), so that a resume is exact."""
        state = {}
        for i, bank in enumerate(self._banks()):
            state[f"bank{i}"] = bank.bank.detach().clone()
            state[f"bank_ptr{i}"] = bank.bank_ptr.detach().clone()
        return state

    def set_extra_state(self, state: dict[str, Tensor]) -> None:
        for i, bank in enumerate(self._banks()):
            bank.bank.copy_(state[f"bank{i}"])
            bank.bank_ptr.copy_(state[f"bank_ptr{i}"])

    def forward(self, views: list[Tensor], _: Any = None) -> dict[str, Tensor]:
        from lightly.models.utils import select_most_similar

        query_map = self.features(views[0])
        query = self.projection_head(query_map.mean((2, 3)))
        with torch.no_grad():
            key_map = self.backbone_momentum(views[1])["C5"]
            key = self.projection_head_momentum(key_map.mean((2, 3)))
        with _no_autocast(query.device):
            loss_global = self.criterion(query.float(), key.float())
        if self.dense_weight <= 0:
            return {"loss_infonce": loss_global}
        query_feats = query_map.flatten(2).transpose(1, 2)  # (N, hw, C)
        query_local = self.projection_head_local(query_feats)
        with torch.no_grad():
            key_feats = key_map.flatten(2).transpose(1, 2)
            key_local = select_most_similar(query_feats, key_feats, self.projection_head_local_momentum(key_feats))
        with _no_autocast(query.device):
            loss_local = self.criterion_local(query_local.flatten(0, 1).float(), key_local.flatten(0, 1).float())
        w = self.dense_weight
        return {"loss_global": (1 - w) * loss_global, "loss_dense": w * loss_local}


@dataclass(frozen=True)
class MethodSpec:
    """One self-supervised method: what it is, the views it trains on, and its module.

    Attributes:
        name: The ``pretrain.method`` value.
        kind: ``"contrastive"``, ``"self-distillation"`` or ``"dense contrastive"``.
        paper: The reference, in a phrase.
        views: The lightly transform its views follow (:data:`~resbackbone.pretrain.views.VIEW_KINDS`).
        module: ``module(backbone, C5 channels, options, gather=…)`` builds its :class:`SSLModel`.
        defaults: Its options (of :data:`OPTIONS`) and their defaults; it takes no other.
    """

    name: str
    kind: str
    paper: str
    views: str
    module: Callable[..., SSLModel]
    defaults: dict[str, Any]


METHODS: dict[str, MethodSpec] = {
    spec.name: spec
    for spec in (
        MethodSpec(
            "simclr",
            "contrastive",
            "SimCLR, Chen et al., ICML 2020",
            "simclr",
            SimCLR,
            {"temperature": 0.2, "projection_dim": 128, "hidden_dim": 512},
        ),
        MethodSpec(
            "mocov2",
            "contrastive",
            "MoCo v2, Chen et al., arXiv 2003.04297",
            "mocov2",
            MoCo,
            {"temperature": 0.2, "projection_dim": 128, "hidden_dim": 512, "momentum": 0.99, "memory_bank": 4096},
        ),
        MethodSpec(
            "byol",
            "self-distillation",
            "BYOL, Grill et al., NeurIPS 2020",
            "byol",
            BYOL,
            {"projection_dim": 128, "hidden_dim": 1024, "momentum": 0.99},
        ),
        MethodSpec(
            "densecl",
            "dense contrastive",
            "DenseCL, Wang et al., CVPR 2021",
            "mocov2",
            MoCo,
            {
                "temperature": 0.2,
                "projection_dim": 128,
                "hidden_dim": 512,
                "momentum": 0.99,
                "memory_bank": 4096,
                "dense_weight": 0.5,
            },
        ),
    )
}
"""The self-supervised methods, by ``pretrain.method`` name."""


def build_method(name: str, backbone: nn.Module, options: dict[str, Any], *, gather: bool = False) -> SSLModel:
    """The :class:`SSLModel` of method ``name`` around ``backbone``.

    Args:
        name: A key of :data:`METHODS`.
        backbone: A :class:`~resbackbone.Backbone` returning C5.
        options: Values for the method's options; unset ones take its defaults.
        gather: Gather negatives from every process (under ``torchrun``).

    Raises:
        ValueError: An unknown method, or an option the method does not take.
    """
    if name not in METHODS:
        raise ValueError(f"Unknown pretraining method {name!r}; expected one of {sorted(METHODS)}.")
    spec = METHODS[name]
    extra = sorted(k for k, v in options.items() if v is not None and k not in spec.defaults)
    if extra:
        raise ValueError(
            f"pretrain.{extra[0]} does not apply to method {name!r} (it takes {', '.join(spec.defaults)}); remove it."
        )
    chosen = {k: (options.get(k) if options.get(k) is not None else v) for k, v in spec.defaults.items()}
    channels = backbone.feature_info["C5"].channels
    return spec.module(backbone, channels, chosen, gather=gather)
