"""A plug-in backbone for the tests: plain strided convolutions with declared stages, registered for one test."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn

from resbackbone import StageSpec, register_backbone, unregister_backbone


def _conv(i: int, o: int) -> nn.Module:
    return nn.Sequential(nn.Conv2d(i, o, 3, stride=2, padding=1), nn.ReLU())


class Plain(nn.Module):
    """A stem of ``stem_convs`` stride-2 convolutions, then four more: C2–C5 at ``2**stem_convs`` × 2, 4, 8, 16."""

    def __init__(self, in_chans: int, stem_convs: int = 1) -> None:
        super().__init__()
        self.stem = nn.Sequential(_conv(in_chans, 4), *(_conv(4, 4) for _ in range(stem_convs - 1)))
        self.s1, self.s2, self.s3, self.s4 = _conv(4, 6), _conv(6, 8), _conv(8, 10), _conv(10, 12)


STAGES = (StageSpec("stem", ("stem",)), *(StageSpec(f"s{i}", (f"s{i}",), f"C{i + 1}") for i in range(1, 5)))


@contextmanager
def plain_backbone(name: str, *, stem_convs: int = 1) -> Iterator[str]:
    """Register :class:`Plain` as ``name`` for the ``with`` block; unregistered after it, even on failure."""
    register_backbone(name, stages=STAGES)(
        lambda *, in_chans, output_stride, drop_path_rate: Plain(in_chans, stem_convs)
    )
    try:
        yield name
    finally:
        unregister_backbone(name)
