"""The SQLite backend: one database in WAL mode, one writer connection behind a lock.

Every SQL statement of the coordinator lives here.  Ingest is one ``BEGIN IMMEDIATE`` transaction
per uploaded batch with ``executemany`` over prepared statements; the batch id is recorded in the
same transaction, so a batch is either wholly stored and remembered, or not at all.
"""
from __future__ import annotations

import json
import math
import sqlite3
import threading
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Sequence

from .artifact_rows import ArtifactRows
from .entity_log import EntityLog
from .errors import StoreError
from .leases import Leases
from .migrations import apply_migrations
from .sqlite_ct import CtTables
from .records import (DirectiveRecord, FeatureStatRow, LabelRow, ModelCounts, NodeRecord, PublishedModel,
                      SampleRow)

SYNCHRONOUS = ("normal", "full")
#: a window of the merged feature statistics
BUCKET_MS = 60_000
#: how long status reports and statistics windows are kept (``storage.history_days``)
HISTORY_MS = 14 * 86_400_000
#: old history is pruned on the first status report and then every this many
PRUNE_EVERY = 256

_INSERT_SAMPLE = ("INSERT OR IGNORE INTO samples (model, sample_id, node_id, model_version, routing_key, "
                  "timestamp_ms, received_ms, payload) VALUES (?, ?, ?, ?, ?, ?, ?, ?)")
_UPSERT_LABEL = """INSERT INTO labels (sample_id, model, value, received_ms, node_id) VALUES (?, ?, ?, ?, ?)
ON CONFLICT (sample_id, model) DO UPDATE SET
  value = CASE WHEN excluded.received_ms >= labels.received_ms THEN excluded.value ELSE labels.value END,
  node_id = CASE WHEN excluded.received_ms >= labels.received_ms THEN excluded.node_id ELSE labels.node_id END,
  received_ms = max(excluded.received_ms, labels.received_ms),
  writes = labels.writes + 1"""


def pragmas(synchronous: str) -> tuple[str, ...]:
    """The connection settings (also used by the ingest benchmark's bare-SQLite baseline)."""
    return ("PRAGMA journal_mode=WAL", f"PRAGMA synchronous={synchronous.upper()}", "PRAGMA foreign_keys=OFF",
            "PRAGMA busy_timeout=5000", "PRAGMA cache_size=-65536")


class SqliteStore(CtTables, Leases, ArtifactRows, EntityLog):
    """The coordinator's database; thread-safe (one connection, one lock)."""

    def __init__(self, path: str | Path, synchronous: str = "normal", history_ms: int = HISTORY_MS) -> None:
        if synchronous not in SYNCHRONOUS:
            raise ValueError(f"synchronous {synchronous!r}: expected one of {SYNCHRONOUS}")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._conn = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False,
                                     cached_statements=256)
        for pragma in pragmas(synchronous):
            self._conn.execute(pragma)
        self.schema_version = apply_migrations(self._conn)
        self._read_lock = threading.Lock()
        self._reader = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False,
                                       cached_statements=64)
        self._reader.execute("PRAGMA busy_timeout=5000")
        self._reader.execute("PRAGMA query_only=ON")
        self._pending_labels = self._one("SELECT count(*) FROM pending_labels")
        self._history_ms = int(history_ms)
        self._status_writes = 0
        self._closed = False

    # ------------------------------------------------------------------ plumbing
    def close(self) -> None:
        """Checkpoint the WAL and close (idempotent)."""
        with self._lock:
            if self._closed:
                return
            with self._read_lock:
                self._closed = True
                self._reader.close()
            try:
                self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            finally:
                self._conn.close()

    @property
    def closed(self) -> bool:
        return self._closed

    def worker_database(self) -> str | None:
        """Where a process on this machine (a Dask worker reading a training window) opens this database
        read-only: the file's absolute path; None for an in-memory database."""
        text = str(self.path)
        return None if text == ":memory:" or text.startswith("file::memory:") else str(self.path.resolve())

    def _clock_ms(self, conn) -> int:
        """Now, by the clock leases are measured with (one process: this machine's)."""
        return int(time.time() * 1000)

    def _one(self, sql: str, args: Sequence = ()):
        return _one(self._conn, sql, args)

    @contextmanager
    def _reading(self):
        """The read connection: WAL lets it read committed data while the writer works."""
        with self._read_lock:
            if self._closed:
                raise StoreError("the store is closed")
            yield self._reader

    @contextmanager
    def _transaction(self):
        with self._lock:
            if self._closed:
                raise StoreError("the store is closed")
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                self._check_fence(self._conn)
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                self._pending_labels = self._one("SELECT count(*) FROM pending_labels")  # undo in-memory too
                raise
            self._conn.execute("COMMIT")

    # ------------------------------------------------------------------ fleet
    def fleet_epoch(self) -> int:
        with self._reading() as db:
            return int(_one(db, "SELECT value FROM meta WHERE key = 'fleet_epoch'"))

    def database_id(self) -> str:
        """This database's identity: a random id made the first time it is asked for and never changed, so
        an edge can tell a new (reset) database at the same address from the one it knew (directive
        sequences restart at 1 in a new one).  Insert-if-absent: coordinators sharing a database agree."""
        with self._transaction() as conn:
            conn.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('database_id', ?)", (uuid.uuid4().hex,))
            return str(_one(conn, "SELECT value FROM meta WHERE key = 'database_id'"))

    def _bump_epoch(self, conn) -> None:
        conn.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'fleet_epoch'")

    def join_node(self, node_id: str, address: str, identity: dict, models: list, now_ms: int) -> bool:
        """Register or refresh a node; True when it is new (the fleet epoch moves on then)."""
        with self._transaction() as conn:
            known = conn.execute("SELECT 1 FROM nodes WHERE node_id = ?", (node_id,)).fetchone() is not None
            if known:
                conn.execute("UPDATE nodes SET address = ?, identity = ?, models = ?, last_seen_ms = ? "
                             "WHERE node_id = ?", (address, json.dumps(identity), json.dumps(models), now_ms,
                                                   node_id))
            else:
                conn.execute("INSERT INTO nodes (node_id, address, identity, joined_ms, last_seen_ms, models) "
                             "VALUES (?, ?, ?, ?, ?, ?)", (node_id, address, json.dumps(identity), now_ms, now_ms,
                                                           json.dumps(models)))
                self._bump_epoch(conn)
            self._event(conn, now_ms, "join", node_id, {"address": address, "new": not known})
        return not known

    def node_known(self, node_id: str) -> bool:
        with self._reading() as db:
            return _one(db, "SELECT 1 FROM nodes WHERE node_id = ?", (node_id,)) is not None

    def touch_node(self, node_id: str, now_ms: int) -> None:
        with self._transaction() as conn:
            conn.execute("UPDATE nodes SET last_seen_ms = max(last_seen_ms, ?) WHERE node_id = ?", (now_ms, node_id))

    def nodes(self) -> list[NodeRecord]:
        with self._reading() as db:
            rows = db.execute(
                "SELECT node_id, address, joined_ms, last_seen_ms, models, samples_received, labels_received, "
                "last_status, last_directive_applied, identity FROM nodes ORDER BY node_id").fetchall()
        return [NodeRecord(node_id=r[0], address=r[1], joined_ms=r[2], last_seen_ms=r[3], models=json.loads(r[4]),
                           samples_received=r[5], labels_received=r[6], last_status=json.loads(r[7]),
                           last_directive_applied=r[8], identity=json.loads(r[9] or "{}")) for r in rows]

    def node_ids(self) -> list[str]:
        with self._reading() as db:
            return [r[0] for r in db.execute("SELECT node_id FROM nodes ORDER BY node_id")]

    # ------------------------------------------------------------------ ingest
    def _claim_batch(self, conn, node_id: str, kind: str, batch_id: str, rows: int, now_ms: int) -> bool:
        """Record the batch id; False when this node sent it before (the batch is then a no-op)."""
        cur = conn.execute("INSERT OR IGNORE INTO upload_batches (node_id, kind, batch_id, received_ms, rows) "
                           "VALUES (?, ?, ?, ?, ?)", (node_id, kind, batch_id, now_ms, rows))
        return cur.rowcount == 1

    def ingest_samples(self, node_id: str, batch_id: str, rows: Sequence[SampleRow], now_ms: int) -> int | None:
        """Store one batch in one transaction; the rows newly stored, or None for a duplicate batch."""
        return self.ingest_sample_batches([(node_id, batch_id, rows, now_ms)])[0]

    def ingest_sample_batches(self, batches: Sequence[tuple[str, str, Sequence[SampleRow], int]]
                              ) -> list[int | None]:
        """Store several (node_id, batch_id, rows, now_ms) batches in one transaction (group commit).

        Each batch is claimed and stored whole; the result per batch is as for ``ingest_samples``.
        """
        with self._transaction() as conn:
            return [self._ingest_samples(conn, *batch) for batch in batches]

    def _ingest_samples(self, conn, node_id: str, batch_id: str, rows: Sequence[SampleRow], now_ms: int) -> int | None:
        if not self._claim_batch(conn, node_id, "samples", batch_id, len(rows), now_ms):
            return None
        models = {r[0] for r in rows}
        stored = 0
        for model in models:  # one model per batch is the rule; several are counted apart
            mine = rows if len(models) == 1 else [r for r in rows if r[0] == model]
            cur = conn.executemany(_INSERT_SAMPLE, [(r[0], r[1], node_id, r[2], r[3], r[4], now_ms, r[5])
                                                    for r in mine])
            added = max(cur.rowcount, 0)
            stored += added
            conn.execute("INSERT INTO model_samples (model, samples) VALUES (?, ?) ON CONFLICT (model) "
                         "DO UPDATE SET samples = model_samples.samples + excluded.samples", (model, added))
        if not conn.execute("UPDATE nodes SET samples_received = samples_received + ?, "
                            "last_seen_ms = max(last_seen_ms, ?) WHERE node_id = ?",
                            (stored, now_ms, node_id)).rowcount:
            conn.execute("INSERT INTO nodes (node_id, joined_ms, last_seen_ms, samples_received) "
                         "VALUES (?, ?, ?, ?)", (node_id, now_ms, now_ms, stored))
        if self._pending_labels:
            self._resolve_pending(conn, rows)
        return stored

    def ingest_labels(self, node_id: str, batch_id: str, rows: Sequence[LabelRow], now_ms: int
                      ) -> tuple[int, int] | None:
        """Store one label batch; (labels written, of which overwrites) or None for a duplicate batch.

        A label names its sample by id (and model, when known) or by routing key + time; one whose
        sample has not arrived is kept pending and joined when the sample comes.  The latest
        ``received_ms`` wins; every write is counted.
        """
        with self._transaction() as conn:
            if not self._claim_batch(conn, node_id, "labels", batch_id, len(rows), now_ms):
                return None
            written = overwrites = 0
            for row in rows:
                w, o = self._store_label(conn, row, node_id)
                written += w
                overwrites += o
            if node_id:
                conn.execute("UPDATE nodes SET labels_received = labels_received + ?, "
                             "last_seen_ms = max(last_seen_ms, ?) WHERE node_id = ?", (len(rows), now_ms, node_id))
            if overwrites:
                self._event(conn, now_ms, "labels_overwritten", node_id, {"batch_id": batch_id, "count": overwrites})
            return written, overwrites

    def _targets(self, conn, row) -> list[tuple[str, str]]:
        """The (sample_id, model) pairs a label joins to now (empty: its sample is not here yet)."""
        sample_id, model, key, ts = row[0], row[1], row[2], row[3]
        if sample_id:
            if model:
                return [(sample_id, model)]
            return [(sample_id, m) for (m,) in conn.execute("SELECT model FROM samples WHERE sample_id = ?",
                                                            (sample_id,))]
        found = conn.execute("SELECT sample_id FROM samples WHERE model = ? AND routing_key = ? AND routing_key != '' "
                             "AND timestamp_ms <= ? ORDER BY timestamp_ms DESC, id DESC LIMIT 1",
                             (model, key, ts)).fetchone()
        return [(found[0], model)] if found else []

    def _store_label(self, conn, row, node_id: str) -> tuple[int, int]:
        targets = self._targets(conn, row)
        if not targets:
            conn.execute("INSERT INTO pending_labels (model, sample_id, routing_key, timestamp_ms, value, "
                         "received_ms, node_id) VALUES (?, ?, ?, ?, ?, ?, ?)",
                         (row[1], row[0], row[2], row[3], row[4], row[5], node_id))
            self._pending_labels += 1
            return 1, 0
        overwrites = 0
        for sample_id, model in targets:
            before = conn.execute("SELECT 1 FROM labels WHERE sample_id = ? AND model = ?",
                                  (sample_id, model)).fetchone()
            conn.execute(_UPSERT_LABEL, (sample_id, model, row[4], row[5], node_id))
            overwrites += before is not None
        return len(targets), overwrites

    def _resolve_pending(self, conn, rows: Sequence[SampleRow]) -> None:
        """Join the pending labels that name a sample of this batch (by id, or by model + routing key)."""
        ids = json.dumps(sorted({r[1] for r in rows}))
        keys = json.dumps(sorted({(r[0], r[3]) for r in rows if r[3]}))
        for pid, sample_id, model, key, ts, value, received, node_id in self._pending_matching(conn, ids, keys):
            targets = self._targets(conn, LabelRow(sample_id, model, key, ts, value, received))
            if not targets:
                continue  # e.g. every sample of that key so far is later than the label
            for target_id, target_model in targets:
                conn.execute(_UPSERT_LABEL, (target_id, target_model, value, received, node_id))
            conn.execute("DELETE FROM pending_labels WHERE id = ?", (pid,))
            self._pending_labels -= 1

    def _pending_matching(self, conn, ids: str, keys: str) -> list[tuple]:
        """Pending labels naming one of ``ids`` (a JSON list) or one of ``keys`` (JSON [model, key] pairs),
        in arrival order (so the later of two labels joined to one sample wins on a tie)."""
        columns = "p.id, p.sample_id, p.model, p.routing_key, p.timestamp_ms, p.value, p.received_ms, p.node_id"
        return conn.execute(
            f"SELECT {columns} FROM json_each(?) j JOIN pending_labels p ON p.sample_id = j.value "
            f"AND p.sample_id != '' UNION SELECT {columns} FROM json_each(?) j JOIN pending_labels p "
            f"ON p.sample_id = '' AND p.model = json_extract(j.value, '$[0]') "
            f"AND p.routing_key = json_extract(j.value, '$[1]') ORDER BY 1", (ids, keys)).fetchall()

    def model_counts(self) -> list[ModelCounts]:
        """Per model: samples, samples with a label, labels stored and labels not (yet) joined."""
        with self._reading() as db:
            samples = {m: n for m, n in db.execute("SELECT model, samples FROM model_samples") if n}
            labels = dict(db.execute("SELECT model, count(*) FROM labels GROUP BY model"))
            labelled = dict(db.execute(
                "SELECT l.model, count(*) FROM labels l JOIN samples s ON s.sample_id = l.sample_id "
                "AND s.model = l.model GROUP BY l.model"))
            pending = dict(db.execute("SELECT model, count(*) FROM pending_labels GROUP BY model"))
        out = []
        for model in sorted(set(samples) | set(labels) | set(pending)):
            stored = labels.get(model, 0) + pending.get(model, 0)
            joined = labelled.get(model, 0)
            out.append(ModelCounts(model, samples.get(model, 0), joined, stored, stored - joined))
        return out

    def label_of(self, sample_id: str, model: str) -> tuple[float, int] | None:
        """(value, writes) of the label joined to a sample, or None."""
        with self._reading() as db:
            row = db.execute("SELECT value, writes FROM labels WHERE sample_id = ? AND model = ?",
                                     (sample_id, model)).fetchone()
        return None if row is None else (row[0], row[1])

    def sample_ids(self, node_id: str | None = None) -> list[tuple[str, str]]:
        """(model, sample_id) of stored samples, for checks that nothing was lost or stored twice."""
        with self._reading() as db:
            if node_id is None:
                return db.execute("SELECT model, sample_id FROM samples ORDER BY id").fetchall()
            return db.execute("SELECT model, sample_id FROM samples WHERE node_id = ? ORDER BY id",
                                      (node_id,)).fetchall()

    def sample_payload(self, model: str, sample_id: str) -> bytes | None:
        with self._reading() as db:
            return _one(db, "SELECT payload FROM samples WHERE model = ? AND sample_id = ?", (model, sample_id))

    # ------------------------------------------------------------------ status and statistics
    def record_status(self, node_id: str, summary: dict, models: list, stats: Iterable[FeatureStatRow],
                      now_ms: int) -> None:
        """Keep a node's latest status, append it to the history and merge its feature statistics."""
        bucket = now_ms - now_ms % BUCKET_MS
        with self._transaction() as conn:
            text = json.dumps(summary)
            if not conn.execute("UPDATE nodes SET last_status = ?, models = ?, last_seen_ms = max(last_seen_ms, ?), "
                                "last_directive_applied = max(last_directive_applied, ?) WHERE node_id = ?",
                                (text, json.dumps(models), now_ms, int(summary.get("last_directive_applied", 0)),
                                 node_id)).rowcount:
                conn.execute("INSERT INTO nodes (node_id, joined_ms, last_seen_ms, last_status, models) "
                             "VALUES (?, ?, ?, ?, ?)", (node_id, now_ms, now_ms, text, json.dumps(models)))
            conn.execute("INSERT INTO status_reports (node_id, at_ms, report) VALUES (?, ?, ?)",
                         (node_id, now_ms, text))
            for s in stats:
                self._merge_stat(conn, node_id, bucket, s)
            self._status_writes += 1
            if self._status_writes % PRUNE_EVERY == 1:  # status history and statistics windows stay bounded
                self._prune(conn, now_ms)

    def prune_history(self, now_ms: int) -> None:
        """Drop status reports, statistics windows and upload batch ids older than the history kept.

        A batch re-sent after its id was dropped stores nothing twice: samples are unique by
        (sample id, model) and a label written again only counts one more write.
        """
        with self._transaction() as conn:
            self._prune(conn, now_ms)

    def _prune(self, conn, now_ms: int) -> None:
        cutoff = now_ms - self._history_ms
        conn.execute("DELETE FROM status_reports WHERE at_ms < ?", (cutoff,))
        conn.execute("DELETE FROM feature_stats WHERE bucket_ms < ?", (cutoff - BUCKET_MS,))
        conn.execute("DELETE FROM upload_batches WHERE received_ms < ?", (cutoff,))

    def _merge_stat(self, conn, node_id: str, bucket: int, s: FeatureStatRow) -> None:
        key = (s.model, s.model_version, s.tensor, int(s.is_output), s.feature, node_id, bucket)
        old = conn.execute("SELECT bin_edges, counts, n, mean, m2, nan_count FROM feature_stats WHERE model = ? "
                           "AND model_version = ? AND tensor = ? AND is_output = ? AND feature = ? AND node_id = ? "
                           "AND bucket_ms = ?", key).fetchone()
        edges, counts, n, mean, m2, nans = list(s.bin_edges), list(s.counts), s.n, s.mean, s.m2, s.nan_count
        if old is not None:
            old_edges, old_counts = json.loads(old[0]), json.loads(old[1])
            if old_edges == edges and len(old_counts) == len(counts):
                counts = [a + b for a, b in zip(old_counts, counts)]
            n, mean, m2 = merge_moments(old[2], old[3], old[4], n, mean, m2)
            nans += old[5]
        psi = s.psi if math.isfinite(s.psi) else None
        conn.execute("INSERT OR REPLACE INTO feature_stats (model, model_version, tensor, is_output, feature, node_id, "
                     "bucket_ms, bin_edges, counts, n, mean, m2, nan_count, psi) "
                     "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                     (*key, json.dumps(edges), json.dumps(counts), n, mean, m2, nans, psi))

    def feature_stats(self, model: str, node_id: str | None = None, since_ms: int = 0) -> list[FeatureStatRow]:
        """Statistics of ``model`` merged over edges (or one edge) and windows from ``since_ms`` on."""
        sql = ("SELECT model_version, tensor, is_output, feature, bin_edges, counts, n, mean, m2, nan_count, psi "
               "FROM feature_stats WHERE model = ? AND bucket_ms >= ?")
        args: list = [model, since_ms]
        if node_id is not None:
            sql += " AND node_id = ?"
            args.append(node_id)
        merged: dict[tuple, list] = {}
        with self._reading() as db:
            rows = db.execute(sql + " ORDER BY bucket_ms", args).fetchall()
        for version, tensor, is_output, feature, edges, counts, n, mean, m2, nans, psi in rows:
            key = (version, tensor, bool(is_output), feature)
            edges, counts = json.loads(edges), json.loads(counts)
            cur = merged.get(key)
            if cur is None:
                merged[key] = [edges, counts, n, mean, m2, nans, psi]
                continue
            if cur[0] == edges and len(cur[1]) == len(counts):
                cur[1] = [a + b for a, b in zip(cur[1], counts)]
            cur[2], cur[3], cur[4] = merge_moments(cur[2], cur[3], cur[4], n, mean, m2)
            cur[5] += nans
            cur[6] = psi if psi is not None else cur[6]
        return [FeatureStatRow(model, k[0], k[1], k[2], k[3], tuple(v[0]), tuple(v[1]), v[2], v[3], v[4], v[5],
                               math.nan if v[6] is None else v[6]) for k, v in sorted(merged.items())]

    # ------------------------------------------------------------------ directives
    def add_directive(self, node_id: str, kind: str, payload: bytes, now_ms: int, model: str = "",
                      version: int = 0) -> DirectiveRecord:
        """Append a directive for ``node_id`` with the next sequence number (from 1, persisted)."""
        with self._transaction() as conn:
            return self._add_directive(conn, node_id, kind, payload, now_ms, model, version)

    def _add_directive(self, conn, node_id, kind, payload, now_ms, model, version) -> DirectiveRecord:
        if not conn.execute("UPDATE nodes SET directive_seq = directive_seq + 1 WHERE node_id = ?",
                            (node_id,)).rowcount:
            conn.execute("INSERT INTO nodes (node_id, joined_ms, last_seen_ms, directive_seq) VALUES (?, ?, ?, 1)",
                         (node_id, now_ms, now_ms))
        seq = conn.execute("SELECT directive_seq FROM nodes WHERE node_id = ?", (node_id,)).fetchone()[0]
        conn.execute("INSERT INTO directives (node_id, sequence, kind, model, version, payload, created_ms) "
                     "VALUES (?, ?, ?, ?, ?, ?, ?)", (node_id, seq, kind, model, version, payload, now_ms))
        self._event(conn, now_ms, "directive", node_id, {"sequence": seq, "kind": kind, "model": model,
                                                         "version": version})
        return DirectiveRecord(node_id, seq, kind, payload, model, version)

    def directives_after(self, node_id: str, after: int, limit: int = 256) -> list[DirectiveRecord]:
        with self._reading() as db:
            rows = db.execute("SELECT sequence, kind, payload, model, version, result, error FROM directives "
                                      "WHERE node_id = ? AND sequence > ? ORDER BY sequence LIMIT ?",
                                      (node_id, after, limit)).fetchall()
        return [DirectiveRecord(node_id, r[0], r[1], bytes(r[2]), r[3], r[4], r[5], r[6]) for r in rows]

    def directive_sequence(self, node_id: str) -> int:
        """The last sequence number issued to ``node_id`` (0: none)."""
        with self._reading() as db:
            return _one(db, "SELECT directive_seq FROM nodes WHERE node_id = ?", (node_id,)) or 0

    def has_directive(self, node_id: str, kind: str, model: str, version: int) -> bool:
        """True when ``node_id`` was already sent this action (and it did not fail)."""
        with self._reading() as db:
            return _one(db, "SELECT 1 FROM directives WHERE node_id = ? AND kind = ? AND model = ? AND version = ? "
                             "AND (result IS NULL OR result = 'applied')", (node_id, kind, model, version)) is not None

    def directive_result(self, node_id: str, sequence: int, ok: bool, error: str, now_ms: int) -> bool:
        """Record a node's result for one directive; False when no such directive was issued."""
        with self._transaction() as conn:
            cur = conn.execute("UPDATE directives SET result = ?, error = ?, result_ms = ? WHERE node_id = ? "
                               "AND sequence = ?", ("applied" if ok else "failed", error, now_ms, node_id, sequence))
            if not cur.rowcount:
                return False
            if ok:
                conn.execute("UPDATE nodes SET last_directive_applied = max(last_directive_applied, ?) "
                             "WHERE node_id = ?", (sequence, node_id))
            self._event(conn, now_ms, "directive_applied" if ok else "directive_failed", node_id,
                        {"sequence": sequence, "error": error})
            return True

    # ------------------------------------------------------------------ published models
    def publish_model(self, model: str, version: int, sha256: str, size: int, now_ms: int,
                      directive_kind: str, payload_for=None) -> tuple[PublishedModel, list[DirectiveRecord]]:
        """Register ``model`` ``version`` (0: one above the highest) and direct every known node to load it.

        ``payload_for(published)`` encodes the directive; one transaction covers the registry row and
        every node's directive, so a crash never leaves a model half published.
        """
        with self._transaction() as conn:
            if version == 0:
                version = (conn.execute("SELECT max(version) FROM published_models WHERE model = ?",
                                        (model,)).fetchone()[0] or 0) + 1
            old = conn.execute("SELECT sha256 FROM published_models WHERE model = ? AND version = ?",
                               (model, version)).fetchone()
            if old is not None and old[0] != sha256:
                raise StoreError(f"model {model!r} version {version} is already published with sha256 {old[0]}")
            if old is None:
                conn.execute("INSERT INTO published_models (model, version, sha256, size, created_ms) "
                             "VALUES (?, ?, ?, ?, ?)", (model, version, sha256, size, now_ms))
                self._bump_epoch(conn)
                self._event(conn, now_ms, "model_published", "", {"model": model, "version": version,
                                                                   "sha256": sha256, "size": size})
            published = PublishedModel(model, version, sha256, size, now_ms)
            if payload_for is None:  # registered only: a rollout directs the edges
                return published, []
            payload = payload_for(published)
            records = []
            for (node_id,) in conn.execute("SELECT node_id FROM nodes ORDER BY node_id").fetchall():
                if conn.execute("SELECT 1 FROM directives WHERE node_id = ? AND kind = ? AND model = ? AND version = ? "
                                "AND (result IS NULL OR result = 'applied')",
                                (node_id, directive_kind, model, version)).fetchone():
                    continue
                records.append(self._add_directive(conn, node_id, directive_kind, payload, now_ms, model, version))
            return published, records

    def artifact_published(self, sha256: str) -> bool:
        with self._reading() as db:
            return _one(db, "SELECT 1 FROM published_models WHERE sha256 = ?", (sha256,)) is not None

    def published_models(self, latest_only: bool = False) -> list[PublishedModel]:
        sql = "SELECT model, version, sha256, size, created_ms FROM published_models"
        if latest_only:
            sql += " p WHERE version = (SELECT max(version) FROM published_models q WHERE q.model = p.model)"
        with self._reading() as db:
            return [PublishedModel(*r) for r in db.execute(sql + " ORDER BY model, version")]

    def load_results(self, model: str, version: int) -> dict[str, str | None]:
        """node → result of its latest load directive of ``model`` ``version`` (None: not reported yet)."""
        with self._reading() as db:
            rows = db.execute("SELECT node_id, result, error FROM directives WHERE kind = 'load' AND model = ? AND "
                              "version = ? ORDER BY sequence", (model, version)).fetchall()
        return {r[0]: (r[1] if r[1] != "failed" else f"failed: {r[2] or ''}") for r in rows}

    def labelled_payloads(self, model: str, version: int, since_ms: int,
                          limit: int = 5000) -> list[tuple[bytes, float]]:
        """(sample payload, label) of ``model`` ``version``'s labelled samples received since ``since_ms``."""
        with self._reading() as db:
            rows = db.execute("SELECT s.payload, l.value FROM samples s JOIN labels l ON l.sample_id = s.sample_id "
                              "AND l.model = s.model WHERE s.model = ? AND s.model_version = ? AND s.received_ms >= ? "
                              "ORDER BY s.id DESC LIMIT ?", (model, version, since_ms, limit)).fetchall()
        return [(bytes(r[0]), float(r[1])) for r in rows]

    # ------------------------------------------------------------------ delivery documents
    def put_doc(self, kind: str, key: str, doc: dict, now_ms: int) -> None:
        """Store a delivery document (a manifest, a rollout, a pin) as JSON, replacing the one under ``key``."""
        with self._transaction() as conn:
            conn.execute("INSERT INTO delivery_docs (kind, key, doc, updated_ms) VALUES (?, ?, ?, ?) ON CONFLICT "
                         "(kind, key) DO UPDATE SET doc = excluded.doc, updated_ms = excluded.updated_ms",
                         (kind, key, json.dumps(doc), now_ms))

    def get_doc(self, kind: str, key: str) -> dict | None:
        with self._reading() as db:
            text = _one(db, "SELECT doc FROM delivery_docs WHERE kind = ? AND key = ?", (kind, key))
        return None if text is None else json.loads(text)

    def docs(self, kind: str) -> list[dict]:
        with self._reading() as db:
            rows = db.execute("SELECT doc FROM delivery_docs WHERE kind = ? ORDER BY updated_ms, key",
                              (kind,)).fetchall()
        return [json.loads(r[0]) for r in rows]

    def delete_doc(self, kind: str, key: str) -> None:
        with self._transaction() as conn:
            conn.execute("DELETE FROM delivery_docs WHERE kind = ? AND key = ?", (kind, key))

    # ------------------------------------------------------------------ events
    def _event(self, conn, now_ms: int, kind: str, node_id: str, detail: dict) -> None:
        conn.execute("INSERT INTO events (at_ms, kind, node_id, detail) VALUES (?, ?, ?, ?)",
                     (now_ms, kind, node_id, json.dumps(detail)))

    def add_event(self, kind: str, node_id: str, detail: dict, now_ms: int) -> None:
        with self._transaction() as conn:
            self._event(conn, now_ms, kind, node_id, detail)

    def events(self, kind: str | None = None, limit: int = 1000) -> list[tuple[int, str, str, dict]]:
        sql, args = "SELECT at_ms, kind, node_id, detail FROM events", []
        if kind is not None:
            sql, args = sql + " WHERE kind = ?", [kind]
        with self._reading() as db:
            rows = db.execute(sql + " ORDER BY id LIMIT ?", (*args, limit)).fetchall()
        return [(r[0], r[1], r[2], json.loads(r[3])) for r in rows]


def _one(conn, sql: str, args: Sequence = ()):
    row = conn.execute(sql, args).fetchone()
    return None if row is None else row[0]


def merge_moments(n_a: int, mean_a: float, m2_a: float, n_b: int, mean_b: float, m2_b: float
                  ) -> tuple[int, float, float]:
    """Chan et al.'s parallel merge of (count, mean, sum of squared deviations)."""
    n = n_a + n_b
    if n == 0:
        return 0, 0.0, 0.0
    delta = mean_b - mean_a
    mean = mean_a + delta * n_b / n
    m2 = m2_a + m2_b + delta * delta * n_a * n_b / n
    return n, mean, m2
