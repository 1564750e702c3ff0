"""End to end on loopback: a coordinator and two real edge nodes; the stream changes concept at a known
round, labels arrive one round late, the loop (stepped by the test) retrains and both edges serve the
new model; accuracy comes back near its level before the change."""
from __future__ import annotations

import numpy as np
from loopkit import MODEL, Fleet, wait_for

from edgeloop.ct import registry

ROUND = 200
CHANGE_AT = 6
MAX_ROUNDS = 14


def test_concept_change_to_a_new_model_served_by_both_edges(tmp_path):
    fleet = Fleet(tmp_path)
    try:
        before, runs, changed_round = [], [], None
        for r in range(MAX_ROUNDS):
            changed = r >= CHANGE_AT
            accuracy, versions = fleet.serve(ROUND, changed)
            if not changed:
                before.append(accuracy)
            assert fleet.settle(), (fleet.stored_samples(), fleet.stored_labels(), fleet.n)
            runs += fleet.cloud.ct.step(1000.0 + r)
            if any(run.state == "published" for run in runs):
                changed_round = r
                break
        assert changed_round is not None, f"no model published; triggers {fleet.cloud.store.triggers(MODEL)}"
        (run,) = [run for run in runs if run.state == "published"]
        fired = fleet.cloud.store.triggers(MODEL)
        assert len(fired) == 1 and fired[0]["kind"] in ("drift", "performance") and fired[0]["evidence"]
        assert changed_round <= CHANGE_AT + 4
        assert wait_for(lambda: all(e.ready(run.version) for e in fleet.edges), timeout=30)
        accuracy, versions = fleet.serve(400, True)
        assert versions == {run.version}
        assert accuracy >= float(np.mean(before)) - 0.05, (accuracy, before)
        # the edges report what they serve; lineage names them
        assert wait_for(lambda: set(registry.lineage(fleet.cloud.store, MODEL, run.version)["serving_edges"])
                        == {"edge-a", "edge-b"}, timeout=30)
    finally:
        fleet.close()


def test_a_stationary_stream_of_the_same_length_fires_nothing(tmp_path):
    fleet = Fleet(tmp_path)
    try:
        runs = []
        for r in range(MAX_ROUNDS):
            accuracy, versions = fleet.serve(ROUND, False)
            assert versions == {1}
            assert fleet.settle(), (fleet.stored_samples(), fleet.stored_labels(), fleet.n)
            runs += fleet.cloud.ct.step(1000.0 + r)
        fired = fleet.cloud.store.triggers(MODEL)
        assert runs == [] and fired == [], (runs, [(t["kind"], str(t["evidence"])[:400]) for t in fired])
        st = fleet.cloud.ct.models[MODEL]
        assert st.profile is not None and st.cursor > 0  # it was watching, and saw nothing worth a run
        assert all(e.ready(1) and not e.ready(2) for e in fleet.edges)
    finally:
        fleet.close()
