"""Models the project builds itself (onnx.helper), so a newcomer and the tests have something to serve.

Nothing is downloaded: ``build_mlp`` is a seeded two-layer perceptron, ``build_multi_io_model`` passes
every protocol datatype through and adds two float inputs, and ``write_model`` lays a model out in the
repository format ``<root>/<name>/<version>/model.onnx`` with a ``manifest.json`` (sha256, size).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgeloop.serving.repository import MANIFEST_FILE, MODEL_FILE, atomic_write

#: Opset and IR version every onnxruntime >= 1.17 accepts.
OPSET = 17
IR_VERSION = 9

#: Protocol datatype -> ONNX element type, for the pass-through tensors of the multi-I/O model.
ONNX_TYPES = {
    "BOOL": TensorProto.BOOL,
    "UINT8": TensorProto.UINT8,
    "UINT16": TensorProto.UINT16,
    "UINT32": TensorProto.UINT32,
    "UINT64": TensorProto.UINT64,
    "INT8": TensorProto.INT8,
    "INT16": TensorProto.INT16,
    "INT32": TensorProto.INT32,
    "INT64": TensorProto.INT64,
    "FP16": TensorProto.FLOAT16,
    "FP32": TensorProto.FLOAT,
    "FP64": TensorProto.DOUBLE,
    "BYTES": TensorProto.STRING,
}


def _model(graph: onnx.GraphProto) -> onnx.ModelProto:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="edgeloop")
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    return model


def build_mlp(in_dim: int = 32, hidden: int = 64, out_dim: int = 4, seed: int = 0) -> onnx.ModelProto:
    """Gemm -> Relu -> Gemm, float32, input ``INPUT0`` [batch, in_dim], output ``OUTPUT0`` [batch, out_dim]."""
    for name, value in (("in_dim", in_dim), ("hidden", hidden), ("out_dim", out_dim)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"build_mlp: {name}={value!r}; expected a positive integer")
    rng = np.random.default_rng(seed)
    weights = [
        numpy_helper.from_array((rng.standard_normal((in_dim, hidden)) / np.sqrt(in_dim)).astype(np.float32), "W1"),
        numpy_helper.from_array((rng.standard_normal(hidden) * 0.1).astype(np.float32), "B1"),
        numpy_helper.from_array((rng.standard_normal((hidden, out_dim)) / np.sqrt(hidden)).astype(np.float32), "W2"),
        numpy_helper.from_array((rng.standard_normal(out_dim) * 0.1).astype(np.float32), "B2"),
    ]
    nodes = [
        helper.make_node("Gemm", ["INPUT0", "W1", "B1"], ["hidden"]),
        helper.make_node("Relu", ["hidden"], ["hidden_relu"]),
        helper.make_node("Gemm", ["hidden_relu", "W2", "B2"], ["OUTPUT0"]),
    ]
    graph = helper.make_graph(
        nodes, "edgeloop_mlp",
        [helper.make_tensor_value_info("INPUT0", TensorProto.FLOAT, ["batch", in_dim])],
        [helper.make_tensor_value_info("OUTPUT0", TensorProto.FLOAT, ["batch", out_dim])],
        weights,
    )
    return _model(graph)


def build_multi_io_model(width: int = 3) -> onnx.ModelProto:
    """Several inputs and outputs over every datatype, all with a dynamic batch dim.

    Inputs ``X``, ``Y`` (FP32 [batch, 4]) give ``SUM`` = X + Y and ``DIFF`` = X - Y; for every
    protocol datatype ``DT`` an input ``IN_DT`` [batch, width] is passed through to ``OUT_DT``.
    """
    inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", 4]) for n in ("X", "Y")]
    outputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", 4]) for n in ("SUM", "DIFF")]
    nodes = [helper.make_node("Add", ["X", "Y"], ["SUM"]), helper.make_node("Sub", ["X", "Y"], ["DIFF"])]
    for datatype, elem in ONNX_TYPES.items():
        inputs.append(helper.make_tensor_value_info(f"IN_{datatype}", elem, ["batch", width]))
        outputs.append(helper.make_tensor_value_info(f"OUT_{datatype}", elem, ["batch", width]))
        nodes.append(helper.make_node("Identity", [f"IN_{datatype}"], [f"OUT_{datatype}"]))
    return _model(helper.make_graph(nodes, "edgeloop_multi_io", inputs, outputs))


def build_matmul_chain(width: int = 1024, layers: int = 32) -> onnx.ModelProto:
    """``Y = X @ W @ W ...`` (``layers`` float32 MatMuls of ``width``): a model whose run takes long enough
    (batch 128 at 32 layers: ~9 GFLOP) for drains and shutdowns to be observed with requests in flight."""
    weight = (np.eye(width, dtype=np.float32) * 0.5 + 0.5 / width).astype(np.float32)
    nodes, previous = [], "X"
    for i in range(layers):
        nodes.append(helper.make_node("MatMul", [previous, "W"], [f"h{i}"]))
        previous = f"h{i}"
    nodes.append(helper.make_node("Identity", [previous], ["Y"]))
    graph = helper.make_graph(nodes, "edgeloop_matmul_chain",
                              [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["batch", width])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["batch", width])],
                              [numpy_helper.from_array(weight, "W")])
    return _model(graph)


def build_column_classifier(in_dim: int = 2, column: int = 0) -> onnx.ModelProto:
    """Two-class ``probabilities`` = [x[:, column], 1 - x[:, column]] from input ``x`` FP32 [batch, in_dim].

    A classifier whose confidence the caller sets row by row (joint-inference tests and demos): two
    of them reading different columns give distinct answers to the same request.
    """
    if not 0 <= column < in_dim:
        raise ValueError(f"build_column_classifier: column={column!r}; expected 0..{in_dim - 1}")
    consts = [numpy_helper.from_array(np.array([column], dtype=np.int64), "start"),
              numpy_helper.from_array(np.array([column + 1], dtype=np.int64), "end"),
              numpy_helper.from_array(np.array([1], dtype=np.int64), "axis"),
              numpy_helper.from_array(np.array(1.0, dtype=np.float32), "one")]
    nodes = [helper.make_node("Slice", ["x", "start", "end", "axis"], ["p"]),
             helper.make_node("Sub", ["one", "p"], ["q"]),
             helper.make_node("Concat", ["p", "q"], ["probabilities"], axis=1)]
    graph = helper.make_graph(nodes, "edgeloop_column_classifier",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", in_dim])],
                              [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", 2])],
                              consts)
    return _model(graph)


def build_softmax_classifier(layers) -> onnx.ModelProto:
    """A trained classifier as ONNX: ``[(W, b), ...]`` Gemm layers with Relu between, then Softmax.

    Input ``x`` FP32 [batch, rows of the first W], output ``probabilities`` FP32 [batch, classes].
    One layer is a (multinomial) logistic regression; more make an MLP.
    """
    if not layers:
        raise ValueError("build_softmax_classifier: layers is empty; expected [(W, b), ...]")
    nodes, weights, previous = [], [], "x"
    for i, (w, b) in enumerate(layers):
        weights += [numpy_helper.from_array(np.asarray(w, dtype=np.float32), f"W{i}"),
                    numpy_helper.from_array(np.asarray(b, dtype=np.float32).reshape(-1), f"B{i}")]
        nodes.append(helper.make_node("Gemm", [previous, f"W{i}", f"B{i}"], [f"z{i}"]))
        previous = f"z{i}"
        if i < len(layers) - 1:
            nodes.append(helper.make_node("Relu", [previous], [f"h{i}"]))
            previous = f"h{i}"
    nodes.append(helper.make_node("Softmax", [previous], ["probabilities"], axis=-1))
    in_dim, classes = np.shape(layers[0][0])[0], np.shape(layers[-1][0])[1]
    graph = helper.make_graph(nodes, "edgeloop_softmax_classifier",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", in_dim])],
                              [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", classes])],
                              weights)
    return _model(graph)


def fit_softmax_classifier(x, y, hidden: int | None = None, epochs: int = 300, lr: float = 0.05,
                           seed: int = 0) -> list:
    """Train the layers ``build_softmax_classifier`` takes: full-batch Adam on cross-entropy, numpy only.

    ``hidden=None`` fits a logistic regression, ``hidden=H`` an MLP with one Relu layer of H units.
    Inputs are standardised for training and the scaling is folded into the first layer, so the
    model takes raw ``x``.  Seeded: the same data and seed give the same weights.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.int64)
    mu, sd = x.mean(0), x.std(0) + 1e-6
    xs = (x - mu) / sd
    onehot = np.eye(int(y.max()) + 1)[y]
    dims = [x.shape[1]] + ([hidden] if hidden else []) + [onehot.shape[1]]
    rng = np.random.default_rng(seed)
    params = []
    for a, b in zip(dims[:-1], dims[1:]):
        params += [rng.normal(0.0, 1.0 / np.sqrt(a), (a, b)), np.zeros(b)]
    m1 = [np.zeros_like(p) for p in params]
    m2 = [np.zeros_like(p) for p in params]
    for t in range(1, epochs + 1):
        acts, h = [xs], xs
        for i in range(0, len(params), 2):
            h = h @ params[i] + params[i + 1]
            if i < len(params) - 2:
                h = np.maximum(h, 0.0)
            acts.append(h)
        z = h - h.max(1, keepdims=True)
        grad = (np.exp(z) / np.exp(z).sum(1, keepdims=True) - onehot) / len(y)
        grads = [None] * len(params)
        for i in range(len(params) - 2, -1, -2):
            grads[i], grads[i + 1] = acts[i // 2].T @ grad, grad.sum(0)
            if i > 0:
                grad = (grad @ params[i].T) * (acts[i // 2] > 0)
        for i, (p, g) in enumerate(zip(params, grads)):
            m1[i] = 0.9 * m1[i] + 0.1 * g
            m2[i] = 0.999 * m2[i] + 0.001 * g * g
            p -= lr * (m1[i] / (1 - 0.9 ** t)) / (np.sqrt(m2[i] / (1 - 0.999 ** t)) + 1e-8)
    layers = [(params[i], params[i + 1]) for i in range(0, len(params), 2)]
    w, b = layers[0]
    layers[0] = (w / sd[:, None], b - (mu / sd) @ w)
    return layers


def write_model(root, name: str, version: int, model_proto: onnx.ModelProto | bytes,
                manifest: bool = True) -> Path:
    """Write ``<root>/<name>/<version>/model.onnx`` atomically (and ``manifest.json``); return its path."""
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ValueError(f"write_model: version={version!r}; expected a positive integer")
    if not name or "/" in name or "\\" in name or name.startswith("."):
        raise ValueError(f"write_model: name={name!r}; expected a plain directory name")
    data = model_proto if isinstance(model_proto, (bytes, bytearray)) else model_proto.SerializeToString()
    directory = Path(root) / name / str(version)
    path = directory / MODEL_FILE
    atomic_write(path, bytes(data))
    if manifest:
        meta = {"name": name, "version": version, "sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
        atomic_write(directory / MANIFEST_FILE, json.dumps(meta, indent=2, sort_keys=True).encode())
    return path


__all__ = ["ONNX_TYPES", "build_column_classifier", "build_mlp", "build_multi_io_model", "build_softmax_classifier",
           "fit_softmax_classifier", "write_model"]
