"""The canary accuracy gate replays the champion on the new version's own labelled requests, so a canary edge
that happens to serve harder traffic than the rest of the fleet does not fail a version that is as good."""
from __future__ import annotations

import time

import grpc
import numpy as np
from loopkit import FEATURES, INPUT, MODEL, champion, start_cloud, stream, wait_for

from edgeloop.ct.evaluation import predict
from edgeloop.protocol import mesh_pb2, mesh_pb2_grpc
from edgeloop.store import LabelRow, SampleRow


def served(store, node: str, version: int, model: bytes, x: np.ndarray, y: np.ndarray, prefix: str) -> None:
    """Requests ``version`` answered (its real outputs), labelled, received now, as an edge uploads them."""
    now = int(time.time() * 1000)
    proba = predict(model, x).proba.astype(np.float32)
    rows = []
    for i in range(len(x)):
        sample = mesh_pb2.Sample(
            sample_id=f"{prefix}{i}", model=MODEL, model_version=version, timestamp_ms=now,
            inputs=[mesh_pb2.TensorData(name=INPUT, datatype="FP32", shape=[1, FEATURES], data=x[i].tobytes())],
            outputs=[mesh_pb2.TensorData(name="probabilities", datatype="FP32", shape=[1, 2],
                                         data=proba[i].tobytes())])
        rows.append(SampleRow(MODEL, sample.sample_id, version, "", now, sample.SerializeToString()))
    store.ingest_samples(node, f"b-{prefix}", rows, now)
    store.ingest_labels(node, f"l-{prefix}", [LabelRow(f"{prefix}{i}", MODEL, "", 0, float(y[i]), now)
                                              for i in range(len(x))], now)


def test_a_canary_on_harder_traffic_passes_when_the_champion_does_no_better_on_the_same_requests(tmp_path):
    cloud = start_cloud(tmp_path)
    try:
        old, new = champion(0), champion(1)  # three models of the same quality (the third below)
        for data in (old, new):
            sha, size = cloud.artifacts.put_bytes(data)
            cloud.core.publish(MODEL, 0, sha, size, "test")
        with grpc.insecure_channel(cloud.address) as channel:
            coord = mesh_pb2_grpc.CoordinatorStub(channel)
            for node in ("edge-a", "edge-b"):
                coord.Join(mesh_pb2.JoinRequest(
                    node=mesh_pb2.NodeIdentity(node_id=node, host="127.0.0.1", grpc_port=9000, weight=1.0,
                                               zone=node),
                    models=[mesh_pb2.ModelVersion(model=MODEL, version=1, state="READY")]), timeout=10)
            published, _ = cloud.core.publish(MODEL, 0, *cloud.artifacts.put_bytes(champion(2)), "test")
            (doc,) = [d for d in cloud.core.rollouts.rollouts() if d["version"] == published.version]
            assert doc["previous"] == 2
            (canary,) = doc["waves"][0]
            other = ({"edge-a", "edge-b"} - {canary}).pop()
            # the canary edge's traffic is another concept (every model is at chance there); the rest is easy
            hard_x, hard_y = stream(200, 31, changed=True)
            easy_x, easy_y = stream(200, 32)
            served(cloud.store, canary, published.version, champion(2), hard_x, hard_y, "new-")
            served(cloud.store, other, 2, new, easy_x, easy_y, "old-")
            (load,) = [r for r in cloud.store.directives_after(canary, 0) if r.kind == "load"
                       and r.version == published.version]
            coord.ReportDirective(mesh_pb2.DirectiveResult(node_id=canary, sequence=load.sequence, ok=True),
                                  timeout=10)
            rollout = lambda: [d for d in cloud.core.rollouts.rollouts()  # noqa: E731
                               if d["rollout_id"] == doc["rollout_id"]][0]
            assert wait_for(lambda: rollout()["state"] != "running", 30), rollout()["decisions"]
        final = rollout()
        assert final["state"] == "done", final["reason"]
        gates = [d for d in final["decisions"] if d["decision"] == "wave_passed"][0]["evidence"]["gates"]
        accuracy = gates["accuracy"]
        # side by side the canary looks far worse; on the same requests the champion is no better
        assert accuracy["new"]["accuracy"] < 0.65 < 0.85 < accuracy["champion"]["accuracy"], accuracy
        assert accuracy["paired"]["pairs"] == 200 and accuracy["verdict"] == "pass", accuracy
        assert abs(accuracy["paired"]["difference"]) < 0.1
    finally:
        cloud.stop(1.0)
