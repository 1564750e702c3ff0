"""An edge node's data path against a real coordinator: recording, upload, labels, outage, directives."""
from __future__ import annotations

import hashlib
import time

import grpc
import pytest
from nodekit import MODEL, Edge, edge_config, label, start_cloud, stored_sample_ids, wait_for

from edgeloop.protocol import mesh_pb2, mesh_pb2_grpc
from edgeloop.serving.demo_models import build_mlp


def test_served_requests_reach_the_coordinator_once(tmp_path, closing):
    cloud = start_cloud(tmp_path)
    closing(cloud)
    edge = Edge(edge_config(tmp_path, "edge-a", cloud.address))
    closing(edge)
    given = [edge.infer(i, request_id=f"req-{i}").id for i in range(50)]
    generated = [edge.infer(100 + i).id for i in range(50)]
    assert given == [f"req-{i}" for i in range(50)]
    assert all(g.startswith("edge-a-") for g in generated) and len(set(generated)) == 50
    want = set(given) | set(generated)
    assert wait_for(lambda: set(stored_sample_ids(cloud.config.database)) == want)
    ids = stored_sample_ids(cloud.config.database)
    assert len(ids) == len(set(ids)) == 100
    assert wait_for(lambda: edge.node.outbox.pending(SAMPLES_KIND) == 0)
    payload = cloud.store.sample_payload(MODEL, "req-3")
    sample = mesh_pb2.Sample.FromString(payload)
    assert sample.model_version == 1 and sample.inputs[0].name == "INPUT0" and len(sample.inputs[0].data) == 128
    assert sample.outputs[0].name == "OUTPUT0" and len(sample.outputs[0].data) == 16


SAMPLES_KIND = "samples"


def test_sample_rate_zero_records_nothing_and_half_records_about_half(tmp_path, closing):
    cloud = start_cloud(tmp_path)
    closing(cloud)
    off = Edge(edge_config(tmp_path, "edge-off", cloud.address, sample_rate=0.0))
    closing(off)
    half = Edge(edge_config(tmp_path, "edge-half", cloud.address, sample_rate=0.5))
    closing(half)
    for i in range(200):
        off.infer(i, request_id=f"off-{i}")
        half.infer(i, request_id=f"half-{i}")
    assert wait_for(lambda: half.node.outbox.snapshot()["committed"] > 0 and half.node.outbox.pending("samples") == 0)
    assert off.node.outbox.snapshot()["committed"] == 0
    n = half.node.outbox.snapshot()["committed"]
    assert 60 <= n <= 140  # deterministic hash sampling at 0.5 of 200 ids
    from edgeloop.node.recorder import sampled
    assert n == sum(sampled(f"half-{i}", 0.5) for i in range(200))


def test_outbox_holds_while_the_coordinator_is_down_and_drains_when_back(tmp_path, closing):
    cloud = start_cloud(tmp_path)
    port = cloud.grpc_port
    cloud.stop(1.0)  # down before the edge ever reaches it
    edge = Edge(edge_config(tmp_path, "edge-a", f"127.0.0.1:{port}"))
    closing(edge)
    t0 = time.monotonic()
    for i in range(300):
        edge.infer(i, request_id=f"r{i}")
    serve_s = time.monotonic() - t0
    assert wait_for(lambda: edge.node.outbox.snapshot()["committed"] == 300)
    time.sleep(1.0)
    assert edge.node.outbox.pending("samples") == 300  # held
    assert edge.node.uploader.failures >= 2  # retried with backoff, not once
    assert edge.node.uploader.backoff.failures >= 2
    assert serve_s < 60
    cloud = start_cloud(tmp_path, port=port)  # same files, same port
    closing(cloud)
    assert wait_for(lambda: edge.node.outbox.pending("samples") == 0, timeout=30)
    ids = stored_sample_ids(cloud.config.database)
    assert sorted(ids) == sorted(f"r{i}" for i in range(300))


def test_labels_by_id_and_by_key_are_durable_then_joined(tmp_path, closing):
    cloud = start_cloud(tmp_path)
    closing(cloud)
    edge = Edge(edge_config(tmp_path, "edge-a", cloud.address))
    closing(edge)
    # label before its sample exists anywhere
    ack = edge.feedback.Label(mesh_pb2.LabelRequest(labels=[label("early", 2.0)]), timeout=10)
    assert ack.accepted == 1
    assert edge.node.outbox.snapshot()["labels_committed"] == 1  # durable before the ack
    edge.infer(1, request_id="early")
    ts_before = int(time.time() * 1000)
    edge.infer(2, request_id="keyed", key="user-7")
    time.sleep(0.01)
    ts = int(time.time() * 1000)
    edge.feedback.Label(mesh_pb2.LabelRequest(labels=[label(key="user-7", ts=ts, value=3.0)]), timeout=10)
    assert wait_for(lambda: cloud.store.label_of("early", MODEL) is not None
                    and cloud.store.label_of("keyed", MODEL) is not None)
    assert cloud.store.label_of("early", MODEL)[0] == 2.0
    assert cloud.store.label_of("keyed", MODEL)[0] == 3.0
    assert ts_before > 0


@pytest.mark.parametrize("bad,field", [
    (mesh_pb2.Label(value=1.0, model=MODEL), "labels[0]"),
    (mesh_pb2.Label(sample_id="x", value=float("nan")), "labels[0].value"),
    (mesh_pb2.Label(sample_id="x" * 300, value=1.0), "labels[0].sample_id"),
    (mesh_pb2.Label(sample_id="x", model="../etc", value=1.0), "labels[0].model"),
])
def test_bad_labels_are_refused_naming_the_field(tmp_path, closing, bad, field):
    edge = Edge(edge_config(tmp_path, "edge-a", None, sample_rate=1.0))
    closing(edge)
    with pytest.raises(grpc.RpcError) as info:
        edge.feedback.Label(mesh_pb2.LabelRequest(labels=[bad]), timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in info.value.details()
    assert edge.node.outbox.pending("labels") == 0


def test_feedback_needs_the_fleet_token_when_one_is_configured(tmp_path, closing):
    from dataclasses import replace

    from edgeloop.config import AuthConfig
    from edgeloop.protocol.auth import open_channel

    token_file = tmp_path / "token"
    token_file.write_text("a-fleet-token-of-enough-length\n")
    config = edge_config(tmp_path, "edge-a", None, sample_rate=1.0)
    edge = Edge(replace(config, auth=AuthConfig(token_file=token_file)))
    closing(edge)
    with pytest.raises(grpc.RpcError) as info:
        edge.feedback.Label(mesh_pb2.LabelRequest(labels=[label("a")]), timeout=10)
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    channel = open_channel(f"127.0.0.1:{edge.node.grpc_port}", None, "a-fleet-token-of-enough-length")
    closing(channel)
    assert mesh_pb2_grpc.FeedbackStub(channel).Label(mesh_pb2.LabelRequest(labels=[label("a")]), timeout=10).accepted == 1


def test_full_outbox_drops_are_counted_and_exported_and_serving_goes_on(tmp_path, closing):
    edge = Edge(edge_config(tmp_path, "edge-a", None, sample_rate=1.0, outbox_max_rows=5))
    closing(edge)
    for i in range(20):
        assert edge.infer(i).outputs  # every request is answered
    assert wait_for(lambda: edge.node.outbox.dropped_total == 15)
    from prometheus_client import generate_latest

    text = generate_latest(edge.node.metrics.registry).decode()
    assert 'edgeloop_samples_dropped_total{model="mlp",reason="outbox_full"} 15.0' in text
    assert "edgeloop_outbox_pending_rows 5.0" in text


def test_pushed_model_reaches_the_edge_through_a_directive(tmp_path, closing):
    from edgeloop.coordinator.fleet_client import push_model

    cloud = start_cloud(tmp_path)
    closing(cloud)
    edge = Edge(edge_config(tmp_path, "edge-a", cloud.address))
    closing(edge)
    assert wait_for(lambda: edge.node.link.connected)
    model_file = tmp_path / "v2.onnx"
    data = build_mlp(seed=7).SerializeToString()
    model_file.write_bytes(data)
    channel = grpc.insecure_channel(cloud.address)
    closing(channel)
    pushed = push_model(channel, model_file, MODEL, version=2)
    assert pushed.version == 2 and pushed.sha256 == hashlib.sha256(data).hexdigest()
    assert wait_for(lambda: edge.node.models.ready_models().get(MODEL) == [1, 2])  # v1 kept loaded for rollback
    assert wait_for(lambda: edge.node.link.applied and edge.node.link.applied[-1][1])
    assert (tmp_path / "edge-a-models" / MODEL / "2" / "model.onnx").read_bytes() == data
    assert edge.infer(5).model_version == "2"


def test_coordinator_restart_in_the_middle_of_a_directive_resumes_the_fetch(tmp_path, closing):
    from edgeloop.coordinator.fleet_client import push_model

    chunk = 16 << 10
    cloud = start_cloud(tmp_path, fetch_chunk_bytes=chunk)
    port = cloud.grpc_port
    edge = Edge(edge_config(tmp_path, "edge-a", cloud.address))
    closing(edge)
    assert wait_for(lambda: edge.node.link.connected)
    data = build_mlp(hidden=100_000, seed=3).SerializeToString()  # ~14 MB: hundreds of chunks
    model_file = tmp_path / "big.onnx"
    model_file.write_bytes(data)
    channel = grpc.insecure_channel(cloud.address)
    push_model(channel, model_file, MODEL, version=2)
    channel.close()
    part = edge.node.link.downloads / f"{hashlib.sha256(data).hexdigest()}.part"
    assert wait_for(lambda: part.exists() and part.stat().st_size > 0, timeout=30, step=0.002)
    cloud.stop(0)  # in the middle of the fetch
    cut = part.stat().st_size if part.exists() else None
    assert cut is not None and 0 < cut < len(data), "the fetch was not interrupted"
    assert MODEL in edge.node.models.ready_models() and edge.node.models.ready_models()[MODEL] == [1]
    assert edge.infer(1).model_version == "1"  # serving goes on meanwhile
    time.sleep(0.5)
    cloud = start_cloud(tmp_path, port=port, fetch_chunk_bytes=chunk)  # same files, same port
    closing(cloud)
    assert wait_for(lambda: edge.node.models.ready_models().get(MODEL) == [1, 2], timeout=60)  # v1 kept loaded
    assert wait_for(lambda: cloud.store.directive_sequence("edge-a") >= 1 and any(
        e for e in edge.node.link.applied if e[1]))
    # resumed: the restarted coordinator sent only what was missing
    from prometheus_client import generate_latest

    text = generate_latest(cloud.metrics.registry).decode()
    sent = [float(line.split()[-1]) for line in text.splitlines() if line.startswith("edgeloop_coordinator_artifact_bytes_sent_total")
            and not line.startswith("#") and "_created" not in line]
    assert sent and sent[0] <= len(data) - cut + chunk
    assert edge.node.link.last_applied == int(edge.node.outbox.get_meta("directive.last_applied"))


def test_status_reports_carry_outbox_and_serving_figures(tmp_path, closing):
    cloud = start_cloud(tmp_path)
    closing(cloud)
    edge = Edge(edge_config(tmp_path, "edge-a", cloud.address))
    closing(edge)
    for i in range(20):
        edge.infer(i)
    assert wait_for(lambda: edge.node.outbox.snapshot()["committed"] == 20)
    report, _commit = edge.node.link.status_report()
    assert report.node_id == "edge-a" and [(m.model, m.version, m.state) for m in report.models] == [(MODEL, 1, "READY")]
    serving = {(s.model, s.version): s for s in report.serving}[(MODEL, 1)]
    assert serving.requests == 20 and serving.samples_recorded == 20 and serving.latency_p99_ms >= serving.latency_p50_ms > 0
    assert report.outbox_dropped == 0
    from edgeloop.coordinator.fleet_client import fleet_status

    channel = grpc.insecure_channel(cloud.address)
    closing(channel)
    assert wait_for(lambda: {n["node_id"]: n for n in fleet_status(channel)["nodes"]}.get("edge-a", {}).get(
        "samples_received") == 20)
    assert wait_for(lambda: fleet_status(channel)["nodes"][0]["requests"] == 20)


def test_edges_carry_the_fleet_token_and_an_edge_without_it_holds_its_samples(tmp_path, closing):
    from dataclasses import replace

    from edgeloop.config import AuthConfig

    token = "fleet-token-for-the-data-path-test"
    token_file = tmp_path / "token"
    token_file.write_text(token)
    cloud = start_cloud(tmp_path, token=token)
    closing(cloud)
    good = Edge(replace(edge_config(tmp_path, "edge-good", cloud.address), auth=AuthConfig(token_file=token_file)))
    closing(good)
    bad = Edge(edge_config(tmp_path, "edge-bad", cloud.address))
    closing(bad)
    for i in range(10):
        good.infer(i, request_id=f"good-{i}")
        bad.infer(i, request_id=f"bad-{i}")
    assert wait_for(lambda: sorted(stored_sample_ids(cloud.config.database)) == sorted(f"good-{i}" for i in range(10)))
    assert wait_for(lambda: bad.node.uploader.failures >= 2)
    assert "UNAUTHENTICATED" in bad.node.uploader.last_error
    assert bad.node.outbox.pending("samples") == 10  # held, not dropped
    assert not bad.node.link.joined.is_set()


def test_rollback_report_now_unload_and_a_failing_directive_are_applied_and_reported(tmp_path, closing):
    from edgeloop.coordinator.fleet_client import push_model

    cloud = start_cloud(tmp_path)
    closing(cloud)
    edge = Edge(edge_config(tmp_path, "edge-a", cloud.address))
    closing(edge)
    assert wait_for(lambda: edge.node.link.connected)
    model_file = tmp_path / "v2.onnx"
    model_file.write_bytes(build_mlp(seed=5).SerializeToString())
    channel = grpc.insecure_channel(cloud.address)
    closing(channel)
    push_model(channel, model_file, MODEL, version=2)
    assert wait_for(lambda: edge.node.models.ready_models().get(MODEL) == [1, 2])  # v1 kept loaded for rollback

    def issue(kind, message, model=MODEL, version=0):
        record = cloud.store.add_directive("edge-a", kind, message.SerializeToString(), int(time.time() * 1000),
                                           model, version)
        cloud.hub.notify()
        return record.sequence

    def result(seq):
        return next((r.result, r.error) for r in cloud.store.directives_after("edge-a", seq - 1) if r.sequence == seq)

    seq = issue("rollback", mesh_pb2.RollbackModel(model=MODEL, to_version=1), version=1)
    assert wait_for(lambda: edge.node.models.ready_models().get(MODEL) == [1])
    assert wait_for(lambda: result(seq)[0] == "applied")
    assert edge.infer(1).model_version == "1"
    sent = edge.node.link.reports_sent
    seq = issue("report", mesh_pb2.ReportNow())
    assert wait_for(lambda: edge.node.link.reports_sent > sent and edge.node.link.last_applied == seq)
    seq = issue("rollback", mesh_pb2.RollbackModel(model=MODEL, to_version=9), version=9)
    assert wait_for(lambda: result(seq)[0] is not None)
    outcome, error = result(seq)
    assert outcome == "failed" and "version 9" in error and "not on disk" in error
    assert edge.node.models.ready_models().get(MODEL) == [1]  # a failed directive leaves serving as it was
    seq = issue("unload", mesh_pb2.UnloadModel(model=MODEL, version=0))
    assert wait_for(lambda: MODEL not in edge.node.models.ready_models())
    assert wait_for(lambda: result(seq)[0] == "applied")
    assert int(edge.node.outbox.get_meta("directive.last_applied")) == seq


def test_a_rollback_survives_an_edge_restart(tmp_path, closing):
    from edgeloop.coordinator.fleet_client import push_model

    cloud = start_cloud(tmp_path)
    closing(cloud)
    config = edge_config(tmp_path, "edge-a", cloud.address)
    edge = Edge(config)
    assert wait_for(lambda: edge.node.link.connected)
    model_file = tmp_path / "v2.onnx"
    model_file.write_bytes(build_mlp(seed=5).SerializeToString())
    channel = grpc.insecure_channel(cloud.address)
    closing(channel)
    push_model(channel, model_file, MODEL, version=2)
    assert wait_for(lambda: edge.node.models.ready_models().get(MODEL) == [1, 2])  # v1 kept loaded for rollback
    cloud.store.add_directive("edge-a", "rollback", mesh_pb2.RollbackModel(model=MODEL, to_version=1)
                              .SerializeToString(), int(time.time() * 1000), MODEL, 1)
    cloud.hub.notify()
    assert wait_for(lambda: edge.node.models.ready_models().get(MODEL) == [1])
    edge.close()
    edge = Edge(config)  # the same outbox and repository
    closing(edge)
    assert edge.node.models.ready_models().get(MODEL) == [1]  # pinned before the repository loaded
    assert edge.infer(1).model_version == "1"
