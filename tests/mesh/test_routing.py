"""One routing helper and one version parser: the client, the router and the serving node agree."""
from __future__ import annotations

import grpc
import numpy as np
import pytest
from test_router import key_owned_by, make_nodes, served, stop_all

from edgeloop.client import MeshClient
from edgeloop.mesh.routing import NodeGone, route_of, send_with_failover
from edgeloop.protocol import inference_pb2_grpc
from edgeloop.protocol.codec import build_infer_request
from edgeloop.protocol.errors import ProtocolError
from edgeloop.protocol.versions import parse_version
from edgeloop.serving import repository

X = np.random.default_rng(2).normal(size=(1, 32)).astype(np.float32)
#: what ``int()`` accepts but no part of edgeloop may: each names no version
NOT_CANONICAL = ["+1", "01", "1_0", " 1", "1 ", "1\n", "0", "-1", "\u0661", "1" * 19, "0x1", "1.0"]


def test_one_parser_accepts_only_canonical_positive_integers():
    assert [parse_version(t) for t in ("1", "10", "987654321987654321")] == [1, 10, 987654321987654321]
    for text in NOT_CANONICAL + [""]:
        assert parse_version(text) is None, text
    assert repository.parse_version is parse_version  # the repository reads version directories with it


def test_route_key_is_the_routing_key_else_the_request_id_else_the_model():
    request = build_infer_request("mlp", {"INPUT0": X}, request_id="rid", model_version="2")
    assert route_of(request) == ("mlp", 2, "rid", False)
    assert route_of(request, routing_key="k") == ("mlp", 2, "k", True)
    request.parameters["routing_key"].string_param = "user-1"
    assert route_of(request) == ("mlp", 2, "user-1", True)
    assert route_of(build_infer_request("mlp", {"INPUT0": X})).key == "mlp"
    for text in NOT_CANONICAL:
        with pytest.raises(ProtocolError) as err:
            route_of(build_infer_request("mlp", {"INPUT0": X}, model_version=text))
        assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT and "model_version" in err.value.message


def test_failover_retries_once_on_the_next_node_and_only_on_unavailable():
    calls = []

    def send(node):
        calls.append(node)
        if node in ("n1", "n2"):
            raise NodeGone(f"{node} is gone")
        return f"answer from {node}"

    assert send_with_failover("n1", lambda: ["n1", "n3", "n2"], send, "model 'm'") == ("n3", "answer from n3")
    assert calls == ["n1", "n3"]
    calls.clear()
    with pytest.raises(ProtocolError) as err:  # the retry fails too: one retry only, the status kept
        send_with_failover("n1", lambda: ["n1", "n2", "n3"], send, "model 'm'")
    assert calls == ["n1", "n2"] and err.value.code == grpc.StatusCode.UNAVAILABLE
    assert "'n2'" in err.value.message and "'n1'" in err.value.message
    with pytest.raises(ProtocolError) as err:  # nobody else serves it
        send_with_failover("n1", lambda: ["n1"], send, "model 'm'")
    assert "no other node serves it" in err.value.message

    class Invalid(grpc.RpcError):
        def code(self):
            return grpc.StatusCode.INVALID_ARGUMENT

        def details(self):
            return "bad input"

    def refuse(node):
        calls.append(node)
        raise Invalid()

    calls.clear()
    with pytest.raises(ProtocolError) as err:  # not UNAVAILABLE: no retry, the peer's answer passed on
        send_with_failover("n1", lambda: ["n1", "n3"], refuse, "model 'm'")
    assert calls == ["n1"] and err.value.code == grpc.StatusCode.INVALID_ARGUMENT and err.value.message == "bad input"


def test_bad_versions_are_refused_alike_by_client_router_and_node(tmp_path):
    nodes = make_nodes(tmp_path, {"a": ["mlp"], "b": ["mlp"]})
    try:
        a = nodes["a"]
        key = key_owned_by(a, "b")
        with MeshClient(seeds=[a.address], interfaces=()) as client, grpc.insecure_channel(a.address) as channel:
            assert client.wait_ready(nodes=2, model="mlp", timeout=10)
            stub = inference_pb2_grpc.GRPCInferenceServiceStub(channel)
            before = served(nodes)
            for text in ["+1", "01", "1_0", " 1"]:
                for routing_key in (key, None):  # forwarded (b owns the key) and served here
                    request = build_infer_request("mlp", {"INPUT0": X}, model_version=text)
                    if routing_key is not None:
                        request.parameters["routing_key"].string_param = routing_key
                    with pytest.raises(grpc.RpcError) as at_node:
                        stub.ModelInfer(request, timeout=10)
                    assert at_node.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (text, routing_key)
                    assert repr(text) in at_node.value.details()
                    with pytest.raises(ProtocolError) as at_client:
                        client.infer_request(request)
                    assert at_client.value.code == grpc.StatusCode.INVALID_ARGUMENT, (text, routing_key)
            assert served(nodes) == before  # nothing ran anywhere
            good = build_infer_request("mlp", {"INPUT0": X}, model_version="1")
            client.infer_request(good, routing_key=key)
            good.parameters["routing_key"].string_param = key
            stub.ModelInfer(good, timeout=10)
            after = served(nodes)
            assert {n: after[n] - before[n] for n in after} == {"a": 0, "b": 2}
    finally:
        stop_all(nodes)
