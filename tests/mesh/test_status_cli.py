"""``edgeloop status --mesh`` prints the view: nodes, liveness, models+versions, weights, epochs."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from meshkit import BarePeer, wait_for


def status(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgeloop", "status", "--mesh", *args],
                          capture_output=True, text=True, timeout=60)


def test_status_from_seeds():
    a = BarePeer("edge-x", models={"mlp": [1, 2]}, weight=2.0, zeroconf_interfaces=()).start()
    b = BarePeer("edge-y", models={"iris": [3]}, zeroconf_interfaces=(), static_peers=(a.address,)).start()
    try:
        assert wait_for(lambda: "edge-x" in b.alive_ids(), 5) is not None
        done = status("--no-zeroconf", "--seed", a.address, "--seed", b.address, "--json")
        assert done.returncode == 0, done.stderr
        view = json.loads(done.stdout)
        nodes = {n["id"]: n for n in view["nodes"]}
        assert set(nodes) == {"edge-x", "edge-y"}
        assert nodes["edge-x"]["state"] == "up" and nodes["edge-x"]["weight"] == 2.0
        assert nodes["edge-x"]["models"] == {"mlp": [1, 2]} and nodes["edge-y"]["models"] == {"iris": [3]}
        assert nodes["edge-y"]["node_epoch"] >= 2  # edge-y's own view changed when it learned edge-x
        table = status("--no-zeroconf", "--seed", a.address)
        assert table.returncode == 0
        assert "edge-x" in table.stdout and "mlp:1,2" in table.stdout and " ready " in table.stdout
    finally:
        b.stop()
        a.stop()


def test_status_reports_an_empty_mesh_and_bad_seeds():
    done = status("--no-zeroconf", "--seed", "127.0.0.1:1", "--wait", "0.5")
    assert done.returncode == 1 and "no nodes of mesh 'default' found" in done.stdout
    bad = status("--no-zeroconf", "--seed", "nonsense")
    assert bad.returncode == 2 and "seeds: got 'nonsense', expected 'host:port'" in bad.stderr


@pytest.mark.netns
def test_status_over_zeroconf():
    peers = [BarePeer("edge-p").start(), BarePeer("edge-q", models={"mlp": [1], "other": [5]}).start()]
    try:
        done = status("--wait", "1.5")
        assert done.returncode == 0, done.stderr
        lines = done.stdout.splitlines()
        assert lines[0].startswith("mesh 'default' view epoch") and "2 nodes (2 ready)" in lines[0]
        assert any(line.startswith("edge-q") and "other:5" in line for line in lines)
    finally:
        for p in peers:
            p.stop()


def test_one_seed_shows_the_whole_view_including_a_crashed_node():
    """A client given one seed learns the members that seed knows first-hand, and a crashed one shows down."""
    b = BarePeer("edge-b2", models={"mlp": [1]}, zeroconf_interfaces=()).start()
    c = BarePeer("edge-c2", models={"mlp": [2]}, zeroconf_interfaces=()).start()
    a = BarePeer("edge-a2", zeroconf_interfaces=(), static_peers=(b.address, c.address)).start()
    try:
        assert wait_for(lambda: a.alive_ids() >= {"edge-b2", "edge-c2"}, 5) is not None
        full = status("--no-zeroconf", "--seed", a.address, "--json")
        assert full.returncode == 0, full.stderr
        nodes = {n["id"]: n for n in json.loads(full.stdout)["nodes"]}
        assert set(nodes) == {"edge-a2", "edge-b2", "edge-c2"}
        assert {n["state"] for n in nodes.values()} == {"up"}
        assert nodes["edge-c2"]["models"] == {"mlp": [2]}

        c.stop_serving()  # crashed: no goodbye, no health answers
        assert wait_for(lambda: "edge-c2" not in a.alive_ids(), 5) is not None
        after = status("--no-zeroconf", "--seed", a.address, "--json")
        nodes = {n["id"]: n for n in json.loads(after.stdout)["nodes"]}
        assert nodes["edge-c2"]["state"] == "down" and nodes["edge-b2"]["state"] == "up"
    finally:
        for peer in (a, b, c):
            peer.stop()


def test_second_hand_members_are_not_passed_on():
    """A node reports only members it sees itself, so nodes cannot keep a departed one alive for each other."""
    from edgeloop.mesh.membership import PEER_SOURCE_PREFIX

    b = BarePeer("edge-b3", zeroconf_interfaces=()).start()
    a = BarePeer("edge-a3", zeroconf_interfaces=(), static_peers=(b.address,)).start()
    try:
        assert wait_for(lambda: "edge-b3" in a.alive_ids(), 5) is not None
        a.mesh.membership.upsert("edge-ghost", PEER_SOURCE_PREFIX + "edge-b3", host="127.0.0.1", grpc_port=1)
        described = a.mesh.peer_servicer.Describe(None, None)
        assert [m.node.node_id for m in described.members] == ["edge-b3"]
    finally:
        a.stop()
        b.stop()


@pytest.mark.netns
def test_status_shows_a_lone_real_node_every_time(tmp_path):
    """As a newcomer tries it: one `edgeloop edge` with an empty repository, then `status --mesh` run
    back to back with the default wait (mDNS answers a repeated query only after a second)."""
    import os
    import re
    import time

    (tmp_path / "empty").mkdir()
    node = subprocess.Popen([sys.executable, "-m", "edgeloop", "edge", "--model-repository", str(tmp_path / "empty"),
                             "--grpc-port", "0", "--metrics-port", "0", "--node-id", "lonely"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            env=dict(os.environ, PYTHONUNBUFFERED="1"))
    try:
        line = node.stdout.readline()  # the start line: what the node is doing
        assert re.search(r"listening on 127\.0\.0\.1:\d+ .*models ready: none yet; mesh 'default' "
                         r"\(zeroconf on 127\.0\.0\.1, 0 static peers\)", line), line
        for run in range(5):
            started = time.monotonic()
            done = status()
            took = time.monotonic() - started
            assert done.returncode == 0, f"run {run}: {done.stdout}{done.stderr}"
            rows = [r.split() for r in done.stdout.splitlines()[2:]]
            assert [(r[0], r[2]) for r in rows] == [("lonely", "not-ready")], f"run {run}: {done.stdout}"
            assert took < 30, f"run {run} took {took:.1f}s"
    finally:
        node.terminate()
        node.wait(30)


def test_status_tells_ready_not_ready_draining_and_down_apart():
    from grpc_health.v1 import health_pb2

    ready = BarePeer("edge-r", zeroconf_interfaces=()).start()
    empty = BarePeer("edge-e", models={}, zeroconf_interfaces=()).start()
    leaving = BarePeer("edge-l", zeroconf_interfaces=()).start()
    gone = BarePeer("edge-g", zeroconf_interfaces=()).start()
    watcher = BarePeer("edge-s", zeroconf_interfaces=(),
                       static_peers=tuple(p.address for p in (ready, empty, leaving, gone))).start()
    peers = (watcher, ready, empty, leaving, gone)
    try:
        assert wait_for(lambda: len(watcher.alive_ids()) == 5, 5) is not None
        leaving.health.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
        gone.stop_serving()
        assert wait_for(lambda: watcher.view()["edge-g"].state == "down", 5) is not None
        done = status("--no-zeroconf", "--seed", watcher.address, "--json")
        assert done.returncode == 0, done.stderr
        nodes = {n["id"]: (n["state"], n["ready"], n["condition"]) for n in json.loads(done.stdout)["nodes"]}
        assert nodes == {"edge-s": ("up", True, "ready"), "edge-r": ("up", True, "ready"),
                         "edge-e": ("up", False, "not-ready"), "edge-l": ("draining", False, "draining"),
                         "edge-g": ("down", False, "down")}
        table = status("--no-zeroconf", "--seed", watcher.address)
        assert "5 nodes (2 ready, 1 not-ready, 1 draining, 1 down)" in table.stdout.splitlines()[0], table.stdout
    finally:
        for peer in peers:
            peer.stop()
