"""The accuracy gate on real uploads: labelled samples of the new version vs the champion's, same window."""
import time
from dataclasses import replace

from coordkit import Running, cloud_config, join, onnx_bytes, sample
from edgeloop.protocol import mesh_pb2


def upload(running, node, version, prefix, n, label):
    batch = mesh_pb2.SampleBatch(batch_id=f"b-{prefix}", node_id=node,
                                 samples=[sample(f"{prefix}-{i}", version=version) for i in range(n)])
    running.coord.UploadSamples(iter([batch]), timeout=30)
    labels = [mesh_pb2.Label(sample_id=f"{prefix}-{i}", model="m", value=label) for i in range(n)]
    running.coord.UploadLabels(iter([mesh_pb2.LabelBatch(batch_id=f"l-{prefix}", node_id=node, labels=labels)]),
                               timeout=30)


def test_a_version_less_accurate_than_the_champion_on_labelled_traffic_is_rolled_back(running):
    core = running.coordinator.core
    for node, zone in (("edge-a", "zone-1"), ("edge-b", "zone-2")):  # one zone each: both seed their zone
        join(running.coord, node, models=[("m", 1)], zone=zone)
    data = onnx_bytes(100)
    sha, size = core.artifacts.put(iter([data]))
    core.publish("m", 2, sha, size, reason="test", bake_s=60)  # long bake: only a gate can end it
    (doc,) = core.rollouts.rollouts()
    assert doc["previous"] == 1 and doc["previous_by_edge"] == {"edge-a": 1, "edge-b": 1}
    for node in ("edge-a", "edge-b"):
        (record,) = [r for r in running.store.directives_after(node, 0) if r.kind == "load"]
        running.coord.ReportDirective(mesh_pb2.DirectiveResult(node_id=node, sequence=record.sequence, ok=True),
                                      timeout=30)
    # every sample predicts class 1 (outputs [0.25, 0.75]); the champion's are labelled 1, the new one's 0
    upload(running, "edge-b", 1, "champ", 40, 1.0)
    time.sleep(0.5)
    # no labels for the new version yet: no verdict
    assert core.rollouts.rollouts()[0]["state"] == "running", core.rollouts.rollouts()[0]["decisions"]
    upload(running, "edge-a", 2, "new", 40, 0.0)
    # the champion is judged over the same span: its requests from the new version's first one on
    time.sleep(0.5)
    assert core.rollouts.rollouts()[0]["state"] == "running", core.rollouts.rollouts()[0]["decisions"]
    upload(running, "edge-b", 1, "champ2", 40, 1.0)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and core.rollouts.rollouts()[0]["state"] == "running":
        time.sleep(0.05)
    (doc,) = core.rollouts.rollouts()
    assert doc["state"] == "rolled_back" and "accuracy" in doc["reason"], doc["decisions"]
    accuracy = doc["decisions"][-1]["evidence"]["accuracy"]
    assert accuracy["new"] == {"correct": 0, "labelled": 40, "accuracy": 0.0}
    assert accuracy["champion"]["accuracy"] == 1.0 and accuracy["p_value"] < 1e-6
    for node in ("edge-a", "edge-b"):
        rollbacks = [r for r in running.store.directives_after(node, 0) if r.kind == "rollback"]
        assert len(rollbacks) == 1 and mesh_pb2.RollbackModel.FromString(rollbacks[0].payload).to_version == 1


def test_a_canary_waits_for_labels_then_passes_on_the_other_gates_and_says_so(tmp_path):
    config = cloud_config(tmp_path)
    config = replace(config, delivery=replace(config.delivery, min_labelled=30, accuracy_wait_s=2.0))
    running = Running(config)
    try:
        core = running.coordinator.core
        join(running.coord, "edge-a", models=[("m", 1)], zone="zone-1")
        join(running.coord, "edge-b", models=[("m", 1)], zone="zone-2")
        sha, size = core.artifacts.put(iter([onnx_bytes(100)]))
        core.publish("m", 2, sha, size, reason="test", canary=1, bake_s=0.01)
        (doc,) = core.rollouts.rollouts()
        (canary,) = doc["waves"][0]
        other = ({"edge-a", "edge-b"} - {canary}).pop()
        (record,) = [r for r in running.store.directives_after(canary, 0) if r.kind == "load"]
        running.coord.ReportDirective(mesh_pb2.DirectiveResult(node_id=canary, sequence=record.sequence, ok=True),
                                      timeout=30)
        # labels flow (the champion has 40) but the canary has only 10: the wave waits for more
        upload(running, other, 1, "champ", 40, 1.0)
        upload(running, canary, 2, "new", 10, 1.0)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not any(d["decision"] == "waiting"
                                                      for d in core.rollouts.rollouts()[0]["decisions"]):
            time.sleep(0.05)
        doc = core.rollouts.rollouts()[0]
        assert doc["wave"] == 0 and doc["state"] == "running", doc["decisions"]
        waiting = [d for d in doc["decisions"] if d["decision"] == "waiting"][0]["evidence"]["accuracy"]
        assert waiting["verdict"] == "wait" and waiting["new"]["labelled"] == 10
        # after accuracy_wait_s it passes on the other gates, and the decision says the accuracy was not judged
        while time.monotonic() < deadline and core.rollouts.rollouts()[0]["wave"] == 0:
            time.sleep(0.05)
        doc = core.rollouts.rollouts()[0]
        passed = [d for d in doc["decisions"] if d["decision"] == "wave_passed"][0]["evidence"]["gates"]["accuracy"]
        assert passed["verdict"] == "timed_out" and "accuracy not judged" in passed["note"], passed
    finally:
        running.stop()


def test_a_first_version_has_no_champion_to_wait_for(tmp_path):
    config = cloud_config(tmp_path)
    running = Running(replace(config, delivery=replace(config.delivery, canary=1, bake_s=0.01)))
    try:
        core = running.coordinator.core
        join(running.coord, "edge-a", zone="zone-1")
        sha, size = core.artifacts.put(iter([onnx_bytes(100)]))
        core.publish("m", 1, sha, size, reason="test")
        (record,) = [r for r in running.store.directives_after("edge-a", 0) if r.kind == "load"]
        running.coord.ReportDirective(mesh_pb2.DirectiveResult(node_id="edge-a", sequence=record.sequence, ok=True),
                                      timeout=30)
        upload(running, "edge-a", 1, "first", 10, 1.0)  # labels flow, but there is nothing to compare with
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and core.rollouts.rollouts()[0]["state"] == "running":
            time.sleep(0.05)
        doc = core.rollouts.rollouts()[0]
        assert doc["state"] == "done" and not any(d["decision"] == "waiting" for d in doc["decisions"]), doc
    finally:
        running.stop()
