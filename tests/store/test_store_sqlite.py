"""The store on both backends (a real SQLite file; a real PostgreSQL database when one can be had):
migrations, idempotent ingest, label joins, directives, statistics."""
import math
import sqlite3

import pytest

from edgeloop.store import FeatureStatRow, LabelRow, PostgresStore, SampleRow, SqliteStore, StoreError
from edgeloop.store.migrations import MIGRATIONS
from edgeloop.store.sqlite import BUCKET_MS, merge_moments

try:
    import psycopg

    DB_ERRORS: tuple = (sqlite3.Error, psycopg.Error)
except ImportError:  # the PostgreSQL cases skip then
    DB_ERRORS = (sqlite3.Error,)


def rows(*ids, model="m", key="k", ts=1000):
    return [SampleRow(model, i, 1, key, ts, b"payload-" + i.encode()) for i in ids]


@pytest.fixture(params=["sqlite", "postgres"])
def store(request, tmp_path):
    if request.param == "sqlite":
        s = SqliteStore(tmp_path / "db" / "c.sqlite")
    else:
        s = PostgresStore(request.getfixturevalue("postgres_url"))
    yield s
    s.close()


def test_schema_is_versioned_wal_and_reopens_without_rerunning_migrations(tmp_path):
    path = tmp_path / "c.sqlite"
    s = SqliteStore(path)
    assert s.schema_version == max(v for v, _, _ in MIGRATIONS)
    s.ingest_samples("e1", "b1", rows("a"), 5)
    s.close()
    s.close()  # idempotent
    raw = sqlite3.connect(str(path))
    assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert raw.execute("SELECT count(*) FROM schema_version").fetchone()[0] == len(MIGRATIONS)
    raw.close()
    s = SqliteStore(path)
    assert s.sample_ids() == [("m", "a")] and s.nodes()[0].samples_received == 1
    s.close()
    with pytest.raises(StoreError):
        s.ingest_samples("e1", "b2", rows("b"), 5)


def test_a_newer_schema_is_refused(tmp_path):
    path = tmp_path / "c.sqlite"
    SqliteStore(path).close()
    raw = sqlite3.connect(str(path))
    raw.execute("INSERT INTO schema_version VALUES (999, 'future', 0)")
    raw.commit()
    raw.close()
    with pytest.raises(RuntimeError, match="newer"):
        SqliteStore(path)


def test_batches_are_idempotent_per_node_and_samples_distinct(store):
    assert store.ingest_samples("e1", "b1", rows("a", "b"), 5) == 2
    assert store.ingest_samples("e1", "b1", rows("a", "b"), 6) is None
    assert store.ingest_samples("e2", "b1", rows("c"), 7) == 1      # batch ids are per node
    assert store.ingest_samples("e1", "b2", rows("b", "d"), 8) == 1  # b already stored
    assert store.ingest_samples("e1", "b3", rows("b", model="other"), 8) == 1  # same id, other model
    counts = {n.node_id: n.samples_received for n in store.nodes()}
    assert counts == {"e1": 4, "e2": 1}
    assert len(store.sample_ids()) == 5


def test_a_failing_batch_leaves_nothing_behind(store):
    bad = rows("x") + [SampleRow("m", "y", 1, "k", 1, object())]  # cannot be bound: fails mid-batch
    with pytest.raises(DB_ERRORS):
        store.ingest_samples("e1", "b1", bad, 5)
    assert store.sample_ids() == [] and store.ingest_samples("e1", "b1", rows("x"), 5) == 1


def test_labels_last_write_wins_by_received_time_and_join_late(store):
    assert store.ingest_labels("e1", "l1", [LabelRow("a", "m", "", 0, 1.0, 100)], 5) == (1, 0)
    assert store.ingest_labels("e1", "l2", [LabelRow("a", "m", "", 0, 2.0, 50)], 5) == (1, 1)
    assert store.label_of("a", "m") == (1.0, 2)   # the older write lost, but was counted
    store.ingest_labels("", "imp1", [LabelRow("z", "", "", 0, 4.0, 10),            # model unknown, no sample
                                     LabelRow("", "m", "u1", 2000, 7.0, 10)], 5)   # by key + time
    counts = {c.model: (c.samples, c.labelled, c.labels, c.unjoined_labels) for c in store.model_counts()}
    assert counts == {"": (0, 0, 1, 1), "m": (0, 0, 2, 2)}  # a label naming no model waits under ""
    store.ingest_samples("e1", "b1", rows("a") + rows("z", key="u1", ts=1500) + rows("w", key="u1", ts=2500), 5)
    assert store.label_of("z", "m") == (7.0, 2)  # joined by id (4.0, received 10) and by key (7.0, received 10)
    (m,) = store.model_counts()
    assert (m.samples, m.labelled, m.labels, m.unjoined_labels) == (3, 2, 2, 0)
    assert store.ingest_labels("e1", "l1", [], 9) is None


def test_directive_sequences_persist_per_node(tmp_path):
    s = SqliteStore(tmp_path / "c.sqlite")
    assert [s.add_directive("e1", "load", b"p", 1, "m", v).sequence for v in (1, 2)] == [1, 2]
    assert s.add_directive("e2", "load", b"p", 1, "m", 1).sequence == 1
    assert s.directive_result("e1", 1, True, "", 5) and not s.directive_result("e1", 9, True, "", 5)
    s.close()
    s = SqliteStore(tmp_path / "c.sqlite")
    assert s.add_directive("e1", "report", b"", 2).sequence == 3
    assert [d.sequence for d in s.directives_after("e1", 1)] == [2, 3]
    assert s.has_directive("e1", "load", "m", 1) and s.directive_sequence("e1") == 3
    s.close()


def test_publish_assigns_versions_and_refuses_a_taken_one(store):
    store.join_node("e1", "", {}, [], 1)
    p, recs = store.publish_model("m", 0, "a" * 64, 10, 5, "load", lambda p: b"x")
    assert p.version == 1 and [r.node_id for r in recs] == ["e1"]
    assert store.publish_model("m", 0, "b" * 64, 10, 5, "load", lambda p: b"x")[0].version == 2
    with pytest.raises(StoreError, match="already published"):
        store.publish_model("m", 1, "c" * 64, 10, 5, "load", lambda p: b"x")
    assert [(p.model, p.version) for p in store.published_models(latest_only=True)] == [("m", 2)]


def test_delivery_documents_load_results_and_labelled_payloads(store):
    store.put_doc("rollout", "m:2", {"state": "running", "wave": 0}, 5)
    store.put_doc("rollout", "m:2", {"state": "done", "wave": 2}, 7)  # replaced under its key
    store.put_doc("manifest", "m:2", {"sha256": "a" * 64}, 6)
    assert store.get_doc("rollout", "m:2") == {"state": "done", "wave": 2} and store.get_doc("rollout", "x") is None
    assert store.docs("rollout") == [{"state": "done", "wave": 2}]
    store.delete_doc("manifest", "m:2")
    assert store.docs("manifest") == []
    store.join_node("e1", "", {"weight": 2.0}, [], 1)
    p, recs = store.publish_model("m", 0, "a" * 64, 10, 5, "load")  # registered only: no directives
    assert p.version == 1 and recs == []
    seq = store.add_directive("e1", "load", b"x", 6, model="m", version=1).sequence
    assert store.load_results("m", 1) == {"e1": None}
    store.directive_result("e1", seq, False, "bad bytes", 7)
    assert store.load_results("m", 1) == {"e1": "failed: bad bytes"}
    assert store.nodes()[0].identity == {"weight": 2.0}
    store.ingest_samples("e1", "b1", rows("a", "b"), 100)
    store.ingest_labels("e1", "l1", [LabelRow("a", "m", "", 0, 1.0, 100)], 100)
    assert store.labelled_payloads("m", 1, 50) == [(b"payload-a", 1.0)]
    assert store.labelled_payloads("m", 1, 101) == [] and store.labelled_payloads("m", 2, 0) == []


def test_feature_statistics_merge_per_edge_and_window(store):
    def stat(counts, n, mean, m2, psi=math.nan):
        return FeatureStatRow("m", 1, "input", False, 0, (0.0, 1.0, 2.0), counts, n, mean, m2, 0, psi)

    store.record_status("e1", {"requests": 5}, [], [stat((1, 1), 2, 0.5, 0.5)], 10)
    store.record_status("e1", {"requests": 9}, [], [stat((0, 2), 2, 1.5, 0.5, psi=0.2)], 20)
    store.record_status("e2", {}, [], [stat((3, 0), 3, 0.25, 0.1)], 10 + BUCKET_MS)
    (merged,) = store.feature_stats("m")
    assert merged.counts == (4, 3) and merged.n == 7
    n, mean, m2 = merge_moments(*merge_moments(2, 0.5, 0.5, 2, 1.5, 0.5), 3, 0.25, 0.1)
    assert merged.mean == pytest.approx(mean) and merged.m2 == pytest.approx(m2)
    assert store.feature_stats("m", node_id="e1")[0].counts == (1, 3)
    assert store.feature_stats("m", since_ms=BUCKET_MS)[0].counts == (3, 0)
    assert {n.node_id: n.last_status.get("requests") for n in store.nodes()} == {"e1": 9, "e2": None}


def test_pending_labels_join_only_samples_at_or_before_their_time(store):
    store.ingest_labels("", "l1", [LabelRow("", "m", "u", 1000, 1.0, 5)], 5)
    store.ingest_samples("e1", "b1", rows("late", key="u", ts=2000), 6)   # later than the label: no join
    assert store.label_of("late", "m") is None
    store.ingest_samples("e1", "b2", rows("early", key="u", ts=900), 7)   # arrives later, served earlier
    assert store.label_of("early", "m") == (1.0, 1)
    (c,) = store.model_counts()
    assert (c.labels, c.unjoined_labels) == (1, 0)


def test_a_failed_batch_leaves_pending_labels_to_join_later(store):
    store.ingest_labels("", "l1", [LabelRow("a", "m", "", 0, 1.0, 5)], 5)
    store.ingest_labels("", "l2", [LabelRow("b", "", "", 0, 1.0, 5)], 5)  # pending (no model)
    bad = rows("b") + [SampleRow("m", "c", 1, "k", 1, object())]
    with pytest.raises(DB_ERRORS):
        store.ingest_samples("e1", "b1", bad, 6)
    store.ingest_samples("e1", "b1", rows("b"), 6)
    assert store.label_of("b", "m") == (1.0, 1)


def test_an_older_database_is_migrated_with_its_data(tmp_path, monkeypatch):
    import edgeloop.store.migrations as migrations

    path = tmp_path / "old.sqlite"
    monkeypatch.setattr(migrations, "MIGRATIONS", MIGRATIONS[:2])   # the coordinator of schema v2
    old = SqliteStore(path)
    assert old.schema_version == 2
    old._conn.executemany("INSERT INTO samples (model, sample_id, node_id, model_version, routing_key, timestamp_ms, "
                          "received_ms, payload) VALUES (?, ?, 'e', 1, '', 1, 1, x'00')",
                          [("m", "a"), ("m", "b"), ("n", "c")])
    old.close()
    monkeypatch.undo()
    new = SqliteStore(path)
    assert new.schema_version == len(MIGRATIONS)
    assert {c.model: c.samples for c in new.model_counts()} == {"m": 2, "n": 1}
    new.ingest_samples("e", "b1", rows("d"), 5)
    assert {c.model: c.samples for c in new.model_counts()} == {"m": 3, "n": 1}
    new.close()


def test_status_history_and_statistics_windows_are_pruned(tmp_path):
    store = SqliteStore(tmp_path / "c.sqlite", history_ms=10 * BUCKET_MS)
    stat = FeatureStatRow("m", 1, "input", False, 0, (0.0, 1.0), (1,), 1, 0.5, 0.0, 0, math.nan)
    store.record_status("e1", {}, [], [stat], 0)
    store.record_status("e1", {}, [], [stat], 5 * BUCKET_MS)
    assert len(store.feature_stats("m")) == 1 and store.feature_stats("m")[0].n == 2
    store.record_status("e1", {"requests": 1}, [], [stat], 20 * BUCKET_MS)
    store.ingest_samples("e1", "old-batch", rows("a"), 1 * BUCKET_MS)
    store.prune_history(20 * BUCKET_MS)
    assert store.feature_stats("m")[0].n == 1                     # only the newest window is left
    assert store.ingest_samples("e1", "old-batch", rows("a"), 21 * BUCKET_MS) == 0  # id forgotten, no sample twice
    store.close()
    store = SqliteStore(tmp_path / "c.sqlite", history_ms=1)      # the first report after a start prunes
    store.record_status("e1", {}, [], [], 30 * BUCKET_MS)
    assert store.feature_stats("m") == []
    raw = sqlite3.connect(str(tmp_path / "c.sqlite"))
    assert raw.execute("SELECT count(*) FROM status_reports").fetchone()[0] == 1
    raw.close()
    store.close()
