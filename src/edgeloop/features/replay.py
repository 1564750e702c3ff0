"""Training data from a logged stream: the vectors the edge would have served, by the same code.

``replay`` drives a ``FeatureState`` through the logged requests and late labels in the order
the owner node saw them, so its vectors are bit-identical to the served ones (the coordinator
uses it to backfill a feature a new model version declares but that was never served).

Order rule (the same on the edge): a label that arrived at or before a request's timestamp is
applied before that request; labels apply in arrival order.  A label is only ever visible to
requests later than the event it labels (see ``compute``).
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import NamedTuple

import numpy as np

from .definition import FeatureDefinition
from .errors import FeatureError
from .state import FeatureState


class LabelEvent(NamedTuple):
    """A label for ``entity``'s event at ``timestamp``, reaching the owner at ``arrival``."""

    entity: str
    label: float
    timestamp: float
    arrival: float


class Replayed(NamedTuple):
    """Per request: the vector (float32, ``names`` order) and the cold/partial flags."""

    vectors: np.ndarray
    cold: np.ndarray
    partial: np.ndarray
    names: tuple[str, ...]


def labels_after(keys: Sequence[str], timestamps, labels, delay: float) -> list[LabelEvent]:
    """Label events for a stream whose label of each row arrives ``delay`` seconds after the row."""
    ts = np.asarray(timestamps, dtype=np.float64)
    values = np.asarray(labels, dtype=np.float64)
    if not (len(keys) == ts.shape[0] == values.shape[0]):
        raise ValueError(f"keys, timestamps and labels differ in length: {len(keys)}, {ts.shape[0]}, {values.shape[0]}")
    return [LabelEvent(k, float(v), float(t), float(t) + delay) for k, t, v in zip(keys, ts, values)]


def replay(definition: FeatureDefinition, rows, keys: Sequence[str], timestamps,
           label_events: Iterable[LabelEvent | tuple] = (), *, max_entities: int | None = None,
           stripes: int = 16) -> Replayed:
    """Vectors for every logged request (rows ``(n, inputs)``, keys, non-decreasing timestamps).

    ``max_entities``/``stripes`` mirror the edge's bounds when its evictions must be reproduced;
    by default nothing is evicted.
    """
    rows = np.ascontiguousarray(rows, dtype=np.float64)
    ts = np.asarray(timestamps, dtype=np.float64)
    n = len(keys)
    if rows.ndim != 2 or rows.shape != (n, len(definition.inputs)):
        raise FeatureError("replay", "rows", f"shape {rows.shape}", f"({n}, {len(definition.inputs)}): one row per key")
    if ts.shape != (n,):
        raise FeatureError("replay", "timestamps", f"shape {ts.shape}", f"({n},): one per key")
    if n and not (np.diff(ts) >= 0).all():
        raise FeatureError("replay", "timestamps", int(np.argmin(np.diff(ts))) + 1, "non-decreasing timestamps")
    events = sorted((LabelEvent(*e) for e in label_events), key=lambda e: e.arrival)  # stable: ties keep order
    if max_entities is None:
        max_entities = max(1, len(set(keys) | {e.entity for e in events})) * max(1, stripes)
    state = FeatureState(definition, max_entities=max_entities, stripes=stripes)
    vectors = np.empty((n, definition.width), dtype=np.float32)
    cold = np.zeros(n, dtype=bool)
    partial = np.zeros(n, dtype=bool)
    j = 0
    for i in range(n):
        t = float(ts[i])
        while j < len(events) and events[j].arrival <= t:
            e = events[j]
            state.update_with_label(e.entity, e.label, e.timestamp)
            j += 1
        served = state.serve(keys[i], rows[i], t)
        vectors[i] = served.vector
        cold[i] = served.cold
        partial[i] = served.partial
    return Replayed(vectors, cold, partial, definition.output_names)
