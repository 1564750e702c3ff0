"""The PostgreSQL backend (psycopg 3): the same methods, schema and behaviour as ``SqliteStore``.

It inherits every method of ``SqliteStore`` and runs the same SQL through ``PgConnection``, which
translates SQLite's dialect once per statement (``?`` → ``%s``, ``INSERT OR IGNORE`` → ``ON CONFLICT
DO NOTHING``, two-argument ``max`` → ``GREATEST``, ``lastrowid`` → ``RETURNING id``); the few
statements that cannot be translated mechanically are overridden here.

Several coordinators may share one database.  Every write transaction first takes one
transaction-scoped advisory lock, so writes are serialised across processes exactly as SQLite's
``BEGIN IMMEDIATE`` serialises them within one: batch-id claims, per-node directive sequences and the
join of late labels stay exact whichever coordinator an edge talks to.  The server ends a writer session
left idle inside a transaction (``IDLE_IN_TRANSACTION_MS``), so a frozen coordinator cannot hold that
lock, and with it every other coordinator, for longer.  Reads use a second
connection and see committed data.
"""
from __future__ import annotations

import functools
import json
import math
import re
import threading
import time
from contextlib import contextmanager
from typing import Sequence

from edgeloop.config.cloud import redact_url

from .migrations import MIGRATIONS, migration_statements
from .records import DirectiveRecord, FeatureStatRow
from .sqlite import HISTORY_MS, SqliteStore, StoreError, merge_moments

#: pg_advisory_xact_lock key of every write transaction ("edgeloop" in ASCII, as a signed 64-bit int)
WRITE_LOCK = 0x656467656C6F6F70
#: pg_advisory_lock key held while migrations run (two coordinators starting at once)
MIGRATION_LOCK = WRITE_LOCK + 1
#: how long the server lets a writer session sit idle inside a transaction before ending it (releasing the
#: write lock): a coordinator frozen mid-transaction (SIGSTOP, a stalled VM) cannot stop every other
#: coordinator's writes, lease renewals and takeovers included, for longer than this
IDLE_IN_TRANSACTION_MS = 5000
#: tables whose INSERT returns the new ``id`` (what SQLite gives as ``lastrowid``)
_ID_TABLES = ("ct_artifacts", "ct_executions", "ct_triggers", "ct_evaluations")
_GREATEST = re.compile(r"\bmax\(([^(),]+),([^(),]+)\)")
_INSERT_INTO = re.compile(r"^\s*INSERT INTO (\w+)")


def is_postgres_url(text: str) -> bool:
    return isinstance(text, str) and text.split(":", 1)[0] in ("postgresql", "postgres")


@functools.lru_cache(maxsize=1024)
def translate(sql: str) -> tuple[str, bool]:
    """SQLite's SQL → PostgreSQL's, and whether it now ends with ``RETURNING id``."""
    if "INSERT OR REPLACE" in sql or "json_each" in sql:
        raise NotImplementedError(f"no mechanical PostgreSQL translation for: {sql[:200]}")
    out = sql.replace("%", "%%").replace("?", "%s")
    out = _GREATEST.sub(r"GREATEST(\1,\2)", out)
    if "INSERT OR IGNORE INTO" in out:
        out = out.replace("INSERT OR IGNORE INTO", "INSERT INTO") + " ON CONFLICT DO NOTHING"
    match = _INSERT_INTO.match(out)
    returning = bool(match and match.group(1) in _ID_TABLES and "RETURNING" not in out)
    if returning:
        out += " RETURNING id"
    return out, returning


class _Result:
    """A cursor as ``sqlite3`` callers use it: fetchone/fetchmany/fetchall, iteration, rowcount, lastrowid."""

    def __init__(self, cursor, returning: bool) -> None:
        self._cursor = cursor
        self.rowcount = cursor.rowcount
        self.lastrowid = None
        self._rows: list | None = None
        if returning:
            self._rows = cursor.fetchall()
            self.lastrowid = self._rows[0][0] if self._rows else None

    def fetchone(self):
        if self._rows is not None:
            return self._rows.pop(0) if self._rows else None
        return self._cursor.fetchone() if self._cursor.description else None

    def fetchall(self):
        if self._rows is not None:
            rows, self._rows = self._rows, []
            return rows
        return self._cursor.fetchall() if self._cursor.description else []

    def fetchmany(self, size: int):
        if self._rows is not None:
            rows, self._rows = self._rows[:size], self._rows[size:]
            return rows
        return self._cursor.fetchmany(size) if self._cursor.description else []

    def __iter__(self):
        return iter(self.fetchall())


class PgConnection:
    """A psycopg connection (autocommit; transactions are explicit) that speaks SQLite's dialect."""

    def __init__(self, url: str, read_only: bool = False) -> None:
        import psycopg

        self._url = url
        self._read_only = read_only
        self.raw = psycopg.connect(url, autocommit=True, connect_timeout=10, application_name="edgeloop")
        if read_only:
            self.raw.execute("SET default_transaction_read_only = on")
        else:
            self.raw.execute(f"SET idle_in_transaction_session_timeout = {IDLE_IN_TRANSACTION_MS}")

    def execute(self, sql: str, args: Sequence = ()):
        text, returning = translate(sql)
        return _Result(self.raw.execute(text, tuple(args)), returning)

    def executemany(self, sql: str, rows: Sequence[Sequence]):
        text, _ = translate(sql)
        cur = self.raw.cursor()
        cur.executemany(text, [tuple(r) for r in rows])
        return _Result(cur, False)

    def close(self) -> None:
        self.raw.close()

    def usable(self) -> "PgConnection":
        """This connection, or a new one when the server dropped it (a restart, a failover)."""
        if not (self.raw.broken or self.raw.closed):
            return self
        self.raw.close()
        return PgConnection(self._url, self._read_only)


class PostgresStore(SqliteStore):
    """The coordinator's database on PostgreSQL; thread-safe (a writer and a reader connection)."""

    def __init__(self, url: str, history_ms: int = HISTORY_MS) -> None:
        if not is_postgres_url(url):
            raise ValueError(f"database {redact_url(str(url))[:200]!r}: expected a postgresql:// URL")
        try:
            import psycopg
        except ImportError:
            raise StoreError("storage.database is a PostgreSQL URL but psycopg is not installed "
                             "(pip install 'edgeloop[postgres]')") from None
        self.path = redact_url(url)
        self._lock = threading.RLock()
        self._read_lock = threading.Lock()
        try:
            self._conn = PgConnection(url)
            self.schema_version = self._migrate()
            self._reader = PgConnection(url, read_only=True)
        except psycopg.OperationalError as exc:
            raise StoreError(f"cannot connect to PostgreSQL at {self.path[:200]}: {str(exc).strip()[:300]}") \
                from None
        self._history_ms = int(history_ms)
        self._status_writes = 0
        self._closed = False

    # ------------------------------------------------------------------ plumbing
    @property
    def _pending_labels(self) -> int:
        """Always "maybe": another coordinator may have stored pending labels this process never saw."""
        return 1

    @_pending_labels.setter
    def _pending_labels(self, _value: int) -> None:
        pass

    def _migrate(self) -> int:
        """Run the migrations this database has not seen, one transaction each, under a session lock."""
        raw = self._conn.raw
        raw.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK,))
        try:
            raw.execute("CREATE TABLE IF NOT EXISTS schema_version (version BIGINT PRIMARY KEY, "
                        "description TEXT NOT NULL, applied_ms BIGINT NOT NULL)")
            current = raw.execute("SELECT coalesce(max(version), 0) FROM schema_version").fetchone()[0]
            known = max(v for v, _, _ in MIGRATIONS)
            if current > known:
                raise RuntimeError(f"database schema version {current} is newer than this coordinator knows "
                                   f"({known})")
            for version, description, sql in MIGRATIONS:
                if version <= current:
                    continue
                with raw.transaction():
                    for statement in migration_statements(version, sql, "postgres"):
                        raw.execute(statement)
                    raw.execute("INSERT INTO schema_version (version, description, applied_ms) VALUES (%s, %s, %s)",
                                (version, description, int(time.time() * 1000)))
                current = version
            return current
        finally:
            raw.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK,))

    def worker_database(self) -> str | None:
        """The URL another process (a Dask worker reading a training window) connects with, read-only.
        Unredacted: it carries the credentials this coordinator uses; it goes only to the configured cluster."""
        return self._conn._url

    def close(self) -> None:
        """Close both connections (idempotent)."""
        with self._lock:
            if self._closed:
                return
            with self._read_lock:
                self._closed = True
                self._reader.close()
            self._conn.close()

    @contextmanager
    def _reading(self):
        """The read connection (reconnected when the server dropped it); sees committed data."""
        with self._read_lock:
            if self._closed:
                raise StoreError("the store is closed")
            self._reader = self._reader.usable()
            yield self._reader

    def _clock_ms(self, conn) -> int:
        """The database server's clock, so coordinators on different machines agree on lease expiry."""
        return int(conn.execute("SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint").fetchone()[0])

    @contextmanager
    def _transaction(self):
        with self._lock:
            if self._closed:
                raise StoreError("the store is closed")
            self._conn = self._conn.usable()
            raw = self._conn.raw
            raw.execute("BEGIN")
            try:
                raw.execute("SELECT pg_advisory_xact_lock(%s)", (WRITE_LOCK,))
                self._check_fence(self._conn)
                yield self._conn
            except BaseException:
                if not (raw.closed or raw.broken):
                    raw.execute("ROLLBACK")
                raise
            raw.execute("COMMIT")

    # ------------------------------------------------------------------ statements that differ
    def _pending_matching(self, conn, ids: str, keys: str) -> list[tuple]:
        columns = "p.id, p.sample_id, p.model, p.routing_key, p.timestamp_ms, p.value, p.received_ms, p.node_id"
        return conn.raw.execute(
            f"SELECT {columns} FROM jsonb_array_elements_text(%s::jsonb) j(v) JOIN pending_labels p "
            f"ON p.sample_id = j.v AND p.sample_id != '' UNION SELECT {columns} FROM jsonb_array_elements(%s::jsonb) "
            f"j(v) JOIN pending_labels p ON p.sample_id = '' AND p.model = j.v->>0 AND p.routing_key = j.v->>1 "
            f"ORDER BY 1",
            (ids, keys)).fetchall()

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
        conn.execute("INSERT INTO feature_stats (model, model_version, tensor, is_output, feature, node_id, "
                     "bucket_ms, bin_edges, counts, n, mean, m2, nan_count, psi) "
                     "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (model, model_version, tensor, "
                     "is_output, feature, node_id, bucket_ms) DO UPDATE SET bin_edges = excluded.bin_edges, "
                     "counts = excluded.counts, n = excluded.n, mean = excluded.mean, m2 = excluded.m2, "
                     "nan_count = excluded.nan_count, psi = excluded.psi",
                     (*key, json.dumps(edges), json.dumps(counts), n, mean, m2, nans, psi))

    def _add_directive(self, conn, node_id, kind, payload, now_ms, model, version) -> DirectiveRecord:
        seq = conn.execute("INSERT INTO nodes (node_id, joined_ms, last_seen_ms, directive_seq) VALUES (?, ?, ?, 1) "
                           "ON CONFLICT (node_id) DO UPDATE SET directive_seq = nodes.directive_seq + 1 "
                           "RETURNING directive_seq", (node_id, now_ms, now_ms)).fetchone()[0]
        conn.execute("INSERT INTO directives (node_id, sequence, kind, model, version, payload, created_ms) "
                     "VALUES (?, ?, ?, ?, ?, ?, ?)", (node_id, seq, kind, model, version, payload, now_ms))
        self._event(conn, now_ms, "directive", node_id, {"sequence": seq, "kind": kind, "model": model,
                                                         "version": version})
        return DirectiveRecord(node_id, seq, kind, payload, model, version)
