"""The data formats: one module and one :class:`FormatSpec` each, and :data:`FORMAT_SPECS`, the table of them.

=============== ============================ ==========================================================
format          tasks                        module
=============== ============================ ==========================================================
``coco``        detection, segmentation      :mod:`.coco`: COCO JSON, boxes and polygons/RLE
``voc``         detection                    :mod:`.voc`: Pascal VOC XML, ``ImageSets/Main``
``yolo``        detection                    :mod:`.yolo`: YOLO txt labels beside ``images/``
``mask_folder`` segmentation                 :mod:`.mask_folder`: ``images/`` with ``masks/``
``voc_seg``     segmentation                 :mod:`.voc_seg`: VOC ``SegmentationClass`` PNGs
``shapes``      detection, segmentation      :mod:`.shapes`: the generated demo dataset
=============== ============================ ==========================================================

Shared by the readers: :mod:`.base` (the spec, :class:`SplitSpec`),
:mod:`.records` (records, path and box helpers) and :mod:`.masks` (class map,
rasterisation). A new format is a module defining its readers and its
:class:`FormatSpec`, plus its entry below.

Example:
    >>> FORMAT_SPECS["voc"].parse_split("train", "trainval")
    SplitSpec(annotations=None, images=None, masks=None, list_=PosixPath('ImageSets/Main/trainval.txt'))
"""

from .base import SPLITS, FormatSpec, ReaderConfig, SplitSpec
from .coco import COCO
from .mask_folder import MASK_FOLDER
from .shapes import SHAPES
from .voc import VOC
from .voc_seg import VOC_SEG
from .yolo import YOLO

__all__ = ["FORMATS", "FORMAT_SPECS", "FORMAT_TASKS", "SPLITS", "FormatSpec", "ReaderConfig", "SplitSpec"]

#: Every format ``data.format`` accepts, by name.
FORMAT_SPECS: dict[str, FormatSpec] = {spec.name: spec for spec in (COCO, VOC, YOLO, MASK_FOLDER, VOC_SEG, SHAPES)}
#: The format names, in table order.
FORMATS: tuple[str, ...] = tuple(FORMAT_SPECS)
#: The tasks each format can serve (COCO polygons/RLE are rasterised for segmentation).
FORMAT_TASKS: dict[str, tuple[str, ...]] = {name: spec.tasks for name, spec in FORMAT_SPECS.items()}
