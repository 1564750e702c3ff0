"""A dead owner's entities are rebuilt from the coordinator's log: a real coordinator, two real edge nodes.

Node ``a`` owns some keys, serves them and uploads every sample (raw inputs, feature times) and the late
labels it receives.  ``a`` is then stopped without handing anything over; ``b`` becomes the owner, finds
``a`` ranked before it but not alive, asks ``Coordinator.EntityHistory`` on each key's first request and
replays the history through the same feature code: from then on ``b`` serves exactly the vectors a node
that never lost the entity would have served (``features.replay`` of the whole stream, bit for bit), and
the rebuild is counted in Prometheus and flagged in the recorded sample.
"""
from __future__ import annotations

from dataclasses import replace

import grpc
import pytest
import numpy as np
from meshkit import free_port, wait_for

from edgeloop.config import CoordinatorConfig, EdgeConfig, MeshConfig, ModelConfig, NodeConfig, ServingConfig
from edgeloop.config import parse_cloud_config
from edgeloop.coordinator import Coordinator
from edgeloop.features import FeatureDefinition, LabelEvent, replay
from edgeloop.node import EdgeNode
from edgeloop.protocol import inference_pb2_grpc, mesh_pb2, mesh_pb2_grpc
from edgeloop.protocol.codec import infer_response_to_numpy
from edgeloop.serving.feature_models import build_feature_echo, feature_request, write_feature_model

MODEL = "fe"
T0_MS = 1_700_000_000_000
DEFINITION = FeatureDefinition.from_dict({
    "version": 1, "entity": "meter", "inputs": ["a", "b"],
    "features": [{"op": "lag", "col": "a", "k": 1}, {"op": "lag", "col": "a", "k": 3},
                 {"op": "mean", "col": "b", "k": 4}, {"op": "dev", "col": "b", "k": 2}, {"op": "since_last"},
                 {"op": "label_lag", "k": 1}, {"op": "label_mean", "k": 3}]})
KEYS = [f"k{i}" for i in range(8)]


def start_cloud(tmp_path) -> Coordinator:
    config = parse_cloud_config({"node": {"grpc_port": 7001, "metrics_port": 7002},
                                 "storage": {"database": "cloud/coord.sqlite", "artifact_dir": "cloud/artifacts"},
                                 "fleet": {"heartbeat_interval_ms": 200},
                                 "delivery": {"canary": 1000, "bake_s": 0}}, base_dir=tmp_path)
    return Coordinator(replace(config, node=replace(config.node, grpc_port=0, metrics_port=-1))).start()


def node(tmp_path, name: str, ports: dict[str, int], coordinator: str) -> EdgeNode:
    repo = tmp_path / f"{name}-models"
    write_feature_model(repo, MODEL, 1, build_feature_echo(DEFINITION.width), DEFINITION)
    peers = tuple(f"127.0.0.1:{p}" for other, p in ports.items() if other != name)
    mesh = replace(MeshConfig(), zeroconf_interfaces=(), static_peers=peers, heartbeat_interval_ms=100,
                   down_after_ms=600)
    config = EdgeConfig(node=NodeConfig(id=name, grpc_port=ports[name], metrics_port=-1),
                        serving=ServingConfig(model_repository=repo, models=(ModelConfig(name=MODEL),)), mesh=mesh,
                        coordinator_address=coordinator,
                        coordinator=CoordinatorConfig(outbox_path=tmp_path / f"{name}-outbox.sqlite",
                                                      upload_backoff_max_ms=300))
    edge = EdgeNode(config)
    edge.handover.budget_s = 2.0  # a loaded test machine; the defaults are for production
    edge.eager_pull = None  # a dead owner answers nothing: only the lazy path and the log remain
    return edge


def stream(n: int):
    rng = np.random.default_rng(11)
    keys = [KEYS[int(i)] for i in rng.integers(0, len(KEYS), n)]
    rows = rng.standard_normal((n, 2)).astype(np.float32)
    ts = T0_MS + np.cumsum(rng.integers(100, 900, n))
    return keys, rows, ts


def both_up(a: EdgeNode, b: EdgeNode) -> bool:
    def sees(n, other):
        m = n.mesh.membership.get(other)
        return m is not None and m.alive and MODEL in m.models
    return sees(a, "b") and sees(b, "a")


def stored(cloud: Coordinator, node_id: str) -> int:
    return len(cloud.store.sample_ids(node_id))


def test_a_dead_owners_entities_are_rebuilt_from_the_log_and_serve_what_a_continuous_node_would(tmp_path):
    keys, rows, ts = stream(90)
    cloud = start_cloud(tmp_path)
    ports = {"a": free_port(), "b": free_port()}
    a = b = None
    try:
        a = node(tmp_path, "a", ports, cloud.address).start()
        b = node(tmp_path, "b", ports, cloud.address).start()
        b.history.budget_s = 5.0  # the coordinator answers a loaded test machine slowly; 0.5 s is for production
        assert wait_for(lambda: both_up(a, b), 15) is not None
        owned_by_a = {k for k in KEYS if a.mesh.membership.placement().owner(k, MODEL) == "a"}
        assert owned_by_a, "the two-node placement gives a some keys"
        sent_to_a = [i for i in range(60) if keys[i] in owned_by_a]
        events: list[LabelEvent] = []
        with grpc.insecure_channel(a.address) as channel:  # a serves its keys; each label arrives one request late
            infer = inference_pb2_grpc.GRPCInferenceServiceStub(channel)
            feedback = mesh_pb2_grpc.FeedbackStub(channel)
            for m, i in enumerate(sent_to_a):
                infer.ModelInfer(feature_request(MODEL, DEFINITION, rows[i], keys[i], int(ts[i]), request_id=f"r{i}"),
                                 timeout=10)
                if m:
                    j = sent_to_a[m - 1]
                    value = float(rows[j, 0] > 0)
                    feedback.Label(mesh_pb2.LabelRequest(labels=[mesh_pb2.Label(sample_id=f"r{j}", model=MODEL,
                                                                                value=value)]), timeout=10)
                    # on the request-time axis the label lands after request i and before the next one
                    events.append(LabelEvent(keys[j], value, ts[j] / 1000.0, ts[i] / 1000.0 + 1e-4))
        labelled = len(events)
        assert wait_for(lambda: stored(cloud, "a") == len(sent_to_a) and sum(
            c.labelled for c in cloud.store.model_counts() if c.model == MODEL) == labelled, 20) is not None
        a.stop(1.0)  # dead: nothing handed over
        assert wait_for(lambda: not b.mesh.membership.get("a").alive, 10) is not None
        later = [i for i in range(60, 90) if keys[i] in owned_by_a]
        out = []
        with grpc.insecure_channel(b.address) as channel:
            infer = inference_pb2_grpc.GRPCInferenceServiceStub(channel)
            for i in later:
                out.append(infer_response_to_numpy(infer.ModelInfer(
                    feature_request(MODEL, DEFINITION, rows[i], keys[i], int(ts[i]), request_id=f"r{i}"),
                    timeout=10))["vector"][0])
        served = sent_to_a + later
        expected = replay(DEFINITION, rows[served], [keys[i] for i in served], ts[served] / 1000.0, events)
        got = np.stack(out)
        assert got.tobytes() == expected.vectors[len(sent_to_a):].tobytes()
        cold = replay(DEFINITION, rows[later], [keys[i] for i in later], ts[later] / 1000.0).vectors
        assert got.tobytes() != cold.tobytes()  # what a cold start would have served differs
        restarted = {keys[i] for i in later}
        counts = b.models.features.handover
        assert counts["rebuilt"] == len(restarted) and counts["imported"] == 0 and counts["rebuild_failed"] == 0
        assert b.models.features.of_model(MODEL)[0].stats().cold == 0
        from prometheus_client import generate_latest

        scraped = generate_latest(b.metrics.registry).decode()
        assert f'edgeloop_feature_handover_total{{result="rebuilt"}} {float(len(restarted))}' in scraped
        # the recorded sample of each key's first request at b says the state was rebuilt for it
        assert wait_for(lambda: stored(cloud, "b") == len(later), 20) is not None
        firsts = {}
        for i in later:
            firsts.setdefault(keys[i], i)
        for i in later:
            sample = mesh_pb2.Sample.FromString(cloud.store.sample_payload(MODEL, f"r{i}"))
            assert sample.features_rebuilt == (firsts[keys[i]] == i) and not sample.features_cold
            assert sample.feature_time == ts[i] / 1000.0
    finally:
        for n in (b, a):
            if n is not None:
                n.stop(1.0)
        cloud.stop(1.0)


def test_only_a_dead_owner_ranked_before_this_node_sends_it_to_the_log():
    from edgeloop.mesh.channels import ChannelPool
    from edgeloop.mesh.handover import EntityHandover, PreviousOwnerGone
    from edgeloop.mesh.membership import UP, Membership

    membership = Membership(self_id="b")
    for name, port in (("a", 1), ("b", 2), ("c", 3)):
        membership.upsert(name, "static", host="127.0.0.1", grpc_port=port, models={MODEL: (1,)}, state=UP)
    handover = EntityHandover("b", membership, ChannelPool())
    full = membership.placement()
    a_then_b = next(k for k in (f"x{i}" for i in range(5000)) if full.preference(k, MODEL)[:2] == ["a", "b"])
    b_first = next(k for k in (f"x{i}" for i in range(5000)) if full.preference(k, MODEL)[0] == "b")
    c_then_b = next(k for k in (f"x{i}" for i in range(5000)) if full.preference(k, MODEL)[:2] == ["c", "b"])
    assert handover.dead_previous_owner(a_then_b, MODEL) is None  # everyone is alive
    membership.set_state("a", "down")
    assert handover.dead_previous_owner(a_then_b, MODEL) == "a"
    assert handover.dead_previous_owner(b_first, MODEL) is None  # b owned it before a died
    assert handover.dead_previous_owner(c_then_b, MODEL) is None  # c is alive and still owns it
    with pytest.raises(PreviousOwnerGone):
        handover.fetch(MODEL, DEFINITION.digest, a_then_b)  # nobody is called: the log is the only source
    assert handover.fetch(MODEL, DEFINITION.digest, c_then_b) is None  # not b's key: nothing to fetch


def test_a_history_that_does_not_fit_the_definition_is_refused():
    import struct

    from edgeloop.node.rebuild import HistoryError, history_arrays

    def tensor(name, *values, datatype="FP32"):
        return mesh_pb2.TensorData(name=name, datatype=datatype, shape=[len(values)],
                                   data=struct.pack(f"<{len(values)}f", *values))

    good = mesh_pb2.HistoryRow(sample_id="s", feature_time=5.0, raw_inputs=[tensor("b", 3, 4), tensor("a", 1, 2)])
    rows, times, labels = history_arrays(mesh_pb2.EntityHistory(key="k", rows=[good], labels=[
        mesh_pb2.HistoryLabel(sample_id="s", value=1.0, timestamp=5.0)]), ("a", "b"), 8)
    assert rows.tolist() == [[1.0, 3.0], [2.0, 4.0]] and times.tolist() == [5.0, 5.0] and labels == [(1.0, 5.0)]
    for bad, field in ((mesh_pb2.HistoryRow(sample_id="s", raw_inputs=[tensor("a", 1)]), "no input 'b'"),
                       (mesh_pb2.HistoryRow(sample_id="s", raw_inputs=[tensor("a", 1), tensor("b", 1, 2)]),
                        "same row count"),
                       (mesh_pb2.HistoryRow(sample_id="s", raw_inputs=[tensor("a", 1), mesh_pb2.TensorData(
                           name="b", datatype="BYTES", data=b"xx")]), "datatype")):
        with pytest.raises(HistoryError) as err:
            history_arrays(mesh_pb2.EntityHistory(key="k", rows=[bad]), ("a", "b"), 8)
        assert field in str(err.value)
    with pytest.raises(HistoryError) as err:
        history_arrays(mesh_pb2.EntityHistory(key="k", rows=[good] * 3), ("a", "b"), 2)
    assert "at most 2" in str(err.value)


def test_a_rebuild_that_fails_or_finds_nothing_starts_cold_and_is_counted():
    from edgeloop.features import FeatureState
    from edgeloop.mesh.handover import PreviousOwnerGone
    from edgeloop.serving.features import FeatureStates

    states = FeatureStates()
    state = FeatureState(DEFINITION)

    def gone(model, digest, key):
        raise PreviousOwnerGone("previous owner 'a' of this key is not alive")

    states.fetch_entity = gone
    assert not states.adopt_from_previous_owner(MODEL, state, "k1")  # no coordinator: cold
    calls = []

    def rebuild(model, st, key):
        calls.append(key)
        if key == "down":
            raise ConnectionError("coordinator unreachable")
        if key == "k2":
            return st.rebuild_entity(key, np.ones((2, 2)), [1.0, 2.0], [(1.0, 1.0)])
        return False

    states.rebuild_entity = rebuild
    assert not states.adopt_from_previous_owner(MODEL, state, "down")
    assert not states.adopt_from_previous_owner(MODEL, state, "new")
    assert states.adopt_from_previous_owner(MODEL, state, "k2") and "k2" in state and "new" not in state
    assert calls == ["down", "new", "k2"]
    counts = states.handover
    assert (counts["failed"], counts["rebuild_failed"], counts["rebuild_empty"], counts["rebuilt"]) == (4, 1, 1, 1)
    states.fetch_entity = lambda model, digest, key: None  # a live previous owner without it: new, no rebuild
    assert not states.adopt_from_previous_owner(MODEL, state, "fresh") and calls == ["down", "new", "k2"]
