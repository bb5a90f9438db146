from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from resbackbone.weights import DownloadError, download_url, sha256_file

from .conftest import _RangeHandler


def _payload(n: int = 300_000) -> bytes:
    return bytes(range(256)) * (n // 256)


def test_download_verifies_and_caches(http_server: tuple[str, Path], tmp_path: Path) -> None:
    base, served = http_server
    data = _payload()
    (served / "f.bin").write_bytes(data)
    dst = tmp_path / "cache" / "f.bin"
    digest = hashlib.sha256(data).hexdigest()
    assert download_url(f"{base}/f.bin", dst, sha256=digest, progress=False) == dst
    assert dst.read_bytes() == data and sha256_file(dst) == digest
    (served / "f.bin").unlink()  # a second call must not need the server
    assert download_url(f"{base}/f.bin", dst, sha256=digest, progress=False) == dst
    assert _RangeHandler.requests == ["/f.bin"]


def test_wrong_hash_leaves_nothing(http_server: tuple[str, Path], tmp_path: Path) -> None:
    base, served = http_server
    (served / "f.bin").write_bytes(_payload())
    dst = tmp_path / "cache" / "f.bin"
    with pytest.raises(ValueError, match=r"has sha256 [0-9a-f]{64}, expected 0{64}\. The file was deleted"):
        download_url(f"{base}/f.bin", dst, sha256="0" * 64, progress=False)
    assert list(dst.parent.iterdir()) == []


def test_hash_prefix_checked(http_server: tuple[str, Path], tmp_path: Path) -> None:
    base, served = http_server
    data = _payload()
    (served / "f.bin").write_bytes(data)
    prefix = hashlib.sha256(data).hexdigest()[:8]
    download_url(f"{base}/f.bin", tmp_path / "ok.bin", hash_prefix=prefix, progress=False)
    with pytest.raises(ValueError, match="expected deadbeef…"):
        download_url(f"{base}/f.bin", tmp_path / "bad.bin", hash_prefix="deadbeef", progress=False)
    assert not (tmp_path / "bad.bin").exists() and not (tmp_path / "bad.bin.part").exists()


def test_interrupted_download_resumes_with_range(http_server: tuple[str, Path], tmp_path: Path) -> None:
    base, served = http_server
    data = _payload()
    (served / "f.bin").write_bytes(data)
    dst = tmp_path / "f.bin"
    (tmp_path / "f.bin.part").write_bytes(data[:100_000])  # what an interrupted run left
    download_url(f"{base}/f.bin", dst, sha256=hashlib.sha256(data).hexdigest(), progress=False)
    assert dst.read_bytes() == data
    assert not (tmp_path / "f.bin.part").exists()


def test_cached_file_with_other_hash_is_reported(tmp_path: Path) -> None:
    dst = tmp_path / "f.bin"
    dst.write_bytes(b"something else")
    with pytest.raises(ValueError, match=r"Cached file .*f\.bin has sha256 .* delete"):
        download_url("http://127.0.0.1:9/f.bin", dst, sha256="1" * 64, progress=False)


def test_unreachable_server_says_how_to_supply_the_file(tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match=r"Download of http://127\.0\.0\.1:9/w\.pth failed.*place it at .*w\.pth"):
        download_url("http://127.0.0.1:9/w.pth", tmp_path / "w.pth", sha256="1" * 64, progress=False, timeout=5)
    assert list(tmp_path.iterdir()) == []


def test_http_error_is_a_download_error(http_server: tuple[str, Path], tmp_path: Path) -> None:
    base, _ = http_server
    with pytest.raises(DownloadError, match="HTTP 404"):
        download_url(f"{base}/missing.pth", tmp_path / "m.pth", progress=False)


def test_bad_hash_argument() -> None:
    with pytest.raises(ValueError, match="not a hex digest"):
        download_url("http://127.0.0.1:9/x", "x", sha256="xyz", progress=False)
