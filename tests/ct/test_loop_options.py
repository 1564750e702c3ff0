"""The ``[training]`` choices the loop applies: the trainer (built-in or ``sklearn:<Name>``), the training
window (samples / days / all) and the declared slice features the blessing checks.

Each runs the loop in-process against a real coordinator (store, artifacts, core.publish), as
``test_loop.py`` does, with a manual trigger.
"""
from __future__ import annotations

import numpy as np
import pytest
from loopkit import MODEL, Feeder, champion, cloud_config, push, start_cloud, stream

from edgeloop.config.errors import ConfigError
from edgeloop.ct import trainer_sklearn
from edgeloop.ct.evaluation import predict

EDGES = ("edge-a", "edge-b")
needs_sklearn = pytest.mark.skipif(trainer_sklearn.available() is not None,
                                   reason=str(trainer_sklearn.available()))


@pytest.fixture
def clouds():
    started = []
    yield started
    for c in started:
        c.stop(1.0)


def cloud_with_champion(tmp_path, clouds, **training):
    training.setdefault("latency_ratio", 50.0)  # infra latency is not what these tests judge (shared CPU)
    cloud = start_cloud(tmp_path, **training)
    clouds.append(cloud)
    push(cloud, champion())
    return cloud, Feeder(cloud.store)


def feed(cloud, feeder, rounds, changed=False, start=0, data=None):
    for k in range(start, start + rounds):
        for j, edge in enumerate(EDGES):
            x, y = (data or stream)(100, 1000 * k + j, changed=changed)
            feeder.feed(edge, x, y, version=1)
        cloud.ct.step(1000.0 + k)


def manual_run(cloud):
    cloud.ct.request_retrain(MODEL, "test")
    (run,) = cloud.ct.step(5000.0)
    steps = {s["type"]: s for s in cloud.store.executions(MODEL, run.run_id)}
    return run, steps


@needs_sklearn
def test_the_loop_trains_publishes_and_serves_a_sklearn_hgb_challenger(tmp_path, clouds):
    cloud, feeder = cloud_with_champion(tmp_path, clouds, trainer="sklearn:HistGradientBoostingClassifier",
                                        trainer_options={"max_iter": 30, "max_depth": 3},
                                        latency_ratio=200.0)  # trees vs a linear champion, on a shared CPU
    feed(cloud, feeder, 4, changed=True)  # the new concept: the linear champion is at chance, trees learn it
    run, steps = manual_run(cloud)
    assert run.state == "published", run
    assert steps["training"]["properties"]["trainer"] == "sklearn:HistGradientBoostingClassifier"
    assert steps["training"]["properties"]["trainer_options"] == {"max_depth": 3, "max_iter": 30}
    served = cloud.store.published_models()[-1]
    model = cloud.artifacts.read(served.sha256, 0, served.size)
    import onnx

    assert any(n.op_type == "TreeEnsembleClassifier" for n in onnx.load_from_string(model).graph.node)
    x, y = stream(1000, 77, changed=True)
    assert float(predict(model, x).score("accuracy", y)) > 0.8


def built(tmp_path, **training):
    """The CT loop as the coordinator builds it: a sklearn trainer is checked here (config imports nothing)."""
    from edgeloop.ct.loop import CTLoop

    return CTLoop(None, None, None, None, cloud_config(tmp_path, **training).training)


def test_trainer_names_are_checked_with_file_and_key(tmp_path):
    with pytest.raises(ConfigError) as bad:
        cloud_config(tmp_path, trainer="boosted")
    assert "training.trainer" in str(bad.value) and "sklearn:<EstimatorName>" in str(bad.value)
    with pytest.raises(ConfigError) as form:
        cloud_config(tmp_path, trainer="sklearn:../x")
    assert "training.trainer" in str(form.value)
    with pytest.raises(ConfigError) as options:
        cloud_config(tmp_path, trainer="logistic", trainer_options={"max_iter": 3})
    assert "training.trainer_options" in str(options.value)
    if trainer_sklearn.available() is None:
        with pytest.raises(ConfigError) as unknown:
            built(tmp_path, trainer="sklearn:NoSuchForest")
        assert "training.trainer" in str(unknown.value) and "NoSuchForest" in str(unknown.value)
        with pytest.raises(ConfigError) as param:
            built(tmp_path, trainer="sklearn:HistGradientBoostingClassifier", trainer_options={"depth": 3})
        assert "'depth'" in str(param.value) and "max_depth" in str(param.value)
        assert built(tmp_path, trainer="sklearn:HistGradientBoostingClassifier", trainer_options={"max_depth": 3})


def test_missing_sklearn_extra_is_a_config_error(tmp_path, monkeypatch):
    monkeypatch.setattr(trainer_sklearn, "available", lambda: "the [sklearn] extra is not installed (test)")
    with pytest.raises(ConfigError) as bad:
        built(tmp_path, trainer="sklearn:HistGradientBoostingClassifier")
    assert "training.trainer" in str(bad.value) and "[sklearn] extra is not installed" in str(bad.value)


def test_window_days_trains_on_the_last_days_only(tmp_path, clouds):
    cloud, feeder = cloud_with_champion(tmp_path, clouds, window="days", train_days=1.0, train_rows=400)
    feed(cloud, feeder, 4)  # 800 rows, then three days pass
    feeder.ts += 3 * 86_400_000
    feed(cloud, feeder, 3, start=10)  # 600 rows in the last day
    run, steps = manual_run(cloud)
    window = steps["training"]["properties"]["window"]
    assert window == {"kind": "days", "size": 1.0, "rows": 600}, window
    assert run.state in ("published", "refused"), run


def test_window_samples_and_all(tmp_path, clouds):
    rows = {}
    for kind in ("samples", "all"):
        cloud, feeder = cloud_with_champion(tmp_path / kind, clouds, window=kind, train_rows=400)
        feed(cloud, feeder, 5)
        _, steps = manual_run(cloud)
        rows[kind] = steps["training"]["properties"]["window"]
    assert rows["samples"] == {"kind": "samples", "size": 400, "rows": 400}
    assert rows["all"] == {"kind": "all", "size": None, "rows": 1000}
    with pytest.raises(ConfigError) as bad:
        cloud_config(tmp_path, window="days")
    assert "training.train_days" in str(bad.value)
    with pytest.raises(ConfigError) as kind:
        cloud_config(tmp_path, window="weeks")
    assert "training.window" in str(kind.value)


def two_segments(n, seed, changed=False):
    """input:3 is a segment flag (30% ones): segment 0 follows the new concept, segment 1 keeps the old one.

    A linear challenger learns mostly the new concept: better overall, far worse on segment 1."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4)).astype(np.float32)
    x[:, 3] = (rng.random(n) < 0.3).astype(np.float32)
    x[:, 2] = 0.0
    y = np.where(x[:, 3] == 1, x[:, 0] + x[:, 1] > 0, x[:, 0] - x[:, 1] > 0).astype(np.float64)
    return x, y


def test_declared_slice_feature_refuses_a_challenger_that_regresses_on_one_value(tmp_path, clouds):
    outcomes = {}
    for declared in ((), ("input:3",)):
        cloud, feeder = cloud_with_champion(tmp_path / str(len(declared)), clouds, slice_features=list(declared))
        feed(cloud, feeder, 5, data=two_segments)
        outcomes[declared], _ = manual_run(cloud)
    plain, sliced = outcomes[()], outcomes[("input:3",)]
    assert plain.state == "published", plain  # per edge alone it is better everywhere
    assert sliced.state == "refused" and "slice input:3=1" in sliced.reason, sliced


def test_published_challenger_carries_its_reference_and_the_loop_uses_it(tmp_path, clouds):
    from edgeloop.ct.loop import MANIFEST_PROFILE_KEY

    cloud, feeder = cloud_with_champion(tmp_path, clouds)
    feed(cloud, feeder, 5, changed=True)
    run, steps = manual_run(cloud)
    assert run.state == "published", run
    doc = cloud.core.rollouts.manifest(MODEL, run.version)
    entry = doc["reference_stats"][MANIFEST_PROFILE_KEY]
    assert len(entry["profile"]["features"]) == 4 and 0.5 < entry["accuracy"] <= 1.0
    assert "from" in steps["publication"]["properties"]["reference"]
    # the new champion is monitored against the manifest's reference at once (no served rows needed)
    st = cloud.ct.models[MODEL]
    assert st.champion_version == run.version and st.profile is not None
    assert st.champion_score == entry["accuracy"]
    # a fresh loop (a coordinator restart without saved state) reads it from the manifest too
    from edgeloop.ct.loop import CTLoop

    fresh = CTLoop(cloud.store, cloud.artifacts, cloud.core.publish, lambda p, n: None, cloud.config.training,
                   manifest=cloud.core.rollouts.manifest)
    cloud.store.set_ct_state(MODEL, {"champion_version": 0, "champion_sha": "", "cursor": 0, "reference": "",
                                     "champion_score": None, "triggers": None}, 0)
    assert fresh._sync(MODEL).profile.to_json() == st.profile.to_json()
    # without a manifest reader the reference waits for served rows
    bare = CTLoop(cloud.store, cloud.artifacts, cloud.core.publish, lambda p, n: None, cloud.config.training)
    cloud.store.set_ct_state(MODEL, {"champion_version": 0, "champion_sha": "", "cursor": 0, "reference": "",
                                     "champion_score": None, "triggers": None}, 0)
    assert bare._sync(MODEL).profile is None


def test_a_profile_too_large_for_the_manifest_stays_out(tmp_path, clouds, monkeypatch):
    monkeypatch.setattr("edgeloop.ct.loop.MAX_MANIFEST_PROFILE_BYTES", 1000)
    cloud, feeder = cloud_with_champion(tmp_path, clouds)
    feed(cloud, feeder, 5, changed=True)
    run, steps = manual_run(cloud)
    assert run.state == "published", run
    assert "no reference in the manifest" in steps["publication"]["properties"]["reference"]
    assert "ct:profile" not in cloud.core.rollouts.manifest(MODEL, run.version)["reference_stats"]
    assert cloud.ct.models[MODEL].profile is None  # built from the rows the new champion serves
