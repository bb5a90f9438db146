"""The files ``predict`` reads and writes: the images it is given, its resumable results, atomic writes.

``<out>/predictions.jsonl`` gets one line per image, appended once the image's
mask and overlay are on disk: a run that is killed loses nothing it finished,
and a run with the same ``--out`` skips the images already there (a line cut
short by the kill is dropped first). ``<out>/predict.json`` records what made
the results (the model file, the backend, the threshold); a run with another
model into the same folder is refused rather than mixed in. Images that cannot
be read are listed with the reason in ``<out>/skipped.jsonl``.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

__all__ = ["PredictionLog", "atomic_write", "atomic_write_bytes", "collect_images", "file_sha256", "output_names"]


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike[str], write: Callable[[IO[bytes]], Any]) -> None:
    """Call ``write(f)`` on a temporary file beside ``path``, flush it to disk and rename it into place.

    A crash mid-write leaves ``path`` as it was (and a ``.<name>.<random>.tmp`` file).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; give what open() would
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename."""
    atomic_write(path, lambda f: f.write(data))


def file_sha256(path: str | os.PathLike[str]) -> str:
    """The sha256 of a file's bytes (what identifies the model a results folder was made with)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def collect_images(inputs: Sequence[str | os.PathLike[str]]) -> list[Path]:
    """The image files ``inputs`` names: files as given, folders searched recursively (sorted).

    Raises:
        ValueError: An input that does not exist, or no image found at all.
    """
    from ..data.images import IMAGE_EXTENSIONS

    found: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found += sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
        elif path.is_file():
            found.append(path)
        else:
            raise ValueError(f"{item}: no such image file or folder.")
    if not found:
        looked = ", ".join(IMAGE_EXTENSIONS)
        raise ValueError(f"No images found in {', '.join(map(str, inputs))} (looked for {looked}).")
    return list(dict.fromkeys(found))


def output_names(files: Sequence[Path]) -> dict[Path, str]:
    """A distinct file-name stem per image for its mask and overlay.

    The image's stem where it is unique; else its path below the folder the
    images share, with ``/`` written as ``__`` (``a/x.png`` and ``b/x.png`` give
    ``a__x`` and ``b__x``), and its extension kept where that alone tells two
    apart (``x.png`` and ``x.jpg`` give ``x_png`` and ``x_jpg``).
    """
    stems: dict[str, int] = {}
    for path in files:
        stems[path.stem] = stems.get(path.stem, 0) + 1
    resolved = [p.resolve() for p in files]
    common = Path(os.path.commonpath([str(p.parent) for p in resolved])) if resolved else Path()
    relative = {path: full.relative_to(common) for path, full in zip(files, resolved)}
    within = {path: "__".join(rel.with_suffix("").parts) for path, rel in relative.items()}
    counts: dict[str, int] = {}
    for name in within.values():
        counts[name] = counts.get(name, 0) + 1
    names = {}
    for path, rel in relative.items():
        if stems[path.stem] == 1:
            names[path] = path.stem
        elif counts[within[path]] == 1:
            names[path] = within[path]
        else:
            names[path] = within[path] + "_" + rel.suffix.lstrip(".")
    return names


class PredictionLog:
    """``predictions.jsonl``, resumable, with the run's header and the images skipped.

    Args:
        out_dir: The output folder (created).
        header: What made the results (the model's file and sha256, the detection threshold): written
            to ``predict.json``, and compared with what an earlier run wrote there.
        extra: Recorded in ``predict.json`` too, not compared (the backend, the device).

    Raises:
        ValueError: ``out_dir`` holds results of another model or threshold.
    """

    def __init__(self, out_dir: str | os.PathLike[str], header: dict[str, Any], extra: dict[str, Any] | None = None):
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.out_dir / "predictions.jsonl"
        self.skipped: list[dict[str, str]] = []
        header_path = self.out_dir / "predict.json"
        if header_path.is_file() and self.path.is_file():
            before = json.loads(header_path.read_text())
            changed = [key for key in header if key != "model" and before.get(key) != header[key]]
            if changed:
                what = "; ".join(f"{key}: {before.get(key)!r} there, {header[key]!r} now" for key in changed)
                raise ValueError(
                    f"{self.out_dir} holds predictions made otherwise ({what}). Pass another --out, or delete "
                    f"{self.path} to start over."
                )
        atomic_write_bytes(header_path, json.dumps({**header, **(extra or {})}, indent=2).encode())
        self.done = self._read_done()

    def _read_done(self) -> set[str]:
        if not self.path.is_file():
            return set()
        data = self.path.read_bytes()
        keep = len(data) if data.endswith(b"\n") or not data else data.rfind(b"\n") + 1
        if keep != len(data):  # a line cut short by a kill: drop it, the image is done again
            with open(self.path, "r+b") as f:
                f.truncate(keep)
        done = set()
        for number, line in enumerate(data[:keep].decode().splitlines(), 1):
            if not line.strip():
                continue
            try:
                done.add(json.loads(line)["image"])
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise ValueError(
                    f"{self.path}, line {number}: not a prediction line ({type(exc).__name__}: {exc}); the "
                    "file was edited or written by something else. Pass another --out, or delete it to start over."
                ) from None
        return done

    def write(self, record: dict[str, Any]) -> None:
        """Append one image's result (after its mask and overlay are written)."""
        with open(self.path, "a") as f:  # each line reaches the file as soon as the image is done
            f.write(json.dumps(record) + "\n")
        self.done.add(record["image"])

    def skip(self, image: str, reason: str) -> None:
        """Note an image that could not be predicted on, and why."""
        self.skipped.append({"image": image, "reason": reason})

    def close(self) -> Path | None:
        """Write ``skipped.jsonl`` (or remove a stale one). Returns its path, if any."""
        path = self.out_dir / "skipped.jsonl"
        if not self.skipped:
            path.unlink(missing_ok=True)
            return None
        atomic_write_bytes(path, "".join(json.dumps(s) + "\n" for s in self.skipped).encode())
        return path
