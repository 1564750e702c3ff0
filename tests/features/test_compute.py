"""The one implementation: values against a plain-Python oracle, cold/partial defaults, point in time."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgeloop.features.compute import LABEL_SLACK
from edgeloop.features import (FeatureDefinition, FeatureError, FeatureState, Plan, compute, replay, serve,
                               update_with_label, update_with_row)
from featurekit import INPUTS, Reference, mixed_definition, random_stream


def drive_reference(definition, stream):
    """The oracle driven by the order rule: labels that arrived by a request's time go first."""
    ref = Reference(definition)
    order = np.argsort(stream.arrivals, kind="stable")
    j = 0
    out, cold, partial = [], [], []
    for i, key in enumerate(stream.keys):
        t = stream.timestamps[i]
        while j < len(order) and stream.arrivals[order[j]] <= t:
            e = order[j]
            ref.label(stream.keys[e], stream.labels[e], stream.timestamps[e])
            j += 1
        v, c, p = ref.serve(key, stream.rows[i], t)
        out.append(v)
        cold.append(c)
        partial.append(p)
    return np.array(out), np.array(cold), np.array(partial)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_values_match_the_oracle(seed):
    d = mixed_definition()
    s = random_stream(seed, 1500, 7)
    got = replay(d, s.rows, s.keys, s.timestamps, s.label_events())
    want, cold, partial = drive_reference(d, s)
    np.testing.assert_allclose(got.vectors, want, rtol=2e-6, atol=2e-6)
    assert (got.cold == cold).all() and (got.partial == partial).all()
    assert cold.sum() == 7 and 0 < partial.sum() < len(s.keys)


def test_full_label_buffer_keeps_the_newest_by_timestamp():
    d = mixed_definition()
    plan = Plan(d)
    assert plan.L == 4 + LABEL_SLACK
    rec = plan.new_record()
    for ts in (5.0, 1.0, 3.0, 2.0, 4.0, 0.5) + tuple(10.0 + i for i in range(LABEL_SLACK)):
        update_with_label(plan, rec, ts * 10, ts)  # out of order; 1.0 then 0.5 fall off the full buffer
    assert update_with_label(plan, rec, 99.0, 3.0)  # a retried upload replaces, does not add
    v = compute(plan, rec, np.zeros(4), 9.0).vector  # the labels at 10.. are for later events
    names = d.output_names
    assert v[names.index("label_lag_1")] == 50.0
    assert v[names.index("label_lag_3")] == 99.0
    assert v[names.index("label_mean_4")] == pytest.approx((20 + 99 + 40 + 50) / 4)
    assert not update_with_label(plan, rec, 7.0, 0.1)  # older than every kept label of a full buffer


def test_cold_and_partial_use_documented_defaults():
    d = mixed_definition()
    plan = Plan(d)
    rec = plan.new_record()
    x = np.array([2.0, 3.0, 4.0, 9.0])
    first = serve(plan, rec, x, 10.0)
    assert first.cold and first.partial
    got = dict(zip(d.output_names, first.vector.tolist()))
    assert got["lag_a_1"] == 2.0 and got["lag_a_3"] == 2.0  # lag: the current value
    assert got["delta_b_2"] == 0.0 and got["std_b_5"] == 0.0 and got["dev_c_3"] == 0.0
    assert got["mean_a_4"] == 2.0 and got["mean_c_7"] == -1.0  # declared default wins
    assert got["since_last"] == 0.0 and got["label_lag_1"] == 0.0 and got["label_mean_4"] == 0.5
    second = serve(plan, rec, np.array([5.0, 7.0, 1.0, 9.0]), 12.5)
    got = dict(zip(d.output_names, second.vector.tolist()))
    assert not second.cold and second.partial
    assert got["lag_a_3"] == 2.0  # shrunken window: the oldest row there is
    assert got["delta_b_2"] == 4.0 and got["since_last"] == 2.5


def test_full_history_is_not_partial():
    d = FeatureDefinition.from_dict({"version": 1, "entity": "k", "inputs": ["a"],
                                     "features": [{"op": "mean", "col": "a", "k": 3}, {"op": "label_lag", "k": 1}]})
    st = FeatureState(d)
    flags = []
    for i in range(5):
        if i:
            st.update_with_label("e", 1.0, float(i - 1))
        r = st.serve("e", [float(i)], float(i))
        flags.append((r.cold, r.partial))
    assert flags == [(True, True), (False, True), (False, True), (False, False), (False, False)]
    assert st.stats().cold == 1 and st.stats().partial == 3


def test_point_in_time_labels_never_see_the_current_or_a_later_event():
    """The label equals a function of the row; any leak of the own label would show as a perfect match."""
    d = FeatureDefinition.from_dict({"version": 1, "entity": "k", "inputs": ["x"],
                                     "features": [{"op": "label_lag", "k": 1}, {"op": "label_mean", "k": 2}]})
    st = FeatureState(d)
    rng = np.random.default_rng(3)
    xs = rng.standard_normal(400)
    seen_lag = []
    for i, x in enumerate(xs):
        t = float(i)
        # arriving early: this row's own label and the next row's label (a clock-skewed labeller)
        st.update_with_label("s", float(x > 0), t)
        st.update_with_label("s", float(xs[i + 1] > 0) if i + 1 < len(xs) else 0.0, t + 1)
        v = st.serve("s", [x], t).vector
        seen_lag.append(v[1])
        if i:
            assert v[1] == float(xs[i - 1] > 0)  # the label of the event just before
            before = [float(x > 0) for x in xs[max(0, i - 2): i]]
            assert v[2] == pytest.approx(sum(before) / len(before))
    own = (xs > 0).astype(np.float32)
    assert (np.array(seen_lag)[1:] == own[1:]).mean() < 0.7  # a leak would make this 1.0


@pytest.mark.parametrize("seed", [4, 5])
def test_point_in_time_a_vector_depends_only_on_what_came_before(seed):
    """Vector i of the full stream equals vector i of the stream cut right after request i."""
    d = mixed_definition()
    s = random_stream(seed, 600, 5)
    full = replay(d, s.rows, s.keys, s.timestamps, s.label_events()).vectors
    for i in np.random.default_rng(seed).choice(len(s.keys), 12, replace=False):
        t = s.timestamps[i]
        events = [e for e in s.label_events() if e[3] <= t]
        cut = replay(d, s.rows[: i + 1], s.keys[: i + 1], s.timestamps[: i + 1], events).vectors
        assert full[i].tobytes() == cut[i].tobytes()
        # and the future matters: tampering with later rows and labels changes nothing at i
        rows = s.rows.copy()
        rows[i + 1:] += 1000.0
        later = [(k, 1.0 - y if a > t else y, ts, a) for k, y, ts, a in s.label_events()]
        assert replay(d, rows, s.keys, s.timestamps, later).vectors[i].tobytes() == full[i].tobytes()


def test_float32_and_float64_rows_give_the_same_vector():
    d = mixed_definition()
    s = random_stream(6, 200, 3)
    a, b = FeatureState(d), FeatureState(d)
    for k, row, t in zip(s.keys, s.rows, s.timestamps):
        r32 = row.astype(np.float32)
        va = a.serve(k, r32, t).vector
        vb = b.serve(k, r32.astype(np.float64)[None, :], t).vector  # and a batch of one row
        assert va.tobytes() == vb.tobytes()


def test_compute_then_update_equals_serve():
    d = mixed_definition()
    s = random_stream(7, 300, 4)
    plan = Plan(d)
    recs_a: dict[str, np.ndarray] = {}
    recs_b: dict[str, np.ndarray] = {}
    for k, row, t in zip(s.keys, s.rows, s.timestamps):
        ra = recs_a.setdefault(k, plan.new_record())
        rb = recs_b.setdefault(k, plan.new_record())
        va = compute(plan, ra, row, t)
        update_with_row(plan, ra, row, t)
        vb = serve(plan, rb, row, t)
        assert va.vector.tobytes() == vb.vector.tobytes() and va[1:] == vb[1:]
    assert all(recs_a[k].tobytes() == recs_b[k].tobytes() for k in recs_a)


@pytest.mark.parametrize("bad, field", [
    ([1.0, np.nan, 0.0, 0.0], "b"),
    ([np.inf, 0.0, 0.0, 0.0], "a"),
    ([1.0, 2.0], "row"),
    ("not numbers", "row"),
])
def test_bad_rows_are_refused_naming_the_input(bad, field):
    st = FeatureState(mixed_definition())
    with pytest.raises((FeatureError, TypeError)) as info:
        st.serve("e", np.array(bad) if not isinstance(bad, str) else bad, 1.0)
    if isinstance(info.value, FeatureError):
        assert info.value.field == field
    assert len(st) == 0  # a refused request leaves no state behind


def test_non_finite_in_an_unused_input_is_the_models_business():
    st = FeatureState(mixed_definition())
    v = st.serve("e", [1.0, 2.0, 3.0, np.nan], 1.0).vector  # price feeds no derived feature
    assert np.isnan(v[INPUTS.index("price")])


@pytest.mark.parametrize("label, ts, field", [(np.nan, 1.0, "label"), (1.0, np.inf, "timestamp"),
                                              ("x", 1.0, "label"), (1.0, "noon", "timestamp"),
                                              (None, 1.0, "label")])
def test_bad_labels_are_refused(label, ts, field):
    st = FeatureState(mixed_definition())
    with pytest.raises(FeatureError) as info:
        st.update_with_label("e", label, ts)
    assert info.value.field == field


@pytest.mark.parametrize("t", [float("nan"), float("inf"), "noon", None])
def test_bad_request_timestamps_are_refused(t):
    st = FeatureState(mixed_definition())
    for call in (st.serve, st.compute, st.update_with_row):
        with pytest.raises(FeatureError) as info:
            call("e", [1.0, 2.0, 3.0, 4.0], t)
        assert info.value.field == "timestamp"
    assert len(st) == 0


def test_the_kernel_guards_its_memory():
    """Wrong plans or records raise instead of reading outside the arrays."""
    from edgeloop.kernels import features as k
    plan = Plan(mixed_definition())
    rec, row, out = plan.new_record(), np.zeros(4), np.empty(plan.width, np.float32)
    bad_codes = plan.codes.copy()
    bad_codes[5] = 99  # the first kept column's input index: outside the row
    with pytest.raises(ValueError):
        k.serve(rec, bad_codes, plan.defaults, row, 1.0, out)
    with pytest.raises(ValueError):
        k.serve(rec[:-1].copy(), plan.codes, plan.defaults, row, 1.0, out)
    broken = rec.copy()
    broken[k.SLOT_HEAD] = 1e9
    with pytest.raises(ValueError):
        k.serve(broken, plan.codes, plan.defaults, row, 1.0, out)
    with pytest.raises(ValueError):
        k.serve(rec, plan.codes, plan.defaults, row, 1.0, np.empty(plan.width - 1, np.float32))
    with pytest.raises(ValueError):
        k.push_row(plan.blank, plan.codes, row, 1.0)  # read-only record


_feature = st.one_of(
    st.builds(lambda op, col, k: {"op": op, "col": col, "k": k},
              st.sampled_from(["lag", "delta", "mean", "std", "dev"]), st.sampled_from(["a", "b", "c"]),
              st.integers(1, 12)),
    st.builds(lambda op, k: {"op": op, "k": k}, st.sampled_from(["label_lag", "label_mean"]), st.integers(1, 12)),
    st.just({"op": "since_last"}),
)


@settings(max_examples=25, deadline=None)
@given(features=st.lists(_feature, min_size=1, max_size=10), seed=st.integers(0, 2**16),
       entities=st.integers(1, 4), delay=st.floats(0.0, 30.0))
def test_any_definition_matches_the_oracle(features, seed, entities, delay):
    named = [dict(f, name=f"f{i}") for i, f in enumerate(features)]
    d = FeatureDefinition.from_dict({"version": 1, "entity": "k", "inputs": INPUTS, "features": named})
    s = random_stream(seed, 120, entities, max_delay=delay)
    got = replay(d, s.rows, s.keys, s.timestamps, s.label_events())
    want, cold, partial = drive_reference(d, s)
    np.testing.assert_allclose(got.vectors, want, rtol=2e-6, atol=2e-6)
    assert (got.cold == cold).all() and (got.partial == partial).all()
