"""Helpers for the CT loop tests: a synthetic stream with a known concept change, a champion trained on
its first concept, and a real coordinator (in-process, 127.0.0.1, port 0) whose loop the test steps."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from edgeloop.config import parse_cloud_config
from edgeloop.coordinator import Coordinator
from edgeloop.ct.trainers import Dataset, LogisticRegressionTrainer
from edgeloop.protocol import mesh_pb2
from edgeloop.store import LabelRow, SampleRow

MODEL = "ctm"
FEATURES = 4
INPUT = "input"


def stream(n: int, seed: int, changed: bool = False, noise: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """Rows of 4 features; before the change y = [x0 + x1 > 0], after it the features move and y = [x0 - x1 > 0]."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, FEATURES)).astype(np.float32)
    if changed:
        x[:, 2:] += 1.5
        y = (x[:, 0] - x[:, 1] > 0).astype(np.float64)
    else:
        y = (x[:, 0] + x[:, 1] > 0).astype(np.float64)
    flip = rng.random(n) < noise
    y[flip] = 1.0 - y[flip]
    return x, y


def champion(seed: int = 0) -> bytes:
    x, y = stream(2000, seed + 1000)
    return LogisticRegressionTrainer().fit(Dataset(x[:1600], y[:1600]), Dataset(x[1600:], y[1600:]), seed=0).model


def cloud_config(tmp: Path, **training):
    config = parse_cloud_config({"storage": {"database": "cloud/coord.sqlite", "artifact_dir": "cloud/artifacts"},
                                 "fleet": {"heartbeat_interval_ms": 200},
                                 # a real staged rollout (canary edge first) with a short bake; p99 noise of a loaded 2-core machine is no gate here
                                 "delivery": {"canary": 1, "bake_s": 0.5, "min_requests": 0, "max_p99_ratio": 1000.0},
                                 "training": {"enabled": False, "monitor_window": 200, "reference_rows": 800,
                                              "drift_windows": 2, "train_rows": 800, "min_slice_samples": 40,
                                              "cooldown_s": 0.0,
                                              # these tests are about the loop's decisions, not latency: a loaded
                                              # 2-core machine must not make infra validation refuse on p99 noise
                                              "latency_ratio": 50.0, **training}}, base_dir=tmp)
    return replace(config, node=replace(config.node, grpc_port=0, metrics_port=-1))


def start_cloud(tmp: Path, **training) -> Coordinator:
    return Coordinator(cloud_config(tmp, **training)).start()


def push(cloud: Coordinator, data: bytes, version: int = 0):
    sha, size = cloud.artifacts.put_bytes(data)
    return cloud.core.publish(MODEL, version, sha, size, "push")[0]


def payload(sample_id: str, version: int, ts: int, x: np.ndarray) -> bytes:
    t = mesh_pb2.TensorData(name=INPUT, datatype="FP32", shape=[1, FEATURES], data=np.asarray(x, np.float32).tobytes())
    return mesh_pb2.Sample(sample_id=sample_id, model=MODEL, model_version=version, timestamp_ms=ts,
                           inputs=[t]).SerializeToString()


class Feeder:
    """Stores samples and (later) their labels through the store's ingest path, as uploads would."""

    def __init__(self, store, t0_ms: int = 1_700_000_000_000) -> None:
        self.store = store
        self.ts = t0_ms
        self.n = 0

    def feed(self, edge: str, x: np.ndarray, y: np.ndarray, version: int = 1) -> list[str]:
        ids, rows = [], []
        for i in range(len(x)):
            self.n += 1
            self.ts += 10
            sid = f"{edge}-{self.n}"
            ids.append(sid)
            rows.append(SampleRow(MODEL, sid, version, "", self.ts, payload(sid, version, self.ts, x[i])))
        self.store.ingest_samples(edge, f"s{self.n}", rows, self.ts)
        self.store.ingest_labels(edge, f"l{self.n}", [LabelRow(s, MODEL, "", 0, float(v), self.ts)
                                                      for s, v in zip(ids, y)], self.ts)
        return ids


# ------------------------------------------------------------------ real edges (end to end, benchmark)


def edge_config(tmp: Path, node_id: str, coordinator: str, model: bytes):
    from edgeloop.config import CoordinatorConfig, EdgeConfig, MeshConfig, NodeConfig, ServingConfig
    from edgeloop.serving.demo_models import write_model

    repository = tmp / f"{node_id}-models"
    write_model(repository, MODEL, 1, model)
    return EdgeConfig(node=NodeConfig(id=node_id, host="127.0.0.1", grpc_port=0, metrics_port=-1),
                      serving=ServingConfig(model_repository=repository), mesh=MeshConfig(enabled=False),
                      coordinator_address=coordinator,
                      coordinator=CoordinatorConfig(outbox_path=tmp / f"{node_id}-outbox.sqlite",
                                                    upload_backoff_max_ms=500))


class Edge:
    """A started in-process edge node with an inference stub and a feedback (labels) stub."""

    def __init__(self, config) -> None:
        import grpc

        from edgeloop.node import EdgeNode
        from edgeloop.protocol import inference_pb2_grpc, mesh_pb2_grpc

        self.id = config.node.id
        self.node = EdgeNode(config).start()
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.node.grpc_port}")
        self.infer_stub = inference_pb2_grpc.GRPCInferenceServiceStub(self.channel)
        self.feedback = mesh_pb2_grpc.FeedbackStub(self.channel)

    def predict(self, x: np.ndarray, request_id: str, routing_key: str = "") -> tuple[float, int]:
        """(predicted label, the version that answered) for one row (``routing_key``: the request's entity)."""
        from edgeloop.mesh.router import ROUTING_KEY
        from edgeloop.protocol.codec import build_infer_request, infer_response_to_numpy

        request = build_infer_request(MODEL, {INPUT: np.asarray(x, np.float32)[None, :]}, request_id=request_id)
        if routing_key:
            request.parameters[ROUTING_KEY].string_param = routing_key
        response = self.infer_stub.ModelInfer(request, timeout=10)
        return float(infer_response_to_numpy(response)["label"][0]), int(response.model_version or 0)

    def label(self, ids: list[str], values) -> None:
        labels = [mesh_pb2.Label(sample_id=i, model=MODEL, value=float(v)) for i, v in zip(ids, values)]
        self.feedback.Label(mesh_pb2.LabelRequest(labels=labels), timeout=10)

    def ready(self, version: int) -> bool:
        from edgeloop.protocol import inference_pb2

        return self.infer_stub.ModelReady(inference_pb2.ModelReadyRequest(name=MODEL, version=str(version)),
                                          timeout=5).ready

    def close(self) -> None:
        self.channel.close()
        self.node.stop(2.0)


def wait_for(predicate, timeout: float = 20.0, step: float = 0.05) -> bool:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return bool(predicate())


class Fleet:
    """A coordinator and edges on 127.0.0.1 serving a champion trained on the first concept.

    ``serve(n, changed)`` sends n requests round-robin over the edges and labels the previous round
    (labels arrive one round late); returns the accuracy of the answers and the versions that gave them.
    """

    def __init__(self, tmp: Path, n_edges: int = 2, **training) -> None:
        self.cloud = start_cloud(tmp, **training)
        self.edges: list[Edge] = []
        try:
            first = champion()
            push(self.cloud, first)
            for i in range(n_edges):
                self.edges.append(Edge(edge_config(tmp, f"edge-{chr(97 + i)}", self.cloud.address, first)))
        except BaseException:
            self.close()
            raise
        self.n = 0
        self.seed = 0
        self.unlabelled: list[tuple[Edge, list[str], np.ndarray]] = []

    def serve(self, n: int, changed: bool) -> tuple[float, set[int]]:
        self.seed += 1
        x, y = stream(n, 10_000 + self.seed, changed=changed)
        right, versions = 0, set()
        sent: dict[str, tuple[Edge, list[str], list[float]]] = {}
        for i in range(n):
            edge = self.edges[i % len(self.edges)]
            self.n += 1
            rid = f"r{self.n}"
            label, version = edge.predict(x[i], rid)
            right += label == y[i]
            versions.add(version)
            sent.setdefault(edge.id, (edge, [], []))
            sent[edge.id][1].append(rid)
            sent[edge.id][2].append(y[i])
        self.flush_labels()
        self.unlabelled = [(e, ids, np.asarray(v)) for e, ids, v in sent.values()]
        return right / n, versions

    def flush_labels(self) -> None:
        for edge, ids, values in self.unlabelled:
            edge.label(ids, values)
        self.unlabelled = []

    def stored_labels(self) -> int:
        return self.cloud.store.labelled_count_since(MODEL, 0)

    def stored_samples(self) -> int:
        return sum(c.samples for c in self.cloud.store.model_counts() if c.model == MODEL)

    def settle(self, timeout: float = 30.0) -> bool:
        """Every served sample and every sent label stored: the loop's next step sees the same rows on
        a loaded machine as on an idle one (the monitors read unlabelled samples too)."""
        sent = self.n - sum(len(ids) for _e, ids, _v in self.unlabelled)
        return wait_for(lambda: self.stored_samples() >= self.n and self.stored_labels() >= sent, timeout=timeout)

    def close(self) -> None:
        for e in self.edges:
            try:
                e.close()
            except Exception:
                pass
        self.cloud.stop(1.0)
