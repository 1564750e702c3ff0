"""Dask trainers: the same model in process and on a LocalCluster (1 and 2 workers), the window read by the
workers from the store, the [training] keys that choose the backend.

Documented tolerance against the in-process trainers: the weights differ only by floating-point
summation order (per-chunk float64 sums combined in chunk order): |dask - inprocess| <= 1e-4 (float32
weights of order 1..10) and the holdout labels are identical.  Between worker counts the bytes are equal.
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from edgeloop.config import ConfigError, parse_cloud_config
from edgeloop.ct import onnx_export
from edgeloop.ct.trainers import Dataset, LogisticRegressionTrainer, MLPTrainer, TrainingError

pytest.importorskip("distributed", reason="the [dask] extra is not installed")

from edgeloop.ct.trainer_dask import DaskBackend, DaskSklearnTrainer, DaskTrainer, StoreWindow  # noqa: E402

TOL = 1e-4
MLP = MLPTrainer(hidden=(8,), batch_size=400, learning_rate=1e-2, max_epochs=6)


def blobs(n=3000, d=5, seed=0):
    """Three classes on very different feature scales (standardisation matters)."""
    rng = np.random.default_rng(seed)
    centers = np.random.default_rng(99).normal(size=(3, d)) * 1.5
    idx = rng.integers(0, 3, n)
    z = centers[idx] + rng.normal(size=(n, d))
    return (z * [1.0, 100.0, 0.01, 5.0, 1e3] + [0.0, 500.0, -3.0, 40.0, 1e4]).astype(np.float32), idx


@pytest.fixture(scope="module")
def data():
    x, y = blobs()
    w = np.linspace(0.5, 1.5, 2000)
    return Dataset(x[:2000], y[:2000], weight=w), Dataset(x[2000:2500], y[2000:2500]), Dataset(x[2500:], y[2500:])


@pytest.fixture(scope="module")
def two_workers():
    with DaskBackend("local", n_workers=2, timeout_s=60) as backend:
        backend.client()
        yield backend


def _same_model(a: bytes, b: bytes, holdout: Dataset) -> None:
    ma, mb = onnx_export.from_onnx(a), onnx_export.from_onnx(b)
    np.testing.assert_array_equal(ma.classes, mb.classes)
    np.testing.assert_allclose(ma.mean, mb.mean, rtol=1e-6)
    np.testing.assert_allclose(ma.inv_std, mb.inv_std, rtol=1e-6)
    for (wa, ba), (wb, bb) in zip(ma.layers, mb.layers):
        np.testing.assert_allclose(wa, wb, atol=TOL)
        np.testing.assert_allclose(ba, bb, atol=TOL)
    np.testing.assert_array_equal(ma.predict(holdout.X), mb.predict(holdout.X))


@pytest.mark.parametrize("base", [LogisticRegressionTrainer(), MLP], ids=["logistic", "mlp"])
def test_two_workers_give_the_in_process_model(base, data, two_workers):
    train, val, holdout = data
    local = base.fit(train, val, seed=7)
    dask = DaskTrainer(two_workers, base, chunk_rows=600).fit(train, val, seed=7)  # 4 chunks, uneven
    _same_model(local.model, dask.model, holdout)
    assert dask.report.n_train == len(train) and dask.report.iterations == local.report.iterations
    assert dask.report.validation["accuracy"] == pytest.approx(local.report.validation["accuracy"])
    assert dask.report.validation["accuracy"] > 0.8  # it learned


def test_warm_start_and_lbfgs_path_match(data, two_workers):
    train, val, holdout = data
    champion = LogisticRegressionTrainer().fit(train.take(np.arange(500)), val).model
    wide = LogisticRegressionTrainer(max_iter=200)
    noise = np.random.default_rng(5).normal(size=(3000, 90)).astype(np.float32)  # 95 features x 3 classes: L-BFGS

    def wide_(part, rows):
        return Dataset(np.hstack([part.X, noise[rows]]), part.y)

    wide_train, wide_val = wide_(train, slice(0, 2000)), wide_(val, slice(2000, 2500))
    local = wide.fit(wide_train, wide_val)
    dask = DaskTrainer(two_workers, wide, chunk_rows=700).fit(wide_train, wide_val)
    assert dask.report.params["solver"] == "lbfgs"
    _same_model(local.model, dask.model, wide_(holdout, slice(2500, 3000)))
    warm_local = LogisticRegressionTrainer().fit(train, val, warm_start=champion)
    warm_dask = DaskTrainer(two_workers, chunk_rows=700).fit(train, val, warm_start=champion)
    assert warm_dask.report.warm_started and warm_dask.report.initial_loss == pytest.approx(
        warm_local.report.initial_loss, rel=1e-9)
    _same_model(warm_local.model, warm_dask.model, holdout)


def test_one_worker_gives_the_same_bytes_as_two(data, two_workers):
    train, val, _ = data
    two = [DaskTrainer(two_workers, base, chunk_rows=600).fit(train, val, seed=3).model
           for base in (LogisticRegressionTrainer(), MLP)]
    with DaskBackend("local", n_workers=1, timeout_s=60) as one:
        ones = [DaskTrainer(one, base, chunk_rows=600).fit(train, val, seed=3).model
                for base in (LogisticRegressionTrainer(), MLP)]
    assert ones == two


def test_workers_read_the_window_from_the_store(tmp_path, data, two_workers):
    from edgeloop.coordinator.ct_link import decode_sample
    from edgeloop.ct.window import decode_rows
    from edgeloop.protocol import mesh_pb2
    from edgeloop.store import LabelRow, SampleRow, SqliteStore

    train, val, holdout = data
    store = SqliteStore(tmp_path / "coord.sqlite")
    try:
        rows = []
        for i in range(len(train)):
            t = mesh_pb2.TensorData(name="input", datatype="FP32", shape=[1, 5], data=train.X[i].tobytes())
            payload = mesh_pb2.Sample(sample_id=f"s{i}", model="m", model_version=1, timestamp_ms=1000 + i,
                                      inputs=[t]).SerializeToString()
            rows.append(SampleRow("m", f"s{i}", 1, "", 1000 + i, payload))
        store.ingest_samples("edge-a", "b1", rows, 5000)
        store.ingest_samples("edge-a", "b2", [SampleRow("m", "bad", 1, "", 9000, b"\xff not a sample")], 9000)
        labels = [LabelRow(f"s{i}", "m", "", 0, float(train.y[i]), 5000) for i in range(len(train))]
        store.ingest_labels("edge-a", "l1", labels[:700] + [LabelRow("bad", "m", "", 0, 1.0, 9000)] + labels[700:],
                            9000)
        # the coordinator's own reading of the newest 1800 rows, decoded in process
        mine = decode_rows(store.labelled_latest("m", 1800), decode_sample, "input", 5)
        assert mine.skipped == 1 and len(mine) == 1799
        local = LogisticRegressionTrainer().fit(Dataset(mine.X, mine.y), val)
        window = StoreWindow(str(store.path), "m", "input", 5, decode_sample, rows=1800)
        assert len(window.ranges(500)) == 4
        with pytest.raises(TrainingError, match="window.rows"):
            DaskTrainer(two_workers).fit_store(replace(window, rows=0), val)
        dask = DaskTrainer(two_workers, chunk_rows=500).fit_store(window, val)
        assert dask.report.n_train == 1799
        _same_model(local.model, dask.model, holdout)
    finally:
        store.close()


def test_the_local_cluster_listens_on_loopback_only(two_workers):
    import psutil

    procs = [psutil.Process(), *psutil.Process().children(recursive=True)]
    listening = {c.laddr.ip for p in procs for c in p.net_connections("inet") if c.status == psutil.CONN_LISTEN}
    assert len(procs) >= 3 and listening == {"127.0.0.1"}  # scheduler, http, 2 workers (and nannies)


def test_bad_settings_are_refused(data, two_workers):
    train, val, _ = data
    with pytest.raises(TrainingError, match="chunk_rows"):
        DaskTrainer(two_workers, chunk_rows=0).fit(train, val)
    with pytest.raises(TrainingError, match="scheduler"):
        DaskBackend("http://127.0.0.1:8786")
    with pytest.raises(TrainingError, match="n_workers"):
        DaskBackend("local", n_workers=0)
    bad = Dataset(train.X[:100], np.full(100, 0.5))
    with pytest.raises(TrainingError, match="integer class labels"):
        DaskTrainer(two_workers, chunk_rows=40).fit(bad, val)


def test_sklearn_path_runs_joblib_on_the_cluster(data, two_workers):
    pytest.importorskip("skl2onnx")
    from sklearn.ensemble import RandomForestClassifier

    from edgeloop.ct.trainer_sklearn import SklearnTrainer

    train, val, _ = data
    base = SklearnTrainer(RandomForestClassifier(n_estimators=8, max_depth=4, n_jobs=2))
    local = base.fit(train, val, seed=1)
    dask = DaskSklearnTrainer(two_workers, base).fit(train, val, seed=1)
    assert dask.model == local.model and dask.report.validation["accuracy"] > 0.8


# ------------------------------------------------------------------------------ config


def _training(tmp_path, **keys):
    return parse_cloud_config({"storage": {"database": "c.sqlite", "artifact_dir": "a"}, "training": keys},
                              base_dir=tmp_path).training


def test_config_backend_keys(tmp_path):
    t = _training(tmp_path)
    assert (t.backend, t.scheduler, t.n_workers) == ("inprocess", "local", 2)
    t = _training(tmp_path, backend="dask", scheduler="tcp://10.0.0.5:8786", n_workers=4, chunk_rows=1000)
    assert (t.backend, t.scheduler, t.n_workers, t.chunk_rows) == ("dask", "tcp://10.0.0.5:8786", 4, 1000)
    for key, value, words in (("backend", "spark", "'inprocess' or 'dask'"),
                              ("scheduler", "http://127.0.0.1:8786", "tcp://host:port"),
                              ("scheduler", "tcp://127.0.0.1:99999", "tcp://host:port"),
                              ("scheduler", "tcp://a b:1", "tcp://host:port"),
                              ("n_workers", 0, "1"), ("chunk_rows", 10, "100")):
        with pytest.raises(ConfigError) as err:
            _training(tmp_path, **{key: value})
        assert f"training.{key}" in str(err.value) and words in str(err.value) and str(value)[:8] in str(err.value)


def test_the_loop_trains_with_the_configured_backend(tmp_path):
    from edgeloop.ct.loop import CTLoop

    config = _training(tmp_path, backend="dask", n_workers=1, chunk_rows=500)
    loop = CTLoop(None, None, None, None, config)
    trainer = loop._trainer()
    assert isinstance(trainer, DaskTrainer) and trainer.chunk_rows == 500
    assert isinstance(trainer.base, LogisticRegressionTrainer) and trainer.backend.n_workers == 1
    assert loop._trainer().backend is trainer.backend  # one cluster per loop
    loop.stop()
    plain = CTLoop(None, None, None, None, replace(config, backend="inprocess", trainer="mlp"))
    assert isinstance(plain._trainer(), MLPTrainer)


def _loop_training_step(tmp_path, **training):
    from loopkit import MODEL, Feeder, champion, push, start_cloud, stream

    cloud = start_cloud(tmp_path, **training)
    try:
        push(cloud, champion())
        feeder = Feeder(cloud.store)
        for k in range(3):
            for j, edge in enumerate(("edge-a", "edge-b")):
                x, y = stream(100, 1000 * k + j)
                feeder.feed(edge, x, y)
        cloud.ct.step(1000.0)
        cloud.ct.request_retrain(MODEL, "test: backend")
        (run,) = cloud.ct.step(5000.0)
        step = [s for s in cloud.store.executions(MODEL, run.run_id) if s["type"] == "training"][0]
        backend = cloud.ct._dask
        started = backend is not None and backend._client is not None
    finally:
        cloud.stop(1.0)
    return run, step, backend, started


def test_a_loop_run_trains_on_the_configured_dask_cluster_and_stops_it(tmp_path, caplog):
    with caplog.at_level("INFO", logger="edgeloop.ct.dask"):
        run, step, backend, started = _loop_training_step(tmp_path / "dask", backend="dask", n_workers=1,
                                                          chunk_rows=100)
    # the loop handed the window to the workers by label ids (they read it from the store file)
    assert any("read by the workers from the store" in r.getMessage() for r in caplog.records)
    plain, plain_step, none, _ = _loop_training_step(tmp_path / "plain")
    assert started and backend._client is None and none is None  # started for the run, stopped with the loop
    assert run.state == plain.state and step["properties"]["rows"] == plain_step["properties"]["rows"]
    assert step["properties"]["validation"]["accuracy"] == pytest.approx(
        plain_step["properties"]["validation"]["accuracy"], abs=1e-9)
    assert step["properties"]["validation"]["log_loss"] == pytest.approx(
        plain_step["properties"]["validation"]["log_loss"], rel=1e-5)


# ------------------------------------------------------- the loop's window, read by the workers


def _stored_window(store, train: Dataset):
    """``train`` ingested as the coordinator stores it (one Sample payload per row, then its label); the
    window as the loop builds it (decoded in process) and the coordinator's decoder."""
    from edgeloop.coordinator.ct_link import decode_sample
    from edgeloop.ct.window import decode_rows
    from edgeloop.protocol import mesh_pb2
    from edgeloop.store import LabelRow, SampleRow

    d = train.n_features
    rows = []
    for i in range(len(train)):
        t = mesh_pb2.TensorData(name="input", datatype="FP32", shape=[1, d], data=train.X[i].tobytes())
        payload = mesh_pb2.Sample(sample_id=f"s{i}", model="m", model_version=1, timestamp_ms=1000 + (i * 7919) % 5000,
                                  inputs=[t]).SerializeToString()
        rows.append(SampleRow("m", f"s{i}", 1, "", 1000 + (i * 7919) % 5000, payload))  # time order != label order
    store.ingest_samples("edge-a", "b1", rows, 9000)
    store.ingest_labels("edge-a", "l1", [LabelRow(f"s{i}", "m", "", 0, float(train.y[i]), 9000)
                                         for i in range(len(train))], 9000)
    win = decode_rows(store.labelled_latest("m", len(train)), decode_sample, "input", d)
    return win, decode_sample


def _source_matches_in_process(store, data, backend, base):
    from edgeloop.ct.window_chunks import fit_window

    train, val, holdout = data
    win, decode = _stored_window(store, Dataset(train.X, train.y))
    ds = win.dataset()  # time-ordered, rows carry their label ids
    assert not np.array_equal(ds.slices["label_id"], np.sort(ds.slices["label_id"]))
    ds = replace(ds, weight=np.linspace(0.2, 2.0, len(ds)))
    local = fit_window(base, ds, val, store=store, decode=decode, model="m", input_name="input", n_features=5,
                       seed=11)
    dask = fit_window(DaskTrainer(backend, base, chunk_rows=700), ds, val, store=store, decode=decode, model="m",
                      input_name="input", n_features=5, seed=11)
    _same_model(local.model, dask.model, holdout)
    assert dask.report.n_train == len(ds) and dask.report.iterations == local.report.iterations
    return win, decode


@pytest.mark.parametrize("base", [LogisticRegressionTrainer(), MLP], ids=["logistic", "mlp"])
def test_the_loops_window_is_read_by_the_workers_from_sqlite(tmp_path, base, data, two_workers, caplog):
    from edgeloop.store import SqliteStore

    store = SqliteStore(tmp_path / "coord.sqlite")
    try:
        with caplog.at_level("INFO", logger="edgeloop.ct.dask"):
            _source_matches_in_process(store, data, two_workers, base)
        assert any("read by the workers" in r.getMessage() for r in caplog.records)
    finally:
        store.close()


def test_the_loops_window_is_read_by_the_workers_from_postgres(postgres_url, data, two_workers):
    from edgeloop.store.postgres import PostgresStore

    store = PostgresStore(postgres_url)
    try:
        assert store.worker_database() == postgres_url
        _source_matches_in_process(store, data, two_workers, LogisticRegressionTrainer())
    finally:
        store.close()


def test_a_window_row_gone_from_the_store_is_refused(tmp_path, data, two_workers):
    from edgeloop.ct.window_chunks import WindowSource
    from edgeloop.store import SqliteStore

    train, val, _ = data
    store = SqliteStore(tmp_path / "coord.sqlite")
    try:
        win, decode = _stored_window(store, Dataset(train.X[:300], train.y[:300]))
        ids = np.append(win.label_ids, 10_000_000)
        source = WindowSource(store.worker_database(), "m", "input", 5, decode, ids)
        with pytest.raises(TrainingError, match=r"1 rows of the window \(e.g. label ids \[10000000\]\)"):
            DaskTrainer(two_workers, chunk_rows=100).fit_source(source, val)
        with pytest.raises(TrainingError, match="label_ids: an id appears twice"):
            WindowSource(store.worker_database(), "m", "input", 5, decode, np.array([1, 1, 2]))
        assert SqliteStore(":memory:").worker_database() is None  # nothing a worker could open
    finally:
        store.close()
