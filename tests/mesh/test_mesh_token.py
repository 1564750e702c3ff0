"""The fleet token authenticates mesh members: peer calls carry it, and a process without it never joins.

Three real nodes on loopback: a and b share a token, x (same mesh name, static peers pointing at a and b)
has none.  x must never enter a's or b's view, never receive a forwarded request, and its own forwards
and Describe calls are refused with UNAUTHENTICATED.
"""
from __future__ import annotations

import time
from dataclasses import replace

import grpc
import pytest
from meshkit import free_port, wait_for
from test_router import X, key_owned_by, served

from edgeloop.config import EdgeConfig, MeshConfig, NodeConfig, ServingConfig
from edgeloop.config.schema import AuthConfig
from edgeloop.mesh.channels import ChannelPool
from edgeloop.node import EdgeNode
from edgeloop.protocol import inference_pb2_grpc, mesh_pb2, mesh_pb2_grpc
from edgeloop.protocol.auth import membership_proof, open_channel, proof_matches
from edgeloop.protocol.codec import build_infer_request
from edgeloop.serving.demo_models import build_mlp, write_model

TOKEN = "fleet-token-0123456789abcdef"


def _node(tmp_path, name: str, port: int, peers: list[int], token_file) -> EdgeNode:
    repo = tmp_path / name
    write_model(repo, "mlp", 1, build_mlp())
    mesh = replace(MeshConfig(), zeroconf_interfaces=(), static_peers=tuple(f"127.0.0.1:{p}" for p in peers),
                   heartbeat_interval_ms=100, down_after_ms=600)
    return EdgeNode(EdgeConfig(node=NodeConfig(id=name, grpc_port=port, metrics_port=0),
                               serving=ServingConfig(model_repository=repo), mesh=mesh,
                               auth=AuthConfig(token_file=token_file)))


@pytest.fixture
def fleet(tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    ports = {name: free_port() for name in "abx"}
    nodes = {
        "a": _node(tmp_path, "a", ports["a"], [ports["b"], ports["x"]], token_file),
        "b": _node(tmp_path, "b", ports["b"], [ports["a"], ports["x"]], token_file),
        "x": _node(tmp_path, "x", ports["x"], [ports["a"], ports["b"]], None),
    }
    for node in nodes.values():
        node.start()
    yield nodes
    for node in nodes.values():
        node.stop(1.0)


def _alive(node) -> set[str]:
    return {m.node_id for m in node.mesh.membership.members() if m.alive}


def test_members_with_the_token_form_the_mesh_and_a_process_without_it_never_joins(fleet):
    a, b, x = fleet["a"], fleet["b"], fleet["x"]
    assert wait_for(lambda: _alive(a) == {"a", "b"} and _alive(b) == {"a", "b"}, 10) is not None
    time.sleep(0.6)  # several heartbeats: x announced itself to a and b all along
    assert "x" not in {m.node_id for m in a.mesh.membership.members()}
    assert "x" not in {m.node_id for m in b.mesh.membership.members()}
    assert _alive(x) == {"x"}  # x cannot Describe a or b either (UNAUTHENTICATED), so it stays alone

    # forwarding between a and b works and carries the token
    key = key_owned_by(a, "b")
    before = served(fleet)
    request = build_infer_request("mlp", {"INPUT0": X}, request_id="r1")
    request.parameters["routing_key"].string_param = key
    with grpc.insecure_channel(a.address) as channel:
        inference_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=10)
    after = served(fleet)
    assert after["b"] == before["b"] + 1 and after["a"] == before["a"]


def test_forwarded_requests_and_describe_without_the_token_are_unauthenticated(fleet):
    a = fleet["a"]
    request = build_infer_request("mlp", {"INPUT0": X}, request_id="r2")
    request.parameters["edgeloop_forwarded"].bool_param = True
    for token in (None, "wrong-token-0123456789"):
        with open_channel(a.address, token=token) as channel:
            with pytest.raises(grpc.RpcError) as info:
                inference_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=10)
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert "fleet token" in info.value.details()
            with pytest.raises(grpc.RpcError) as info:
                mesh_pb2_grpc.PeerStub(channel).Describe(mesh_pb2.DescribeRequest(), timeout=10)
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    # an ordinary client's (unforwarded) request needs no token: tritonclient and perf keep working
    plain = build_infer_request("mlp", {"INPUT0": X}, request_id="r3")
    with grpc.insecure_channel(a.address) as channel:
        assert inference_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(plain, timeout=10).id == "r3"


def test_describe_answers_a_challenge_with_a_proof_bound_to_the_node(fleet):
    a = fleet["a"]
    stub = ChannelPool(TOKEN).get(a.address).peer
    nonce = bytes(range(16))
    desc = stub.Describe(mesh_pb2.DescribeRequest(nonce=nonce), timeout=10)
    assert desc.proof == membership_proof(TOKEN, nonce, "a")
    assert not proof_matches(TOKEN, nonce, "b", desc.proof)  # another node cannot replay a's answer
    with pytest.raises(grpc.RpcError) as info:
        stub.Describe(mesh_pb2.DescribeRequest(nonce=b"short"), timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "nonce" in info.value.details()
