"""Random inputs built from model metadata: every datatype, dynamic dims, raw encodings."""
import numpy as np
import pytest

from edgeloop.perf.errors import PerfError
from edgeloop.perf.inputs import InputSpec, SUPPORTED_DATATYPES, build_requests, input_specs, random_raw
from edgeloop.protocol import inference_pb2

WIDTHS = {"BOOL": 1, "UINT8": 1, "UINT16": 2, "UINT32": 4, "UINT64": 8, "INT8": 1, "INT16": 2, "INT32": 4,
          "INT64": 8, "FP16": 2, "FP32": 4, "FP64": 8, "BF16": 2}


def metadata(*tensors):
    meta = inference_pb2.ModelMetadataResponse(name="m")
    for name, datatype, shape in tensors:
        meta.inputs.add(name=name, datatype=datatype, shape=shape)
    return meta


def test_dynamic_first_dim_becomes_batch_size_and_others_one():
    specs = input_specs(metadata(("a", "FP32", [-1, 3, -1]), ("b", "INT64", [-1])), batch_size=4)
    assert specs == [InputSpec("a", "FP32", (4, 3, 1)), InputSpec("b", "INT64", (4,))]


def test_batch_size_needs_a_dynamic_first_dim():
    with pytest.raises(PerfError, match=r"--batch-size 2 cannot apply to input 'a'.*\[3, 4\]"):
        input_specs(metadata(("a", "FP32", [3, 4])), batch_size=2)
    assert input_specs(metadata(("a", "FP32", [3, 4])), batch_size=1)[0].shape == (3, 4)


def test_unknown_datatype_is_named():
    with pytest.raises(PerfError, match=r"input 'q' has datatype 'COMPLEX64'; expected one of BOOL"):
        input_specs(metadata(("q", "COMPLEX64", [1])), batch_size=1)


def test_model_without_inputs_is_refused():
    with pytest.raises(PerfError, match="declares no inputs"):
        input_specs(metadata(), batch_size=1)


@pytest.mark.parametrize("datatype", sorted(WIDTHS))
def test_fixed_width_raw_contents_have_the_right_size(datatype):
    raw = random_raw(InputSpec("t", datatype, (3, 5)), np.random.default_rng(0))
    assert len(raw) == 15 * WIDTHS[datatype]


def test_bool_raw_contents_are_zero_or_one():
    raw = random_raw(InputSpec("t", "BOOL", (64,)), np.random.default_rng(0))
    assert set(raw) == {0, 1}


def test_bytes_raw_contents_are_length_prefixed_strings():
    raw = random_raw(InputSpec("s", "BYTES", (2, 2)), np.random.default_rng(0))
    elements, offset = [], 0
    while offset < len(raw):
        length = int.from_bytes(raw[offset:offset + 4], "little")
        elements.append(raw[offset + 4:offset + 4 + length])
        offset += 4 + length
    assert offset == len(raw) and len(elements) == 4
    assert all(e.startswith(b"edgeloop-") for e in elements)


def test_every_supported_datatype_builds_a_request():
    tensors = [(f"in_{dt}", dt, [-1, 2]) for dt in SUPPORTED_DATATYPES]
    specs = input_specs(metadata(*tensors), batch_size=3)
    pool = build_requests(inference_pb2, "m", "1", specs, seed=0, pool_size=2)
    request = inference_pb2.ModelInferRequest.FromString(pool[0])
    assert request.model_name == "m" and request.model_version == "1"
    assert [t.name for t in request.inputs] == [t[0] for t in tensors]
    assert all(list(t.shape) == [3, 2] for t in request.inputs)
    assert len(request.raw_input_contents) == len(tensors)


def test_requests_are_reproducible_from_the_seed():
    specs = input_specs(metadata(("a", "FP32", [-1, 8])), batch_size=1)
    assert build_requests(inference_pb2, "m", "", specs, seed=5) == build_requests(inference_pb2, "m", "", specs, seed=5)
    assert build_requests(inference_pb2, "m", "", specs, seed=5) != build_requests(inference_pb2, "m", "", specs, seed=6)
    pool = build_requests(inference_pb2, "m", "", specs, seed=5, pool_size=4)
    assert len(set(pool)) == 4
