"""Malformed requests get the right status code and a message naming field, value and expectation."""
from __future__ import annotations

import struct

import grpc
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from serving_fixtures import RPC_TIMEOUT_S, multi_inputs

from edgeloop.config import ModelConfig
from edgeloop.protocol import inference_pb2
from edgeloop.protocol.codec import build_infer_request

INVALID = grpc.StatusCode.INVALID_ARGUMENT
ALLOWED_CODES = {grpc.StatusCode.OK, INVALID, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.UNAVAILABLE,
                 grpc.StatusCode.RESOURCE_EXHAUSTED}


def mlp_request(**overrides):
    request = build_infer_request("mlp", {"INPUT0": np.ones((2, 32), np.float32)})
    for key, value in overrides.items():
        setattr(request, key, value)
    return request


def mutate(fn, base=None):
    request = base or mlp_request()
    fn(request)
    return request


def bytes_request(raw: bytes, shape=(1, 3)):
    inputs = multi_inputs(batch=1)
    request = build_infer_request("multi", inputs)
    index = [t.name for t in request.inputs].index("IN_BYTES")
    del request.inputs[index].shape[:]
    request.inputs[index].shape.extend(shape)
    request.raw_input_contents[index] = raw
    return request


def _both_contents(r):
    r.inputs[0].contents.fp32_contents.extend([1.0] * 64)


def _typed_wrong_count(r):
    del r.raw_input_contents[:]
    r.inputs[0].contents.fp32_contents.extend([1.0] * 63)


def _typed_int8_overflow():
    request = build_infer_request("multi", multi_inputs(batch=1), raw=False)
    tensor = next(t for t in request.inputs if t.name == "IN_INT8")
    tensor.contents.int_contents[0] = 300
    return request


CASES = [
    # (id, request, status code, words the message must contain)
    ("unknown model", mlp_request(model_name="ghost"), grpc.StatusCode.NOT_FOUND, ["model_name", "ghost"]),
    ("unknown version", mlp_request(model_version="7"), grpc.StatusCode.NOT_FOUND, ["model_version", "'7'"]),
    ("version not a number", mlp_request(model_version="latest"), INVALID, ["model_version", "'latest'"]),
    ("unknown input", mutate(lambda r: setattr(r.inputs[0], "name", "INPUTX")), INVALID, ["'INPUTX'", "INPUT0"]),
    ("missing input", mutate(lambda r: (r.inputs.pop(), r.raw_input_contents.pop())), INVALID, ["missing", "INPUT0"]),
    ("duplicate input", mutate(lambda r: (r.inputs.append(r.inputs[0]),
                                          r.raw_input_contents.append(r.raw_input_contents[0]))),
     INVALID, ["more than once"]),
    ("wrong datatype", mutate(lambda r: setattr(r.inputs[0], "datatype", "FP64")), INVALID, ["'FP64'", "'FP32'"]),
    ("unknown datatype", mutate(lambda r: setattr(r.inputs[0], "datatype", "FLOAT")), INVALID, ["'FLOAT'"]),
    ("wrong rank", mutate(lambda r: r.inputs[0].shape.append(1)), INVALID, ["[2, 32, 1]", "dimensions"]),
    ("wrong static dim", mutate(lambda r: r.inputs[0].shape.__setitem__(1, 16)), INVALID, ["16", "expected 32"]),
    ("negative dim", mutate(lambda r: r.inputs[0].shape.__setitem__(0, -2)), INVALID, ["-2"]),
    ("absurd dims", mutate(lambda r: r.inputs[0].shape.__setitem__(0, 2**40)), INVALID, [str(2**40)]),
    ("byte length", mutate(lambda r: r.raw_input_contents.__setitem__(0, b"\0" * 10)), INVALID,
     ["10 bytes", "256"]),
    ("raw count", mutate(lambda r: r.raw_input_contents.append(b"")), INVALID, ["raw_input_contents", "2"]),
    ("raw and typed", mutate(_both_contents), INVALID, ["both"]),
    ("typed count", mutate(_typed_wrong_count), INVALID, ["fp32_contents", "63", "64"]),
    ("typed in the wrong field", mutate(lambda r: (r.raw_input_contents.pop(),
                                                   r.inputs[0].contents.int_contents.extend([1] * 64))),
     INVALID, ["contents.int_contents", "FP32", "contents.fp32_contents"]),
    ("typed out of range", _typed_int8_overflow(), INVALID, ["300", "INT8"]),
    ("unknown output", mutate(lambda r: r.outputs.add(name="NOPE")), INVALID, ["'NOPE'", "OUTPUT0"]),
    ("bytes prefix too long", bytes_request(struct.pack("<I", 99) + b"ab" + b"\0" * 8), INVALID,
     ["length prefix 99"]),
    ("bytes truncated", bytes_request((struct.pack("<I", 1) + b"a") * 2 + b"bbb"), INVALID, ["element 2"]),
    ("bytes too short for shape", bytes_request(struct.pack("<I", 1) + b"a"), INVALID,
     ["5 bytes", "3 BYTES elements", "at least 12"]),
    ("bytes trailing", bytes_request(b"".join(struct.pack("<I", 1) + b"a" for _ in range(3)) + b"zz"), INVALID,
     ["2 bytes after"]),
    ("bytes not utf-8", bytes_request(b"".join(struct.pack("<I", 1) + b"\xff" for _ in range(3))), INVALID,
     ["UTF-8"]),
]


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    from serving_fixtures import NodeHandle, make_config

    from edgeloop.node import EdgeNode
    from edgeloop.serving.demo_models import build_mlp, build_multi_io_model, write_model

    root = tmp_path_factory.mktemp("bad-input") / "models"
    write_model(root, "mlp", 1, build_mlp())
    write_model(root, "multi", 1, build_multi_io_model())
    write_model(root, "batched", 1, build_mlp())
    write_model(root, "broken", 1, b"not a model", manifest=False)
    config = make_config(root, [ModelConfig(name="batched", max_batch_size=4)], max_receive_message_bytes=1 << 20)
    handle = NodeHandle(EdgeNode(config).start())
    yield handle
    handle.close()


@pytest.mark.parametrize("case_id, request_, code, words", CASES, ids=[c[0] for c in CASES])
def test_bad_request_gets_status_and_clear_message(node, case_id, request_, code, words):
    with pytest.raises(grpc.RpcError) as err:
        node.infer(request_)
    assert err.value.code() == code, err.value.details()
    for word in words:
        assert word in err.value.details(), (word, err.value.details())
    assert node.stub.ServerLive(inference_pb2.ServerLiveRequest(), timeout=RPC_TIMEOUT_S).live


def test_model_not_ready_is_unavailable(node):
    with pytest.raises(grpc.RpcError) as err:
        node.infer(build_infer_request("broken", {"INPUT0": np.ones((1, 32), np.float32)}))
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE and "broken" in err.value.details()


def test_batch_mismatch_and_oversize(node):
    with pytest.raises(grpc.RpcError) as err:
        node.infer(build_infer_request("batched", {"INPUT0": np.ones((5, 32), np.float32)}))
    assert err.value.code() == INVALID and "1..4" in err.value.details()


def test_message_over_receive_limit_is_resource_exhausted(node):
    big = np.ones((9000, 32), np.float32)  # ~1.1 MiB > the 1 MiB limit configured
    with pytest.raises(grpc.RpcError) as err:
        node.infer(build_infer_request("mlp", {"INPUT0": big}))
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    ok = node.infer(build_infer_request("mlp", {"INPUT0": np.ones((8, 32), np.float32)}))
    assert ok.model_name == "mlp"


# ------------------------------------------------------------------------------------- fuzz
_DATATYPES = ["FP32", "FP64", "INT8", "BYTES", "BOOL", "UINT64", "", "fp32"]


@st.composite
def mutated_requests(draw):
    """A valid mlp or multi request with a few random mutations applied."""
    family = draw(st.sampled_from(["mlp", "batched", "multi"]))
    if family != "multi":  # "batched" goes through the dynamic batcher (max_batch_size 4)
        request = build_infer_request(family, {"INPUT0": np.ones((draw(st.integers(1, 5)), 32), np.float32)},
                                      raw=draw(st.booleans()))
    else:
        request = build_infer_request("multi", multi_inputs(batch=draw(st.integers(1, 2))), raw=draw(st.booleans()))
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["name", "datatype", "shape", "raw", "model", "version", "drop", "output",
                                     "typed"]))
        i = draw(st.integers(0, len(request.inputs) - 1))
        tensor = request.inputs[i]
        if kind == "name":
            tensor.name = draw(st.text(max_size=8))
        elif kind == "datatype":
            tensor.datatype = draw(st.sampled_from(_DATATYPES))
        elif kind == "shape":
            del tensor.shape[:]
            tensor.shape.extend(draw(st.lists(st.integers(-3, 2**62), max_size=4)))
        elif kind == "raw" and request.raw_input_contents:
            request.raw_input_contents[i] = draw(st.binary(max_size=300))
        elif kind == "model":
            request.model_name = draw(st.sampled_from(["mlp", "batched", "multi", "ghost", "broken", ""]))
        elif kind == "version":
            request.model_version = draw(st.sampled_from(["", "1", "2", "-1", "x", "01"]))
        elif kind == "drop":
            del request.inputs[i]
            if request.raw_input_contents:
                del request.raw_input_contents[i]
            if not request.inputs:
                break
        elif kind == "output":
            request.outputs.add(name=draw(st.sampled_from(["OUTPUT0", "SUM", "nope", ""])))
        elif kind == "typed":
            tensor.contents.int64_contents.extend(draw(st.lists(st.integers(-2**63, 2**63 - 1), max_size=5)))
    return request


@settings(max_examples=150, deadline=2000, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                   HealthCheck.too_slow])
@given(request_=mutated_requests())
def test_fuzzed_requests_get_allowed_codes_and_node_stays_up(node, request_):
    try:
        node.infer(request_)
        code = grpc.StatusCode.OK
    except grpc.RpcError as exc:
        code = exc.code()
        assert exc.details(), "errors carry a message"
    assert code in ALLOWED_CODES, code
    assert node.stub.ServerLive(inference_pb2.ServerLiveRequest(), timeout=RPC_TIMEOUT_S).live


def test_huge_bytes_shape_over_few_bytes_is_refused_before_allocating(node):
    import tracemalloc

    from edgeloop.protocol.codec import raw_to_bytes_tensor
    from edgeloop.protocol.errors import ProtocolError

    tracemalloc.start()
    try:
        with pytest.raises(ProtocolError) as err:
            raw_to_bytes_tensor(struct.pack("<I", 1) + b"a", (1 << 22, 3), "input 'IN_BYTES'")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20, f"{peak} bytes allocated for a 5-byte tensor"  # not 12 Mi object slots
    assert "5 bytes" in err.value.message and "[4194304, 3]" in err.value.message
    with pytest.raises(grpc.RpcError) as rpc_err:  # over the wire: 2**30 x 3 elements would be 24 GiB of slots
        node.infer(bytes_request(struct.pack("<I", 1) + b"a", shape=(1 << 30, 3)))
    assert rpc_err.value.code() == INVALID and "IN_BYTES" in rpc_err.value.details()
