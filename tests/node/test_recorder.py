"""What the recorder builds from one answered request: inputs, outputs, and the hard-example mark."""
from __future__ import annotations

import numpy as np

from edgeloop.node.recorder import build_sample, sampled
from edgeloop.protocol import inference_pb2
from edgeloop.protocol.codec import build_infer_request
from edgeloop.serving.escalation import HARD_EXAMPLE

X = np.arange(8, dtype=np.float32).reshape(2, 4)


def _response(hard: bool | None) -> inference_pb2.ModelInferResponse:
    response = inference_pb2.ModelInferResponse(model_name="m", model_version="3", id="r1")
    out = response.outputs.add(name="OUTPUT0", datatype="FP32", shape=[2, 1])
    response.raw_output_contents.append(np.array([[0.25], [0.75]], np.float32).tobytes())
    assert out.name == "OUTPUT0"
    if hard is not None:
        response.parameters[HARD_EXAMPLE].bool_param = hard
    return response


def test_an_escalated_request_is_recorded_as_a_hard_example():
    request = build_infer_request("m", {"INPUT0": X}, request_id="r1")
    request.parameters["routing_key"].string_param = "sensor-1"
    sample = build_sample(request, _response(True), "m", 3, "r1", 1234)
    assert sample.hard_example and sample.routing_key == "sensor-1" and sample.model_version == 3
    assert np.frombuffer(sample.inputs[0].data, "<f4").reshape(list(sample.inputs[0].shape)).tolist() == X.tolist()
    assert not build_sample(request, _response(None), "m", 3, "r1", 1234).hard_example
    assert not build_sample(request, _response(False), "m", 3, "r1", 1234).hard_example


def test_sampling_is_a_stable_function_of_the_request_id():
    chosen = [sampled(f"req-{i}", 0.3) for i in range(4000)]
    assert chosen == [sampled(f"req-{i}", 0.3) for i in range(4000)]
    assert 0.25 < sum(chosen) / len(chosen) < 0.35
    assert all(sampled(f"req-{i}", 1.0) for i in range(100)) and not any(sampled(f"req-{i}", 0.0) for i in range(100))
