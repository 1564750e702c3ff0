"""Samples the edge marked hard (escalated) weigh ``[training] hard_example_weight`` in training."""
from __future__ import annotations

import numpy as np
from loopkit import FEATURES, INPUT, MODEL, Feeder, champion, push, start_cloud, stream

from edgeloop.coordinator.ct_link import decode_marked
from edgeloop.ct.evaluation import predict
from edgeloop.ct.trainers import LogisticRegressionTrainer
from edgeloop.ct.window import decode_rows
from edgeloop.protocol import mesh_pb2
from edgeloop.store import LabelRow, SampleRow


def payload(sid: str, x: np.ndarray, hard: bool) -> bytes:
    t = mesh_pb2.TensorData(name=INPUT, datatype="FP32", shape=[1, FEATURES], data=np.asarray(x, np.float32).tobytes())
    return mesh_pb2.Sample(sample_id=sid, model=MODEL, model_version=1, timestamp_ms=1, inputs=[t],
                           hard_example=hard).SerializeToString()


def mixed(n_easy: int, n_hard: int, seed: int):
    """Easy rows of the first concept, hard rows (marked) of the changed one, interleaved in time."""
    xe, ye = stream(n_easy, seed)
    xh, yh = stream(n_hard, seed + 1, changed=True)
    x, y = np.concatenate([xe, xh]), np.concatenate([ye, yh])
    hard = np.r_[np.zeros(n_easy, bool), np.ones(n_hard, bool)]
    order = np.random.default_rng(seed).permutation(len(x))
    return x[order], y[order], hard[order]


def test_hard_rows_weigh_more_in_the_trainers_dataset_and_change_what_it_learns():
    x, y, hard = mixed(900, 300, 5)
    rows = [(i + 1, f"s{i}", "edge-a", 1, 1000 + i, payload(f"s{i}", x[i], bool(hard[i])), float(y[i]))
            for i in range(len(x))]
    win = decode_rows(rows, decode_marked, INPUT, FEATURES)
    assert win.hard_rows == 300 and (win.hard == hard).all()
    assert win.dataset(hard_weight=1.0).weight is None  # the default changes nothing
    heavy = win.dataset(hard_weight=8.0)
    assert sorted(set(heavy.weight.tolist())) == [1.0, 8.0] and int((heavy.weight == 8.0).sum()) == 300
    # the hard concept is learnt better when its rows weigh more
    xt, yt = stream(2000, 77, changed=True)
    scores = []
    for w in (1.0, 8.0):
        data = win.dataset(hard_weight=w)
        model = LogisticRegressionTrainer().fit(data, data, seed=0).model
        scores.append(float(predict(model, xt).score("accuracy", yt)))
    assert scores[1] > scores[0] + 0.05, scores


def train_once(tmp_path, weight: float) -> str:
    """One manual run on the same mixed window; returns the challenger's sha256 (after checking lineage)."""
    cloud = start_cloud(tmp_path, hard_example_weight=weight)
    try:
        push(cloud, champion())
        feeder = Feeder(cloud.store)
        x, y, hard = mixed(600, 200, 9)
        rows, labels = [], []
        for i in range(len(x)):
            feeder.ts += 10
            sid = f"h{i}"
            rows.append(SampleRow(MODEL, sid, 1, "", feeder.ts, payload(sid, x[i], bool(hard[i]))))
            labels.append(LabelRow(sid, MODEL, "", 0, float(y[i]), feeder.ts))
        cloud.store.ingest_samples("edge-a", "s-h", rows, feeder.ts)
        cloud.store.ingest_labels("edge-a", "l-h", labels, feeder.ts)
        cloud.ct.request_retrain(MODEL, "test: hard examples")
        (run,) = cloud.ct.step(1000.0)
        (training,) = [s for s in cloud.store.executions(MODEL, run.run_id) if s["type"] == "training"]
        assert training["properties"]["hard_examples"] == {"rows": 200, "weight": weight}
        (challenger,) = [a for a in cloud.store.artifacts(MODEL, "model")
                         if a["properties"].get("role") == "challenger"]
        return challenger["sha256"]
    finally:
        cloud.stop(1.0)


def test_the_loop_trains_with_the_configured_hard_example_weight_and_records_it(tmp_path):
    plain, heavy, again = (train_once(tmp_path / name, w) for name, w in (("a", 1.0), ("b", 6.0), ("c", 1.0)))
    assert plain == again and heavy != plain  # same data and seed: only the weight changes the model
