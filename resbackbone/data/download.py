"""Deprecated: dataset downloads moved to :mod:`resbackbone.data.acquire.download`.

``from resbackbone.data.download import download_dataset`` (and ``DATASETS``,
``get_entry``, …) goes on working, with a warning naming the new path.
"""

from __future__ import annotations

from ..deprecation import moved_names
from .acquire import download

MOVED = tuple(download.__all__)
__getattr__ = moved_names(__name__, download, MOVED)
