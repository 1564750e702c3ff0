"""The edge's sample and label outbox: an SQLite (WAL) file of rows not yet acknowledged by the coordinator.

Request threads never touch SQLite: ``offer`` appends a sample to a bounded in-memory queue (a
``deque``: no lock, no thread wake-up) and returns at once (a full queue drops the sample and counts
it).  One writer thread wakes every ``COMMIT_WINDOW_S`` and group-commits whatever is queued, so a
sample reaches the file within one commit window (plus the commit itself) of being offered; a
sample still in the queue when the process is killed is the only loss the data path allows.
Labels wake the writer at once and wait for their commit (``put_labels`` returns once durable).

The outbox is bounded in rows and bytes (samples and labels together); past a bound new samples
are dropped and counted (``edgeloop_samples_dropped_total{model,reason}``) and labels are refused.
Rows leave only through ``ack``, after the coordinator said it committed their batch.  A batch is
fixed in the ``batches`` table before it is first sent, so a re-send after any crash carries the
same id and the same rows (the coordinator's idempotency does the rest).  Batch ids start with a
random id made when the file is created, so a new outbox file never reuses an old file's ids.
``synchronous=NORMAL``: a commit survives a killed process; a power loss may lose the last commits.
"""
from __future__ import annotations

import logging
import sqlite3
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("edgeloop.node.outbox")

SAMPLES, LABELS = "samples", "labels"
#: The longest a queued sample waits for its commit (the writer commits as soon as it has rows; under
#: load a commit takes what queued meanwhile, so this bounds the window that a kill can lose).
COMMIT_WINDOW_S = 0.05
#: Rows written per transaction at most (keeps one commit short).
MAX_GROUP = 8192
REASON_QUEUE_FULL, REASON_OUTBOX_FULL = "queue_full", "outbox_full"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS samples (seq INTEGER PRIMARY KEY AUTOINCREMENT, model TEXT NOT NULL,
                                    size INTEGER NOT NULL, payload BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS labels (seq INTEGER PRIMARY KEY AUTOINCREMENT, model TEXT NOT NULL,
                                   size INTEGER NOT NULL, payload BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS batches (batch_id TEXT PRIMARY KEY, kind TEXT NOT NULL, first_seq INTEGER NOT NULL,
                                    last_seq INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


class OutboxFull(Exception):
    """Labels that cannot be stored: the outbox is at its row or byte bound (or the writer is gone)."""


@dataclass(frozen=True)
class Batch:
    """Rows ``first_seq..last_seq`` of one table, sent under ``batch_id``; ``payloads`` are serialized messages."""

    batch_id: str
    kind: str
    first_seq: int
    last_seq: int
    payloads: tuple[bytes, ...]


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(str(path), timeout=30.0, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA busy_timeout=30000")
    return conn


class _LabelWrite:
    __slots__ = ("rows", "done", "error")

    def __init__(self, rows):
        self.rows = rows
        self.done = threading.Event()
        self.error: Exception | None = None


class Outbox:
    """One outbox file; ``start()`` runs its writer thread, ``close()`` commits what is queued and stops."""

    def __init__(self, path: Path | str, max_rows: int, max_bytes: int, queue_size: int) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.max_rows = int(max_rows)
        self.max_bytes = int(max_bytes)
        self.queue_size = int(queue_size)
        self._queue: deque = deque()  # (model, item); appends and pops are atomic
        self._urgent = threading.Event()  # labels are waiting: commit now
        self._conn = _connect(self.path)  # the writer thread's (and, before start, setup's)
        self._conn.executescript(_SCHEMA)
        self._read = _connect(self.path)  # the uploader's: reads, batch bookkeeping, acks
        self._read_lock = threading.Lock()
        self.instance = self._meta_init("instance", uuid.uuid4().hex[:16])
        self._lock = threading.Lock()  # guards the counters below
        self.pending_rows = 0
        self.pending_bytes = 0
        for table in (SAMPLES, LABELS):
            rows, size = self._conn.execute(f"SELECT COUNT(*), COALESCE(SUM(size), 0) FROM {table}").fetchone()
            self.pending_rows += rows
            self.pending_bytes += size
        self.dropped: dict[tuple[str, str], int] = {}  # (model, reason) -> samples dropped
        self.committed = 0  # samples committed since start
        self.commits = 0  # transactions
        self.labels_committed = 0
        self.committed_by_model: dict[str, int] = {}
        self.labels_by_model: dict[str, int] = {}
        self._wake_listeners: list = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------------------ meta
    def _meta_init(self, key: str, value: str) -> str:
        self._conn.execute("INSERT OR IGNORE INTO meta(key, value) VALUES (?, ?)", (key, value))
        return self._conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()[0]

    def get_meta(self, key: str, default: str | None = None) -> str | None:
        with self._read_lock:
            row = self._read.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else default

    def set_meta(self, key: str, value: str) -> None:
        """Store ``key`` durably (the directive consumer's last applied sequence lives here)."""
        self.set_meta_many({key: value})

    def set_meta_many(self, values: dict[str, str]) -> None:
        """Store several keys in one transaction (all or none)."""
        with self._read_lock:
            conn = self._read
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.executemany("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)",
                                 [(k, str(v)) for k, v in values.items()])
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise

    # ---------------------------------------------------------------------------- lifecycle
    def start(self) -> "Outbox":
        self._thread = threading.Thread(target=self._run, name="edgeloop-outbox-writer", daemon=True)
        self._thread.start()
        return self

    def close(self, timeout_s: float = 5.0) -> None:
        """Commit what is queued (bounded by ``timeout_s``), stop the writer, close the file."""
        self._stop.set()
        self._urgent.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
        with self._read_lock:
            self._read.close()
        if self._thread is None or not self._thread.is_alive():
            self._conn.close()

    def add_listener(self, fn) -> None:
        """``fn()`` runs after each commit (the uploader wakes on it)."""
        self._wake_listeners.append(fn)

    # ---------------------------------------------------------------------------- hot path
    def offer(self, model: str, item, count_drop: bool = True) -> bool:
        """Queue one sample (anything ``encode``-able by the writer: see ``_encode``) without blocking.

        ``item`` is ``(encode, args)``: the writer calls ``encode(*args)`` for the serialized bytes,
        so building the message happens off the request thread.  False when the queue is full (counted
        as a dropped sample unless ``count_drop`` is False: an item only for the statistics).
        """
        queue = self._queue
        if len(queue) >= self.queue_size:  # racing threads may pass the bound by a few items at most
            if count_drop:
                self._count_drop(model, REASON_QUEUE_FULL)
            return False
        queue.append((model, item))
        return True

    def _count_drop(self, model: str, reason: str, n: int = 1) -> None:
        with self._lock:
            key = (model, reason)
            self.dropped[key] = self.dropped.get(key, 0) + n

    @property
    def dropped_total(self) -> int:
        with self._lock:
            return sum(self.dropped.values())

    @property
    def queued(self) -> int:
        return len(self._queue)

    def put_labels(self, rows: list[tuple[str, bytes]], timeout_s: float = 10.0) -> None:
        """Store ``(model, serialized Label)`` rows and return once they are committed.

        Raises OutboxFull when they would pass a bound, TimeoutError when the writer did not commit in time.
        """
        if self._thread is None or not self._thread.is_alive():
            raise OutboxFull("the outbox writer is not running")
        write = _LabelWrite(rows)
        self._queue.append(("", write))  # labels are never dropped at the queue: the caller waits
        self._urgent.set()
        if not write.done.wait(timeout_s):
            raise TimeoutError(f"the outbox did not commit the labels within {timeout_s:.1f} s")
        if write.error is not None:
            raise write.error

    # ---------------------------------------------------------------------------- writer
    def _run(self) -> None:
        queue = self._queue
        while True:
            stopping = self._stop.is_set()
            if not queue:
                if stopping:
                    return
                self._urgent.wait(COMMIT_WINDOW_S)
                self._urgent.clear()
                continue
            group = []
            while queue and len(group) < MAX_GROUP:
                group.append(queue.popleft())
            try:
                self._write(group)
            except Exception:  # the writer must outlive any one bad group (disk full, encode bug)
                log.exception("outbox: a group of %d rows could not be written", len(group))
                for model, item in group:
                    if isinstance(item, _LabelWrite):
                        item.error = OutboxFull("the outbox could not write the labels (see the edge's log)")
                        item.done.set()
                    else:
                        self._count_drop(model, "write_failed")

    def _write(self, group) -> None:
        samples, labels, waiting = [], [], []
        with self._lock:
            rows, size = self.pending_rows, self.pending_bytes
        for i, (model, item) in enumerate(group):
            if i & 7 == 7:
                time.sleep(0)  # let a request thread waiting for the GIL run (else it waits a switch interval)
            if isinstance(item, _LabelWrite):
                add = [(m, len(p), p) for m, p in item.rows]
                n_bytes = sum(r[1] for r in add)
                if rows + len(add) > self.max_rows or size + n_bytes > self.max_bytes:
                    item.error = OutboxFull(f"the outbox holds {rows} rows / {size} bytes; at most "
                                            f"{self.max_rows} rows / {self.max_bytes} bytes "
                                            f"(coordinator.outbox_max_rows / outbox_max_bytes)")
                    item.done.set()
                    continue
                rows += len(add)
                size += n_bytes
                labels.extend(add)
                waiting.append(item)
                continue
            encode, args = item
            try:
                payload = encode(*args)
            except Exception as exc:
                log.warning("outbox: a sample of model %s could not be encoded: %s", model, exc)
                self._count_drop(model, "encode_failed")
                continue
            if payload is None:  # the encoder declined (not sampled after all)
                continue
            if rows + 1 > self.max_rows or size + len(payload) > self.max_bytes:
                self._count_drop(model, REASON_OUTBOX_FULL)
                continue
            rows += 1
            size += len(payload)
            samples.append((model, len(payload), payload))
        if samples or labels:
            # counted as pending before COMMIT: once committed, the uploader may send and ack these rows
            # (and subtract them) before this thread runs again, which took the counters below zero
            add_rows = len(samples) + len(labels)
            add_bytes = sum(r[1] for r in samples) + sum(r[1] for r in labels)
            with self._lock:
                self.pending_rows += add_rows
                self.pending_bytes += add_bytes
            conn = self._conn
            conn.execute("BEGIN")
            try:
                if samples:
                    conn.executemany("INSERT INTO samples(model, size, payload) VALUES (?, ?, ?)", samples)
                if labels:
                    conn.executemany("INSERT INTO labels(model, size, payload) VALUES (?, ?, ?)", labels)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                with self._lock:
                    self.pending_rows -= add_rows
                    self.pending_bytes -= add_bytes
                raise
            with self._lock:
                self.committed += len(samples)
                self.labels_committed += len(labels)
                self.commits += 1
                for rows_, counts in ((samples, self.committed_by_model), (labels, self.labels_by_model)):
                    for model, _size, _payload in rows_:
                        counts[model] = counts.get(model, 0) + 1
        for item in waiting:
            item.done.set()
        if samples or labels:
            for fn in list(self._wake_listeners):
                fn()

    # ---------------------------------------------------------------------------- uploader side
    def pending(self, kind: str) -> int:
        with self._read_lock:
            return self._read.execute(f"SELECT COUNT(*) FROM {_table(kind)}").fetchone()[0]

    def next_batches(self, kind: str, batch_size: int, max_batches: int, max_bytes: int,
                     max_batch_bytes: int = 3 << 20, skip=frozenset()) -> list[Batch]:
        """Batches to send: those fixed earlier and not acknowledged, then new ones, up to the limits.

        A new batch holds at most ``batch_size`` rows and ``max_batch_bytes`` bytes (at least one row);
        fixed batches whose ids are in ``skip`` (in flight) are left out.
        """
        table = _table(kind)
        out: list[Batch] = []
        total = 0
        with self._read_lock:
            conn = self._read
            fixed = conn.execute("SELECT batch_id, first_seq, last_seq FROM batches WHERE kind = ? ORDER BY first_seq",
                                 (kind,)).fetchall()
            for batch_id, first, last in fixed:
                if batch_id in skip:
                    continue
                if len(out) >= max_batches or total >= max_bytes:
                    return out
                payloads = tuple(p for (p,) in conn.execute(
                    f"SELECT payload FROM {table} WHERE seq BETWEEN ? AND ? ORDER BY seq", (first, last)))
                out.append(Batch(batch_id, kind, first, last, payloads))
                total += sum(map(len, payloads))
            after = fixed[-1][2] if fixed else 0
            while len(out) < max_batches and total < max_bytes:
                rows = conn.execute(f"SELECT seq, payload FROM {table} WHERE seq > ? ORDER BY seq LIMIT ?",
                                    (after, batch_size)).fetchall()
                if not rows:
                    break
                size = 0
                for cut, (_seq, payload) in enumerate(rows):
                    size += len(payload)
                    if size > max_batch_bytes and cut > 0:
                        rows = rows[:cut]
                        break
                first, last = rows[0][0], rows[-1][0]
                batch_id = f"{self.instance}-{kind[0]}{first}-{last}"
                conn.execute("INSERT INTO batches(batch_id, kind, first_seq, last_seq) VALUES (?, ?, ?, ?)",
                             (batch_id, kind, first, last))
                payloads = tuple(p for _s, p in rows)
                out.append(Batch(batch_id, kind, first, last, payloads))
                total += sum(map(len, payloads))
                after = last
        return out

    def ack(self, batches: list[Batch]) -> int:
        """Remove acknowledged batches and their rows; returns the rows removed."""
        if not batches:
            return 0
        removed_rows = removed_bytes = 0
        with self._read_lock:
            conn = self._read
            conn.execute("BEGIN IMMEDIATE")
            try:
                for batch in batches:
                    table = _table(batch.kind)
                    n, size = conn.execute(f"SELECT COUNT(*), COALESCE(SUM(size), 0) FROM {table} "
                                           f"WHERE seq BETWEEN ? AND ?", (batch.first_seq, batch.last_seq)).fetchone()
                    conn.execute(f"DELETE FROM {table} WHERE seq BETWEEN ? AND ?", (batch.first_seq, batch.last_seq))
                    conn.execute("DELETE FROM batches WHERE batch_id = ?", (batch.batch_id,))
                    removed_rows += n
                    removed_bytes += size
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        with self._lock:
            self.pending_rows -= removed_rows
            self.pending_bytes -= removed_bytes
        return removed_rows

    def snapshot(self) -> dict:
        """Counters for status reports and metrics."""
        with self._lock:
            return {"pending_rows": self.pending_rows, "pending_bytes": self.pending_bytes,
                    "committed": self.committed, "labels_committed": self.labels_committed,
                    "commits": self.commits, "dropped": dict(self.dropped), "queued": len(self._queue),
                    "committed_by_model": dict(self.committed_by_model),
                    "labels_by_model": dict(self.labels_by_model)}


def _table(kind: str) -> str:
    if kind not in (SAMPLES, LABELS):
        raise ValueError(f"kind must be {SAMPLES!r} or {LABELS!r}, got {kind!r}")
    return kind


__all__ = ["Batch", "COMMIT_WINDOW_S", "LABELS", "Outbox", "OutboxFull", "SAMPLES"]
