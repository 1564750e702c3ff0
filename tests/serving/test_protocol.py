"""The Open Inference Protocol on a real node: every RPC, every datatype, raw and typed contents."""
from __future__ import annotations

import grpc
import numpy as np
import onnxruntime as ort
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

import edgeloop
from edgeloop.protocol import inference_pb2
from edgeloop.protocol.codec import build_infer_request, infer_response_to_numpy
from edgeloop.serving.demo_models import build_mlp

from serving_fixtures import RPC_TIMEOUT_S, multi_inputs

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture
def node(repo, start_node):
    return start_node(repo)


def reference_mlp(x):
    session = ort.InferenceSession(build_mlp().SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"INPUT0": x})[0]


def test_live_ready_and_server_metadata(node):
    stub = node.stub
    assert stub.ServerLive(inference_pb2.ServerLiveRequest(), timeout=RPC_TIMEOUT_S).live
    assert stub.ServerReady(inference_pb2.ServerReadyRequest(), timeout=RPC_TIMEOUT_S).ready
    assert stub.ModelReady(inference_pb2.ModelReadyRequest(name="mlp"), timeout=RPC_TIMEOUT_S).ready
    assert stub.ModelReady(inference_pb2.ModelReadyRequest(name="mlp", version="1"), timeout=RPC_TIMEOUT_S).ready
    assert not stub.ModelReady(inference_pb2.ModelReadyRequest(name="mlp", version="2"), timeout=RPC_TIMEOUT_S).ready
    assert not stub.ModelReady(inference_pb2.ModelReadyRequest(name="nope"), timeout=RPC_TIMEOUT_S).ready
    meta = stub.ServerMetadata(inference_pb2.ServerMetadataRequest(), timeout=RPC_TIMEOUT_S)
    assert meta.name == "edgeloop" and meta.version == edgeloop.__version__
    assert "model_repository" in meta.extensions and "statistics" in meta.extensions


def test_model_metadata(node):
    meta = node.stub.ModelMetadata(inference_pb2.ModelMetadataRequest(name="mlp"), timeout=RPC_TIMEOUT_S)
    assert meta.name == "mlp" and list(meta.versions) == ["1"] and meta.platform == "onnxruntime_onnx"
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [("INPUT0", "FP32", [-1, 32])]
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.outputs] == [("OUTPUT0", "FP32", [-1, 4])]
    multi = node.stub.ModelMetadata(inference_pb2.ModelMetadataRequest(name="multi", version="1"),
                                    timeout=RPC_TIMEOUT_S)
    assert {t.datatype for t in multi.inputs} >= {"BOOL", "UINT64", "INT8", "FP16", "FP64", "BYTES"}
    with pytest.raises(grpc.RpcError) as err:
        node.stub.ModelMetadata(inference_pb2.ModelMetadataRequest(name="ghost"), timeout=RPC_TIMEOUT_S)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND and "ghost" in err.value.details()


def test_infer_matches_onnxruntime_and_echoes_id(node):
    x = np.random.default_rng(1).standard_normal((5, 32)).astype(np.float32)
    response = node.infer(build_infer_request("mlp", {"INPUT0": x}, request_id="req-42"))
    assert response.id == "req-42" and response.model_name == "mlp" and response.model_version == "1"
    assert len(response.raw_output_contents) == 1 and not response.outputs[0].HasField("contents")
    out = infer_response_to_numpy(response)["OUTPUT0"]
    assert out.shape == (5, 4)
    np.testing.assert_array_equal(out, reference_mlp(x))


@pytest.mark.parametrize("raw", [True, False], ids=["raw", "typed"])
def test_every_datatype_round_trips(node, raw):
    inputs = multi_inputs(batch=2, seed=3)
    response = node.infer(build_infer_request("multi", inputs, raw=raw, request_id=f"raw={raw}"))
    assert len(response.raw_output_contents) == len(response.outputs)  # outputs always raw
    got = infer_response_to_numpy(response)
    for name, value in inputs.items():
        if name.startswith("IN_"):
            out = got["OUT_" + name[3:]]
            assert out.shape == value.shape, name
            if name == "IN_BYTES":
                assert out.tolist() == value.tolist()
            else:
                assert out.dtype == value.dtype, name
                np.testing.assert_array_equal(out, value)
    np.testing.assert_array_equal(got["SUM"], inputs["X"] + inputs["Y"])
    np.testing.assert_array_equal(got["DIFF"], inputs["X"] - inputs["Y"])
    datatypes = {t.name: t.datatype for t in response.outputs}
    assert datatypes["OUT_UINT64"] == "UINT64" and datatypes["OUT_BYTES"] == "BYTES"


def test_output_subset_in_requested_order(node):
    inputs = multi_inputs(batch=1)
    response = node.infer(build_infer_request("multi", inputs, outputs=["DIFF", "OUT_INT8"]))
    assert [t.name for t in response.outputs] == ["DIFF", "OUT_INT8"]
    got = infer_response_to_numpy(response)
    np.testing.assert_array_equal(got["DIFF"], inputs["X"] - inputs["Y"])
    np.testing.assert_array_equal(got["OUT_INT8"], inputs["IN_INT8"])


def test_stream_infer_survives_an_error_mid_stream(node):
    x = np.ones((1, 32), np.float32)
    requests = [
        build_infer_request("mlp", {"INPUT0": x}, request_id="a"),
        build_infer_request("mlp", {"INPUT0": np.ones((1, 31), np.float32)}, request_id="b"),
        build_infer_request("ghost", {"INPUT0": x}, request_id="c"),
        build_infer_request("mlp", {"INPUT0": x * 2}, request_id="d"),
    ]
    responses = list(node.stub.ModelStreamInfer(iter(requests), timeout=RPC_TIMEOUT_S))
    assert [r.infer_response.id for r in responses] == ["a", "b", "c", "d"]
    assert responses[0].error_message == "" and responses[3].error_message == ""
    assert responses[1].error_message.startswith("INVALID_ARGUMENT") and "INPUT0" in responses[1].error_message
    assert responses[2].error_message.startswith("NOT_FOUND") and "ghost" in responses[2].error_message
    np.testing.assert_array_equal(infer_response_to_numpy(responses[3].infer_response)["OUTPUT0"],
                                  reference_mlp(x * 2))


def test_statistics_count_successes_and_failures(node):
    x = np.ones((3, 32), np.float32)
    for _ in range(4):
        node.infer(build_infer_request("mlp", {"INPUT0": x}))
    with pytest.raises(grpc.RpcError):
        node.infer(build_infer_request("mlp", {"INPUT0": np.ones((3, 5), np.float32)}))
    (stats,) = node.stats("mlp")
    assert stats.name == "mlp" and stats.version == "1"
    assert stats.inference_stats.success.count == 4 and stats.inference_stats.fail.count == 1
    assert stats.execution_count == 4 and stats.inference_count == 4  # no batching: one inference per request
    assert stats.inference_stats.compute_infer.ns > 0 and stats.inference_stats.success.ns > 0
    assert stats.last_inference > 0
    all_stats = node.stats("")
    assert {(s.name, s.version) for s in all_stats} == {("mlp", "1"), ("multi", "1")}
    with pytest.raises(grpc.RpcError) as err:
        node.stats("ghost")
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_health_service_reports_serving(node):
    health = health_pb2_grpc.HealthStub(node.channel)
    for service in ("", "inference.GRPCInferenceService"):
        reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=RPC_TIMEOUT_S)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_a_node_without_models_is_live_but_not_ready(tmp_path, start_node):
    """The process answers SERVING (a live mesh member awaiting models); inference and ServerReady do not."""
    empty = start_node(tmp_path / "empty")
    health = health_pb2_grpc.HealthStub(empty.channel)
    reply = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=RPC_TIMEOUT_S)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    reply = health.Check(health_pb2.HealthCheckRequest(service="inference.GRPCInferenceService"), timeout=RPC_TIMEOUT_S)
    assert reply.status == health_pb2.HealthCheckResponse.NOT_SERVING
    assert not empty.stub.ServerReady(inference_pb2.ServerReadyRequest(), timeout=RPC_TIMEOUT_S).ready


def test_reflection_lists_inference_and_health(node):
    stub = reflection_pb2_grpc.ServerReflectionStub(node.channel)
    replies = list(stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]),
                                             timeout=RPC_TIMEOUT_S))
    names = {s.name for s in replies[0].list_services_response.service}
    assert {"inference.GRPCInferenceService", "grpc.health.v1.Health"} <= names
    replies = list(stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(
        file_containing_symbol="inference.GRPCInferenceService")]), timeout=RPC_TIMEOUT_S))
    assert replies[0].file_descriptor_response.file_descriptor_proto


def test_idle_streams_cannot_take_every_handler_thread(repo, start_node):
    import queue

    handle = start_node(repo, grpc_workers=4)  # at most 2 open streams
    feeds, calls = [], []
    for _ in range(4):  # as many streams as handler threads: unary calls must still be answered
        feed = queue.Queue()
        feeds.append(feed)
        calls.append(handle.stub.ModelStreamInfer(iter(feed.get, None), timeout=RPC_TIMEOUT_S))
    try:
        assert handle.stub.ServerLive(inference_pb2.ServerLiveRequest(), timeout=3).live
        x = np.ones((1, 32), np.float32)
        assert handle.infer(build_infer_request("mlp", {"INPUT0": x}), timeout=3).model_name == "mlp"
    finally:
        for feed in feeds:
            feed.put(None)
    codes = []
    for call in calls:
        try:
            list(call)
            codes.append(grpc.StatusCode.OK)
        except grpc.RpcError as exc:
            codes.append(exc.code())
            assert "2 streams" in exc.details() and "ModelStreamInfer" in exc.details()
    assert sorted(c.name for c in codes) == ["OK", "OK", "RESOURCE_EXHAUSTED", "RESOURCE_EXHAUSTED"]
    replies = list(handle.stub.ModelStreamInfer(iter([build_infer_request("mlp", {"INPUT0": x})]),
                                                timeout=RPC_TIMEOUT_S))  # a closed stream frees its slot
    assert replies[0].infer_response.model_name == "mlp"
