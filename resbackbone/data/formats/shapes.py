"""The built-in demo dataset as a format: generated on first use, then read as COCO or as a mask folder.

``data: {format: shapes}`` needs no root: the dataset is made in the cache by
:func:`~resbackbone.data.acquire.shapes_generator.ensure_shapes_dataset` (or a given
``root`` is checked to be one). Detection reads its COCO files, segmentation
its palette masks; splits and classes are fixed.
"""

from __future__ import annotations

from pathlib import Path

from ..acquire.shapes_generator import SHAPES_CLASSES, ensure_shapes_dataset, verify_shapes_dataset
from .base import SPLITS, FormatSpec, SplitSpec
from .records import require_root

__all__ = ["SHAPES", "locate_shapes"]


def locate_shapes(root: Path | None) -> Path:
    """The shapes dataset: generated (or reused) in the cache when ``root`` is None, else checked at ``root``.

    Raises:
        DataError: ``root`` is missing or not a complete shapes dataset.
    """
    if root is None:
        return ensure_shapes_dataset()
    return verify_shapes_dataset(require_root(root))


SHAPES = FormatSpec(
    name="shapes",
    tasks=("detection", "segmentation"),
    image_size=128,
    generate=locate_shapes,
    read_as={
        "detection": {
            "format": "coco",
            "classes": list(SHAPES_CLASSES),
            **{s: SplitSpec(annotations=Path(f"annotations/{s}.json"), images=Path(f"images/{s}")) for s in SPLITS},
        },
        "segmentation": {
            "format": "mask_folder",
            "classes": ["background", *SHAPES_CLASSES],
            **{s: SplitSpec(images=Path(f"images/{s}"), masks=Path(f"masks/{s}")) for s in SPLITS},
        },
    },
)
