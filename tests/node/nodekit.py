"""Helpers for the edge data-path tests: real coordinators and edge nodes on 127.0.0.1 (port 0)."""
from __future__ import annotations

import sqlite3
import time
from dataclasses import replace
from pathlib import Path

import grpc
import numpy as np

from edgeloop.config import CoordinatorConfig, EdgeConfig, MeshConfig, NodeConfig, ServingConfig, parse_cloud_config
from edgeloop.coordinator import Coordinator
from edgeloop.node import EdgeNode
from edgeloop.protocol import inference_pb2_grpc, mesh_pb2, mesh_pb2_grpc
from edgeloop.protocol.codec import build_infer_request
from edgeloop.serving.demo_models import build_mlp, write_model

MODEL = "mlp"
FEATURES = 32


def cloud_config(tmp: Path, port: int = 0, **storage):
    config = parse_cloud_config({"node": {"grpc_port": 7001, "metrics_port": 7002},
                                 "storage": {"database": "cloud/coord.sqlite", "artifact_dir": "cloud/artifacts",
                                             **storage},
                                 "fleet": {"heartbeat_interval_ms": 200},
                                 # every known edge in the first wave, no bake: these tests are not about rollouts
                                 "delivery": {"canary": 1000, "bake_s": 0}}, base_dir=tmp)
    return replace(config, node=replace(config.node, grpc_port=port, metrics_port=-1))


def start_cloud(tmp: Path, port: int = 0, token: str | None = None, **storage) -> Coordinator:
    return Coordinator(cloud_config(tmp, port, **storage), token=token).start()


def edge_config(tmp: Path, node_id: str, coordinator: str | None, repository: Path | None = None,
                sample_rate: float | None = None, **coordinator_keys) -> EdgeConfig:
    if repository is None:
        repository = tmp / f"{node_id}-models"
        if not repository.exists():
            write_model(repository, MODEL, 1, build_mlp())
    serving = ServingConfig(model_repository=repository)
    if sample_rate is not None:
        serving = replace(serving, model_defaults=replace(serving.model_defaults, sample_rate=sample_rate))
    return EdgeConfig(node=NodeConfig(id=node_id, host="127.0.0.1", grpc_port=0, metrics_port=-1),
                      serving=serving, mesh=MeshConfig(enabled=False), coordinator_address=coordinator,
                      coordinator=replace(CoordinatorConfig(outbox_path=tmp / f"{node_id}-outbox.sqlite",
                                                            upload_backoff_max_ms=500), **coordinator_keys))


def x(i: int, rows: int = 1) -> np.ndarray:
    return (np.arange(rows * FEATURES, dtype=np.float32).reshape(rows, FEATURES) + i) / 100.0


class Edge:
    """A started in-process edge node plus stubs on one channel."""

    def __init__(self, config: EdgeConfig) -> None:
        self.node = EdgeNode(config).start()
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.node.grpc_port}")
        self.infer_stub = inference_pb2_grpc.GRPCInferenceServiceStub(self.channel)
        self.feedback = mesh_pb2_grpc.FeedbackStub(self.channel)

    def infer(self, i: int, request_id: str = "", key: str | None = None):
        request = build_infer_request(MODEL, {"INPUT0": x(i)}, request_id=request_id)
        if key is not None:
            request.parameters["routing_key"].string_param = key
        return self.infer_stub.ModelInfer(request, timeout=10)

    def close(self) -> None:
        self.channel.close()
        self.node.stop(2.0)


def wait_for(predicate, timeout: float = 20.0, step: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return bool(predicate())


def stored_sample_ids(database: Path) -> list[str]:
    """Every sample id in a coordinator database (one row per stored sample), read-only."""
    conn = sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=10)
    try:
        return [sid for (sid,) in conn.execute("SELECT sample_id FROM samples")]
    finally:
        conn.close()


def label(sample_id: str = "", value: float = 1.0, model: str = MODEL, key: str = "", ts: int = 0):
    return mesh_pb2.Label(sample_id=sample_id, model=model, routing_key=key, timestamp_ms=ts, value=value)
