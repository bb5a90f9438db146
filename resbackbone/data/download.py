"""Deprecated path of :mod:`resbackbone.data.acquire.download`; import from :mod:`resbackbone.data.acquire`.

Kept so that ``from resbackbone.data.download import download_dataset`` (and
``DATASETS``, ``get_entry``, …) goes on working; importing it warns once.
"""

import warnings

from .acquire.download import (
    DATASETS,
    MANIFEST,
    Archive,
    DatasetEntry,
    UnverifiedArchiveError,
    data_yaml,
    download_dataset,
    get_entry,
    manual_instructions,
)

__all__ = [
    "DATASETS",
    "MANIFEST",
    "Archive",
    "DatasetEntry",
    "UnverifiedArchiveError",
    "data_yaml",
    "download_dataset",
    "get_entry",
    "manual_instructions",
]

warnings.warn(
    "resbackbone.data.download moved to resbackbone.data.acquire.download; "
    "import from resbackbone.data.acquire instead (e.g. from resbackbone.data.acquire import download_dataset)",
    DeprecationWarning,
    stacklevel=2,
)
