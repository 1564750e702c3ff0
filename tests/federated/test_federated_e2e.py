"""Federated mode end to end: a real coordinator and 4 real edge nodes on 127.0.0.1.

The stream changes concept after the champion was trained; the edges serve it, labels arrive on
each edge, and the raw rows never leave the edges.  A round trains on the edges, aggregates,
evaluates on each edge's own holdout and publishes through ``core.publish``; every edge then serves
the new version.  A poisoned edge (its update sign-flipped and scaled) does not move the median,
and moves FedAvg enough that the gate refuses its candidate.
"""
from __future__ import annotations

import json

import numpy as np
from fedkit import ROWS_PER_EDGE, FedFleet, labelled
from loopkit import MODEL, wait_for

from edgeloop.protocol import mesh_pb2

def test_a_round_end_to_end_and_raw_features_stay_on_the_edges(tmp_path):
    fleet = FedFleet(tmp_path)
    try:
        before = fleet.serve(ROWS_PER_EDGE, seed=1)
        assert labelled(fleet, ROWS_PER_EDGE)
        # labels reach the coordinator; raw samples of the federated model never do
        assert wait_for(lambda: all(e.node.outbox.pending_rows == 0 for e in fleet.edges), timeout=30)
        assert [s for s in fleet.cloud.store.sample_ids() if s[0] == MODEL] == []
        assert all(e.node.uploader.uploaded["samples"] == 0 for e in fleet.edges)
        assert fleet.cloud.core.federated_samples_dropped == 0  # the edges kept them: nothing to drop
        assert sum(e.node.uploader.uploaded["labels"] for e in fleet.edges) == 4 * ROWS_PER_EDGE
        # ... while the edges still summarise what they serve as statistics (drift monitoring)
        assert wait_for(lambda: all(fleet.cloud.store.feature_stats(MODEL, e.id) for e in fleet.edges), timeout=30)

        outcome = fleet.cloud.federated.run_round(MODEL, "test")
        assert outcome["state"] == "published", outcome
        ev = outcome["evaluation"]
        assert ev["challenger"] > ev["champion"] + 0.1 and {s["value"] for s in ev["slices"]} == \
            {e.id for e in fleet.edges}
        version = outcome["version"]
        assert version == 2
        assert [r for r in fleet.cloud.core.rollouts.rollouts() if r["model"] == MODEL and r["version"] == version]
        assert wait_for(lambda: all(e.ready(version) for e in fleet.edges), timeout=30), \
            json.dumps(fleet.cloud.core.rollouts.rollouts()[-1], default=str)[:3000]
        after = fleet.serve(100, seed=2)
        assert after > before + 0.1, (before, after)
        # lineage: the run's steps are recorded like a central run's, and the published bytes are the champion
        steps = {x["type"]: x for x in fleet.cloud.store.executions(MODEL, outcome["run_id"])}
        assert {"training", "evaluation", "infra_validation", "compression", "publication"} <= set(steps)
        # the compression step: every built variant scored on the edges' holdouts, the smallest fit one served
        comp = outcome["compression"]
        scored = {c["name"]: c for c in comp["candidates"] if c["metric"] is not None}
        assert {"original", "int8"} <= set(scored), comp
        n = ev["n_holdout"]
        assert all(abs(c["metric"] * n - round(c["metric"] * n)) < 1e-6 for c in scored.values())  # edge counts
        assert abs(scored["original"]["metric"] - ev["challenger"]) < 0.02  # ONNX float32 vs the edge's math
        fit = [c for c in comp["candidates"] if c["infra_passed"] and c["within_tolerance"]]
        chosen = min(fit, key=lambda c: c["size_bytes"])
        assert comp["chosen"] == chosen["name"] and chosen["chosen"]
        published = max((p for p in fleet.cloud.store.published_models() if p.model == MODEL), key=lambda p: p.version)
        assert published.size == chosen["size_bytes"]
        assert fleet.cloud.store.aliases(MODEL)["champion"] == version
        assert [s for s in fleet.cloud.store.sample_ids() if s[0] == MODEL] == []

        # FedProx on a real edge's own rows: the proximal term keeps the local model nearer the global one
        edge = fleet.edges[0].node.federated
        msg = mesh_pb2.FederatedRound(model=MODEL, round_id="prox", n_features=4, n_classes=2,
                                      mean=np.zeros(4, "<f4").tobytes(), inv_std=np.ones(4, "<f4").tobytes(),
                                      classes=[0.0, 1.0], theta=np.zeros(10, "<f4").tobytes(), epochs=5, lr=0.2,
                                      holdout_fraction=0.25, max_rows=10_000)
        plain = np.frombuffer(edge.answer(msg).delta, "<f4")
        msg.mu = 5.0
        prox = np.frombuffer(edge.answer(msg).delta, "<f4")
        assert 0 < np.linalg.norm(prox) < 0.5 * np.linalg.norm(plain)
    finally:
        fleet.close()


def _poison(edge, factor: float) -> None:
    """This edge turns attacker: its real update, multiplied by ``factor`` (negative: sign-flipped)."""
    honest = edge.node.federated.answer

    def answer(msg):
        reply = honest(msg)
        if msg.phase == mesh_pb2.FederatedRound.TRAIN:
            reply.delta = (np.frombuffer(reply.delta, "<f4") * factor).astype("<f4").tobytes()
        return reply

    edge.node.federated.answer = answer


def test_a_poisoned_edge_among_4_does_not_move_the_median_but_moves_fedavg(tmp_path, capsys):
    fleet = FedFleet(tmp_path, federated_clip_norm=0.0, federated_strategy="median")
    try:
        fleet.serve(ROWS_PER_EDGE, seed=3)
        assert labelled(fleet, ROWS_PER_EDGE)
        _poison(fleet.edges[3], -30.0)
        moved = fleet.cloud.federated.run_round(MODEL, "poisoned, fedavg", strategy="fedavg")
        assert moved["state"] == "refused", moved  # FedAvg followed the attacker: worse than the champion
        assert moved["evaluation"]["challenger"] < moved["evaluation"]["champion"]
        # the configured strategy (median), through the operator's command
        from edgeloop.cli import main

        config = tmp_path / "cli.toml"
        config.write_text(f'[node]\ngrpc_port = {fleet.cloud.grpc_port}\nmetrics_port = 9\n'
                          f'[storage]\ndatabase = "{fleet.cloud.config.database}"\n')
        capsys.readouterr()
        assert main(["federated", "round", MODEL, "--reason", "poisoned, median", "--json", "--config",
                     str(config)]) == 0
        robust = json.loads(capsys.readouterr().out)
        assert robust["state"] == "published", robust
        assert robust["evaluation"]["challenger"] > robust["evaluation"]["champion"] + 0.05
        # from the new champion, the trimmed mean is not dragged back by the attacker either
        trimmed = fleet.cloud.federated.run_round(MODEL, "poisoned, trimmed mean", strategy="trimmed_mean")
        ev = trimmed["evaluation"]
        assert ev["challenger"] >= ev["champion"] - 0.02, trimmed
    finally:
        fleet.close()


def _rows_per_edge(cloud, outcome) -> dict:
    steps = cloud.store.executions(MODEL, outcome["run_id"])
    return next(x["properties"]["rows_per_edge"] for x in steps if x["type"] == "training")


def test_keyed_labels_join_on_the_edge_and_a_restart_between_two_rounds_keeps_the_rows(tmp_path):
    fleet = FedFleet(tmp_path)
    try:
        fleet.serve(ROWS_PER_EDGE, seed=5, keyed=True)  # labels name model + routing key + time, no request id
        assert labelled(fleet, ROWS_PER_EDGE), [e.node.local_examples.counts() for e in fleet.edges]
        first = fleet.cloud.federated.run_round(MODEL, "before the restart")
        assert first["state"] == "published", first
        train_rows = round(ROWS_PER_EDGE * 0.75)
        assert _rows_per_edge(fleet.cloud, first) == {e.id: train_rows for e in fleet.edges}

        edge = fleet.restart(0)  # the edge process restarts between two rounds
        assert edge.node.local_examples.counts()[MODEL] == (0, ROWS_PER_EDGE)
        assert edge.node.local_examples.models == {MODEL}  # known before it joins again (kept in its outbox)
        second = fleet.cloud.federated.run_round(MODEL, "after the restart")
        assert second["state"] in ("published", "refused"), second
        assert _rows_per_edge(fleet.cloud, second)[edge.id] == train_rows  # its rows outlived the restart
    finally:
        fleet.close()
