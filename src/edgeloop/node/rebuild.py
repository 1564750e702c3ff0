"""Rebuilding an entity's real-time feature state from the coordinator's log (its previous owner is dead).

The edge side of ``Coordinator.EntityHistory``: ask for the key's newest rows and labels (as many as the
definition's longest windows need), decode the raw inputs the client sent, and replay them through
``FeatureState.rebuild_entity`` (the same kernels as the request path).  Bounded in time
(``budget_s``: the request that triggered it waits) and in size (the coordinator bounds its answer;
this side refuses more rows than it asked for and tensors that do not match the definition).

What the log lacks cannot come back: rows the dead owner served but had not uploaded yet, or did not
sample (``sample_rate`` < 1), are missing from the rebuilt state; the request is flagged ``rebuilt``
so training can tell.
"""
from __future__ import annotations

import numpy as np

from edgeloop.features import FeatureState
from edgeloop.protocol import mesh_pb2, mesh_pb2_grpc
from edgeloop.protocol.codec import numpy_dtype_of

#: how long a request waits for its entity's history from the coordinator before it is served cold
DEFAULT_BUDGET_S = 0.5
#: rows of one logged sample (one request) a rebuild accepts
MAX_ROWS_PER_SAMPLE = 4096


class HistoryError(ValueError):
    """The coordinator's answer does not fit the definition (named field, value, what was expected)."""


def sample_rows(row: mesh_pb2.HistoryRow, inputs: tuple[str, ...]) -> np.ndarray:
    """The rows ``(n, len(inputs))`` (float64) of one logged sample's raw inputs, by input name."""
    by_name = {t.name: t for t in row.raw_inputs}
    columns = []
    for name in inputs:
        tensor = by_name.get(name)
        if tensor is None:
            raise HistoryError(f"rows[{row.sample_id[:80]!r}].raw_inputs: no input {name!r}; expected every raw "
                               f"input of the definition ({', '.join(inputs)})")
        try:
            dtype = numpy_dtype_of(tensor.datatype)
        except Exception:
            dtype = None
        if dtype is None or dtype.kind not in "fiu":
            raise HistoryError(f"rows[{row.sample_id[:80]!r}].raw_inputs[{name!r}].datatype: {tensor.datatype[:40]!r}; "
                               f"expected a numeric datatype")
        n = len(tensor.data) // dtype.itemsize
        if n * dtype.itemsize != len(tensor.data) or not 0 < n <= MAX_ROWS_PER_SAMPLE:
            raise HistoryError(f"rows[{row.sample_id[:80]!r}].raw_inputs[{name!r}]: {len(tensor.data)} bytes; "
                               f"expected 1..{MAX_ROWS_PER_SAMPLE} values of {tensor.datatype}")
        columns.append(np.frombuffer(tensor.data, dtype=dtype.newbyteorder("<")).astype(np.float64))
    if len({c.shape[0] for c in columns}) != 1:
        raise HistoryError(f"rows[{row.sample_id[:80]!r}].raw_inputs: {[c.shape[0] for c in columns]} values; "
                           f"expected the same row count in every input")
    return np.stack(columns, axis=1)


def history_arrays(entity: mesh_pb2.EntityHistory, inputs: tuple[str, ...], limit: int
                   ) -> tuple[np.ndarray, np.ndarray, list[tuple[float, float]]]:
    """``(rows, times, labels)`` of one key's history, ready for ``FeatureState.rebuild_entity``."""
    if len(entity.rows) > limit or len(entity.labels) > limit:
        raise HistoryError(f"entities[{entity.key[:80]!r}]: {len(entity.rows)} rows, {len(entity.labels)} labels; "
                           f"expected at most {limit} of each (the limit asked for)")
    blocks, times = [], []
    for row in entity.rows:
        block = sample_rows(row, inputs)
        blocks.append(block)
        times.append(np.full(block.shape[0], row.feature_time, dtype=np.float64))
    rows = np.concatenate(blocks) if blocks else np.zeros((0, len(inputs)), np.float64)
    ts = np.concatenate(times) if times else np.zeros(0, np.float64)
    labels = [(lab.value, lab.timestamp) for lab in entity.labels]
    return rows, ts, labels


class CoordinatorHistory:
    """``rebuild(model, state, key) -> bool``: the key's state rebuilt from the coordinator's log."""

    def __init__(self, channel, node_id: str, budget_s: float = DEFAULT_BUDGET_S) -> None:
        self.stub = mesh_pb2_grpc.CoordinatorStub(channel)
        self.node_id = node_id
        self.budget_s = budget_s

    def rebuild(self, model: str, state: FeatureState, key: str) -> bool:
        """True when the coordinator had history for ``key`` and this node adopted it (raises when unreachable)."""
        plan = state.plan
        limit = max(plan.H, plan.L, 1)
        reply = self.stub.EntityHistory(mesh_pb2.EntityHistoryRequest(node_id=self.node_id, model=model, keys=[key],
                                                                      limit=limit), timeout=self.budget_s)
        found = [e for e in reply.entities if e.key == key]
        if not found or not (found[0].rows or found[0].labels):
            return False
        rows, times, labels = history_arrays(found[0], state.definition.inputs, limit)
        return state.rebuild_entity(key, rows, times, labels)


__all__ = ["CoordinatorHistory", "DEFAULT_BUDGET_S", "HistoryError", "history_arrays", "sample_rows"]
