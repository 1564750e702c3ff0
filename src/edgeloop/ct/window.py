"""Labelled samples from the coordinator's store as NumPy windows.

The store keeps each served request verbatim (its wire encoding); turning that into a feature row is
the coordinator's job (``ct`` does not import ``protocol``), so the reader takes a ``decode`` callable:
(payload bytes, input name) -> a float array of one row, or ``(row, hard)`` where ``hard`` says the
edge marked the request a hard example (escalated), or raises ``ValueError`` saying why it cannot.
For a model with features the row is the full vector the model saw (the sample's ``inputs``), never
the raw inputs the client sent: the loop trains on what was served.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from .trainers import Dataset

Decode = Callable[[bytes, str], np.ndarray]
#: reasons for skipped rows kept per window (their count is always exact)
MAX_SKIP_REASONS = 5


@dataclass(frozen=True)
class LabelledWindow:
    """Rows in label-arrival order: features X (float32, n x d), labels y, the edge and time of each."""

    label_ids: np.ndarray
    sample_ids: tuple[str, ...]
    edges: np.ndarray
    timestamps_ms: np.ndarray
    versions: np.ndarray
    X: np.ndarray
    y: np.ndarray
    skipped: int = 0
    skip_reasons: tuple[str, ...] = field(default=())
    hard: np.ndarray | None = None  # bool per row: marked a hard example by the edge (None: none known)

    def __len__(self) -> int:
        return int(self.X.shape[0])

    @property
    def last_label_id(self) -> int:
        return int(self.label_ids[-1]) if len(self.label_ids) else 0

    def take(self, rows) -> "LabelledWindow":
        rows = np.asarray(rows)
        ids = np.arange(len(self))[rows]
        return LabelledWindow(self.label_ids[rows], tuple(self.sample_ids[i] for i in ids), self.edges[rows],
                              self.timestamps_ms[rows], self.versions[rows], self.X[rows], self.y[rows],
                              hard=None if self.hard is None else self.hard[rows])

    def rows_per_edge(self) -> dict[str, int]:
        keys, counts = np.unique(self.edges, return_counts=True)
        return {str(k): int(c) for k, c in zip(keys, counts)}

    def dataset(self, feature_names: Sequence[str] = (), hard_weight: float = 1.0) -> Dataset:
        """As a trainer's Dataset: edge as the slice key, timestamps in seconds, time-ordered; rows marked
        hard weigh ``hard_weight`` (the others 1; no weights at all when that changes nothing)."""
        order = np.argsort(self.timestamps_ms, kind="stable")
        weight = None
        if hard_weight != 1.0 and self.hard is not None and self.hard.any():
            weight = np.where(self.hard[order], float(hard_weight), 1.0)
        return Dataset(self.X[order], self.y[order], weight=weight,
                       slices={"edge": self.edges[order], "label_id": self.label_ids[order]},
                       timestamps=self.timestamps_ms[order] / 1000.0, feature_names=tuple(feature_names))

    @property
    def hard_rows(self) -> int:
        return 0 if self.hard is None else int(self.hard.sum())


def empty_window(n_features: int) -> LabelledWindow:
    return LabelledWindow(np.zeros(0, np.int64), (), np.zeros(0, object), np.zeros(0, np.int64),
                          np.zeros(0, np.int64), np.zeros((0, n_features), np.float32), np.zeros(0, np.float64))


def decode_rows(rows, decode: Decode, input_name: str, n_features: int) -> LabelledWindow:
    """Store rows ``(label id, sample id, node id, version, ts ms, payload, label)`` -> ``n_features`` columns.

    A row whose payload does not decode to one finite-or-not row of ``n_features`` values is skipped
    and counted (validation judges NaN/Inf later, with reasons; here only the shape must fit).
    """
    keep_ids, sids, edges, versions, ts, xs, ys, hard = [], [], [], [], [], [], [], []
    skipped, reasons = 0, []
    for label_id, sample_id, node_id, version, ts_ms, payload, value in rows:
        try:
            decoded = decode(payload, input_name)
            marked = False
            if isinstance(decoded, tuple):
                decoded, marked = decoded
            x = np.asarray(decoded, dtype=np.float32)
            if x.ndim == 1:
                x = x[None, :]
            if x.shape != (1, n_features):
                raise ValueError(f"input shape {list(x.shape)}; expected [1, {n_features}]")
        except ValueError as exc:
            skipped += 1
            if len(reasons) < MAX_SKIP_REASONS:
                reasons.append(f"sample {sample_id[:80]!r}: {str(exc)[:200]}")
            continue
        keep_ids.append(label_id)
        sids.append(sample_id)
        edges.append(node_id)
        versions.append(version)
        ts.append(ts_ms)
        xs.append(x)
        ys.append(value)
        hard.append(bool(marked))
    if not xs:
        w = empty_window(n_features)
        return LabelledWindow(w.label_ids, (), w.edges, w.timestamps_ms, w.versions, w.X, w.y, skipped,
                              tuple(reasons))
    return LabelledWindow(np.asarray(keep_ids, np.int64), tuple(sids), np.asarray(edges, dtype=object),
                          np.asarray(ts, np.int64), np.asarray(versions, np.int64), np.concatenate(xs),
                          np.asarray(ys, np.float64), skipped,
                          tuple(reasons), np.asarray(hard, bool))


def concat(windows: Sequence[LabelledWindow], n_features: int) -> LabelledWindow:
    windows = [w for w in windows if len(w)]
    if not windows:
        return empty_window(n_features)
    hard = None
    if any(w.hard is not None for w in windows):
        hard = np.concatenate([w.hard if w.hard is not None else np.zeros(len(w), bool) for w in windows])
    return LabelledWindow(np.concatenate([w.label_ids for w in windows]),
                          tuple(s for w in windows for s in w.sample_ids),
                          np.concatenate([w.edges for w in windows]),
                          np.concatenate([w.timestamps_ms for w in windows]),
                          np.concatenate([w.versions for w in windows]),
                          np.concatenate([w.X for w in windows]), np.concatenate([w.y for w in windows]),
                          hard=hard)
