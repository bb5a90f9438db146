"""Archives checked file by file against a content manifest (BCCD: a GitHub zip of a pinned commit).

The BCCD tests build the zip GitHub would serve for the pinned commit from the
real files in ``../shared/data/bccd`` (skipped when absent), serve it on
127.0.0.1 and run ``resbackbone data download bccd`` against it, so the
shipped manifest ``manifests/bccd.sha256`` is what they exercise.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import zipfile
from dataclasses import replace
from pathlib import Path

import pytest

from resbackbone.cli import main
from resbackbone.data import DataConfig, build_dataset
from resbackbone.data.acquire import DATASETS, ContentMismatchError
from resbackbone.data.acquire.catalog import BCCD_COMMIT
from resbackbone.data.acquire.contents import load_manifest, verify_contents
from resbackbone.data.acquire.download import MANIFEST

from .conftest import data_root

MEAN, STD = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
TOP = f"BCCD_Dataset-{BCCD_COMMIT}"


def _zip(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name in sorted({f"{n.rsplit('/', 1)[0]}/" for n in files if "/" in n}):
            zf.writestr(name, b"")  # folder entries, as GitHub writes them
        for name, data in files.items():
            zf.writestr(name, data)
    return buf.getvalue()


def _tar(files: dict[str, bytes], links: dict[str, str] | None = None, again: tuple[str, ...] = ()) -> bytes:
    """A tar.gz of ``files``, plus symbolic ``links`` and a second copy of the members named in ``again``."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, data in [*files.items(), *((n, files[n]) for n in again)]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tf.addfile(info)
    return buf.getvalue()


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --- verify_contents on small archives -------------------------------------------------------

SMALL = {"pkg-1a2b/data/a.txt": b"alpha\n", "pkg-1a2b/data/b.txt": b"beta\n", "pkg-1a2b/README": b"readme"}
SMALL_MANIFEST = {"data/a.txt": _sha(b"alpha\n"), "data/b.txt": _sha(b"beta\n")}


@pytest.mark.parametrize("kind", ["zip", "tar.gz"])
def test_listed_files_are_found_below_any_top_folder(kind: str, tmp_path: Path) -> None:
    archive = tmp_path / f"x.{kind}"
    archive.write_bytes(_zip(SMALL) if kind == "zip" else _tar(SMALL))
    assert verify_contents(archive, SMALL_MANIFEST) == 2
    flat = tmp_path / f"flat.{kind}"  # no top-level folder: paths from the archive's root
    files = {name.split("/", 1)[1]: data for name, data in SMALL.items()}
    flat.write_bytes(_zip(files) if kind == "zip" else _tar(files))
    assert verify_contents(flat, SMALL_MANIFEST) == 2


@pytest.mark.parametrize("kind", ["zip", "tar.gz"])
def test_a_changed_or_missing_file_is_named_with_both_hashes(kind: str, tmp_path: Path) -> None:
    files = {**SMALL, "pkg-1a2b/data/a.txt": b"alpha, changed\n"}
    del files["pkg-1a2b/data/b.txt"]
    archive = tmp_path / f"x.{kind}"
    archive.write_bytes(_zip(files) if kind == "zip" else _tar(files))
    with pytest.raises(ContentMismatchError, match=r"2 of the 2 files listed in t\.sha256 \(paths below pkg-1a2b/"):
        verify_contents(archive, SMALL_MANIFEST, name="t.sha256")
    with pytest.raises(ContentMismatchError) as e:
        verify_contents(archive, SMALL_MANIFEST)
    message = str(e.value)
    changed = _sha(files["pkg-1a2b/data/a.txt"])
    assert f"data/a.txt has sha256 {changed}, expected {SMALL_MANIFEST['data/a.txt']}" in message
    assert f"data/b.txt is missing (expected sha256 {SMALL_MANIFEST['data/b.txt']})" in message
    assert "Nothing was extracted" in message
    assert [m[0] for m in e.value.mismatches] == ["data/a.txt", "data/b.txt"]


def test_a_link_or_a_duplicate_in_place_of_a_listed_file_is_refused(tmp_path: Path) -> None:
    archive = tmp_path / "link.tar.gz"
    archive.write_bytes(_tar({"pkg-1a2b/data/a.txt": b"alpha\n"}, links={"pkg-1a2b/data/b.txt": "a.txt"}))
    with pytest.raises(ContentMismatchError, match=r"data/b\.txt is not a regular file"):
        verify_contents(archive, SMALL_MANIFEST)
    archive = tmp_path / "twice.tar.gz"
    archive.write_bytes(_tar(SMALL, again=("pkg-1a2b/data/a.txt",)))
    with pytest.raises(ContentMismatchError, match=r"data/a\.txt is in the archive more than once"):
        verify_contents(archive, SMALL_MANIFEST)


def test_the_bccd_manifest_lists_the_files_the_loader_reads() -> None:
    manifest = load_manifest("bccd.sha256")
    folders = sorted({path.rsplit("/", 1)[0] for path in manifest})
    assert folders == ["BCCD/Annotations", "BCCD/ImageSets/Main", "BCCD/JPEGImages"]
    assert len(manifest) == 364 + 364 + 4
    assert DATASETS["bccd"].archives[0].contents == "bccd.sha256"
    assert BCCD_COMMIT in DATASETS["bccd"].archives[0].url and len(BCCD_COMMIT) == 40


# --- resbackbone data download bccd, against the real files -----------------------------------


@pytest.fixture(scope="module")
def bccd_files() -> dict[str, bytes]:
    """The members of GitHub's zip of the pinned commit, made from the real files (the loader's ones)."""
    src = data_root() / "bccd"
    if not src.is_dir():
        pytest.skip(f"BCCD not found at {src}; set RESBACKBONE_DATA_ROOT to run the BCCD download tests")
    files = {f"{TOP}/LICENSE": (src / "LICENSE").read_bytes(), f"{TOP}/README.md": b"# BCCD Dataset\n"}
    for path in sorted(src.rglob("*")):
        if path.is_file() and path.name != "LICENSE":
            files[f"{TOP}/BCCD/{path.relative_to(src).as_posix()}"] = path.read_bytes()
    return files


def _serve_bccd(http_server: tuple[str, Path], monkeypatch: pytest.MonkeyPatch, files: dict[str, bytes]) -> None:
    """Point the table's BCCD entry at a local copy of the archive; its checks stay as shipped."""
    base, served = http_server
    archive = DATASETS["bccd"].archives[0]
    (served / archive.filename).write_bytes(_zip(files))
    entry = replace(DATASETS["bccd"], archives=(replace(archive, url=f"{base}/{archive.filename}"),))
    monkeypatch.setitem(DATASETS, "bccd", entry)


@pytest.mark.realdata
@pytest.mark.filterwarnings("ignore::resbackbone.data.DataWarning")  # a zero-area box of the published data
def test_bccd_downloads_without_trust_its_files_verified(
    bccd_files: dict[str, bytes],
    http_server: tuple[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _serve_bccd(http_server, monkeypatch, bccd_files)
    root = tmp_path / "data"
    assert main(["data", "download", "bccd", "--root", str(root), "--no-progress"]) == 0, capsys.readouterr().err
    path = root / "bccd"
    record = json.loads((path / MANIFEST).read_text())["archives"][0]
    assert record["verified"] == "file sha256 (bccd.sha256: 732 files)"
    assert record["sha256"] == _sha((http_server[1] / DATASETS["bccd"].archives[0].filename).read_bytes())
    cfg = DataConfig(**DATASETS["bccd"].data[0], root=path, image_size=64)
    assert len(build_dataset(cfg, "train", task="detection", train=False, mean=MEAN, std=STD)) == 205


@pytest.mark.realdata
def test_bccd_archive_with_a_changed_file_is_refused_naming_it(
    bccd_files: dict[str, bytes],
    http_server: tuple[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    xml = f"{TOP}/BCCD/Annotations/BloodImage_00007.xml"
    tampered = {**bccd_files, xml: bccd_files[xml].replace(b"<name>RBC</name>", b"<name>WBC</name>", 1)}
    del tampered[f"{TOP}/BCCD/JPEGImages/BloodImage_00010.jpg"]
    _serve_bccd(http_server, monkeypatch, tampered)
    root = tmp_path / "data"
    argv = ["data", "download", "bccd", "--root", str(root), "--no-progress", "--trust"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    expected = load_manifest("bccd.sha256")
    changed = f"BCCD/Annotations/BloodImage_00007.xml has sha256 {_sha(tampered[xml])}, expected "
    assert changed + expected["BCCD/Annotations/BloodImage_00007.xml"] in err
    image = "BCCD/JPEGImages/BloodImage_00010.jpg"
    assert f"{image} is missing (expected sha256 {expected[image]})" in err
    assert "2 of the 732 files listed in bccd.sha256" in err and "The archive was deleted" in err
    assert sorted(p.name for p in root.rglob("*")) == ["archives"]  # no dataset, no work folder, no archive
