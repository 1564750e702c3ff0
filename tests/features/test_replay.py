"""Training and serving agree bit for bit: the online path (threads, labels as they arrive) vs replay."""
from __future__ import annotations

import threading
from collections import defaultdict

import numpy as np
import pytest

from edgeloop.features import FeatureError, FeatureState, labels_after, replay
from featurekit import mixed_definition, random_stream, twenty_definition


def serve_online(state: FeatureState, stream, split_compute: set[str] = frozenset(), threads: bool = True):
    """Each entity's owner-side timeline (labels that arrived by a request's time, then the request) on its own
    thread, entities in parallel.  Entities in ``split_compute`` use compute + update_with_row, the others serve."""
    per_entity = defaultdict(list)
    label_order = np.argsort(stream.arrivals, kind="stable")
    j = 0
    for i, key in enumerate(stream.keys):
        while j < len(label_order) and stream.arrivals[label_order[j]] <= stream.timestamps[i]:
            e = label_order[j]
            per_entity[stream.keys[e]].append(("label", e))
            j += 1
        per_entity[key].append(("request", i))
    vectors = np.full((len(stream.keys), state.definition.width), np.nan, dtype=np.float32)
    flags = np.zeros((len(stream.keys), 2), dtype=bool)
    errors = []

    def run(key, timeline):
        try:
            for kind, i in timeline:
                if kind == "label":
                    state.update_with_label(key, stream.labels[i], stream.timestamps[i])
                elif key in split_compute:
                    served = state.compute(key, stream.rows[i], stream.timestamps[i])
                    state.update_with_row(key, stream.rows[i], stream.timestamps[i])
                    vectors[i], flags[i] = served.vector, (served.cold, served.partial)
                else:
                    served = state.serve(key, stream.rows[i], stream.timestamps[i])
                    vectors[i], flags[i] = served.vector, (served.cold, served.partial)
        except Exception as exc:  # surfaced below
            errors.append(exc)

    if threads:
        workers = [threading.Thread(target=run, args=item) for item in per_entity.items()]
        for w in workers:
            w.start()
        for w in workers:
            w.join(timeout=60)
        assert not any(w.is_alive() for w in workers)
    else:
        for item in per_entity.items():
            run(*item)
    assert not errors, errors
    return vectors, flags


@pytest.mark.parametrize("make_definition", [mixed_definition, twenty_definition])
def test_online_and_replay_are_bit_identical(make_definition):
    d = make_definition()
    s = random_stream(11, 3000, 12, n_inputs=len(d.inputs))
    online = FeatureState(d, max_entities=64, stripes=4)
    vectors, flags = serve_online(online, s, split_compute={"entity-0", "entity-5"})
    trained = replay(d, s.rows, s.keys, s.timestamps, s.label_events())
    assert vectors.tobytes() == trained.vectors.tobytes()
    assert (flags[:, 0] == trained.cold).all() and (flags[:, 1] == trained.partial).all()
    assert trained.names == d.output_names
    st = online.stats()
    assert st.served == len(s.keys) and st.cold == 12 and st.partial == int(trained.partial.sum())
    assert st.labels == sum(1 for a in s.arrivals if a <= s.timestamps[-1])


def test_threads_and_sequential_give_the_same_state():
    d = twenty_definition()
    s = random_stream(12, 2000, 16, n_inputs=6)
    a, b = FeatureState(d, stripes=8), FeatureState(d, stripes=8)
    va, _ = serve_online(a, s, threads=True)
    vb, _ = serve_online(b, s, threads=False)
    assert va.tobytes() == vb.tobytes()
    for key in set(s.keys):
        assert a.export_entity(key) == b.export_entity(key)


def test_replay_reproduces_the_edges_evictions_when_asked():
    d = mixed_definition()
    s = random_stream(13, 1500, 40)
    edge = FeatureState(d, max_entities=8, stripes=2)
    vectors = np.empty((len(s.keys), d.width), dtype=np.float32)
    order = np.argsort(s.arrivals, kind="stable")
    j = 0
    for i, key in enumerate(s.keys):  # one node, one timeline: eviction depends on the global order
        while j < len(order) and s.arrivals[order[j]] <= s.timestamps[i]:
            e = order[j]
            edge.update_with_label(s.keys[e], s.labels[e], s.timestamps[e])
            j += 1
        vectors[i] = edge.serve(key, s.rows[i], s.timestamps[i]).vector
    assert edge.stats().evictions > 0
    same = replay(d, s.rows, s.keys, s.timestamps, s.label_events(), max_entities=8, stripes=2)
    unbounded = replay(d, s.rows, s.keys, s.timestamps, s.label_events())
    assert same.vectors.tobytes() == vectors.tobytes()
    assert unbounded.vectors.tobytes() != vectors.tobytes()  # evicted entities restart cold


def test_labels_after_delays_each_label():
    events = labels_after(["a", "b"], [1.0, 2.0], [0, 1], 1800.0)
    assert [tuple(e) for e in events] == [("a", 0.0, 1.0, 1801.0), ("b", 1.0, 2.0, 1802.0)]
    # one row late on a regular stream: row i sees the label of row i-1, never its own
    n = 50
    keys, ts = ["s"] * n, np.arange(n) * 1800.0
    rows = np.arange(n, dtype=np.float64)[:, None] * np.ones((1, 4))
    y = (np.arange(n) % 3 == 0).astype(float)
    got = replay(mixed_definition(), rows, keys, ts, labels_after(keys, ts, y, 1800.0))
    col = mixed_definition().output_names.index("label_lag_1")
    assert (got.vectors[2:, col] == y[1:-1]).all()


def test_replay_checks_its_inputs():
    d = mixed_definition()
    with pytest.raises(FeatureError, match="timestamps"):
        replay(d, np.zeros((3, 4)), ["a"] * 3, [1.0, 3.0, 2.0])
    with pytest.raises(FeatureError, match="rows"):
        replay(d, np.zeros((3, 5)), ["a"] * 3, [1.0, 2.0, 3.0])
