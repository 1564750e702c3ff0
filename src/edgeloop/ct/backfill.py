"""Backfill: training rows for a feature definition that was never served, replayed from the logged raw stream.

When a new model version declares a feature its predecessors never served, the stored samples carry the
vectors of the old definition only.  Every sample also carries what the client sent (raw inputs), its
routing key, the time its features were computed for and (joined) its label with that label's arrival
time, so the coordinator replays that stream through the one feature implementation
(``features.replay``) under the new definition: the same vectors the edge would have served.

Point in time: a label is visible only from when it arrived.  Arrival times are the edge's clock
(``received_ms``), request times are the features' clock (the client's event time, or the node's), so a
label is placed on the request axis just before the first later request of its entity that the edge
served after the label arrived (served order: ``timestamp_ms``, then arrival at the coordinator).

``ct`` does not import ``protocol``: the coordinator hands in ``decode`` (payload -> ``LoggedRow``).
The lineage records which features were backfilled and over how many rows (``record_backfill``).
"""
from __future__ import annotations

import bisect
import math
from dataclasses import dataclass
from typing import Callable, NamedTuple, Sequence

import numpy as np

from edgeloop.features import DefinitionError, FeatureDefinition, LabelEvent, replay

from .window import LabelledWindow

#: reasons for skipped samples kept per backfill (their count is always exact)
MAX_SKIP_REASONS = 5


class LoggedRow(NamedTuple):
    """What backfill reads from one stored sample (the coordinator's ``decode`` builds it)."""

    raw: dict  # raw input name -> 1-D array of the request's rows
    feature_time: float  # seconds: the time the served features were computed for
    vectors: np.ndarray | None  # float32 (rows, width): what the model saw, when it had features
    digest: str  # the served feature definition's digest ('' without one)


Decode = Callable[[bytes], LoggedRow]


@dataclass(frozen=True)
class Backfilled:
    """Per logged row (served order): the vector under ``definition``, its sample, label and served vector."""

    definition: FeatureDefinition
    vectors: np.ndarray  # float32 (n, definition.width)
    sample_ids: tuple[str, ...]
    stream_ids: np.ndarray  # the store's sample id (row order of the log)
    edges: np.ndarray
    versions: np.ndarray
    served_ms: np.ndarray
    labels: np.ndarray  # float64, NaN where no label is joined
    served: tuple[np.ndarray | None, ...]  # each row's served vector (float32) or None
    new_features: tuple[str, ...]  # declared by ``definition``, served by no logged sample
    skipped: int = 0
    skip_reasons: tuple[str, ...] = ()

    def __len__(self) -> int:
        return int(self.vectors.shape[0])

    def window(self) -> LabelledWindow:
        """The labelled rows as a training window (X = the backfilled vectors)."""
        keep = np.flatnonzero(~np.isnan(self.labels))
        return LabelledWindow(self.stream_ids[keep], tuple(self.sample_ids[i] for i in keep), self.edges[keep],
                              self.served_ms[keep], self.versions[keep], self.vectors[keep], self.labels[keep])

    def served_mismatches(self, served: FeatureDefinition) -> int:
        """Rows served under ``served`` whose shared columns differ from the backfill (0 = no skew)."""
        pairs = shared_columns(served, self.definition)
        if not pairs:
            return 0
        a = np.array([p[0] for p in pairs])
        b = np.array([p[1] for p in pairs])
        bad = 0
        for i, vec in enumerate(self.served):
            if vec is not None and vec.shape[0] == served.width and vec[a].tobytes() != self.vectors[i, b].tobytes():
                bad += 1
        return bad


def shared_columns(old: FeatureDefinition, new: FeatureDefinition) -> list[tuple[int, int]]:
    """``(column in old, column in new)`` of the inputs and features both declare identically."""
    old_cols = {name: i for i, name in enumerate(old.inputs)}
    old_cols.update({("f", f.op, f.col, f.k, f.default): len(old.inputs) + j for j, f in enumerate(old.features)})
    pairs = [(old_cols[name], i) for i, name in enumerate(new.inputs) if name in old_cols]
    for j, f in enumerate(new.features):
        key = ("f", f.op, f.col, f.k, f.default)
        if key in old_cols:
            pairs.append((old_cols[key], len(new.inputs) + j))
    return pairs


def new_features(definition: FeatureDefinition, served: Sequence[FeatureDefinition]) -> tuple[str, ...]:
    """Names of ``definition``'s derived features that none of the ``served`` definitions computes."""
    known = {(f.op, f.col, f.k, f.default) for d in served for f in d.features}
    return tuple(f.name for f in definition.features if (f.op, f.col, f.k, f.default) not in known)


def backfill(stream, decode: Decode, definition: FeatureDefinition,
             served: Sequence[FeatureDefinition] = ()) -> Backfilled:
    """Vectors under ``definition`` for every logged sample of ``stream`` (``store.feature_stream`` rows)."""
    entries = []
    skipped, reasons = 0, []
    history = [definition.inputs.index(c) for c in dict.fromkeys(f.col for f in definition.features if f.col)]
    for s in stream:
        try:
            logged = decode(s.payload)
            block = np.stack([np.asarray(logged.raw[name], dtype=np.float64).reshape(-1)
                              for name in definition.inputs], axis=1)
            if not math.isfinite(logged.feature_time):
                raise ValueError(f"feature time {logged.feature_time!r}; expected a finite time")
            if history and not np.isfinite(block[:, history]).all():  # the edge refuses these rows too
                raise ValueError("a non-finite value in a column the features keep a history of")
        except (ValueError, KeyError) as exc:
            skipped += 1
            if len(reasons) < MAX_SKIP_REASONS:
                reasons.append(f"sample {s.sample_id[:80]!r}: {str(exc)[:200]}")
            continue
        entries.append((logged.feature_time, s, block, logged.vectors))
    # served order per entity is the log's; across entities replay needs non-decreasing times (stable sort)
    entries.sort(key=lambda e: e[0])
    keys, times, blocks, owners = [], [], [], []
    for n, (t, s, block, _vectors) in enumerate(entries):
        for _ in range(block.shape[0]):
            keys.append(s.routing_key)
            times.append(t)
            owners.append(n)
        blocks.append(block)
    rows = np.concatenate(blocks) if blocks else np.zeros((0, len(definition.inputs)), np.float64)
    events = label_events(entries)
    rep = replay(definition, rows, keys, np.asarray(times, np.float64), events)
    served_vectors = []
    row_in_sample = 0
    for i, n in enumerate(owners):
        row_in_sample = 0 if i == 0 or owners[i - 1] != n else row_in_sample + 1
        vectors = entries[n][3]
        served_vectors.append(None if vectors is None or row_in_sample >= vectors.shape[0] else vectors[row_in_sample])
    samples = [entries[n][1] for n in owners]
    labels = np.asarray([np.nan if s.label is None else s.label for s in samples], np.float64).reshape(-1)
    return Backfilled(
        definition, rep.vectors, tuple(s.sample_id for s in samples), np.asarray([s.id for s in samples], np.int64),
        np.asarray([s.node_id for s in samples], dtype=object),
        np.asarray([s.model_version for s in samples], np.int64),
        np.asarray([s.timestamp_ms for s in samples], np.int64), labels, tuple(served_vectors),
        new_features(definition, served), skipped, tuple(reasons))


def label_events(entries) -> list[LabelEvent]:
    """Each joined label as an event on the request axis: before its entity's first request served after it."""
    by_entity: dict[str, list[tuple[int, float]]] = {}
    for t, s, _block, _v in entries:
        by_entity.setdefault(s.routing_key, []).append((s.timestamp_ms, t))
    served_at: dict[str, tuple[list[int], list[float]]] = {}
    for key, served in by_entity.items():
        served.sort(key=lambda x: x[0])
        suffix_min = [0.0] * len(served)  # the earliest request time among those served from here on
        low = math.inf
        for i in range(len(served) - 1, -1, -1):
            low = min(low, served[i][1])
            suffix_min[i] = low
        served_at[key] = ([ms for ms, _t in served], suffix_min)
    events = []
    for t, s, _block, _v in entries:
        if s.label is None or s.label_received_ms is None:
            continue
        ms_list, suffix_min = served_at[s.routing_key]
        first = bisect.bisect_left(ms_list, s.label_received_ms)
        arrival = suffix_min[first] if first < len(ms_list) else math.inf
        events.append(LabelEvent(s.routing_key, float(s.label), t, arrival))
    return events


def record_backfill(store, model: str, result: Backfilled, now_ms: int, version: int = 0,
                    served: Sequence[FeatureDefinition] = ()) -> int:
    """Add the backfill to the lineage (a ``feature_backfill`` artifact): which features, how many rows."""
    props = {"definition_digest": result.definition.digest, "definition": result.definition.to_dict(),
             "backfilled_features": list(result.new_features), "rows": len(result),
             "labelled_rows": int((~np.isnan(result.labels)).sum()), "samples_skipped": result.skipped,
             "skip_reasons": list(result.skip_reasons),
             "served_definitions": [d.digest for d in served],
             "served_mismatch_rows": {d.digest: result.served_mismatches(d) for d in served}}
    return store.add_artifact(model, "feature_backfill", props, now_ms, version)


def backfill_from_store(store, model: str, decode: Decode, definition: FeatureDefinition, now_ms: int,
                        served: Sequence[FeatureDefinition] = (), version: int = 0,
                        limit: int | None = None) -> Backfilled:
    """Read ``model``'s logged stream, backfill it under ``definition`` and record that in the lineage."""
    stream = store.feature_stream(model) if limit is None else store.feature_stream(model, limit)
    result = backfill(stream, decode, definition, served)
    record_backfill(store, model, result, now_ms, version, served)
    return result


def served_definitions(manifest, store, model: str) -> dict[str, FeatureDefinition]:
    """digest -> definition of every published version of ``model`` whose manifest declares features."""
    out: dict[str, FeatureDefinition] = {}
    if manifest is None:
        return out
    for p in store.published_models():
        if p.model != model:
            continue
        doc = manifest(model, p.version) or {}
        features = doc.get("features")
        if isinstance(features, dict):
            try:
                definition = FeatureDefinition.from_dict(features)
            except DefinitionError:
                continue
            out[definition.digest] = definition
    return out


def training_window(store, manifest, decode: Decode | None, model: str, version: int, rows,
                    data: LabelledWindow, now_ms: int) -> LabelledWindow:
    """The CT loop's training rows under the champion's feature definition (the loop's one call in here).

    ``rows`` are the labelled samples the loop chose (``store.labelled_latest``) and ``data`` their served
    vectors.  When every row was served under the champion's definition (or it declares none), ``data``
    is the answer; otherwise the model's logged stream is backfilled under that definition, recorded in
    the lineage, and the same rows come back with the backfilled vectors.
    """
    doc = manifest(model, version) if (manifest is not None and version) else None
    if decode is None or not isinstance(doc, dict) or not isinstance(doc.get("features"), dict):
        return data
    try:
        definition = FeatureDefinition.from_dict(doc["features"])
    except DefinitionError:
        return data
    digests = set()
    for row in rows:
        try:
            digests.add(decode(row[5]).digest)
        except ValueError:
            digests.add("")
    if digests <= {definition.digest}:
        return data  # everything was served under this definition: what the edge served is what trains
    known = served_definitions(manifest, store, model)
    served = [known[d] for d in sorted(digests) if d in known and d != definition.digest]
    result = backfill_from_store(store, model, decode, definition, now_ms, served, version)
    at = {sid: i for i, sid in enumerate(result.sample_ids)}
    keep = [(row, at[row[1]]) for row in rows if row[1] in at]
    if not keep:
        return data
    return LabelledWindow(np.asarray([r[0] for r, _ in keep], np.int64), tuple(r[1] for r, _ in keep),
                          np.asarray([r[2] for r, _ in keep], dtype=object),
                          np.asarray([r[4] for r, _ in keep], np.int64), np.asarray([r[3] for r, _ in keep], np.int64),
                          result.vectors[np.asarray([i for _, i in keep], np.int64)],
                          np.asarray([r[6] for r, _ in keep], np.float64), len(rows) - len(keep))


__all__ = ["Backfilled", "LoggedRow", "backfill", "backfill_from_store", "label_events", "new_features",
           "record_backfill", "served_definitions", "shared_columns", "training_window"]
