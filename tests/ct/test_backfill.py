"""Backfill: a feature never served is computed from the logged raw stream by the same code, point in time."""
from __future__ import annotations

import struct

import numpy as np
import pytest

from edgeloop.coordinator.entity_history import decode_logged
from edgeloop.ct.backfill import backfill_from_store, shared_columns
from edgeloop.features import FeatureDefinition, LabelEvent, replay
from edgeloop.protocol import mesh_pb2
from edgeloop.store import LabelRow, SampleRow, SqliteStore

MODEL = "m"
D1 = FeatureDefinition.from_dict({
    "version": 1, "entity": "meter", "inputs": ["a", "b"],
    "features": [{"op": "lag", "col": "a", "k": 1}, {"op": "mean", "col": "b", "k": 3}, {"op": "label_lag", "k": 1}]})
D2 = FeatureDefinition.from_dict({
    "version": 1, "entity": "meter", "inputs": ["a", "b"],
    "features": [{"op": "lag", "col": "a", "k": 1}, {"op": "dev", "col": "b", "k": 4},
                 {"op": "mean", "col": "b", "k": 3}, {"op": "label_lag", "k": 1}, {"op": "label_mean", "k": 3},
                 {"op": "since_last"}]})
N = 80
LAG = 3  # each row's label reaches the owner three requests later


def logged_stream():
    """Rows, keys, feature times (the client's event clock) and served times (the edge's clock)."""
    rng = np.random.default_rng(5)
    keys = [f"k{int(i)}" for i in rng.integers(0, 4, N)]
    rows = rng.standard_normal((N, 2)).astype(np.float32)
    t = 500_000.0 + np.cumsum(rng.integers(1, 60, N)).astype(np.float64)  # event time, seconds
    served_ms = 1_800_000_000_000 + 1000 * np.arange(N)  # the edge's wall clock, another axis
    labels = (rows[:, 0] > 0).astype(np.float64)
    return keys, rows, t, served_ms, labels


def events_on_request_axis(keys, t, labels) -> list[LabelEvent]:
    # request j's label arrives after request j + LAG was served, before the next one
    return [LabelEvent(keys[j], labels[j], t[j], t[j + LAG] + 1e-3) for j in range(N - LAG)]


@pytest.fixture
def store(tmp_path):
    keys, rows, t, served_ms, labels = logged_stream()
    served = replay(D1, rows, keys, t, events_on_request_axis(keys, t, labels))  # what the edge served under D1
    s = SqliteStore(tmp_path / "c.sqlite")
    samples = []
    for i in range(N):
        raw = [mesh_pb2.TensorData(name=n, datatype="FP32", shape=[1], data=struct.pack("<f", rows[i, j]))
               for j, n in enumerate(D1.inputs)]
        seen = mesh_pb2.TensorData(name="x", datatype="FP32", shape=[1, D1.width], data=served.vectors[i].tobytes())
        sample = mesh_pb2.Sample(sample_id=f"s{i}", model=MODEL, model_version=1, routing_key=keys[i],
                                 timestamp_ms=int(served_ms[i]), inputs=[seen], raw_inputs=raw,
                                 feature_digest=D1.digest, feature_time=float(t[i]))
        samples.append(SampleRow(MODEL, f"s{i}", 1, keys[i], int(served_ms[i]), sample.SerializeToString()))
    s.ingest_samples("edge-a", "b1", samples, int(served_ms[-1]))
    for j in range(N - LAG):  # received between requests j + LAG and j + LAG + 1 (edge clock)
        s.ingest_labels("edge-a", f"l{j}", [LabelRow(f"s{j}", MODEL, "", 0, labels[j], int(served_ms[j + LAG]) + 500)],
                        int(served_ms[-1]))
    s.ingest_samples("edge-a", "b2", [SampleRow(MODEL, "plain", 1, "k0", int(served_ms[-1]) + 1, mesh_pb2.Sample(
        sample_id="plain", model=MODEL).SerializeToString())], int(served_ms[-1]))  # no raw inputs: skipped
    yield s, served
    s.close()


def test_backfilled_vectors_are_the_replay_under_the_new_definition_and_keep_what_was_served(store):
    s, served = store
    keys, rows, t, _served_ms, labels = logged_stream()
    result = backfill_from_store(s, MODEL, decode_logged, D2, now_ms=1, served=[D1], version=2)
    expected = replay(D2, rows, keys, t, events_on_request_axis(keys, t, labels))
    assert result.vectors.tobytes() == expected.vectors.tobytes()  # bit for bit
    assert result.sample_ids == tuple(f"s{i}" for i in range(N)) and result.skipped == 1
    pairs = shared_columns(D1, D2)
    assert [D2.output_names[b] for _a, b in pairs] == ["a", "b", "lag_a_1", "mean_b_3", "label_lag_1"]
    a, b = np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs])
    assert result.vectors[:, b].tobytes() == served.vectors[:, a].tobytes()  # the served columns, unchanged
    assert result.served_mismatches(D1) == 0
    assert result.new_features == ("dev_b_4", "label_mean_3", "since_last")
    # point in time: with labels visible as soon as their event happened, label features would differ
    leaky = replay(D2, rows, keys, t, [LabelEvent(keys[j], labels[j], t[j], t[j]) for j in range(N - LAG)])
    assert leaky.vectors.tobytes() != result.vectors.tobytes()
    window = result.window()
    assert len(window) == N - LAG and window.X.shape == (N - LAG, D2.width)
    assert window.y.tolist() == labels[: N - LAG].tolist()
    (art,) = s.artifacts(MODEL, "feature_backfill")
    props = art["properties"]
    assert props["backfilled_features"] == ["dev_b_4", "label_mean_3", "since_last"] and props["rows"] == N
    assert props["labelled_rows"] == N - LAG and props["definition_digest"] == D2.digest
    assert props["served_mismatch_rows"] == {D1.digest: 0} and props["samples_skipped"] == 1
    assert art["version"] == 2


def test_the_ct_loops_training_rows_are_backfilled_only_when_the_champion_declares_an_unserved_definition(store):
    from edgeloop.coordinator.ct_link import decode_sample
    from edgeloop.ct.backfill import training_window
    from edgeloop.ct.window import decode_rows

    s, served = store
    keys, rows, t, _served_ms, labels = logged_stream()
    for version in (1, 2):
        s.publish_model(MODEL, version, f"{version:064x}", 10, 1, "load")
    manifests = {1: {"features": D1.to_dict()}, 2: {"features": D2.to_dict()}}

    def manifest(model, version):
        return manifests.get(version) if model == MODEL else None

    chosen = s.labelled_latest(MODEL, 40)
    # the champion serves D1: the served vectors train, nothing is replayed
    data1 = decode_rows(chosen, decode_sample, "x", D1.width)
    assert training_window(s, manifest, decode_logged, MODEL, 1, chosen, data1, 5) is data1
    assert s.artifacts(MODEL, "feature_backfill") == []
    # the champion declares D2, never served: its training rows are the backfill, in the loop's row order
    data2 = decode_rows(chosen, decode_sample, "x", D2.width)
    assert len(data2) == 0 and data2.skipped == len(chosen)  # the served D1 vectors do not fit D2
    window = training_window(s, manifest, decode_logged, MODEL, 2, chosen, data2, 5)
    expected = replay(D2, rows, keys, t, events_on_request_axis(keys, t, labels)).vectors
    index = [int(sid[1:]) for sid in window.sample_ids]
    assert window.sample_ids == tuple(r[1] for r in chosen) and window.X.tobytes() == expected[index].tobytes()
    assert window.y.tolist() == [r[6] for r in chosen] and window.label_ids.tolist() == [r[0] for r in chosen]
    (art,) = s.artifacts(MODEL, "feature_backfill")
    assert art["properties"]["served_definitions"] == [D1.digest] and art["version"] == 2
