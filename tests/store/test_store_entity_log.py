"""The logged stream a feature-state rebuild and a backfill replay: per entity and per model, on both backends."""
from __future__ import annotations

import pytest

from edgeloop.store import LabelRow, PostgresStore, SampleRow, SqliteStore
from edgeloop.store.entity_log import MAX_HISTORY


@pytest.fixture(params=["sqlite", "postgres"])
def store(request, tmp_path):
    if request.param == "postgres":
        pytest.importorskip("psycopg", reason="PostgreSQL tests: psycopg is not installed")
        s = PostgresStore(request.getfixturevalue("postgres_url"))
    else:
        s = SqliteStore(tmp_path / "c.sqlite")
    yield s
    s.close()


def fill(store) -> None:
    # served out of id order on purpose: the stream is in served order (timestamp, then arrival)
    rows = [SampleRow("m", f"s{i}", 1, "k" if i % 2 == 0 else "j", 1000 + 10 * i, b"p%d" % i) for i in range(10)]
    store.ingest_samples("e1", "b1", rows[5:], 5000)
    store.ingest_samples("e1", "b2", rows[:5], 5001)
    store.ingest_samples("e1", "b3", [SampleRow("other", "s0", 1, "k", 1000, b"x")], 5002)
    # s2's label arrives last; s4's is sent twice (the later write wins and keeps its arrival place)
    store.ingest_labels("e1", "l1", [LabelRow("s4", "m", "", 0, 1.0, 6000), LabelRow("s0", "m", "", 0, 0.0, 6001)],
                        6001)
    store.ingest_labels("e1", "l2", [LabelRow("s2", "m", "", 0, 1.0, 6010)], 6010)
    store.ingest_labels("e1", "l3", [LabelRow("s4", "m", "", 0, 0.0, 6005)], 6005)


def test_an_entity_history_is_its_newest_rows_in_served_order_and_its_labels_in_arrival_order(store):
    fill(store)
    rows, labels = store.entity_history("m", "k", 3)
    assert [r.sample_id for r in rows] == ["s4", "s6", "s8"]
    assert [r.payload for r in rows] == [b"p4", b"p6", b"p8"] and rows[0].timestamp_ms == 1040
    assert [(r.sample_id, r.label, r.label_received_ms) for r in labels] == [
        ("s0", 0.0, 6001), ("s4", 0.0, 6005), ("s2", 1.0, 6010)]
    assert [r.sample_id for r in store.entity_history("m", "k", 2)[1]] == ["s4", "s2"]  # newest events' labels
    assert rows[0].label == 0.0 and rows[1].label is None  # a row carries its label when joined
    all_rows, all_labels = store.entity_history("m", "k", 100)
    assert [r.sample_id for r in all_rows] == ["s0", "s2", "s4", "s6", "s8"]
    assert [r.sample_id for r in all_labels] == ["s0", "s4", "s2"]
    assert store.entity_history("m", "nobody", 10) == ([], [])
    assert store.entity_history("other", "k", 10)[0][0].payload == b"x"
    assert len(store.entity_history("m", "k", 10**9)[0]) == 5  # the limit is clamped to MAX_HISTORY
    assert MAX_HISTORY >= 1024


def test_a_model_stream_is_every_key_in_served_order_with_its_labels(store):
    fill(store)
    stream = store.feature_stream("m")
    assert [r.sample_id for r in stream] == [f"s{i}" for i in range(10)]
    assert [r.routing_key for r in stream[:3]] == ["k", "j", "k"] and stream[0].node_id == "e1"
    assert {r.sample_id: (r.label, r.label_received_ms) for r in stream if r.label is not None} == {
        "s0": (0.0, 6001), "s2": (1.0, 6010), "s4": (0.0, 6005)}
    assert [r.sample_id for r in store.feature_stream("m", limit=2)] == ["s8", "s9"]
