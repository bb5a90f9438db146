"""COCO JSON: boxes for detection, polygons/RLE for segmentation (rasterised by :func:`.masks.rasterize`).

The file is validated field by field first (pydantic), so a malformed file is
a :class:`DataError` naming the file and the JSON path of the first bad
entries; pycocotools then indexes annotations per image. Class names are the
categories sorted by id, unless ``data.classes`` picks and orders them.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError

from ..problems import DataError, Reporter
from .base import SPLITS, FormatSpec, ReaderConfig, SplitSpec
from .records import DetectionRecord, SegmentationRecord, join_inside, sanitize_boxes

__all__ = ["COCO", "coco_categories", "coco_class_names", "index_coco", "load_coco"]


class _Image(BaseModel):
    model_config = ConfigDict(extra="allow")
    id: int
    file_name: str
    width: int | None = None
    height: int | None = None


class _Annotation(BaseModel):
    model_config = ConfigDict(extra="allow")
    id: int
    image_id: int
    category_id: int
    bbox: tuple[float, float, float, float] | None = None
    iscrowd: int = 0
    segmentation: Any = None


class _Category(BaseModel):
    model_config = ConfigDict(extra="allow")
    id: int
    name: str


class _CocoFile(BaseModel):
    model_config = ConfigDict(extra="allow")
    images: list[_Image]
    annotations: list[_Annotation] = []
    categories: list[_Category]


def load_coco(path: Path, reporter: Reporter) -> _CocoFile | None:
    """Parse and validate a COCO JSON file; problems go to ``reporter`` (then None is returned)."""
    try:
        raw = json.loads(path.read_bytes())
    except FileNotFoundError:
        reporter.error(path, "COCO annotation file not found; check data.root and the split's annotations path")
        return None
    except (OSError, ValueError) as exc:
        reporter.error(path, f"not a readable JSON file ({exc})")
        return None
    try:
        data = _CocoFile.model_validate(raw)
    except ValidationError as exc:
        for err in exc.errors()[:10]:
            loc = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in err["loc"]).lstrip(".")
            reporter.error(path, f"invalid COCO field {loc or '(top level)'}: {err['msg']}")
        return None
    ok = True
    for what, items in (("image", data.images), ("annotation", data.annotations), ("category", data.categories)):
        seen: set[int] = set()
        for item in items:
            if item.id in seen:
                reporter.error(path, f"duplicate {what} id {item.id}; ids must be unique")
                ok = False
            seen.add(item.id)
    return data if ok else None


def coco_categories(data: _CocoFile, cfg: ReaderConfig, path: Path, reporter: Reporter) -> dict[int, int]:
    """Map COCO category ids to labels 1..K (``data.classes`` order, else sorted by id)."""
    if cfg.classes is None:
        return {c.id: i + 1 for i, c in enumerate(sorted(data.categories, key=lambda c: c.id))}
    position = {name: i + 1 for i, name in enumerate(cfg.classes)}
    mapping: dict[int, int] = {}
    used = {a.category_id for a in data.annotations}
    for c in data.categories:
        if c.name in position:
            mapping[c.id] = position[c.name]
        elif c.id in used:
            reporter.error(
                path, f"category {c.name!r} (id {c.id}) is used by annotations but not in data.classes {cfg.classes}"
            )
    return mapping


def _coco_api(data: _CocoFile):  # type: ignore[no-untyped-def]
    from pycocotools.coco import COCO

    coco = COCO()
    coco.dataset = data.model_dump(mode="python")
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def index_coco(
    cfg: ReaderConfig, spec: SplitSpec, root: Path, reporter: Reporter, *, task: str
) -> list[DetectionRecord] | list[SegmentationRecord]:
    """Index a COCO split.

    Args:
        cfg: Data config (classes, allow_outside_root).
        spec: The split (``annotations``, optional ``images``).
        root: Dataset root.
        reporter: Receives every problem.
        task: ``"detection"`` or ``"segmentation"``.

    Returns:
        One record per image (images without annotations included); crowd
        annotations are skipped for detection and ignored in segmentation masks.
    """
    assert spec.annotations is not None  # guaranteed by DataConfig.split_spec
    path = Path(root / spec.annotations)
    data = load_coco(path, reporter)
    if data is None:
        return []
    images_dir = root / spec.images if spec.images is not None else root
    labels = coco_categories(data, cfg, path, reporter)
    image_ids = {im.id for im in data.images}
    known = {c.id for c in data.categories}
    for a in data.annotations:
        if a.image_id not in image_ids:
            reporter.error(path, f"annotation {a.id} refers to image_id {a.image_id}, which is not in images")
        if a.category_id not in known:
            reporter.error(
                path, f"annotation {a.id} has category_id {a.category_id}, not in categories {sorted(known)}"
            )
    coco = _coco_api(data)
    records: list[Any] = []
    for im in data.images:
        image = join_inside(
            images_dir, im.file_name, root=root, allow_outside=cfg.allow_outside_root, source=path, reporter=reporter
        )
        if image is None:
            continue
        if not image.is_file():
            reporter.error(image, f"image listed in {path.name} (id {im.id}) is missing on disk")
            continue
        size = (im.height, im.width) if im.height and im.width else None
        anns = [a for a in coco.imgToAnns.get(im.id, []) if a["category_id"] in labels]
        where = f"{path} (image {im.file_name})"
        if task == "detection":
            anns = [a for a in anns if not a.get("iscrowd")]
            missing = [a["id"] for a in anns if a.get("bbox") is None]
            if missing:
                reporter.error(path, f"annotations {missing[:5]} of image {im.file_name} have no bbox")
            anns = [a for a in anns if a.get("bbox") is not None]
            xywh = np.array([a["bbox"] for a in anns], dtype=np.float64).reshape(-1, 4)
            xyxy = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
            lab = np.array([labels[a["category_id"]] for a in anns], dtype=np.int64)
            boxes, lab = sanitize_boxes(xyxy, lab, size, where, reporter)
            records.append(DetectionRecord(image, boxes, lab, im.id, size))
        else:
            if size is None and anns:
                reporter.error(path, f"image {im.file_name} needs width and height to rasterise its segmentations")
                continue
            shapes = []
            for a in anns:
                if not a.get("segmentation"):
                    reporter.error(path, f"annotation {a['id']} of image {im.file_name} has no segmentation")
                    continue
                shapes.append((labels[a["category_id"]], a["segmentation"], int(a.get("iscrowd", 0))))
            records.append(SegmentationRecord(image, None, im.id, tuple(shapes), size))
    return records


def coco_class_names(cfg: ReaderConfig, root: Path, *, strict: bool = True) -> list[str] | None:
    """Category names (sorted by id) of the first configured COCO file that loads.

    With ``strict=False`` a dataset whose files all fail gives None, leaving the
    detailed errors to the indexing of each split.

    Raises:
        DataError: Two categories share a name; with ``strict``, no file loads
            (every problem listed) or no split is configured.
    """
    reporter = Reporter("all")
    for split in SPLITS:
        spec = cfg.split_spec(split)
        if spec is None or spec.annotations is None:
            continue
        path = root / spec.annotations
        data = load_coco(path, reporter)
        if data is None:
            continue
        names = [c.name for c in sorted(data.categories, key=lambda c: c.id)]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise DataError(f"{path}: category names {dup} are used by several ids; names must be unique", path)
        return names
    if not strict:
        return None
    if reporter.problems:
        reporter.finish()  # raises every problem found
    raise DataError("No COCO split is configured; set data.train: {annotations: ..., images: ...}")


COCO = FormatSpec(
    name="coco",
    tasks=("detection", "segmentation"),
    split_fields=("annotations", "images"),
    short_field="annotations",
    required=(("annotations", "the COCO JSON file"),),
    index=index_coco,
    find_classes=coco_class_names,
)
