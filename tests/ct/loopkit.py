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
                                 "training": {"enabled": False, "monitor_window": 200, "reference_rows": 800,
                                              "drift_windows": 2, "train_rows": 800, "min_slice_samples": 40,
                                              "cooldown_s": 0.0, **training}}, base_dir=tmp)
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
