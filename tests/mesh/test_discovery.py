"""Discovery over real zeroconf (in a private network namespace) and liveness over gRPC health."""
from __future__ import annotations

import time

import pytest

from edgeloop.mesh.discovery import Announcement, Discovery, decode_models, encode_models, parse_txt, txt_properties
from edgeloop.mesh.membership import DOWN, UP, Membership
from meshkit import BarePeer, wait_for


def test_txt_record_round_trip():
    a = Announcement("edge-a", "127.0.0.1", 8001, 8002, 2.5, "lab-1", {"mlp": [2, 1], "iris": [3]})
    props = txt_properties(a)
    assert props["models"] == "iris:3;mlp:1,2"
    fields = parse_txt({k.encode(): v.encode() for k, v in props.items()})
    assert fields == {"mesh_name": "default", "node_id": "edge-a", "grpc_port": 8001, "metrics_port": 8002, "protocol_version": "1",
                      "weight": 2.5, "zone": "lab-1", "models": {"iris": [3], "mlp": [1, 2]}}
    assert decode_models(encode_models({})) == {}


M = {b"mesh": b"default"}


@pytest.mark.parametrize("props, message", [
    ({**M, b"grpc": b"1"}, "TXT key 'id' missing"),
    ({**M, b"id": b"x", b"grpc": b"99999"}, "TXT key 'grpc': got 99999"),
    ({**M, b"id": b"x", b"grpc": b"1", b"weight": b"-2"}, "TXT key 'weight': got -2.0"),
    ({**M, b"id": b"x", b"grpc": b"1", b"models": b"mlp"}, "TXT 'models': part 'mlp'"),
    # an infinite weight would make every placement over this view raise, on every node
    ({**M, b"id": b"x", b"grpc": b"1", b"weight": b"inf"}, "TXT key 'weight': got inf, expected a finite number > 0"),
    ({**M, b"id": b"x", b"grpc": b"1", b"weight": b"nan"}, "TXT key 'weight': got nan, expected a finite number > 0"),
    ({**M, b"id": b"x", b"grpc": b"1", b"weight": b"1e200"}, "TXT key 'weight': got 1e\\+200, expected .* <= 1e\\+100"),
    # a record without a mesh name (an older or foreign announcer) belongs to no mesh
    ({b"id": b"x", b"grpc": b"1"}, "TXT key 'mesh' missing"),
    ({b"mesh": b"../etc", b"id": b"x", b"grpc": b"1"}, "TXT key 'mesh': got '../etc', expected a mesh name"),
])
def test_bad_txt_records_are_rejected_with_the_key(props, message):
    with pytest.raises(ValueError, match=message):
        parse_txt(props)


@pytest.mark.netns
def test_join_update_goodbye_over_mdns():
    peers = [BarePeer("a").start(), BarePeer("b", models={"mlp": [1], "iris": [2]}, weight=2.0).start()]
    observer = Membership()
    watcher = Discovery(observer, interfaces=["127.0.0.1"])  # browse only, no liveness: what mDNS alone says
    watcher.start()
    try:
        assert wait_for(lambda: {"a", "b"} <= peers[0].view().keys() and "a" in peers[1].view(), 3) is not None
        c = BarePeer("c", models={"mlp": [1]})
        peers.append(c)
        started = time.monotonic()
        c.start()  # timed from the start call: announcing is part of joining
        took = wait_for(lambda: all("c" in p.view() for p in peers[:2]) and {"a", "b"} <= c.view().keys(), 3,
                        since=started)
        assert took is not None and took < 1.0, f"join seen after {took}s"
        seen_b = wait_for(lambda: observer.get("b") is not None, 2) is not None and observer.get("b")
        assert seen_b.grpc_port == peers[1].port and seen_b.weight == 2.0 and seen_b.zone == "test"
        assert dict(seen_b.models) == {"iris": (2,), "mlp": (1,)}

        # a model load re-publishes the TXT record
        peers[1].table.set({"mlp": [1, 2]})
        took = wait_for(lambda: dict(observer.get("b").models) == {"mlp": (1, 2)}, 3)
        assert took is not None and took < 1.0, f"TXT update seen after {took}s"

        # every node marks the others up via health checks, and places over them
        assert wait_for(lambda: all(p.alive_ids() == {"a", "b", "c"} for p in peers), 3) is not None
        epochs = [p.mesh.membership.epoch for p in peers]

        # a clean shutdown says goodbye: out of every view within 1 s
        c.stop()
        peers.remove(c)
        took = wait_for(lambda: all("c" not in p.view() for p in peers) and observer.get("c") is None, 3)
        assert took is not None and took < 1.0, f"goodbye seen after {took}s"
        assert all(p.mesh.membership.epoch > e for p, e in zip(peers, epochs))
    finally:
        watcher.stop()
        for p in peers:
            p.stop()


@pytest.mark.netns
def test_liveness_comes_from_health_not_mdns():
    a, b = BarePeer("a").start(), BarePeer("b").start()
    try:
        assert wait_for(lambda: a.alive_ids() == {"a", "b"}, 3) is not None
        epoch = a.mesh.membership.epoch
        b.stop_serving()  # its mDNS record is still announced
        took = wait_for(lambda: a.view()["b"].state == DOWN, 3)
        assert took is not None and took < 3.0
        assert "b" in a.view() and a.mesh.membership.epoch > epoch
        assert a.mesh.membership.placement().candidates("mlp") == ("a",)
        b.resume_serving()
        took = wait_for(lambda: a.view()["b"].state == UP, 3)
        assert took is not None and took < 3.0
        assert a.mesh.membership.placement().candidates("mlp") == ("a", "b")
    finally:
        a.stop()
        b.stop()


def test_static_peers_join_through_describe():
    """No zeroconf at all: a static peer is learned (identity, models) via Peer.Describe."""
    a = BarePeer("a", models={"iris": [4]}, weight=3.0, zeroconf_interfaces=()).start()
    b = BarePeer("b", zeroconf_interfaces=(), static_peers=(a.address,)).start()
    try:
        assert wait_for(lambda: b.view().get("a") is not None and b.view()["a"].alive, 3) is not None
        seen = b.view()["a"]
        assert (seen.grpc_port, seen.weight, dict(seen.models), seen.sources) == (
            a.port, 3.0, {"iris": (4,)}, frozenset({"static"}))
        a.table.depth = 7
        assert wait_for(lambda: b.view()["a"].queue_depth == 7, 3) is not None
        a.table.set({"iris": [4, 5]})  # learned from Describe on the next heartbeat
        assert wait_for(lambda: dict(b.view()["a"].models) == {"iris": (4, 5)}, 3) is not None
    finally:
        b.stop()
        a.stop()


def test_describe_with_a_non_finite_weight_cannot_break_placement():
    """A peer answering Describe with weight inf/nan is placed with weight 1, not allowed to poison the view."""
    from edgeloop.mesh.membership import describe_fields
    from edgeloop.protocol import mesh_pb2

    for bad in (float("inf"), float("nan"), -1.0, 0.0, 1e200):
        desc = mesh_pb2.NodeDescription(node=mesh_pb2.NodeIdentity(node_id="p", host="127.0.0.1", grpc_port=1,
                                                                   weight=bad))
        desc.models.add(model="mlp", version=1, state="READY")
        fields = describe_fields(desc)
        assert fields["weight"] == 1.0, bad
        view = Membership()
        view.upsert("p", "test", **fields, state=UP)
        assert view.placement().owner("k", "mlp") == "p"
