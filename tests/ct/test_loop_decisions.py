"""The loop's decisions on a drifting stream: a waiting change run starves no regular retrain, and a run
after a change is fitted and judged on enough rows (real coordinator, deterministic data, stepped clock)."""
from __future__ import annotations

import re

import pytest
from loopkit import MODEL, Feeder, champion, push, start_cloud, stream

from edgeloop.config import ConfigError
from edgeloop.config.training import parse_training

EDGES = ("edge-a", "edge-b")


@pytest.fixture
def clouds():
    started = []
    yield started
    for c in started:
        c.stop(1.0)


def serving_version(cloud) -> int:
    return max(p.version for p in cloud.store.published_models() if p.model == MODEL)


def feed(cloud, feeder, rounds, changed_from, start=0):
    """Each round: 100 rows per edge served by the current champion, then one loop step."""
    outcomes = []
    for k in range(start, start + rounds):
        for j, edge in enumerate(EDGES):
            x, y = stream(100, 1000 * k + j, changed=k >= changed_from)
            feeder.feed(edge, x, y, version=serving_version(cloud))
        outcomes += cloud.ct.step(1000.0 + k)
    return outcomes


def holdout_of(cloud, run_id: int) -> int:
    reason = cloud.store.evaluations(MODEL, run_id)[0]["reason"]
    return int(re.search(r"on (\d+) holdout rows", reason).group(1))


def test_a_due_volume_run_is_not_starved_by_a_change_run_waiting_for_rows(tmp_path, clouds):
    # the change run waits for 20,000 rows after the change (never, here); volume comes due every 600 rows
    cloud = start_cloud(tmp_path, volume=600, min_change_rows=20_000)
    clouds.append(cloud)
    push(cloud, champion())
    runs = feed(cloud, Feeder(cloud.store), 14, changed_from=5)
    assert runs, "a due volume trigger never ran while a drift/performance run waited"
    fired = {t["id"]: t for t in cloud.store.triggers(MODEL)}
    waited = [t for t in fired.values() if t["kind"] in ("drift", "performance")]
    assert waited and all(t["outcome"].startswith("superseded: a volume run") for t in waited), waited
    ran = [t for t in fired.values() if t["run_id"] == runs[0].run_id]
    assert ran and ran[0]["kind"] == "volume", ran
    scope = cloud.store.artifacts(MODEL, "data_window")[0]["properties"]["scope"]
    assert scope.startswith("the newest") and "after the change" not in scope, scope
    # the volume run fitted on the newest rows, which are mostly the new concept: it replaced the champion
    assert any(r.state == "published" for r in runs), runs


@pytest.mark.parametrize("train_rows", [1000, 4000])
def test_a_change_run_waits_for_enough_rows_and_is_judged_on_the_minimum_holdout(tmp_path, clouds, train_rows):
    # min_change_rows alone would run on 40 rows after the change; the holdout floor asks for 2 x 300
    cloud = start_cloud(tmp_path, min_change_rows=40, min_holdout_rows=300, holdout_fraction=0.1,
                        train_rows=train_rows)
    clouds.append(cloud)
    push(cloud, champion())
    runs = feed(cloud, Feeder(cloud.store), 16, changed_from=6)
    assert runs, "no run after the change"
    window = cloud.store.artifacts(MODEL, "data_window")[0]["properties"]
    if train_rows == 1000:  # >= half a window after the change: the run fits on those rows only
        assert "after the change" in window["scope"] and 600 <= window["rows"] <= 1000, window
    else:  # fewer than half a window after the change: the newest window (older rows too)
        assert "after the change" not in window["scope"] and window["rows"] > 1000, window
    assert holdout_of(cloud, runs[0].run_id) >= 300
    assert runs[0].state == "published", runs


def test_the_holdout_is_the_fraction_when_that_is_larger(tmp_path, clouds):
    from edgeloop.ct.loop import holdout_rows

    config = parse_training({"holdout_fraction": 0.25, "min_holdout_rows": 200}, "<test>")
    assert holdout_rows(2000, config) == 500  # the fraction
    assert holdout_rows(400, config) == 200  # the floor
    assert holdout_rows(300, config) == 150  # never more than half: the challenger needs rows to train on


def test_min_holdout_rows_is_checked():
    with pytest.raises(ConfigError) as info:
        parse_training({"min_holdout_rows": 0}, "<test>")
    assert "min_holdout_rows" in str(info.value) and "0" in str(info.value)


def test_validation_fraction_is_checked_and_used(tmp_path, clouds):
    with pytest.raises(ConfigError) as info:
        parse_training({"validation_fraction": 0.8}, "<test>")
    assert "validation_fraction" in str(info.value) and "0.8" in str(info.value)
    cloud = start_cloud(tmp_path, volume=400, validation_fraction=0.1, holdout_fraction=0.25, train_rows=800)
    clouds.append(cloud)
    push(cloud, champion())
    runs = feed(cloud, Feeder(cloud.store), 8, changed_from=100)
    assert runs
    training = [e for e in cloud.store.executions(MODEL, runs[0].run_id) if e["type"] == "training"][0]["properties"]
    assert training["validation_rows"] == 60 and training["rows"] == 540, training  # 800 - 200 held out: 10%
