"""The rollout planner: replayable canary choice, exponential waves, gates."""
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
    ok, ev = ro.check_gates(plan, [{"requests": 100, "failures": 0, "latency_p99_ms": 10.0}], champion, [],
                            accuracy=(0.80, 0.90))
    assert ok is False and "accuracy" in ev["failed"][0]
