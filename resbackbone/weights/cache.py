"""Verified, atomic, resumable file downloads into a cache (weights and datasets).

A download streams into ``<name>.part`` beside the target, hashes as it goes,
and is renamed into place only once verified: the cache never holds a file
whose hash was not checked. An interrupted download resumes from the
``.part`` file where the server supports ranges; a hash mismatch deletes it.
"""

from __future__ import annotations

import hashlib
import os
import re
import urllib.error
import urllib.request
from pathlib import Path

__all__ = ["DownloadError", "cache_dir", "download_url", "sha256_file"]

_CHUNK = 1 << 20


class DownloadError(OSError):
    """A file could not be downloaded; the message says how to supply it by hand."""


def cache_dir(kind: str = "checkpoints") -> Path:
    """The cache folder for ``kind``: ``$TORCH_HOME/hub/<kind>`` (torch.hub's layout).

    Checkpoints land where ``torch.hub`` and torchvision put them, so files
    either has already downloaded are reused.
    """
    import torch.hub

    return Path(torch.hub.get_dir()) / kind


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _check_hex(value: str, what: str) -> str:
    if not re.fullmatch(r"[0-9a-fA-F]+", value or ""):
        raise ValueError(f"{what} {value!r} is not a hex digest; expected hex digits such as the output of sha256sum.")
    return value.lower()


def download_url(
    url: str,
    dst: str | os.PathLike[str],
    *,
    sha256: str | None = None,
    hash_prefix: str | None = None,
    progress: bool = True,
    timeout: float = 60.0,
) -> Path:
    """Download ``url`` to ``dst`` unless it is already there, verifying its sha256.

    Args:
        url: ``http://`` or ``https://`` address.
        dst: Final path of the file.
        sha256: Full expected sha256 (hex); checked on every call, cached or not.
        hash_prefix: Expected leading hex digits of the sha256 (torchvision's
            file-name convention); checked when downloading.
        progress: Show a tqdm progress bar.
        timeout: Socket timeout in seconds.

    Returns:
        ``dst`` as a ``Path``.

    Raises:
        DownloadError: The server could not be reached or answered with an error.
        ValueError: The downloaded or cached file does not have the expected hash
            (nothing is left in the cache).
    """
    dst = Path(dst)
    expected = _check_hex(sha256, "sha256") if sha256 else None
    prefix = _check_hex(hash_prefix, "hash prefix") if hash_prefix else None
    if dst.is_file():
        if expected is None:
            return dst
        got = sha256_file(dst)
        if got == expected:
            return dst
        raise ValueError(
            f"Cached file {dst} has sha256 {got}, expected {expected} for {url}. "
            f"It was replaced or the expected hash changed: delete {dst} to download it again."
        )

    dst.parent.mkdir(parents=True, exist_ok=True)
    part = dst.with_name(dst.name + ".part")
    offset = part.stat().st_size if part.is_file() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "resbackbone"})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:  # the .part is already complete
            response = None
        else:
            raise DownloadError(f"Download of {url} failed: HTTP {exc.code} {exc.reason}. {_manual_hint(dst)}") from exc
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise DownloadError(f"Download of {url} failed: {reason}. {_manual_hint(dst)}") from exc

    digest = hashlib.sha256()
    if response is not None:
        with response:
            resumed = offset and response.status == 206
            if not resumed:
                offset = 0
            total = response.headers.get("Content-Length")
            total = int(total) + offset if total is not None else None
            mode = "ab" if resumed else "wb"
            if resumed:
                with open(part, "rb") as f:
                    for chunk in iter(lambda: f.read(_CHUNK), b""):
                        digest.update(chunk)
            bar = _progress(total, offset, dst.name) if progress else None
            try:
                with open(part, mode) as f:
                    while chunk := response.read(_CHUNK):
                        f.write(chunk)
                        digest.update(chunk)
                        if bar is not None:
                            bar.update(len(chunk))
            except OSError as exc:
                raise DownloadError(
                    f"Download of {url} was interrupted: {exc}. Run again to resume from {part}. {_manual_hint(dst)}"
                ) from exc
            finally:
                if bar is not None:
                    bar.close()
    else:
        with open(part, "rb") as f:
            for chunk in iter(lambda: f.read(_CHUNK), b""):
                digest.update(chunk)

    got = digest.hexdigest()
    if (expected and got != expected) or (prefix and not got.startswith(prefix)):
        part.unlink(missing_ok=True)
        raise ValueError(
            f"Download of {url} has sha256 {got}, expected {expected or prefix + '…'}. The file was deleted. "
            "Check the URL and the hash, or download the file yourself and pass its local path."
        )
    os.replace(part, dst)
    return dst


def _progress(total: int | None, initial: int, name: str):  # type: ignore[no-untyped-def]
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, unit="B", unit_scale=True, unit_divisor=1024, desc=name, leave=False)


def _manual_hint(dst: Path) -> str:
    return (
        f"Without network access, download it on another machine and either place it at {dst} "
        "or pass the local file path instead (e.g. weights='/path/to/file.pth')."
    )
