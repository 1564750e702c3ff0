"""A model with features, end to end: pushed with its definition through the real Fleet service, served by a
real edge (raw inputs in, the full vector recorded), retrained by the loop on what the model saw, and the
new version carries the identical definition, so the edge serves it as a feature model again."""
from __future__ import annotations

import json

import grpc
import numpy as np
from loopkit import MODEL, champion, start_cloud, stream, wait_for

from edgeloop.config import CoordinatorConfig, EdgeConfig, MeshConfig, NodeConfig, ServingConfig
from edgeloop.coordinator.fleet_client import push_model
from edgeloop.features import FeatureDefinition
from edgeloop.protocol import inference_pb2, inference_pb2_grpc, mesh_pb2, mesh_pb2_grpc
from edgeloop.serving.feature_models import feature_request

#: three raw inputs and one derived feature: the champion's four columns
DEFINITION = {"version": 1, "entity": "meter", "inputs": ["a", "b", "c"],
              "features": [{"op": "lag", "col": "a", "k": 1}]}
T0_MS = 1_700_000_000_000


class FeatureEdge:
    """A real edge node that starts with no model: it loads what the coordinator directs (manifest included)."""

    def __init__(self, tmp, coordinator: str) -> None:
        from edgeloop.node import EdgeNode

        repository = tmp / "edge-models"
        repository.mkdir()
        config = EdgeConfig(node=NodeConfig(id="edge-f", host="127.0.0.1", grpc_port=0, metrics_port=-1),
                            serving=ServingConfig(model_repository=repository), mesh=MeshConfig(enabled=False),
                            coordinator_address=coordinator,
                            coordinator=CoordinatorConfig(outbox_path=tmp / "edge-outbox.sqlite",
                                                          upload_backoff_max_ms=500))
        self.node = EdgeNode(config).start()
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.node.grpc_port}")
        self.infer = inference_pb2_grpc.GRPCInferenceServiceStub(self.channel)
        self.feedback = mesh_pb2_grpc.FeedbackStub(self.channel)

    def ready(self, version: int) -> bool:
        try:
            return self.infer.ModelReady(inference_pb2.ModelReadyRequest(name=MODEL, version=str(version)),
                                         timeout=5).ready
        except grpc.RpcError:
            return False

    def close(self) -> None:
        self.channel.close()
        self.node.stop(2.0)


def test_a_feature_model_retrained_by_the_loop_keeps_its_definition_and_is_served_with_features(tmp_path):
    definition = FeatureDefinition.from_dict(DEFINITION)
    cloud = start_cloud(tmp_path)
    edge = None
    try:
        path = tmp_path / "champion.onnx"
        path.write_bytes(champion())
        with grpc.insecure_channel(cloud.address) as channel:
            reply = push_model(channel, path, MODEL, features_json=json.dumps(DEFINITION))
        assert reply.version == 1
        assert cloud.core.rollouts.manifest(MODEL, 1)["features"] == definition.to_dict()
        edge = FeatureEdge(tmp_path, cloud.address)
        assert wait_for(lambda: edge.ready(1), 30)
        # the edge serves the raw inputs (a, b, c) and computes lag(a, 1) per entity
        meta = edge.infer.ModelMetadata(inference_pb2.ModelMetadataRequest(name=MODEL), timeout=5)
        assert [t.name for t in meta.inputs] == ["a", "b", "c"]
        # the world after a concept change: the champion is at chance, a retrained model is not
        x, y = stream(600, 7, changed=True)
        for i in range(len(x)):
            edge.infer.ModelInfer(feature_request(MODEL, definition, x[i, :3], f"m{i % 3}", T0_MS + 1000 * i,
                                                  request_id=f"r{i}"), timeout=10)
        labels = [mesh_pb2.Label(sample_id=f"r{i}", model=MODEL, value=float(y[i])) for i in range(len(x))]
        edge.feedback.Label(mesh_pb2.LabelRequest(labels=labels), timeout=10)
        assert wait_for(lambda: cloud.store.labelled_count_since(MODEL, 0) >= len(x), 30)
        cloud.ct.request_retrain(MODEL, "test: feature model")
        (run,) = cloud.ct.step(2000.0)
        assert run.state == "published" and run.version == 2, run
        # the new version's signed manifest carries the champion's definition, byte for byte
        manifest = cloud.core.rollouts.manifest(MODEL, 2)
        assert json.dumps(manifest["features"], sort_keys=True, separators=(",", ":")) == definition.to_json()
        # lineage: the training step and the published model name the definition by its digest
        steps = {s["type"]: s for s in cloud.store.executions(MODEL, run.run_id)}
        assert steps["training"]["properties"]["features"]["digest"] == definition.digest
        (served,) = [a for a in cloud.store.artifacts(MODEL, "model", 2)]
        assert served["properties"]["features"]["definition"] == definition.to_dict()
        # the loop trained on the vectors the model saw (4 columns: lag(a, 1) included), not the 3 raw inputs
        window = [a for a in cloud.store.artifacts(MODEL, "data_window")][-1]["properties"]
        assert window["rows"] == len(x), window
        # the edge takes version 2 through the staged rollout and serves it as a feature model
        assert wait_for(lambda: edge.ready(2), 30)
        meta = edge.infer.ModelMetadata(inference_pb2.ModelMetadataRequest(name=MODEL, version="2"), timeout=5)
        assert [t.name for t in meta.inputs] == ["a", "b", "c"]
        response = edge.infer.ModelInfer(feature_request(MODEL, definition, x[0, :3], "m0", T0_MS + 10 ** 6,
                                                         request_id="after"), timeout=10)
        assert response.model_version == "2"
    finally:
        if edge is not None:
            edge.close()
        cloud.stop(1.0)
