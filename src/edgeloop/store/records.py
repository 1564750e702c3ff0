"""Plain records the store takes and returns (tuples for the ingest hot path, dataclasses elsewhere)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple


class SampleRow(NamedTuple):
    """One stored inference request; ``payload`` is its wire encoding, kept verbatim for training."""

    model: str
    sample_id: str
    model_version: int
    routing_key: str
    timestamp_ms: int
    payload: bytes


class LabelRow(NamedTuple):
    """Ground truth by ``sample_id`` (``model`` may be empty), or by ``routing_key`` + ``timestamp_ms``."""

    sample_id: str
    model: str
    routing_key: str
    timestamp_ms: int
    value: float
    received_ms: int


@dataclass(frozen=True)
class UploadResult:
    """What one upload stream did: batches newly stored, batches seen before, rows written."""

    accepted: tuple[str, ...] = ()
    duplicates: tuple[str, ...] = ()
    rows_stored: int = 0


@dataclass(frozen=True)
class DirectiveRecord:
    """One directive to one node: ``kind`` names the action, ``payload`` is its encoded message."""

    node_id: str
    sequence: int
    kind: str
    payload: bytes
    model: str = ""
    version: int = 0
    result: str | None = None   # None (pending), "applied" or "failed"
    error: str = ""


@dataclass(frozen=True)
class PublishedModel:
    model: str
    version: int
    sha256: str
    size: int
    created_ms: int


@dataclass(frozen=True)
class FeatureStatRow:
    """Mergeable statistics of one tensor column from one edge over one time bucket."""

    model: str
    model_version: int
    tensor: str
    is_output: bool
    feature: int
    bin_edges: tuple[float, ...]
    counts: tuple[int, ...]
    n: int
    mean: float
    m2: float
    nan_count: int
    psi: float


@dataclass
class NodeRecord:
    """A node as the fleet registry knows it, with its counters and its last status report."""

    node_id: str
    address: str = ""
    joined_ms: int = 0
    last_seen_ms: int = 0
    models: list = field(default_factory=list)        # [[model, version, sha256, state], ...]
    samples_received: int = 0
    labels_received: int = 0
    last_status: dict = field(default_factory=dict)   # requests, outbox_pending, outbox_dropped, max_psi, ...
    last_directive_applied: int = 0
    identity: dict = field(default_factory=dict)      # host, grpc_port, weight, zone, ... from its last Join


@dataclass(frozen=True)
class ModelCounts:
    model: str
    samples: int
    labelled: int
    labels: int
    unjoined_labels: int


class LoggedSample(NamedTuple):
    """A stored sample of one entity's (or one model's) logged stream, with its label when one is joined."""

    id: int
    sample_id: str
    node_id: str
    model_version: int
    routing_key: str
    timestamp_ms: int  # when the edge served it
    payload: bytes
    label: float | None
    label_received_ms: int | None
