"""The loop as the coordinator runs it: a thread started with the coordinator and stopped with it, and the
``[training]`` table that configures it (errors name the key, the value and what was expected)."""
from __future__ import annotations

import pytest
from loopkit import MODEL, Feeder, champion, push, start_cloud, stream, wait_for

from edgeloop.config import ConfigError, parse_cloud_config


def test_the_loop_thread_builds_the_reference_and_stops_with_the_coordinator(tmp_path):
    cloud = start_cloud(tmp_path, enabled=True, interval_ms=20)
    try:
        assert cloud.ct._thread is not None and cloud.ct._thread.is_alive()
        push(cloud, champion())
        feeder = Feeder(cloud.store)
        for k in range(5):
            x, y = stream(200, k)
            feeder.feed("edge-a", x, y)
        assert wait_for(lambda: any(kind == "ct_reference" for _, kind, _, _ in cloud.store.events()), timeout=30)
        assert cloud.ct.models[MODEL].profile is not None
        state = cloud.store.ct_state(MODEL)
        assert state["champion_version"] == 1 and state["reference"] and state["cursor"] > 0
    finally:
        cloud.stop(1.0)
    assert not cloud.ct._thread.is_alive()


def test_a_restarted_coordinator_resumes_the_reference_and_cursor(tmp_path):
    cloud = start_cloud(tmp_path)
    push(cloud, champion())
    feeder = Feeder(cloud.store)
    for k in range(5):
        x, y = stream(200, k)
        feeder.feed("edge-a", x, y)
    cloud.ct.step(1.0)
    before = cloud.store.ct_state(MODEL)
    cloud.stop(1.0)
    again = start_cloud(tmp_path)
    try:
        again.ct.step(2.0)
        st = again.ct.models[MODEL]
        assert st.profile is not None and st.cursor == before["cursor"]
        assert st.champion_score == before["champion_score"]
    finally:
        again.stop(1.0)


@pytest.mark.parametrize("key,value,expected", [
    ("monitor_window", 5, "an integer"),
    ("trainer", "forest", "'logistic', 'mlp' or 'sklearn:<EstimatorName>'"),
    ("holdout_fraction", 0.95, "a number in (0, 0.9]"),
    ("cooldown_s", -1, "seconds >= 0"),
    ("bogus", 1, "monitor_window"),
])
def test_training_table_errors_name_the_key(tmp_path, key, value, expected):
    with pytest.raises(ConfigError) as err:
        parse_cloud_config({"storage": {"database": "c.sqlite"}, "training": {key: value}}, base_dir=tmp_path)
    assert key in str(err.value) and expected in str(err.value)


def test_training_table_defaults_and_values(tmp_path):
    config = parse_cloud_config({"storage": {"database": "c.sqlite"}}, base_dir=tmp_path)
    assert config.training.enabled and config.training.trainer == "logistic"
    config = parse_cloud_config({"storage": {"database": "c.sqlite"},
                                 "training": {"enabled": False, "monitor_window": 300, "seed": 7}}, base_dir=tmp_path)
    assert not config.training.enabled and config.training.monitor_window == 300 and config.training.seed == 7
