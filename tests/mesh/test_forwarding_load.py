"""Forwarding under load: two real nodes forwarding to each other at once never wait on each other.

Every request below is sent to the node that does *not* own its key, so each one is forwarded, in
both directions at once.  Before the forward cap, a node's handler threads all blocked on forwards
to a peer whose threads all blocked on forwards back, and requests ran into their deadlines.
"""
from __future__ import annotations

import json
import threading

import grpc
import numpy as np
import pytest
from test_router import infer, make_nodes, served, stop_all

from edgeloop.mesh.router import DEFAULT_MAX_FORWARDS, FORWARD_CAP, forward_limit
from edgeloop.perf.load import LevelPlan, run_level
from edgeloop.protocol.codec import build_infer_request

CLIENTS_PER_NODE = 32
DURATION_S = 3.0
MAX_REQUESTS = 20_000  # per node; the time bound ends the run first
TIMEOUT_S = 5.0


def keys_owned_by(node, owner: str, count: int) -> list[str]:
    placement = node.mesh.membership.placement()
    keys = (f"user-{i}" for i in range(100_000))
    out = []
    for key in keys:
        if placement.owner(key, "mlp") == owner:
            out.append(key)
            if len(out) == count:
                return out
    raise AssertionError(f"fewer than {count} keys owned by {owner}")


def payloads(keys: list[str]) -> list[bytes]:
    x = np.random.default_rng(7).normal(size=(1, 32)).astype(np.float32)
    out = []
    for key in keys:
        request = build_infer_request("mlp", {"INPUT0": x})
        request.parameters["routing_key"].string_param = key
        out.append(request.SerializeToString())
    return out


@pytest.fixture
def pair(tmp_path):
    nodes = make_nodes(tmp_path, {"a": ["mlp"], "b": ["mlp"]})  # default serving.grpc_workers = 8
    yield nodes
    stop_all(nodes)


def test_forward_limit_leaves_most_workers_serving():
    assert forward_limit(8) == DEFAULT_MAX_FORWARDS == 2
    assert [forward_limit(w) for w in (1, 2, 3, 4, 16, 64)] == [0, 1, 1, 1, 4, 16]
    # a lone worker never waits on a peer for what it can serve


def test_nodes_forwarding_to_each_other_under_load_fail_nothing(pair):
    a, b = pair["a"], pair["b"]
    assert a.config.serving.grpc_workers == 8 and a.mesh.router.max_forwards == 2
    plan = LevelPlan(concurrency=CLIENTS_PER_NODE, max_requests=MAX_REQUESTS, max_duration_s=DURATION_S,
                     timeout_s=TIMEOUT_S)
    # a gets only keys b owns, b only keys a owns: every request is a forward, both ways at once
    work = {"a": (a, payloads(keys_owned_by(a, "b", 64))), "b": (b, payloads(keys_owned_by(b, "a", 64)))}
    outcomes, channels = {}, []

    def drive(name: str) -> None:
        node, pool = work[name]
        channel = grpc.insecure_channel(node.address)
        channels.append(channel)
        outcomes[name] = run_level(channel, pool, plan)

    before = served(pair)
    threads = [threading.Thread(target=drive, args=(name,)) for name in work]
    for t in threads:
        t.start()
    for t in threads:
        t.join(2 * DURATION_S + TIMEOUT_S + 30)
    for channel in channels:
        channel.close()
    after = served(pair)
    assert set(outcomes) == {"a", "b"}, "a load driver did not finish"
    for name, outcome in outcomes.items():
        assert outcome.stats.errors == 0, f"node {name}: {outcome.stats.errors} failed: {outcome.error_samples}"
        assert outcome.stats.count > 0
    sent = sum(o.stats.count for o in outcomes.values())
    assert sum(after[n] - before[n] for n in after) == sent  # every request answered exactly once
    for node in (a, b):  # forwarding really happened (not everything fell back to local)
        assert node.mesh.router.forwarded > 0


def test_past_the_forward_cap_a_node_serves_what_it_can_and_refuses_the_rest_at_once(tmp_path):
    nodes = make_nodes(tmp_path, {"a": ["mlp"], "b": ["mlp", "only_b"]},
                       a={"decision_log": tmp_path / "a-decisions.jsonl"})
    try:
        a = nodes["a"]
        a.mesh.router.set_max_forwards(0)  # every forward slot taken
        key = keys_owned_by(a, "b", 1)[0]
        before = served(nodes)
        infer(a, key=key)
        after = served(nodes)
        assert {n: after[n] - before[n] for n in after} == {"a": 1, "b": 0}  # served here, not forwarded
        assert a.mesh.router.local_fallbacks == 1 and a.mesh.router.forwarded == 0
        with pytest.raises(grpc.RpcError) as err:
            infer(a, model="only_b")  # a cannot serve it and may not forward: refused, not queued
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "'only_b'" in err.value.details() and "0 forwards in flight" in err.value.details()
        a.mesh.router.set_max_forwards(1)  # a free slot: forwarded again
        infer(a, key=key)
        assert served(nodes)["b"] - after["b"] == 1 and a.mesh.router.forwarded == 1
        records = [json.loads(line) for line in (tmp_path / "a-decisions.jsonl").read_text().splitlines()]
        capped = [r for r in records if r.get("reason") == FORWARD_CAP]
        assert len(capped) == 1 and capped[0]["node"] == "b" and capped[0]["served_by"] == "a"
    finally:
        stop_all(nodes)
