"""Batch norms folded into the convolutions before them, found by tracing the real execution graph.

``torch.fx`` traces the module (timm's untraceable layers kept as leaves);
``torch.nn.utils.fusion.fuse_conv_bn_eval`` does the arithmetic.
"""

from __future__ import annotations

import copy
import itertools
from typing import TYPE_CHECKING

from torch import Tensor, fx, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.utils.fusion import fuse_conv_bn_eval

if TYPE_CHECKING:
    from ..backbone import Backbone

__all__ = [
    "fold_batch_norms",
    "fold_batch_norms_in_place",
    "fold_sequential_batch_norms",
    "frozen_copy",
    "stages_module",
]


class _Tracer(fx.Tracer):
    """Keeps convolutions, norms and timm's untraceable layers as single nodes."""

    def __init__(self) -> None:
        from timm.layers import get_notrace_functions

        super().__init__(autowrap_functions=tuple(get_notrace_functions()))

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        from timm.layers import is_notrace_module

        if isinstance(m, (nn.Conv2d, _BatchNorm)) or is_notrace_module(type(m)):
            return True
        return super().is_leaf_module(m, module_qualified_name)


class _Levels(nn.Module):
    """The backbone's forward as a tuple of levels, for tracing."""

    def __init__(self, body: nn.Module) -> None:
        super().__init__()
        self.body = body

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        return tuple(self.body.forward_stages(x).values())


def stages_module(backbone: Backbone) -> nn.Module:
    """A module whose forward is ``backbone``'s :meth:`~resbackbone.Backbone.forward_stages` as a tuple of levels,
    traceable by ``torch.fx`` (what batch-norm folding traces)."""
    return _Levels(backbone)


def _set_submodule(root: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, leaf = path.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, leaf, module)


def fold_batch_norms(module: nn.Module) -> tuple[fx.GraphModule, int]:
    """Trace ``module`` and fold every eval batch norm that directly follows a plain ``Conv2d``.

    timm's ``BatchNormAct2d`` folds too: the conv absorbs the norm and the node
    keeps only the activation. A norm whose input feeds other nodes as well, or
    that follows a weight-standardised conv, is left as it is.

    Args:
        module: An eval-mode module whose forward returns tensors.

    Returns:
        The traced ``GraphModule`` with the norms folded, and the number folded.
    """
    from timm.layers import BatchNormAct2d

    graph = _Tracer().trace(module)
    gm = fx.GraphModule(module, graph)
    modules = dict(gm.named_modules())
    folded = 0
    for node in list(gm.graph.nodes):
        if node.op != "call_module" or not isinstance(modules[node.target], _BatchNorm):
            continue
        bn = modules[node.target]
        source = node.args[0]
        if not (
            isinstance(source, fx.Node)
            and source.op == "call_module"
            and type(modules[source.target]) is nn.Conv2d
            and len(source.users) == 1
            and bn.track_running_stats
            and bn.running_mean is not None
        ):
            continue
        conv = modules[source.target]
        _set_submodule(gm, source.target, fuse_conv_bn_eval(conv, bn))
        if isinstance(bn, BatchNormAct2d):  # keep the activation (its dropout is a no-op in eval)
            _set_submodule(gm, node.target, bn.act)
        else:
            node.replace_all_uses_with(source)
            gm.graph.erase_node(node)
        folded += 1
    gm.graph.lint()
    gm.recompile()
    gm.delete_all_unused_submodules()
    return gm, folded


def _fold_pair(conv: nn.Conv2d, bn: _BatchNorm) -> bool:
    return (
        type(conv) is nn.Conv2d
        and isinstance(bn, _BatchNorm)
        and not bn.training
        and bn.track_running_stats
        and bn.running_mean is not None
        and conv.out_channels == bn.num_features
    )


def fold_batch_norms_in_place(module: nn.Module, trace: nn.Module | None = None) -> int:
    """Fold eval batch norms into the convolutions before them, inside ``module`` itself.

    Pairs are found as :func:`fold_batch_norms` finds them, on the graph of
    ``trace`` (a module whose forward runs ``module``'s layers, e.g. a wrapper
    calling a backbone's ``forward_stages``; default ``module``); then the
    convolution in ``module`` is replaced by the folded one and the norm by an
    identity (timm's ``BatchNormAct2d`` by its activation). Modules stay where
    they are, so code that calls them by attribute keeps working.

    Returns:
        The number of norms folded.
    """
    from timm.layers import BatchNormAct2d

    root = module if trace is None else trace
    graph = _Tracer().trace(root)
    traced = dict(root.named_modules())
    places = {id(m): name for name, m in module.named_modules()}
    folded = 0
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(traced.get(node.target), _BatchNorm):
            continue
        bn, source = traced[node.target], node.args[0]
        if not (isinstance(source, fx.Node) and source.op == "call_module" and len(source.users) == 1):
            continue
        conv = traced[source.target]
        if not _fold_pair(conv, bn) or id(conv) not in places or id(bn) not in places:
            continue
        _set_submodule(module, places[id(conv)], fuse_conv_bn_eval(conv, bn))
        _set_submodule(module, places[id(bn)], bn.act if isinstance(bn, BatchNormAct2d) else nn.Identity())
        folded += 1
    return folded


def fold_sequential_batch_norms(module: nn.Module) -> int:
    """Fold every eval batch norm that follows a plain ``Conv2d`` in the same ``nn.Sequential``.

    In a ``Sequential`` the order of the children is the order they run in, so
    no tracing is needed: this covers the heads (smp's ``Conv2dReLU`` and ASPP
    branches, torchvision's ``DeepLabHead``).

    Returns:
        The number of norms folded.
    """
    folded = 0
    for parent in list(module.modules()):
        if not isinstance(parent, nn.Sequential):
            continue
        for (first, conv), (second, bn) in itertools.pairwise(list(parent.named_children())):
            if type(bn) is nn.BatchNorm2d and _fold_pair(conv, bn):
                setattr(parent, first, fuse_conv_bn_eval(conv, bn))
                setattr(parent, second, nn.Identity())
                folded += 1
    return folded


def frozen_copy(model: nn.Module, *, fold_bn: bool = True) -> tuple[nn.Module, Backbone, int]:
    """An inference copy of a backbone, segmenter or detector: what export and the fast path start from.

    The copy is in eval mode with every parameter frozen and grad checkpointing
    off; with ``fold_bn``, frozen norms are made foldable again (timm's
    ``unfreeze_batch_norm_2d``) and folded, in the backbone by tracing its
    stages and in the head's ``nn.Sequential`` blocks. ``model`` is not changed.

    Returns:
        ``(copy, its backbone, number of norms folded)``.

    Raises:
        TypeError: ``model`` holds no :class:`~resbackbone.Backbone`.
    """
    from ..backbone import Backbone

    frozen = copy.deepcopy(model).eval()
    for param in frozen.parameters():
        param.requires_grad_(False)
    body = next((m for m in frozen.modules() if isinstance(m, Backbone)), None)
    if body is None:
        raise TypeError(f"{type(model).__name__} holds no resbackbone Backbone.")
    body.set_grad_checkpointing(False)
    folded = 0
    if fold_bn:
        from timm.layers import unfreeze_batch_norm_2d

        unfreeze_batch_norm_2d(body).eval()  # in place: frozen norms become foldable eval BatchNorm2d
        folded = fold_batch_norms_in_place(body, stages_module(body)) + fold_sequential_batch_norms(frozen)
    return frozen, body, folded
