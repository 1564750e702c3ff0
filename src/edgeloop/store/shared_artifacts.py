"""Artifacts shared by every coordinator on one PostgreSQL database, with the local directory as a cache.

Same interface as ``ArtifactStore`` (``put``, ``put_bytes``, ``size``, ``read``, ``path``, ``exists``,
``discard``).  A put lands in the local directory (hashed while written) and then in the database as
chunk rows in one transaction; a read of an artifact another coordinator stored copies it from the
database into the local directory first, through ``ArtifactStore.put``, so its sha256 is checked
before a single byte of it is served, and a corrupt copy is refused rather than cached.
"""
from __future__ import annotations

import time
from typing import Iterable, Iterator

from .artifacts import ArtifactError, ArtifactStore, is_sha256

#: bytes per database row (PostgreSQL stores each out of line, compressed when it helps)
CHUNK_BYTES = 1 << 20


class SharedArtifactStore:
    """``ArtifactStore`` backed by the database's artifact rows; ``local`` is this process's cache."""

    def __init__(self, local: ArtifactStore, store, chunk_bytes: int = CHUNK_BYTES) -> None:
        self.local = local
        self.store = store
        self.chunk_bytes = int(chunk_bytes)
        self.root = local.root
        self.max_bytes = local.max_bytes

    def put(self, chunks: Iterable[bytes]) -> tuple[str, int]:
        """Store locally, then in the database (once per sha256); returns (sha256, size)."""
        sha, size = self.local.put(chunks)
        if self.store.artifact_row_size(sha) is None:
            self.store.put_artifact_rows(sha, size, self._file_chunks(sha), int(time.time() * 1000))
        return sha, size

    def put_bytes(self, data: bytes) -> tuple[str, int]:
        return self.put([data])

    def _file_chunks(self, sha256: str) -> Iterator[bytes]:
        with open(self.local.path(sha256), "rb") as fh:
            while True:
                data = fh.read(self.chunk_bytes)
                if not data:
                    return
                yield data

    def _cached(self, sha256: str) -> None:
        """Make sure the local directory holds ``sha256``, copied (and checked) from the database if need be."""
        if self.local.exists(sha256):
            return
        if not is_sha256(sha256):
            raise ArtifactError(f"sha256 {str(sha256)[:200]!r}: expected 64 lowercase hex digits")
        size = self.store.artifact_row_size(sha256)
        if size is None:
            raise ArtifactError(f"artifact {sha256} is not stored")
        try:
            got, got_size = self.local.put(self.store.artifact_row_chunks(sha256))
        except KeyError as exc:
            raise ArtifactError(str(exc).strip("'\"")[:300]) from None
        if got != sha256 or got_size != size:
            if got != sha256 and self.store.artifact_row_size(got) is None:
                self.local.discard(got)  # the corrupt copy does not stay in the cache under its own name
            raise ArtifactError(f"artifact {sha256} in the database is corrupt: its {got_size} bytes have sha256 "
                                f"{got}, expected {size} bytes with sha256 {sha256}; not served")

    def path(self, sha256: str):
        """The local file of ``sha256`` (copied from the database first when only another coordinator had it)."""
        self._cached(sha256)
        return self.local.path(sha256)

    def size(self, sha256: str) -> int | None:
        local = self.local.size(sha256)
        return local if local is not None else self.store.artifact_row_size(sha256)

    def read(self, sha256: str, offset: int, length: int) -> bytes:
        self._cached(sha256)
        return self.local.read(sha256, offset, length)

    def exists(self, sha256: str) -> bool:
        return self.local.exists(sha256) or (is_sha256(sha256) and self.store.artifact_row_size(sha256) is not None)

    def discard(self, sha256: str) -> None:
        """Remove an artifact nothing refers to, here and in the database."""
        self.local.discard(sha256)
        self.store.delete_artifact_rows(sha256)
