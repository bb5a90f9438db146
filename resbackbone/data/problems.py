"""Data errors, warnings and the collector that gathers every problem of a split at once.

Indexing a split (reading its annotation files) goes through a
:class:`Reporter`. In ``"check"`` mode every problem becomes a
:class:`Problem` for ``resbackbone data check``; in ``"load"`` mode the
errors are raised together as one :class:`DataError` at the end, and the
repairs made on the way (boxes clipped to the image, degenerate boxes
dropped) are counted and warned about once per split.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

__all__ = ["DataError", "DataWarning", "Problem", "Reporter"]

Severity = Literal["error", "warning"]

_MAX_LISTED = 20


class DataError(ValueError):
    """A dataset file is missing, unreadable or inconsistent; the message names the file.

    Attributes:
        path: The offending file (or ``None`` when the message lists several).
    """

    def __init__(self, message: str, path: str | Path | None = None) -> None:
        super().__init__(message)
        self.path = str(path) if path is not None else None


class DataWarning(UserWarning):
    """Data was repaired while loading (boxes clipped or dropped, alpha channels dropped, …)."""


@dataclass(frozen=True)
class Problem:
    """One problem found in a dataset.

    Attributes:
        path: The file the problem is in (image, mask, annotation or split list).
        split: ``"train"``, ``"val"`` or ``"test"`` (``""`` for the whole dataset).
        severity: ``"error"`` (training would fail or learn wrong labels) or
            ``"warning"`` (the loader repairs it, e.g. by clipping a box).
        message: What is wrong and how to fix it.
    """

    path: str
    split: str
    severity: Severity
    message: str

    def __str__(self) -> str:
        where = f"[{self.split}] " if self.split else ""
        return f"{self.severity}: {where}{self.path}: {self.message}"


@dataclass
class _Tally:
    count: int = 0
    files: int = 0
    example: str = ""
    detail: str = ""

    def add(self, path: str, n: int, detail: str) -> None:
        if not self.example:
            self.example, self.detail = path, detail
        self.count += n
        self.files += 1


@dataclass
class Reporter:
    """Collects the problems met while indexing one split.

    Args:
        split: Split name used in messages.
        mode: ``"check"`` keeps every problem as a :class:`Problem`; ``"load"``
            counts repairs and raises the errors together in :meth:`finish`.
    """

    split: str
    mode: Literal["check", "load"] = "load"
    problems: list[Problem] = field(default_factory=list)
    _clipped: _Tally = field(default_factory=_Tally)
    _dropped: _Tally = field(default_factory=_Tally)

    def error(self, path: str | Path, message: str) -> None:
        """Record an error in ``path``."""
        self.problems.append(Problem(str(path), self.split, "error", message))

    def warning(self, path: str | Path, message: str) -> None:
        """Record a warning about ``path``."""
        self.problems.append(Problem(str(path), self.split, "warning", message))

    @property
    def has_errors(self) -> bool:
        """Whether an error was recorded."""
        return any(p.severity == "error" for p in self.problems)

    def bad_box(self, path: str | Path, box: object, why: str) -> None:
        """A box with zero area or reversed corners: an error when checking, dropped when loading."""
        if self.mode == "check":
            self.error(path, f"box {box} {why}; fix or delete it (the loader drops it)")
        else:
            self._dropped.add(str(path), 1, f"{box} {why}")

    def clipped(self, path: str | Path, n: int, example: object) -> None:
        """``n`` boxes of ``path`` reached outside the image and were clipped to it."""
        if self.mode == "check":
            self.warning(path, f"{n} box(es) reach outside the image (e.g. {example}); they are clipped to it")
        else:
            self._clipped.add(str(path), n, str(example))

    def finish(self) -> list[Problem]:
        """End of the split: in load mode raise the errors, warn about repairs; return the problems.

        Raises:
            DataError: In load mode, when any error was recorded (all are listed).
        """
        if self.mode == "load":
            errors = [p for p in self.problems if p.severity == "error"]
            if errors:
                raise DataError(summarize(errors, f"Data split {self.split!r} has {len(errors)} error(s)"))
            for p in self.problems:
                warnings.warn(str(p), DataWarning, stacklevel=3)
            if self._clipped.count:
                t = self._clipped
                warnings.warn(
                    f"[{self.split}] clipped {t.count} box(es) reaching outside their image in {t.files} file(s), "
                    f"e.g. {t.example}: {t.detail}. Run `resbackbone data check` to list them all.",
                    DataWarning,
                    stacklevel=3,
                )
            if self._dropped.count:
                t = self._dropped
                warnings.warn(
                    f"[{self.split}] dropped {t.count} box(es) with zero area or reversed corners in {t.files} "
                    f"file(s), e.g. {t.example}: box {t.detail}. Run `resbackbone data check` to list them all.",
                    DataWarning,
                    stacklevel=3,
                )
        return self.problems


def summarize(problems: list[Problem], title: str) -> str:
    """A multi-line message listing the first problems."""
    lines = [f"{title}:"] + [f"  - {p.path}: {p.message}" for p in problems[:_MAX_LISTED]]
    if len(problems) > _MAX_LISTED:
        lines.append(f"  … and {len(problems) - _MAX_LISTED} more.")
    lines.append("Run `resbackbone data check RECIPE` to see every problem of the dataset.")
    return "\n".join(lines)
