"""Shape and size mistakes are INVALID_ARGUMENT (never INTERNAL), and messages never echo unbounded input."""
from __future__ import annotations

import re

import grpc
import numpy as np
import pytest
from onnx import TensorProto, helper
from serving_fixtures import RPC_TIMEOUT_S, multi_inputs

from edgeloop.config import ModelConfig
from edgeloop.protocol import inference_pb2
from edgeloop.protocol.codec import build_infer_request, infer_response_to_numpy
from edgeloop.serving.demo_models import IR_VERSION, OPSET, build_mlp, build_multi_io_model, write_model

INVALID = grpc.StatusCode.INVALID_ARGUMENT
HUGE = 1_000_000  # characters of an echoed value: far over gRPC's 8 KiB trailer limit


def build_any_shape_model():
    """Identity over FP32 ``[n, m]`` with both dims dynamic: only the server's checks bound them."""
    graph = helper.make_graph([helper.make_node("Identity", ["X"], ["Y"])], "any_shape",
                              [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["n", "m"])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["n", "m"])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    return model


def build_add_model():
    """``X [a, 4] + Y [b, 4]``: the graph does not say a == b, so only onnxruntime's Add finds a mismatch."""
    graph = helper.make_graph([helper.make_node("Add", ["X", "Y"], ["Z"])], "add",
                              [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["a", 4]),
                               helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["b", 4])],
                              [helper.make_tensor_value_info("Z", TensorProto.FLOAT, [None, 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    return model


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    from serving_fixtures import NodeHandle, make_config

    from edgeloop.node import EdgeNode

    root = tmp_path_factory.mktemp("shapes") / "models"
    write_model(root, "mlp", 1, build_mlp())
    write_model(root, "any", 1, build_any_shape_model())
    write_model(root, "multi", 1, build_multi_io_model())
    write_model(root, "multib", 1, build_multi_io_model())
    write_model(root, "add", 1, build_add_model())
    handle = NodeHandle(EdgeNode(make_config(root, [ModelConfig(name="multib", max_batch_size=4)])).start())
    yield handle
    handle.close()


def refused(node, request, code=INVALID) -> str:
    with pytest.raises(grpc.RpcError) as err:
        node.infer(request)
    assert err.value.code() == code, err.value.details()
    assert node.stub.ServerLive(inference_pb2.ServerLiveRequest(), timeout=RPC_TIMEOUT_S).live
    return err.value.details()


def any_request(shape):
    request = inference_pb2.ModelInferRequest(model_name="any")
    request.inputs.add(name="X", datatype="FP32", shape=shape)
    request.raw_input_contents.append(b"")
    return request


@pytest.mark.parametrize("shape", [[0, 2**62], [2**62, 0], [0, 2**33]])
def test_a_zero_element_shape_with_a_huge_dimension_is_invalid_argument(node, shape):
    details = refused(node, any_request(shape))
    assert str(shape[0]) in details and "expected at most 4294967296" in details


def test_a_zero_element_shape_of_sane_size_still_runs(node):
    response = node.infer(any_request([0, 5]))
    assert list(response.outputs[0].shape) == [0, 5]


@pytest.mark.parametrize("model", ["multi", "multib"], ids=["batching off", "batching on"])
def test_inputs_whose_batch_dimensions_disagree_are_invalid_argument(node, model):
    inputs = multi_inputs(batch=2)
    inputs["Y"] = inputs["Y"][:1]  # X is [2, 4], Y is [1, 4]: the graph names both first dims "batch"
    details = refused(node, build_infer_request(model, inputs))
    assert "input 'Y'" in details and "expected 2" in details
    inputs = multi_inputs(batch=2)
    inputs["IN_FP32"] = np.concatenate([inputs["IN_FP32"]] * 2)  # a pass-through input: onnxruntime would not mind
    details = refused(node, build_infer_request(model, inputs))
    assert "input 'IN_FP32'" in details and "4" in details and "expected 2" in details
    ok = node.infer(build_infer_request(model, multi_inputs(batch=2)))  # and agreeing ones still run
    assert infer_response_to_numpy(ok)["SUM"].shape == (2, 4)


def test_a_node_failing_on_the_request_shapes_is_invalid_argument(node):
    ok = node.infer(build_infer_request("add", {"X": np.ones((2, 4), np.float32), "Y": np.ones((1, 4), np.float32)}))
    assert infer_response_to_numpy(ok)["Z"].shape == (2, 4)  # broadcast: fine
    details = refused(node, build_infer_request("add", {"X": np.ones((2, 4), np.float32),
                                                        "Y": np.ones((3, 4), np.float32)}))
    assert "model 'add' version 1" in details and "Add" in details and "expected inputs" in details


# --------------------------------------------------------------------------- bounded echoes
def long_name_request(**fields):
    request = build_infer_request("mlp", {"INPUT0": np.ones((1, 32), np.float32)})
    tensor = request.inputs[0]
    for key, value in fields.items():
        if key in ("model_name", "model_version"):
            setattr(request, key, value)
        elif key == "shape":
            del tensor.shape[:]
            tensor.shape.extend(value)
        elif key == "output":
            request.outputs.add(name=value)
        else:
            setattr(tensor, key, value)
    return request


@pytest.mark.parametrize("field, value, note", [
    ("model_name", "m" * HUGE, f"({HUGE} characters in all)"),
    ("model_version", "7" * HUGE, f"({HUGE} characters in all)"),
    ("name", "i" * HUGE, f"({HUGE} characters in all)"),
    ("datatype", "F" * HUGE, f"({HUGE} characters in all)"),
    ("output", "o" * HUGE, f"({HUGE} characters in all)"),
    ("shape", [1] * 200_000, "(200000 dimensions in all)"),
])
def test_messages_quote_oversized_values_cut_with_their_length(node, field, value, note):
    details = refused(node, long_name_request(**{field: value}))
    assert note in details, details
    assert len(details) < 1000, len(details)


def test_oversized_names_are_cut_in_every_rpc(node):
    name = "n" * HUGE
    calls = [
        lambda: node.stub.ModelMetadata(inference_pb2.ModelMetadataRequest(name=name), timeout=RPC_TIMEOUT_S),
        lambda: node.stub.ModelConfig(inference_pb2.ModelConfigRequest(name=name), timeout=RPC_TIMEOUT_S),
        lambda: node.stub.ModelStatistics(inference_pb2.ModelStatisticsRequest(name=name), timeout=RPC_TIMEOUT_S),
        lambda: node.stub.RepositoryModelLoad(inference_pb2.RepositoryModelLoadRequest(model_name=name),
                                              timeout=RPC_TIMEOUT_S),
        lambda: node.stub.RepositoryModelUnload(inference_pb2.RepositoryModelUnloadRequest(model_name=name),
                                                timeout=RPC_TIMEOUT_S),
    ]
    for key in ("k" * HUGE, "file:" + "1/" * (HUGE // 2)):  # parameter keys are echoed too
        request = inference_pb2.RepositoryModelLoadRequest(model_name="mlp")
        request.parameters[key].bytes_param = b"x"
        calls.append(lambda request=request: node.stub.RepositoryModelLoad(request, timeout=RPC_TIMEOUT_S))
    for call in calls:
        with pytest.raises(grpc.RpcError) as err:
            call()
        assert err.value.code() == INVALID, err.value.details()[:300]
        assert re.search(rf"\(({HUGE}|{HUGE + 5}) characters in all\)", err.value.details()), err.value.details()[:300]
        assert len(err.value.details()) < 1000
