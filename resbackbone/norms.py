"""Norm policies for a backbone's batch norms: kept, frozen, GroupNorm or SyncBatchNorm.

:data:`NORM_CONVERTERS` maps each ``norm=`` value of
:func:`~resbackbone.create_backbone` to the function that rewrites a module's
batch norms; :meth:`Backbone.set_norm <resbackbone.Backbone.set_norm>` applies it.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = ["NORM_CONVERTERS", "convert_norm", "to_group_norm"]


def _group_norm_like(bn: nn.Module) -> nn.Module:
    from timm.layers import BatchNormAct2d, GroupNormAct

    channels = bn.num_features
    groups = math.gcd(32, channels)
    if isinstance(bn, BatchNormAct2d):
        gn: nn.Module = GroupNormAct(channels, num_groups=groups, eps=bn.eps, affine=bn.affine)
        gn.act, gn.drop = bn.act, bn.drop
    else:
        gn = nn.GroupNorm(groups, channels, eps=bn.eps, affine=bn.affine)
    if bn.affine:
        with torch.no_grad():
            gn.weight.copy_(bn.weight)
            gn.bias.copy_(bn.bias)
    return gn


def to_group_norm(module: nn.Module) -> nn.Module:
    """Replace every batch norm in ``module`` by a GroupNorm of gcd(32, channels) groups, affine kept.

    timm's ``BatchNormAct2d`` becomes ``GroupNormAct`` with the same activation.
    Returns the module (a new one when ``module`` itself is a batch norm).
    """
    if isinstance(module, _BatchNorm):
        return _group_norm_like(module)
    for child_name, child in module.named_children():
        new = to_group_norm(child)
        if new is not child:
            setattr(module, child_name, new)
    return module


def _frozen(module: nn.Module) -> nn.Module:
    from timm.layers import freeze_batch_norm_2d

    return freeze_batch_norm_2d(module)


def _sync(module: nn.Module) -> nn.Module:
    from timm.layers import convert_sync_batchnorm

    return convert_sync_batchnorm(module)


NORM_CONVERTERS: dict[str, Callable[[nn.Module], nn.Module] | None] = {
    "bn": None,
    "frozen_bn": _frozen,
    "gn": to_group_norm,
    "sync_bn": _sync,
}
"""``norm=`` value → converter of a module's batch norms (``None``: left as they are)."""


def convert_norm(module: nn.Module, norm: str) -> None:
    """Rewrite the batch norms of ``module``'s children in place under the policy ``norm``.

    Raises:
        ValueError: ``norm`` is not one of :data:`NORM_CONVERTERS`.
    """
    if norm not in NORM_CONVERTERS:
        raise ValueError(f"norm={norm!r} is not valid: expected one of {tuple(NORM_CONVERTERS)}.")
    convert = NORM_CONVERTERS[norm]
    if convert is None:
        return
    for child_name, child in list(module.named_children()):
        new = convert(child)
        if new is not child:
            setattr(module, child_name, new)
