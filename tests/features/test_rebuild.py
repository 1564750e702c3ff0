"""``FeatureState.rebuild_entity``: an entity rebuilt from its logged rows and labels serves as a continuous one."""
from __future__ import annotations

import numpy as np
import pytest

from edgeloop.features import FeatureDefinition, FeatureError, FeatureState

DEFINITION = FeatureDefinition.from_dict({
    "version": 1, "entity": "meter", "inputs": ["a", "b"],
    "features": [{"op": "lag", "col": "a", "k": 2}, {"op": "std", "col": "b", "k": 5},
                 {"op": "delta", "col": "a", "k": 3},
                 {"op": "since_last"}, {"op": "label_lag", "k": 2}, {"op": "label_mean", "k": 6}]})


def entity_stream(n: int, seed: int = 3):
    rng = np.random.default_rng(seed)
    rows = rng.standard_normal((n, 2)).astype(np.float32)
    ts = 1000.0 + np.cumsum(rng.uniform(0.1, 2.0, n))
    return rows, ts


@pytest.mark.parametrize("logged", [None, 5])  # the whole log, or only as much as the longest windows need
def test_a_rebuilt_entity_serves_the_vectors_of_a_continuous_one(logged):
    rows, ts = entity_stream(60)
    live = FeatureState(DEFINITION)
    labels = []  # (label, event timestamp) in arrival order: each row's label arrives two rows later
    for i in range(40):
        if i >= 2:
            label = float(rows[i - 2, 0] > 0)
            live.update_with_label("e", label, ts[i - 2])
            labels.append((label, ts[i - 2]))
        live.serve("e", rows[i], ts[i])
    plan = live.plan
    keep = max(plan.H, plan.L) if logged is None else logged
    keep = max(keep, plan.H)  # rows: at least the longest column window
    label_keep = max(plan.L, keep)
    newest_labels = sorted(labels, key=lambda x: x[1])[-label_keep:]  # the newest events' labels ...
    in_arrival = [x for x in labels if x in newest_labels]  # ... in arrival order
    rebuilt = FeatureState(DEFINITION)
    assert rebuilt.rebuild_entity("e", rows[40 - keep:40], ts[40 - keep:40], in_arrival)
    for i in range(40, 60):
        a, b = live.serve("e", rows[i], ts[i]), rebuilt.serve("e", rows[i], ts[i])
        assert a.vector.tobytes() == b.vector.tobytes() and (a.cold, a.partial) == (b.cold, b.partial)
    # a log shorter than the windows gives a different (partial) state: the comparison above can fail
    short = FeatureState(DEFINITION)
    short.rebuild_entity("e", rows[38:40], ts[38:40], in_arrival[-1:])
    assert short.serve("e", rows[40], ts[40]).partial


def test_a_rebuild_never_replaces_a_held_entity_and_checks_its_history():
    rows, ts = entity_stream(4)
    state = FeatureState(DEFINITION)
    state.serve("e", rows[0], ts[0])
    assert not state.rebuild_entity("e", rows, ts)  # a request got here first: its history continues
    with pytest.raises(FeatureError) as err:
        state.rebuild_entity("f", rows, ts[:2])
    assert "times" in str(err.value)
    bad = rows.copy()
    bad[1, 0] = np.nan
    with pytest.raises(FeatureError) as err:
        state.rebuild_entity("f", bad, ts)
    assert "a" in str(err.value) and "f" not in state
    assert state.rebuild_entity("f", rows, ts, [(1.0, ts[0])]) and "f" in state
    assert state.stats().rows == 1 + 4 and state.stats().labels == 1
