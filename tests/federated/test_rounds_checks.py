"""What a round refuses: malformed rounds on the edge, malformed updates on the coordinator, bad config."""
from __future__ import annotations

from dataclasses import replace

import grpc
import numpy as np
import pytest

from edgeloop.config import ConfigError, parse_cloud_config
from edgeloop.coordinator import Coordinator
from edgeloop.coordinator.federated import gate
from edgeloop.node.federated import FederatedEdge, LocalExamples, RoundFailed
from edgeloop.protocol import mesh_pb2, mesh_pb2_grpc


def _cloud_config(tmp, **training):
    config = parse_cloud_config({"storage": {"database": "c.sqlite", "artifact_dir": "art"},
                                 "training": {"enabled": False, **training}}, base_dir=tmp)
    return replace(config, node=replace(config.node, grpc_port=0, metrics_port=-1))


def test_training_models_mode_and_federated_keys(tmp_path):
    t = _cloud_config(tmp_path, models={"a": {"mode": "federated"}, "b": {"mode": "central"}},
                      federated_strategy="trimmed_mean", federated_mu=0.01).training
    assert t.federated_models == ("a",) and t.federated_strategy == "trimmed_mean" and t.federated_mu == 0.01
    with pytest.raises(ConfigError, match="training.models.a.mode"):
        _cloud_config(tmp_path, models={"a": {"mode": "split"}})
    with pytest.raises(ConfigError, match="federated_strategy"):
        _cloud_config(tmp_path, federated_strategy="mean")
    with pytest.raises(ConfigError, match="federated_trim"):
        _cloud_config(tmp_path, federated_trim=0.5)


def _round(**over):
    msg = mesh_pb2.FederatedRound(model="m", round_id="r1", n_features=2, n_classes=2,
                                  mean=np.zeros(2, "<f4").tobytes(), inv_std=np.ones(2, "<f4").tobytes(),
                                  classes=[0.0, 1.0], theta=np.zeros(6, "<f4").tobytes(), epochs=2, lr=0.1,
                                  holdout_fraction=0.25, max_rows=100)
    for k, v in over.items():
        if k == "classes":
            del msg.classes[:]
            msg.classes.extend(v)
        else:
            setattr(msg, k, v)
    return msg


def test_the_edge_refuses_malformed_rounds_and_joins_labels_locally():
    examples = LocalExamples(max_pending=2)
    examples.set_models(["m"])
    examples.add_rows("m", "s1", np.ones((1, 2)))
    examples.add_rows("m", "s2", np.zeros((1, 2)))
    examples.add_rows("m", "s3", np.full((1, 2), 2.0))  # s1 is dropped: the pending store is bounded
    assert examples.dropped == 1 and not examples.add_label("s1", "m", 1.0)
    assert examples.add_label("s3", "m", 1.0) and examples.add_label("s2", "", 0.0)
    x, y = examples.labelled("m")
    assert x.shape == (2, 2) and list(y) == [1.0, 0.0]
    edge = FederatedEdge("edge-a", examples, grpc.insecure_channel("127.0.0.1:9"))
    assert edge.answer(_round()).train_rows + edge.answer(_round()).holdout_rows == 2
    for over, text in (({"n_classes": 1}, "n_classes: 1"), ({"theta": b"\0" * 5}, "theta: 5 bytes"),
                       ({"classes": [0.0]}, "classes: 1 values"), ({"epochs": 0}, "epochs: 0"),
                       ({"holdout_fraction": 1.0}, "holdout_fraction"), ({"n_features": 3}, "mean: 8 bytes")):
        with pytest.raises(RoundFailed, match=text):
            edge.answer(_round(**over))


def test_gate_sums_edges_and_refuses_a_regressed_edge():
    def u(n, a, b):
        return mesh_pb2.WeightUpdate(holdout_rows=n, candidate_correct=a, champion_correct=b)

    ok = gate({"e1": u(100, 80, 60), "e2": u(100, 70, 60)}, 0.0, 0.05, 50)
    assert ok["blessed"] and ok["challenger"] == 0.75 and ok["champion"] == 0.6
    bad = gate({"e1": u(100, 95, 60), "e2": u(100, 50, 60)}, 0.0, 0.05, 50)
    assert not bad["blessed"] and "edge e2 lost 0.1000" in bad["reason"]
    assert not gate({}, 0.0, 0.05, 50)["blessed"]


def test_the_coordinator_checks_updates_and_rounds(tmp_path):
    cloud = Coordinator(_cloud_config(tmp_path, models={"m": {"mode": "federated"}})).start()
    try:
        channel = grpc.insecure_channel(cloud.address)
        stub = mesh_pb2_grpc.CoordinatorStub(channel)
        ack = stub.SubmitUpdate(mesh_pb2.WeightUpdate(node_id="edge-a", model="m", round_id="nope"), timeout=5)
        assert not ack.accepted and "round_id 'nope'" in ack.reason
        with pytest.raises(grpc.RpcError) as info:
            stub.SubmitUpdate(mesh_pb2.WeightUpdate(node_id="../x", model="m", round_id="r"), timeout=5)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "node_id" in info.value.details()
        fleet = mesh_pb2_grpc.FleetStub(channel)
        for model, text in (("other", "is not federated"), ("m", "has no published version")):
            with pytest.raises(grpc.RpcError) as info:
                fleet.FederatedRound(mesh_pb2.CtRequest(model=model), timeout=5)
            assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION and text in info.value.details()
        # Join tells the edge which models are federated
        reply = stub.Join(mesh_pb2.JoinRequest(node=mesh_pb2.NodeIdentity(node_id="edge-a")), timeout=5)
        assert list(reply.federated_models) == ["m"]
        channel.close()
    finally:
        cloud.stop(1.0)


def test_the_coordinator_never_stores_a_raw_sample_of_a_federated_model(tmp_path):
    cloud = Coordinator(_cloud_config(tmp_path, models={"m": {"mode": "federated"}})).start()
    try:
        channel = grpc.insecure_channel(cloud.address)
        stub = mesh_pb2_grpc.CoordinatorStub(channel)
        stub.Join(mesh_pb2.JoinRequest(node=mesh_pb2.NodeIdentity(node_id="edge-a")), timeout=5)
        tensor = mesh_pb2.TensorData(name="input", datatype="FP32", shape=[1, 2], data=np.zeros(2, "<f4").tobytes())
        samples = [mesh_pb2.Sample(sample_id=f"s-{model}", model=model, model_version=1,
                                   timestamp_ms=1_700_000_000_000, inputs=[tensor]) for model in ("m", "central")]
        ack = stub.UploadSamples(iter([mesh_pb2.SampleBatch(batch_id="b1", node_id="edge-a", samples=samples)]),
                                 timeout=10)
        assert list(ack.accepted_batch_ids) == ["b1"]  # acknowledged, so an old edge's outbox drains
        assert cloud.store.sample_ids() == [("central", "s-central")]
        assert cloud.core.federated_samples_dropped == 1
        channel.close()
    finally:
        cloud.stop(1.0)
