"""The CT-loop lease's epoch fences the leader's writes: two coordinators in one process on one PostgreSQL
database; the leader freezes (its lease thread and rollout driver stop, as under SIGSTOP) while still
believing it leads; the other takes over within lease_s; the frozen one wakes and publishes through the
CT loop's publish path: the database refuses it, nothing is written, it is counted and the old leader
steps down; the new leader's publish goes through."""
from __future__ import annotations

import time
from dataclasses import replace

import grpc
import pytest
from coordkit import Running, join, onnx_bytes, sample_batch

from edgeloop.config import parse_cloud_config
from edgeloop.protocol import mesh_pb2
from edgeloop.store import FencedError

pytest.importorskip("psycopg", reason="PostgreSQL tests: psycopg is not installed")
LEASE_S = 1.0


def config(tmp_path, url: str, name: str):
    c = parse_cloud_config({"node": {"id": f"cloud-{name}"},
                            "storage": {"database": url, "artifact_dir": f"art-{name}", "lease_s": LEASE_S},
                            # the loop's thread stays off: the test calls the loop's publish path itself
                            "training": {"enabled": False}, "delivery": {"canary": 1000, "bake_s": 0}},
                           base_dir=tmp_path)
    return replace(c, node=replace(c.node, grpc_port=0, metrics_port=0))


def wait_for(check, timeout: float, period: float = 0.02):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(period)
    return bool(check())


def sample_value(coordinator, name: str) -> float:
    return coordinator.metrics.registry.get_sample_value(name) or 0.0


@pytest.fixture
def two_coordinators(tmp_path, postgres_url):
    running = []
    try:
        for name in ("a", "b"):
            running.append(Running(config(tmp_path, postgres_url, name)))
        yield running
    finally:
        for r in running:
            r.stop()


def test_a_frozen_leader_that_wakes_after_a_takeover_cannot_publish(two_coordinators):
    a, b = two_coordinators
    la, lb = a.coordinator.leader, b.coordinator.leader
    assert la.leading and not lb.leading and la.epoch == 1  # a started first and took the lease
    sha1, size1 = a.coordinator.artifacts.put_bytes(onnx_bytes(seed=1))
    assert a.coordinator.ct.publish("m", 0, sha1, size1, "ct")[0].version == 1  # the loop's (fenced) path
    assert [p.version for p in b.store.published_models()] == [1]

    # a freezes: nothing of it renews the lease or drives rollouts, but it still believes it leads
    a.coordinator.core.rollouts.stop()
    la._stop.set()
    la._thread.join(5)
    frozen = time.monotonic()
    assert wait_for(lambda: lb.leading, LEASE_S * 2 + 5), f"b did not take over: {b.store.lease_row('ct-loop')}"
    took = time.monotonic() - frozen
    assert took <= LEASE_S + LEASE_S / 3 + 2.0  # expiry + one try period + slack for a loaded machine
    assert lb.epoch == 2 and la.leading and la.epoch == 1
    assert sample_value(b.coordinator, "edgeloop_coordinator_leader") == 1.0

    # a wakes, mid-step: its loop publishes; the database refuses it, and a steps down
    sha2, size2 = a.coordinator.artifacts.put_bytes(onnx_bytes(seed=2))
    with pytest.raises(FencedError, match=r"epoch 1 of 'cloud-a/.*' is stale \(epoch 2 held by 'cloud-b/"):
        a.coordinator.ct.publish("m", 0, sha2, size2, "ct")
    assert [p.version for p in b.store.published_models()] == [1]  # nothing of the refused publish
    assert [d["version"] for d in b.store.docs("rollout")] == [1]
    assert la.refused == 1 and sample_value(a.coordinator, "edgeloop_coordinator_fenced_writes_total") == 1.0
    refusals = b.store.events("fenced_write_refused")
    assert len(refusals) == 1 and refusals[0][3]["epoch"] == 1 and refusals[0][3]["holder"] == la.holder
    assert "publish" in refusals[0][3]["call"]
    assert wait_for(lambda: not la.leading, 10), "the stale leader did not step down"
    assert wait_for(lambda: sample_value(a.coordinator, "edgeloop_coordinator_leader") == 0.0, 5)
    # the rest of its step cannot overwrite the loop's state either (refused, no longer counted as stale)
    with pytest.raises(FencedError, match="does not hold it"):
        a.coordinator.ct.store.set_ct_state("m", {"stale": True}, 1)
    assert b.store.ct_state("m") is None and la.refused == 1

    # the new leader publishes; the old one, now a follower, is refused without counting a stale write
    published, _ = b.coordinator.ct.publish("m", 0, sha2, size2, "ct")
    assert published.version == 2 and b.store.lease_row("ct-loop")[2] == 2
    with pytest.raises(FencedError, match="does not hold it"):
        a.coordinator.ct.store.set_alias("m", "champion", 1, 1)
    assert la.refused == 1 and b.store.aliases("m") == {}
    # an operator's rollback sent to the follower: refused with the status and the holder named, not counted
    with pytest.raises(grpc.RpcError) as err:
        a.fleet.RollBackModel(mesh_pb2.CtRequest(model="m", version=1, reason="bad canary"), timeout=10)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "does not hold it (epoch 2 held by 'cloud-b/" in err.value.details()
    assert [p.version for p in b.store.published_models()] == [1, 2] and la.refused == 1
    # ingest is never fenced: the old leader still serves its edges
    join(a.coord, "edge-a")
    ack = a.coord.UploadSamples(iter([sample_batch("b1", ["s1", "s2"], node="edge-a")]), timeout=10)
    assert list(ack.accepted_batch_ids) == ["b1"] and ack.rows_stored == 2
