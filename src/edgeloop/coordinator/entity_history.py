"""``Coordinator.EntityHistory``: an entity's logged raw rows and labels, for a new owner to rebuild its state.

When an entity's previous owner is dead its real-time feature state is gone with it; the coordinator
still has every sample that node uploaded (raw inputs, routing key, the time the features were computed
for) and the labels joined to them.  The new owner asks for its keys' newest rows and labels and replays
them through the same ``features`` code (``edgeloop.node.rebuild``).  Authenticated like every
Coordinator call (the fleet-token interceptor covers the whole service).  Bounded: at most
``MAX_KEYS`` keys and ``entity_log.MAX_HISTORY`` rows per key, and at most ``MAX_REPLY_BYTES``
(or the coordinator's message limit, when smaller) per answer; a key cut short says ``truncated``.
"""
from __future__ import annotations

import numpy as np

from edgeloop.ct.backfill import LoggedRow
from edgeloop.protocol import mesh_pb2
from edgeloop.protocol.codec import numpy_dtype_of
from edgeloop.store.entity_log import MAX_HISTORY

from . import validate as v
from .edge_service import CoordinatorServicer
from .guards import guard

#: keys per EntityHistory call
MAX_KEYS = 64
#: the largest answer (bytes of the serialized message), below the gRPC message limit
MAX_REPLY_BYTES = 8 << 20
#: a row's raw inputs larger than this are not sent (a feature row is a handful of floats)
MAX_ROW_BYTES = 64 << 10


def logged_row(payload: bytes) -> tuple[float, list] | None:
    """``(feature time in seconds, raw input tensors)`` of a stored Sample, or None when it has none."""
    try:
        sample = mesh_pb2.Sample.FromString(payload)
    except Exception:  # protobuf's DecodeError: a stored payload that does not parse is skipped
        return None
    if not sample.raw_inputs:
        return None
    t = sample.feature_time if sample.feature_time > 0 else sample.timestamp_ms / 1000.0
    return t, list(sample.raw_inputs)


def _array(t) -> np.ndarray:
    """A stored tensor's values as a flat array; ValueError naming the tensor when its bytes do not fit."""
    try:
        dtype = numpy_dtype_of(t.datatype)
    except Exception:
        raise ValueError(f"tensor {t.name[:80]!r} datatype {t.datatype[:40]!r}; expected a numeric datatype") from None
    if dtype.kind not in "fiu" or len(t.data) % dtype.itemsize or len(t.data) > MAX_ROW_BYTES:
        raise ValueError(f"tensor {t.name[:80]!r}: {len(t.data)} bytes of {t.datatype[:40]}; expected whole numeric "
                         f"values, at most {MAX_ROW_BYTES} bytes")
    return np.frombuffer(t.data, dtype=dtype.newbyteorder("<"))


def decode_logged(payload: bytes) -> LoggedRow:
    """A stored Sample as backfill reads it (``ct.backfill.Decode``); ValueError saying why it cannot."""
    try:
        sample = mesh_pb2.Sample.FromString(payload)
    except Exception:
        raise ValueError("payload does not parse as a Sample") from None
    if not sample.raw_inputs:
        raise ValueError("no raw inputs (served by a model without features)")
    raw = {t.name: _array(t) for t in sample.raw_inputs}
    vectors = None
    if sample.feature_digest and sample.inputs:
        flat = _array(sample.inputs[0]).astype(np.float32)
        n = next(iter(raw.values())).shape[0]
        if n and flat.shape[0] % n == 0:
            vectors = flat.reshape(n, -1)
    t = sample.feature_time if sample.feature_time > 0 else sample.timestamp_ms / 1000.0
    return LoggedRow(raw, t, vectors, sample.feature_digest)


def history_of(store, model: str, key: str, limit: int, budget: int) -> mesh_pb2.EntityHistory:
    """One key's ``EntityHistory`` within ``budget`` bytes (newest rows and labels kept first)."""
    rows, labels = store.entity_history(model, key, limit)
    out = mesh_pb2.EntityHistory(key=key)
    times: dict[str, float] = {}
    kept_rows = []
    used = len(key) + 16
    truncated = False
    for r in reversed(rows):  # newest first, so a cut keeps the most recent history
        found = logged_row(r.payload)
        if found is None:
            continue
        t, tensors = found
        times[r.sample_id] = t
        row = mesh_pb2.HistoryRow(sample_id=r.sample_id, feature_time=t, raw_inputs=tensors, served_ms=r.timestamp_ms)
        size = row.ByteSize() + 8
        if size > MAX_ROW_BYTES or used + size > budget:
            truncated = True
            break
        used += size
        kept_rows.append(row)
    kept_labels = []
    for lab in reversed(labels):
        t = times.get(lab.sample_id)
        if t is None:
            found = logged_row(lab.payload)
            if found is None:
                continue
            t = found[0]
        item = mesh_pb2.HistoryLabel(sample_id=lab.sample_id, value=lab.label, timestamp=t,
                                     received_ms=lab.label_received_ms)
        size = item.ByteSize() + 8
        if used + size > budget:
            truncated = True
            break
        used += size
        kept_labels.append(item)
    out.rows.extend(reversed(kept_rows))
    out.labels.extend(reversed(kept_labels))
    out.truncated = truncated
    return out


class EdgeServicer(CoordinatorServicer):
    """What edges call, with ``EntityHistory`` (kept apart from the ingest and directive handlers)."""

    @guard("EntityHistory")
    def EntityHistory(self, request, context):
        if request.node_id:
            v.name("node_id", request.node_id)
        v.name("model", request.model)
        if not request.keys:
            raise v.bad("keys", [], f"1..{MAX_KEYS} routing keys")
        v.count("keys", request.keys, MAX_KEYS)
        for i, key in enumerate(request.keys):
            if not key or len(key.encode("utf-8")) > 256:
                raise v.bad(f"keys[{i}]", key, "a routing key of 1..256 bytes of UTF-8")
            v.routing_key(f"keys[{i}]", key)
        if request.limit > MAX_HISTORY:
            raise v.bad("limit", request.limit, f"0 (= {MAX_HISTORY}) or 1..{MAX_HISTORY} rows per key")
        limit = request.limit or MAX_HISTORY
        budget = min(MAX_REPLY_BYTES, self.core.config.max_message_bytes - 4096)
        reply = mesh_pb2.EntityHistoryResponse()
        per_key = max(1024, budget // len(request.keys))
        for key in request.keys:
            reply.entities.append(history_of(self.core.store, request.model, key, limit, per_key))
        return reply


__all__ = ["EdgeServicer", "MAX_KEYS", "decode_logged", "history_of", "logged_row"]
