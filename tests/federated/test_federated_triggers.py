"""The CT triggers start federated rounds: a schedule and the drift of the edges' statistics each start one,
and a published version follows; the firing and the round's outcome are recorded like the CT loop's."""
from __future__ import annotations

import grpc
from fedkit import ROWS_PER_EDGE, FedFleet, labelled
from loopkit import MODEL, wait_for

from edgeloop.protocol import mesh_pb2, mesh_pb2_grpc

T0 = 1_800_000_000.0


def test_a_schedule_firing_starts_a_round_and_a_version_is_published(tmp_path):
    fleet = FedFleet(tmp_path, schedule_s=60.0)
    try:
        fleet.serve(ROWS_PER_EDGE, seed=7)
        assert labelled(fleet, ROWS_PER_EDGE)
        triggers = fleet.cloud.federated.triggers
        assert triggers.step(T0) == []  # the schedule counts from here
        assert triggers.step(T0 + 30) == []
        (outcome,) = triggers.step(T0 + 61)
        assert outcome["kind"] == "schedule" and outcome["state"] == "published", outcome
        assert outcome["version"] == 2
        (recorded,) = fleet.cloud.store.triggers(MODEL)
        assert recorded["kind"] == "schedule" and recorded["run_id"] == outcome["run_id"]
        assert recorded["outcome"].startswith("published: version 2")
        run = fleet.cloud.store.executions(MODEL, outcome["run_id"])[0]
        assert run["properties"]["evidence"].startswith("schedule: ")
        assert wait_for(lambda: all(e.ready(2) for e in fleet.edges), timeout=30)
        assert triggers.step(T0 + 62) == []  # the next schedule counts from the round
    finally:
        fleet.close()


def _stats(node: str, counts, version: int = 1) -> mesh_pb2.StatusReport:
    """A status report carrying one input feature's histogram (the period's counts), as an edge sends it.

    The tensor is named apart from the model's real input, so the edges' own periodic reports (their
    histograms of what they served) never mix with these under a slow machine's timing."""
    n = int(sum(counts))
    return mesh_pb2.StatusReport(node_id=node, timestamp_ms=1, feature_stats=[mesh_pb2.FeatureStats(
        model=MODEL, model_version=version, tensor="probe_input", feature=0, bin_edges=[-2.0, -1.0, 0.0, 1.0, 2.0],
        counts=list(counts), n=n, mean=0.0, m2=float(n))])


def test_drift_in_the_edges_statistics_starts_a_round(tmp_path):
    fleet = FedFleet(tmp_path, reference_rows=400, monitor_window=100, drift_windows=2, cooldown_s=0.0)
    try:
        fleet.serve(ROWS_PER_EDGE, seed=8)
        assert labelled(fleet, ROWS_PER_EDGE)
        triggers = fleet.cloud.federated.triggers
        channel = grpc.insecure_channel(fleet.cloud.address)
        stub = mesh_pb2_grpc.CoordinatorStub(channel)

        def report(counts):
            for e in fleet.edges:
                stub.ReportStatus(_stats(e.id, counts), timeout=10)

        report([100, 100, 100, 100])  # the reference: what each edge summarised first
        assert triggers.step(T0) == []
        report([25, 25, 25, 25])  # a window like the reference: no alarm
        assert triggers.step(T0 + 5) == []  # (the histograms are read at most every DRIFT_EVERY_S)
        assert triggers.step(T0 + 20) == []
        report([0, 0, 5, 95])  # the inputs moved
        assert triggers.step(T0 + 40) == []  # one alarming window; drift_windows = 2
        streaks = triggers.watches[MODEL].engine._streaks
        assert {key[2] for key, n in streaks.items() if n} == {e.id for e in fleet.edges}
        report([0, 0, 10, 90])
        (outcome,) = triggers.step(T0 + 60)
        assert outcome["kind"] == "drift" and outcome["state"] == "published", outcome
        (recorded,) = fleet.cloud.store.triggers(MODEL)
        assert "PSI" in recorded["evidence"] and recorded["outcome"].startswith("published")
        channel.close()
    finally:
        fleet.close()


def test_the_champions_accuracy_on_the_edges_falls_and_the_performance_trigger_starts_a_round(tmp_path):
    fleet = FedFleet(tmp_path, monitor_window=200, performance_margin=0.05)
    try:
        store = fleet.cloud.store

        def labels_stored(n):
            return wait_for(lambda: sum(m.labels for m in store.model_counts() if m.model == MODEL) >= n, timeout=30)

        triggers = fleet.cloud.federated.triggers
        assert triggers.step(T0) == []
        fleet.serve(60, seed=9, changed=False)  # the concept the champion learned
        assert labelled(fleet, 60) and labels_stored(240)
        assert triggers.step(T0 + 1) == []  # 240 new labels >= monitor_window: measured, the reference
        reference = triggers.watches[MODEL].champion_score
        assert reference is not None and reference > 0.85
        fleet.serve(200, seed=10)  # the concept changed
        assert labelled(fleet, 260) and labels_stored(1040)
        (outcome,) = triggers.step(T0 + 2)
        assert outcome["kind"] == "performance" and outcome["state"] == "published", outcome
        (recorded,) = store.triggers(MODEL)
        assert recorded["evidence"].startswith("performance: accuracy") and "below the champion's" in \
            recorded["evidence"]
    finally:
        fleet.close()


def test_a_manual_firing_without_enough_edges_is_recorded_as_stopped(tmp_path):
    fleet = FedFleet(tmp_path, federated_min_edges=5)  # 4 edges joined
    try:
        triggers = fleet.cloud.federated.triggers
        assert triggers.step(T0) == []
        with grpc.insecure_channel(fleet.cloud.address) as channel:  # `edgeloop retrain`'s RPC
            reply = mesh_pb2_grpc.FleetStub(channel).Retrain(mesh_pb2.CtRequest(model=MODEL, reason="operator asked"),
                                                             timeout=10)
        assert "federated round" in reply.text
        assert fleet.cloud.ct.step(T0 + 1) == []  # the central loop leaves a federated model alone
        (outcome,) = triggers.step(T0 + 1)
        assert outcome["kind"] == "manual" and outcome["state"] == "stopped", outcome
        (recorded,) = fleet.cloud.store.triggers(MODEL)
        assert recorded["outcome"].startswith("stopped: RoundError: 4 edge(s) joined; a round needs >= 5")
        assert "requested: operator asked" in recorded["evidence"]
    finally:
        fleet.close()
