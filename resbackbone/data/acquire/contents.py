"""What an archive must hold: per-file sha256 manifests, checked inside the archive before anything is extracted.

Some archives are made on demand by their host, e.g. a code host's zip of a
commit: their bytes, and so their sha256, are not guaranteed to stay the same
between downloads, while the files inside them are. For those the catalog
records the sha256 of the files instead of the archive's: a manifest
``manifests/<name>.sha256`` in this package, in ``sha256sum`` format
(``<hex>  <path>`` per line), listing the files the dataset's readers use.

Paths are those of the files *in the archive*, below its single top-level
folder whatever that is named (GitHub names it ``<repo>-<full commit>/``):
``BCCD/Annotations/BloodImage_00000.xml``. :func:`verify_contents` reads each
listed member out of the archive and hashes it, so a missing or changed file
refuses the archive before the converter or the extraction writes anything.
A copy extracted by hand checks the same way: ``cd BCCD_Dataset-<commit> &&
sha256sum -c <package>/data/acquire/manifests/bccd.sha256``.
"""

from __future__ import annotations

import hashlib
import re
import tarfile
import zipfile
import zlib
from collections.abc import Iterator
from importlib.resources import files
from pathlib import Path
from typing import IO

from .archives import archive_kind

__all__ = ["ContentMismatchError", "load_manifest", "verify_contents"]

_LINE = re.compile(r"([0-9a-fA-F]{64}) [ *](.+)")
_LISTED = 5


class ContentMismatchError(ValueError):
    """Files listed in an archive's manifest are missing from it or differ; nothing was extracted.

    Attributes:
        archive: The archive.
        mismatches: ``(path, expected sha256, actual sha256)`` per file; the actual one is
            None for a missing file and ``""`` for a member that is not a regular file.
    """

    def __init__(self, message: str, archive: Path, mismatches: list[tuple[str, str, str | None]]) -> None:
        super().__init__(message)
        self.archive = archive
        self.mismatches = mismatches


def load_manifest(name: str) -> dict[str, str]:
    """The manifest ``manifests/<name>`` shipped with the package, as ``{path: sha256}``.

    Raises:
        ValueError: No such manifest, or a line that is not ``<64 hex digits>  <path>``.
    """
    folder = files(__package__) / "manifests"
    try:
        text = (folder / name).read_text(encoding="utf-8")
    except FileNotFoundError:
        known = sorted(p.name for p in folder.iterdir() if p.name.endswith(".sha256"))
        raise ValueError(f"No content manifest {name!r} in {folder}; expected one of {known}") from None
    manifest: dict[str, str] = {}
    for n, line in enumerate(text.splitlines(), 1):
        match = _LINE.fullmatch(line.strip())
        if match is None:
            raise ValueError(f"manifest {name}, line {n}: expected '<sha256 hex>  <path>', got {line.strip()!r}")
        manifest[match.group(2)] = match.group(1).lower()
    return manifest


def _top_folder(names: list[str]) -> str:
    """``"<folder>/"`` when every member lies in one top-level folder, else ``""``."""
    firsts = {name.split("/", 1)[0] for name in names}
    if len(firsts) != 1 or not any("/" in name.rstrip("/") for name in names):
        return ""
    return f"{firsts.pop()}/"


def _members(path: Path) -> Iterator[tuple[str, IO[bytes] | None]]:
    """``(name, stream of its bytes or None for what is not a regular file)`` for every member."""
    if archive_kind(path) == "zip":
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                if not info.is_dir():
                    with zf.open(info) as stream:
                        yield info.filename, stream
        return
    with tarfile.open(path, "r:*") as tf:
        for member in tf:
            if not member.isdir():
                yield member.name, tf.extractfile(member) if member.isfile() else None


def _sha256(stream: IO[bytes]) -> str:
    digest = hashlib.sha256()
    for chunk in iter(lambda: stream.read(1 << 20), b""):
        digest.update(chunk)
    return digest.hexdigest()


def _names(path: Path) -> list[str]:
    if archive_kind(path) == "zip":
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
    else:
        with tarfile.open(path, "r:*") as tf:
            names = tf.getnames()
    return [n.replace("\\", "/").removeprefix("./") for n in names if not n.startswith("__MACOSX/")]


def verify_contents(path: str | Path, manifest: dict[str, str], *, name: str = "the manifest") -> int:
    """Check that an archive holds every file of ``manifest`` with its sha256, without extracting it.

    Args:
        path: A zip or tar archive (any compression).
        manifest: ``{path below the archive's top-level folder: sha256}``, e.g. from :func:`load_manifest`.
        name: The manifest's name, for messages.

    Returns:
        The number of files verified (members not in the manifest are not checked).

    Raises:
        ContentMismatchError: A listed file is missing, not a regular file,
            listed twice, or has another sha256; the message names each
            (first few) with the expected and actual sha256.
        ValueError: The file is not an archive, or it is damaged.

    Example:
        >>> verify_contents("BCCD_Dataset-d272fb14.zip", load_manifest("bccd.sha256"))  # doctest: +SKIP
        732
    """
    path = Path(path)
    try:
        prefix = _top_folder(_names(path))
        actual: dict[str, str | None] = {}
        twice: set[str] = set()
        for member, stream in _members(path):
            rel = member.replace("\\", "/").removeprefix("./").removeprefix(prefix)
            if rel in manifest:
                if rel in actual:
                    twice.add(rel)
                actual[rel] = _sha256(stream) if stream is not None else ""
    except (zipfile.BadZipFile, tarfile.ReadError, tarfile.CompressionError, EOFError, zlib.error) as exc:
        raise ValueError(f"Archive {path} is damaged or truncated ({exc}); delete it and download it again.") from exc
    mismatches = [
        (rel, expected, actual.get(rel))
        for rel, expected in sorted(manifest.items())
        if actual.get(rel) != expected or rel in twice
    ]
    if mismatches:
        shown = "; ".join(_describe(m, twice) for m in mismatches[:_LISTED])
        more = f"; … and {len(mismatches) - _LISTED} more" if len(mismatches) > _LISTED else ""
        raise ContentMismatchError(
            f"Archive {path} is refused: {len(mismatches)} of the {len(manifest)} files listed in {name} "
            f"(paths below {prefix or 'the top'} in the archive) are missing or changed: {shown}{more}. "
            "Nothing was extracted.",
            path,
            mismatches,
        )
    return len(manifest)


def _describe(mismatch: tuple[str, str, str | None], twice: set[str]) -> str:
    rel, expected, actual = mismatch
    if rel in twice:
        return f"{rel} is in the archive more than once"
    if actual is None:
        return f"{rel} is missing (expected sha256 {expected})"
    if not actual:
        return f"{rel} is not a regular file (expected sha256 {expected})"
    return f"{rel} has sha256 {actual}, expected {expected}"
