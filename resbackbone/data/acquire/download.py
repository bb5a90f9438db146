"""Downloadable datasets: fetched from their official sources, verified, extracted safely, laid out for our loaders.

:data:`DATASETS` is the table; :func:`download_dataset` turns a name into a
folder that a recipe's ``data.root`` can point at::

    resbackbone data download kvasir_seg            # -> ~/.cache/torch/hub/datasets/kvasir_seg
    resbackbone data download bccd --root data      # -> data/bccd

How a download stays honest and safe:

* **Checksums.** An archive is extracted only when its content is known to be
  the published one: its sha256 is recorded in the table or given by the user
  (``sha256=`` / ``--sha256``), or a checksum the publisher's ecosystem
  records is (the md5 of Pascal VOC 2012, as torchvision's ``VOCSegmentation``
  records it), or the table holds a manifest of the sha256 of the files inside
  it (BCCD: GitHub makes the zip of a commit on demand, so its bytes may change
  while its files do not). The files of a manifest are hashed inside the
  archive before anything is extracted; one missing or changed refuses it,
  naming the file, its expected and its actual sha256, and the archive is
  deleted. The table records no archive sha256 yet: they are only to be
  written down from archives actually downloaded and hashed, which maintainers
  should do and pin. Without a known checksum the archive is downloaded, its
  sha256 is printed in the error, and nothing is extracted until the user
  either pins that sha256 or accepts the archive as is (``trust=True`` /
  ``--trust``). Downloads use the official HTTPS address where there is one.
* **Resumable.** Archives are fetched by :func:`resbackbone.weights.download_url`
  into ``<root>/archives/<file>.part``; an interrupted download resumes there.
* **Safe extraction.** Members with absolute paths, ``..`` components, links
  out of the folder or special files are refused before anything is written
  (:func:`resbackbone.data.acquire.archives.extract_archive`).
* **Atomic.** Archives are extracted and converted in ``<root>/.<name>.partial-<pid>``
  and renamed to ``<root>/<name>`` only when complete, with a manifest
  (``resbackbone-dataset.json``) written last. A crash leaves no half dataset
  under the final name, and a complete one is reused without any request.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import shutil
import sys
import warnings
from pathlib import Path
from typing import Any

from ...weights import DownloadError, cache_dir, download_url
from .archives import UnsafeArchiveError, extract_archive
from .catalog import DATASETS, Archive, DatasetEntry
from .contents import ContentMismatchError, load_manifest, verify_contents

__all__ = [
    "DATASETS",
    "MANIFEST",
    "Archive",
    "ContentMismatchError",
    "DatasetEntry",
    "UnverifiedArchiveError",
    "data_yaml",
    "download_dataset",
    "get_entry",
    "manual_instructions",
]

MANIFEST = "resbackbone-dataset.json"


class UnverifiedArchiveError(DownloadError):
    """An archive with no known checksum was downloaded but not extracted.

    Attributes:
        path: The archive, kept so that a rerun does not download it again.
        sha256: Its sha256, to compare with the publisher's and pin.
    """

    def __init__(self, message: str, path: Path, sha256: str) -> None:
        super().__init__(message)
        self.path = path
        self.sha256 = sha256


def get_entry(name: str) -> DatasetEntry:
    """The table entry of ``name``.

    Raises:
        ValueError: Unknown name (close matches and the full list are given).
    """
    if name in DATASETS:
        return DATASETS[name]
    close = difflib.get_close_matches(name, DATASETS, n=3, cutoff=0.5)
    hint = f" Close matches: {', '.join(map(repr, close))}." if close else ""
    raise ValueError(f"Unknown dataset {name!r}.{hint} Known: {', '.join(DATASETS)} (resbackbone data list).")


def manual_instructions(entry: DatasetEntry, root: Path | None = None) -> str:
    """What to do to get a dataset that cannot be downloaded automatically (the error's message)."""
    where = root / entry.name if root is not None else Path("<folder>")
    configs = "; ".join(data_yaml(d, where) for d in entry.data)
    return (
        f"{entry.title} cannot be downloaded automatically: {entry.manual} See {entry.homepage}. "
        f"Then lay it out as: {entry.layout_text.rstrip('.')}. Point data.root at that folder (or pass --data), "
        f"e.g. data: {configs}"
    )


def data_yaml(data: dict[str, Any], root: str | os.PathLike[str]) -> str:
    """A ``data:`` section with ``root`` as one line of YAML flow style, for messages and the CLI.

    Example:
        >>> data_yaml({"format": "voc", "train": "train"}, "/data/bccd")
        '{format: voc, root: /data/bccd, train: train}'
    """
    import yaml

    section = {"format": data["format"], "root": str(root), **data}
    return yaml.safe_dump(section, default_flow_style=True, sort_keys=False, width=1 << 20).strip()


def _say(progress: bool, message: str) -> None:
    if progress:
        print(message, file=sys.stderr)


def _digests(path: Path) -> tuple[str, str]:
    sha, md5 = hashlib.sha256(), hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            sha.update(chunk)
            md5.update(chunk)
    return sha.hexdigest(), md5.hexdigest()


def _fetch(
    entry: DatasetEntry, archive: Archive, folder: Path, *, sha256: str | None, trust: bool, progress: bool,
    timeout: float,
) -> tuple[Path, dict[str, str]]:  # fmt: skip
    """Download (or reuse) one archive and decide whether it may be extracted."""
    dst = folder / archive.filename
    expected = sha256 or archive.sha256
    errors = []
    for url in (archive.url, *archive.mirrors):
        try:
            download_url(url, dst, sha256=expected, progress=progress, timeout=timeout)
            break
        except DownloadError as exc:
            errors.append(str(exc).split(" Without network access")[0].rstrip(". "))
    else:
        raise DownloadError(
            f"{entry.title}: {archive.filename} could not be downloaded ({'; '.join(errors)}). "
            f"Download it by hand from {archive.url} (see {entry.homepage}), place it at {dst} "
            "and run the same command again."
        )
    digest, md5 = (expected.lower(), "") if expected else _digests(dst)
    record = {"url": archive.url, "filename": archive.filename, "sha256": digest}
    if expected:
        record["verified"] = "sha256"
    elif archive.md5:
        if md5 != archive.md5:
            dst.unlink()
            raise ValueError(
                f"{dst} has md5 {md5}, expected {archive.md5} ({archive.checksum_source}). The file was deleted; "
                f"run again to download it afresh, or download it by hand from {archive.url}."
            )
        record["verified"] = f"md5 ({archive.checksum_source})"
    elif archive.contents:
        pass  # its files are verified below, whatever trust says
    elif trust:
        warnings.warn(
            f"{archive.filename} has no recorded checksum and is extracted on trust; its sha256 is {digest}",
            UserWarning,
            stacklevel=3,
        )
        record["verified"] = "trusted"
    else:
        raise UnverifiedArchiveError(
            f"No checksum is recorded for {archive.filename} ({archive.url}), so it was downloaded but not "
            f"extracted. Its sha256 is {digest}. Compare it with the publisher's if one is given ({entry.homepage}), "
            f"then run again with sha256='{digest}' (CLI: --sha256 {digest}) to pin it, or with trust=True "
            f"(CLI: --trust) to accept it as is. The archive is kept at {dst}, so nothing is downloaded again.",
            dst,
            digest,
        )
    if archive.contents:
        count = _verify_contents(entry, archive, dst, archive.contents)
        files = f"file sha256 ({archive.contents}: {count} files)"
        record["verified"] = f"{record['verified']}, {files}" if "verified" in record else files
    return dst, record


def _verify_contents(entry: DatasetEntry, archive: Archive, dst: Path, manifest: str) -> int:
    """Hash the files the manifest lists inside the archive; a mismatch deletes the archive."""
    try:
        return verify_contents(dst, load_manifest(manifest), name=manifest)
    except ContentMismatchError as exc:
        dst.unlink()
        raise ContentMismatchError(
            f"{exc} The archive was deleted, since it is not the published one (or was damaged on the way): run "
            f"again to download it afresh, or download it by hand from {archive.url} (see {entry.homepage}).",
            exc.archive,
            exc.mismatches,
        ) from None


def _manifest(target: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((target / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _is_complete(target: Path, entry: DatasetEntry) -> bool:
    m = _manifest(target)
    return m is not None and m.get("name") == entry.name and m.get("layout_version") == entry.layout_version


def _remove_stale_partials(base: Path, name: str) -> None:
    """Delete work folders of runs that died (POSIX: their process is gone)."""
    if os.name != "posix":
        return
    for folder in base.glob(f".{name}.partial-*"):
        try:
            pid = int(folder.name.rsplit("-", 1)[1])
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(folder, ignore_errors=True)
        except (ValueError, PermissionError):
            continue


def download_dataset(
    name: str | DatasetEntry,
    *,
    root: str | os.PathLike[str] | None = None,
    progress: bool = True,
    sha256: str | None = None,
    trust: bool = False,
    allow_large: bool = False,
    keep_archive: bool = False,
    timeout: float = 60.0,
) -> Path:
    """Download, verify, extract and lay out a dataset; reuse it if it is already complete.

    Args:
        name: A key of :data:`DATASETS` (``resbackbone data list``), or an entry.
        root: Parent folder of the dataset (default: ``cache_dir("datasets")``,
            i.e. ``$TORCH_HOME/hub/datasets``); archives go to ``root/archives``.
        progress: Progress bar and step messages on stderr.
        sha256: Expected sha256 of the archive (datasets of one archive): pins
            an archive whose checksum is not recorded, or overrides the table.
        trust: Extract an archive with no known checksum (its sha256 is warned).
            The files of an archive with a content manifest are checked all the same.
        allow_large: Allow datasets marked large (COCO 2017, ≈19 GB).
        keep_archive: Keep the downloaded archives after a successful extraction.
        timeout: Socket timeout in seconds.

    Returns:
        The dataset folder ``root/<name>``; the entry's ``data`` sections read it.

    Raises:
        ValueError: Unknown name; a large dataset without ``allow_large``;
            ``sha256`` for a many-archive dataset; a checksum mismatch (the file
            is deleted); an archive not laid out as published.
        ContentMismatchError: A file listed in the archive's content manifest
            is missing or changed (named with both sha256; the archive is deleted).
        UnsafeArchiveError: A member escapes the folder (nothing is kept).
        UnverifiedArchiveError: No checksum is known and ``trust`` is False.
        DownloadError: The server failed, or the dataset must be fetched by
            hand (the message says where and how to lay it out).
        FileExistsError: ``root/<name>`` exists but is not a complete download.

    Example:
        >>> path = download_dataset("kvasir_seg", trust=True)  # doctest: +SKIP
        >>> DataConfig(format="mask_folder", root=path, train="train", val="val")  # doctest: +SKIP
    """
    entry = name if isinstance(name, DatasetEntry) else get_entry(name)
    base = Path(root).expanduser().absolute() if root is not None else cache_dir("datasets")
    target = base / entry.name
    if entry.manual or entry.layout is None:
        raise DownloadError(manual_instructions(entry, Path(root) if root is not None else None))
    if _is_complete(target, entry):
        _say(progress, f"{entry.name}: already complete at {target}")
        return target
    if target.exists():
        raise FileExistsError(
            f"{target} exists but is not a complete download of {entry.name} (no {MANIFEST} for this version); "
            "move or delete it, then run again."
        )
    if entry.large and not allow_large:
        raise ValueError(
            f"{entry.title} is large ({entry.size} to download, about as much again extracted). "
            "Pass allow_large=True (CLI: --allow-large) to download it, or fetch it by hand as docs/datasets.md says."
        )
    if sha256 is not None and len(entry.archives) != 1:
        raise ValueError(f"sha256 pins a single archive, but {entry.name} has {len(entry.archives)}; leave it out")
    base.mkdir(parents=True, exist_ok=True)
    _remove_stale_partials(base, entry.name)
    fetched = []
    for archive in entry.archives:  # a loop, not a comprehension: the trust warning points at the caller
        fetched.append(
            _fetch(entry, archive, base / "archives", sha256=sha256, trust=trust, progress=progress, timeout=timeout)
        )
    work = base / f".{entry.name}.partial-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    try:
        for path, _ in fetched:
            _say(progress, f"{entry.name}: extracting {path.name}")
            try:
                extract_archive(path, work / "extracted")
            except UnsafeArchiveError:
                path.unlink(missing_ok=True)
                raise
        out = work / entry.name
        _say(progress, f"{entry.name}: laying out {entry.layout_text.split(':')[0]}")
        entry.layout(work / "extracted", out)
        manifest = {
            "name": entry.name,
            "layout_version": entry.layout_version,
            "formats": [d["format"] for d in entry.data],
            "archives": [record for _, record in fetched],
        }
        (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        try:
            os.rename(out, target)
        except OSError:
            if not _is_complete(target, entry):  # else another process finished first: use its copy
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if not keep_archive:
        for path, _ in fetched:
            path.unlink(missing_ok=True)
    _say(progress, f"{entry.name}: ready at {target}")
    return target
