"""The labelled examples of federated models, kept on the edge in SQLite beside the outbox.

A federated model's served rows never leave the edge, so this file is the only copy of its
training window: it must outlive a restart.  Rows are recorded by the outbox writer thread
(``add_rows``) with their routing key and serving time; labels join them here by the coordinator's
rule (``add_label``): by ``sample_id`` (and model, when given; else every model with that id), or
by ``model`` + ``routing_key`` + ``timestamp_ms`` (the latest row of that key served at or before
that time).  A label whose row is not recorded yet (the writer is a commit window behind) waits
in ``pending_labels`` and joins when the row comes, as on the coordinator.  A later label of a row
overwrites the earlier one.  Bounded: unlabelled rows, labelled rows, waiting labels and bytes;
past a bound the oldest go, counted (``dropped``: requests; kept in the file, so it survives restarts).
"""
from __future__ import annotations

import logging
import sqlite3
import threading
from pathlib import Path

import numpy as np

log = logging.getLogger("edgeloop.node.federated")

MAX_PENDING = 20_000  # recorded rows waiting for their label, per model
MAX_LABELLED = 20_000  # labelled rows kept, per model (the newest)
MAX_WAITING_LABELS = 20_000  # labels that arrived before their row, all models
MAX_BYTES = 256 << 20  # row bytes kept, all models
MAX_FEATURES = 4096

_SCHEMA = """
CREATE TABLE IF NOT EXISTS rows (seq INTEGER PRIMARY KEY AUTOINCREMENT, model TEXT NOT NULL,
    sample_id TEXT NOT NULL, routing_key TEXT NOT NULL, timestamp_ms INTEGER NOT NULL, n INTEGER NOT NULL,
    d INTEGER NOT NULL, data BLOB NOT NULL, label REAL, label_seq INTEGER);
CREATE INDEX IF NOT EXISTS rows_id ON rows (sample_id, model);
CREATE INDEX IF NOT EXISTS rows_key ON rows (model, routing_key, timestamp_ms);
CREATE INDEX IF NOT EXISTS rows_labelled ON rows (model, label_seq);
CREATE TABLE IF NOT EXISTS pending_labels (id INTEGER PRIMARY KEY AUTOINCREMENT, model TEXT NOT NULL,
    sample_id TEXT NOT NULL, routing_key TEXT NOT NULL, timestamp_ms INTEGER NOT NULL, value REAL NOT NULL);
CREATE INDEX IF NOT EXISTS pending_id ON pending_labels (sample_id);
CREATE INDEX IF NOT EXISTS pending_key ON pending_labels (model, routing_key);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


class LocalExamples:
    """Recorded rows of federated models and their labels, joined on the edge (durable, bounded)."""

    def __init__(self, path: Path | str | None = None, max_pending: int = MAX_PENDING,
                 max_labelled: int = MAX_LABELLED, max_bytes: int = MAX_BYTES,
                 max_waiting_labels: int = MAX_WAITING_LABELS) -> None:
        self.models: frozenset[str] = frozenset()
        self.path = Path(path) if path is not None else None
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._max_pending, self._max_labelled = int(max_pending), int(max_labelled)
        self._max_bytes, self._max_waiting = int(max_bytes), int(max_waiting_labels)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(self.path) if self.path is not None else ":memory:", timeout=30.0,
                                   isolation_level=None, check_same_thread=False)
        if self.path is not None:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        self._db.execute("INSERT OR IGNORE INTO meta(key, value) VALUES ('dropped', 0), ('labels_dropped', 0), "
                         "('label_seq', 0)")
        # the bounds are checked on every write: counters kept here, not counted in the file each time
        self._pending: dict[str, int] = {}  # model -> unlabelled requests
        self._labelled: dict[str, int] = {}  # model -> labelled rows
        self._bytes = 0
        for model, labelled, n, size in self._db.execute(
                "SELECT model, label_seq IS NOT NULL, SUM(CASE WHEN label_seq IS NULL THEN 1 ELSE n END), "
                "SUM(length(data)) FROM rows GROUP BY model, label_seq IS NOT NULL"):
            (self._labelled if labelled else self._pending)[model] = int(n)
            self._bytes += int(size)

    # ------------------------------------------------------------------ bookkeeping
    @property
    def dropped(self) -> int:
        """Recorded requests dropped at a bound since the file was made."""
        with self._lock:
            return self._meta("dropped")

    def _meta(self, key: str) -> int:
        return int(self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()[0])

    def _bump(self, key: str, n: int = 1) -> int:
        self._db.execute("UPDATE meta SET value = value + ? WHERE key = ?", (n, key))
        return self._meta(key)

    def set_models(self, names) -> None:
        self.models = frozenset(names)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _write(self, fn, *args):
        with self._lock:
            db = self._db
            saved = dict(self._pending), dict(self._labelled), self._bytes
            db.execute("BEGIN IMMEDIATE")
            try:
                out = fn(db, *args)
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                self._pending, self._labelled, self._bytes = saved
                raise
            return out

    def _count(self, counter: dict, model: str, n: int) -> None:
        counter[model] = counter.get(model, 0) + n

    # ------------------------------------------------------------------ rows
    def add_rows(self, model: str, sample_id: str, rows: np.ndarray, routing_key: str = "",
                 timestamp_ms: int = 0) -> None:
        """Keep the rows one request of ``model`` served (n, d); labels that waited for them join now."""
        x = np.ascontiguousarray(np.asarray(rows, "<f4"))
        x = x.reshape(1, -1) if x.ndim == 1 else x.reshape(x.shape[0], -1)
        if x.shape[0] == 0 or not 1 <= x.shape[1] <= MAX_FEATURES:
            return
        self._write(self._add_rows, model, sample_id, x, routing_key or "", int(timestamp_ms))

    def _add_rows(self, db, model, sample_id, x, key, ts) -> None:
        db.execute("INSERT INTO rows (model, sample_id, routing_key, timestamp_ms, n, d, data) "
                   "VALUES (?, ?, ?, ?, ?, ?, ?)", (model, sample_id, key, ts, x.shape[0], x.shape[1], x.tobytes()))
        self._count(self._pending, model, 1)
        self._bytes += x.nbytes
        waiting = db.execute(
            "SELECT id, model, sample_id, routing_key, timestamp_ms, value FROM pending_labels "
            "WHERE (sample_id != '' AND sample_id = ? AND (model = '' OR model = ?)) "
            "OR (sample_id = '' AND model = ? AND routing_key = ? AND ? != '' AND timestamp_ms >= ?) ORDER BY id",
            (sample_id, model, model, key, key, ts)).fetchall()
        for pid, m, sid, k, t, value in waiting:
            if self._join(db, m, sid, k, t, value):
                db.execute("DELETE FROM pending_labels WHERE id = ?", (pid,))
        self._bound(db, model)

    # ------------------------------------------------------------------ labels
    def add_label(self, sample_id: str, model: str, value: float, routing_key: str = "",
                  timestamp_ms: int = 0) -> bool:
        """Join a label to its recorded rows (True), or keep it waiting for them (False).

        A label that cannot name a row (no sample id, and no model + routing key) is not kept.
        """
        if not sample_id and not (model and routing_key):
            return False
        try:
            return self._write(self._add_label, sample_id or "", model or "", routing_key or "", int(timestamp_ms),
                               float(value))
        except sqlite3.Error as exc:  # e.g. a full disk: the label is stored in the outbox already; say so, go on
            log.warning("federated examples %s: a label could not be joined: %s", self.path, str(exc)[:200])
            return False

    def _add_label(self, db, sample_id, model, key, ts, value) -> bool:
        if self._join(db, model, sample_id, key, ts, value):
            return True
        if not self.models or (model and model not in self.models):
            return False  # a label of a model that is not federated: no row of it will ever be recorded here
        db.execute("INSERT INTO pending_labels (model, sample_id, routing_key, timestamp_ms, value) "
                   "VALUES (?, ?, ?, ?, ?)", (model, sample_id, key, ts, value))
        over = db.execute("SELECT COUNT(*) FROM pending_labels").fetchone()[0] - self._max_waiting
        if over > 0:
            db.execute("DELETE FROM pending_labels WHERE id IN (SELECT id FROM pending_labels ORDER BY id LIMIT ?)",
                       (over,))
            self._bump("labels_dropped", over)  # mostly labels by id of other models' requests: counted apart
        return False

    def _targets(self, db, model: str, sample_id: str, key: str, ts: int) -> list[int]:
        """The coordinator's join rule (``store.sqlite._targets``) over this edge's rows: their seqs."""
        if sample_id:
            if model:
                return [s for (s,) in db.execute("SELECT seq FROM rows WHERE sample_id = ? AND model = ?",
                                                 (sample_id, model))]
            return [s for (s,) in db.execute("SELECT seq FROM rows WHERE sample_id = ?", (sample_id,))]
        found = db.execute("SELECT seq FROM rows WHERE model = ? AND routing_key = ? AND routing_key != '' "
                           "AND timestamp_ms <= ? ORDER BY timestamp_ms DESC, seq DESC LIMIT 1",
                           (model, key, ts)).fetchone()
        return [found[0]] if found else []

    def _join(self, db, model, sample_id, key, ts, value) -> bool:
        targets = self._targets(db, model, sample_id, key, ts)
        for seq in targets:
            row_model, label_seq, n = db.execute("SELECT model, label_seq, n FROM rows WHERE seq = ?",
                                                 (seq,)).fetchone()
            if label_seq is None:  # newly labelled: it joins the labelled window at its newest end
                db.execute("UPDATE rows SET label = ?, label_seq = ? WHERE seq = ?",
                           (value, self._bump("label_seq"), seq))
                self._count(self._pending, row_model, -1)
                self._count(self._labelled, row_model, n)
            else:  # a later label of the same row: the latest wins (as on the coordinator)
                db.execute("UPDATE rows SET label = ? WHERE seq = ?", (value, seq))
            self._bound(db, row_model)
        return bool(targets)

    def _bound(self, db, model: str) -> None:
        """Drop the oldest rows past the bounds (unlabelled per model, labelled rows per model, bytes)."""
        dropped = 0
        over = self._pending.get(model, 0) - self._max_pending
        if over > 0:
            gone = db.execute("SELECT seq, length(data) FROM rows WHERE model = ? AND label_seq IS NULL "
                              "ORDER BY seq LIMIT ?", (model, over)).fetchall()
            db.executemany("DELETE FROM rows WHERE seq = ?", [(g[0],) for g in gone])
            self._count(self._pending, model, -len(gone))
            self._bytes -= sum(g[1] for g in gone)
            dropped += len(gone)
        while self._labelled.get(model, 0) > self._max_labelled:
            seq, n, size = db.execute("SELECT seq, n, length(data) FROM rows WHERE model = ? AND label_seq IS NOT "
                                      "NULL ORDER BY label_seq LIMIT 1", (model,)).fetchone()
            db.execute("DELETE FROM rows WHERE seq = ?", (seq,))
            self._count(self._labelled, model, -n)
            self._bytes -= size
            dropped += 1
        while self._bytes > self._max_bytes:  # the oldest row of any model, labelled or not
            seq, m, n, size, label_seq = db.execute("SELECT seq, model, n, length(data), label_seq FROM rows "
                                                    "ORDER BY seq LIMIT 1").fetchone()
            db.execute("DELETE FROM rows WHERE seq = ?", (seq,))
            if label_seq is None:
                self._count(self._pending, m, -1)
            else:
                self._count(self._labelled, m, -n)
            self._bytes -= size
            dropped += 1
        if dropped:
            self._bump("dropped", dropped)

    # ------------------------------------------------------------------ reads
    def labelled(self, model: str, max_rows: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """(X, y) of the newest ``max_rows`` labelled rows (all when 0), oldest first (in labelling order)."""
        with self._lock:
            found = self._db.execute("SELECT n, d, data, label FROM rows WHERE model = ? AND label_seq IS NOT NULL "
                                     "ORDER BY label_seq DESC", (model,)).fetchall()
        if not found:
            return np.zeros((0, 0), np.float32), np.zeros(0)
        width = found[0][1]  # the model's input may have changed: the newest width only
        keep, have = [], 0
        for row in found:
            if row[1] == width:
                keep.append(row)
                have += row[0]
                if max_rows and have >= max_rows:
                    break
        keep.reverse()
        x = np.frombuffer(b"".join(r[2] for r in keep), "<f4").reshape(-1, width)
        y = np.repeat(np.array([r[3] for r in keep], np.float64), [r[0] for r in keep])
        if max_rows:
            x, y = x[-max_rows:], y[-max_rows:]
        return x, y

    def counts(self) -> dict[str, tuple[int, int]]:
        """Per model: (unlabelled recorded requests, labelled rows)."""
        with self._lock:
            found = self._db.execute("SELECT model, SUM(label_seq IS NULL), "
                                     "COALESCE(SUM(CASE WHEN label_seq IS NULL THEN 0 ELSE n END), 0) "
                                     "FROM rows GROUP BY model").fetchall()
        return {m: (int(p), int(n)) for m, p, n in found}

    def waiting_labels(self) -> tuple[int, int]:
        """(labels waiting for their row, waiting labels dropped at the bound)."""
        with self._lock:
            return (int(self._db.execute("SELECT COUNT(*) FROM pending_labels").fetchone()[0]),
                    self._meta("labels_dropped"))


__all__ = ["LocalExamples", "MAX_LABELLED", "MAX_PENDING"]
