"""numpy <-> Open Inference Protocol tensors: pure functions shared by server, clients and the mesh.

Datatypes are Triton's names.  A tensor travels either as raw little-endian bytes (one entry of
``raw_input_contents`` / ``raw_output_contents`` per tensor) or in the typed ``contents`` fields.
BYTES elements in raw form are a 4-byte little-endian length followed by the bytes (Triton's format).

Typed contents follow Triton: BOOL -> bool_contents; INT8/16/32 -> int_contents; INT64 ->
int64_contents; UINT8/16/32 -> uint_contents; UINT64 -> uint64_contents; FP32 -> fp32_contents;
FP64 -> fp64_contents; BYTES -> bytes_contents.  FP16 has no typed field in the protocol; edgeloop
accepts FP16 values in fp32_contents (rounded to half precision) as an extension.

Stable public names (used by the server, ``edgeloop perf`` and the mesh):
``DATATYPES``, ``datatype_of``, ``numpy_dtype_of``, ``decode_input``, ``decode_output``,
``encode_output``, ``bytes_tensor_to_raw``, ``raw_to_bytes_tensor``, ``numpy_to_infer_input``,
``build_infer_request``, ``infer_response_to_numpy``.  Every decoding error is a ``ProtocolError``
with status INVALID_ARGUMENT whose message names the tensor, the value received and what was expected.
"""
from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

from edgeloop.protocol import inference_pb2
from edgeloop.protocol.errors import invalid_argument, quote, quote_shape

#: Elements one tensor may hold; larger shapes are refused before any allocation (see ``element_count``).
MAX_ELEMENTS = 1 << 32


@dataclass(frozen=True)
class Datatype:
    """One protocol datatype: its numpy dtype, typed-contents field and element size."""

    name: str
    dtype: np.dtype
    contents_field: str
    itemsize: int  # 0 for BYTES (variable length)


def _dt(name: str, dtype, field: str) -> Datatype:
    """The wire is little-endian: every multi-byte dtype is spelled ``<`` (the same dtype as native on x86)."""
    dtype = np.dtype(dtype)
    if dtype.itemsize > 1 and dtype != np.dtype(object):
        dtype = dtype.newbyteorder("<")
    return Datatype(name, dtype, field, 0 if dtype == np.dtype(object) else dtype.itemsize)


DATATYPES: dict[str, Datatype] = {
    d.name: d
    for d in (
        _dt("BOOL", np.bool_, "bool_contents"),
        _dt("UINT8", np.uint8, "uint_contents"),
        _dt("UINT16", "<u2", "uint_contents"),
        _dt("UINT32", "<u4", "uint_contents"),
        _dt("UINT64", "<u8", "uint64_contents"),
        _dt("INT8", np.int8, "int_contents"),
        _dt("INT16", "<i2", "int_contents"),
        _dt("INT32", "<i4", "int_contents"),
        _dt("INT64", "<i8", "int64_contents"),
        _dt("FP16", "<f2", "fp32_contents"),
        _dt("FP32", "<f4", "fp32_contents"),
        _dt("FP64", "<f8", "fp64_contents"),
        _dt("BYTES", object, "bytes_contents"),
    )
}

_BY_NUMPY: dict[np.dtype, str] = {d.dtype: d.name for d in DATATYPES.values()}
_EXPECTED_DATATYPES = ", ".join(DATATYPES)
_LEN = struct.Struct("<I")


def datatype_of(dtype) -> str:
    """The protocol datatype name for a numpy dtype (str/bytes/object arrays are BYTES)."""
    dtype = np.dtype(dtype)
    if dtype.kind in ("U", "S", "O"):
        return "BYTES"
    name = _BY_NUMPY.get(dtype.newbyteorder("<") if dtype.itemsize > 1 else dtype)
    if name is None:
        raise ValueError(f"numpy dtype {dtype} has no Open Inference Protocol datatype; expected one of "
                         f"bool, uint8-64, int8-64, float16/32/64, str/bytes/object")
    return name


def numpy_dtype_of(datatype: str) -> np.dtype:
    """The numpy dtype for a protocol datatype name (object for BYTES)."""
    try:
        return DATATYPES[datatype].dtype
    except KeyError:
        raise invalid_argument(f"datatype {quote(datatype)} is not supported; expected one of "
                               f"{_EXPECTED_DATATYPES}") from None


def element_count(shape: Iterable[int], what: str) -> int:
    """Number of elements of ``shape``; refuses negative and absurd dims (``what`` names the tensor).

    The product of the non-zero dimensions is bounded too: ``[0, 2**62]`` holds no element, but numpy
    and onnxruntime size their buffers from every dimension and overflow on it.
    """
    count = 1
    empty = False
    for dim in shape:
        if dim > 0:
            count *= dim
            if count > MAX_ELEMENTS:  # stop at once: a long shape must not grow a huge integer
                raise invalid_argument(f"{what}: shape {quote_shape(shape)} spans more than {MAX_ELEMENTS} "
                                       f"elements (the product of its non-zero dimensions); expected at most "
                                       f"{MAX_ELEMENTS}")
        elif dim == 0:
            empty = True
        else:
            raise invalid_argument(f"{what}: shape {quote_shape(shape)} has a negative dimension {dim}; "
                                   f"expected dimensions >= 0")
    return 0 if empty else count


# ---------------------------------------------------------------------------------------- BYTES
def bytes_tensor_to_raw(array) -> bytes:
    """Serialise a BYTES tensor (any array of bytes/str) as length-prefixed elements, row-major."""
    parts = []
    for item in np.asarray(array, dtype=object).reshape(-1):
        if isinstance(item, str):
            item = item.encode("utf-8")
        elif not isinstance(item, (bytes, bytearray, memoryview)):
            item = str(item).encode("utf-8")
        parts.append(_LEN.pack(len(item)))
        parts.append(bytes(item))
    return b"".join(parts)


def raw_to_bytes_tensor(raw: bytes, shape: Iterable[int], what: str = "BYTES tensor") -> np.ndarray:
    """Parse length-prefixed BYTES elements into an object array of ``bytes`` with ``shape``."""
    shape = tuple(shape)
    count = element_count(shape, what)
    pos, end = 0, len(raw)
    if count * 4 > end:  # checked before allocating: a huge shape over a few bytes must not cost memory
        raise invalid_argument(f"{what}: raw contents hold {end} bytes, too few for the {count} BYTES elements of "
                               f"shape {quote_shape(shape)}; expected at least {count * 4} (a 4-byte length prefix "
                               f"each)")
    out = np.empty(count, dtype=object)
    view = memoryview(raw)
    for i in range(count):
        if pos + 4 > end:
            raise invalid_argument(f"{what}: raw contents end after {i} of {count} BYTES elements at byte {pos}; "
                                   f"expected a 4-byte length prefix for element {i}")
        (length,) = _LEN.unpack_from(view, pos)
        pos += 4
        if pos + length > end:
            raise invalid_argument(f"{what}: BYTES element {i} has length prefix {length} but only {end - pos} "
                                   f"bytes remain; expected a prefix no larger than the remaining bytes")
        out[i] = bytes(view[pos:pos + length])
        pos += length
    if pos != end:
        raise invalid_argument(f"{what}: raw contents hold {end - pos} bytes after the {count} BYTES elements "
                               f"of shape {quote_shape(shape)}; expected exactly {count} length-prefixed elements")
    return out.reshape(shape)


# ----------------------------------------------------------------------------------- decoding
def _decode_raw(raw: bytes, dt: Datatype, shape: tuple, count: int, what: str) -> np.ndarray:
    if dt.itemsize == 0:
        return raw_to_bytes_tensor(raw, shape, what)
    expected = count * dt.itemsize
    if len(raw) != expected:
        raise invalid_argument(f"{what}: raw contents hold {len(raw)} bytes; expected {expected} "
                               f"(shape {quote_shape(shape)} x {dt.itemsize} bytes of {dt.name})")
    return np.frombuffer(raw, dtype=dt.dtype).reshape(shape)


_INT_RANGES = {np.dtype(t): (np.iinfo(t).min, np.iinfo(t).max)
               for t in (np.int8, np.int16, np.int32, np.uint8, np.uint16, np.uint32)}


def _decode_typed(contents, dt: Datatype, shape: tuple, count: int, what: str) -> np.ndarray:
    values = getattr(contents, dt.contents_field)
    for field in ("bool_contents", "int_contents", "int64_contents", "uint_contents", "uint64_contents",
                  "fp32_contents", "fp64_contents", "bytes_contents"):
        if field != dt.contents_field and len(getattr(contents, field)):  # the likelier mistake: say it first
            raise invalid_argument(f"{what}: contents.{field} is set for datatype {dt.name}; expected only "
                                   f"contents.{dt.contents_field}")
    if len(values) != count:
        raise invalid_argument(f"{what}: contents.{dt.contents_field} holds {len(values)} values; expected "
                               f"{count} for shape {quote_shape(shape)}")
    if dt.itemsize == 0:
        out = np.empty(count, dtype=object)
        out[:] = list(values)
        return out.reshape(shape)
    bounds = _INT_RANGES.get(dt.dtype)
    if bounds is not None and count:
        wide = np.asarray(values, dtype=np.int64)
        lo, hi = int(wide.min()), int(wide.max())
        if lo < bounds[0] or hi > bounds[1]:
            bad = lo if lo < bounds[0] else hi
            raise invalid_argument(f"{what}: contents.{dt.contents_field} value {bad} is out of range for "
                                   f"{dt.name}; expected {bounds[0]}..{bounds[1]}")
        return wide.astype(dt.dtype).reshape(shape)
    return np.asarray(values, dtype=dt.dtype).reshape(shape)


def decode_input(tensor, raw: bytes | None = None, what: str | None = None) -> np.ndarray:
    """Decode one ``InferInputTensor`` into a numpy array (raw bytes if given, else typed contents).

    Checks the datatype, the shape (no negative or absurd dims), that raw and typed contents are not
    both present, and that the byte length or value count matches shape x datatype.  Raw numeric
    tensors are zero-copy, read-only views of ``raw``.
    """
    what = what or f"input {quote(tensor.name)}"
    dt = DATATYPES.get(tensor.datatype)
    if dt is None:
        raise invalid_argument(f"{what}: datatype {quote(tensor.datatype)} is not supported; expected one of "
                               f"{_EXPECTED_DATATYPES}")
    shape = tuple(tensor.shape)
    count = element_count(shape, what)
    if raw is not None:
        if tensor.HasField("contents"):
            raise invalid_argument(f"{what}: has both typed contents and raw_input_contents; expected exactly one")
        return _decode_raw(raw, dt, shape, count, what)
    return _decode_typed(tensor.contents, dt, shape, count, what)


def decode_output(tensor, raw: bytes | None) -> np.ndarray:
    """Decode one ``InferOutputTensor`` (raw bytes if given, else typed contents) — the client side."""
    return decode_input(tensor, raw, what=f"output {quote(tensor.name)}")


# ----------------------------------------------------------------------------------- encoding
def to_raw(array: np.ndarray, datatype: str) -> bytes:
    """Raw little-endian bytes of ``array`` in the protocol's layout for ``datatype``."""
    if datatype == "BYTES":
        return bytes_tensor_to_raw(array)
    dtype = DATATYPES[datatype].dtype
    return np.ascontiguousarray(array, dtype=dtype).tobytes()


def encode_output(name: str, array, datatype: str | None = None):
    """An ``InferOutputTensor`` (name, datatype, shape) and its raw bytes for ``raw_output_contents``."""
    array = np.asarray(array)
    datatype = datatype or datatype_of(array.dtype)
    tensor = inference_pb2.ModelInferResponse.InferOutputTensor(name=name, datatype=datatype, shape=array.shape)
    return tensor, to_raw(array, datatype)


def numpy_to_infer_input(name: str, array, datatype: str | None = None, raw: bool = True):
    """An ``InferInputTensor`` for ``array`` and its raw bytes (``raw=True``), or with typed contents.

    Returns ``(tensor, raw_bytes)``; ``raw_bytes`` is None when the values went into typed contents.
    """
    array = np.asarray(array)
    datatype = datatype or datatype_of(array.dtype)
    tensor = inference_pb2.ModelInferRequest.InferInputTensor(name=name, datatype=datatype, shape=array.shape)
    if raw:
        return tensor, to_raw(array, datatype)
    dt = DATATYPES[datatype]
    flat = array.reshape(-1)
    field = getattr(tensor.contents, dt.contents_field)
    if datatype == "BYTES":
        field.extend(x.encode("utf-8") if isinstance(x, str) else bytes(x) for x in flat)
    elif datatype == "FP16":
        field.extend(flat.astype(np.float32).tolist())
    else:
        field.extend(flat.astype(dt.dtype).tolist())
    tensor.contents.SetInParent()  # an empty tensor still marks typed contents as present
    return tensor, None


def build_infer_request(model_name: str, inputs: Mapping[str, object], *, model_version: str = "",
                        request_id: str = "", outputs: Iterable[str] | None = None, raw: bool = True):
    """A complete ``ModelInferRequest`` from ``{input name: array}`` (raw contents unless ``raw=False``)."""
    request = inference_pb2.ModelInferRequest(model_name=model_name, model_version=model_version, id=request_id)
    for name, array in inputs.items():
        tensor, data = numpy_to_infer_input(name, array, raw=raw)
        request.inputs.append(tensor)
        if data is not None:
            request.raw_input_contents.append(data)
    for name in outputs or ():
        request.outputs.add(name=name)
    return request


def infer_response_to_numpy(response) -> dict[str, np.ndarray]:
    """``{output name: array}`` from a ``ModelInferResponse`` (raw contents, else typed contents)."""
    raws = response.raw_output_contents
    if raws and len(raws) != len(response.outputs):
        raise invalid_argument(f"response: raw_output_contents has {len(raws)} entries; expected "
                               f"{len(response.outputs)} (one per output)")
    return {t.name: decode_output(t, raws[i] if raws else None) for i, t in enumerate(response.outputs)}


__all__ = [
    "DATATYPES",
    "Datatype",
    "MAX_ELEMENTS",
    "build_infer_request",
    "bytes_tensor_to_raw",
    "datatype_of",
    "decode_input",
    "decode_output",
    "element_count",
    "encode_output",
    "infer_response_to_numpy",
    "numpy_dtype_of",
    "numpy_to_infer_input",
    "raw_to_bytes_tensor",
    "to_raw",
]
