"""Safe extraction of zip and tar archives: no member may land outside the target folder.

Every member is checked before anything is written, and the whole archive is
refused, with the offending member named, when one of them

* has an absolute path (``/etc/passwd``, ``C:\\x``) or a ``..`` component,
* is a symbolic or hard link whose target leaves the target folder (tar), or
  any symbolic link (zip, where links are never needed by our datasets),
* is a device, FIFO or other special file (tar).

Tar archives are then extracted with the standard library's ``data`` filter
(Python >= 3.10.12 / 3.11.4 / 3.12), which re-checks every path against the
real file system as it goes; where that filter is missing, links are refused
altogether rather than trusted to a lexical check.
"""

from __future__ import annotations

import posixpath
import re
import stat
import tarfile
import zipfile
import zlib
from pathlib import Path

__all__ = ["UnsafeArchiveError", "archive_kind", "extract_archive"]

_HAS_DATA_FILTER = hasattr(tarfile, "data_filter")


class UnsafeArchiveError(ValueError):
    """An archive member would be written outside the target folder; nothing was extracted."""


def _name_problem(name: str) -> str | None:
    """Why a member name is unsafe, or None."""
    norm = name.replace("\\", "/")
    if norm.startswith("/") or re.match(r"[A-Za-z]:", norm):
        return "has an absolute path"
    if ".." in norm.split("/"):
        return "has a '..' component"
    if "\x00" in name:
        return "has a NUL byte in its name"
    return None


def _link_escapes(member: str, target: str, *, hard: bool) -> bool:
    """Whether a link's target, read lexically, leaves the archive's root."""
    target = target.replace("\\", "/")
    if not target or target.startswith("/") or re.match(r"[A-Za-z]:", target):
        return True
    base = "" if hard else posixpath.dirname(member.replace("\\", "/"))  # hard links name archive paths
    joined = posixpath.normpath(posixpath.join(base, target))
    return joined == ".." or joined.startswith("../")


def _refuse(archive: Path, member: str, why: str, *, started: bool = False) -> UnsafeArchiveError:
    done = "Extraction stopped there" if started else "Nothing was extracted"
    return UnsafeArchiveError(
        f"Archive {archive} is refused: member {member!r} {why}, which could write outside the target folder. "
        f"{done}. The file is damaged or not the published archive; delete it and download it again "
        "from the official source."
    )


def archive_kind(path: Path) -> str:
    """``"zip"`` or ``"tar"`` (any compression), judged by the file's content.

    Raises:
        ValueError: The file is neither (e.g. an HTML error page saved under the archive's name).
    """
    if zipfile.is_zipfile(path):
        return "zip"
    if tarfile.is_tarfile(path):
        return "tar"
    with open(path, "rb") as f:
        head = f.read(16)
    raise ValueError(
        f"{path} is neither a zip nor a tar archive (it starts with {head!r}); the server may have sent an "
        "error page. Delete it and download it again, or fetch it by hand from the dataset's homepage."
    )


def _check_zip(path: Path, zf: zipfile.ZipFile) -> None:
    for info in zf.infolist():
        why = _name_problem(info.filename)
        if why is None and stat.S_ISLNK(info.external_attr >> 16):
            why = "is a symbolic link (links are not extracted from zip archives)"
        if why is not None:
            raise _refuse(path, info.filename, why)


def _check_tar(path: Path, members: list[tarfile.TarInfo]) -> None:
    for m in members:
        why = _name_problem(m.name)
        if why is None and (m.issym() or m.islnk()):
            if not _HAS_DATA_FILTER:
                why = "is a link (refused: this Python's tarfile lacks the 'data' extraction filter)"
            elif _link_escapes(m.name, m.linkname, hard=m.islnk()):
                why = f"is a link to {m.linkname!r}, outside the archive"
        elif why is None and not (m.isfile() or m.isdir()):
            why = "is a device, FIFO or other special file"
        if why is not None:
            raise _refuse(path, m.name, why)


def extract_archive(path: str | Path, dest: str | Path) -> Path:
    """Extract a zip or tar archive into ``dest`` after checking every member.

    Args:
        path: The archive (zip, tar, tar.gz, tar.bz2, tar.xz).
        dest: Target folder (created if missing). Extract into a temporary
            folder and delete it on error: the members checked here are refused
            before anything is written, but a refusal by tarfile's own filter
            (a second line of defence) comes mid-extraction.

    Returns:
        ``dest`` as a ``Path``.

    Raises:
        UnsafeArchiveError: A member has an absolute path, a ``..`` component,
            is a link out of ``dest`` or a special file (the member is named).
        ValueError: The file is not a zip or tar archive, or it is damaged.

    Example:
        >>> extract_archive("kvasir-seg.zip", "/tmp/x")  # doctest: +SKIP
        PosixPath('/tmp/x')
    """
    path, dest = Path(path), Path(dest)
    kind = archive_kind(path)
    dest.mkdir(parents=True, exist_ok=True)
    try:
        if kind == "zip":
            with zipfile.ZipFile(path) as zf:
                _check_zip(path, zf)
                zf.extractall(dest)
        else:
            with tarfile.open(path, "r:*") as tf:
                members = tf.getmembers()
                _check_tar(path, members)
                _extract_tar(path, tf, members, dest)
    except (zipfile.BadZipFile, tarfile.ReadError, tarfile.CompressionError, EOFError, zlib.error) as exc:
        raise ValueError(f"Archive {path} is damaged or truncated ({exc}); delete it and download it again.") from exc
    return dest


def _extract_tar(path: Path, tf: tarfile.TarFile, members: list[tarfile.TarInfo], dest: Path) -> None:
    if not _HAS_DATA_FILTER:
        tf.extractall(dest, members=members)
        return
    try:
        tf.extractall(dest, members=members, filter="data")
    except tarfile.FilterError as exc:
        member = exc.tarinfo.name if exc.tarinfo is not None else "?"
        why = f"was refused by tarfile's data filter ({exc})"
        raise _refuse(path, member, why, started=True) from exc
