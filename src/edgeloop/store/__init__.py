"""The coordinator's storage: fleet, samples, labels, directives, events, statistics and artifacts.

SQLite (WAL) by default; every SQL statement lives in ``sqlite.py`` behind the ``Store`` methods, so a
PostgreSQL backend can be added with the same interface.  Rows go in and out as plain tuples and
dataclasses (no protobuf here: the store imports only ``config`` and the stdlib).
"""
from .artifacts import ArtifactError, ArtifactStore, is_sha256
from .records import (DirectiveRecord, FeatureStatRow, LabelRow, ModelCounts, NodeRecord, PublishedModel,
                      SampleRow, UploadResult)
from .sqlite import SqliteStore, StoreError

__all__ = [
    "ArtifactError",
    "ArtifactStore",
    "DirectiveRecord",
    "FeatureStatRow",
    "LabelRow",
    "ModelCounts",
    "NodeRecord",
    "PublishedModel",
    "SampleRow",
    "SqliteStore",
    "StoreError",
    "UploadResult",
    "is_sha256",
]
