"""The content-addressed artifact directory."""
import hashlib
import os

import pytest

from edgeloop.store import ArtifactError, ArtifactStore


def test_put_is_content_addressed_and_read_by_range(tmp_path):
    store = ArtifactStore(tmp_path / "a", max_bytes=1 << 20)
    data = os.urandom(10_000)
    sha, size = store.put([data[:3000], data[3000:]])
    assert sha == hashlib.sha256(data).hexdigest() and size == 10_000
    assert store.path(sha) == tmp_path / "a" / sha[:2] / sha and store.path(sha).read_bytes() == data
    assert store.put_bytes(data) == (sha, size)
    assert store.read(sha, 9000, 5000) == data[9000:] and store.read(sha, 10_000, 10) == b""
    with pytest.raises(ArtifactError, match="past the end"):
        store.read(sha, 10_001, 1)
    with pytest.raises(ArtifactError, match="not stored"):
        store.read("0" * 64, 0, 1)
    with pytest.raises(ArtifactError, match="64 lowercase hex"):
        store.path("../" + sha[3:])
    assert store.size(sha) == 10_000 and store.size("1" * 64) is None


def test_too_large_or_failed_puts_leave_no_file(tmp_path):
    store = ArtifactStore(tmp_path / "a", max_bytes=100)
    with pytest.raises(ArtifactError, match="max_artifact_bytes"):
        store.put([b"x" * 60, b"y" * 60])

    def broken():
        yield b"partial"
        raise ValueError("stream broke")

    with pytest.raises(ValueError):
        store.put(broken())
    files = [p for p in (tmp_path / "a").rglob("*") if p.is_file()]
    assert files == []
    (tmp_path / "a" / "tmp" / "put-stale").write_bytes(b"left by a crash")
    ArtifactStore(tmp_path / "a", max_bytes=100)
    assert not (tmp_path / "a" / "tmp" / "put-stale").exists()
