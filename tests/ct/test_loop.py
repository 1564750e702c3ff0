"""The CT loop against a real coordinator (store, artifacts, core.publish), stepped with an injected clock.

Data goes in through the store's ingest path (as edge uploads do); the end-to-end test with real edge
nodes is ``test_loop_e2e.py``.
"""
from __future__ import annotations

import numpy as np
import pytest
from loopkit import MODEL, Feeder, champion, push, start_cloud, stream

from edgeloop.ct import registry
from edgeloop.ct.evaluation import predict

EDGES = ("edge-a", "edge-b")


@pytest.fixture
def clouds():
    started = []
    yield started
    for c in started:
        c.stop(1.0)


def cloud_with_champion(tmp_path, clouds, **training):
    cloud = start_cloud(tmp_path, **training)
    clouds.append(cloud)
    push(cloud, champion())
    return cloud, Feeder(cloud.store)


def serving_version(cloud) -> int:
    return max(p.version for p in cloud.store.published_models() if p.model == MODEL)


def feed_rounds(cloud, feeder, rounds, changed_from=None, edges=EDGES, start=0, step_clock=None):
    """Each round: 100 rows per edge served by the current champion, then one loop step."""
    outcomes = []
    for k in range(start, start + rounds):
        for j, edge in enumerate(edges):
            x, y = stream(100, 1000 * k + j, changed=changed_from is not None and k >= changed_from)
            feeder.feed(edge, x, y, version=serving_version(cloud))
        outcomes += cloud.ct.step(step_clock(k) if step_clock else 1000.0 + k)
    return outcomes


def test_concept_change_fires_with_evidence_retrains_and_recovers(tmp_path, clouds):
    cloud, feeder = cloud_with_champion(tmp_path, clouds)
    runs = feed_rounds(cloud, feeder, 12, changed_from=6)
    published = [r for r in runs if r.state == "published"]
    assert len(published) == 1 and published[0].version == 2, runs
    fired = cloud.store.triggers(MODEL)
    assert fired[0]["kind"] in ("performance", "drift")
    assert "below the champion's validation" in fired[0]["evidence"] or "drift: feature" in fired[0]["evidence"]
    assert fired[0]["outcome"].startswith("published: version 2")
    # the new champion recovers on the new concept; the old one is at chance there
    x, y = stream(2000, 99, changed=True)
    new = cloud.artifacts.read(cloud.store.published_models()[-1].sha256, 0, 1 << 20)
    acc_new = float(predict(new, x).score("accuracy", y))
    acc_old = float(predict(champion(), x).score("accuracy", y))
    x0, y0 = stream(2000, 98)
    acc_before = float(predict(champion(), x0).score("accuracy", y0))
    assert acc_old < 0.7 and acc_new > acc_before - 0.05, (acc_old, acc_new, acc_before)
    # lineage: trigger, data window after the change, code version and seed, evaluation, compression
    info = registry.lineage(cloud.store, MODEL, 2)
    assert info["trigger"]["kind"] == fired[0]["kind"] and info["seed"] == 0 and info["code_version"]
    assert info["data_window"]["scope"].startswith("the newest") and "after the change" in info["data_window"]["scope"]
    assert set(info["data_window"]["rows_per_edge"]) == set(EDGES)
    assert info["evaluation"]["blessed"] and info["compression"]["chosen"]
    assert cloud.store.aliases(MODEL) == {"champion": 2, "challenger": 2}
    assert "trigger: " in registry.describe(info)
    # the reference of version 2 is built from rows version 2 served, and it stays quiet on them
    more = feed_rounds(cloud, feeder, 8, changed_from=0, start=20)
    assert more == [] and len(cloud.store.triggers(MODEL)) == 1
    assert cloud.ct.models[MODEL].profile is not None and cloud.ct.models[MODEL].champion_version == 2


def test_stationary_stream_of_the_same_length_never_retrains(tmp_path, clouds):
    cloud, feeder = cloud_with_champion(tmp_path, clouds)
    runs = feed_rounds(cloud, feeder, 20)
    assert runs == [] and cloud.store.triggers(MODEL) == []
    assert serving_version(cloud) == 1
    latest = cloud.ct.latest()[MODEL]
    assert ("accuracy", "performance", "fleet") in latest and not any(a for _, _, a in latest.values())


def test_poisoned_edge_is_quarantined_and_left_out_of_training(tmp_path, clouds):
    # the per-edge check compares each edge with the others pooled, so the poisoned edge is a minority of 4
    cloud, feeder = cloud_with_champion(tmp_path, clouds, train_rows=1200)
    edges = ("edge-a", "edge-b", "edge-c", "edge-d")
    for k in range(3):
        for j, edge in enumerate(edges):
            x, y = stream(100, 500 * k + j)
            feeder.feed(edge, x, 1.0 - y if edge == "edge-c" else y)  # edge-c's labels are flipped
    cloud.ct.request_retrain(MODEL, "test: poisoned edge")
    (run,) = cloud.ct.step(2000.0)
    quarantined = cloud.store.quarantine(MODEL)
    assert quarantined and {q["node_id"] for q in quarantined} == {"edge-c"}
    assert all("edge_labels" in q["checks"] for q in quarantined)
    assert any("labels relate" in r for q in quarantined for r in q["reasons"])
    window = cloud.store.artifacts(MODEL, "data_window")[-1]["properties"]
    assert "edge-c" not in window["clean_rows_per_edge"] and window["rows_per_edge"]["edge-c"] == 300
    training = [s for s in cloud.store.executions(MODEL, run.run_id) if s["type"] == "training"][0]
    assert window["rows_clean"] == 900 and sorted(window["clean_rows_per_edge"]) == ["edge-a", "edge-b", "edge-d"]
    assert training["properties"]["rows"] + training["properties"]["validation_rows"] < 900  # holdout apart
    assert cloud.store.triggers(MODEL)[0]["kind"] == "manual"


def test_a_worse_challenger_is_not_blessed_and_the_champion_stays(tmp_path, clouds):
    # a tiny window (48 training rows) against a champion trained on 1600 rows of the same concept
    cloud, feeder = cloud_with_champion(tmp_path, clouds, train_rows=120, min_clean_rows=20,
                                        holdout_fraction=0.5)
    for k in range(2):
        for j, edge in enumerate(EDGES):
            x, y = stream(100, 700 * k + j)
            feeder.feed(edge, x, y)
    cloud.ct.request_retrain(MODEL, "test: tiny window")
    (run,) = cloud.ct.step(2000.0)
    assert run.state == "refused" and "evaluation refused" in run.reason
    (ev,) = cloud.store.evaluations(MODEL)
    assert not ev["blessed"] and ev["reason"].startswith("refused") and ev["challenger"] < ev["champion"]
    assert serving_version(cloud) == 1 and cloud.store.aliases(MODEL) == {"champion": 1}
    assert cloud.store.triggers(MODEL)[0]["outcome"].startswith("refused")


def _published_after_change(tmp_path, clouds, name):
    cloud, feeder = cloud_with_champion(tmp_path / name, clouds)
    runs = feed_rounds(cloud, feeder, 12, changed_from=6)
    assert [r.state for r in runs] == ["published"], runs
    p = cloud.store.published_models()[-1]
    return cloud.artifacts.read(p.sha256, 0, p.size)


def test_same_data_and_seed_give_the_same_model_bytes_through_the_loop(tmp_path, clouds):
    a = _published_after_change(tmp_path, clouds, "a")
    b = _published_after_change(tmp_path, clouds, "b")
    assert a == b and a != champion()


def test_a_champion_the_loop_cannot_watch_is_said_once_and_skipped(tmp_path, clouds):
    from edgeloop.serving.demo_models import build_mlp

    cloud = start_cloud(tmp_path)
    clouds.append(cloud)
    model = build_mlp()
    sha, size = cloud.artifacts.put_bytes(model.SerializeToString())
    cloud.core.publish(MODEL, 1, sha, size, "push")
    assert cloud.ct.step(1.0) == []
    assert MODEL not in cloud.ct.unsupported or cloud.ct.unsupported[MODEL][0] == 1
    assert np.isfinite(1.0)


def test_volume_trigger_runs_on_a_stationary_stream_and_prediction_drift_is_watched(tmp_path, clouds):
    cloud, feeder = cloud_with_champion(tmp_path, clouds, volume=400)
    runs = feed_rounds(cloud, feeder, 8)
    fired = cloud.store.triggers(MODEL)
    assert fired and fired[0]["kind"] == "volume" and "400" in fired[0]["evidence"]
    assert runs and runs[0].state in ("published", "refused")  # stationary: usually no better than the champion
    latest = cloud.ct.latest()[MODEL]
    assert any(subject.startswith("p(") for _, subject, _ in latest)  # prediction drift on class probabilities


def test_a_step_that_breaks_ends_the_run_recorded_and_the_champion_stays(tmp_path, clouds, monkeypatch):
    cloud, feeder = cloud_with_champion(tmp_path, clouds)
    feed_rounds(cloud, feeder, 3)

    def broken(*args, **kwargs):
        raise RuntimeError("trainer exploded")

    monkeypatch.setattr("edgeloop.ct.loop.LogisticRegressionTrainer.fit", broken)
    cloud.ct.request_retrain(MODEL, "test: failure")
    (run,) = cloud.ct.step(5000.0)
    assert run.state == "failed" and "trainer exploded" in run.reason
    assert cloud.store.triggers(MODEL)[0]["outcome"].startswith("failed: RuntimeError")
    assert serving_version(cloud) == 1


def _challenger_sha(tmp_path, clouds, **training) -> str:
    cloud, feeder = cloud_with_champion(tmp_path, clouds, **training)
    feed_rounds(cloud, feeder, 3)
    cloud.ct.request_retrain(MODEL, "test: weights")
    (run,) = cloud.ct.step(5000.0)
    training_step = [s for s in cloud.store.executions(MODEL, run.run_id) if s["type"] == "training"][0]
    assert training_step["properties"]["half_life_rows"] == training.get("train_half_life")
    return training_step["outputs"][0][3]


def test_recency_weighting_changes_the_trained_model(tmp_path, clouds):
    equal = _challenger_sha(tmp_path / "equal", clouds)
    again = _challenger_sha(tmp_path / "again", clouds)
    weighted = _challenger_sha(tmp_path / "weighted", clouds, train_half_life=50.0)
    assert equal == again and weighted != equal


def test_same_model_bytes_in_another_process(tmp_path, clouds):
    """The loop's model bytes do not depend on the process (hash seeds, import order): a second
    interpreter running the same stream publishes the same sha256."""
    import hashlib
    import os
    import subprocess
    import sys
    from pathlib import Path

    here = hashlib.sha256(_published_after_change(tmp_path, clouds, "here")).hexdigest()
    script = (
        "import sys, hashlib; sys.path.insert(0, sys.argv[1])\n"
        "from pathlib import Path\n"
        "import test_loop as t\n"
        "clouds = []\n"
        "try:\n"
        "    print(hashlib.sha256(t._published_after_change(Path(sys.argv[2]), clouds, 'there')).hexdigest())\n"
        "finally:\n"
        "    [c.stop(1.0) for c in clouds]\n")
    out = subprocess.run([sys.executable, "-c", script, str(Path(__file__).parent), str(tmp_path)],
                         capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONHASHSEED": "123"})
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == here
