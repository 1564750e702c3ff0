"""The SQL of the continuous-training tables (migration 5), mixed into ``SqliteStore``.

ML Metadata's model: artifacts (data windows, models, evaluations, compressed variants) and
executions (validation, training, evaluation, compression, publication) linked by events; one run
groups the executions of one trigger firing.  Beside them: aliases (champion/challenger), trigger
firings, quarantined batches, evaluations and the loop's per-model state.  Kept apart from
``sqlite.py`` only for size; it uses the same connections, lock and transactions.
"""
from __future__ import annotations

import json
from array import array
from typing import Sequence


#: a labelled sample as the loop reads it:
#: (label rowid, sample id, node id, model version that served it, timestamp ms, payload, label)
LabelledSample = tuple[int, str, str, int, int, bytes, float]

_LABELLED = ("SELECT l.rowid, s.sample_id, s.node_id, s.model_version, s.timestamp_ms, s.payload, l.value "
             "FROM labels l "
             "JOIN samples s ON s.sample_id = l.sample_id AND s.model = l.model WHERE l.model = ?")


class CtTables:
    """Registry, lineage, triggers, quarantine, evaluations and loop state (needs SqliteStore's plumbing)."""

    # ------------------------------------------------------------------ training data
    def labelled_since(self, model: str, after: int, limit: int) -> list[LabelledSample]:
        """Samples of ``model`` whose label was written after label rowid ``after``, in label order.

        Label rowids grow as labels arrive, so a late label (joined long after its sample) is still
        read once, when it comes.
        """
        with self._reading() as db:
            rows = db.execute(_LABELLED + " AND l.rowid > ? ORDER BY l.rowid LIMIT ?", (model, after, limit))
            return [(r[0], r[1], r[2], r[3], r[4], bytes(r[5]), r[6]) for r in rows]

    def labelled_latest(self, model: str, limit: int, after: int = 0) -> list[LabelledSample]:
        """The newest ``limit`` labelled samples of ``model`` (by label arrival, after label rowid ``after``),
        oldest first."""
        with self._reading() as db:
            rows = db.execute(_LABELLED + " AND l.rowid > ? ORDER BY l.rowid DESC LIMIT ?",
                              (model, after, limit)).fetchall()
        return [(r[0], r[1], r[2], r[3], r[4], bytes(r[5]), r[6]) for r in reversed(rows)]

    def labelled_latest_meta(self, model: str, limit: int, after: int = 0) -> dict:
        """The rows of :meth:`labelled_latest` without their payloads, as columns, oldest first: ``label_id``,
        ``ts_ms``, ``version`` (``array('q')``), ``label`` (``array('d')``), ``edge`` and ``sample_id`` (lists
        of str; one str object per edge).  What the coordinator keeps of a window the Dask workers read: a
        few bytes a row (compact stdlib arrays: the store imports no NumPy)."""
        ints = {k: array("q") for k in ("label_id", "version", "ts_ms")}
        labels = array("d")
        edges: list[str] = []
        sids: list[str] = []
        names: dict[str, str] = {}
        with self._reading() as db:
            cur = db.execute("SELECT l.rowid, s.sample_id, s.node_id, s.model_version, s.timestamp_ms, l.value "
                             "FROM labels l JOIN samples s ON s.sample_id = l.sample_id AND s.model = l.model "
                             "WHERE l.model = ? AND l.rowid > ? ORDER BY l.rowid DESC LIMIT ?", (model, after, limit))
            while True:  # in parts, so that only a part's Python objects exist at once
                part = cur.fetchmany(4096)
                if not part:
                    break
                ints["label_id"].extend(r[0] for r in part)
                ints["version"].extend(r[3] for r in part)
                ints["ts_ms"].extend(r[4] for r in part)
                labels.extend(float(r[5]) for r in part)
                edges.extend(names.setdefault(r[2], r[2]) for r in part)
                sids.extend(r[1] for r in part)
        out: dict = {}
        for key, column in (*ints.items(), ("label", labels)):
            column.reverse()
            out[key] = column
        edges.reverse()
        sids.reverse()
        out["edge"], out["sample_id"] = edges, tuple(sids)
        return out

    def labelled_count_since(self, model: str, after: int) -> int:
        """How many labels of ``model`` (joined to their samples) were written after label rowid ``after``."""
        with self._reading() as db:
            return db.execute("SELECT count(*) FROM labels l JOIN samples s ON s.sample_id = l.sample_id AND "
                              "s.model = l.model WHERE l.model = ? AND l.rowid > ?", (model, after)).fetchone()[0]

    # ------------------------------------------------------------------ loop state
    def ct_state(self, model: str) -> dict | None:
        with self._reading() as db:
            row = db.execute("SELECT state FROM ct_state WHERE model = ?", (model,)).fetchone()
        return None if row is None else json.loads(row[0])

    def set_ct_state(self, model: str, state: dict, now_ms: int) -> None:
        with self._transaction() as conn:
            conn.execute("INSERT INTO ct_state (model, state, updated_ms) VALUES (?, ?, ?) ON CONFLICT (model) "
                         "DO UPDATE SET state = excluded.state, updated_ms = excluded.updated_ms",
                         (model, json.dumps(state), now_ms))

    # ------------------------------------------------------------------ lineage
    def add_artifact(self, model: str, type_: str, properties: dict, now_ms: int, version: int = 0,
                     sha256: str = "") -> int:
        with self._transaction() as conn:
            return conn.execute("INSERT INTO ct_artifacts (model, type, version, sha256, properties, created_ms) "
                                "VALUES (?, ?, ?, ?, ?, ?)", (model, type_, version, sha256, json.dumps(properties),
                                                              now_ms)).lastrowid

    def set_artifact_version(self, artifact_id: int, version: int) -> None:
        with self._transaction() as conn:
            conn.execute("UPDATE ct_artifacts SET version = ? WHERE id = ?", (version, artifact_id))

    def add_execution(self, model: str, run_id: int, type_: str, state: str, properties: dict, now_ms: int,
                      inputs: Sequence[int] = (), outputs: Sequence[int] = ()) -> int:
        """One step of a run, with events linking the artifacts it read (inputs) and wrote (outputs)."""
        with self._transaction() as conn:
            eid = conn.execute("INSERT INTO ct_executions (model, run_id, type, state, properties, created_ms) "
                               "VALUES (?, ?, ?, ?, ?, ?)", (model, run_id, type_, state, json.dumps(properties),
                                                             now_ms)).lastrowid
            if run_id == 0 and type_ == "run":
                conn.execute("UPDATE ct_executions SET run_id = id WHERE id = ?", (eid,))
            conn.executemany("INSERT OR IGNORE INTO ct_events (execution_id, artifact_id, kind) VALUES (?, ?, ?)",
                             [(eid, a, "input") for a in inputs] + [(eid, a, "output") for a in outputs])
            return eid

    def finish_execution(self, execution_id: int, state: str, properties: dict) -> None:
        """Set a step's final state and merge ``properties`` into what it recorded."""
        with self._transaction() as conn:
            row = conn.execute("SELECT properties FROM ct_executions WHERE id = ?", (execution_id,)).fetchone()
            merged = {**(json.loads(row[0]) if row else {}), **properties}
            conn.execute("UPDATE ct_executions SET state = ?, properties = ? WHERE id = ?",
                         (state, json.dumps(merged), execution_id))

    def executions(self, model: str, run_id: int) -> list[dict]:
        """Every step of one run, in order, with the artifacts each read and wrote."""
        with self._reading() as db:
            rows = db.execute("SELECT id, type, state, properties, created_ms FROM ct_executions WHERE model = ? "
                              "AND run_id = ? ORDER BY id", (model, run_id)).fetchall()
            out = []
            for eid, type_, state, props, at in rows:
                links = db.execute("SELECT e.kind, a.id, a.type, a.version, a.sha256 FROM ct_events e JOIN "
                                   "ct_artifacts a ON a.id = e.artifact_id WHERE e.execution_id = ? ORDER BY a.id",
                                   (eid,)).fetchall()
                out.append({"id": eid, "type": type_, "state": state, "properties": json.loads(props),
                            "at_ms": at, "inputs": [list(x[1:]) for x in links if x[0] == "input"],
                            "outputs": [list(x[1:]) for x in links if x[0] == "output"]})
            return out

    def artifacts(self, model: str, type_: str | None = None, version: int | None = None) -> list[dict]:
        sql = "SELECT id, type, version, sha256, properties, created_ms FROM ct_artifacts WHERE model = ?"
        args: list = [model]
        if type_ is not None:
            sql, args = sql + " AND type = ?", [*args, type_]
        if version is not None:
            sql, args = sql + " AND version = ?", [*args, version]
        with self._reading() as db:
            rows = db.execute(sql + " ORDER BY id", args).fetchall()
        return [{"id": r[0], "type": r[1], "version": r[2], "sha256": r[3], "properties": json.loads(r[4]),
                 "at_ms": r[5]} for r in rows]

    def producing_run(self, artifact_id: int) -> int | None:
        """The run whose step wrote ``artifact_id`` (walks the output event back)."""
        with self._reading() as db:
            row = db.execute("SELECT x.run_id FROM ct_events e JOIN ct_executions x ON x.id = e.execution_id "
                             "WHERE e.artifact_id = ? AND e.kind = 'output' ORDER BY x.id LIMIT 1",
                             (artifact_id,)).fetchone()
        return None if row is None else row[0]

    # ------------------------------------------------------------------ aliases
    def set_alias(self, model: str, alias: str, version: int, now_ms: int) -> None:
        with self._transaction() as conn:
            conn.execute("INSERT INTO ct_aliases (model, alias, version, updated_ms) VALUES (?, ?, ?, ?) "
                         "ON CONFLICT (model, alias) DO UPDATE SET version = excluded.version, "
                         "updated_ms = excluded.updated_ms", (model, alias, version, now_ms))

    def aliases(self, model: str) -> dict[str, int]:
        with self._reading() as db:
            return dict(db.execute("SELECT alias, version FROM ct_aliases WHERE model = ?", (model,)).fetchall())

    # ------------------------------------------------------------------ triggers, quarantine, evaluations
    def add_trigger(self, model: str, kind: str, kinds: Sequence[str], at_ms: int, evidence: str,
                    run_id: int = 0) -> int:
        with self._transaction() as conn:
            return conn.execute("INSERT INTO ct_triggers (model, kind, kinds, at_ms, evidence, run_id) "
                                "VALUES (?, ?, ?, ?, ?, ?)", (model, kind, json.dumps(list(kinds)), at_ms,
                                                              evidence, run_id)).lastrowid

    def set_trigger_outcome(self, trigger_id: int, run_id: int, outcome: str) -> None:
        with self._transaction() as conn:
            conn.execute("UPDATE ct_triggers SET run_id = ?, outcome = ? WHERE id = ?", (run_id, outcome, trigger_id))

    def triggers(self, model: str | None = None, limit: int = 100) -> list[dict]:
        sql, args = "SELECT id, model, kind, kinds, at_ms, evidence, run_id, outcome FROM ct_triggers", []
        if model is not None:
            sql, args = sql + " WHERE model = ?", [model]
        with self._reading() as db:
            rows = db.execute(sql + " ORDER BY id DESC LIMIT ?", (*args, limit)).fetchall()
        return [{"id": r[0], "model": r[1], "kind": r[2], "kinds": json.loads(r[3]), "at_ms": r[4],
                 "evidence": r[5], "run_id": r[6], "outcome": r[7]} for r in reversed(rows)]

    def add_quarantine(self, model: str, run_id: int, records: Sequence[tuple], now_ms: int) -> None:
        """``records``: (batch_id, node_id, rows, checks, reasons) per quarantined batch (kept, never deleted)."""
        with self._transaction() as conn:
            conn.executemany("INSERT INTO ct_quarantine (model, run_id, batch_id, node_id, rows, checks, reasons, "
                             "at_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                             [(model, run_id, b, n, rows, json.dumps(list(c)), json.dumps(list(r)), now_ms)
                              for b, n, rows, c, r in records])

    def quarantine(self, model: str | None = None, limit: int = 200) -> list[dict]:
        sql, args = "SELECT model, run_id, batch_id, node_id, rows, checks, reasons, at_ms FROM ct_quarantine", []
        if model is not None:
            sql, args = sql + " WHERE model = ?", [model]
        with self._reading() as db:
            rows = db.execute(sql + " ORDER BY id DESC LIMIT ?", (*args, limit)).fetchall()
        return [{"model": r[0], "run_id": r[1], "batch_id": r[2], "node_id": r[3], "rows": r[4],
                 "checks": json.loads(r[5]), "reasons": json.loads(r[6]), "at_ms": r[7]} for r in reversed(rows)]

    def add_evaluation(self, model: str, run_id: int, blessed: bool, reason: str, metric: str, challenger: float,
                       champion: float | None, detail: dict, now_ms: int) -> int:
        with self._transaction() as conn:
            return conn.execute("INSERT INTO ct_evaluations (model, run_id, blessed, reason, metric, challenger, "
                                "champion, detail, at_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                                (model, run_id, int(blessed), reason, metric, challenger, champion,
                                 json.dumps(detail), now_ms)).lastrowid

    def evaluations(self, model: str, run_id: int | None = None) -> list[dict]:
        sql, args = ("SELECT id, run_id, blessed, reason, metric, challenger, champion, detail, at_ms "
                     "FROM ct_evaluations WHERE model = ?"), [model]
        if run_id is not None:
            sql, args = sql + " AND run_id = ?", [*args, run_id]
        with self._reading() as db:
            rows = db.execute(sql + " ORDER BY id", args).fetchall()
        return [{"id": r[0], "run_id": r[1], "blessed": bool(r[2]), "reason": r[3], "metric": r[4],
                 "challenger": r[5], "champion": r[6], "detail": json.loads(r[7]), "at_ms": r[8]} for r in rows]
