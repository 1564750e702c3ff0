"""Artifacts as database rows (migration 8), mixed into both stores: what makes a model file published by
one coordinator readable by every other coordinator on the same PostgreSQL database.

An artifact is a header row (sha256, size, chunk count) and its bytes in chunk rows, all written in one
transaction, header last: a reader that finds the header finds every chunk.  The rows are keyed by the
sha256 of the bytes, so the same bytes stored twice (two coordinators at once) are one artifact.
"""
from __future__ import annotations

from typing import Iterable, Iterator


class ArtifactRows:
    """Put, size, read and delete artifact rows (needs a store's ``_transaction`` and ``_reading``)."""

    def put_artifact_rows(self, sha256: str, size: int, chunks: Iterable[bytes], now_ms: int) -> bool:
        """Store ``chunks`` (already hashed by the caller) as artifact ``sha256``; False when already stored."""
        with self._transaction() as conn:
            if conn.execute("SELECT 1 FROM artifact_blobs WHERE sha256 = ?", (sha256,)).fetchone() is not None:
                return False
            conn.execute("DELETE FROM artifact_chunks WHERE sha256 = ?", (sha256,))  # rows of no header
            count = stored = 0
            for count, data in enumerate(chunks, start=1):
                conn.execute("INSERT INTO artifact_chunks (sha256, chunk, data) VALUES (?, ?, ?)",
                             (sha256, count - 1, bytes(data)))
                stored += len(data)
            if stored != size:
                raise ValueError(f"artifact {sha256}: got {stored} bytes to store, expected {size}")
            conn.execute("INSERT INTO artifact_blobs (sha256, size, chunks, created_ms) VALUES (?, ?, ?, ?)",
                         (sha256, size, count, now_ms))
            return True

    def artifact_row_size(self, sha256: str) -> int | None:
        """The stored artifact's size, or None when the database does not hold it."""
        with self._reading() as db:
            row = db.execute("SELECT size FROM artifact_blobs WHERE sha256 = ?", (sha256,)).fetchone()
        return None if row is None else int(row[0])

    def artifact_row_chunks(self, sha256: str) -> Iterator[bytes]:
        """The artifact's bytes chunk by chunk (one row in memory at a time); nothing when not stored."""
        with self._reading() as db:
            row = db.execute("SELECT chunks FROM artifact_blobs WHERE sha256 = ?", (sha256,)).fetchone()
        for index in range(0 if row is None else int(row[0])):
            with self._reading() as db:
                data = db.execute("SELECT data FROM artifact_chunks WHERE sha256 = ? AND chunk = ?",
                                  (sha256, index)).fetchone()
            if data is None:
                raise KeyError(f"artifact {sha256}: chunk {index} of {row[0]} is missing from the database")
            yield bytes(data[0])

    def delete_artifact_rows(self, sha256: str) -> None:
        """Remove an artifact nothing refers to (a push refused after it was stored)."""
        with self._transaction() as conn:
            conn.execute("DELETE FROM artifact_blobs WHERE sha256 = ?", (sha256,))
            conn.execute("DELETE FROM artifact_chunks WHERE sha256 = ?", (sha256,))
