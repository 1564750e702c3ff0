"""A node's real-time feature state survives a restart: snapshotted on stop (and periodically), restored at start.

A real node serves the first half of a stream (requests and late labels), stops, and a new node with
the same config serves the second half: every vector equals ``features.replay`` of the whole stream,
bit for bit, as if one node had served it all.
"""
from __future__ import annotations

import time
from pathlib import Path

import grpc
import numpy as np

import edgeloop.node as node_module
from edgeloop.config import CoordinatorConfig, EdgeConfig, MeshConfig, ModelConfig, NodeConfig, ServingConfig
from edgeloop.features import FeatureDefinition, LabelEvent, replay
from edgeloop.node import EdgeNode, feature_snapshot_dir
from edgeloop.protocol import inference_pb2_grpc, mesh_pb2, mesh_pb2_grpc
from edgeloop.protocol.codec import infer_response_to_numpy
from edgeloop.serving.feature_models import build_feature_echo, feature_request, write_feature_model

MODEL = "fe"
T0_MS = 1_700_000_000_000
DEFINITION = FeatureDefinition.from_dict({
    "version": 1, "entity": "meter", "inputs": ["a", "b"],
    "features": [{"op": "lag", "col": "a", "k": 2}, {"op": "mean", "col": "b", "k": 6}, {"op": "since_last"},
                 {"op": "label_lag", "k": 1}, {"op": "label_mean", "k": 3}]})


def config(tmp: Path, outbox: bool) -> EdgeConfig:
    repo = tmp / "models"
    if not repo.exists():
        write_feature_model(repo, MODEL, 1, build_feature_echo(DEFINITION.width), DEFINITION)
    model = ModelConfig(name=MODEL, sample_rate=1.0 if outbox else None)
    return EdgeConfig(node=NodeConfig(id="snap-edge", host="127.0.0.1", grpc_port=0, metrics_port=-1),
                      serving=ServingConfig(model_repository=repo, models=(model,)), mesh=MeshConfig(enabled=False),
                      coordinator_address=None,
                      coordinator=CoordinatorConfig(outbox_path=tmp / "outbox" / "edge.sqlite"))


def stream(n: int):
    rng = np.random.default_rng(3)
    keys = [f"e{int(i)}" for i in rng.integers(0, 4, n)]
    rows = rng.standard_normal((n, 2)).astype(np.float32)
    ts = T0_MS + np.cumsum(rng.integers(100, 900, n))
    labels = rng.integers(0, 2, n).astype(np.float64)
    return keys, rows, ts, labels


def serve(node: EdgeNode, keys, rows, ts, labels, lo: int, hi: int, with_labels: bool):
    """Requests lo..hi-1; after each, its own label (it arrives one request later, as in the replay)."""
    channel = grpc.insecure_channel(f"127.0.0.1:{node.grpc_port}")
    stub = inference_pb2_grpc.GRPCInferenceServiceStub(channel)
    feedback = mesh_pb2_grpc.FeedbackStub(channel)
    out = []
    try:
        for i in range(lo, hi):
            response = stub.ModelInfer(feature_request(MODEL, DEFINITION, rows[i], keys[i], int(ts[i])), timeout=10)
            out.append(infer_response_to_numpy(response)["vector"][0])
            if with_labels:
                label = mesh_pb2.Label(model=MODEL, routing_key=keys[i], timestamp_ms=int(ts[i]), value=labels[i])
                feedback.Label(mesh_pb2.LabelRequest(labels=[label]), timeout=10)
    finally:
        channel.close()
    return out


def expected(keys, rows, ts, labels, with_labels: bool):
    # each label arrives right after its own request (before the next one)
    events = [LabelEvent(k, float(y), t / 1000.0, t / 1000.0 + 1e-6) for k, y, t in zip(keys, labels, ts)] \
        if with_labels else []
    return replay(DEFINITION, rows.astype(np.float64), keys, ts / 1000.0, events).vectors


def test_a_restarted_node_continues_the_stream_bit_for_bit(tmp_path):
    keys, rows, ts, labels = stream(80)
    cfg = config(tmp_path, outbox=True)
    first = EdgeNode(cfg).start()
    try:
        a = serve(first, keys, rows, ts, labels, 0, 40, True)
    finally:
        first.stop(2.0)
    snapshot_dir = feature_snapshot_dir(cfg)
    assert snapshot_dir.parent == (tmp_path / "outbox") and list(snapshot_dir.glob("fe-*.npz"))
    second = EdgeNode(cfg).start()
    try:
        assert second.models.features.of_model(MODEL)[0].stats().entities == len(set(keys[:40]))
        b = serve(second, keys, rows, ts, labels, 40, 80, True)
    finally:
        second.stop(2.0)
    assert np.array(a + b).tobytes() == expected(keys, rows, ts, labels, True).tobytes()


def test_without_an_outbox_the_snapshot_lives_beside_the_model_repository(tmp_path):
    keys, rows, ts, labels = stream(30)
    cfg = config(tmp_path, outbox=False)
    assert feature_snapshot_dir(cfg) == tmp_path.resolve() / "features-snap-edge"
    first = EdgeNode(cfg).start()
    try:
        a = serve(first, keys, rows, ts, labels, 0, 15, False)
    finally:
        first.stop(2.0)
    second = EdgeNode(cfg).start()
    try:
        b = serve(second, keys, rows, ts, labels, 15, 30, False)
    finally:
        second.stop(2.0)
    assert np.array(a + b).tobytes() == expected(keys, rows, ts, labels, False).tobytes()


def test_state_is_snapshotted_periodically_while_serving(tmp_path, monkeypatch):
    monkeypatch.setattr(node_module, "FEATURE_SNAPSHOT_INTERVAL_S", 0.1)
    keys, rows, ts, labels = stream(5)
    cfg = config(tmp_path, outbox=False)
    node = EdgeNode(cfg).start()
    try:
        serve(node, keys, rows, ts, labels, 0, 5, False)
        end = time.monotonic() + 10
        while time.monotonic() < end and not list(feature_snapshot_dir(cfg).glob("fe-*.npz")):
            time.sleep(0.05)
        assert list(feature_snapshot_dir(cfg).glob("fe-*.npz")), "no periodic snapshot within 10 s at 0.1 s"
    finally:
        node.stop(2.0)


def test_a_corrupt_snapshot_starts_cold_and_serves(tmp_path):
    cfg = config(tmp_path, outbox=False)
    directory = feature_snapshot_dir(cfg)
    directory.mkdir(parents=True)
    (directory / f"{MODEL}-{DEFINITION.digest[:16]}.npz").write_bytes(b"not a snapshot")
    node = EdgeNode(cfg).start()
    try:
        keys, rows, ts, labels = stream(3)
        out = serve(node, keys, rows, ts, labels, 0, 1, False)
        assert len(out) == 1 and node.models.features.of_model(MODEL)[0].stats().cold == 1
    finally:
        node.stop(2.0)
