"""Requests as raw bytes: what does not parse is INVALID_ARGUMENT, a stream survives it, and a seeded
fuzz of 5,000 byte mutations of a valid ModelInferRequest only ever gets documented statuses."""
from __future__ import annotations

import random
import time

import grpc
import numpy as np
import onnxruntime as ort
import pytest
from serving_fixtures import RPC_TIMEOUT_S

from edgeloop.config import ModelConfig
from edgeloop.protocol import inference_pb2
from edgeloop.protocol.codec import build_infer_request, decode_input, infer_response_to_numpy
from edgeloop.serving.demo_models import build_mlp, write_model

SERVICE = "/inference.GRPCInferenceService/"
FUZZ_REQUESTS = 5000
FUZZ_BUDGET_S = 120.0  # a bound on the loop, not a speed claim (typically well under 30 s)
ALLOWED = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
           grpc.StatusCode.RESOURCE_EXHAUSTED}
#: not a protobuf message: field 1 as a length-delimited record whose length runs past the end
GARBAGE = b"\x0a\xff\xff\xff\x0f" + b"x" * 10


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    from serving_fixtures import NodeHandle, make_config

    from edgeloop.node import EdgeNode

    root = tmp_path_factory.mktemp("raw") / "models"
    write_model(root, "mlp", 1, build_mlp())
    write_model(root, "mlpb", 1, build_mlp())  # the same graph behind the dynamic batcher
    handle = NodeHandle(EdgeNode(make_config(root, [ModelConfig(name="mlpb", max_batch_size=4)])).start())
    yield handle
    handle.close()


def raw_call(node, method):
    """A unary call that sends bytes as they are and returns the response's bytes."""
    return node.channel.unary_unary(SERVICE + method, request_serializer=None, response_deserializer=None)


def valid_request_bytes(batch=2, model="mlp"):
    x = np.random.default_rng(batch).standard_normal((batch, 32)).astype(np.float32)
    return build_infer_request(model, {"INPUT0": x}, request_id="fuzz").SerializeToString()


@pytest.mark.parametrize("method, message", [
    ("ModelInfer", "inference.ModelInferRequest"),
    ("ModelMetadata", "inference.ModelMetadataRequest"),
    ("ModelConfig", "inference.ModelConfigRequest"),
    ("RepositoryModelLoad", "inference.RepositoryModelLoadRequest"),
    ("ServerLive", "inference.ServerLiveRequest"),
])
def test_bytes_that_do_not_parse_are_invalid_argument(node, method, message):
    with pytest.raises(grpc.RpcError) as err:
        raw_call(node, method)(GARBAGE, timeout=RPC_TIMEOUT_S)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
    assert f"request is not a valid {message}" in err.value.details()
    assert "15 bytes" in err.value.details()
    ok = inference_pb2.ModelInferResponse.FromString(raw_call(node, "ModelInfer")(valid_request_bytes(),
                                                                                  timeout=RPC_TIMEOUT_S))
    assert ok.model_name == "mlp"


def test_an_unparseable_message_in_a_stream_is_answered_and_the_stream_goes_on(node):
    stream = node.channel.stream_stream(SERVICE + "ModelStreamInfer", request_serializer=None,
                                        response_deserializer=inference_pb2.ModelStreamInferResponse.FromString)
    replies = list(stream(iter([valid_request_bytes(1), GARBAGE, valid_request_bytes(2)]), timeout=RPC_TIMEOUT_S))
    assert len(replies) == 3
    assert not replies[0].error_message and list(replies[0].infer_response.outputs[0].shape) == [1, 4]
    assert replies[1].error_message.startswith("INVALID_ARGUMENT: request is not a valid inference.ModelInferRequest")
    assert not replies[2].error_message and list(replies[2].infer_response.outputs[0].shape) == [2, 4]


# ------------------------------------------------------------------------------------- fuzz
def mutate(data: bytes, rng: random.Random) -> bytes:
    """1..4 random byte-level edits: flip a bit, overwrite, insert, delete, truncate, duplicate a slice."""
    out = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        kind = rng.randrange(6)
        at = rng.randrange(len(out) + 1) if out else 0
        if kind == 0 and out:
            out[min(at, len(out) - 1)] ^= 1 << rng.randrange(8)
        elif kind == 1 and out:
            out[min(at, len(out) - 1)] = rng.randrange(256)
        elif kind == 2:
            out[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        elif kind == 3:
            del out[at:at + rng.randint(1, 16)]
        elif kind == 4:
            del out[at:]
        else:
            end = min(len(out), at + rng.randint(1, 32))
            out[at:at] = out[at:end]
    return bytes(out)


def expected_outputs(session, request) -> dict[str, np.ndarray]:
    """What onnxruntime computes locally for the (mutated, but accepted) request's inputs."""
    raws = request.raw_input_contents
    feeds = {t.name: decode_input(t, raws[i] if raws else None) for i, t in enumerate(request.inputs)}
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feeds)))


def test_fuzzed_raw_requests_get_documented_statuses_and_correct_answers(node):
    rng = random.Random(20261129)
    session = ort.InferenceSession(build_mlp().SerializeToString(), providers=["CPUExecutionProvider"])
    call = raw_call(node, "ModelInfer")
    bases = [valid_request_bytes(1), valid_request_bytes(3), valid_request_bytes(2, "mlpb")]
    codes: dict[grpc.StatusCode, int] = {}
    deadline = time.monotonic() + FUZZ_BUDGET_S
    for i in range(FUZZ_REQUESTS):
        assert time.monotonic() < deadline, f"fuzz loop over its {FUZZ_BUDGET_S} s budget after {i} requests"
        data = mutate(bases[i % len(bases)], rng)
        try:
            reply = call(data, timeout=RPC_TIMEOUT_S)
        except grpc.RpcError as exc:
            code = exc.code()
            assert code in ALLOWED, (code, exc.details(), data)
            assert exc.details() and len(exc.details()) < 4000, (code, data)
            codes[code] = codes.get(code, 0) + 1
            continue
        codes[grpc.StatusCode.OK] = codes.get(grpc.StatusCode.OK, 0) + 1
        request = inference_pb2.ModelInferRequest.FromString(data)  # the node accepted it, so it parses
        got = infer_response_to_numpy(inference_pb2.ModelInferResponse.FromString(reply))
        want = expected_outputs(session, request)
        assert got and set(got) <= set(want), (got.keys(), data)
        for name, array in got.items():
            np.testing.assert_allclose(array, want[name], rtol=1e-5, atol=1e-6, equal_nan=True)
    # the mutations reach every layer: the parser, the checks, and the model itself
    assert codes.get(grpc.StatusCode.INVALID_ARGUMENT, 0) > 100 and codes.get(grpc.StatusCode.OK, 0) > 100, codes
    reply = inference_pb2.ModelInferResponse.FromString(call(bases[1], timeout=RPC_TIMEOUT_S))
    want = expected_outputs(session, inference_pb2.ModelInferRequest.FromString(bases[1]))
    np.testing.assert_allclose(infer_response_to_numpy(reply)["OUTPUT0"], want["OUTPUT0"], rtol=1e-5, atol=1e-6)
