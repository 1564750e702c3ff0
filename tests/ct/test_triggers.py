"""Trigger decisions: K consecutive windows, cooldowns, the concurrency limit, every kind's evidence."""
from __future__ import annotations

import pytest

import numpy as np

from edgeloop.ct.detectors import Adwin
from edgeloop.ct.drift import MonitorResult
from edgeloop.ct.performance import Metric
from edgeloop.ct.triggers import TriggerEngine, TriggerPolicy


def psi_result(value, alarm, feature="nswprice", slice_key="fleet"):
    return MonitorResult(
        "psi", feature, slice_key, value, 0.12, "calibrated p99 of reference chunks", alarm, 500,
        f"feature '{feature}' PSI {value:.2f} {'>' if alarm else '<='} 0.12 (calibrated p99 of reference chunks); "
        f"worst bin [0.08, 0.11): 4.1% → 17.9%")


def engine(**kw):
    policy = TriggerPolicy(**{"drift_windows": 3, "cooldown_s": {"drift": 1000.0}, **kw})
    return TriggerEngine("elec", policy, start=0.0)


def test_drift_fires_after_k_consecutive_windows_with_readable_evidence():
    e = engine()
    for t, alarm in enumerate([True, True, False, True, True]):  # the streak is broken at window 3
        e.observe_window([psi_result(0.31, alarm)])
        assert e.evaluate(float(t)).firing is None
    e.observe_window([psi_result(0.31, True)])
    firing = e.evaluate(5.0).firing
    assert firing is not None and firing.kind == "drift" and firing.model == "elec" and firing.at == 5.0
    assert firing.evidence == ("drift: feature 'nswprice' PSI 0.31 > 0.12 (calibrated p99 of reference chunks) "
                               "for 3 windows; worst bin [0.08, 0.11): 4.1% → 17.9%")


def test_streaks_are_per_monitor_feature_and_slice():
    e = engine()
    for i in range(3):  # alternating features: neither reaches 3 in a row
        e.observe_window([psi_result(0.3, i % 2 == 0, "a"), psi_result(0.3, i % 2 == 1, "b")])
    assert e.evaluate(1.0).firing is None
    e2 = engine()
    for _ in range(3):
        e2.observe_window([psi_result(0.3, True, "a", "edge-1"), psi_result(0.5, True, "b", "edge-2")])
    ev = e2.evaluate(1.0).firing.evidence
    assert ev.startswith("drift: feature 'b' PSI 0.50")  # the strongest first
    assert "also above threshold for 3+ windows: psi of 'a' (edge-1)" in ev


def test_cooldown_holds_a_ready_trigger_and_lets_it_fire_later():
    e = engine()
    for _ in range(3):
        e.observe_window([psi_result(0.4, True)])
    assert e.evaluate(10.0).firing.kind == "drift"
    for _ in range(3):
        e.observe_window([psi_result(0.4, True)])
    d = e.evaluate(500.0)
    assert d.firing is None and len(d.held) == 1
    assert d.held[0].kind == "drift" and "cooldown, last drift run 8.17 min ago < 16.7 min" in d.held[0].reason
    assert e.evaluate(1010.0).firing.kind == "drift"  # still ready once the cooldown is over


def test_concurrency_limit_holds_every_kind_including_manual():
    e = engine(max_concurrent=1)
    e.request_manual("new tariff data loaded")
    d = e.evaluate(1.0, running=1)
    assert d.firing is None and "held: 1 run(s) in progress, limit 1" in d.held[0].reason
    f = e.evaluate(2.0, running=0).firing
    assert f.kind == "manual" and f.evidence == "manual: requested: new tariff data loaded"
    assert e.evaluate(3.0).firing is None  # the request was consumed


def test_volume_and_schedule():
    e = engine(volume=1000, interval_s=3600.0, cooldown_s={"volume": 0.0})
    e.add_labelled(600)
    assert e.evaluate(10.0).firing is None
    e.add_labelled(400)
    f = e.evaluate(20.0).firing
    assert f.kind == "volume" and f.evidence == "volume: 1000 new labelled samples >= 1000 since the last run"
    assert e.evaluate(3000.0).firing is None
    f = e.evaluate(3620.0).firing
    assert f.kind == "schedule" and f.evidence == "schedule: 1 h since the last run >= interval 1 h"


def test_performance_is_judged_on_the_whole_interval():
    e = engine(performance_floor=0.7, performance_margin=0.05, min_labelled=200)
    e.observe_performance(Metric("accuracy", 0.69, 0.63, 0.76, 250, True), champion_score=0.8)
    assert e.evaluate(1.0).firing is None  # the interval still reaches the floor
    e.observe_performance(Metric("accuracy", 0.66, 0.60, 0.69, 150, True), champion_score=0.8)
    assert e.evaluate(2.0).firing is None  # too few labels to judge
    e.observe_performance(Metric("accuracy", 0.64, 0.60, 0.68, 400, True), champion_score=0.8)
    f = e.evaluate(3.0).firing
    assert f.kind == "performance"
    assert f.evidence == ("performance: accuracy 0.64 (95% CI 0.6–0.68, n=400) is below the floor 0.7 and below "
                          "the champion's validation 0.8 − 0.05 = 0.75 (whole interval)")
    low_is_good = engine(performance_metric="log_loss", performance_floor=0.5)
    low_is_good.observe_performance(Metric("log_loss", 0.7, 0.6, 0.8, 300, False))
    assert "above the floor 0.5" in low_is_good.evaluate(1.0).firing.evidence


def test_several_ready_kinds_fire_one_run_and_reset_together():
    e = engine(volume=10, cooldown_s={"drift": 0.0, "volume": 0.0})
    e.add_labelled(50)
    for _ in range(3):
        e.observe_window([psi_result(0.4, True)])
    f = e.evaluate(1.0).firing
    assert f.kind == "drift" and f.kinds == ("drift", "volume")
    assert "; volume: 50 new labelled samples" in f.evidence
    assert e.evaluate(2.0).firing is None  # the streak and the counter were reset


def test_bad_inputs_are_refused_with_the_field_named():
    with pytest.raises(ValueError, match="drift_windows"):
        TriggerPolicy(drift_windows=0)
    with pytest.raises(ValueError, match="cooldown_s"):
        TriggerPolicy(cooldown_s={"sometimes": 1.0})
    e = engine()
    with pytest.raises(ValueError, match="reason"):
        e.request_manual("   ")
    with pytest.raises(ValueError, match="running"):
        e.evaluate(1.0, running=-1)
    with pytest.raises(ValueError, match="'accuracy'"):
        e.observe_performance(Metric("f1_macro", 0.5, 0.4, 0.6, 300, True))


def test_state_survives_a_restart_through_json():
    import json

    e = engine(volume=100)
    e.add_labelled(40)
    for _ in range(2):
        e.observe_window([psi_result(0.31, True)])
    e.request_manual("check the new sensor")
    assert e.evaluate(5.0).firing.kind == "manual"
    e.request_manual("again")
    state = json.loads(json.dumps(e.to_state()))
    back = TriggerEngine.from_state(e.policy, state)
    assert back.to_state() == e.to_state()
    back.observe_window([psi_result(0.31, True)])  # the third window in a row, after the restart
    f = back.evaluate(6.0).firing
    assert f.kinds == ("manual", "drift") and "for 3 windows" in f.evidence
    with pytest.raises(ValueError, match="trigger state streaks"):
        TriggerEngine.from_state(e.policy, {**state, "streaks": [["psi", "x", "fleet", -1]]})
    with pytest.raises(ValueError, match="trigger state last_run"):
        TriggerEngine.from_state(e.policy, {**state, "last_run": "yesterday"})


def test_an_error_stream_change_is_a_performance_trigger():
    rng = np.random.default_rng(0)
    errors = np.concatenate([rng.random(2000) < 0.1, rng.random(500) < 0.3]).astype(float)
    found = Adwin().update_many(errors)
    e = engine()
    e.observe_detection(found[0])
    f = e.evaluate(1.0).firing
    assert f.kind == "performance"
    assert f.evidence.startswith("performance: the error stream changed: ADWIN: error rate 10.")
    assert "detected at sample" in f.evidence
    assert e.evaluate(2.0).firing is None  # consumed by the run


def test_only_the_asked_kinds_fire_and_the_others_keep_their_state():
    """While a change run waits for rows, the loop lets only the regular kinds fire: a pending performance
    alarm must neither fire again nor reset the volume counter."""
    e = engine(volume=300, performance_margin=0.05)
    e.observe_performance(Metric("accuracy", 0.64, 0.60, 0.68, 400, True), champion_score=0.8)
    e.add_labelled(200)
    assert e.evaluate(1.0, kinds=("manual", "volume", "schedule")).firing is None  # performance may not fire
    e.add_labelled(100)
    firing = e.evaluate(2.0, kinds=("manual", "volume", "schedule")).firing
    assert firing is not None and firing.kind == "volume" and firing.kinds == ("volume",)
    assert e.evaluate(3.0).firing.kind == "performance"  # still ready: it was not consumed
    with pytest.raises(ValueError, match="kinds"):
        e.evaluate(4.0, kinds=("sometimes",))
