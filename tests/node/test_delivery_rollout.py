"""Fleet delivery end to end: a real coordinator and four real EdgeNodes on 127.0.0.1 with signed delivery.

A good version goes canary → waves → done, later waves fetching from the canary peer (coordinator egress
counted); a version that fails its self-test on the canary is rolled back and no other edge ever loads it;
forged, expired and downgraded manifests are refused, counted and reported while the old model serves.
"""
import hashlib
import json
import time
from dataclasses import replace

import grpc
import numpy as np
import onnxruntime as ort
import pytest
from prometheus_client import generate_latest

from edgeloop.config import parse_cloud_config
from edgeloop.config.delivery import EdgeDeliveryConfig
from edgeloop.coordinator import Coordinator
from edgeloop.delivery import manifest as mf
from edgeloop.delivery import rollout as ro
from edgeloop.delivery.keys import init_keys, load_private_key
from edgeloop.node.updater import spec_of
from edgeloop.protocol import inference_pb2, mesh_pb2
from edgeloop.serving.demo_models import build_mlp
from nodekit import MODEL, Edge, edge_config, wait_for, x

EDGES = ["edge-a", "edge-b", "edge-c", "edge-d"]


@pytest.fixture
def fleet(tmp_path):
    private, public = init_keys(tmp_path / "keys")
    config = parse_cloud_config({"storage": {"database": "cloud/db.sqlite", "fetch_chunk_bytes": 8192},
                                 "fleet": {"heartbeat_interval_ms": 200},
                                 "delivery": {"signing_key": str(private), "canary": 1, "bake_s": 0.3,
                                              "min_requests": 0}}, base_dir=tmp_path)
    cloud = Coordinator(replace(config, node=replace(config.node, grpc_port=0, metrics_port=-1))).start()
    edges = {}
    for i, node_id in enumerate(EDGES):
        cfg = edge_config(tmp_path, node_id, cloud.address)
        cfg = replace(cfg, node=replace(cfg.node, zone="z1"),
                      delivery=EdgeDeliveryConfig(trusted_keys=(public,), require_signed=True))
        edges[node_id] = Edge(cfg)
    assert wait_for(lambda: all(e.node.link.connected for e in edges.values()))
    yield cloud, edges, load_private_key(private)
    for e in edges.values():
        e.close()
    cloud.stop(1)


def self_test_cases(model_bytes: bytes) -> list:
    session = ort.InferenceSession(model_bytes)
    inputs = x(3, rows=2)
    (out,) = session.run(None, {"INPUT0": inputs})
    return [{"inputs": {"INPUT0": spec_of(inputs)}, "outputs": {"OUTPUT0": spec_of(out)}}]


def publish(cloud, data: bytes, version: int, cases: list):
    sha, size = cloud.artifacts.put(iter([data]))
    published, first = cloud.core.publish(MODEL, version, sha, size, reason="test", self_test=cases)
    (doc,) = [r for r in cloud.core.rollouts.rollouts() if r["version"] == version]
    return doc


def rollout_state(cloud, rollout_id):
    return next(r for r in cloud.core.rollouts.rollouts() if r["rollout_id"] == rollout_id)


def test_a_good_version_rolls_out_canary_then_waves_with_peers_carrying_the_bytes(fleet):
    cloud, edges, _ = fleet
    data = build_mlp(seed=7).SerializeToString()
    doc = publish(cloud, data, 2, self_test_cases(data))
    assert [len(w) for w in doc["waves"]] == [1, 2, 1] and ro.replay_canary(doc) == doc["waves"][0]
    assert wait_for(lambda: rollout_state(cloud, doc["rollout_id"])["state"] == "done", timeout=40)
    final = rollout_state(cloud, doc["rollout_id"])
    assert [d["decision"] for d in final["decisions"]].count("wave_passed") == 3
    for node_id, edge in edges.items():
        assert edge.node.models.ready_models()[MODEL] == [1, 2], node_id  # v1 stays loaded for rollback
        assert edge.infer(1).model_version == "2"
    canary = doc["waves"][0][0]
    egress = cloud.metrics.artifact_bytes._value.get()
    # the canary fetched from the coordinator; every later edge from a peer holding it: one copy per zone
    assert egress == len(data), (egress, len(data))
    later = [edges[n].node.link.updater.last_transfer for n in EDGES if n != canary]
    assert all(t is not None and "coordinator" not in t.chunks_by_source for t in later)


def test_a_version_that_fails_its_self_test_is_rolled_back_and_reaches_no_other_edge(fleet):
    cloud, edges, _ = fleet
    good = build_mlp(seed=7).SerializeToString()
    bad = build_mlp(seed=8).SerializeToString()  # a different model than the reference outputs were made with
    doc = publish(cloud, bad, 2, self_test_cases(good))
    assert wait_for(lambda: rollout_state(cloud, doc["rollout_id"])["state"] == "rolled_back", timeout=30)
    final = rollout_state(cloud, doc["rollout_id"])
    canary = doc["waves"][0][0]
    assert canary in final["reason"] and final["edges"][canary] == "rolled_back"
    assert "self_test" in final["decisions"][-1]["evidence"]["failed"][canary]
    time.sleep(0.5)
    for node_id, edge in edges.items():
        assert edge.node.models.ready_models()[MODEL] == [1], node_id
        assert edge.infer(1).model_version == "1"
        loads = [r for r in cloud.store.directives_after(node_id, 0) if r.kind == "load" and r.version == 2]
        assert (len(loads) == 1) == (node_id == canary)  # non-canary edges were never directed


def direct(cloud, node_id: str, version: int, raw: bytes, data: bytes):
    sha, size = cloud.artifacts.put(iter([data]))
    payload = mesh_pb2.LoadModel(model=MODEL, version=version, artifact_sha256=sha, size=size, manifest_json=raw)
    record = cloud.store.add_directive(node_id, "load", payload.SerializeToString(), int(time.time() * 1000),
                                       MODEL, version)
    cloud.hub.notify()
    assert wait_for(lambda: any(s == record.sequence for s, _, _ in cloud_edge_results(cloud, node_id)))
    return next(r for r in cloud.store.directives_after(node_id, record.sequence - 1) if r.sequence == record.sequence)


def cloud_edge_results(cloud, node_id):
    return [(r.sequence, r.result, r.error) for r in cloud.store.directives_after(node_id, 0) if r.result]


def signed(cloud_key, data: bytes, version: int, created_ms=None, ttl_ms=3_600_000):
    created = created_ms if created_ms is not None else int(time.time() * 1000)
    doc = mf.build(MODEL, version, hashlib.sha256(data).hexdigest(), len(data), mf.chunk_hashes(data, 8192),
                   created, chunk_bytes=8192, ttl_ms=ttl_ms)
    return mf.encode(mf.sign(doc, cloud_key))


def test_forged_expired_and_downgraded_manifests_are_refused_counted_and_reported(fleet, tmp_path):
    cloud, edges, key = fleet
    edge = edges["edge-a"]
    v2 = build_mlp(seed=7).SerializeToString()
    forger = load_private_key(init_keys(tmp_path / "forger")[0])
    forged = direct(cloud, "edge-a", 2, signed(forger, v2, 2), v2)
    assert forged.result == "failed" and "bad_signature" in forged.error
    expired = direct(cloud, "edge-a", 2, signed(key, v2, 2, created_ms=int(time.time() * 1000) - 20_000,
                                                  ttl_ms=10_000), v2)
    assert expired.result == "failed" and "expired" in expired.error
    unsigned = direct(cloud, "edge-a", 2, b"", v2)
    assert unsigned.result == "failed" and "unsigned" in unsigned.error
    assert edge.node.models.ready_models()[MODEL] == [1] and edge.infer(1).model_version == "1"
    good = direct(cloud, "edge-a", 2, signed(key, v2, 2), v2)
    assert good.result == "applied", good.error
    v1_again = build_mlp(seed=9).SerializeToString()
    downgrade = direct(cloud, "edge-a", 1, signed(key, v1_again, 1), v1_again)
    assert downgrade.result == "failed" and "downgrade" in downgrade.error
    assert edge.infer(1).model_version == "2"
    text = generate_latest(edge.node.metrics.registry).decode()
    for reason in ("bad_signature", "expired", "unsigned", "downgrade"):
        assert f'edgeloop_delivery_refused_total{{reason="{reason}"}} 1.0' in text, reason
    # a node with require_signed refuses an unsigned RepositoryModelLoad push
    request = inference_pb2.RepositoryModelLoadRequest(model_name=MODEL)
    request.parameters["file:3/model.onnx"].bytes_param = v2
    with pytest.raises(grpc.RpcError) as err:
        edge.infer_stub.RepositoryModelLoad(request, timeout=10)
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED and "require_signed" in err.value.details()


def test_a_version_that_errors_on_real_traffic_fails_the_success_gate_and_is_rolled_back(fleet):
    cloud, edges, _ = fleet
    narrow = build_mlp(in_dim=16, seed=7).SerializeToString()  # passes its own self-test, fails real [1, 32] rows
    sha, size = cloud.artifacts.put(iter([narrow]))
    session = ort.InferenceSession(narrow)
    sample = np.ones((1, 16), np.float32)
    cases = [{"inputs": {"INPUT0": spec_of(sample)}, "outputs": {"OUTPUT0": spec_of(session.run(None, {
        "INPUT0": sample})[0])}}]
    cloud.core.publish(MODEL, 2, sha, size, reason="test", bake_s=60, self_test=cases)
    (doc,) = cloud.core.rollouts.rollouts()
    canary = doc["waves"][0][0]
    assert wait_for(lambda: rollout_state(cloud, doc["rollout_id"])["edges"][canary] == "applied", timeout=30)
    for i in range(30):  # real traffic on the canary: every request fails on version 2
        with pytest.raises(grpc.RpcError):
            edges[canary].infer(i)
    assert wait_for(lambda: rollout_state(cloud, doc["rollout_id"])["state"] == "rolled_back", timeout=30)
    final = rollout_state(cloud, doc["rollout_id"])
    assert final["reason"].startswith("gate failed: success")
    evidence = final["decisions"][-1]["evidence"]
    assert evidence["new"]["failures"] >= 20 and evidence["rolled_back"] == [canary]
    assert wait_for(lambda: edges[canary].node.models.ready_models()[MODEL] == [1])
    assert edges[canary].infer(1).model_version == "1"
    for node_id in EDGES:
        if node_id != canary:
            assert not [r for r in cloud.store.directives_after(node_id, 0) if r.kind == "load"]


def test_an_edge_offline_during_its_wave_catches_up_when_it_returns(fleet):
    cloud, edges, _ = fleet
    data = build_mlp(seed=7).SerializeToString()
    sha, size = cloud.artifacts.put(iter([data]))
    cloud.core.publish(MODEL, 2, sha, size, reason="test", bake_s=1.5, self_test=self_test_cases(data))
    (doc,) = cloud.core.rollouts.rollouts()
    away = doc["waves"][-1][0]
    config = edges[away].node.config
    edges[away].close()  # goes away while the canary bakes
    assert wait_for(lambda: rollout_state(cloud, doc["rollout_id"])["state"] == "done", timeout=40)
    assert rollout_state(cloud, doc["rollout_id"])["edges"][away] == "directed"
    edges[away] = Edge(config)  # back: the directive stream resumes after its last applied directive
    assert wait_for(lambda: edges[away].node.models.ready_models().get(MODEL) == [1, 2], timeout=30)
    assert edges[away].infer(2).model_version == "2"
