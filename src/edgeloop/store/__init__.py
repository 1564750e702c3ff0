"""The coordinator's storage: fleet, samples, labels, directives, events, statistics and artifacts.

SQLite (WAL) by default; PostgreSQL (``postgres.py``, psycopg 3) when ``storage.database`` is a
``postgresql://`` URL, with the same methods, schema and migrations.  Rows go in and out as plain tuples and
dataclasses (no protobuf here: the store imports only ``config`` and the stdlib).
"""
from .artifacts import ArtifactError, ArtifactStore, is_sha256
from .errors import FencedError
from .records import (DirectiveRecord, FeatureStatRow, LabelRow, LoggedSample, ModelCounts, NodeRecord,
                      PublishedModel, SampleRow, UploadResult)
from .postgres import PostgresStore, is_postgres_url, redact_url
from .shared_artifacts import SharedArtifactStore
from .sqlite import SqliteStore, StoreError


def open_store(database, synchronous: str = "normal", history_ms: int | None = None) -> SqliteStore:
    """The store ``database`` names: a PostgreSQL URL, or a SQLite file path."""
    extra = {} if history_ms is None else {"history_ms": history_ms}
    if is_postgres_url(str(database)):
        return PostgresStore(str(database), **extra)
    return SqliteStore(database, synchronous=synchronous, **extra)


__all__ = [
    "ArtifactError",
    "ArtifactStore",
    "DirectiveRecord",
    "FeatureStatRow",
    "FencedError",
    "LabelRow",
    "LoggedSample",
    "ModelCounts",
    "NodeRecord",
    "PostgresStore",
    "PublishedModel",
    "SampleRow",
    "SharedArtifactStore",
    "SqliteStore",
    "StoreError",
    "UploadResult",
    "is_postgres_url",
    "is_sha256",
    "open_store",
    "redact_url",
]
