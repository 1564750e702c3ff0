"""Champion = what the fleet serves: a challenger whose staged rollout the accuracy gate rolls back is never
the loop's champion; the loop returns to the version the edges were sent back to (with its reference),
waits ``retry_after_rollback_s``, and its next trigger publishes a new version built on that champion."""
from __future__ import annotations

import struct
import time
from dataclasses import replace

import grpc
import pytest
from loopkit import MODEL, Feeder, champion, cloud_config, push, stream, wait_for

from edgeloop.coordinator import Coordinator
from edgeloop.ct import registry
from edgeloop.protocol import mesh_pb2, mesh_pb2_grpc
from edgeloop.store import LabelRow, SampleRow

RETRY_S = 30.0


@pytest.fixture
def cloud(tmp_path):
    config = cloud_config(tmp_path, retry_after_rollback_s=RETRY_S, volume=200, min_change_rows=40)
    # a long bake: only a gate ends the rollout
    config = replace(config, delivery=replace(config.delivery, bake_s=600.0))
    started = Coordinator(config).start()
    yield started
    started.stop(1.0)


def gate_samples(store, node: str, version: int, prefix: str, n: int, label: float) -> None:
    """n served requests of ``version`` that predicted class 1, labelled ``label``, received now."""
    now = int(time.time() * 1000)
    out = mesh_pb2.TensorData(name="probabilities", datatype="FP32", shape=[1, 2], data=struct.pack("<2f", .25, .75))
    rows = [SampleRow(MODEL, f"{prefix}{i}", version, "", now, mesh_pb2.Sample(
        sample_id=f"{prefix}{i}", model=MODEL, model_version=version, timestamp_ms=now,
        outputs=[out]).SerializeToString()) for i in range(n)]
    store.ingest_samples(node, f"b-{prefix}", rows, now)
    store.ingest_labels(node, f"l-{prefix}", [LabelRow(f"{prefix}{i}", MODEL, "", 0, label, now)
                                              for i in range(n)], now)


def test_a_rolled_back_challenger_returns_the_champion_and_a_later_trigger_makes_a_new_version(cloud):
    push(cloud, champion())
    join(cloud)
    with grpc.insecure_channel(cloud.address) as channel:
        coord = mesh_pb2_grpc.CoordinatorStub(channel)
        feeder = Feeder(cloud.store)
        x, y = stream(800, 1)
        feeder.feed("edge-a", x, y)
        assert cloud.ct.step(1000.0) == []
        reference = cloud.ct.models[MODEL].reference_json
        assert reference  # version 1's reference, built from the rows it served
        x, y = stream(600, 2, changed=True)
        feeder.feed("edge-a", x, y)
        cloud.ct.request_retrain(MODEL, "test: the world changed")
        (run,) = cloud.ct.step(1001.0)
        assert run.state == "published" and run.version == 2, run
        assert cloud.ct.models[MODEL].champion_version == 2
        # the canary edge applies version 2, whose labelled answers are worse than version 1's
        (load,) = [r for r in cloud.store.directives_after("edge-a", 0) if r.kind == "load" and r.version == 2]
        coord.ReportDirective(mesh_pb2.DirectiveResult(node_id="edge-a", sequence=load.sequence, ok=True),
                              timeout=10)
        gate_samples(cloud.store, "edge-a", 2, "new-", 60, 0.0)
        gate_samples(cloud.store, "edge-a", 1, "old-", 60, 1.0)  # the champion over the same span
        rollout = lambda: [d for d in cloud.core.rollouts.rollouts() if d["version"] == 2][0]  # noqa: E731
        assert wait_for(lambda: rollout()["state"] != "running", 30), rollout()["decisions"]
        assert rollout()["state"] == "rolled_back" and "accuracy" in rollout()["reason"], rollout()["reason"]
    # the loop learns it from the driver, and its champion is the version the fleet serves again
    assert cloud.ct.step(2000.0) == []
    st = cloud.ct.models[MODEL]
    assert st.champion_version == 1 and st.rolled_back == [2]
    assert st.reference_json == reference and st.profile is not None  # its own reference, not a new bootstrap
    aliases = cloud.store.aliases(MODEL)
    assert aliases["champion"] == 1 and aliases["rolled_back"] == 2
    marks = [s for s in cloud.store.executions(MODEL, run.run_id) if s["type"] == "rollout"]
    assert marks and marks[0]["state"] == "rolled_back" and marks[0]["properties"]["served_again"] == 1
    assert registry.lineage(cloud.store, MODEL, 2)["rollout"]["state"] == "rolled_back"
    # within the cool-down the world still looks changed, but nothing automatic runs
    fired = len(cloud.store.triggers(MODEL))
    x, y = stream(400, 3, changed=True)
    feeder.feed("edge-a", x, y)
    assert cloud.ct.step(2000.0 + RETRY_S / 2) == [] and len(cloud.store.triggers(MODEL)) == fired
    # after it, the loop's own trigger retrains on version 1 (never on the rolled-back 2) as a new version
    runs = cloud.ct.step(2000.0 + RETRY_S + 1)
    assert [r.state for r in runs] == ["published"] and runs[0].version == 3, runs
    (run3,) = [s for s in cloud.store.executions(MODEL, runs[0].run_id) if s["type"] == "run"]
    assert run3["properties"]["champion_version"] == 1 and run3["properties"]["trigger"] != "manual"
    # and its rollout judges it against what the fleet serves (1), not the rolled-back 2
    (doc3,) = [d for d in cloud.core.rollouts.rollouts() if d["version"] == 3]
    assert doc3["previous"] == 1 and doc3["previous_by_edge"] == {"edge-a": 1}
    assert cloud.ct.models[MODEL].champion_version == 3


def join(cloud) -> None:
    with grpc.insecure_channel(cloud.address) as channel:
        mesh_pb2_grpc.CoordinatorStub(channel).Join(mesh_pb2.JoinRequest(
            node=mesh_pb2.NodeIdentity(node_id="edge-a", host="127.0.0.1", grpc_port=9000, weight=1.0),
            models=[mesh_pb2.ModelVersion(model=MODEL, version=1, state="READY")]), timeout=10)


def test_the_loop_reads_rollbacks_it_missed_from_the_rollout_documents(cloud):
    push(cloud, champion())
    join(cloud)  # an edge keeps later rollouts running (with none, a rollout is done at once)
    push(cloud, champion(seed=1))
    (doc,) = [d for d in cloud.core.rollouts.rollouts() if d["version"] == 2]
    doc.update(state="aborted", rolled_back=True, reason="aborted by the operator")
    cloud.store.put_doc("rollout", doc["rollout_id"], doc, 0)  # as a coordinator that stopped before its loop ran
    cloud.ct.step(3000.0)
    assert cloud.ct.models[MODEL].champion_version == 1 and cloud.ct.models[MODEL].rolled_back == [2]
    # a rollout superseded by a newer version was not rolled back: nothing to learn from it
    push(cloud, champion(seed=2))
    push(cloud, champion(seed=3))
    superseded = [d for d in cloud.core.rollouts.rollouts() if d["version"] == 3][0]
    assert superseded["state"] == "aborted" and not superseded["rolled_back"]
    cloud.ct.step(3001.0)
    assert cloud.ct.models[MODEL].champion_version == 4 and cloud.ct.models[MODEL].rolled_back == [2]


def test_an_operator_rollback_marks_the_version_it_leaves(cloud):
    push(cloud, champion())
    push(cloud, champion(seed=1))
    cloud.ct.step(4000.0)
    assert cloud.ct.models[MODEL].champion_version == 2
    published = cloud.ct.rollback(MODEL, 0, "operator: version 2 misbehaves")
    assert published.version == 3 and published.sha256 == cloud.store.published_models()[0].sha256
    st = cloud.ct.models[MODEL]
    assert st.champion_version == 3 and st.rolled_back == [2] and st.hold_until > 0
    assert cloud.store.aliases(MODEL)["rolled_back"] == 2
    (event,) = [e for e in cloud.store.events("ct_rolled_back")]
    assert event[3]["version"] == 2 and "operator rollback to the bytes of version 1" in event[3]["reason"]
