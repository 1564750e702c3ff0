"""Versioned schema migrations, applied in order at start and recorded in ``schema_version``.

A migration is appended, never edited: a database created by an older coordinator is brought up to
date by running the ones it has not seen, each in its own transaction.  One list serves both
backends: the SQLite text is translated for PostgreSQL by ``postgres_sql`` (64-bit integers, identity
keys, ``BYTEA``, ``DOUBLE PRECISION``), and ``POSTGRES_EXTRA`` adds what only PostgreSQL needs.
"""
from __future__ import annotations

import re
import time

MIGRATIONS: tuple[tuple[int, str, str], ...] = (
    (1, "fleet, samples, labels, uploads, directives, events, models, statistics", """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
INSERT INTO meta (key, value) VALUES ('fleet_epoch', '1');
CREATE TABLE nodes (
    node_id TEXT PRIMARY KEY, address TEXT NOT NULL DEFAULT '', identity TEXT NOT NULL DEFAULT '{}',
    joined_ms INTEGER NOT NULL, last_seen_ms INTEGER NOT NULL, models TEXT NOT NULL DEFAULT '[]',
    samples_received INTEGER NOT NULL DEFAULT 0, labels_received INTEGER NOT NULL DEFAULT 0,
    last_status TEXT NOT NULL DEFAULT '{}', directive_seq INTEGER NOT NULL DEFAULT 0,
    last_directive_applied INTEGER NOT NULL DEFAULT 0);
CREATE TABLE samples (
    id INTEGER PRIMARY KEY, model TEXT NOT NULL, sample_id TEXT NOT NULL, node_id TEXT NOT NULL,
    model_version INTEGER NOT NULL, routing_key TEXT NOT NULL, timestamp_ms INTEGER NOT NULL,
    received_ms INTEGER NOT NULL, payload BLOB NOT NULL);
CREATE UNIQUE INDEX samples_by_id ON samples (sample_id, model);
CREATE INDEX samples_by_key ON samples (model, routing_key, timestamp_ms) WHERE routing_key != '';
CREATE TABLE labels (
    sample_id TEXT NOT NULL, model TEXT NOT NULL, value REAL NOT NULL, received_ms INTEGER NOT NULL,
    node_id TEXT NOT NULL, writes INTEGER NOT NULL DEFAULT 1, PRIMARY KEY (sample_id, model));
CREATE TABLE pending_labels (
    id INTEGER PRIMARY KEY, model TEXT NOT NULL, sample_id TEXT NOT NULL, routing_key TEXT NOT NULL,
    timestamp_ms INTEGER NOT NULL, value REAL NOT NULL, received_ms INTEGER NOT NULL, node_id TEXT NOT NULL);
CREATE TABLE upload_batches (
    node_id TEXT NOT NULL, kind TEXT NOT NULL, batch_id TEXT NOT NULL, received_ms INTEGER NOT NULL,
    rows INTEGER NOT NULL, PRIMARY KEY (node_id, kind, batch_id)) WITHOUT ROWID;
CREATE TABLE directives (
    node_id TEXT NOT NULL, sequence INTEGER NOT NULL, kind TEXT NOT NULL, model TEXT NOT NULL DEFAULT '',
    version INTEGER NOT NULL DEFAULT 0, payload BLOB NOT NULL, created_ms INTEGER NOT NULL,
    result TEXT, error TEXT NOT NULL DEFAULT '', result_ms INTEGER, PRIMARY KEY (node_id, sequence));
CREATE TABLE events (
    id INTEGER PRIMARY KEY, at_ms INTEGER NOT NULL, kind TEXT NOT NULL, node_id TEXT NOT NULL DEFAULT '',
    detail TEXT NOT NULL DEFAULT '{}');
CREATE TABLE published_models (
    model TEXT NOT NULL, version INTEGER NOT NULL, sha256 TEXT NOT NULL, size INTEGER NOT NULL,
    created_ms INTEGER NOT NULL, PRIMARY KEY (model, version));
CREATE TABLE status_reports (
    id INTEGER PRIMARY KEY, node_id TEXT NOT NULL, at_ms INTEGER NOT NULL, report TEXT NOT NULL);
CREATE TABLE feature_stats (
    model TEXT NOT NULL, model_version INTEGER NOT NULL, tensor TEXT NOT NULL, is_output INTEGER NOT NULL,
    feature INTEGER NOT NULL, node_id TEXT NOT NULL, bucket_ms INTEGER NOT NULL, bin_edges TEXT NOT NULL,
    counts TEXT NOT NULL, n INTEGER NOT NULL, mean REAL NOT NULL, m2 REAL NOT NULL, nan_count INTEGER NOT NULL,
    psi REAL, PRIMARY KEY (model, model_version, tensor, is_output, feature, node_id, bucket_ms));
"""),
    (2, "indexes to join pending labels against each new batch", """
CREATE INDEX pending_by_id ON pending_labels (sample_id) WHERE sample_id != '';
CREATE INDEX pending_by_key ON pending_labels (model, routing_key) WHERE sample_id = '';
"""),
    (3, "per-model sample counters, so status never scans the samples table", """
CREATE TABLE model_samples (model TEXT PRIMARY KEY, samples INTEGER NOT NULL);
INSERT INTO model_samples (model, samples) SELECT model, count(*) FROM samples GROUP BY model;
"""),
    (4, "time indexes so old status reports, statistics windows and batch ids can be pruned", """
CREATE INDEX status_reports_by_time ON status_reports (at_ms);
CREATE INDEX feature_stats_by_time ON feature_stats (bucket_ms);
CREATE INDEX upload_batches_by_time ON upload_batches (received_ms);
"""),
    (5, "continuous training: registry and lineage (artifacts, executions, events), aliases, triggers, "
        "quarantine, evaluations, per-model loop state", """
CREATE TABLE ct_artifacts (
    id INTEGER PRIMARY KEY, model TEXT NOT NULL, type TEXT NOT NULL, version INTEGER NOT NULL DEFAULT 0,
    sha256 TEXT NOT NULL DEFAULT '', properties TEXT NOT NULL DEFAULT '{}', created_ms INTEGER NOT NULL);
CREATE INDEX ct_artifacts_by_model ON ct_artifacts (model, type, version);
CREATE TABLE ct_executions (
    id INTEGER PRIMARY KEY, model TEXT NOT NULL, run_id INTEGER NOT NULL DEFAULT 0, type TEXT NOT NULL,
    state TEXT NOT NULL, properties TEXT NOT NULL DEFAULT '{}', created_ms INTEGER NOT NULL);
CREATE INDEX ct_executions_by_run ON ct_executions (model, run_id);
CREATE TABLE ct_events (
    execution_id INTEGER NOT NULL, artifact_id INTEGER NOT NULL, kind TEXT NOT NULL,
    PRIMARY KEY (execution_id, artifact_id, kind)) WITHOUT ROWID;
CREATE INDEX ct_events_by_artifact ON ct_events (artifact_id);
CREATE TABLE ct_aliases (
    model TEXT NOT NULL, alias TEXT NOT NULL, version INTEGER NOT NULL, updated_ms INTEGER NOT NULL,
    PRIMARY KEY (model, alias)) WITHOUT ROWID;
CREATE TABLE ct_triggers (
    id INTEGER PRIMARY KEY, model TEXT NOT NULL, kind TEXT NOT NULL, kinds TEXT NOT NULL, at_ms INTEGER NOT NULL,
    evidence TEXT NOT NULL, run_id INTEGER NOT NULL DEFAULT 0, outcome TEXT NOT NULL DEFAULT '');
CREATE TABLE ct_quarantine (
    id INTEGER PRIMARY KEY, model TEXT NOT NULL, run_id INTEGER NOT NULL, batch_id TEXT NOT NULL,
    node_id TEXT NOT NULL, rows INTEGER NOT NULL, checks TEXT NOT NULL, reasons TEXT NOT NULL,
    at_ms INTEGER NOT NULL);
CREATE TABLE ct_evaluations (
    id INTEGER PRIMARY KEY, model TEXT NOT NULL, run_id INTEGER NOT NULL, blessed INTEGER NOT NULL,
    reason TEXT NOT NULL, metric TEXT NOT NULL, challenger REAL NOT NULL, champion REAL,
    detail TEXT NOT NULL, at_ms INTEGER NOT NULL);
CREATE TABLE ct_state (model TEXT PRIMARY KEY, state TEXT NOT NULL, updated_ms INTEGER NOT NULL);
"""),
    (6, "fleet delivery: signed manifests, rollouts and pins as JSON documents", """
CREATE TABLE delivery_docs (kind TEXT NOT NULL, key TEXT NOT NULL, doc TEXT NOT NULL, updated_ms INTEGER NOT NULL,
    PRIMARY KEY (kind, key));
"""),
    (7, "leases: the one coordinator (of several on one database) that runs the continuous-training loop", """
CREATE TABLE leases (name TEXT PRIMARY KEY, holder TEXT NOT NULL, expires_ms INTEGER NOT NULL,
    acquired_ms INTEGER NOT NULL, renewals INTEGER NOT NULL DEFAULT 0);
"""),
    (8, "shared artifacts: model files by sha256 in chunks, readable by every coordinator on the database", """
CREATE TABLE artifact_blobs (sha256 TEXT PRIMARY KEY, size INTEGER NOT NULL, chunks INTEGER NOT NULL,
    created_ms INTEGER NOT NULL);
CREATE TABLE artifact_chunks (sha256 TEXT NOT NULL, chunk INTEGER NOT NULL, data BLOB NOT NULL,
    PRIMARY KEY (sha256, chunk)) WITHOUT ROWID;
"""),
    (9, "lease epochs: a fencing token that grows on every takeover, checked by each write the leader makes", """
ALTER TABLE leases ADD COLUMN epoch INTEGER NOT NULL DEFAULT 0;
"""),
)

#: statements PostgreSQL runs after a migration's translated text (same version, same transaction)
POSTGRES_EXTRA: dict[int, str] = {
    # SQLite's implicit rowid orders labels by arrival (an upsert keeps it); PostgreSQL needs the column
    1: "ALTER TABLE labels ADD COLUMN rowid BIGINT GENERATED ALWAYS AS IDENTITY UNIQUE",
}

_PG_TYPES = ((re.compile(r"\bINTEGER PRIMARY KEY\b"), "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY"),
             (re.compile(r"\bINTEGER\b"), "BIGINT"),
             (re.compile(r"\bREAL\b"), "DOUBLE PRECISION"),
             (re.compile(r"\bBLOB\b"), "BYTEA"),
             (re.compile(r"\)\s*WITHOUT ROWID"), ")"))


def postgres_sql(sql: str) -> str:
    """A migration's SQLite DDL in PostgreSQL's dialect (times in ms and ids need 64 bits)."""
    for pattern, replacement in _PG_TYPES:
        sql = pattern.sub(replacement, sql)
    return sql


def statements(sql: str) -> list[str]:
    return [s for s in (part.strip() for part in sql.split(";")) if s]


def migration_statements(version: int, sql: str, dialect: str) -> list[str]:
    """The statements of one migration for ``dialect`` ("sqlite" or "postgres")."""
    if dialect == "sqlite":
        return statements(sql)
    return statements(postgres_sql(sql)) + statements(POSTGRES_EXTRA.get(version, ""))


def apply_migrations(conn) -> int:
    """Run the migrations ``conn`` has not seen; returns the schema version now in force."""
    conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY, "
                 "description TEXT NOT NULL, applied_ms INTEGER NOT NULL)")
    current = conn.execute("SELECT coalesce(max(version), 0) FROM schema_version").fetchone()[0]
    known = max(v for v, _, _ in MIGRATIONS)
    if current > known:
        raise RuntimeError(f"database schema version {current} is newer than this coordinator knows ({known})")
    for version, description, sql in MIGRATIONS:
        if version <= current:
            continue
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in migration_statements(version, sql, "sqlite"):
                conn.execute(statement)
            conn.execute("INSERT INTO schema_version (version, description, applied_ms) VALUES (?, ?, ?)",
                         (version, description, int(time.time() * 1000)))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        current = version
    return current
