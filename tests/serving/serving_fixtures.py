"""Helpers shared by the serving tests (importable; conftest holds the fixtures)."""
from __future__ import annotations

from dataclasses import replace

import grpc
import numpy as np
from onnx import TensorProto, helper

from edgeloop.config import EdgeConfig, MeshConfig, ModelConfig, NodeConfig, ServingConfig
from edgeloop.node import EdgeNode
from edgeloop.protocol import inference_pb2, inference_pb2_grpc
from edgeloop.serving.demo_models import IR_VERSION, OPSET

RPC_TIMEOUT_S = 10.0


def make_config(repository, models=(), **serving) -> EdgeConfig:
    return EdgeConfig(
        node=NodeConfig(id="test-edge", host="127.0.0.1", grpc_port=0, metrics_port=0),
        serving=replace(ServingConfig(model_repository=repository, models=tuple(models)), **serving),
        mesh=MeshConfig(enabled=False),
    )


class NodeHandle:
    """A started node plus a stub connected to it."""

    def __init__(self, node: EdgeNode) -> None:
        self.node = node
        self.channel = grpc.insecure_channel(f"127.0.0.1:{node.grpc_port}")
        self.stub = inference_pb2_grpc.GRPCInferenceServiceStub(self.channel)

    def infer(self, request, timeout=RPC_TIMEOUT_S):
        return self.stub.ModelInfer(request, timeout=timeout)

    def stats(self, name, version=""):
        return self.stub.ModelStatistics(inference_pb2.ModelStatisticsRequest(name=name, version=version),
                                         timeout=RPC_TIMEOUT_S).model_stats

    def index(self, ready=False):
        return {(m.name, m.version): (m.state, m.reason) for m in
                self.stub.RepositoryIndex(inference_pb2.RepositoryIndexRequest(ready=ready),
                                          timeout=RPC_TIMEOUT_S).models}

    def close(self):
        self.channel.close()
        self.node.stop(2.0)


def build_warmup_failing_model():
    """Loads fine, but any batch other than 2 fails at run time: the warm-up (batch 1) must catch it."""
    shape = helper.make_tensor("target", TensorProto.INT64, [2], [6, 1])
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["X", "target"], ["Y"])], "bad_warmup",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["batch", 3])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [6, 1])], [shape])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    return model


def mlp_config(name="mlp", **kw) -> ModelConfig:
    return ModelConfig(name=name, **kw)


def multi_inputs(batch=2, seed=0):
    """Inputs for every tensor of the multi-I/O model, with values that exercise each datatype's range."""
    rng = np.random.default_rng(seed)
    w = 3
    out = {
        "X": rng.standard_normal((batch, 4)).astype(np.float32),
        "Y": rng.standard_normal((batch, 4)).astype(np.float32),
        "IN_BOOL": rng.integers(0, 2, (batch, w)).astype(bool),
        "IN_FP16": rng.standard_normal((batch, w)).astype(np.float16),
        "IN_FP32": rng.standard_normal((batch, w)).astype(np.float32),
        "IN_FP64": rng.standard_normal((batch, w)),
        "IN_BYTES": np.array([[f"é{i}{j}".encode() for j in range(w)] for i in range(batch)], dtype=object),
    }
    for dt in ("UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64"):
        info = np.iinfo(np.dtype(dt.lower()))
        values = rng.integers(info.min, info.max, (batch, w), dtype=np.dtype(dt.lower()), endpoint=True)
        values[0, 0] = info.max
        values[0, 1] = info.min
        out[f"IN_{dt}"] = values
    return out
