"""Coordinator.EntityHistory: an entity's logged raw rows and labels, checked, bounded and authenticated."""
from __future__ import annotations

import struct

import grpc
import pytest
from coordkit import Running, cloud_config

from edgeloop.coordinator import entity_history
from edgeloop.protocol import mesh_pb2, mesh_pb2_grpc
from edgeloop.protocol import auth as fleet_auth


def raw_sample(sid: str, key: str, i: int, t: float, ts_ms: int):
    raw = [mesh_pb2.TensorData(name="a", datatype="FP32", shape=[1], data=struct.pack("<f", float(i))),
           mesh_pb2.TensorData(name="b", datatype="FP32", shape=[1], data=struct.pack("<f", -float(i)))]
    return mesh_pb2.Sample(sample_id=sid, model="fe", model_version=1, routing_key=key, timestamp_ms=ts_ms,
                           inputs=[mesh_pb2.TensorData(name="x", datatype="FP32", shape=[1, 3], data=b"\0" * 12)],
                           raw_inputs=raw, feature_time=t, feature_digest="0" * 64)


def upload(r: Running) -> None:
    samples = [raw_sample(f"s{i}", "k" if i % 3 else "j", i, 1000.5 + i, 2_000_000 + 10 * i) for i in range(12)]
    r.coord.UploadSamples(iter([mesh_pb2.SampleBatch(batch_id="b1", node_id="edge-a", samples=samples)]), timeout=10)
    labels = [mesh_pb2.Label(sample_id="s4", model="fe", value=1.0, received_ms=2_000_500),
              mesh_pb2.Label(sample_id="s1", model="fe", value=0.0, received_ms=2_000_600)]
    r.coord.UploadLabels(iter([mesh_pb2.LabelBatch(batch_id="l1", node_id="edge-a", labels=labels)]), timeout=10)


def test_history_is_the_newest_rows_in_order_with_feature_times_and_labels(tmp_path):
    r = Running(cloud_config(tmp_path))
    try:
        upload(r)
        reply = r.coord.EntityHistory(mesh_pb2.EntityHistoryRequest(node_id="edge-b", model="fe",
                                                                    keys=["k", "nobody"], limit=5), timeout=10)
        k, nobody = reply.entities
        assert k.key == "k" and nobody.key == "nobody" and not nobody.rows and not nobody.labels
        assert [row.sample_id for row in k.rows] == ["s5", "s7", "s8", "s10", "s11"]
        assert [row.feature_time for row in k.rows] == [1005.5, 1007.5, 1008.5, 1010.5, 1011.5]
        assert struct.unpack("<f", k.rows[0].raw_inputs[0].data) == (5.0,) and k.rows[0].served_ms == 2_000_050
        # labels are those of the newest labelled events (older than the rows sent), in arrival order
        assert [(x.sample_id, x.value, x.timestamp, x.received_ms) for x in k.labels] == [
            ("s4", 1.0, 1004.5, 2_000_500), ("s1", 0.0, 1001.5, 2_000_600)] and not k.truncated
        one = r.coord.EntityHistory(mesh_pb2.EntityHistoryRequest(model="fe", keys=["k"], limit=1), timeout=10)
        assert [x.sample_id for x in one.entities[0].rows] == ["s11"]
        assert [x.sample_id for x in one.entities[0].labels] == ["s4"]
        full = r.coord.EntityHistory(mesh_pb2.EntityHistoryRequest(model="fe", keys=["k"]), timeout=10).entities[0]
        assert len(full.rows) == 8
    finally:
        r.stop()


def test_a_reply_is_bounded_and_cut_short_says_so(tmp_path):
    r = Running(cloud_config(tmp_path))
    try:
        upload(r)
        one = entity_history.history_of(r.store, "fe", "k", 100, 200)  # room for a few rows only
        assert 0 < len(one.rows) < 8 and one.truncated
        assert [x.sample_id for x in one.rows] == ["s8", "s10", "s11"][-len(one.rows):]  # the newest are kept
    finally:
        r.stop()


@pytest.mark.parametrize("request_fields, field", [
    (dict(model="fe"), "keys"),
    (dict(model="fe", keys=["k"] * 65), "keys"),
    (dict(model="fe", keys=[""]), "keys[0]"),
    (dict(model="fe", keys=["x" * 257]), "keys[0]"),
    (dict(model="no such/model", keys=["k"]), "model"),
    (dict(model="fe", keys=["k"], limit=5000), "limit"),
    (dict(node_id="bad id!", model="fe", keys=["k"]), "node_id"),
])
def test_bad_requests_are_refused_naming_the_field(running, request_fields, field):
    with pytest.raises(grpc.RpcError) as err:
        running.coord.EntityHistory(mesh_pb2.EntityHistoryRequest(**request_fields), timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and err.value.details().startswith(field + ":")


def test_without_the_fleet_token_history_is_refused(tmp_path):
    r = Running(cloud_config(tmp_path), token="s3cret-token-for-tests", channel_token=None)
    try:
        with pytest.raises(grpc.RpcError) as err:
            r.coord.EntityHistory(mesh_pb2.EntityHistoryRequest(model="fe", keys=["k"]), timeout=10)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with fleet_auth.open_channel(r.coordinator.address, None, "s3cret-token-for-tests") as channel:
            ok = mesh_pb2_grpc.CoordinatorStub(channel).EntityHistory(
                mesh_pb2.EntityHistoryRequest(model="fe", keys=["k"]), timeout=10)
        assert ok.entities[0].key == "k"
    finally:
        r.stop()
