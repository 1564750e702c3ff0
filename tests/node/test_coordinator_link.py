"""The edge's coordinator link under odd states and odd coordinators: reports that cannot be built, a
coordinator database that was replaced, and directives this edge cannot or must not apply."""
from __future__ import annotations

import logging
import time

import pytest
from nodekit import Edge, edge_config, start_cloud, wait_for

from edgeloop.node.coordinator_link import DirectiveFailed
from edgeloop.protocol import mesh_pb2


def test_a_negative_counter_is_clamped_and_a_report_that_fails_is_logged_once_and_the_next_goes_out(
        tmp_path, closing, caplog):
    cloud = start_cloud(tmp_path)
    closing(cloud)
    edge = Edge(edge_config(tmp_path, "edge-a", cloud.address))
    closing(edge)
    link = edge.node.link
    assert wait_for(lambda: link.reports_sent >= 1)
    # a pending count below zero (the outbox's ack overtook its writer's bookkeeping) once raised
    # "ValueError: Value out of range: -2" in StatusReport(...)
    with edge.node.outbox._lock:
        edge.node.outbox.pending_rows -= 2
    try:
        report, _commit = link.status_report()
        assert report.outbox_pending == 0
    finally:
        with edge.node.outbox._lock:
            edge.node.outbox.pending_rows += 2
    caplog.set_level(logging.INFO, logger="edgeloop.node.coordinator")
    link.interval_s = 0.05

    def failing(real, times):
        calls = []

        def wrapper(*args):
            if len(calls) < times:
                calls.append(1)
                raise ValueError("Value out of range: -2")
            return real(*args)
        return wrapper, calls

    # the feature statistics cannot be built: the report still goes out without them, logged once
    stats = edge.node.edge_stats
    stats.report, calls = failing(stats.report, 3)
    sent = link.reports_sent
    assert wait_for(lambda: len(calls) == 3 and link.reports_sent >= sent + 4, timeout=20)
    # nothing of the report can be built: none goes out then, the next ones do, logged once
    link.model_versions, calls2 = failing(link.model_versions, 3)
    assert wait_for(lambda: len(calls2) == 3, timeout=20)
    sent = link.reports_sent
    assert wait_for(lambda: link.reports_sent >= sent + 2, timeout=20)
    failed_lines = [r for r in caplog.records if "status report failed" in r.getMessage()]
    assert len(failed_lines) == 2, [r.getMessage() for r in failed_lines]
    assert "left out" in failed_lines[0].getMessage() and "not sent" in failed_lines[1].getMessage()
    assert failed_lines[0].exc_info and "Value out of range" in failed_lines[0].getMessage()
    assert any("whole again" in r.getMessage() for r in caplog.records)
    assert link.reports_failed == 6 and all(t.is_alive() for t in link._threads)


def _issue(cloud, node: str, kind: str, message, model: str = "", version: int = 0) -> int:
    record = cloud.store.add_directive(node, kind, message.SerializeToString(), int(time.time() * 1000), model,
                                       version)
    cloud.hub.notify()
    return record.sequence


def _result(cloud, node: str, seq: int):
    return next((r.result, r.error) for r in cloud.store.directives_after(node, seq - 1) if r.sequence == seq)


def test_a_coordinator_on_a_fresh_database_resets_the_edges_directive_cursor(tmp_path, closing, caplog):
    caplog.set_level(logging.INFO, logger="edgeloop.node.coordinator")
    old = start_cloud(tmp_path / "old")
    closing(old)
    port = old.grpc_port
    edge = Edge(edge_config(tmp_path, "edge-a", old.address))
    closing(edge)
    link = edge.node.link
    assert wait_for(lambda: link.connected)
    for _ in range(3):
        last = _issue(old, "edge-a", "report", mesh_pb2.ReportNow())
    assert wait_for(lambda: link.last_applied == last == 3)
    old_id = old.store.database_id()
    old.stop(0)
    new = start_cloud(tmp_path / "new", port=port)  # an empty database at the same address
    closing(new)
    assert new.store.database_id() != old_id
    assert wait_for(lambda: new.store.node_known("edge-a") and link.connected)
    seq = _issue(new, "edge-a", "report", mesh_pb2.ReportNow())
    assert seq == 1  # sequences restart: an edge still at cursor 3 would skip it
    assert wait_for(lambda: _result(new, "edge-a", seq)[0] == "applied")
    assert link.last_applied == 1 and link.database_resets == 1
    assert edge.node.outbox.get_meta("directive.last_applied") == "1"
    assert any("coordinator database changed" in r.getMessage() for r in caplog.records)
    # the same database again (a plain restart): same id, the cursor is kept
    new_id = new.store.database_id()
    new.stop(0)
    again = start_cloud(tmp_path / "new", port=port)
    closing(again)
    assert again.store.database_id() == new_id
    assert wait_for(lambda: link.connected and len(again.hub.connected()) == 1)
    seq = _issue(again, "edge-a", "report", mesh_pb2.ReportNow())
    assert seq == 2 and wait_for(lambda: _result(again, "edge-a", seq)[0] == "applied")
    assert link.last_applied == 2 and link.database_resets == 1


def test_a_directive_the_coordinator_then_refuses_is_reported_failed_and_later_directives_still_apply(
        tmp_path, closing):
    import numpy as np

    from edgeloop.federated.weights import theta_size, to_bytes

    cloud = start_cloud(tmp_path)
    closing(cloud)
    edge = Edge(edge_config(tmp_path, "edge-a", cloud.address))
    closing(edge)
    link = edge.node.link
    assert wait_for(lambda: link.connected)
    d, c = 4, 2
    # a round whose id the coordinator's own SubmitUpdate refuses (INVALID_ARGUMENT, every time): retrying it
    # after each re-join held back every later directive for good
    bad_round = mesh_pb2.FederatedRound(
        model="mlp", round_id="round id with spaces/..", phase=mesh_pb2.FederatedRound.EVALUATE, n_features=d,
        n_classes=c, classes=[0.0, 1.0], mean=to_bytes(np.zeros(d)), inv_std=to_bytes(np.ones(d)),
        theta=to_bytes(np.zeros(theta_size(d, c))), champion_theta=to_bytes(np.zeros(theta_size(d, c))),
        holdout_fraction=0.5, max_rows=100)
    first = _issue(cloud, "edge-a", "federated", bad_round, "mlp")
    after = _issue(cloud, "edge-a", "report", mesh_pb2.ReportNow())
    assert wait_for(lambda: _result(cloud, "edge-a", after)[0] == "applied", timeout=20)
    outcome, error = _result(cloud, "edge-a", first)
    assert outcome == "failed" and "INVALID_ARGUMENT" in error and "round_id" in error
    assert link.last_applied == after and edge.infer(1).outputs  # serving went on throughout
    # a kind of directive from a newer coordinator (an action field this edge's protocol lacks): failed, said why
    unknown = mesh_pb2.Directive.FromString(mesh_pb2.Directive(sequence=after + 1).SerializeToString()
                                            + b"\x3a\x02\x08\x01")  # field 7, 2 bytes: {1: 1}
    with pytest.raises(DirectiveFailed, match="no action this edge knows"):
        link.apply(unknown)


def test_a_directive_larger_than_the_edge_receives_is_reported_failed_and_passed_over(tmp_path, closing):
    cloud = start_cloud(tmp_path, max_message_bytes=80 << 20)  # the coordinator would send what the edge refuses
    closing(cloud)
    edge = Edge(edge_config(tmp_path, "edge-a", cloud.address))
    closing(edge)
    link = edge.node.link
    assert wait_for(lambda: link.connected)
    huge = mesh_pb2.FederatedRound(model="mlp", round_id="r1", theta=bytes(65 << 20))  # over the edge's 64 MiB
    first = _issue(cloud, "edge-a", "federated", huge, "mlp")
    del huge
    after = _issue(cloud, "edge-a", "report", mesh_pb2.ReportNow())
    assert wait_for(lambda: _result(cloud, "edge-a", after)[0] == "applied", timeout=30)
    outcome, error = _result(cloud, "edge-a", first)
    assert outcome == "failed" and "larger than this edge receives" in error
    assert link.last_applied == after


def test_peer_address_hints_that_are_not_host_port_are_ignored(tmp_path, closing):
    edge = Edge(edge_config(tmp_path, "edge-a", "127.0.0.1:9"))  # no coordinator there: serving goes on
    closing(edge)
    updater = edge.node.link.updater
    load = mesh_pb2.LoadModel(model="mlp", version=2, peer_addresses=[
        "127.0.0.1:5", "not an address", "x" * 5000 + ":1", "[::1]:70000", "127.0.0.1:5", "", "127.0.0.1:6"])
    assert [s.name for s in updater.sources(load)] == ["127.0.0.1:5", "127.0.0.1:6", "coordinator"]
    assert sorted(updater._pool()._stubs) == ["127.0.0.1:5", "127.0.0.1:6"]  # no channel to the rest
