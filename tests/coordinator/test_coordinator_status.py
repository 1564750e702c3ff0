"""Status reports, the fleet view, metrics, health and reflection of a real coordinator."""
import math
import urllib.request

import grpc
import pytest

from coordkit import join, sample_batch
from edgeloop.protocol import mesh_pb2


def report(node="edge-a", psi=0.3, **kw):
    return mesh_pb2.StatusReport(
        node_id=node, epoch=3, queue_depth=2, outbox_pending=17, outbox_dropped=4, last_directive_applied=0,
        models=[mesh_pb2.ModelVersion(model="m", version=1, state="READY")],
        serving=[mesh_pb2.ModelServingStats(model="m", version=1, requests=120, latency_p50_ms=1.5,
                                            latency_p99_ms=9.0)],
        feature_stats=[mesh_pb2.FeatureStats(model="m", model_version=1, tensor="input", feature=f,
                                             bin_edges=[0.0, 1.0, 2.0], counts=[3, 4], n=7, mean=1.0, m2=2.0,
                                             psi=psi if f == 1 else math.nan) for f in range(3)], **kw)


def test_status_reports_feed_the_fleet_view(running):
    join(running.coord, "edge-a")
    ack = running.coord.ReportStatus(report(), timeout=10)
    assert ack.fleet_epoch >= 1
    running.coord.UploadSamples(iter([sample_batch("b1", ["a", "b"])]), timeout=10)
    (node,) = running.fleet.FleetStatus(mesh_pb2.FleetStatusRequest(), timeout=10).nodes
    assert (node.requests, node.outbox_pending, node.outbox_dropped, node.samples_received) == (120, 17, 4, 2)
    assert node.max_psi == pytest.approx(0.3) and [(m.model, m.version) for m in node.models] == [("m", 1)]
    assert node.last_seen_ms > 0
    merged = running.store.feature_stats("m")
    assert len(merged) == 3 and merged[0].counts == (3, 4)
    running.coord.ReportStatus(report(node="edge-b", psi=math.nan), timeout=10)
    nodes = {n.node_id: n for n in running.fleet.FleetStatus(mesh_pb2.FleetStatusRequest(), timeout=10).nodes}
    assert math.isnan(nodes["edge-b"].max_psi)
    assert running.store.feature_stats("m")[0].counts == (6, 8)


@pytest.mark.parametrize("mutate, field", [
    (lambda r: setattr(r, "node_id", ""), "node_id"),
    (lambda r: r.feature_stats[0].counts.append(1), "feature_stats[0].counts"),
    (lambda r: r.feature_stats[1].bin_edges.__setitem__(1, 5.0), "feature_stats[1].bin_edges"),
    (lambda r: setattr(r.feature_stats[2], "m2", -1.0), "feature_stats[2].m2"),
    (lambda r: setattr(r.serving[0], "latency_p99_ms", float("inf")), "serving[0].latency_p99_ms"),
    (lambda r: setattr(r.models[0], "state", "DANCING"), "models[0].state"),
])
def test_bad_status_reports_name_the_field(running, mutate, field):
    r = report()
    mutate(r)
    with pytest.raises(grpc.RpcError) as err:
        running.coord.ReportStatus(r, timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and err.value.details().startswith(field)


def test_bad_join_and_directive_requests(running):
    for request, field in (
            (mesh_pb2.JoinRequest(node=mesh_pb2.NodeIdentity(node_id="a/b")), "node.node_id"),
            (mesh_pb2.JoinRequest(node=mesh_pb2.NodeIdentity(node_id="e", host="h o s t")), "node.host"),
            (mesh_pb2.JoinRequest(node=mesh_pb2.NodeIdentity(node_id="e"),
                                  models=[mesh_pb2.ModelVersion(model="m", version=-1)]), "models[0].version")):
        with pytest.raises(grpc.RpcError) as err:
            running.coord.Join(request, timeout=10)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and err.value.details().startswith(field)
    with pytest.raises(grpc.RpcError) as err:
        running.coord.ReportDirective(mesh_pb2.DirectiveResult(node_id="e", sequence=0), timeout=10)
    assert "sequence" in err.value.details()


def test_metrics_health_and_reflection(running):
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

    join(running.coord, "edge-a")
    running.coord.UploadSamples(iter([sample_batch("b1", ["a", "b", "c"])]), timeout=10)
    running.coord.UploadSamples(iter([sample_batch("b1", ["a", "b", "c"])]), timeout=10)
    text = urllib.request.urlopen(f"http://127.0.0.1:{running.coordinator.metrics_port}/metrics", timeout=10).read()
    text = text.decode()
    assert "edgeloop_coordinator_samples_ingested_total 3.0" in text
    assert 'edgeloop_coordinator_duplicate_batches_total{kind="samples"} 1.0' in text
    assert "edgeloop_coordinator_connected_edges" in text
    health = health_pb2_grpc.HealthStub(running.channel)
    for service in ("", "edgeloop.v1.Coordinator", "edgeloop.v1.Fleet"):
        assert health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10).status == \
            health_pb2.HealthCheckResponse.SERVING
    services = set(ProtoReflectionDescriptorDatabase(running.channel).get_services())
    assert {"edgeloop.v1.Coordinator", "edgeloop.v1.Fleet", "grpc.health.v1.Health"} <= services
