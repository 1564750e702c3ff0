"""Escalation by zone: an edge node sends its unsure rows to the bigger model on a node of zone "cloud"."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from edgeloop.client import MeshClient
from edgeloop.config import EdgeConfig, EscalationPolicy, MeshConfig, ModelConfig, NodeConfig, ServingConfig
from edgeloop.node import EdgeNode
from edgeloop.protocol.codec import build_infer_request, infer_response_to_numpy
from edgeloop.serving.demo_models import build_column_classifier, write_model
from meshkit import free_port, wait_for

X = np.array([[0.95, 0.2], [0.55, 0.3]], dtype=np.float32)  # row 1 is unsure; the big model answers 0.3


def _node(tmp_path, node_id, zone, port, peers, models, configs=()):
    repo = tmp_path / node_id
    for name, (version, column) in models.items():
        write_model(repo, name, version, build_column_classifier(2, column=column))
    mesh = replace(MeshConfig(), zeroconf_interfaces=(), static_peers=peers, heartbeat_interval_ms=100,
                   down_after_ms=600)
    return EdgeNode(EdgeConfig(node=NodeConfig(id=node_id, grpc_port=port, metrics_port=0, zone=zone),
                               serving=ServingConfig(model_repository=repo, models=tuple(configs)), mesh=mesh))


@pytest.fixture
def mesh(tmp_path):
    """An edge node (zone "edge", model small) and a cloud node (zone "cloud", model big v2) as static peers."""
    ports = {"edge-1": free_port(), "cloud-1": free_port()}
    policy = EscalationPolicy(target_model="big", output="probabilities", rule="top1", threshold=0.8,
                              target_zone="cloud", budget_ms=2000)
    edge = _node(tmp_path, "edge-1", "edge", ports["edge-1"], (f"127.0.0.1:{ports['cloud-1']}",),
                 {"small": (1, 0)}, [ModelConfig(name="small", escalation=policy)])
    cloud = _node(tmp_path, "cloud-1", "cloud", ports["cloud-1"], (f"127.0.0.1:{ports['edge-1']}",),
                  {"big": (2, 1)})
    nodes = [edge.start(), cloud.start()]
    try:
        for node in nodes:
            assert wait_for(lambda: sum(m.alive for m in node.mesh.membership.members()) == 2, 10)
        yield edge, cloud
    finally:
        for node in nodes:
            node.stop(1.0)


def test_zone_target_answers_the_unsure_row(mesh):
    edge, cloud = mesh
    with MeshClient(seeds=[edge.address], interfaces=(), heartbeat_interval_ms=100, timeout_s=10) as client:
        assert client.wait_ready(nodes=1, model="small", timeout=10)
        response = client.infer_request(build_infer_request("small", {"x": X}, request_id="q1"))
    probs = infer_response_to_numpy(response)["probabilities"]
    np.testing.assert_allclose(probs, [[0.95, 0.05], [0.3, 0.7]], atol=1e-6)
    params = response.parameters
    assert params["edgeloop_answered_by"].string_param == "escalated"
    assert (params["edgeloop_escalation_model"].string_param, params["edgeloop_escalation_version"].string_param) == (
        "big", "2")
    assert sum(s.inference_stats.success.count for s in cloud.models.statistics("big")) == 1


def test_no_live_node_in_the_zone_gives_the_local_answer(mesh):
    edge, cloud = mesh
    sender = edge.escalation.send
    policy = EscalationPolicy(target_model="big", output="probabilities", rule="top1", threshold=0.8,
                              target_zone="gpu")
    with pytest.raises(Exception, match="no live node in zone 'gpu' serves model 'big'"):
        sender.target_address(policy, build_infer_request("small", {"x": X}))
    cloud.stop(1.0)  # the cloud node leaves: the edge answers alone, flagged
    assert wait_for(lambda: sum(m.alive for m in edge.mesh.membership.members()) == 1, 10)
    with MeshClient(seeds=[edge.address], interfaces=(), heartbeat_interval_ms=100, timeout_s=10) as client:
        assert client.wait_ready(nodes=1, model="small", timeout=10)
        response = client.infer_request(build_infer_request("small", {"x": X}, request_id="q2"))
    np.testing.assert_allclose(infer_response_to_numpy(response)["probabilities"][1], [0.55, 0.45], atol=1e-6)
    assert response.parameters["edgeloop_answered_by"].string_param == "fallback"
    assert "no live node in zone 'cloud'" in response.parameters["edgeloop_escalation_error"].string_param
