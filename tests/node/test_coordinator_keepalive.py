"""A coordinator that vanishes without closing its connections (a frozen process: SIGSTOP) is noticed
by the edge through HTTP/2 keepalive pings, and the edge reconnects once it answers again.

Without keepalive the edge's directive stream would wait on the silent connection for as long as TCP
keeps it open (minutes or more), and ``link.connected`` would stay True.
"""
from __future__ import annotations

import signal
import sys
import time
from pathlib import Path

import pytest
from nodekit import Edge, edge_config, wait_for

from edgeloop.config import ConfigError, parse_edge_config

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from fleet_harness import Fleet  # noqa: E402


def test_a_frozen_coordinator_is_noticed_and_the_edge_reconnects(tmp_path):
    fleet = Fleet(tmp_path)
    proc = fleet.start_cloud().popen
    edge = None
    try:
        edge = Edge(edge_config(tmp_path, "edge-a", fleet.cloud.address, keepalive_ms=1000))
        link = edge.node.link
        assert wait_for(lambda: link.connected, timeout=30), "the edge never connected"
        proc.send_signal(signal.SIGSTOP)  # alive, sockets open, silent
        frozen_at = time.monotonic()
        assert wait_for(lambda: not link.connected, timeout=20), "a silent coordinator was never noticed"
        noticed_s = time.monotonic() - frozen_at
        assert noticed_s < 15, noticed_s  # ping every 1 s, answer due within 1 s, plus scheduling slack
        proc.send_signal(signal.SIGCONT)
        assert wait_for(lambda: link.connected, timeout=30), "the edge did not reconnect"
    finally:
        if edge is not None:
            edge.close()
        if proc.poll() is None:
            proc.send_signal(signal.SIGCONT)
        fleet.close()


def test_keepalive_ms_is_read_and_bounded():
    table = {"node": {"id": "e"}, "coordinator": {"address": "127.0.0.1:1", "keepalive_ms": 5000}}
    assert parse_edge_config(table, "edge.toml").coordinator.keepalive_ms == 5000
    assert parse_edge_config({"node": {"id": "e"}}, "edge.toml").coordinator.keepalive_ms == 20_000
    table["coordinator"]["keepalive_ms"] = 10
    with pytest.raises(ConfigError) as err:
        parse_edge_config(table, "edge.toml")
    assert "keepalive_ms" in str(err.value) and "edge.toml" in str(err.value) and "1000..3600000" in str(err.value)
