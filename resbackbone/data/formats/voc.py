"""Pascal VOC detection: ``Annotations/<id>.xml``, ``JPEGImages/``, ``ImageSets/Main/<split>.txt``.

XML is parsed with the standard library's ElementTree: annotation files are
local, trusted files (ElementTree does not fetch external entities).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

from ..images import IMAGE_EXTENSIONS
from ..problems import Reporter
from .base import SPLITS, FormatSpec, ReaderConfig, SplitSpec
from .records import DetectionRecord, join_inside, read_id_list, sanitize_boxes

__all__ = ["VOC", "index_voc", "voc_class_names"]

_COORDS = ("xmin", "ymin", "xmax", "ymax")


def _parse(path: Path, reporter: Reporter) -> ET.Element | None:
    try:
        return ET.parse(path).getroot()
    except FileNotFoundError:
        reporter.error(path, "annotation file listed in the split is missing on disk")
    except ET.ParseError as exc:
        reporter.error(path, f"not valid XML ({exc})")
    except OSError as exc:
        reporter.error(path, f"annotation file cannot be read ({exc})")
    return None


def _objects(root_el: ET.Element, path: Path, reporter: Reporter) -> list[tuple[str, list[float]]]:
    objects = []
    for i, obj in enumerate(root_el.iter("object")):
        name = (obj.findtext("name") or "").strip()
        box = obj.find("bndbox")
        if not name or box is None:
            reporter.error(path, f"object {i} has no <name> or no <bndbox>")
            continue
        try:
            coords = [float((box.findtext(k) or "").strip()) for k in _COORDS]
        except ValueError:
            values = [box.findtext(k) for k in _COORDS]
            reporter.error(path, f"object {i} ({name}) has a bndbox that is not four numbers: {values}")
            continue
        objects.append((name, coords))
    return objects


def _size(root_el: ET.Element) -> tuple[int, int] | None:
    try:
        w = int(float(root_el.findtext("size/width") or 0))
        h = int(float(root_el.findtext("size/height") or 0))
    except ValueError:
        return None
    return (h, w) if h > 0 and w > 0 else None


def voc_class_names(cfg: ReaderConfig, root: Path, *, strict: bool = True) -> list[str]:
    """``data.classes``, or every object name in the XML files of all splits, sorted.

    Unreadable files are skipped here (``strict`` changes nothing); indexing each split reports them.
    """
    if cfg.classes is not None:
        return list(cfg.classes)
    names: set[str] = set()
    reporter = Reporter("all")
    for split in SPLITS:
        spec = cfg.split_spec(split) or VOC.find_split(root, split)
        if spec is None or spec.list_ is None:
            continue
        for image_id in read_id_list(root / spec.list_, reporter):
            el = _parse(root / "Annotations" / f"{image_id}.xml", reporter)
            if el is not None:
                names.update(name for name, _ in _objects(el, Path(), reporter))
    return sorted(names)


def _find_image(
    root: Path, image_id: str, filename: str, cfg: ReaderConfig, xml: Path, list_file: Path, reporter: Reporter
) -> Path | None:
    """``JPEGImages/<filename>`` or ``JPEGImages/<id>.<ext>``; records an error and returns None if absent."""
    folder = root / "JPEGImages"
    if filename:
        candidate = join_inside(
            folder, filename, root=root, allow_outside=cfg.allow_outside_root, source=xml, reporter=reporter
        )
        if candidate is None:
            return None
        if candidate.is_file():
            return candidate
    for ext in IMAGE_EXTENSIONS:
        candidate = folder / f"{image_id}{ext}"
        if candidate.is_file():
            return candidate
    reporter.error(xml, f"image {filename or image_id} listed in {list_file.name} is missing on disk")
    return None


def index_voc(
    cfg: ReaderConfig, spec: SplitSpec, root: Path, reporter: Reporter, *, task: str = "detection"
) -> list[DetectionRecord]:
    """Index a VOC split: one record per listed id, boxes in pixels, labels 1..K.

    Unknown object names, missing files, malformed XML and bad boxes are
    recorded on ``reporter`` with the XML file's path.
    """
    assert spec.list_ is not None  # guaranteed by DataConfig.split_spec
    list_file = root / spec.list_
    names = voc_class_names(cfg, root)
    label_of = {n: i + 1 for i, n in enumerate(names)}
    records = []
    for n, image_id in enumerate(read_id_list(list_file, reporter)):
        xml = join_inside(
            root / "Annotations",
            f"{image_id}.xml",
            root=root,
            allow_outside=cfg.allow_outside_root,
            source=list_file,
            reporter=reporter,
        )
        if xml is None:
            continue
        el = _parse(xml, reporter)
        if el is None:
            continue
        filename = (el.findtext("filename") or "").strip()
        image = _find_image(root, image_id, filename, cfg, xml, list_file, reporter)
        if image is None:
            continue
        boxes, labels = [], []
        for name, coords in _objects(el, xml, reporter):
            if name not in label_of:
                reporter.error(xml, f"class {name!r} is not in data.classes {names}; add it or fix the annotation")
                continue
            boxes.append(coords)
            labels.append(label_of[name])
        size = _size(el)
        kept, lab = sanitize_boxes(np.array(boxes).reshape(-1, 4), np.array(labels), size, xml, reporter)
        records.append(DetectionRecord(image, kept, lab, n, size))
    return records


VOC = FormatSpec(
    name="voc",
    tasks=("detection",),
    split_fields=("list",),
    short_field="list",
    list_folder="ImageSets/Main",
    required=(("list", "the split file of image ids"),),
    index=index_voc,
    find_classes=voc_class_names,
)
