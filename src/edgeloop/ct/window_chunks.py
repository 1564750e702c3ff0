"""Training windows that Dask workers read themselves, in chunks, from the coordinator's store.

Why: with ``[training] backend = "dask"`` the features of the training window should not travel
through the coordinator.  The coordinator names the rows (label row ids in training order, and their
weights); each worker opens the store read-only (a SQLite file on this machine, or the PostgreSQL
URL), reads the labelled samples of its chunk by one label-id range, decodes them with the same
:func:`edgeloop.ct.window.decode_rows` as the in-process window, and keeps them in the chunk's order.
"""
from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from typing import Callable

import numpy as np

from .trainers import MAX_FEATURES, MAX_ROWS, TrainingError, _cut

#: the per-row key the loop's Dataset carries so a trainer can name its rows to the workers
LABEL_ID = "label_id"


@dataclass(frozen=True)
class WindowSource:
    """Rows of ``model`` in ``database`` by label row id, in training order, with optional weights.

    ``database``: a SQLite file path or a ``postgresql://`` URL (workers open it read-only);
    ``decode(payload, input_name)``: an importable function (the coordinator's ``decode_sample``).
    """

    database: str
    model: str
    input_name: str
    n_features: int
    decode: Callable[[bytes, str], np.ndarray]
    label_ids: np.ndarray
    weight: np.ndarray | None = None

    def __post_init__(self):
        ids = np.ascontiguousarray(self.label_ids, dtype=np.int64)
        if ids.ndim != 1 or not 2 <= len(ids) <= MAX_ROWS or (ids < 1).any():
            raise TrainingError(f"label_ids: {len(ids)} ids; expected 2..{MAX_ROWS} label row ids >= 1")
        if len(np.unique(ids)) != len(ids):
            raise TrainingError("label_ids: an id appears twice; expected distinct label row ids")
        if isinstance(self.n_features, bool) or not isinstance(self.n_features, int) or \
                not 1 <= self.n_features <= MAX_FEATURES:
            raise TrainingError(f"n_features: {_cut(self.n_features)}; expected an int in 1..{MAX_FEATURES}")
        weight = None
        if self.weight is not None:
            weight = np.ascontiguousarray(self.weight, dtype=np.float64)
            if weight.shape != ids.shape or not np.isfinite(weight).all() or (weight < 0).any():
                raise TrainingError(f"weight: shape {weight.shape}; expected ({len(ids)},) finite values >= 0")
        object.__setattr__(self, "label_ids", ids)
        object.__setattr__(self, "weight", weight)

    def __len__(self) -> int:
        return len(self.label_ids)

    def chunk(self, start: int, stop: int) -> "ChunkSpec":
        w = None if self.weight is None else self.weight[start:stop]
        return ChunkSpec(self.database, self.model, self.input_name, self.n_features, self.decode,
                         self.label_ids[start:stop], w)


@dataclass(frozen=True)
class ChunkSpec:
    """One worker's share of a WindowSource (what travels to the worker: ids and weights, no features)."""

    database: str
    model: str
    input_name: str
    n_features: int
    decode: Callable[[bytes, str], np.ndarray]
    label_ids: np.ndarray
    weight: np.ndarray | None


def _connect(database: str):
    from edgeloop.store.postgres import PgConnection, is_postgres_url

    if is_postgres_url(database):
        return PgConnection(database, read_only=True)
    return sqlite3.connect(f"file:{database}?mode=ro", uri=True, check_same_thread=False)


def read_chunk(spec: ChunkSpec) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(on a worker) X float32, raw labels y and weights of the chunk's rows, in the chunk's order.

    Refuses a chunk with a row that is gone from the store or no longer decodes (the window would not
    be the one the coordinator validated), naming the label id.
    """
    from edgeloop.store.sqlite_ct import _LABELLED

    from .window import decode_rows

    ids = spec.label_ids
    db = _connect(spec.database)
    try:
        rows = [(r[0], r[1], r[2], r[3], r[4], bytes(r[5]), r[6]) for r in db.execute(
            _LABELLED + " AND l.rowid >= ? AND l.rowid <= ? ORDER BY l.rowid",
            (spec.model, int(ids.min()), int(ids.max())))]
    finally:
        db.close()
    wanted = set(ids.tolist())
    win = decode_rows([r for r in rows if r[0] in wanted], spec.decode, spec.input_name, spec.n_features)
    pos = np.searchsorted(win.label_ids, ids)
    found = (pos < len(win.label_ids)) & (win.label_ids[np.minimum(pos, max(0, len(win) - 1))] == ids) \
        if len(win) else np.zeros(len(ids), bool)
    if not found.all():
        missing = ids[~found][:5].tolist()
        raise TrainingError(f"label_ids: {int((~found).sum())} rows of the window (e.g. label ids {missing}) are not "
                            f"in the store as decodable samples of {spec.model[:80]!r}; "
                            f"{'; '.join(win.skip_reasons)[:200]}")
    return win.X[pos], win.y[pos], spec.weight


def window_source(store, decode, model: str, input_name: str, n_features: int, train) -> WindowSource | None:
    """The source of a loop Dataset whose rows carry their label ids, when workers can read ``store``; else None."""
    where = getattr(store, "worker_database", None)
    database = where() if where is not None else None
    ids = train.slices.get(LABEL_ID)
    if database is None or ids is None or len(train) < 2:
        return None
    return WindowSource(database, model, input_name, int(n_features), decode, ids, train.weight)


def fit_window(trainer, train, validation, *, store, decode, model: str, input_name: str, n_features: int,
               warm_start: bytes | None = None, seed: int = 0):
    """The CT loop's fit: a trainer that reads windows itself (Dask) gets the window's source, others the arrays."""
    fit_source = getattr(trainer, "fit_source", None)
    source = window_source(store, decode, model, input_name, n_features, train) if fit_source else None
    if source is None:
        return trainer.fit(train, validation, warm_start=warm_start, seed=seed)
    return fit_source(source, validation, warm_start=warm_start, seed=seed)


__all__ = ["ChunkSpec", "LABEL_ID", "WindowSource", "fit_window", "read_chunk", "window_source"]
