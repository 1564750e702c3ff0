"""A content-addressed artifact directory: ``<dir>/ab/abcdef…`` named by the sha256 of the bytes.

A new artifact is written to a temporary file, hashed while written, fsynced and renamed into place,
so a crash never leaves a partial file under a real name and a name always matches its content.
"""
from __future__ import annotations

import hashlib
import os
import re
import tempfile
from pathlib import Path
from typing import Iterable

_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class ArtifactError(ValueError):
    """An artifact that cannot be stored or read (too large, unknown, offset past its end)."""


def is_sha256(text: str) -> bool:
    """True for 64 lowercase hex digits (the only names the directory holds)."""
    return isinstance(text, str) and bool(_SHA256.match(text))


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class ArtifactStore:
    """Put artifacts by content, read them back by sha256 and byte range."""

    def __init__(self, root: str | Path, max_bytes: int) -> None:
        self.root = Path(root)
        self.max_bytes = int(max_bytes)
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "tmp").mkdir(exist_ok=True)
        for stale in (self.root / "tmp").iterdir():  # partial writes of a process that died
            stale.unlink(missing_ok=True)

    def path(self, sha256: str) -> Path:
        if not is_sha256(sha256):
            raise ArtifactError(f"sha256 {sha256[:200]!r}: expected 64 lowercase hex digits")
        return self.root / sha256[:2] / sha256

    def put(self, chunks: Iterable[bytes]) -> tuple[str, int]:
        """Store the concatenated ``chunks``; returns (sha256, size).  Same bytes twice: one file."""
        digest = hashlib.sha256()
        size = 0
        fd, tmp = tempfile.mkstemp(dir=self.root / "tmp", prefix="put-")
        try:
            with os.fdopen(fd, "wb") as fh:
                for chunk in chunks:
                    size += len(chunk)
                    if size > self.max_bytes:
                        raise ArtifactError(f"artifact larger than storage.max_artifact_bytes ({self.max_bytes})")
                    digest.update(chunk)
                    fh.write(chunk)
                fh.flush()
                os.fsync(fh.fileno())
            sha = digest.hexdigest()
            final = self.path(sha)
            if final.exists():
                os.unlink(tmp)
                return sha, size
            final.parent.mkdir(exist_ok=True)
            os.replace(tmp, final)
            _fsync_dir(final.parent)
            return sha, size
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def put_bytes(self, data: bytes) -> tuple[str, int]:
        return self.put([data])

    def size(self, sha256: str) -> int | None:
        """The artifact's size, or None when it is not stored."""
        try:
            return self.path(sha256).stat().st_size
        except FileNotFoundError:
            return None

    def read(self, sha256: str, offset: int, length: int) -> bytes:
        """Up to ``length`` bytes from ``offset``; ArtifactError when unknown or ``offset`` is past the end."""
        path = self.path(sha256)
        try:
            with open(path, "rb") as fh:
                total = os.fstat(fh.fileno()).st_size
                if offset > total:
                    raise ArtifactError(f"offset {offset} is past the end of artifact {sha256} ({total} bytes)")
                fh.seek(offset)
                return fh.read(length)
        except FileNotFoundError:
            raise ArtifactError(f"artifact {sha256} is not stored") from None

    def discard(self, sha256: str) -> None:
        """Remove an artifact nothing refers to (a push that was refused after it was stored)."""
        self.path(sha256).unlink(missing_ok=True)

    def exists(self, sha256: str) -> bool:
        return is_sha256(sha256) and self.path(sha256).is_file()
