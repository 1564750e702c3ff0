"""The rollout planner: replayable canary choice, exponential waves, gates."""
import pytest

from edgeloop.config import ConfigError, parse_cloud_config
from edgeloop.delivery import rollout as ro


def test_the_canary_is_a_pure_function_of_rollout_id_edges_and_weights_and_replays():
    weights = {f"edge-{i}": 1.0 for i in range(10)}
    a = ro.new_rollout("r-1", "m", 2, "0" * 64, 1, weights, {}, {}, ro.Plan(canary=2), 0, "test")
    b = ro.new_rollout("r-1", "m", 2, "0" * 64, 1, dict(reversed(list(weights.items()))), {}, {},
                       ro.Plan(canary=2), 5, "test")
    assert a["waves"] == b["waves"] and len(a["waves"][0]) == 2
    assert ro.replay_canary(a) == a["waves"][0]
    others = {tuple(ro.new_rollout(f"r-{i}", "m", 2, "", 1, weights, {}, {}, ro.Plan(canary=2), 0, "")["waves"][0])
              for i in range(20)}
    assert len(others) > 5  # different rollouts spread the canary role over the fleet
    heavy = dict(weights, **{"edge-3": 1000.0})
    picks = [ro.order_edges(f"r-{i}", "m", heavy)[0] for i in range(20)]
    assert picks.count("edge-3") >= 15  # weighted: a heavy edge is chosen first most of the time


def test_waves_grow_exponentially_and_pins_are_skipped():
    assert [len(w) for w in ro.make_waves([str(i) for i in range(15)], 1, 2.0)] == [1, 2, 4, 8]
    weights = {"a": 1.0, "b": 1.0, "c": 1.0, "d": 1.0}
    doc = ro.new_rollout("r", "m", 2, "", 1, weights, {"c": "eu", "d": "eu"}, {"a": 1, "zone:eu": 1},
                         ro.Plan(), 0, "")
    assert doc["pinned"] == ["a", "c", "d"] and doc["order"] == ["b"]
    assert doc["decisions"][0]["decision"] == "planned"


def test_gates_fail_on_errors_latency_drift_and_accuracy_and_wait_without_traffic():
    plan = ro.Plan(min_requests=20)
    champion = [{"requests": 1000, "failures": 0, "latency_p99_ms": 10.0}]
    ok, ev = ro.check_gates(plan, [{"requests": 100, "failures": 0, "latency_p99_ms": 11.0}], champion, [0.01])
    assert ok is True and not ev["failed"]
    assert ro.check_gates(plan, [{"requests": 5, "failures": 0, "latency_p99_ms": 1}], champion, [])[0] is None
    ok, ev = ro.check_gates(plan, [{"requests": 50, "failures": 50, "latency_p99_ms": 1}], champion, [])
    assert ok is False and "success" in ev["failed"][0]
    ok, ev = ro.check_gates(plan, [{"requests": 100, "failures": 0, "latency_p99_ms": 40.0}], champion, [])
    assert ok is False and "p99" in ev["failed"][0]
    ok, ev = ro.check_gates(plan, [{"requests": 100, "failures": 0, "latency_p99_ms": 10.0}], champion, [0.9])
    assert ok is False and "drift" in ev["failed"][0]
    worse = ro.accuracy_gate(plan, (70, 100), (90, 100), 0)
    ok, ev = ro.check_gates(plan, [{"requests": 100, "failures": 0, "latency_p99_ms": 10.0}], champion, [],
                            accuracy=worse)
    assert ok is False and "accuracy" in ev["failed"][0] and "p = " in ev["failed"][0]
    waiting = ro.accuracy_gate(plan, (3, 5), (90, 100), 0)
    ok, ev = ro.check_gates(plan, [{"requests": 100, "failures": 0, "latency_p99_ms": 10.0}], champion, [],
                            accuracy=waiting)
    assert ok is None and "waiting for 30 labelled" in ev["waiting"]


def test_the_accuracy_gate_fails_only_on_evidence_that_the_new_version_is_worse():
    plan = ro.Plan(min_labelled=30, max_accuracy_drop=0.02, accuracy_alpha=0.05, accuracy_wait_ms=60_000)
    # a clear, large loss on enough labels: fail, with the counts and the p-value as evidence
    ev = ro.accuracy_gate(plan, (60, 100), (90, 100), 1000)
    assert ev["verdict"] == "fail" and ev["p_value"] < 1e-4
    assert ev["new"] == {"correct": 60, "labelled": 100, "accuracy": 0.6} and ev["champion"]["accuracy"] == 0.9
    # the demo's case: 30 labelled requests that look 7 points worse are noise, not evidence
    ev = ro.accuracy_gate(plan, (24, 30), (87, 100), 1000)
    assert ev["verdict"] == "pass" and 0.05 < ev["p_value"] < 0.5, ev
    # the same observed drop on 20x the labels is evidence
    assert ro.accuracy_gate(plan, (480, 600), (1740, 2000), 1000)["verdict"] == "fail"
    # a loss within the allowed drop is never a failure, however many labels
    assert ro.accuracy_gate(plan, (8900, 10_000), (9000, 10_000), 1000)["verdict"] == "pass"
    # a better new version passes
    assert ro.accuracy_gate(plan, (95, 100), (80, 100), 1000)["verdict"] == "pass"
    # too few labels on either side: wait, then (bounded) pass on the other gates, saying so
    assert ro.accuracy_gate(plan, (0, 29), (90, 100), 59_999)["verdict"] == "wait"
    assert ro.accuracy_gate(plan, (0, 100), (9, 10), 1000)["verdict"] == "wait"
    late = ro.accuracy_gate(plan, (0, 29), (90, 100), 60_000)
    assert late["verdict"] == "timed_out" and "accuracy not judged" in late["note"]
    assert ro.accuracy_gate(plan, (0, 0), (0, 0), 0)["verdict"] == "no_labels"
    # a stricter significance needs stronger evidence for the same counts
    strict = ro.Plan(min_labelled=30, max_accuracy_drop=0.02, accuracy_alpha=1e-6)
    assert ro.accuracy_gate(strict, (60, 100), (80, 100), 0)["verdict"] == "pass"
    assert ro.accuracy_gate(plan, (60, 100), (80, 100), 0)["verdict"] == "fail"


def test_the_paired_gate_judges_the_same_requests_and_decides_when_it_has_enough_pairs():
    plan = ro.Plan(min_labelled=30, max_accuracy_drop=0.02, accuracy_alpha=0.05)
    # side by side the new version looks 30 points worse, but on its own requests the champion is no better
    ev = ro.accuracy_gate(plan, (60, 100), (90, 100), 0, paired=(100, 6, 5))
    assert ev["verdict"] == "pass" and ev["paired"]["difference"] == 0.01
    # the champion right on 25 of the new version's requests where it was wrong (and the reverse on 5): fail
    ev = ro.accuracy_gate(plan, (60, 100), (60, 100), 0, paired=(100, 25, 5))
    assert ev["verdict"] == "fail" and ev["p_value"] < 0.01
    ok, gates = ro.check_gates(plan, [], [], [], accuracy=ev)
    assert ok is False and "on the same 100 labelled requests" in gates["failed"][0]
    # too few pairs: the side-by-side counts decide (here: wait for labels)
    assert ro.accuracy_gate(plan, (10, 20), (90, 100), 0, paired=(20, 10, 0))["verdict"] == "wait"


def test_the_gate_settings_come_from_the_delivery_table_and_bad_ones_name_the_key(tmp_path):
    store = {"storage": {"database": "coord.sqlite"}}
    config = parse_cloud_config({**store, "delivery": {"min_labelled": 50, "max_accuracy_drop": 0.05,
                                                       "accuracy_alpha": 0.01, "accuracy_wait_s": 12}},
                                base_dir=tmp_path)
    d = config.delivery
    assert (d.min_labelled, d.max_accuracy_drop, d.accuracy_alpha, d.accuracy_wait_s) == (50, 0.05, 0.01, 12.0)
    for key, value in (("accuracy_alpha", 0.0), ("accuracy_alpha", 0.7), ("max_accuracy_drop", 1.5),
                       ("min_labelled", -1), ("accuracy_wait_s", -2)):
        with pytest.raises(ConfigError, match=f"delivery.{key}"):
            parse_cloud_config({**store, "delivery": {key: value}}, base_dir=tmp_path)
    training = parse_cloud_config({**store, "training": {"retry_after_rollback_s": 5, "hard_example_weight": 3}},
                                  base_dir=tmp_path).training
    assert (training.retry_after_rollback_s, training.hard_example_weight) == (5.0, 3.0)
    with pytest.raises(ConfigError, match="training.hard_example_weight"):
        parse_cloud_config({**store, "training": {"hard_example_weight": -1}}, base_dir=tmp_path)
