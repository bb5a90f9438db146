"""Acquiring data: the dataset catalog, verified downloads, safe extraction, converters, the generated demo set.

Everything here produces a folder on disk that the readers of
:mod:`resbackbone.data.formats` then read through a recipe's ``data:`` section:

* :mod:`.catalog`: :data:`DATASETS`, the datasets ``resbackbone data download`` knows.
* :mod:`.download`: :func:`download_dataset`, fetch, verify, extract and lay out one of them.
* :mod:`.contents`: per-file sha256 manifests (``manifests/*.sha256``) of archives whose bytes are not stable.
* :mod:`.archives`: :func:`extract_archive`, zip and tar extraction that refuses escaping members.
* :mod:`.converters`: from an extracted archive to the folder layout of a format.
* :mod:`.shapes`: :func:`ensure_shapes_dataset`, the built-in generated demo dataset.

Example:
    >>> from resbackbone.data.acquire import download_dataset
    >>> root = download_dataset("bccd", root="data")  # doctest: +SKIP
"""

from .archives import UnsafeArchiveError, extract_archive
from .catalog import DATASETS, Archive, DatasetEntry
from .contents import ContentMismatchError
from .download import UnverifiedArchiveError, data_yaml, download_dataset, get_entry, manual_instructions
from .shapes_generator import ensure_shapes_dataset, verify_shapes_dataset

__all__ = [
    "DATASETS",
    "Archive",
    "ContentMismatchError",
    "DatasetEntry",
    "UnsafeArchiveError",
    "UnverifiedArchiveError",
    "data_yaml",
    "download_dataset",
    "ensure_shapes_dataset",
    "extract_archive",
    "get_entry",
    "manual_instructions",
    "verify_shapes_dataset",
]
