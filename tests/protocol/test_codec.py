"""numpy <-> inference tensor codecs: every datatype both ways, Triton's BYTES format, clear errors."""
from __future__ import annotations

import struct

import grpc
import numpy as np
import pytest

from edgeloop.protocol import inference_pb2
from edgeloop.protocol.codec import (DATATYPES, build_infer_request, bytes_tensor_to_raw, datatype_of, decode_input,
                                     encode_output, infer_response_to_numpy, numpy_to_infer_input,
                                     raw_to_bytes_tensor)
from edgeloop.protocol.errors import ProtocolError

NUMERIC = [d for d in DATATYPES if d != "BYTES"]


def sample(datatype, shape=(2, 3)):
    if datatype == "BOOL":
        return np.array([[True, False, True], [False, False, True]])
    dtype = DATATYPES[datatype].dtype
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        values = np.arange(6, dtype=np.int64).reshape(shape).astype(dtype)
        values[0, 0], values[1, 2] = info.min, info.max
        return values
    return (np.arange(6).reshape(shape) / 7 - 0.3).astype(dtype)


@pytest.mark.parametrize("datatype", NUMERIC)
@pytest.mark.parametrize("raw", [True, False], ids=["raw", "typed"])
def test_numeric_round_trip(datatype, raw):
    array = sample(datatype)
    tensor, data = numpy_to_infer_input("t", array, raw=raw)
    assert tensor.datatype == datatype and list(tensor.shape) == [2, 3]
    assert (data is None) != raw
    decoded = decode_input(tensor, data)
    assert decoded.dtype == array.dtype
    np.testing.assert_array_equal(decoded, array)


def test_raw_decoding_is_zero_copy():
    data = np.arange(4, dtype=np.float32).tobytes()
    tensor = inference_pb2.ModelInferRequest.InferInputTensor(name="x", datatype="FP32", shape=[2, 2])
    decoded = decode_input(tensor, data)
    assert not decoded.flags.owndata and not decoded.flags.writeable


def test_bytes_format_is_length_prefixed_little_endian():
    raw = bytes_tensor_to_raw(np.array([b"ab", "é", b""], dtype=object))
    assert raw == struct.pack("<I", 2) + b"ab" + struct.pack("<I", 2) + "é".encode() + struct.pack("<I", 0)
    back = raw_to_bytes_tensor(raw, [3])
    assert back.tolist() == [b"ab", "é".encode(), b""]


@pytest.mark.parametrize("raw", [True, False], ids=["raw", "typed"])
def test_bytes_round_trip(raw):
    array = np.array([[b"x", b"\x00\xff"], [b"", b"long" * 10]], dtype=object)
    tensor, data = numpy_to_infer_input("s", array, raw=raw)
    assert tensor.datatype == "BYTES"
    assert decode_input(tensor, data).tolist() == array.tolist()


def test_encode_output_and_response_to_numpy():
    response = inference_pb2.ModelInferResponse(model_name="m")
    for name, array in (("a", sample("FP16")), ("b", np.array(["x", "yz"], dtype=object))):
        tensor, raw = encode_output(name, array)
        response.outputs.append(tensor)
        response.raw_output_contents.append(raw)
    out = infer_response_to_numpy(response)
    np.testing.assert_array_equal(out["a"], sample("FP16"))
    assert out["b"].tolist() == [b"x", b"yz"]


def test_build_infer_request():
    request = build_infer_request("m", {"x": np.ones((1, 2), np.float32), "s": np.array([b"a"], dtype=object)},
                                  model_version="3", request_id="r1", outputs=["y"])
    assert (request.model_name, request.model_version, request.id) == ("m", "3", "r1")
    assert [t.name for t in request.inputs] == ["x", "s"] and len(request.raw_input_contents) == 2
    assert [o.name for o in request.outputs] == ["y"]


def test_datatype_of():
    assert datatype_of(np.float32) == "FP32" and datatype_of(np.dtype(">i4")) == "INT32"
    assert datatype_of(np.dtype("U3")) == "BYTES" and datatype_of(object) == "BYTES"
    with pytest.raises(ValueError, match="complex64"):
        datatype_of(np.complex64)


def tensor(datatype="FP32", shape=(2,), name="x"):
    return inference_pb2.ModelInferRequest.InferInputTensor(name=name, datatype=datatype, shape=shape)


@pytest.mark.parametrize("make, raw, words", [
    (lambda: tensor("FLOAT"), b"", ["'FLOAT'", "FP32"]),
    (lambda: tensor(shape=(2, -1)), b"", ["-1"]),
    (lambda: tensor(shape=(2**33, 2**33)), b"", ["elements"]),
    (lambda: tensor(shape=(3,)), b"\0" * 8, ["8 bytes", "expected 12"]),
    (lambda: tensor("BYTES", (1,)), struct.pack("<I", 5) + b"abc", ["length prefix 5"]),
    (lambda: tensor("BYTES", (2,)), struct.pack("<I", 1) + b"a" + b"\0\0\0", ["element 1"]),
    (lambda: tensor("BYTES", (2,)), struct.pack("<I", 1) + b"a", ["too few", "expected at least 8"]),
    (lambda: tensor("BYTES", (1,)), struct.pack("<I", 1) + b"ab", ["1 bytes after"]),
])
def test_decode_errors_are_invalid_argument_and_name_the_tensor(make, raw, words):
    with pytest.raises(ProtocolError) as err:
        decode_input(make(), raw)
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "'x'" in err.value.message
    for word in words:
        assert word in err.value.message


def test_typed_errors():
    t = tensor("INT16", (2,))
    t.contents.int_contents.extend([1, 40000])
    with pytest.raises(ProtocolError, match="40000 is out of range for INT16"):
        decode_input(t, None)
    t = tensor("FP32", (2,))
    t.contents.fp32_contents.append(1.0)
    with pytest.raises(ProtocolError, match="holds 1 values; expected 2"):
        decode_input(t, None)
    t = tensor("FP32", (1,))
    t.contents.fp32_contents.append(1.0)
    with pytest.raises(ProtocolError, match="both typed contents and raw"):
        decode_input(t, b"\0" * 4)
    t = tensor("FP32", (1,))
    t.contents.fp32_contents.append(1.0)
    t.contents.int64_contents.append(1)
    with pytest.raises(ProtocolError, match="int64_contents is set for datatype FP32"):
        decode_input(t, None)


# ------------------------------------------------------------------------------- byte order
LITTLE_ENDIAN_FORMATS = {"UINT16": "<H", "UINT32": "<I", "UINT64": "<Q", "INT16": "<h", "INT32": "<i",
                         "INT64": "<q", "FP16": "<e", "FP32": "<f", "FP64": "<d"}


@pytest.mark.parametrize("datatype, fmt", LITTLE_ENDIAN_FORMATS.items())
@pytest.mark.parametrize("order", ["<", ">", "="], ids=["little", "big", "native"])
def test_raw_bytes_are_little_endian_whatever_the_array_byte_order(datatype, fmt, order):
    values = [1, 2, 300] if datatype != "FP16" else [1.5, -2.0, 0.25]
    array = np.array(values, dtype=DATATYPES[datatype].dtype.newbyteorder(order))
    tensor, data = numpy_to_infer_input("t", array)
    assert tensor.datatype == datatype
    assert data == struct.pack(f"<{len(values)}{fmt[1]}", *values)
    decoded = decode_input(tensor, data)
    assert decoded.dtype.byteorder in ("<", "=") and decoded.dtype.newbyteorder("<") == decoded.dtype
    assert decoded.tolist() == values


def test_every_multi_byte_datatype_is_spelled_little_endian():
    for name, dt in DATATYPES.items():
        if dt.itemsize > 1:
            assert dt.dtype.str.startswith("<"), (name, dt.dtype.str)


def test_decoding_reads_little_endian_bytes():
    raw = struct.pack("<3i", 1, -2, 70000)
    tensor = inference_pb2.ModelInferRequest.InferInputTensor(name="x", datatype="INT32", shape=[3])
    assert decode_input(tensor, raw).tolist() == [1, -2, 70000]


# --------------------------------------------------------------------------- shapes, echoes
@pytest.mark.parametrize("shape, needle", [
    ([0, 2**62], "spans more than 4294967296 elements"),
    ([2**40, 0], "spans more than 4294967296 elements"),
    ([2**16, 2**16, 2], "spans more than 4294967296 elements"),
    ([3, -1], "negative dimension -1"),
])
def test_element_count_bounds_every_dimension_even_with_a_zero(shape, needle):
    from edgeloop.protocol.codec import element_count

    with pytest.raises(ProtocolError) as err:
        element_count(shape, "input 'x'")
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT and needle in err.value.message


def test_element_count_of_sane_shapes():
    from edgeloop.protocol.codec import element_count

    assert element_count([0, 5], "x") == 0 and element_count([2, 3], "x") == 6 and element_count([], "x") == 1
    assert element_count([2**16, 2**16], "x") == 2**32


def test_a_long_shape_is_refused_quickly_and_quoted_short():
    from edgeloop.protocol.codec import element_count

    with pytest.raises(ProtocolError) as err:
        element_count([2**20] * 1_000_000, "x")  # stops at the first product over the limit
    assert "(1000000 dimensions in all)" in err.value.message and len(err.value.message) < 400


def test_unsupported_datatype_is_quoted_short():
    tensor = inference_pb2.ModelInferRequest.InferInputTensor(name="n" * 5000, datatype="D" * 5000, shape=[1])
    with pytest.raises(ProtocolError) as err:
        decode_input(tensor, b"\0")
    assert "(5000 characters in all)" in err.value.message and len(err.value.message) < 1000
