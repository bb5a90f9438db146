"""Dataset downloads against archives built here and served on 127.0.0.1.

Each archive mimics the published one's layout with a few tiny images; the
table entry is pointed at the local server with ``dataclasses.replace``, and
the real download, verification, extraction and conversion code runs.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import stat
import subprocess
import sys
import tarfile
import zipfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from resbackbone.cli import main
from resbackbone.data import DataConfig, build_dataset
from resbackbone.data.acquire.archives import UnsafeArchiveError, extract_archive
from resbackbone.data.acquire.download import (
    DATASETS,
    MANIFEST,
    DatasetEntry,
    UnverifiedArchiveError,
    download_dataset,
    get_entry,
)
from resbackbone.weights import DownloadError

from .conftest import _RangeHandler
from .data_writers import picture, voc_xml

MEAN, STD = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)


# --- archive builders ---------------------------------------------------------------------


def _encode(arr: np.ndarray, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt)
    return buf.getvalue()


def _zip(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in files.items():
            zf.writestr(zipfile.ZipInfo(name), data)
    return buf.getvalue()


def _tar(files: dict[str, bytes], mode: str = "w:gz", links: dict[str, tuple[bytes, str]] | None = None) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        for name, (kind, target) in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = kind, target
            tf.addfile(info)
    return buf.getvalue()


def _rect_mask(h: int, w: int, box: tuple[int, int, int, int], value: int = 255) -> np.ndarray:
    m = np.zeros((h, w), np.uint8)
    x1, y1, x2, y2 = box
    m[y1:y2, x1:x2] = value
    return m


def kvasir_files(n: int = 6, *, masks: bool = True) -> dict[str, bytes]:
    """Kvasir-SEG/images/*.jpg with JPEG masks (blurred 0/255 edges), as published."""
    files = {}
    for i in range(n):
        files[f"Kvasir-SEG/images/cju{i:04d}.jpg"] = _encode(picture(48, 64, [(8, 8, 40, 32)]), "JPEG")
        if masks:
            mask = np.repeat(_rect_mask(48, 64, (8, 8, 40, 32))[..., None], 3, axis=2)
            files[f"Kvasir-SEG/masks/cju{i:04d}.jpg"] = _encode(mask, "JPEG")
    files["Kvasir-SEG/kavsir_bboxes.json"] = b"{}"
    return files


def serve(http_server: tuple[str, Path], name: str, data: bytes, filename: str, **changes: object) -> DatasetEntry:
    """The table entry ``name`` with its single archive served locally (sha256 pinned unless changed)."""
    base, served = http_server
    (served / filename).write_bytes(data)
    archive = DATASETS[name].archives[0]
    fields = {"url": f"{base}/{filename}", "filename": filename, "mirrors": (), "md5": None}
    fields["sha256"] = hashlib.sha256(data).hexdigest()
    fields.update(changes)
    return replace(DATASETS[name], archives=(replace(archive, **fields),))


def load(data: dict, root: Path, split: str, task: str, size: int = 64):  # type: ignore[no-untyped-def]
    cfg = DataConfig(**data, root=root, image_size=size)  # 64x48 images: letterboxed at scale 1
    return build_dataset(cfg, split, task=task, train=False, mean=MEAN, std=STD)


def files_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() or p.is_symlink())


# --- each dataset, converted and loaded ----------------------------------------------------


def test_kvasir_seg_becomes_a_mask_folder(http_server: tuple[str, Path], tmp_path: Path) -> None:
    macos = {"__MACOSX/Kvasir-SEG/images/._cju0000.jpg": b"\x00\x05\x16\x07"}  # as zips made on a Mac carry
    entry = serve(http_server, "kvasir_seg", _zip({**kvasir_files(), **macos}), "kvasir-seg.zip")
    path = download_dataset(entry, root=tmp_path / "data", progress=False)
    assert path == tmp_path / "data" / "kvasir_seg"
    for mask in (path / "masks").iterdir():
        assert mask.suffix == ".png" and set(np.unique(np.asarray(Image.open(mask)))) == {0, 255}
    splits = {s: (path / f"{s}.txt").read_text().split() for s in ("train", "val", "test")}
    assert [len(v) for v in splits.values()] == [4, 1, 1]
    assert sorted(i for ids in splits.values() for i in ids) == [f"cju{i:04d}" for i in range(6)]
    for split in ("train", "val", "test"):
        _, mask = load(entry.data[0], path, split, "segmentation")[0]
        assert mask[20, 20] == 1 and mask[44, 60] == 0
    manifest = json.loads((path / MANIFEST).read_text())
    assert manifest["archives"][0]["verified"] == "sha256" and manifest["formats"] == ["mask_folder"]
    assert not (tmp_path / "data" / "archives" / "kvasir-seg.zip").exists()  # removed once extracted


def test_penn_fudan_becomes_mask_folder_and_coco(http_server: tuple[str, Path], tmp_path: Path) -> None:
    files = {"PennFudanPed/readme.txt": b"Penn-Fudan"}
    boxes = [(4, 6, 20, 40), (30, 10, 50, 44)]
    for i in range(1, 6):
        stem = f"FudanPed{i:05d}"
        files[f"PennFudanPed/PNGImages/{stem}.png"] = _encode(picture(48, 64, boxes))
        inst = _rect_mask(48, 64, boxes[0], 1) + _rect_mask(48, 64, boxes[1], 2)
        files[f"PennFudanPed/PedMasks/{stem}_mask.png"] = _encode(inst)
        files[f"PennFudanPed/Annotation/{stem}.txt"] = b"# PASCAL Annotation Version 1.00\n"
    entry = serve(http_server, "penn_fudan", _zip(files), "PennFudanPed.zip")
    path = download_dataset(entry, root=tmp_path, progress=False)
    mask_cfg, coco_cfg = entry.data
    _, mask = load(mask_cfg, path, "train", "segmentation")[0]
    assert mask[20, 10] == 1 and mask[20, 40] == 1 and mask[2, 2] == 0
    ds = load(coco_cfg, path, "train", "detection")
    assert ds.classes == ["person"] and len(ds) == 3
    _, target = ds[0]
    assert sorted(target["boxes"].tolist()) == [list(map(float, b)) for b in boxes]
    assert target["labels"].tolist() == [1, 1]
    _, sem = load(coco_cfg, path, "val", "segmentation")[0]  # the RLE masks rasterise
    assert sem[20, 10] == 1 and sem[2, 2] == 0


def test_dsb2018_nucleus_masks_are_merged(http_server: tuple[str, Path], tmp_path: Path) -> None:
    files = {}
    for i in range(4):
        sid = hashlib.sha1(str(i).encode()).hexdigest()
        rgba = np.dstack([picture(32, 32, [(2, 2, 10, 10), (20, 20, 30, 30)]), np.full((32, 32), 255, np.uint8)])
        files[f"{sid}/images/{sid}.png"] = _encode(rgba)
        files[f"{sid}/masks/a{i}.png"] = _encode(_rect_mask(32, 32, (2, 2, 10, 10)))
        files[f"{sid}/masks/b{i}.png"] = _encode(_rect_mask(32, 32, (20, 20, 30, 30)))
    entry = serve(http_server, "dsb2018", _zip(files), "stage1_train.zip")
    path = download_dataset(entry, root=tmp_path, progress=False)
    sid = (path / "train.txt").read_text().split()[0]
    assert set(np.unique(np.asarray(Image.open(path / "instances" / f"{sid}.png")))) == {0, 1, 2}
    _, mask = load(entry.data[0], path, "train", "segmentation", size=32)[0]
    assert mask[5, 5] == 1 and mask[25, 25] == 1 and mask[15, 15] == 0


def _voc_tree(prefix: str, ids: list[str], *, segmentation: bool = False) -> dict[str, bytes]:
    files = {}
    box = (8, 8, 40, 30)
    for image_id in ids:
        files[f"{prefix}/JPEGImages/{image_id}.jpg"] = _encode(picture(48, 64, [box]), "JPEG")
        files[f"{prefix}/Annotations/{image_id}.xml"] = voc_xml(f"{image_id}.jpg", (48, 64), [("WBC", box)]).encode()
        if segmentation:
            files[f"{prefix}/SegmentationClass/{image_id}.png"] = _encode(_rect_mask(48, 64, box, 12))
    for split, part in (("train", ids[:2]), ("val", ids[2:3]), ("test", ids[3:])):
        lists = ("Main", "Segmentation") if segmentation else ("Main",)
        for folder in lists:
            files[f"{prefix}/ImageSets/{folder}/{split}.txt"] = "".join(f"{i}\n" for i in part).encode()
    return files


def test_bccd_repository_zip_becomes_voc(http_server: tuple[str, Path], tmp_path: Path) -> None:
    files = _voc_tree("BCCD_Dataset-master/BCCD", [f"BloodImage_0000{i}" for i in range(4)])
    files["BCCD_Dataset-master/LICENSE"] = b"MIT License"
    files["BCCD_Dataset-master/README.md"] = b"# BCCD Dataset"
    # made-up files: the archive's sha256 is pinned instead of the real files' manifest (test_data_contents.py)
    entry = serve(http_server, "bccd", _zip(files), "BCCD_Dataset-master.zip", contents=None)
    path = download_dataset(entry, root=tmp_path, progress=False)
    assert (path / "LICENSE").read_text() == "MIT License"
    ds = load(entry.data[0], path, "test", "detection")
    assert ds.classes == ["WBC"] and ds[0][1]["boxes"].tolist() == [[8.0, 8.0, 40.0, 30.0]]


def test_voc2012_tar_with_md5_gives_voc_and_voc_seg(http_server: tuple[str, Path], tmp_path: Path) -> None:
    data = _tar(_voc_tree("VOCdevkit/VOC2012", ["2007_000001", "2007_000002", "2007_000003"], segmentation=True), "w")
    md5 = hashlib.md5(data).hexdigest()
    bad = serve(http_server, "voc2012", data, "VOCtrainval_11-May-2012.tar", sha256=None, md5="0" * 32)
    with pytest.raises(ValueError, match=f"has md5 {md5}, expected 0{{32}}.*The file was deleted"):
        download_dataset(bad, root=tmp_path / "data", progress=False)
    assert files_under(tmp_path / "data") == []
    entry = serve(http_server, "voc2012", data, "VOCtrainval_11-May-2012.tar", sha256=None, md5=md5)
    path = download_dataset(entry, root=tmp_path / "data", progress=False)
    det, seg = entry.data
    assert load(det, path, "val", "detection")[0][1]["labels"].tolist() == [1]
    _, mask = load(seg, path, "train", "segmentation")[0]
    assert mask[20, 20] == 12 and mask[2, 2] == 0
    assert json.loads((path / MANIFEST).read_text())["archives"][0]["verified"].startswith("md5 (")


def test_coco2017_needs_allow_large_then_lays_out_three_zips(http_server: tuple[str, Path], tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"COCO 2017 .* is large \(≈19 GB.*allow_large=True"):
        download_dataset("coco2017", root=tmp_path, progress=False)
    base, served = http_server
    ann = {
        "images": [{"id": 1, "file_name": "a.jpg", "width": 64, "height": 48}],
        "categories": [{"id": 3, "name": "car"}],
    }
    ann["annotations"] = [{"id": 1, "image_id": 1, "category_id": 3, "bbox": [8, 8, 20, 10], "area": 200, "iscrowd": 0}]
    contents = {
        "train2017.zip": {"train2017/a.jpg": _encode(picture(48, 64), "JPEG")},
        "val2017.zip": {"val2017/a.jpg": _encode(picture(48, 64), "JPEG")},
        "annotations_trainval2017.zip": {
            f"annotations/instances_{s}2017.json": json.dumps(ann).encode() for s in ("train", "val")
        },
    }
    archives = []
    for archive in DATASETS["coco2017"].archives:
        data = _zip(contents[archive.filename])
        (served / archive.filename).write_bytes(data)
        archives.append(replace(archive, url=f"{base}/{archive.filename}", sha256=hashlib.sha256(data).hexdigest()))
    entry = replace(DATASETS["coco2017"], archives=tuple(archives))
    path = download_dataset(entry, root=tmp_path, progress=False, allow_large=True)
    _, target = load(entry.data[0], path, "val", "detection")[0]
    assert target["boxes"].tolist() == [[8.0, 8.0, 28.0, 18.0]]


def test_every_data_section_in_the_table_validates(tmp_path: Path) -> None:
    for entry in DATASETS.values():
        assert entry.data, entry.name
        for data in entry.data:
            DataConfig(**data, root=tmp_path)


# --- verification, resumption, reuse, atomicity --------------------------------------------


def test_wrong_hash_leaves_nothing(http_server: tuple[str, Path], tmp_path: Path, torch_home: Path) -> None:
    entry = serve(http_server, "kvasir_seg", _zip(kvasir_files()), "kvasir-seg.zip", sha256="0" * 64)
    with pytest.raises(ValueError, match=r"has sha256 [0-9a-f]{64}, expected 0{64}\. The file was deleted"):
        download_dataset(entry, progress=False)  # into the default cache: $TORCH_HOME/hub/datasets
    assert (torch_home / "hub" / "datasets").is_dir() and files_under(torch_home) == []


def test_unknown_checksum_needs_pin_or_trust(http_server: tuple[str, Path], tmp_path: Path) -> None:
    data = _zip(kvasir_files())
    digest = hashlib.sha256(data).hexdigest()
    entry = serve(http_server, "kvasir_seg", data, "kvasir-seg.zip", sha256=None)
    root = tmp_path / "data"
    with pytest.raises(UnverifiedArchiveError, match=f"Its sha256 is {digest}.*--sha256 {digest}.*--trust"):
        download_dataset(entry, root=root, progress=False)
    assert files_under(root) == [root / "archives" / "kvasir-seg.zip"]  # kept, not extracted
    with pytest.raises(ValueError, match=r"expected f{64}"):
        download_dataset(entry, root=root, progress=False, sha256="f" * 64)
    _RangeHandler.requests.clear()
    with pytest.warns(UserWarning, match=f"extracted on trust; its sha256 is {digest}"):
        path = download_dataset(entry, root=root, progress=False, trust=True)
    assert _RangeHandler.requests == []  # the kept archive was used
    assert json.loads((path / MANIFEST).read_text())["archives"][0] == {
        "url": entry.archives[0].url,
        "filename": "kvasir-seg.zip",
        "sha256": digest,
        "verified": "trusted",
    }
    pinned = download_dataset(entry, root=tmp_path / "other", progress=False, sha256=digest)
    assert json.loads((pinned / MANIFEST).read_text())["archives"][0]["verified"] == "sha256"


def test_interrupted_download_resumes(http_server: tuple[str, Path], tmp_path: Path) -> None:
    data = _zip(kvasir_files())
    half = len(data) // 2
    # The server's copy has a garbage head: only a download resumed from byte `half` ends with the right hash.
    entry = serve(http_server, "kvasir_seg", b"X" * half + data[half:], "kvasir-seg.zip")
    entry = replace(entry, archives=(replace(entry.archives[0], sha256=hashlib.sha256(data).hexdigest()),))
    part = tmp_path / "archives" / "kvasir-seg.zip.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(data[:half])  # what an interrupted run left
    path = download_dataset(entry, root=tmp_path, progress=False)
    assert len((path / "train.txt").read_text().split()) == 4 and not part.exists()


def test_complete_dataset_is_reused_without_a_request(http_server: tuple[str, Path], tmp_path: Path) -> None:
    entry = serve(http_server, "kvasir_seg", _zip(kvasir_files()), "kvasir-seg.zip")
    path = download_dataset(entry, root=tmp_path, progress=False)
    _RangeHandler.requests.clear()
    (http_server[1] / "kvasir-seg.zip").unlink()
    assert download_dataset(entry, root=tmp_path, progress=False) == path
    assert _RangeHandler.requests == []


def test_layout_failure_leaves_no_half_dataset(http_server: tuple[str, Path], tmp_path: Path) -> None:
    entry = serve(http_server, "kvasir_seg", _zip(kvasir_files(masks=False)), "kvasir-seg.zip")
    with pytest.raises(ValueError, match=r"Kvasir-SEG archive has no folder holding \['images', 'masks'\]"):
        download_dataset(entry, root=tmp_path, progress=False)
    assert [p.name for p in tmp_path.iterdir() if p.name != "served"] == ["archives"]  # archive kept for a rerun
    (tmp_path / "kvasir_seg").mkdir()
    (tmp_path / "kvasir_seg" / "mine.txt").write_text("user data")
    with pytest.raises(FileExistsError, match="kvasir_seg exists but is not a complete download"):
        download_dataset(entry, root=tmp_path, progress=False)
    assert (tmp_path / "kvasir_seg" / "mine.txt").read_text() == "user data"


@pytest.mark.skipif(os.name != "posix", reason="stale work folders are recognised by process id on POSIX")
def test_work_folder_of_a_dead_run_is_removed(http_server: tuple[str, Path], tmp_path: Path) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".kvasir_seg.partial-{int(dead.stdout)}"
    (stale / "extracted").mkdir(parents=True)
    entry = serve(http_server, "kvasir_seg", _zip(kvasir_files()), "kvasir-seg.zip")
    download_dataset(entry, root=tmp_path, progress=False)
    assert not stale.exists()


# --- unsafe archives -----------------------------------------------------------------------


def _zip_symlink(name: str, target: str) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for n, d in kvasir_files(2).items():
            zf.writestr(n, d)
        info = zipfile.ZipInfo(name)
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(info, target)
    return buf.getvalue()


UNSAFE = {
    "zip-dotdot": ("x.zip", lambda: _zip({**kvasir_files(2), "../evil.txt": b"x"}), "../evil.txt", "'..' component"),
    "zip-absolute": ("x.zip", lambda: _zip({**kvasir_files(2), "/tmp/evil.txt": b"x"}), "/tmp/evil.txt", "absolute"),
    "zip-symlink": ("x.zip", lambda: _zip_symlink("Kvasir-SEG/l", "../../evil"), "Kvasir-SEG/l", "symbolic link"),
    "tar-dotdot": ("x.tar.gz", lambda: _tar({**kvasir_files(2), "a/../../evil.txt": b"x"}), "a/../../evil.txt", "'..'"),
    "tar-absolute": ("x.tar.gz", lambda: _tar({**kvasir_files(2), "/tmp/evil.txt": b"x"}), "/tmp/evil.txt", "absolute"),
    "tar-symlink": (
        "x.tar.gz",
        lambda: _tar(kvasir_files(2), links={"Kvasir-SEG/l": (tarfile.SYMTYPE, "../../evil")}),
        "Kvasir-SEG/l",
        "link to '../../evil', outside",
    ),
    "tar-hardlink": (
        "x.tar.gz",
        lambda: _tar(kvasir_files(2), links={"Kvasir-SEG/h": (tarfile.LNKTYPE, "../evil")}),
        "Kvasir-SEG/h",
        "link to '../evil', outside",
    ),
}


@pytest.mark.parametrize("case", list(UNSAFE))
def test_escaping_archive_is_refused_and_leaves_nothing(
    case: str, http_server: tuple[str, Path], tmp_path: Path
) -> None:
    filename, build, member, why = UNSAFE[case]
    entry = serve(http_server, "kvasir_seg", build(), filename)
    root = tmp_path / "data"
    with pytest.raises(UnsafeArchiveError, match=f"member '{member}' [^.]*{why}.*Nothing was extracted"):
        download_dataset(entry, root=root, progress=False)
    assert files_under(root) == []
    assert not any(p.name.startswith("evil") for p in files_under(tmp_path))


def test_truncated_archive_is_reported_and_leaves_no_dataset(http_server: tuple[str, Path], tmp_path: Path) -> None:
    data = _tar(kvasir_files())
    entry = serve(http_server, "kvasir_seg", data[: len(data) // 2], "kvasir-seg.tar.gz")
    with pytest.raises(ValueError, match=r"kvasir-seg\.tar\.gz is damaged or truncated"):
        download_dataset(entry, root=tmp_path / "data", progress=False)
    assert files_under(tmp_path / "data") == [tmp_path / "data" / "archives" / "kvasir-seg.tar.gz"]


def test_links_inside_the_folder_are_extracted(tmp_path: Path) -> None:
    archive = tmp_path / "ok.tar.gz"
    archive.write_bytes(_tar({"a/file.txt": b"hi"}, links={"a/link.txt": (tarfile.SYMTYPE, "file.txt")}))
    out = extract_archive(archive, tmp_path / "out")
    assert (out / "a" / "link.txt").read_text() == "hi"


# --- names, manual datasets, CLI -----------------------------------------------------------


def test_unknown_name_suggests_close_matches() -> None:
    with pytest.raises(ValueError, match=r"Unknown dataset 'kvasir'\. Close matches: 'kvasir_seg'"):
        get_entry("kvasir")


@pytest.mark.parametrize("name", [n for n, e in DATASETS.items() if e.manual])
def test_manual_datasets_explain_what_to_do(name: str, tmp_path: Path) -> None:
    entry = DATASETS[name]
    with pytest.raises(DownloadError, match=r"cannot be downloaded automatically: .*https://.*Point data\.root") as e:
        download_dataset(name, root=tmp_path, progress=False)
    config = yaml.safe_load(str(e.value).split("e.g. data: ", 1)[1].split("; ")[0])
    assert config["root"] == str(tmp_path / name) and config["format"] == entry.data[0]["format"]
    assert list(tmp_path.iterdir()) == []


def test_cli_list_and_download(
    http_server: tuple[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["data", "list"]) == 0
    out = capsys.readouterr().out
    for entry in DATASETS.values():
        assert f"{entry.name} " in out
    assert "cityscapes      segmentation            ≈11 GB   manual" in out

    data = _zip(kvasir_files())
    monkeypatch.setitem(DATASETS, "kvasir_seg", serve(http_server, "kvasir_seg", data, "kvasir-seg.zip", sha256=None))
    root = tmp_path / "data"
    assert main(["data", "download", "kvasir_seg", "--root", str(root), "--no-progress"]) == 2
    assert f"--sha256 {hashlib.sha256(data).hexdigest()}" in capsys.readouterr().err
    argv = ["data", "download", "kvasir_seg", "--root", str(root), "--no-progress", "--trust"]
    with pytest.warns(UserWarning, match="extracted on trust"):
        assert main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"kvasir_seg: {root / 'kvasir_seg'}"
    section = yaml.safe_load(lines[1].split("data: ", 1)[1])
    cfg = DataConfig(**section)
    assert len(build_dataset(cfg, "train", task="segmentation", train=False, mean=MEAN, std=STD)) == 4

    assert main(["data", "download", "cityscapes"]) == 2
    assert "need an account at https://www.cityscapes-dataset.com/" in capsys.readouterr().err
