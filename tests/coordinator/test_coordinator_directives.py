"""Model pushes, the directive stream (wake-up, resume, restart), results, and chunked artifact fetch."""
import hashlib
import queue
import threading
import time

import grpc
import pytest

from coordkit import join, onnx_bytes
from edgeloop.protocol import mesh_pb2


def push(fleet, model: str, data: bytes, version: int = 0, chunk: int = 1000):
    parts = [data[i:i + chunk] for i in range(0, len(data), chunk)] or [b""]
    msgs = [mesh_pb2.PushModelChunk(model=model, version=version, data=parts[0])]
    msgs += [mesh_pb2.PushModelChunk(data=p) for p in parts[1:]]
    return fleet.PushModel(iter(msgs), timeout=10)


class StreamReader:
    """Reads a directive stream on a thread so a test can wait for each directive with a deadline."""

    def __init__(self, coord, node: str, after: int = 0) -> None:
        self.call = coord.Directives(mesh_pb2.DirectivesRequest(node_id=node, after_sequence=after), timeout=60)
        self.items: queue.Queue = queue.Queue()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        try:
            for d in self.call:
                self.items.put(d)
            self.items.put(EOFError("the stream ended with OK"))
        except grpc.RpcError as exc:
            self.items.put(exc)

    def next(self, timeout: float = 15.0):
        item = self.items.get(timeout=timeout)
        if isinstance(item, Exception):
            raise item
        return item

    def close(self):
        self.call.cancel()
        self.thread.join(5)


def test_push_directs_every_known_edge_and_later_joiners(running, monkeypatch):
    from edgeloop.coordinator import edge_service

    monkeypatch.setattr(edge_service, "STREAM_POLL_S", 60.0)  # only a wake-up can deliver within the test
    join(running.coord, "edge-a")
    join(running.coord, "edge-b")
    data = onnx_bytes(5000)
    reply = push(running.fleet, "m", data)
    assert reply.version == 1 and reply.sha256 == hashlib.sha256(data).hexdigest() and reply.edges_directed == 2
    assert push(running.fleet, "m", data, version=1).edges_directed == 0   # same bytes again: idempotent
    with pytest.raises(grpc.RpcError) as err:
        push(running.fleet, "m", onnx_bytes(10), version=1)
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
    reader = StreamReader(running.coord, "edge-a")
    try:
        d = reader.next()
        assert d.sequence == 1 and d.load.model == "m" and d.load.version == 1 and d.load.size == len(data)
        assert d.load.artifact_sha256 == reply.sha256
        # a new push wakes the open stream (its idle poll is 60 s here)
        push(running.fleet, "m", onnx_bytes(100))
        d2 = reader.next(timeout=20)
        assert d2.sequence == 2 and d2.load.version == 2
        status = running.fleet.FleetStatus(mesh_pb2.FleetStatusRequest(), timeout=10)
        assert {n.node_id: n.connected for n in status.nodes} == {"edge-a": True, "edge-b": False}
    finally:
        reader.close()
    # version 2 reaches a later joiner once its rollout is done (edge-a applied it; edge-b is offline)
    running.coord.ReportDirective(mesh_pb2.DirectiveResult(node_id="edge-a", sequence=2, ok=True), timeout=10)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not any(
            r["version"] == 2 and r["state"] == "done" for r in running.coordinator.core.rollouts.rollouts()):
        time.sleep(0.05)
    response = join(running.coord, "edge-c")
    assert [(m.model, m.version) for m in response.desired] == [("m", 2)]
    late = StreamReader(running.coord, "edge-c")
    try:
        assert late.next().load.version == 2
    finally:
        late.close()
    # an edge that already serves the current version is not directed again
    assert join(running.coord, "edge-d", models=[("m", 2)]).desired[0].version == 2
    assert running.store.directive_sequence("edge-d") == 0


def test_directive_results_and_unknown_sequences(running):
    join(running.coord, "edge-a")
    push(running.fleet, "m", onnx_bytes(10))
    running.coord.ReportDirective(mesh_pb2.DirectiveResult(node_id="edge-a", sequence=1, ok=False,
                                                           error="onnx: bad model"), timeout=10)
    with pytest.raises(grpc.RpcError) as err:
        running.coord.ReportDirective(mesh_pb2.DirectiveResult(node_id="edge-a", sequence=7, ok=True), timeout=10)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND and "sequence" in err.value.details()
    (record,) = running.store.directives_after("edge-a", 0)
    assert record.result == "failed" and record.error == "onnx: bad model"
    # a failed load rolls its rollout back: the version is not directed again when the edge re-joins
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and running.coordinator.core.rollouts.rollouts()[0]["state"] == "running":
        time.sleep(0.05)
    (rollout,) = running.coordinator.core.rollouts.rollouts()
    assert rollout["state"] == "rolled_back" and "activation failed" in rollout["reason"]
    join(running.coord, "edge-a")
    assert [r.sequence for r in running.store.directives_after("edge-a", 0)] == [1]
    with pytest.raises(grpc.RpcError) as err:
        StreamReader(running.coord, "never-joined").next()
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_restart_in_the_middle_of_a_directive_stream_resumes_after_the_last_applied(running):
    join(running.coord, "edge-a")
    for i in range(3):
        push(running.fleet, f"m{i}", onnx_bytes(64))
    reader = StreamReader(running.coord, "edge-a")
    first = reader.next()
    running.coord.ReportDirective(mesh_pb2.DirectiveResult(node_id="edge-a", sequence=first.sequence, ok=True),
                                  timeout=10)
    running.restart(same_port=True)  # the open stream ends with the old process: UNAVAILABLE, reconnect
    with pytest.raises(grpc.RpcError) as err:
        while True:
            reader.next()
    assert err.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)
    reader = StreamReader(running.coord, "edge-a", after=first.sequence)
    try:
        assert [reader.next().sequence for _ in range(2)] == [2, 3]
        push(running.fleet, "m9", onnx_bytes(8))
        assert reader.next().sequence == 4   # sequences continue from the persisted counter
    finally:
        reader.close()
    assert running.store.nodes()[0].last_directive_applied == 1


def test_fetch_artifact_in_chunks_resumes_from_an_offset(running):
    data = onnx_bytes(300_000)
    sha = push(running.fleet, "m", data, chunk=65536).sha256
    got = b""
    for chunk in running.coord.FetchArtifact(mesh_pb2.FetchArtifactRequest(sha256=sha, chunk_size=70_000), timeout=10):
        assert chunk.offset == len(got) and chunk.total_size == len(data)
        got += chunk.data
        if len(got) >= 140_000:
            break  # "connection lost": resume from what we have
    for chunk in running.coord.FetchArtifact(mesh_pb2.FetchArtifactRequest(sha256=sha, offset=len(got)), timeout=10):
        assert chunk.offset == len(got)
        got += chunk.data
    assert hashlib.sha256(got).hexdigest() == sha
    cases = ((mesh_pb2.FetchArtifactRequest(sha256="0" * 64), grpc.StatusCode.NOT_FOUND, "sha256"),
             (mesh_pb2.FetchArtifactRequest(sha256="../../etc/passwd"), grpc.StatusCode.INVALID_ARGUMENT, "sha256"),
             (mesh_pb2.FetchArtifactRequest(sha256=sha, offset=len(data) + 1), grpc.StatusCode.INVALID_ARGUMENT, "offset"),
             (mesh_pb2.FetchArtifactRequest(sha256=sha, chunk_size=1 << 30), grpc.StatusCode.INVALID_ARGUMENT,
              "chunk_size"))
    for request, code, field in cases:
        with pytest.raises(grpc.RpcError) as err:
            list(running.coord.FetchArtifact(request, timeout=10))
        assert err.value.code() == code and field in err.value.details(), field


def test_restart_keeps_samples_labels_directives_and_artifacts(running):
    from coordkit import sample_batch

    join(running.coord, "edge-a")
    running.coord.UploadSamples(iter([sample_batch("b1", ["s1", "s2"])]), timeout=10)
    running.coord.UploadLabels(iter([mesh_pb2.LabelBatch(batch_id="l1", node_id="edge-a", labels=[
        mesh_pb2.Label(sample_id="s1", model="m", value=2.0)])]), timeout=10)
    model = onnx_bytes(100)
    sha = push(running.fleet, "m", model).sha256
    epoch = running.fleet.FleetStatus(mesh_pb2.FleetStatusRequest(), timeout=10).fleet_epoch
    running.restart()
    status = running.fleet.FleetStatus(mesh_pb2.FleetStatusRequest(), timeout=10)
    assert status.fleet_epoch == epoch and status.nodes[0].samples_received == 2
    assert (status.models[0].samples, status.models[0].labelled) == (2, 1)
    ack = running.coord.UploadSamples(iter([sample_batch("b1", ["s1", "s2"])]), timeout=10)
    assert list(ack.duplicate_batch_ids) == ["b1"]
    assert b"".join(c.data for c in running.coord.FetchArtifact(
        mesh_pb2.FetchArtifactRequest(sha256=sha), timeout=10)) == model
    assert [r.kind for r in running.store.directives_after("edge-a", 0)] == ["load"]


def test_directive_streams_are_bounded_to_half_the_workers(tmp_path):
    from dataclasses import replace

    from coordkit import Running, cloud_config

    r = Running(replace(cloud_config(tmp_path), grpc_workers=4))
    readers = []
    try:
        for node in ("a", "b", "c"):
            join(r.coord, node)
        readers = [StreamReader(r.coord, node) for node in ("a", "b")]
        deadline = time.monotonic() + 20
        while len(r.coordinator.hub.connected()) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert r.coordinator.hub.connected() == {"a", "b"}
        with pytest.raises(grpc.RpcError) as err:
            StreamReader(r.coord, "c").next()
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert r.fleet.FleetStatus(mesh_pb2.FleetStatusRequest(), timeout=10).fleet_epoch >= 1  # calls still work
    finally:
        for reader in readers:
            reader.close()
        r.stop()


def test_a_push_that_is_not_a_self_contained_onnx_model_is_refused(running):
    import onnx
    from onnx import TensorProto, helper

    join(running.coord, "edge-a")
    with pytest.raises(grpc.RpcError) as err:
        push(running.fleet, "m", b"certainly not onnx" * 100)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "not an ONNX model" in err.value.details()
    weight = helper.make_tensor("w", TensorProto.FLOAT, [4], b"\0" * 16, raw=True)
    onnx.external_data_helper.set_external_data(weight, location="../../etc/passwd")
    weight.data_location = TensorProto.EXTERNAL
    weight.ClearField("raw_data")
    graph = helper.make_graph([helper.make_node("Identity", ["w"], ["y"])], "g", [],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])], [weight])
    with pytest.raises(grpc.RpcError) as err:
        push(running.fleet, "m", helper.make_model(graph).SerializeToString())
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "external data" in err.value.details()
    assert running.store.published_models() == [] and running.store.directive_sequence("edge-a") == 0
    assert [p for p in running.coordinator.artifacts.root.rglob("*") if p.is_file()] == []


def test_join_names_the_database_and_the_name_survives_a_restart_but_not_a_new_database(running, tmp_path):
    from coordkit import Running, cloud_config

    first = join(running.coord, "edge-a").database_id
    assert len(first) == 32 and first == running.store.database_id()
    running.restart()
    assert join(running.coord, "edge-a").database_id == first
    other = Running(cloud_config(tmp_path / "elsewhere"))
    try:
        assert join(other.coord, "edge-a").database_id not in ("", first)
    finally:
        other.stop()


def test_an_edge_joining_mid_rollout_is_told_what_its_stage_says_not_the_newest_version(tmp_path):
    from dataclasses import replace

    from coordkit import Running, cloud_config

    config = cloud_config(tmp_path)
    r = Running(replace(config, delivery=replace(config.delivery, canary=1, bake_s=600)))
    try:
        def desired(node, zone="", models=()):
            return [(m.model, m.version) for m in join(r.coord, node, models=models, zone=zone).desired]

        # p v1, p v2 and m v1 published before any edge joined (rollouts with no edges are done at once)
        push(r.fleet, "p", onnx_bytes(32))
        push(r.fleet, "p", onnx_bytes(32))
        push(r.fleet, "m", onnx_bytes(40))
        r.coordinator.core.rollouts.pin("zone:z1", "p", 1)
        assert ("p", 1) in desired("edge-z", zone="z1") and ("p", 2) in desired("edge-y")
        r.coordinator.core.rollouts.pin("edge-z", "p", 2)  # the edge's own pin wins over its zone's
        assert ("p", 2) in desired("edge-z", zone="z1")
        # m v1 on every edge that joins, then v2 to a one-edge canary that bakes for minutes
        for node in ("edge-a", "edge-b"):
            assert ("m", 1) in desired(node)
            (record,) = [d for d in r.store.directives_after(node, 0) if d.model == "m"]
            r.coord.ReportDirective(mesh_pb2.DirectiveResult(node_id=node, sequence=record.sequence, ok=True),
                                    timeout=10)
        push(r.fleet, "m", onnx_bytes(40))
        (rollout,) = [d for d in r.coordinator.core.rollouts.rollouts() if d["model"] == "m" and d["version"] == 2]
        assert rollout["state"] == "running"
        (canary,) = rollout["waves"][0]
        other = sorted({"edge-a", "edge-b"} - {canary})[0]
        assert ("m", 2) in desired(canary, models=[("m", 1)])
        assert ("m", 1) in desired(other, models=[("m", 1)])  # was ("m", 2): not yet meant for it
        assert not any(d.model == "m" and d.version == 2 for d in r.store.directives_after(other, 0))
        # a new edge mid-rollout gets the version the fleet serves, as a desired version and a load
        assert ("m", 1) in desired("edge-c")
        assert [(d.kind, d.version) for d in r.store.directives_after("edge-c", 0) if d.model == "m"] == [("load", 1)]
        # aborted: the canary is told to serve v1 again
        r.coordinator.core.rollouts.control("abort", rollout["rollout_id"])
        assert ("m", 1) in desired(canary, models=[("m", 1)])
    finally:
        r.stop()


def test_a_directive_larger_than_one_message_is_recorded_failed_and_the_next_ones_still_flow(tmp_path):
    from coordkit import Running, cloud_config

    r = Running(cloud_config(tmp_path, max_message_bytes=2 << 20))
    reader = None
    try:
        join(r.coord, "edge-a")
        big = mesh_pb2.FederatedRound(model="m", round_id="r1", theta=b"\0" * (3 << 20)).SerializeToString()
        r.store.add_directive("edge-a", "federated", big, 1, "m", 0)
        r.store.add_directive("edge-a", "report", mesh_pb2.ReportNow().SerializeToString(), 1)
        reader = StreamReader(r.coord, "edge-a")
        assert reader.next().sequence == 2  # was RESOURCE_EXHAUSTED on every reconnect, nothing after it sent
        (first, _) = r.store.directives_after("edge-a", 0)
        assert first.result == "failed" and "storage.max_message_bytes = 2097152" in first.error
        reader.close()
        reader = StreamReader(r.coord, "edge-a")  # an edge that reconnects from before it: passed over again
        assert reader.next().sequence == 2
    finally:
        if reader is not None:
            reader.close()
        r.stop()
