"""Ownership moves, the entity's feature state follows: two real edge nodes on loopback (static peers).

Node ``a`` serves a keyed stream alone; node ``b`` joins and wins some keys.  Requests keep entering
at ``a`` (forwarded to the owner).  With ``a`` alive, ``b`` fetches each moved key's state from ``a``
through ``Peer.EntityState`` on the key's first request, so every vector equals the one a single
node would have served (``features.replay``), bit for bit.  With ``a`` gone, ``b`` starts those keys
cold: flagged, counted, nothing imported.
"""
from __future__ import annotations

from dataclasses import replace

import grpc
import numpy as np
import pytest
from meshkit import free_port, wait_for

from edgeloop.config import EdgeConfig, MeshConfig, ModelConfig, NodeConfig, ServingConfig
from edgeloop.features import FeatureDefinition, replay
from edgeloop.mesh.handover import EntityHandover
from edgeloop.node import EdgeNode
from edgeloop.protocol import inference_pb2_grpc, mesh_pb2, mesh_pb2_grpc
from edgeloop.protocol.codec import infer_response_to_numpy
from edgeloop.serving.feature_models import build_feature_echo, feature_request, write_feature_model

MODEL = "fe"
T0_MS = 1_700_000_000_000
DEFINITION = FeatureDefinition.from_dict({
    "version": 1, "entity": "meter", "inputs": ["a", "b"],
    "features": [{"op": "lag", "col": "a", "k": 1}, {"op": "lag", "col": "a", "k": 3},
                 {"op": "mean", "col": "b", "k": 4}, {"op": "since_last"}]})
KEYS = [f"k{i}" for i in range(12)]


def node(tmp_path, name: str, ports: dict[str, int]) -> EdgeNode:
    repo = tmp_path / f"{name}-models"
    if not repo.exists():
        write_feature_model(repo, MODEL, 1, build_feature_echo(DEFINITION.width), DEFINITION)
    peers = tuple(f"127.0.0.1:{p}" for other, p in ports.items() if other != name)
    mesh = replace(MeshConfig(), zeroconf_interfaces=(), static_peers=peers, heartbeat_interval_ms=100,
                   down_after_ms=600)
    config = EdgeConfig(node=NodeConfig(id=name, grpc_port=ports[name], metrics_port=-1),
                        serving=ServingConfig(model_repository=repo, models=(ModelConfig(name=MODEL),)), mesh=mesh)
    edge = EdgeNode(config)
    edge.handover.budget_s = 2.0  # a loaded test machine; the 50 ms default is for production
    return edge


def stream(n: int):
    rng = np.random.default_rng(7)
    keys = [KEYS[int(i)] for i in rng.integers(0, len(KEYS), n)]
    rows = rng.standard_normal((n, 2)).astype(np.float32)
    ts = T0_MS + np.cumsum(rng.integers(100, 900, n))
    return keys, rows, ts


def send(entry: EdgeNode, keys, rows, ts, lo: int, hi: int) -> list[np.ndarray]:
    with grpc.insecure_channel(entry.address) as channel:
        stub = inference_pb2_grpc.GRPCInferenceServiceStub(channel)
        return [infer_response_to_numpy(stub.ModelInfer(
            feature_request(MODEL, DEFINITION, rows[i], keys[i], int(ts[i])), timeout=10))["vector"][0]
            for i in range(lo, hi)]


def both_up(a: EdgeNode, b: EdgeNode) -> bool:
    def sees(n, other):
        m = n.mesh.membership.get(other)
        return m is not None and m.alive and MODEL in m.models
    return sees(a, "b") and sees(b, "a")


def moved_keys(a: EdgeNode) -> set[str]:
    placement = a.mesh.membership.placement()
    return {k for k in KEYS if placement.owner(k, MODEL) == "b"}


@pytest.fixture
def ports():
    return {"a": free_port(), "b": free_port()}


def test_a_live_previous_owner_hands_the_state_over(tmp_path, ports):
    keys, rows, ts = stream(120)
    a = node(tmp_path, "a", ports).start()
    b = None
    try:
        first = send(a, keys, rows, ts, 0, 60)  # a alone owns every key
        b = node(tmp_path, "b", ports)
        b.eager_pull = None  # the lazy path alone (the fallback when the eager pull has not run or failed)
        b.start()
        assert wait_for(lambda: both_up(a, b), 10) is not None
        moved = moved_keys(a)
        assert moved and moved != set(KEYS)  # some keys change owner, some stay
        second = send(a, keys, rows, ts, 60, 120)
        a_state = a.models.features.of_model(MODEL)[0]
        b_state = b.models.features.of_model(MODEL)[0]
        moved_seen = {k for k in keys[60:] if k in moved}
        assert moved_seen & set(keys[:60]), "the stream must move a key that already has history"
        assert b.models.features.handover["imported"] == len(moved_seen & set(keys[:60]))
        assert all(k not in a_state for k in moved_seen)  # the old owner dropped what it handed over
        assert {k for k in KEYS if k in b_state} == moved_seen
        assert b_state.stats().cold == len(moved_seen - set(keys[:60]))  # only keys never seen start cold
    finally:
        if b is not None:
            b.stop(1.0)
        a.stop(1.0)
    expected = replay(DEFINITION, rows.astype(np.float64), keys, ts / 1000.0).vectors
    assert np.array(first + second).tobytes() == expected.tobytes()


def test_after_a_join_moved_entities_are_pulled_before_their_next_request(tmp_path, ports):
    keys, rows, ts = stream(120)
    a = node(tmp_path, "a", ports).start()
    b = None
    try:
        first = send(a, keys, rows, ts, 0, 60)  # a alone owns every key
        b = node(tmp_path, "b", ports).start()
        assert wait_for(lambda: both_up(a, b), 10) is not None
        moved_with_history = moved_keys(a) & set(keys[:60])
        assert moved_with_history and moved_keys(a) != set(KEYS)
        b_state = b.models.features.of_model(MODEL)[0]
        a_state = a.models.features.of_model(MODEL)[0]
        # no request has reached b yet: the state came over in the background, after the epoch change
        assert wait_for(lambda: all(k in b_state for k in moved_with_history), 10) is not None, \
            f"pulled {b.eager_pull.pulled}, counters {b.models.features.handover}"
        assert b_state.stats().served == 0
        assert all(k not in a_state for k in moved_with_history)  # moved, not copied
        assert b.models.features.handover["pulled"] == len(moved_with_history)
        second = send(a, keys, rows, ts, 60, 120)
        moved_seen = {k for k in keys[60:] if k in moved_keys(a)}
        assert b.models.features.handover["imported"] == 0  # the lazy fallback was never needed
        assert b_state.stats().cold == len(moved_seen - set(keys[:60]))  # only keys never seen start cold
        from prometheus_client import generate_latest

        scraped = generate_latest(b.metrics.registry).decode()
        assert f'edgeloop_feature_handover_total{{result="pulled"}} {float(len(moved_with_history))}' in scraped
    finally:
        if b is not None:
            b.stop(1.0)
        a.stop(1.0)
    expected = replay(DEFINITION, rows.astype(np.float64), keys, ts / 1000.0).vectors
    assert np.array(first + second).tobytes() == expected.tobytes()


def test_eager_requests_are_checked():
    from edgeloop.mesh.handover import answer_entity_state

    def export(model, digest, keys, remove):
        return [(k, b"x") for k in keys]

    base = dict(model=MODEL, feature_digest=DEFINITION.digest)
    code, message = answer_entity_state(mesh_pb2.EntityStateRequest(keys=["k"], for_node="b", **base), export,
                                        lambda *a: [])
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "for_node" in message
    code, message = answer_entity_state(mesh_pb2.EntityStateRequest(for_node="b" * 129, **base), export, lambda *a: [])
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "for_node" in message
    asked = []
    reply = answer_entity_state(mesh_pb2.EntityStateRequest(for_node="b", **base), export,
                                lambda *a: asked.append(a) or ["k1", "k2"])
    assert list(reply.keys) == ["k1", "k2"] and asked == [(MODEL, DEFINITION.digest, "b", 256)]


def test_a_dead_previous_owner_means_cold_and_counted(tmp_path, ports):
    keys, rows, ts = stream(80)
    a = node(tmp_path, "a", ports).start()
    b = node(tmp_path, "b", ports)
    # a leaving gracefully within an eager pass's window would hand its keys over (a's own placement gives
    # them to b as it says goodbye); a dead owner answers nothing: model that with the lazy path alone
    b.eager_pull = None
    b_started = False
    try:
        b.start()
        b_started = True
        assert wait_for(lambda: both_up(a, b), 10) is not None
        owned_by_a = {k for k in KEYS if a.mesh.membership.placement().owner(k, MODEL) == "a"}
        sent_to_a = [i for i in range(80) if keys[i] in owned_by_a][:30]
        with grpc.insecure_channel(a.address) as channel:  # a builds history for its keys
            stub = inference_pb2_grpc.GRPCInferenceServiceStub(channel)
            for i in sent_to_a:
                stub.ModelInfer(feature_request(MODEL, DEFINITION, rows[i], keys[i], int(ts[i])), timeout=10)
        held_by_a = {keys[i] for i in sent_to_a}
        a.stop(1.0)  # the previous owner is gone: its state cannot come over
        assert wait_for(lambda: not b.mesh.membership.get("a") or not b.mesh.membership.get("a").alive, 10) \
            is not None
        later = [i for i in range(80) if keys[i] in held_by_a and i > max(sent_to_a)]
        out = []
        with grpc.insecure_channel(b.address) as channel:
            stub = inference_pb2_grpc.GRPCInferenceServiceStub(channel)
            for i in later:
                out.append(infer_response_to_numpy(stub.ModelInfer(
                    feature_request(MODEL, DEFINITION, rows[i], keys[i], int(ts[i])), timeout=10))["vector"][0])
        stats = b.models.features.of_model(MODEL)[0].stats()
        restarted = {keys[i] for i in later}
        assert restarted, "the stream must come back to a key a held"
        assert stats.cold == len(restarted) and b.models.features.handover["imported"] == 0
        from prometheus_client import generate_latest

        scraped = generate_latest(b.metrics.registry).decode()
        assert f'edgeloop_feature_rows_total{{model="fe",state="cold"}} {float(len(restarted))}' in scraped
        # the first vector of each such key is the cold one (lag defaults to the current value)
        firsts = {}
        for i, vec in zip(later, out):
            firsts.setdefault(keys[i], vec)
        lag1 = DEFINITION.output_names.index("lag_a_1")
        assert all(v[lag1] == v[0] for v in firsts.values())
    finally:
        if b_started:
            b.stop(1.0)
        a.stop(1.0)


def test_entity_state_rpc_checks_its_request_and_the_token(tmp_path, ports):
    a = node(tmp_path, "a", ports).start()
    try:
        send(a, ["k1"], np.ones((1, 2), np.float32), np.array([T0_MS]), 0, 1)
        with grpc.insecure_channel(a.address) as channel:
            peer = mesh_pb2_grpc.PeerStub(channel)
            ok = peer.EntityState(mesh_pb2.EntityStateRequest(model=MODEL, feature_digest=DEFINITION.digest,
                                                              keys=["k1", "unknown"]), timeout=10)
            assert list(ok.keys) == ["k1"]
            a.models.features.of_model(MODEL)[0].decode_export("k1", ok.entities[0])  # well-formed
            for bad, field in ((dict(model=MODEL, feature_digest="zz", keys=["k1"]), "feature_digest"),
                               (dict(model=MODEL, feature_digest=DEFINITION.digest, keys=["x"] * 257), "keys"),
                               (dict(model=MODEL, feature_digest=DEFINITION.digest, keys=[""]), "keys[0]")):
                with pytest.raises(grpc.RpcError) as err:
                    peer.EntityState(mesh_pb2.EntityStateRequest(**bad), timeout=10)
                assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and field in err.value.details()
    finally:
        a.stop(1.0)
    # a node with a fleet token refuses callers without it
    from edgeloop.mesh.peer_service import PeerServicer

    servicer = PeerServicer(lambda: None, dict, lambda: 0, lambda: 0, token="secret")

    class Ctx:
        def invocation_metadata(self):
            return ()

        def abort(self, code, message):
            raise RuntimeError(code, message)

    with pytest.raises(RuntimeError) as err:
        servicer.EntityState(mesh_pb2.EntityStateRequest(model=MODEL), Ctx())
    assert err.value.args[0] == grpc.StatusCode.UNAUTHENTICATED


def test_only_the_owner_asks_and_only_the_next_live_node():
    from edgeloop.mesh.channels import ChannelPool
    from edgeloop.mesh.membership import UP, Membership

    membership = Membership(self_id="b")
    for name, port in (("a", 1), ("b", 2)):
        membership.upsert(name, "static", host="127.0.0.1", grpc_port=port, models={MODEL: (1,)}, state=UP)
    handover = EntityHandover("b", membership, ChannelPool())
    placement = membership.placement()
    mine = next(k for k in (f"x{i}" for i in range(1000)) if placement.owner(k, MODEL) == "b")
    theirs = next(k for k in (f"x{i}" for i in range(1000)) if placement.owner(k, MODEL) == "a")
    assert handover.previous_owner(mine, MODEL) == "a"
    assert handover.previous_owner(theirs, MODEL) is None  # a spilled request never takes the owner's state
    membership.set_state("a", "down")
    assert handover.previous_owner(mine, MODEL) is None
