"""Shared fixtures: a local HTTP server, the real-data root, cheap backbones."""

from __future__ import annotations

import functools
import http.server
import os
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]


def data_root() -> Path:
    """``$RESBACKBONE_DATA_ROOT``, else ``../shared/data`` beside the repository."""
    return Path(os.environ.get("RESBACKBONE_DATA_ROOT", REPO_ROOT.parent / "shared" / "data"))


@pytest.fixture
def real_data() -> Path:
    root = data_root()
    if not root.is_dir():
        pytest.skip(f"real datasets not found at {root}; set RESBACKBONE_DATA_ROOT to run realdata tests")
    return root


class _RangeHandler(http.server.SimpleHTTPRequestHandler):
    """Static files with single-range support (``Range: bytes=N-``), as CDNs serve them."""

    requests: ClassVar[list[str]] = []

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self.requests.append(self.path)
        match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", ""))
        path = Path(self.translate_path(self.path))
        if not match or not path.is_file():
            return super().do_GET()
        data = path.read_bytes()
        start = int(match.group(1))
        if start >= len(data):
            self.send_error(416)
            return
        self.send_response(206)
        self.send_header("Content-Length", str(len(data) - start))
        self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.end_headers()
        self.wfile.write(data[start:])


@pytest.fixture
def http_server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """Serve a temporary folder on 127.0.0.1; yields (base URL, folder).

    ``conftest._RangeHandler.requests`` lists the paths requested, to tell a
    download from a cache hit.
    """
    folder = tmp_path / "served"
    folder.mkdir()
    _RangeHandler.requests = []
    handler = functools.partial(_RangeHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", folder
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def torch_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty cache: downloads land in tmp_path, never in the user's cache."""
    home = tmp_path / "torch_home"
    monkeypatch.setenv("TORCH_HOME", str(home))
    return home


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def session_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A TORCH_HOME shared by a session's tests, so the shapes dataset is generated once."""
    home = tmp_path_factory.mktemp("torch_home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TORCH_HOME", str(home))
        yield home
