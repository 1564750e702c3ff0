"""Helpers for coordinator tests: a real coordinator on 127.0.0.1 (port 0) and real messages."""
from __future__ import annotations

import struct
import time
from dataclasses import replace
from pathlib import Path

from edgeloop.config import parse_cloud_config
from edgeloop.coordinator import Coordinator
from edgeloop.protocol import auth as fleet_auth
from edgeloop.protocol import mesh_pb2, mesh_pb2_grpc

FEATURES = 32


def cloud_config(tmp: Path, **storage):
    config = parse_cloud_config({"node": {"grpc_port": 7001, "metrics_port": 7002},
                                 "storage": {"database": "db/coord.sqlite", **storage},
                                 # every known edge in the first wave, no bake: these tests are not about rollouts
                                 "delivery": {"canary": 1000, "bake_s": 0}}, base_dir=tmp)
    return replace(config, node=replace(config.node, grpc_port=0, metrics_port=0))


class Running:
    """A started coordinator plus stubs on one channel; ``restart()`` keeps the same files."""

    def __init__(self, config, token=None, channel_token="same") -> None:
        self.config = config
        self.token = token
        self.channel_token = token if channel_token == "same" else channel_token
        self.coordinator = None
        self.channel = None
        self.start()

    def start(self, port: int = 0):
        config = replace(self.config, node=replace(self.config.node, grpc_port=port))
        self.coordinator = Coordinator(config, token=self.token).start()
        self.channel = fleet_auth.open_channel(self.coordinator.address, None, self.channel_token)
        self.coord = mesh_pb2_grpc.CoordinatorStub(self.channel)
        self.fleet = mesh_pb2_grpc.FleetStub(self.channel)
        return self

    def stop(self, grace: float = 2.0):
        if self.channel is not None:
            self.channel.close()
            self.channel = None
        if self.coordinator is not None:
            self.coordinator.stop(grace)

    def restart(self, same_port: bool = False):
        port = self.coordinator.grpc_port if same_port else 0
        self.stop()
        return self.start(port)

    @property
    def store(self):
        return self.coordinator.store


def features(i: int) -> bytes:
    return struct.pack(f"<{FEATURES}f", *[float(i + j) for j in range(FEATURES)])


def sample(sid: str, model: str = "m", key: str = "k", ts: int | None = None, version: int = 1):
    return mesh_pb2.Sample(
        sample_id=sid, model=model, model_version=version, routing_key=key,
        timestamp_ms=ts if ts is not None else int(time.time() * 1000),
        inputs=[mesh_pb2.TensorData(name="input", datatype="FP32", shape=[1, FEATURES], data=features(len(sid)))],
        outputs=[mesh_pb2.TensorData(name="output", datatype="FP32", shape=[1, 2], data=struct.pack("<2f", 0.25, 0.75))])


def sample_batch(batch_id: str, ids, node: str = "edge-a", **kw):
    return mesh_pb2.SampleBatch(batch_id=batch_id, node_id=node, samples=[sample(i, **kw) for i in ids])


def join(stub, node: str = "edge-a", models=()):
    return stub.Join(mesh_pb2.JoinRequest(
        node=mesh_pb2.NodeIdentity(node_id=node, host="127.0.0.1", grpc_port=9000, weight=1.0),
        models=[mesh_pb2.ModelVersion(model=m, version=v, state="READY") for m, v in models]), timeout=10)


def onnx_bytes(payload: int = 64, seed: int | None = None) -> bytes:
    """A small, valid ONNX model (Identity over a constant) carrying ``payload`` random bytes, so each differs."""
    import os

    from onnx import TensorProto, helper

    raw = os.urandom(payload) if seed is None else bytes((seed + i) % 256 for i in range(payload))
    weight = helper.make_tensor("w", TensorProto.UINT8, [payload], raw, raw=True)
    graph = helper.make_graph([helper.make_node("Identity", ["w"], ["y"])], "g", [],
                              [helper.make_tensor_value_info("y", TensorProto.UINT8, [payload])], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return model.SerializeToString()
