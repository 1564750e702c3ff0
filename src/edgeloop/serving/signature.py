"""A loaded model's input/output signature, and the per-request checks derived from it.

Everything a request is checked against (names, datatypes, ranks, static dims, element sizes) is
computed once when the version loads, so the hot path is a few dict lookups and integer compares.
Messages name the field, the value received and what was expected.
"""
from __future__ import annotations

import sys

import numpy as np

from edgeloop.protocol.codec import DATATYPES, bytes_tensor_to_raw, decode_input, element_count, raw_to_bytes_tensor
from edgeloop.protocol.errors import invalid_argument, quote, quote_shape

#: onnxruntime type strings -> protocol datatypes.
ORT_TYPES = {
    "tensor(bool)": "BOOL",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(string)": "BYTES",
}


#: ``np.ndarray(shape, dtype, buffer)``: the same zero-copy view as ``frombuffer(...).reshape``, in one call.
_ndarray = np.ndarray


class SignatureError(Exception):
    """The model's graph cannot be served (unsupported tensor type, batching without a batch dim)."""


class TensorSpec:
    """One input or output: name, datatype and shape (-1 = dynamic), plus precomputed check tables."""

    __slots__ = ("name", "datatype", "dtype", "itemsize", "shape", "rank", "static_dims", "is_bytes", "what",
                 "dim_names")

    def __init__(self, name: str, datatype: str, shape: tuple[int, ...], kind: str,
                 dim_names: tuple[str | None, ...] = ()) -> None:
        self.name = name
        self.datatype = datatype
        self.dtype = DATATYPES[datatype].dtype
        self.itemsize = DATATYPES[datatype].itemsize
        self.shape = shape
        self.rank = len(shape)
        self.static_dims = tuple((axis, dim) for axis, dim in enumerate(shape) if dim >= 0)
        self.is_bytes = datatype == "BYTES"
        self.what = f"{kind} {quote(name)}"
        #: the graph's symbolic name of each dynamic dim (``"batch"``), None where it has none
        self.dim_names = tuple(dim_names) or (None,) * self.rank

    def __repr__(self) -> str:
        return f"TensorSpec({self.name!r}, {self.datatype}, {list(self.shape)})"

    def check_shape(self, shape: tuple) -> int:
        """Validate a request shape against this spec; return its element count."""
        if len(shape) != self.rank:
            raise invalid_argument(f"{self.what}: shape {quote_shape(shape)} has {len(shape)} dimensions; expected "
                                   f"{self.rank} matching {list(self.shape)}")
        for axis, dim in self.static_dims:
            if shape[axis] != dim:
                raise invalid_argument(f"{self.what}: shape {quote_shape(shape)} has {shape[axis]} at dimension "
                                       f"{axis}; expected {dim} (model shape {list(self.shape)}, -1 = any)")
        return element_count(shape, self.what)

    def warmup_array(self) -> np.ndarray:
        """A zero tensor of this spec with every dynamic dim set to 1."""
        shape = tuple(1 if dim < 0 else dim for dim in self.shape)
        if self.is_bytes:
            return np.full(shape, "", dtype=object)
        return np.zeros(shape, dtype=self.dtype)


def _dims(shape) -> tuple[int, ...]:
    return tuple(dim if isinstance(dim, int) and dim >= 0 else -1 for dim in shape)


def _dim_names(shape) -> tuple[str | None, ...]:
    return tuple(dim if isinstance(dim, str) and dim else None for dim in shape)


def _shared_dims(inputs) -> tuple[tuple[str, tuple[tuple[int, str, int], ...]], ...]:
    """``(symbol, ((input index, input name, axis), ...))`` for each symbolic dim named by 2+ input dims.

    ONNX gives dims of one name one size; onnxruntime does not check that across inputs, and a
    mismatch fails deep inside a kernel.  The request is refused up front instead.
    """
    places: dict[str, list] = {}
    for index, spec in enumerate(inputs):
        for axis, symbol in enumerate(spec.dim_names):
            if symbol is not None:
                places.setdefault(symbol, []).append((index, spec.name, axis))
    return tuple((symbol, tuple(where)) for symbol, where in places.items() if len(where) > 1)


class ModelSignature:
    """Inputs and outputs of one loaded version, and the request decoding checked against them."""

    def __init__(self, inputs: list[TensorSpec], outputs: list[TensorSpec], max_batch_size: int = 0) -> None:
        self.inputs = tuple(inputs)
        self.outputs = tuple(outputs)
        self.input_by_name = {s.name: s for s in self.inputs}
        self.output_by_name = {s.name: s for s in self.outputs}
        self.output_names = [s.name for s in self.outputs]
        self.max_batch_size = max_batch_size
        self._n_inputs = len(self.inputs)
        self._expected_inputs = ", ".join(repr(s.name) for s in self.inputs)
        self._expected_outputs = ", ".join(repr(s.name) for s in self.outputs)
        self._shared_dims = _shared_dims(self.inputs)
        if max_batch_size > 0:
            for spec in self.inputs + self.outputs:
                if spec.rank == 0 or spec.shape[0] != -1:
                    raise SignatureError(f"max_batch_size={max_batch_size} needs a dynamic first (batch) dimension "
                                         f"on every input and output, but {spec.what} has shape {list(spec.shape)}")

    @classmethod
    def from_session(cls, session, max_batch_size: int = 0) -> "ModelSignature":
        """Read the signature of an onnxruntime session; unsupported tensor types raise SignatureError."""
        def specs(args, kind):
            out = []
            for arg in args:
                datatype = ORT_TYPES.get(arg.type)
                if datatype is None:
                    raise SignatureError(f"{kind} {quote(arg.name)} has type {arg.type}; expected a tensor of one of "
                                         f"{', '.join(ORT_TYPES)}")
                out.append(TensorSpec(arg.name, datatype, _dims(arg.shape), kind, _dim_names(arg.shape)))
            return out

        return cls(specs(session.get_inputs(), "input"), specs(session.get_outputs(), "output"), max_batch_size)

    def warmup_feeds(self) -> dict[str, np.ndarray]:
        """Inputs for the warm-up run that proves a version can answer before it is READY."""
        return {spec.name: spec.warmup_array() for spec in self.inputs}

    # ------------------------------------------------------------------------------- requests
    def decode(self, request) -> tuple[dict[str, np.ndarray], int]:
        """Check a ModelInferRequest's inputs and decode them into onnxruntime feeds.

        Returns ``(feeds, batch)``; ``batch`` is the shared first dimension when the model batches,
        else 1.  Raises ProtocolError(INVALID_ARGUMENT) naming the offending field.
        """
        inputs = request.inputs
        raws = request.raw_input_contents
        n = len(inputs)
        if n != self._n_inputs:
            self._explain_input_names(inputs)
        use_raw = len(raws) > 0
        if use_raw and len(raws) != n:
            raise invalid_argument(f"raw_input_contents has {len(raws)} entries for {n} inputs; expected one "
                                   f"entry per input, in the order of 'inputs'")
        feeds = {}
        batch = 1
        by_name = self.input_by_name
        batching = self.max_batch_size > 0
        for i in range(n):
            tensor = inputs[i]
            spec = by_name.get(tensor.name)
            if spec is None or spec.name in feeds:
                self._explain_input_names(inputs)
            if tensor.datatype != spec.datatype:
                raise invalid_argument(f"{spec.what}: datatype {quote(tensor.datatype)}; expected "
                                       f"{spec.datatype!r}")
            shape = tensor.shape[:]  # a list: the cheapest copy out of the protobuf container
            count = spec.check_shape(shape)
            if use_raw:
                if tensor.HasField("contents"):
                    raise invalid_argument(f"{spec.what}: has both typed contents and raw_input_contents[{i}]; "
                                           f"expected exactly one")
                raw = raws[i]
                if spec.is_bytes:
                    array = _to_ort_strings(raw_to_bytes_tensor(raw, shape, spec.what), spec.what)
                else:
                    if len(raw) != count * spec.itemsize:
                        raise invalid_argument(
                            f"{spec.what}: raw_input_contents[{i}] holds {len(raw)} bytes; expected "
                            f"{count * spec.itemsize} (shape {quote_shape(shape)} x {spec.itemsize} bytes of "
                            f"{spec.datatype})")
                    array = _ndarray(shape, spec.dtype, raw)  # a read-only view of the bytes, no copy
            else:
                array = decode_input(tensor, None, spec.what)
                if spec.is_bytes:
                    array = _to_ort_strings(array, spec.what)
            if batching:
                b = shape[0]
                if i == 0:
                    batch = b
                    if b < 1 or b > self.max_batch_size:
                        raise invalid_argument(f"{spec.what}: batch dimension {b} (shape {quote_shape(shape)}); "
                                               f"expected 1..{self.max_batch_size} (max_batch_size)")
                elif b != batch:
                    raise invalid_argument(f"{spec.what}: batch dimension {b}; expected {batch}, the batch "
                                           f"dimension of input {quote(inputs[0].name)}")
            feeds[spec.name] = array
        if self._shared_dims:
            self._check_shared_dims(feeds)
        return feeds, batch

    def _check_shared_dims(self, feeds) -> None:
        """Dims the graph gives one symbolic name (``"batch"`` on every input) must agree across inputs."""
        inputs = self.inputs
        for symbol, places in self._shared_dims:
            (first_index, first_name, first_axis), *rest = places
            size = feeds[first_name].shape[first_axis]
            for index, name, axis in rest:
                other = feeds[name].shape[axis]
                if other != size:
                    raise invalid_argument(
                        f"{inputs[index].what}: dimension {axis} is {other} (shape {list(feeds[name].shape)}); "
                        f"expected {size}, the size of dimension {first_axis} of {inputs[first_index].what}: the "
                        f"model names both {symbol!r}, so they must be equal")

    def _explain_input_names(self, inputs) -> None:
        seen = set()
        for tensor in inputs:
            if tensor.name not in self.input_by_name:
                raise invalid_argument(f"inputs: unknown input name {quote(tensor.name)}; expected one of "
                                       f"{self._expected_inputs}")
            if tensor.name in seen:
                raise invalid_argument(f"inputs: input {quote(tensor.name)} appears more than once; expected each "
                                       f"input once")
            seen.add(tensor.name)
        missing = [s.name for s in self.inputs if s.name not in seen]
        raise invalid_argument(f"inputs: missing input(s) {', '.join(map(repr, missing))}; the model expects "
                               f"{self._expected_inputs}")

    def requested_outputs(self, request) -> tuple[TensorSpec, ...]:
        """The outputs a request asks for (all when ``outputs`` is empty), checked by name."""
        wanted = request.outputs
        if not wanted:
            return self.outputs
        specs = []
        for out in wanted:
            spec = self.output_by_name.get(out.name)
            if spec is None:
                raise invalid_argument(f"outputs: unknown output name {quote(out.name)}; expected one of "
                                       f"{self._expected_outputs}")
            if spec in specs:
                raise invalid_argument(f"outputs: output {quote(out.name)} is requested more than once; expected "
                                       f"each output at most once")
            specs.append(spec)
        return tuple(specs)


def _to_ort_strings(array: np.ndarray, what: str) -> np.ndarray:
    """onnxruntime string tensors take ``str``: BYTES elements must be UTF-8."""
    flat = array.reshape(-1)
    out = np.empty(flat.shape[0], dtype=object)
    for i, item in enumerate(flat):
        try:
            out[i] = item.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise invalid_argument(f"{what}: BYTES element {i} is not valid UTF-8 ({exc.reason} at byte "
                                   f"{exc.start}); expected UTF-8 text for a string tensor") from None
    return out.reshape(array.shape)


def _little_endian_bytes(array: np.ndarray) -> bytes:
    return array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()


#: Raw little-endian bytes of a numeric output (onnxruntime answers in native order): on a
#: little-endian host that is ``tobytes()`` itself, so the hot path pays nothing for the guarantee.
wire_bytes = np.ndarray.tobytes if sys.byteorder == "little" else _little_endian_bytes


def output_raw(spec: TensorSpec, array: np.ndarray) -> bytes:
    """Raw bytes of one output in the protocol layout (length-prefixed UTF-8 for strings)."""
    if spec.is_bytes:
        return bytes_tensor_to_raw(array)
    return wire_bytes(array)


def check_declared(signature: ModelSignature, manifest: dict | None) -> None:
    """If a manifest declares ``inputs``/``outputs`` ([{name, datatype, shape}]), the graph must match."""
    if not manifest:
        return
    for kind, specs in (("inputs", signature.inputs), ("outputs", signature.outputs)):
        declared = manifest.get(kind)
        if declared is None:
            continue
        actual = [{"name": s.name, "datatype": s.datatype, "shape": list(s.shape)} for s in specs]
        try:
            wanted = [{"name": d["name"], "datatype": d["datatype"], "shape": [int(x) for x in d["shape"]]}
                      for d in declared]
        except (TypeError, KeyError, ValueError):
            raise SignatureError(f"manifest {kind} is {quote(declared)}; expected a list of "
                                 f"{{name, datatype, shape}} objects") from None
        if wanted != actual:
            raise SignatureError(f"signature mismatch: the manifest declares {kind} {quote(wanted, 1000)} but the "
                                 f"model has {quote(actual, 1000)}")


__all__ = ["ModelSignature", "ORT_TYPES", "SignatureError", "TensorSpec", "check_declared", "output_raw"]
