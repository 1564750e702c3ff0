"""A mesh has a name: nodes of other meshes never join it, are never forwarded to and never shown."""
from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from edgeloop.client import MeshClient
from meshkit import BarePeer, wait_for


def test_static_peers_and_seeds_of_another_mesh_are_ignored():
    blue = BarePeer("edge-1", mesh_name="blue", zeroconf_interfaces=()).start()
    blue_2 = BarePeer("edge-2", mesh_name="blue", zeroconf_interfaces=(), static_peers=(blue.address,)).start()
    green = BarePeer("edge-3", mesh_name="green", zeroconf_interfaces=(), static_peers=(blue.address,)).start()
    try:
        assert blue.mesh.peer_servicer.Describe(None, None).node.mesh_name == "blue"
        assert wait_for(lambda: blue_2.alive_ids() == {"edge-1", "edge-2"}, 5) is not None
        time.sleep(0.5)  # green has asked edge-1 several times by now (heartbeat 100 ms)
        assert green.view().keys() == {"edge-3"}
        assert green.mesh.membership.placement().candidates("mlp") == ("edge-3",)  # never forwarded to edge-1
        with MeshClient(seeds=[blue.address, green.address], interfaces=[], mesh_name="green") as client:
            assert client.wait_ready(nodes=1, timeout=5)
            time.sleep(0.3)
            assert [m.node_id for m in client.view()] == ["edge-3"]
        with MeshClient(seeds=[blue_2.address], interfaces=[], mesh_name="blue") as client:
            assert client.wait_ready(nodes=2, timeout=5)  # edge-1 learned from edge-2's Describe
            assert [m.node_id for m in client.view()] == ["edge-1", "edge-2"]
    finally:
        for peer in (green, blue_2, blue):
            peer.stop()


def test_mesh_client_refuses_a_bad_mesh_name():
    with pytest.raises(ValueError, match="mesh_name: got 'a b', expected a mesh name"):
        MeshClient(interfaces=[], mesh_name="a b", start=False)


def _status(*args):
    return subprocess.run([sys.executable, "-m", "edgeloop", "status", "--mesh", *args],
                          capture_output=True, text=True, timeout=60)


@pytest.mark.netns
def test_two_meshes_on_one_network_never_see_each_other(tmp_path):
    # the same node ids in both meshes: instance names carry the mesh, so they do not clash either
    blue = [BarePeer(f"edge-{i}", mesh_name="blue", models={"mlp": [1]}).start() for i in (1, 2)]
    green = [BarePeer(f"edge-{i}", mesh_name="green", models={"iris": [1]}).start() for i in (1, 2)]
    try:
        for peers in (blue, green):
            assert wait_for(lambda: all(p.alive_ids() == {"edge-1", "edge-2"} for p in peers), 5) is not None
        time.sleep(1.0)  # announcements of the other mesh had time to arrive
        for peer in blue:
            assert all(m.models == {"mlp": (1,)} for m in peer.view().values()), peer.view()
        for peer in green:
            assert all(m.models == {"iris": (1,)} for m in peer.view().values()), peer.view()

        done = _status("--mesh-name", "green", "--json")
        assert done.returncode == 0, done.stderr
        view = json.loads(done.stdout)
        assert view["mesh"] == "green"
        assert {(n["id"], tuple(n["models"])) for n in view["nodes"]} == {("edge-1", ("iris",)), ("edge-2", ("iris",))}

        config = tmp_path / "blue.toml"
        config.write_text('[node]\nid = "me"\n[mesh]\nname = "blue"\n')
        done = _status("--config", str(config), "--json")
        assert done.returncode == 0, done.stderr
        assert {tuple(n["models"]) for n in json.loads(done.stdout)["nodes"]} == {("mlp",)}

        done = _status("--wait", "3")  # the default mesh: nobody here
        assert done.returncode == 1 and "no nodes of mesh 'default' found" in done.stdout
    finally:
        for peer in blue + green:
            peer.stop()


def test_status_rejects_a_bad_mesh_name_and_a_bad_config(tmp_path):
    bad = _status("--no-zeroconf", "--mesh-name", "../x")
    assert bad.returncode == 2 and "--mesh-name: got '../x', expected a mesh name" in bad.stderr
    config = tmp_path / "edge.toml"
    config.write_text('[node]\nid = "me"\n[mesh]\nname = "a/b"\n')
    bad = _status("--no-zeroconf", "--config", str(config))
    assert bad.returncode == 2 and "mesh.name" in bad.stderr and str(config) in bad.stderr
