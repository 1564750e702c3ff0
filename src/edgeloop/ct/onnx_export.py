"""The built-in models as ONNX graphs (onnx.helper), and their weights read back for a warm start.

One graph shape for every built-in classifier, so serving, evaluation and compression see the same
signature: input ``input`` float32 [batch, d]; outputs ``probabilities`` float32 [batch, C] and
``label`` int64 [batch].  Standardisation (the training window's mean and 1/std) is part of the graph (Sub, Mul),
so the edge cannot apply a different one.  Dense layers are MatMul + Add (what int8 dynamic
quantisation and the low-rank rewrite act on).  Bytes are serialised deterministically, with no
timestamps, so the same weights always give the same bytes.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

import edgeloop

#: Opset and IR version every onnxruntime >= 1.17 accepts (the same as the serving demo models).
OPSET = 17
IR_VERSION = 9

INPUT = "input"
PROBABILITIES = "probabilities"
LABEL = "label"
#: The dynamic first dimension (the edges batch requests along it).
BATCH = "batch"
#: Upper bound on a model we read back (a warm start from a champion's bytes): 256 MiB.
MAX_MODEL_BYTES = 256 << 20


class ModelFormatError(ValueError):
    """The bytes are not a built-in model this module can read back; the message says what differs."""


@dataclass(frozen=True)
class DenseModel:
    """A standardised softmax classifier: ``softmax(dense_L(...relu(dense_1((x - mean) * inv_std))))``.

    ``layers`` is ((W, b), ...) in float32, W of shape (in, out); one layer is multinomial logistic
    regression, more is an MLP with ReLU between layers.  ``classes`` are the label values (int64)
    that column j of the probabilities stands for.
    """

    kind: str  # "logistic" | "mlp"
    mean: np.ndarray
    inv_std: np.ndarray
    layers: tuple[tuple[np.ndarray, np.ndarray], ...]
    classes: np.ndarray

    @property
    def n_features(self) -> int:
        return int(self.mean.shape[0])

    def logits(self, x: np.ndarray) -> np.ndarray:
        """The pre-softmax scores in float32, in the order the graph computes them."""
        from edgeloop.kernels import dense

        h = np.ascontiguousarray((np.asarray(x, np.float32) - self.mean) * self.inv_std, dtype=np.float32)
        for i, (w, b) in enumerate(self.layers):
            last = i == len(self.layers) - 1
            h = dense(h, w, b, "identity" if last else "relu")
        return h

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        return softmax(self.logits(x))

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.classes[np.argmax(self.logits(x), axis=1)]


def softmax(z: np.ndarray) -> np.ndarray:
    """Row-wise softmax, stable for large scores."""
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def to_onnx(model: DenseModel, metadata: dict[str, str] | None = None) -> bytes:
    """The model as ONNX bytes (deterministic: same weights and metadata, same bytes)."""
    d = model.n_features
    n_classes = int(model.classes.shape[0])
    inits = [
        numpy_helper.from_array(np.asarray(model.mean, np.float32), "mean"),
        numpy_helper.from_array(np.asarray(model.inv_std, np.float32), "inv_std"),
        numpy_helper.from_array(np.asarray(model.classes, np.int64), "classes"),
    ]
    nodes = [
        helper.make_node("Sub", [INPUT, "mean"], ["centered"], name="standardise_center"),
        helper.make_node("Mul", ["centered", "inv_std"], ["standardised"], name="standardise_scale"),
    ]
    h = "standardised"
    for i, (w, b) in enumerate(model.layers, start=1):
        inits.append(numpy_helper.from_array(np.ascontiguousarray(w, np.float32), f"W{i}"))
        inits.append(numpy_helper.from_array(np.ascontiguousarray(b, np.float32), f"B{i}"))
        nodes.append(helper.make_node("MatMul", [h, f"W{i}"], [f"matmul{i}"], name=f"dense{i}_matmul"))
        nodes.append(helper.make_node("Add", [f"matmul{i}", f"B{i}"], [f"dense{i}"], name=f"dense{i}_bias"))
        h = f"dense{i}"
        if i < len(model.layers):
            nodes.append(helper.make_node("Relu", [h], [f"relu{i}"], name=f"relu{i}"))
            h = f"relu{i}"
    nodes += [
        helper.make_node("Softmax", [h], [PROBABILITIES], axis=1, name="softmax"),
        helper.make_node("ArgMax", [h], ["label_index"], axis=1, keepdims=0, name="argmax"),
        helper.make_node("Gather", ["classes", "label_index"], [LABEL], axis=0, name="label_value"),
    ]
    graph = helper.make_graph(
        nodes, f"edgeloop_{model.kind}",
        [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, [BATCH, d])],
        [helper.make_tensor_value_info(PROBABILITIES, TensorProto.FLOAT, [BATCH, n_classes]),
         helper.make_tensor_value_info(LABEL, TensorProto.INT64, [BATCH])],
        inits,
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="edgeloop",
                              producer_version=edgeloop.__version__)
    proto.ir_version = IR_VERSION
    meta = {"edgeloop.kind": model.kind, **(metadata or {})}
    for key in sorted(meta):
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, str(meta[key])
    onnx.checker.check_model(proto)
    return proto.SerializeToString(deterministic=True)


def _cut(value, limit: int = 200) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def from_onnx(data: bytes) -> DenseModel:
    """Read a built-in model's weights back from its initializers (for a warm start).

    Raises ModelFormatError naming what is missing or inconsistent: only graphs written by
    :func:`to_onnx` (kind in the metadata, W1/B1..., mean, inv_std, classes) are accepted.
    """
    if not isinstance(data, (bytes, bytearray)) or not data:
        raise ModelFormatError(f"warm_start: expected ONNX model bytes; got {_cut(type(data).__name__)}")
    if len(data) > MAX_MODEL_BYTES:
        raise ModelFormatError(f"warm_start: model is {len(data)} bytes; expected at most {MAX_MODEL_BYTES}")
    try:
        proto = onnx.load_model_from_string(bytes(data))
    except Exception as exc:  # protobuf raises DecodeError and others
        raise ModelFormatError(f"warm_start: not an ONNX model ({type(exc).__name__}: {_cut(str(exc))})") from None
    meta = {p.key: p.value for p in proto.metadata_props}
    kind = meta.get("edgeloop.kind")
    if kind not in ("logistic", "mlp"):
        raise ModelFormatError(f"warm_start: metadata 'edgeloop.kind'={_cut(kind)}; expected 'logistic' or 'mlp' "
                               "(a model written by the built-in trainers)")
    inits = {}
    for t in proto.graph.initializer:
        if t.data_location == TensorProto.EXTERNAL:
            raise ModelFormatError(f"warm_start: initializer {_cut(t.name)} references external data; not allowed")
        inits[t.name] = numpy_helper.to_array(t)
    for name in ("mean", "inv_std", "classes", "W1", "B1"):
        if name not in inits:
            raise ModelFormatError(f"warm_start: initializer {name!r} is missing; expected a built-in {kind} model")
    layers, i = [], 1
    while f"W{i}" in inits:
        w = np.ascontiguousarray(inits[f"W{i}"], np.float32)
        b = np.ascontiguousarray(inits.get(f"B{i}"), np.float32)
        if w.ndim != 2 or b.shape != (w.shape[1],) or (layers and layers[-1][0].shape[1] != w.shape[0]):
            raise ModelFormatError(f"warm_start: layer {i} has W{w.shape} and B{b.shape}; expected chained (in, out) "
                                   "and (out,)")
        layers.append((w, b))
        i += 1
    mean = np.asarray(inits["mean"], np.float32)
    inv_std = np.asarray(inits["inv_std"], np.float32)
    classes = np.asarray(inits["classes"], np.int64)
    if mean.shape != (layers[0][0].shape[0],) or inv_std.shape != mean.shape:
        raise ModelFormatError(f"warm_start: mean{mean.shape}/inv_std{inv_std.shape} do not match W1"
                               f"{layers[0][0].shape}")
    if classes.shape != (layers[-1][0].shape[1],):
        raise ModelFormatError(f"warm_start: classes{classes.shape} do not match the last layer "
                               f"{layers[-1][0].shape}")
    for arr in (mean, inv_std, *[a for layer in layers for a in layer]):
        if not np.isfinite(arr).all():
            raise ModelFormatError("warm_start: a weight is NaN or inf; expected finite weights")
    return DenseModel(kind, mean, inv_std, tuple(layers), classes)


__all__ = ["DenseModel", "IR_VERSION", "INPUT", "LABEL", "ModelFormatError", "OPSET", "PROBABILITIES",
           "from_onnx", "softmax", "to_onnx"]
