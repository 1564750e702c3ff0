"""The edge's coordinator link under odd states and odd coordinators: reports that cannot be built, a
coordinator database that was replaced, and directives this edge cannot or must not apply."""
from __future__ import annotations

import logging

from nodekit import Edge, edge_config, start_cloud, wait_for


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
    stats = edge.node.edge_stats
    real_report, failures = stats.report, []

    def broken_report():
        if len(failures) < 3:
            failures.append(1)
            raise ValueError("Value out of range: -2")
        return real_report()

    stats.report = broken_report
    caplog.set_level(logging.INFO, logger="edgeloop.node.coordinator")
    link.interval_s = 0.05
    sent = link.reports_sent
    assert wait_for(lambda: len(failures) == 3 and link.reports_sent >= sent + 2, timeout=20)
    failed_lines = [r for r in caplog.records if "status report failed" in r.getMessage()]
    assert len(failed_lines) == 1 and "Value out of range" in failed_lines[0].getMessage()
    assert any("built again" in r.getMessage() for r in caplog.records)
    assert link.reports_failed == 3 and all(t.is_alive() for t in link._threads)
