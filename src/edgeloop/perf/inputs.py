"""Random request payloads built from a model's metadata signature.

Every Open Inference Protocol datatype is covered.  Tensors travel in
``raw_input_contents`` (little-endian, row-major; BYTES elements as a 4-byte
little-endian length followed by the bytes), which is what Triton and our node both
accept and what costs the least to encode.  Requests are serialized once, up front,
so the load loop measures the server, not the client's protobuf encoder.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgeloop.perf.errors import PerfError

# Datatypes with a fixed-width numpy representation (BF16 has none: random 16-bit words).
_NUMPY_TYPES = {
    "BOOL": np.bool_,
    "UINT8": np.uint8,
    "UINT16": np.uint16,
    "UINT32": np.uint32,
    "UINT64": np.uint64,
    "INT8": np.int8,
    "INT16": np.int16,
    "INT32": np.int32,
    "INT64": np.int64,
    "FP16": np.float16,
    "FP32": np.float32,
    "FP64": np.float64,
}
SUPPORTED_DATATYPES = (*_NUMPY_TYPES, "BF16", "BYTES")


@dataclass(frozen=True)
class InputSpec:
    """One input tensor as it will be sent: concrete shape and datatype."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    @property
    def element_count(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


def concrete_shape(name: str, shape: list[int], batch_size: int) -> tuple[int, ...]:
    """Replace dynamic dims: the first by ``batch_size``, the others by 1."""
    out = []
    for i, dim in enumerate(shape):
        if dim >= 0:
            out.append(int(dim))
        else:
            out.append(batch_size if i == 0 else 1)
    if batch_size > 1 and (not shape or shape[0] >= 0):
        raise PerfError(
            f"--batch-size {batch_size} cannot apply to input {name!r}: its shape {list(shape)} "
            "has no dynamic first (batch) dimension; use --batch-size 1"
        )
    return tuple(out)


def input_specs(metadata, batch_size: int) -> list[InputSpec]:
    """Concrete :class:`InputSpec` for every input of a ``ModelMetadataResponse``."""
    if not metadata.inputs:
        raise PerfError(f"model {metadata.name!r} declares no inputs in its metadata; nothing to send")
    specs = []
    for tensor in metadata.inputs:
        if tensor.datatype not in SUPPORTED_DATATYPES:
            raise PerfError(
                f"input {tensor.name!r} has datatype {tensor.datatype!r}; "
                f"expected one of {', '.join(SUPPORTED_DATATYPES)}"
            )
        specs.append(InputSpec(tensor.name, tensor.datatype, concrete_shape(tensor.name, list(tensor.shape), batch_size)))
    return specs


def random_raw(spec: InputSpec, rng: np.random.Generator) -> bytes:
    """Random little-endian raw contents for one input."""
    n = spec.element_count
    if spec.datatype == "BYTES":
        parts = []
        for _ in range(n):
            text = b"edgeloop-" + str(int(rng.integers(0, 1_000_000))).encode()
            parts.append(len(text).to_bytes(4, "little") + text)
        return b"".join(parts)
    if spec.datatype == "BF16":
        return rng.integers(0x3F00, 0x4000, size=n, dtype=np.uint16).astype("<u2").tobytes()
    dtype = np.dtype(_NUMPY_TYPES[spec.datatype])
    if dtype.kind == "b":
        values = rng.integers(0, 2, size=n).astype(np.bool_)
    elif dtype.kind in "iu":
        values = rng.integers(0, 16, size=n).astype(dtype)  # small: safe for index-like inputs
    else:
        values = rng.standard_normal(n).astype(dtype)
    return values.astype(dtype.newbyteorder("<")).tobytes()


def build_requests(
    inference_pb2,
    model: str,
    version: str,
    specs: list[InputSpec],
    seed: int,
    pool_size: int = 8,
) -> list[bytes]:
    """A small pool of distinct serialized ``ModelInferRequest`` messages, reproducible from ``seed``."""
    rng = np.random.default_rng(seed)
    pool = []
    for _ in range(pool_size):
        request = inference_pb2.ModelInferRequest(model_name=model, model_version=version)
        for spec in specs:
            tensor = request.inputs.add()
            tensor.name = spec.name
            tensor.datatype = spec.datatype
            tensor.shape.extend(spec.shape)
            request.raw_input_contents.append(random_raw(spec, rng))
        pool.append(request.SerializeToString())
    return pool
