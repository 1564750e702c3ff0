"""Sample and label ingest through the real gRPC path: idempotent batches, joins in any order, bad input."""
import time

import grpc
import pytest

from coordkit import join, sample, sample_batch
from edgeloop.protocol import mesh_pb2


def test_samples_are_stored_once_and_resent_batches_are_duplicates(running):
    join(running.coord)
    ack = running.coord.UploadSamples(iter([sample_batch("b1", ["s1", "s2"]), sample_batch("b2", ["s3"])]), timeout=10)
    assert list(ack.accepted_batch_ids) == ["b1", "b2"] and ack.rows_stored == 3
    again = running.coord.UploadSamples(iter([sample_batch("b2", ["s3"]), sample_batch("b3", ["s3", "s4"])]),
                                        timeout=10)
    assert list(again.duplicate_batch_ids) == ["b2"] and list(again.accepted_batch_ids) == ["b3"]
    assert again.rows_stored == 1  # s3 was stored already under b2; only s4 is new
    status = running.fleet.FleetStatus(mesh_pb2.FleetStatusRequest(), timeout=10)
    (node,) = status.nodes
    assert node.node_id == "edge-a" and node.samples_received == 4
    assert sorted(i for _, i in running.store.sample_ids("edge-a")) == ["s1", "s2", "s3", "s4"]
    stored = mesh_pb2.Sample.FromString(running.store.sample_payload("m", "s2"))
    assert stored == sample("s2", ts=stored.timestamp_ms)
    assert running.coordinator.metrics.duplicate_batches.labels("samples")._value.get() == 1


def test_label_before_sample_late_and_duplicate_labels(running):
    t0 = int(time.time() * 1000)
    labels = mesh_pb2.LabelBatch(batch_id="l1", node_id="edge-a", labels=[
        mesh_pb2.Label(sample_id="s1", model="m", value=1.0, received_ms=t0),          # before its sample
        mesh_pb2.Label(sample_id="s2", value=0.0, received_ms=t0),                     # model unknown yet
        mesh_pb2.Label(model="m", routing_key="user-7", timestamp_ms=t0 + 50, value=3.0, received_ms=t0)])
    assert running.coord.UploadLabels(iter([labels]), timeout=10).rows_stored == 3
    counts = {m.model: m for m in running.fleet.FleetStatus(mesh_pb2.FleetStatusRequest(), timeout=10).models}
    assert counts["m"].labelled == 0 and counts["m"].unjoined_labels >= 1
    running.coord.UploadSamples(iter([
        mesh_pb2.SampleBatch(batch_id="b1", node_id="edge-a", samples=[
            sample("s1", ts=t0), sample("s2", ts=t0), sample("s3", key="user-7", ts=t0 + 10),
            sample("s4", key="user-7", ts=t0 + 100)])]), timeout=10)
    assert running.store.label_of("s1", "m") == (1.0, 1)
    assert running.store.label_of("s2", "m") == (0.0, 1)
    assert running.store.label_of("s3", "m") == (3.0, 1)   # latest of that key at or before the label's time
    assert running.store.label_of("s4", "m") is None
    # a duplicate label: the later received_ms wins, whatever the arrival order; each write is counted
    running.coord.UploadLabels(iter([mesh_pb2.LabelBatch(batch_id="l2", node_id="edge-a", labels=[
        mesh_pb2.Label(sample_id="s1", model="m", value=5.0, received_ms=t0 + 1000)])]), timeout=10)
    running.coord.UploadLabels(iter([mesh_pb2.LabelBatch(batch_id="l3", node_id="edge-a", labels=[
        mesh_pb2.Label(sample_id="s1", model="m", value=9.0, received_ms=t0 + 500)])]), timeout=10)
    assert running.store.label_of("s1", "m") == (5.0, 3)
    (m,) = running.fleet.FleetStatus(mesh_pb2.FleetStatusRequest(), timeout=10).models
    assert (m.samples, m.labelled, m.labels, m.unjoined_labels) == (4, 3, 3, 0)
    assert running.store.events("labels_overwritten")


def test_bad_fields_are_refused_naming_the_field_and_nothing_of_the_batch_is_stored(running):
    bad = sample_batch("b1", ["ok-1", "ok-2"])
    bad.samples[1].inputs[0].data = b"\x00" * 7
    with pytest.raises(grpc.RpcError) as err:
        running.coord.UploadSamples(iter([bad]), timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "samples[1].inputs[0].data" in err.value.details() and "128 bytes" in err.value.details()
    assert running.store.sample_ids() == []
    for mutate, field in ((lambda b: setattr(b, "node_id", "../etc"), "node_id"),
                          (lambda b: setattr(b, "batch_id", ""), "batch_id"),
                          (lambda b: setattr(b.samples[0], "model", "a b"), "samples[0].model"),
                          (lambda b: setattr(b.samples[0], "sample_id", "x" * 300), "samples[0].sample_id"),
                          (lambda b: setattr(b.samples[0], "timestamp_ms", 0), "samples[0].timestamp_ms"),
                          (lambda b: setattr(b.samples[0].inputs[0], "datatype", "FP99"), "samples[0].inputs[0].datatype")):
        batch = sample_batch("b2", ["x1"])
        mutate(batch)
        with pytest.raises(grpc.RpcError) as err:
            running.coord.UploadSamples(iter([batch]), timeout=10)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and field in err.value.details(), field
    # the batch ids of refused batches were not consumed: the corrected batch is accepted
    assert list(running.coord.UploadSamples(iter([sample_batch("b2", ["x1"])]), timeout=10).accepted_batch_ids) == ["b2"]


def test_an_invalid_batch_later_in_a_stream_is_not_acknowledged(running):
    bad = sample_batch("b2", ["y1"])
    bad.samples[0].model = ""
    with pytest.raises(grpc.RpcError) as err:
        running.coord.UploadSamples(iter([sample_batch("b1", ["x1"]), bad]), timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [i for _, i in running.store.sample_ids()] == ["x1"]  # b1 committed (unacknowledged), b2 nothing
    ack = running.coord.UploadSamples(iter([sample_batch("b1", ["x1"]), sample_batch("b2", ["y1"])]), timeout=10)
    assert list(ack.duplicate_batch_ids) == ["b1"] and list(ack.accepted_batch_ids) == ["b2"]


def test_a_corrupt_message_in_the_stream_commits_nothing_of_it(running):
    raw = sample_batch("b9", ["z1", "z2"]).SerializeToString()
    channel = running.channel
    call = channel.stream_unary("/edgeloop.v1.Coordinator/UploadSamples",
                                request_serializer=lambda b: b, response_deserializer=mesh_pb2.UploadAck.FromString)
    with pytest.raises(grpc.RpcError) as err:
        call(iter([sample_batch("b8", ["z0"]).SerializeToString(), raw[: len(raw) // 2]]), timeout=10)
    assert err.value.code() != grpc.StatusCode.OK
    assert [i for _, i in running.store.sample_ids()] in (["z0"], [])
    assert "z1" not in {i for _, i in running.store.sample_ids()}


def test_a_stream_cancelled_midway_is_not_acknowledged_and_resending_is_safe(running):
    import threading

    gate = threading.Event()

    def slow():
        yield sample_batch("c1", ["c-1"])
        gate.wait(5)

    future = running.coord.UploadSamples.future(slow(), timeout=30)
    time.sleep(0.5)  # the first batch reaches the coordinator, which waits for more of the stream's batches
    future.cancel()
    gate.set()
    with pytest.raises(grpc.FutureCancelledError):
        future.result()
    # a batch validated before the break still commits (unacknowledged); on a slow machine it may not
    # have arrived before the cancel — either way the re-send stores it exactly once
    deadline = time.monotonic() + 3
    while not running.store.sample_ids() and time.monotonic() < deadline:
        time.sleep(0.02)
    committed = bool(running.store.sample_ids())
    ack = running.coord.UploadSamples(iter([sample_batch("c1", ["c-1"])]), timeout=10)
    assert list(ack.duplicate_batch_ids if committed else ack.accepted_batch_ids) == ["c1"]
    assert [i for _, i in running.store.sample_ids()] == ["c-1"]


def test_bad_label_fields_are_refused(running):
    now = int(time.time() * 1000)
    for label, field in ((mesh_pb2.Label(value=1.0), "labels[0]"),
                         (mesh_pb2.Label(sample_id="s 1", value=1.0), "labels[0].sample_id"),
                         (mesh_pb2.Label(sample_id="s1", value=float("nan")), "labels[0].value"),
                         (mesh_pb2.Label(model="m", routing_key="k", value=1.0), "labels[0].timestamp_ms"),
                         (mesh_pb2.Label(sample_id="s1", value=1.0, received_ms=now + 10 * 86_400_000),
                          "labels[0].received_ms")):
        with pytest.raises(grpc.RpcError) as err:
            running.coord.UploadLabels(iter([mesh_pb2.LabelBatch(batch_id="l", node_id="e", labels=[label])]),
                                       timeout=10)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and err.value.details().startswith(field), field
    with pytest.raises(grpc.RpcError) as err:  # imported labels belong to no edge
        running.fleet.ImportLabels(iter([mesh_pb2.LabelBatch(batch_id="l", node_id="e", labels=[
            mesh_pb2.Label(sample_id="s1", value=1.0)])]), timeout=10)
    assert err.value.details().startswith("node_id")


def test_batches_over_the_row_limit_are_refused(tmp_path):
    from coordkit import Running, cloud_config

    r = Running(cloud_config(tmp_path, max_batch_rows=2))
    try:
        with pytest.raises(grpc.RpcError) as err:
            r.coord.UploadSamples(iter([sample_batch("b1", ["a", "b", "c"])]), timeout=10)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and err.value.details().startswith("samples:")
        assert r.coord.UploadSamples(iter([sample_batch("b1", ["a", "b"])]), timeout=10).rows_stored == 2
    finally:
        r.stop()
