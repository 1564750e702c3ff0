"""The first model the demo publishes: a softmax regression fitted on the stream's first rows, as ONNX.

Built here with numpy and ``onnx.helper`` because ``demo`` may not import ``ct`` (architecture table);
its signature is the one ``ct``'s trainers export (input ``input`` [batch, d]; outputs ``probabilities``
[batch, C] and ``label`` int64 [batch], classes in metadata), so the CT loop watches and replaces it like
its own.  Standardisation is folded into the graph, so serving can never skew from training.
"""
from __future__ import annotations

import json

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 9


def fit_softmax(x: np.ndarray, y: np.ndarray, classes: int, l2: float = 1e-3, iters: int = 300,
                lr: float = 0.5) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Deterministic full-batch gradient descent; returns (mean, 1/std, W [d, C], b [C])."""
    x = np.asarray(x, np.float64)
    mean = x.mean(axis=0)
    sd = x.std(axis=0)
    sd[sd < 1e-6] = 1.0  # a constant column (Elec2's vic* before row 17,424) must not blow up later rows
    z = (x - mean) / sd
    onehot = np.eye(classes)[y]
    w = np.zeros((x.shape[1], classes))
    b = np.zeros(classes)
    for _ in range(iters):
        logits = z @ w + b
        logits -= logits.max(axis=1, keepdims=True)
        p = np.exp(logits)
        p /= p.sum(axis=1, keepdims=True)
        g = (p - onehot) / len(y)
        w -= lr * (z.T @ g + l2 * w)
        b -= lr * g.sum(axis=0)
    return mean, 1.0 / sd, w, b


def predict(params, x: np.ndarray) -> np.ndarray:
    mean, inv, w, b = params
    return np.argmax(((np.asarray(x, np.float64) - mean) * inv) @ w + b, axis=1)


def proba(params, x: np.ndarray) -> np.ndarray:
    """Class probabilities per row (float32: what the ONNX graph outputs as ``probabilities``)."""
    mean, inv, w, b = params
    logits = ((np.asarray(x, np.float64) - mean) * inv) @ w + b
    logits -= logits.max(axis=1, keepdims=True)
    p = np.exp(logits)
    return (p / p.sum(axis=1, keepdims=True)).astype(np.float32)


def to_onnx(params, classes: int) -> bytes:
    mean, inv, w, b = params
    d = w.shape[0]
    inits = [numpy_helper.from_array(np.asarray(a, np.float32), n) for a, n in
             ((mean, "mean"), (inv, "inv_std"), (w, "W"), (b, "B"))]
    inits.append(numpy_helper.from_array(np.arange(classes, dtype=np.int64), "classes"))
    graph = helper.make_graph(
        [helper.make_node("Sub", ["input", "mean"], ["centred"]),
         helper.make_node("Mul", ["centred", "inv_std"], ["scaled"]),
         helper.make_node("Gemm", ["scaled", "W", "B"], ["logits"]),
         helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
         helper.make_node("ArgMax", ["logits"], ["label_index"], axis=1, keepdims=0),
         helper.make_node("Gather", ["classes", "label_index"], ["label"], axis=0)],
        "edgeloop_demo_initial",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", d])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", classes]),
         helper.make_tensor_value_info("label", TensorProto.INT64, ["batch"])],
        inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="edgeloop-demo")
    model.ir_version = IR_VERSION
    helper.set_model_props(model, {"edgeloop.classes": json.dumps(list(range(classes)))})
    onnx.checker.check_model(model)
    return model.SerializeToString()
