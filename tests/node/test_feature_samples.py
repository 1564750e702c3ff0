"""Samples of a model with features reach a real coordinator with what the model saw and what the client sent."""
from __future__ import annotations

import numpy as np
import pytest
from nodekit import Edge, edge_config, start_cloud, stored_sample_ids, wait_for

from edgeloop.protocol.errors import ProtocolError as ValidationError
from edgeloop.features import FeatureDefinition, replay
from edgeloop.protocol import mesh_pb2
from edgeloop.serving.feature_models import build_feature_echo, feature_request, write_feature_model

MODEL = "fe"
T0_MS = 1_700_000_000_000
DEFINITION = FeatureDefinition.from_dict({
    "version": 1, "entity": "meter", "inputs": ["a", "b"],
    "features": [{"op": "lag", "col": "a", "k": 1}, {"op": "delta", "col": "b", "k": 2}]})


def test_feature_samples_are_stored_with_full_vectors_and_raw_inputs(tmp_path):
    repo = tmp_path / "models"
    write_feature_model(repo, MODEL, 1, build_feature_echo(DEFINITION.width), DEFINITION)
    cloud = start_cloud(tmp_path)
    edge = None
    try:
        edge = Edge(edge_config(tmp_path, "edge-f", cloud.address, repository=repo))
        rows = np.arange(12, dtype=np.float32).reshape(6, 2)
        for i in range(6):
            edge.infer_stub.ModelInfer(feature_request(MODEL, DEFINITION, rows[i], "m1", T0_MS + 1000 * i,
                                                       request_id=f"f-{i}"), timeout=10)
        assert wait_for(lambda: len(stored_sample_ids(cloud.config.database)) == 6)
        expected = replay(DEFINITION, rows.astype(np.float64), ["m1"] * 6, (T0_MS + 1000 * np.arange(6)) / 1000.0)
        for i in range(6):
            sample = mesh_pb2.Sample.FromString(cloud.store.sample_payload(MODEL, f"f-{i}"))
            assert sample.feature_digest == DEFINITION.digest and sample.features_cold == (i == 0)
            assert sample.features_partial == (i < 2)
            assert np.frombuffer(sample.inputs[0].data, "<f4").tobytes() == expected.vectors[i].tobytes()
            assert [np.frombuffer(t.data, "<f4")[0] for t in sample.raw_inputs] == list(rows[i])
    finally:
        if edge is not None:
            edge.close()
        cloud.stop(1.0)


def test_the_coordinator_checks_raw_inputs_and_the_digest(tmp_path):
    cloud = start_cloud(tmp_path)
    try:
        good = mesh_pb2.TensorData(name="a", datatype="FP32", shape=[1], data=b"\0\0\0\0")
        base = dict(sample_id="s1", model=MODEL, model_version=1, timestamp_ms=T0_MS, inputs=[good])
        batch = mesh_pb2.SampleBatch(samples=[mesh_pb2.Sample(**base, raw_inputs=[good],
                                                              feature_digest=DEFINITION.digest)])
        assert len(cloud.core.sample_rows(batch)) == 1
        for extra, field in ((dict(raw_inputs=[mesh_pb2.TensorData(name="a", datatype="FP32", shape=[2],
                                                                  data=b"\0")]), "raw_inputs[0].data"),
                             (dict(feature_digest="nope"), "feature_digest")):
            with pytest.raises(ValidationError, match=field.replace("[", r"\[").replace("]", r"\]")):
                cloud.core.sample_rows(mesh_pb2.SampleBatch(samples=[mesh_pb2.Sample(**base, **extra)]))
    finally:
        cloud.stop(1.0)
