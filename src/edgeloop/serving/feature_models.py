"""Models that declare real-time features: built with onnx.helper, written with their definition.

``write_feature_model`` lays out ``<root>/<name>/<version>/model.onnx`` with a ``manifest.json`` whose
``"features"`` key is the definition (what the edge reads to serve it); ``build_feature_echo`` returns
the vector it was given (tests compare what the model saw with ``features.replay``);
``build_feature_linear`` is a seeded linear softmax classifier; ``fold_scaling`` puts a stateless
transform (``(x - mean) / scale``) in front of a graph with ``onnx.compose``, so the scaling is part of
the model and can never differ between training and serving.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, compose, helper, numpy_helper

from edgeloop.features import FeatureDefinition
from edgeloop.serving.demo_models import IR_VERSION, OPSET, _model
from edgeloop.serving.features import MANIFEST_KEY
from edgeloop.serving.repository import MANIFEST_FILE, MODEL_FILE, atomic_write

INPUT = "features"


def build_feature_echo(width: int, output: str = "vector") -> onnx.ModelProto:
    """``output = features``: FP32 [batch, width] in and out (what the model saw, returned)."""
    graph = helper.make_graph(
        [helper.make_node("Identity", [INPUT], [output])], "edgeloop_feature_echo",
        [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, ["batch", width])],
        [helper.make_tensor_value_info(output, TensorProto.FLOAT, ["batch", width])])
    return _model(graph)


def build_feature_linear(width: int, classes: int = 2, seed: int = 0, weights=None, bias=None) -> onnx.ModelProto:
    """``probabilities = softmax(features @ W + b)``, FP32 [batch, width] -> [batch, classes]."""
    rng = np.random.default_rng(seed)
    w = np.asarray(weights if weights is not None else rng.standard_normal((width, classes)) / np.sqrt(width),
                   dtype=np.float32)
    b = np.asarray(bias if bias is not None else np.zeros(classes), dtype=np.float32)
    if w.shape != (width, classes) or b.shape != (classes,):
        raise ValueError(f"build_feature_linear: weights {w.shape}, bias {b.shape}; expected ({width}, {classes}), "
                         f"({classes},)")
    graph = helper.make_graph(
        [helper.make_node("Gemm", [INPUT, "W", "B"], ["logits"]),
         helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1)], "edgeloop_feature_linear",
        [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, ["batch", width])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", classes])],
        [numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "B")])
    return _model(graph)


def fold_scaling(model: onnx.ModelProto, mean, scale) -> onnx.ModelProto:
    """``model`` with ``(x - mean) / scale`` folded in front of its single input (``onnx.compose``).

    The result takes the same input name and width, unscaled; ``scale`` entries must be non-zero.
    """
    if len(model.graph.input) != 1:
        raise ValueError(f"fold_scaling: the model has {len(model.graph.input)} inputs; expected one")
    name = model.graph.input[0].name
    mean = np.asarray(mean, dtype=np.float32).reshape(-1)
    scale = np.asarray(scale, dtype=np.float32).reshape(-1)
    if mean.shape != scale.shape or not np.all(np.isfinite(scale)) or np.any(scale == 0):
        raise ValueError(f"fold_scaling: mean {mean.shape} and scale {scale.shape}; expected equal lengths and "
                         f"finite, non-zero scales")
    width = mean.shape[0]
    pre = helper.make_graph(
        [helper.make_node("Sub", ["raw", "scale_mean"], ["centred"]),
         helper.make_node("Div", ["centred", "scale_scale"], ["scaled"])], "edgeloop_scaling",
        [helper.make_tensor_value_info("raw", TensorProto.FLOAT, ["batch", width])],
        [helper.make_tensor_value_info("scaled", TensorProto.FLOAT, ["batch", width])],
        [numpy_helper.from_array(mean, "scale_mean"), numpy_helper.from_array(scale, "scale_scale")])
    pre_model = helper.make_model(pre, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="edgeloop")
    pre_model.ir_version = IR_VERSION
    main = onnx.ModelProto()
    main.CopyFrom(model)
    main.ir_version = IR_VERSION
    merged = compose.merge_models(compose.add_prefix(pre_model, "pre_"), main, io_map=[("pre_scaled", name)])
    merged.graph.input[0].name = name  # clients (and the feature front) keep using the original name
    for node in merged.graph.node:
        node.input[:] = [name if i == "pre_raw" else i for i in node.input]
    onnx.checker.check_model(merged)
    return merged


def write_feature_model(root, name: str, version: int, model: onnx.ModelProto | bytes,
                        definition: FeatureDefinition, extra: dict | None = None) -> Path:
    """Write the model and a ``manifest.json`` (sha256, size, ``features``: the definition); return the model path."""
    if not isinstance(definition, FeatureDefinition):
        raise TypeError(f"definition must be a FeatureDefinition, got {type(definition).__name__}")
    data = bytes(model if isinstance(model, (bytes, bytearray)) else model.SerializeToString())
    directory = Path(root) / name / str(version)
    path = directory / MODEL_FILE
    atomic_write(path, data)
    manifest = {**(extra or {}), "name": name, "version": version, "sha256": hashlib.sha256(data).hexdigest(),
                "size": len(data), MANIFEST_KEY: definition.to_dict()}
    atomic_write(directory / MANIFEST_FILE, json.dumps(manifest, indent=2, sort_keys=True).encode())
    return path


def feature_request(model: str, definition: FeatureDefinition, rows, key: str | None = None,
                    timestamp_ms: int | None = None, request_id: str = ""):
    """A ModelInferRequest with a model's raw inputs (rows ``[batch, inputs]``), its key and event time.

    Each raw input travels as its own FP32 ``[batch]`` tensor (raw contents); ``routing_key`` and
    ``timestamp_ms`` as request parameters, as any Open Inference Protocol client can send them.
    """
    from edgeloop.protocol.codec import build_infer_request

    rows = np.asarray(rows, dtype=np.float32)
    if rows.ndim == 1:
        rows = rows.reshape(1, -1)
    if rows.shape[1] != len(definition.inputs):
        raise ValueError(f"feature_request: rows {rows.shape}; expected [batch, {len(definition.inputs)}]")
    request = build_infer_request(model, {name: np.ascontiguousarray(rows[:, j])
                                          for j, name in enumerate(definition.inputs)}, request_id=request_id)
    if key is not None:
        request.parameters["routing_key"].string_param = key
    if timestamp_ms is not None:
        request.parameters["timestamp_ms"].int64_param = int(timestamp_ms)
    return request


def manifest_bytes(model: onnx.ModelProto | bytes, definition: FeatureDefinition, name: str, version: int) -> bytes:
    """The ``manifest.json`` bytes ``write_feature_model`` writes (for a RepositoryModelLoad push)."""
    data = bytes(model if isinstance(model, (bytes, bytearray)) else model.SerializeToString())
    return json.dumps({"name": name, "version": version, "sha256": hashlib.sha256(data).hexdigest(),
                       "size": len(data), MANIFEST_KEY: definition.to_dict()}, indent=2, sort_keys=True).encode()


__all__ = ["INPUT", "build_feature_echo", "build_feature_linear", "feature_request", "fold_scaling", "manifest_bytes",
           "write_feature_model"]
