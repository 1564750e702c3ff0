"""Training windows that Dask workers read themselves, in chunks, from the coordinator's store.

Why: with ``[training] backend = "dask"`` the features of the training window should not travel
through the coordinator.  The coordinator names the rows (label row ids in training order, and their
weights); each worker opens the store read-only (a SQLite file on this machine, or the PostgreSQL
URL), reads the labelled samples of its chunk by one label-id range, decodes them with the same
:func:`edgeloop.ct.window.decode_rows` as the in-process window, and keeps them in the chunk's order.

The CT loop's whole window goes this way (:class:`WorkerWindow`): the coordinator reads only the small
columns (``store.labelled_latest_meta``: label ids, sample ids, edges, times, labels); the workers say
which rows decode (and which are hard examples), then check whole validation batches where their rows
are and send back per-batch summaries (:func:`edgeloop.ct.validation.summarise_batch`) that the
coordinator merges with the same cross-batch rules as in process (request ids checked here, in batch
order).  Training reads the clean rows by label id (:func:`fit_window`); only the holdout and the
trainer's validation rows are read into the coordinator.  Each row is decoded up to three times on the
workers (decodable, validation, training), never on the coordinator.
"""
from __future__ import annotations

import logging
import sqlite3
from dataclasses import dataclass
from typing import Callable

import numpy as np

from .trainers import MAX_FEATURES, MAX_ROWS, TrainingError, _cut

log = logging.getLogger("edgeloop.ct.dask")

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


def _decoded(spec: ChunkSpec):
    """(on a worker) the chunk's rows that are in the store, decoded, in label-id order (skips counted)."""
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
    return decode_rows([r for r in rows if r[0] in wanted], spec.decode, spec.input_name, spec.n_features)


def _positions(spec: ChunkSpec, win, ids: np.ndarray) -> np.ndarray:
    """Rows of ``win`` holding ``ids``; refuses ids that are gone or no longer decode (naming them)."""
    pos = np.searchsorted(win.label_ids, ids)
    found = (pos < len(win.label_ids)) & (win.label_ids[np.minimum(pos, max(0, len(win) - 1))] == ids) \
        if len(win) else np.zeros(len(ids), bool)
    if not found.all():
        missing = ids[~found][:5].tolist()
        raise TrainingError(f"label_ids: {int((~found).sum())} rows of the window (e.g. label ids {missing}) are not "
                            f"in the store as decodable samples of {spec.model[:80]!r}; "
                            f"{'; '.join(win.skip_reasons)[:200]}")
    return pos


def read_chunk(spec: ChunkSpec) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(on a worker) X float32, raw labels y and weights of the chunk's rows, in the chunk's order.

    Refuses a chunk with a row that is gone from the store or no longer decodes (the window would not
    be the one the coordinator validated), naming the label id.
    """
    win = _decoded(spec)
    pos = _positions(spec, win, spec.label_ids)
    return win.X[pos], win.y[pos], spec.weight


def decodable(spec: ChunkSpec) -> tuple[np.ndarray, np.ndarray, int, tuple]:
    """(on a worker) which of the chunk's rows decode: their label ids, hard flags, the skip count and reasons."""
    win = _decoded(spec)
    hard = win.hard if win.hard is not None else np.zeros(len(win), bool)
    return win.label_ids, hard, win.skipped, win.skip_reasons


def check_chunk(spec: ChunkSpec, batches: tuple, shared: tuple) -> list:
    """(on a worker) the per-batch validation of whole batches ``(batch id, edge, label ids)`` whose rows are
    ``spec``'s, as summaries (no rows travel back).  ``shared``: (signature, profile, policy, feature input,
    label set), as :func:`~edgeloop.ct.validation.validation_context` resolved them."""
    from .validation import Batch, summarise_batch

    signature, profile, policy, feature_input, label_set = shared
    win = _decoded(spec)
    out = []
    for batch_id, edge, ids in batches:
        pos = _positions(spec, win, ids)
        b = Batch(batch_id, edge, {spec.input_name: win.X[pos]}, win.y[pos], tuple(win.sample_ids[i] for i in pos))
        out.append(summarise_batch(b, signature, profile, policy, feature_input, label_set, keep_batch=False))
    return out


@dataclass(frozen=True)
class WorkerWindow:
    """The CT loop's window when the Dask workers read it: the coordinator holds its small columns only.

    ``window(meta)`` (the columns of ``store.labelled_latest_meta``) -> the rows that decode, as a LabelledWindow
    whose X is a placeholder column of zeros (the workers decoded the payloads and said which rows decode
    and which are hard examples); ``validate`` checks whole batches on the workers and merges their
    summaries here (same rules and decisions as :func:`validate_batches`, statistics summed per batch);
    ``materialise`` reads the rows of a Dataset (the holdout, the trainer's validation rows) into this process.
    """

    client: object
    database: str
    model: str
    input_name: str
    n_features: int
    decode: Callable[[bytes, str], np.ndarray]
    chunk_rows: int

    def _spec(self, ids, weight=None) -> ChunkSpec:
        return ChunkSpec(self.database, self.model, self.input_name, self.n_features, self.decode,
                         np.ascontiguousarray(ids, dtype=np.int64), weight)

    def _gather(self, futures: list) -> list:
        """The futures' results; the futures released at once (their task specs and results leave the client)."""
        try:
            return self.client.gather(futures)
        finally:
            for f in futures:
                f.release()

    def window(self, meta: dict):
        from .window import LabelledWindow

        meta = meta_columns(meta)
        ids = meta["label_id"]
        step = max(1, int(self.chunk_rows))
        futures = [self.client.submit(decodable, self._spec(ids[i:i + step]), pure=False)
                   for i in range(0, len(ids), step)]
        parts = self._gather(futures)
        kept = np.concatenate([p[0] for p in parts]) if parts else np.zeros(0, np.int64)
        hard = np.concatenate([p[1] for p in parts]) if parts else np.zeros(0, bool)
        skipped = sum(int(p[2]) for p in parts)
        reasons = tuple(r for p in parts for r in p[3])[:5]
        if len(kept) == len(ids):  # every row decodes (the usual case): the columns as they are, no copies
            cols, sids = meta, meta["sample_id"]
        else:
            keep = np.isin(ids, kept)
            cols = {k: meta[k][keep] for k in ("label_id", "edge", "ts_ms", "version", "label")}
            sids = tuple(s for s, k in zip(meta["sample_id"], keep) if k)
        n = len(kept)
        return LabelledWindow(cols["label_id"], sids, cols["edge"], cols["ts_ms"], cols["version"],
                              np.zeros((n, 1), np.float32), cols["label"], skipped, reasons,
                              hard[np.searchsorted(kept, cols["label_id"])] if n else np.zeros(0, bool))

    def validate(self, batches, signature, profile, policy, *, data, index: dict):
        """``batches``/``index``: the loop's batches of the placeholder window ``data`` (ids, edges, request ids)."""
        from .validation import check_request_ids, merge_summaries, validation_context

        policy, signature, feature_input, label_set = validation_context(signature, profile, policy)
        tasks, group, rows = [], [], 0
        for b in batches:
            group.append((b.batch_id, b.edge, data.label_ids[index[b.batch_id]]))
            rows += len(index[b.batch_id])
            if rows >= self.chunk_rows:
                tasks.append(group)
                group, rows = [], 0
        if group:
            tasks.append(group)
        shared = self.client.scatter([(signature, profile, policy, feature_input, label_set)], broadcast=True,
                                     hash=False)[0]  # sent once, not with every task
        futures = [self.client.submit(check_chunk, self._spec(np.unique(np.concatenate([g[2] for g in group]))),
                                      tuple(group), shared, pure=False) for group in tasks]
        summaries = [s for part in self._gather(futures + [shared])[:-1] for s in part]
        n_tasks = len(tasks)
        del tasks, futures, shared
        log.info("dask: %d batches (%d rows) of %s decoded and validated by the workers in %d tasks", len(batches),
                 len(data), self.model[:80], n_tasks)
        seen: set = set()
        for b, s in zip(batches, summaries):
            check_request_ids(s, b.request_ids, seen)
        return merge_summaries(summaries, profile, policy, label_set)

    def materialise(self, data):
        """``data`` (a placeholder Dataset carrying label ids) with its real rows, read by a worker."""
        from dataclasses import replace

        ids = data.slices[LABEL_ID]
        if not len(ids):
            return data
        X, _, _ = self._gather([self.client.submit(read_chunk, self._spec(ids), pure=False)])[0]
        return replace(data, X=X, feature_names=tuple(f"{self.input_name}:{i}" for i in range(self.n_features)))


def meta_columns(meta: dict) -> dict:
    """``store.labelled_latest_meta``'s columns (stdlib arrays and lists) as NumPy arrays (no copy for the
    numeric ones); ``sample_id`` stays a tuple."""
    out = {k: np.frombuffer(meta[k], dtype=np.int64) if len(meta[k]) else np.zeros(0, np.int64)
           for k in ("label_id", "version", "ts_ms")}
    out["label"] = np.frombuffer(meta["label"], dtype=np.float64) if len(meta["label"]) else np.zeros(0, np.float64)
    edges = np.empty(len(meta["edge"]), object)
    edges[:] = meta["edge"]
    out["edge"], out["sample_id"] = edges, tuple(meta["sample_id"])
    return out


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
        if train.n_features != n_features:  # a placeholder window (its rows only by label id) never trains as is
            raise TrainingError(f"train: {train.n_features} columns; expected {n_features} features or a window "
                                f"the workers can read (a store with worker_database and >= 2 label ids)")
        return trainer.fit(train, validation, warm_start=warm_start, seed=seed)
    return fit_source(source, validation, warm_start=warm_start, seed=seed)


__all__ = ["ChunkSpec", "LABEL_ID", "WindowSource", "WorkerWindow", "check_chunk", "decodable", "fit_window",
           "read_chunk", "window_source"]
