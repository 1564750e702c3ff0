"""Routing between real in-process EdgeNodes that know each other as static peers (no multicast)."""
from __future__ import annotations

import time
from dataclasses import replace

import grpc
import numpy as np
import pytest

from edgeloop.config import EdgeConfig, MeshConfig, NodeConfig, ServingConfig
from edgeloop.mesh.decision_log import replay
from edgeloop.mesh.router import spill_order
from edgeloop.node import EdgeNode
from edgeloop.protocol import inference_pb2_grpc
from edgeloop.protocol.codec import build_infer_request
from edgeloop.serving.demo_models import build_mlp, write_model
from meshkit import free_port, wait_for

X = np.random.default_rng(1).normal(size=(3, 32)).astype(np.float32)


def make_nodes(tmp_path, models_by_node: dict[str, list[str]], **mesh_fields) -> dict[str, EdgeNode]:
    ports = {name: free_port() for name in models_by_node}
    nodes = {}
    for name, models in models_by_node.items():
        repo = tmp_path / name
        for model in models:
            write_model(repo, model, 1, build_mlp())
        peers = tuple(f"127.0.0.1:{p}" for other, p in ports.items() if other != name)
        fields = {"zeroconf_interfaces": (), "static_peers": peers, "heartbeat_interval_ms": 100,
                  "down_after_ms": 600, **mesh_fields.get(name, {})}
        mesh = replace(MeshConfig(), **fields)
        config = EdgeConfig(node=NodeConfig(id=name, grpc_port=ports[name], metrics_port=0),
                            serving=ServingConfig(model_repository=repo), mesh=mesh)
        nodes[name] = EdgeNode(config)
    for node in nodes.values():
        node.start()
    for name, node in nodes.items():
        expected = set(nodes)
        assert wait_for(lambda: {m.node_id for m in node.mesh.membership.members() if m.alive} == expected, 10)
    return nodes


def stop_all(nodes):
    for node in nodes.values():
        node.stop(1.0)


def infer(node: EdgeNode, model: str = "mlp", key: str | None = None, forwarded: bool = False, rid: str = "q"):
    req = build_infer_request(model, {"INPUT0": X}, request_id=rid)
    if key is not None:
        req.parameters["routing_key"].string_param = key
    if forwarded:
        req.parameters["edgeloop_forwarded"].bool_param = True
    with grpc.insecure_channel(node.address) as channel:
        return inference_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(req, timeout=10)


def served(nodes) -> dict[str, int]:
    return {name: sum(s.inference_stats.success.count for s in node.models.statistics("", ""))
            for name, node in nodes.items()}


def key_owned_by(node: EdgeNode, owner: str, model: str = "mlp") -> str:
    placement = node.mesh.membership.placement()
    return next(f"k{i}" for i in range(10_000) if placement.owner(f"k{i}", model) == owner)


@pytest.fixture
def trio(tmp_path):
    nodes = make_nodes(tmp_path, {"a": ["mlp"], "b": ["mlp", "only_b"], "c": ["mlp"]},
                       a={"decision_log": tmp_path / "a-decisions.jsonl"})
    yield nodes
    stop_all(nodes)


def test_keyed_request_goes_one_hop_to_its_owner_and_answers_unchanged(trio, tmp_path):
    a = trio["a"]
    key = key_owned_by(a, "b")
    before = served(trio)
    via_a = infer(a, key=key)
    direct = infer(trio["b"], key=key)
    after = served(trio)
    assert {n: after[n] - before[n] for n in after} == {"a": 0, "b": 2, "c": 0}
    assert via_a.raw_output_contents == direct.raw_output_contents and via_a.id == direct.id == "q"
    # the same key from b or c lands on b too: placement agrees across nodes
    for entry in ("b", "c"):
        before = served(trio)
        infer(trio[entry], key=key)
        assert served(trio)["b"] - before["b"] == 1
    report = replay(tmp_path / "a-decisions.jsonl")
    assert report.ok and report.decisions >= 1


def test_forwarded_request_is_never_forwarded_again(trio):
    key = key_owned_by(trio["a"], "c")
    before = served(trio)
    infer(trio["a"], key=key, forwarded=True)
    after = served(trio)
    assert {n: after[n] - before[n] for n in after} == {"a": 1, "b": 0, "c": 0}


def test_unkeyed_request_is_local_unless_the_model_lives_elsewhere(trio):
    before = served(trio)
    infer(trio["a"])  # a serves mlp: no hop
    infer(trio["a"], model="only_b")  # a does not: forwarded to the only node that does
    after = served(trio)
    assert {n: after[n] - before[n] for n in after} == {"a": 1, "b": 1, "c": 0}
    with pytest.raises(grpc.RpcError) as err:
        infer(trio["a"], model="missing_model")
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert "'missing_model'" in err.value.details() and "no node in the mesh serves it" in err.value.details()


def test_bad_routing_key_type_is_invalid_argument(trio):
    req = build_infer_request("mlp", {"INPUT0": X})
    req.parameters["routing_key"].int64_param = 5
    with grpc.insecure_channel(trio["a"].address) as channel:
        with pytest.raises(grpc.RpcError) as err:
            inference_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(req, timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "routing_key" in err.value.details() and "int64_param" in err.value.details()


def test_unavailable_owner_fails_over_to_the_next_node(tmp_path):
    # a notices deaths only after 30 s, so it still routes to the dead owner and must fail over
    nodes = make_nodes(tmp_path, {"a": ["mlp"], "b": ["mlp"], "c": ["mlp"]}, a={"down_after_ms": 30_000})
    try:
        a = nodes["a"]
        key = key_owned_by(a, "b")
        pref = a.mesh.membership.placement().preference(key, "mlp")
        nodes["b"].server.stop(0).wait(5)  # b vanishes without a word
        before = served({n: nodes[n] for n in ("a", "c")})
        response = infer(a, key=key)
        after = served({n: nodes[n] for n in ("a", "c")})
        assert a.mesh.membership.get("b").alive  # a has not noticed yet
        fallback = pref[1]
        assert {n: after[n] - before[n] for n in after} == {n: int(n == fallback) for n in after}
        assert len(response.raw_output_contents) == 1
    finally:
        stop_all(nodes)


def test_spill_takes_the_first_node_within_the_queue_limit():
    depths = {"n1": 9, "n2": 3, "n3": 0}
    assert spill_order(["n1", "n2", "n3"], depths.get, 4) == ["n2", "n3", "n1"]
    assert spill_order(["n1", "n2", "n3"], depths.get, 0) == ["n3", "n1", "n2"]
    assert spill_order(["n1", "n2", "n3"], {"n1": 9, "n2": 9, "n3": 9}.get, 4) == ["n1", "n2", "n3"]
    assert spill_order(["n1", "n2"], depths.get, None) == ["n1", "n2"]


def test_owner_over_its_queue_limit_spills_deterministically(tmp_path):
    nodes = make_nodes(tmp_path, {"a": ["mlp"], "b": ["mlp"], "c": ["mlp"]}, a={"spill_queue_depth": 4})
    try:
        a = nodes["a"]
        a.mesh.liveness.stop()  # freeze a's view so the depth below is what it routes on

        key = key_owned_by(a, "b")
        pref = a.mesh.membership.placement().preference(key, "mlp")
        # what b's Describe would report under load 
        a.mesh.membership.set_queue_depth("b", 50)
        before = served(nodes)
        infer(a, key=key)
        infer(a, key=key)
        after = served(nodes)
        assert {n: after[n] - before[n] for n in after} == {n: 2 * int(n == pref[1]) for n in after}
    finally:
        stop_all(nodes)


def test_mesh_client_sends_straight_to_the_owner_and_leaves_the_callers_request_alone(trio):
    from edgeloop.client import MeshClient

    with MeshClient(seeds=[trio["a"].address], interfaces=()) as client:
        assert client.wait_ready(nodes=3, model="mlp", timeout=10)
        key = key_owned_by(trio["a"], "c")
        request = build_infer_request("mlp", {"INPUT0": X}, request_id="mine")
        before = served(trio)
        response = client.infer_request(request, routing_key=key)
        after = served(trio)
    assert {n: after[n] - before[n] for n in after} == {"a": 0, "b": 0, "c": 1}
    assert response.id == "mine" and "routing_key" not in request.parameters


def test_mesh_client_wait_settled_sees_every_peer_known_and_the_view_quiet(trio):
    """One seed: the rest arrive second-hand, a beat later; wait_settled returns once all are known."""
    from edgeloop.client import MeshClient
    from edgeloop.mesh.membership import UNKNOWN

    with MeshClient(seeds=[trio["a"].address], interfaces=()) as client:
        assert client.wait_ready(nodes=1, timeout=10)
        started = time.monotonic()
        assert client.wait_settled(timeout=10, quiet_s=0.3)
        assert time.monotonic() - started >= 0.3  # at least one quiet window was observed
        view = {m.node_id: m.state for m in client.view()}
        assert set(view) == {trio[n].config.node.id for n in "abc"} and UNKNOWN not in view.values()
        epoch = client.epoch
        assert client.wait_settled(timeout=0.05, quiet_s=1.0)  # a window cut short by the timeout still counts
        assert client.epoch == epoch
