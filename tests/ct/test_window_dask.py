"""The CT loop with ``[training] backend = "dask"``: the workers read, decode and validate the window; the
coordinator keeps its small columns (label ids, edges, times, labels) and reads only the rows it evaluates.

One real 2-worker LocalCluster for the module; each loop connects to it by its tcp:// address.  The same
store content and seed must give the same decisions (quarantine, rows, evaluation) and, within the
tolerance of tests/ct/test_trainer_dask.py, the same model as the in-process loop.
"""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("distributed", reason="the [dask] extra is not installed")

from edgeloop.ct.trainer_dask import DaskBackend  # noqa: E402
from edgeloop.ct.validation import (Batch, ValidationPolicy, merge_summaries, summarise_batch,  # noqa: E402
                                    validate_batches, validation_context)

EDGES = ("edge-a", "edge-b", "edge-c", "edge-d")


@pytest.fixture(scope="module")
def cluster():
    with DaskBackend("local", n_workers=2, timeout_s=60) as backend:
        yield backend.client().scheduler.address


def _fleet(feeder, stream, rounds):
    """Four edges: edge-d's labels are flipped throughout; after the reference rows (rounds 0, 1) edge-c sends one
    batch far out of range on one feature (both must be quarantined, by the same rules, on either path)."""
    for k in rounds:
        for j, edge in enumerate(EDGES):
            x, y = stream(100, 100 * k + j)
            if edge == "edge-d":
                y = 1.0 - y
            if k == 2 and edge == "edge-c":
                x[:, 3] += 40.0
            feeder.feed(edge, x, y)


def _loop_run(tmp_path, **training):
    from loopkit import MODEL, Feeder, champion, push, start_cloud, stream

    # automatic triggers off: this run is the manual one, on the whole window
    cloud = start_cloud(tmp_path, train_rows=800, min_slice_samples=20, performance_margin=1.0, drift_windows=1000,
                        **training)
    reads = []
    latest = cloud.store.labelled_latest

    def counted(*args, **kw):  # delegates to the real store; records that the payloads came here
        rows = latest(*args, **kw)
        reads.append(len(rows))
        return rows

    cloud.store.labelled_latest = counted
    try:
        push(cloud, champion())
        feeder = Feeder(cloud.store)
        _fleet(feeder, stream, (0, 1))
        cloud.ct.step(1000.0)  # the champion's reference from its first served rows
        _fleet(feeder, stream, (2,))
        cloud.ct.request_retrain(MODEL, "test: window on the workers")
        (run,) = cloud.ct.step(5000.0)
        steps = {s["type"]: s for s in cloud.store.executions(MODEL, run.run_id)}
        window = cloud.store.artifacts(MODEL, "data_window")[-1]
        quarantine = sorted((q["batch_id"], tuple(q["checks"])) for q in cloud.store.quarantine(MODEL))
        evaluation = cloud.store.evaluations(MODEL, run.run_id)
    finally:
        cloud.stop(1.0)
    return run, steps, window, quarantine, evaluation, reads


def _props(a):
    return a.get("properties", a)


def test_the_workers_validate_the_window_with_the_in_process_decisions(tmp_path, cluster, caplog):
    with caplog.at_level("INFO", logger="edgeloop.ct.dask"):
        run, steps, window, quarantine, evaluation, reads = _loop_run(
            tmp_path / "dask", backend="dask", scheduler=cluster, chunk_rows=250)
    messages = [r.getMessage() for r in caplog.records]
    assert any("decoded and validated by the workers" in m for m in messages), messages
    assert any("read by the workers from the store" in m for m in messages), messages
    assert reads == [], "the Dask loop read the window's payloads into the coordinator"
    plain, psteps, pwindow, pquarantine, pevaluation, preads = _loop_run(tmp_path / "plain")
    assert preads  # the in-process loop does read them (the spy sees real calls)

    # the same quarantine decisions: edge-d (flipped labels) and edge-c's out-of-range batch
    checks = {c for _, cs in quarantine for c in cs}
    assert "edge_labels" in checks and "range" in checks, quarantine
    assert quarantine == pquarantine
    w, pw = _props(window), _props(pwindow)
    for key in ("rows", "rows_clean", "rows_per_edge", "clean_rows_per_edge", "quarantined", "summary", "notes"):
        assert w[key] == pw[key], key
    # the same training rows, model (validation metrics) and evaluation on the holdout
    assert (run.state, run.reason.split(":")[0]) == (plain.state, plain.reason.split(":")[0])
    t, pt = _props(steps["training"]), _props(psteps["training"])
    assert t["rows"] == pt["rows"] and t["validation_rows"] == pt["validation_rows"]
    assert t["validation"]["accuracy"] == pytest.approx(pt["validation"]["accuracy"], abs=1e-9)
    assert t["validation"]["log_loss"] == pytest.approx(pt["validation"]["log_loss"], rel=1e-5)
    (ev,), (pev,) = evaluation, pevaluation
    assert ev["blessed"] == pev["blessed"] and ev["reason"] == pev["reason"]
    assert ev["challenger"] == pytest.approx(pev["challenger"], abs=1e-12)
    assert ev["champion"] == pytest.approx(pev["champion"], abs=1e-12)


def test_a_window_without_rows_for_the_workers_is_not_trained_on_placeholders(tmp_path):
    """A placeholder window (label ids only) must never reach ``trainer.fit`` as if it were features."""
    from edgeloop.ct.trainers import Dataset, LogisticRegressionTrainer, TrainingError
    from edgeloop.ct.window_chunks import fit_window

    ph = Dataset(np.zeros((10, 1), np.float32), np.arange(10) % 2, slices={"label_id": np.arange(1, 11)})
    with pytest.raises(TrainingError, match="1 columns; expected 4 features"):
        fit_window(LogisticRegressionTrainer(), ph, ph, store=None, decode=None, model="m", input_name="input",
                   n_features=4)


def test_per_batch_summaries_merge_to_the_same_verdict():
    """Summaries computed apart (as on workers, without their batches) merge to validate_batches' verdict."""
    from edgeloop.ct.drift import build_reference
    from edgeloop.ct.validation import TensorSpec, check_request_ids

    rng = np.random.default_rng(3)
    ref = rng.normal(size=(600, 3))
    profile = build_reference(ref, ["input:0", "input:1", "input:2"], window=100, seed=0)
    sig = (TensorSpec("input", "float32", (-1, 3)),)
    batches = []
    for e in range(4):
        for k in range(2):
            x = rng.normal(size=(100, 3)).astype(np.float32)
            y = (x[:, 0] > 0).astype(np.float64)
            if e == 3:
                y = 1.0 - y  # flipped labels on one edge
            ids = tuple(f"e{e}-{k}-{i}" for i in range(100))
            if e == 1 and k == 1:
                ids = ids[:99] + ("e0-0-0",)  # a duplicate of an earlier batch's id
            batches.append(Batch(f"e{e}.{k}", f"e{e}", {"input": x}, y, ids))
    policy = ValidationPolicy(feature_input="input", label_domain=(0.0, 1.0))
    whole = validate_batches(batches, sig, profile, policy)
    pol, sig2, fi, labels = validation_context(sig, profile, policy)
    parts = [summarise_batch(b, sig2, profile, pol, fi, labels, keep_batch=False) for b in batches]
    seen: set = set()
    for b, s in zip(batches, parts):
        check_request_ids(s, b.request_ids, seen)
    merged = merge_summaries(parts, profile, pol, labels)
    assert [(q.batch_id, q.checks) for q in merged.quarantined] == [(q.batch_id, q.checks) for q in whole.quarantined]
    assert {"edge_labels", "duplicate_ids"} <= {c for q in whole.quarantined for c in q.checks}
    assert merged.summary == whole.summary and [b.batch_id for b in merged.clean] == [b.batch_id for b in whole.clean]


@pytest.fixture(params=["sqlite", "postgres"])
def any_store(request, tmp_path):
    from edgeloop.store import PostgresStore, SqliteStore

    s = SqliteStore(tmp_path / "c.sqlite") if request.param == "sqlite" else \
        PostgresStore(request.getfixturevalue("postgres_url"))
    yield s
    s.close()


def _fill(store):
    """4 edges x 150 rows (every 7th marked hard, edge-d's labels flipped), one payload that does not decode."""
    from loopkit import FEATURES, INPUT, MODEL, stream

    from edgeloop.protocol import mesh_pb2
    from edgeloop.store import LabelRow, SampleRow

    k = 0
    for part in range(3):
        for j, edge in enumerate(EDGES):
            x, y = stream(50, 10 * part + j)
            if edge == "edge-d":
                y = 1.0 - y
            rows, labels = [], []
            for i in range(50):
                k += 1
                sid, ts = f"{edge}-{k}", 1_700_000_000_000 + 10 * k
                t = mesh_pb2.TensorData(name=INPUT, datatype="FP32", shape=[1, FEATURES], data=x[i].tobytes())
                payload = mesh_pb2.Sample(sample_id=sid, model=MODEL, model_version=1, timestamp_ms=ts, inputs=[t],
                                          hard_example=k % 7 == 0).SerializeToString()
                if k == 177:
                    payload = b"\xff\x00 not a sample"
                rows.append(SampleRow(MODEL, sid, 1, "", ts, payload))
                labels.append(LabelRow(sid, MODEL, "", 0, float(y[i]), ts))
            store.ingest_samples(edge, f"s{k}", rows, k)
            store.ingest_labels(edge, f"l{k}", labels, k)


def test_the_worker_window_is_the_in_process_window_on_both_backends(any_store, cluster):
    """Small columns, decode skips, hard flags, validation verdict and materialised rows: the same as in process."""
    from loopkit import FEATURES, INPUT, MODEL

    from edgeloop.coordinator.ct_link import decode_marked
    from edgeloop.ct.drift import build_reference
    from edgeloop.ct.loop import _batches
    from edgeloop.ct.validation import TensorSpec
    from edgeloop.ct.window import decode_rows
    from edgeloop.ct.window_chunks import WorkerWindow

    _fill(any_store)
    meta = any_store.labelled_latest_meta(MODEL, 500, 0)
    assert set(meta) == {"label_id", "sample_id", "edge", "version", "ts_ms", "label"} and len(meta["label_id"]) == 500
    plain = decode_rows(any_store.labelled_latest(MODEL, 500, 0), decode_marked, INPUT, FEATURES)
    with DaskBackend(cluster, timeout_s=60) as backend:
        ww = WorkerWindow(backend.client(), any_store.worker_database(), MODEL, INPUT, FEATURES, decode_marked, 120)
        data = ww.window(meta)
        assert data.skipped == plain.skipped == 1 and "does not parse" in data.skip_reasons[0]
        for key in ("label_ids", "edges", "timestamps_ms", "versions", "y", "hard"):
            np.testing.assert_array_equal(getattr(data, key), getattr(plain, key), err_msg=key)
        assert data.sample_ids == plain.sample_ids and data.hard.any() and data.X.shape == (len(plain), 1)

        profile = build_reference(plain.X, [f"{INPUT}:{i}" for i in range(FEATURES)], window=100, seed=0)
        sig = (TensorSpec(INPUT, "float32", (-1, FEATURES)),)
        policy = ValidationPolicy(feature_input=INPUT, label_domain=(0.0, 1.0), min_clean_rows=50)
        pb, _ = _batches(plain, INPUT)
        want = validate_batches(pb, sig, profile, policy)
        wb, index = _batches(data, INPUT)
        got = ww.validate(wb, sig, profile, policy, data=data, index=index)
        assert [(q.batch_id, q.checks, q.reasons) for q in got.quarantined] == \
            [(q.batch_id, q.checks, q.reasons) for q in want.quarantined]
        assert "edge_labels" in {c for q in want.quarantined for c in q.checks}
        assert got.summary == want.summary and [n.text for n in got.notes] == [n.text for n in want.notes]

        ds = data.dataset(()).take(np.arange(150, 260))
        real = ww.materialise(ds)
        np.testing.assert_array_equal(real.X, plain.dataset().take(np.arange(150, 260)).X)
        np.testing.assert_array_equal(real.y, ds.y)
