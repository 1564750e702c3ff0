"""The accuracy gate on real uploads: labelled samples of the new version vs the champion's, same window."""
import time

from coordkit import join, onnx_bytes, sample
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
    for node in ("edge-a", "edge-b"):
        join(running.coord, node, models=[("m", 1)])
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
    upload(running, "edge-b", 1, "champ", 25, 1.0)
    time.sleep(0.5)
    # no labels for the new version yet: no verdict
    assert core.rollouts.rollouts()[0]["state"] == "running", core.rollouts.rollouts()[0]["decisions"]
    upload(running, "edge-a", 2, "new", 25, 0.0)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and core.rollouts.rollouts()[0]["state"] == "running":
        time.sleep(0.05)
    (doc,) = core.rollouts.rollouts()
    assert doc["state"] == "rolled_back" and "accuracy" in doc["reason"], doc["decisions"]
    evidence = doc["decisions"][-1]["evidence"]
    assert evidence["accuracy_new"] == 0.0 and evidence["accuracy_champion"] == 1.0
    for node in ("edge-a", "edge-b"):
        rollbacks = [r for r in running.store.directives_after(node, 0) if r.kind == "rollback"]
        assert len(rollbacks) == 1 and mesh_pb2.RollbackModel.FromString(rollbacks[0].payload).to_version == 1
