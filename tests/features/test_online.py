"""The online head (``edgeloop.features.online``): its math against a brute-force reference, point in time,
what it refuses to learn, its place in snapshots and hand-overs, and its part of the definition."""
from __future__ import annotations

import copy
import struct

import numpy as np
import pytest

from edgeloop.features import DefinitionError, FeatureDefinition, FeatureState, StateError
from edgeloop.features.online import FLOOR, OnlineLayout
from edgeloop.features.state import _EXPORT_HEAD
from featurekit import INPUTS, mixed_definition

CLASSES = [2.0, -1.0, 5.0]  # label values in the model's column order: not 0..K-1, so the mapping matters


def online_definition(**online) -> FeatureDefinition:
    spec = {"lr": 0.1, "classes": CLASSES, "pending": 16, **online}
    return mixed_definition(online=spec)


def random_proba(rng, n: int, k: int) -> np.ndarray:
    """FP32 probabilities as a model gives them (some columns nearly 0)."""
    p = rng.dirichlet(np.full(k, 0.7), n).astype(np.float32)
    p[rng.random(n) < 0.1, 0] = 0.0  # a hard 0: floored, never -inf
    return p


def serve_one(st: FeatureState, key: str, row, t: float, proba) -> tuple[np.ndarray, np.ndarray]:
    """What the node does for one keyed row: the vector from the entity's state, then the head's logits."""
    vector = st.serve(key, np.asarray(row, np.float64), t).vector
    logits = st.online_logits(key, t, vector.reshape(1, -1), np.asarray(proba, np.float32).reshape(1, -1))
    assert logits is not None
    return vector, logits[0]


class BruteHead:
    """The head written from its description, with no running moments: every labelled z is kept and the
    standardisation is the plain (population) mean and standard deviation of all of them."""

    def __init__(self, width: int, classes, lr: float, l2: float) -> None:
        self.classes = list(classes)
        self.lr, self.l2 = lr, l2
        d = width + len(self.classes)
        self.w = np.zeros((len(self.classes), d))
        self.b = np.zeros(len(self.classes))
        self.labelled: list[np.ndarray] = []
        self.waiting: dict[float, np.ndarray] = {}

    def _standardise(self, z: np.ndarray) -> np.ndarray:
        if not self.labelled:
            return z
        seen = np.array(self.labelled)
        sd = np.sqrt(((seen - seen.mean(axis=0)) ** 2).mean(axis=0))
        sd[sd < 1e-6] = 1.0
        return (z - seen.mean(axis=0)) / sd

    def logits(self, vector, proba, t: float) -> np.ndarray:
        logp = np.log(np.maximum(np.asarray(proba, np.float64), FLOOR))
        z = np.concatenate([np.asarray(vector, np.float64), logp])
        self.waiting[t] = z
        return logp + self.w @ self._standardise(z) + self.b

    def learn(self, t: float, label: float) -> None:
        z = self.waiting.pop(t)
        self.labelled.append(z)  # the moments include the row being learned
        zs = self._standardise(z)
        k = len(self.classes)
        f = z[-k:] + self.w @ zs + self.b
        p = np.exp(f - f.max())
        p /= p.sum()
        grad = p - np.eye(k)[self.classes.index(label)]
        self.w = self.w - self.lr * (np.outer(grad, zs) + self.l2 * self.w)
        self.b = self.b - self.lr * grad


@pytest.mark.parametrize("lr, l2, pending", [(0.1, 0.0, 16), (0.3, 0.05, 1), (1.0, 1.0, 4)])
def test_head_equals_a_brute_force_reference_at_every_row(lr, l2, pending):
    d = online_definition(lr=lr, l2=l2, pending=pending)
    st = FeatureState(d)
    rng = np.random.default_rng(7)
    n = 200
    rows = rng.standard_normal((n, len(INPUTS))) * 3 + 1
    times = np.cumsum(rng.uniform(0.5, 2.0, n))
    labels = rng.choice(CLASSES, n)
    proba = random_proba(rng, n, len(CLASSES))
    ref = BruteHead(d.width, CLASSES, lr, l2)
    for i in range(n):
        if i:  # the previous row's label, one row late
            assert st.update_with_label("m", labels[i - 1], times[i - 1])
            ref.learn(times[i - 1], labels[i - 1])
        vector, got = serve_one(st, "m", rows[i], times[i], proba[i])
        want = ref.logits(vector, proba[i], times[i])
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12, err_msg=f"row {i}")
    stats = st.stats()
    assert (stats.online_served, stats.online_learned, stats.online_unmatched) == (n, n - 1, 0)
    assert np.abs(ref.w).max() > 0.01  # the head did learn: the comparison was not of zeros


def test_without_labels_the_logits_are_the_models_log_probabilities():
    st = FeatureState(online_definition())
    rng = np.random.default_rng(1)
    proba = random_proba(rng, 40, 3)
    proba[0] = [0.0, 0.0, 1.0]
    for i in range(40):
        _vector, got = serve_one(st, "m", rng.standard_normal(4), float(i), proba[i])
        assert got.tobytes() == np.log(np.maximum(proba[i].astype(np.float64), FLOOR)).tobytes(), i
    assert np.isfinite(np.log(np.maximum(proba[0].astype(np.float64), FLOOR))).all()
    assert st.online_logits("never-served", 1.0, np.zeros((1, st.plan.width), np.float32),
                            np.full((1, 3), 1 / 3, np.float32)) is None  # not held: the model's output stands


def _twins(n_rows: int, seed: int = 3):
    d = online_definition(lr=0.5)
    rng = np.random.default_rng(seed)
    rows = rng.standard_normal((n_rows, len(INPUTS)))
    proba = random_proba(rng, n_rows, 3)
    return FeatureState(d), FeatureState(d), rows, proba


def test_a_label_only_affects_rows_served_after_it_was_applied():
    a, b, rows, proba = _twins(8)
    got_a, got_b = [], []
    for i in range(8):
        if i == 5:  # only ``a`` learns the label of row 2, after rows 0..4 were served
            assert a.update_with_label("m", 5.0, 2.0)
        got_a.append(serve_one(a, "m", rows[i], float(i), proba[i]))
        got_b.append(serve_one(b, "m", rows[i], float(i), proba[i]))
    for i in range(8):
        same_logits = got_a[i][1].tobytes() == got_b[i][1].tobytes()
        assert same_logits == (i < 5), i
    assert a.stats().online_learned == 1 and b.stats().online_learned == 0


def test_a_rows_own_label_never_affects_its_own_logits():
    """A label that arrives before its row was served has no row to learn from: not learned, counted,
    and the row (served after it) gets what it would have got without that label."""
    a, b, rows, proba = _twins(6)
    for i in range(3):
        serve_one(a, "m", rows[i], float(i), proba[i])
        serve_one(b, "m", rows[i], float(i), proba[i])
    a.update_with_label("m", 2.0, 3.0)  # the label of the row at t=3, which is not served yet
    assert a.stats().online_unmatched == 1 and a.stats().online_learned == 0
    va, la = serve_one(a, "m", rows[3], 3.0, proba[3])
    vb, lb = serve_one(b, "m", rows[3], 3.0, proba[3])
    assert va.tobytes() == vb.tobytes() and la.tobytes() == lb.tobytes()
    a.update_with_label("m", 2.0, 3.0)  # a retried upload of that label: now its row waits, so it is learned
    assert a.stats().online_learned == 1


def _head(st: FeatureState, key: str) -> np.ndarray:
    return st.plan.head(st.decode_export(key, st.export_entity(key))).copy()


def test_unknown_classes_and_rows_that_left_the_ring_are_not_learned():
    d = online_definition(pending=2)
    st = FeatureState(d)
    rng = np.random.default_rng(4)
    for t in (1.0, 2.0, 3.0):  # ring of 2: the row at t=1 is overwritten by the one at t=3
        serve_one(st, "m", rng.standard_normal(4), t, [0.2, 0.3, 0.5])
    before = _head(st, "m")
    st.update_with_label("m", 2.0, 1.0)  # its row left the ring
    st.update_with_label("m", 7.0, 2.0)  # not one of the classes
    st.update_with_label("m", 2.0, 9.0)  # no row served at t=9
    st.update_with_label("other", 2.0, 2.0)  # an entity with no head yet
    stats = st.stats()
    assert (stats.online_learned, stats.online_unmatched) == (0, 4)
    assert _head(st, "m").tobytes() == before.tobytes()
    st.update_with_label("m", 5.0, 3.0)  # the row at t=3 still waits
    st.update_with_label("m", -1.0, 2.0)  # ... and t=2: an unknown class did not spend it
    assert st.stats().online_learned == 2
    learned = _head(st, "m")
    assert learned.tobytes() != before.tobytes()
    st.update_with_label("m", -1.0, 2.0)  # a retried upload: its row was learned once, never twice
    st.update_with_label("m", 2.0, 0.0)  # t=0: the time of the slots emptied by learning; none waits
    assert (st.stats().online_learned, st.stats().online_unmatched) == (2, 6)
    assert _head(st, "m").tobytes() == learned.tobytes()


def _trained(seed: int = 5, n: int = 60, entities: int = 4):
    d = online_definition(lr=0.3, l2=0.01)
    st = FeatureState(d, max_entities=64, stripes=4)
    rng = np.random.default_rng(seed)
    keys = [f"e{int(i)}" for i in rng.integers(0, entities, n)]
    last: dict[str, float] = {}
    for i, key in enumerate(keys):
        t = float(i + 1)
        if key in last:
            st.update_with_label(key, float(rng.choice(CLASSES)), last[key])
        serve_one(st, key, rng.standard_normal(4), t, random_proba(rng, 1, 3)[0])
        last[key] = t
    assert st.stats().online_learned > 20
    return st, sorted(set(keys)), last, n


def _continue(st: FeatureState, keys, last, n) -> list[bytes]:
    """Label every entity's last row, then serve each one more row: the logits (and vectors) as bytes."""
    rng = np.random.default_rng(99)
    out = []
    for i, key in enumerate(keys):
        st.update_with_label(key, 5.0, last[key])
        vector, logits = serve_one(st, key, rng.standard_normal(4), float(n + 10 + i), [0.1, 0.6, 0.3])
        out.append(vector.tobytes() + logits.tobytes())
    return out


def test_snapshot_restore_keeps_the_head(tmp_path):
    st, keys, last, n = _trained()
    st.snapshot(tmp_path / "s.npz")
    back = FeatureState(st.definition, max_entities=64, stripes=4)
    assert back.restore(tmp_path / "s.npz") == len(keys)
    assert [_head(back, k).tobytes() for k in keys] == [_head(st, k).tobytes() for k in keys]
    assert _continue(back, keys, last, n) == _continue(st, keys, last, n)
    assert back.stats().online_learned == len(keys)  # the pending rows came along: their labels were learned
    plain = FeatureState(st.definition.without_online())
    with pytest.raises(StateError) as info:  # the head is part of the record: not a snapshot of the same state
        plain.restore(tmp_path / "s.npz")
    assert info.value.field == "snapshot.meta.definition_digest"


def test_export_import_moves_the_head():
    st, keys, last, n = _trained()
    new_owner = FeatureState(st.definition)
    for key in keys:
        new_owner.import_entity(key, st.export_entity(key, remove=True))
    assert len(st) == 0
    again, _, _, _ = _trained()
    assert _continue(new_owner, keys, last, n) == _continue(again, keys, last, n)


def _export_at(st: FeatureState, key: str, offset: int, value: float) -> bytes:
    """The entity's export with the head's value at ``offset`` replaced."""
    data = bytearray(st.export_entity(key))
    at = _EXPORT_HEAD.size + len(key.encode()) + 8 * (st.plan.kernel_len + offset)
    data[at: at + 8] = struct.pack("<d", value)
    return bytes(data)


def test_check_refuses_a_corrupted_head():
    st, keys, _last, _n = _trained()
    layout: OnlineLayout = st.plan.online
    key = keys[0]
    cases = {
        "pending flag": (layout.o_pending, 0.5, "record.online.pending"),
        "last pending flag": (layout.o_pending + (layout.P - 1) * layout.slot, 2.0, "record.online.pending"),
        "negative m2": (layout.o_m2 + 1, -1e-3, "record.online.m2"),
        "next = P": (1, float(layout.P), "record.online.next"),
        "next fractional": (1, 0.5, "record.online.next"),
        "next negative": (1, -1.0, "record.online.next"),
        "n negative": (0, -1.0, "record.online.n"),
        "n fractional": (0, 2.5, "record.online.n"),
        "huge weight": (layout.o_w + 3, 1e200, "record.online"),
    }
    target = FeatureState(st.definition)
    for name, (offset, value, field) in cases.items():
        with pytest.raises(StateError) as info:
            target.import_entity(key, _export_at(st, key, offset, value))
        assert info.value.field == field, name
    with pytest.raises(StateError) as info:
        target.import_entity(key, _export_at(st, key, 0, float("inf")))
    assert info.value.field == "record"  # non-finite: refused before the head is read
    assert len(target) == 0
    head = _head(st, key)
    for bad in (head[:-1], np.concatenate([head, [0.0]])):
        with pytest.raises(StateError) as info:
            layout.check(bad)
        assert info.value.field == "record.online"
    layout.check(head)  # the untouched head passes
    target.import_entity(key, _export_at(st, key, layout.o_w + 3, 1e3))  # a large but plausible weight passes


def test_random_byte_flips_in_the_head_never_crash_the_importer():
    st, keys, _last, _n = _trained()
    key = keys[0]
    data = st.export_entity(key)
    start = _EXPORT_HEAD.size + len(key.encode()) + 8 * st.plan.kernel_len
    rng = np.random.default_rng(6)
    target = FeatureState(st.definition)
    for _ in range(300):
        bad = bytearray(data)
        for pos in rng.integers(start, len(bad), rng.integers(1, 4)):
            bad[pos] = int(rng.integers(0, 256))
        try:
            target.import_entity(key, bytes(bad))
        except StateError:
            continue
        with np.errstate(over="raise", invalid="raise", divide="raise"):  # accepted: serves, learns, no overflow
            serve_one(target, key, [0.0, 1.0, 2.0, 3.0], 1e9, [0.2, 0.3, 0.5])
            target.update_with_label(key, 2.0, 1e9)


# -- the definition's ``online`` part ---------------------------------------------------------------------
BASE = {"version": 1, "entity": "e", "inputs": ["a", "b"], "features": [{"op": "lag", "col": "a", "k": 2}]}
ONLINE = {"lr": 0.05, "classes": [0, 1], "pending": 16}


def _with_online(**changes):
    doc = copy.deepcopy(BASE)
    doc["online"] = {**ONLINE, **changes}
    for key, value in changes.items():
        if value is _DELETE:
            del doc["online"][key]
    return doc


_DELETE = object()


@pytest.mark.parametrize("changes, field", [
    ({"lr": 0}, "online.lr"),
    ({"lr": 2}, "online.lr"),
    ({"lr": -0.1}, "online.lr"),
    ({"lr": float("nan")}, "online.lr"),
    ({"lr": "0.1"}, "online.lr"),
    ({"lr": True}, "online.lr"),
    ({"lr": _DELETE}, "online.lr"),
    ({"l2": -0.01}, "online.l2"),
    ({"l2": 1.5}, "online.l2"),
    ({"l2": False}, "online.l2"),
    ({"classes": [1]}, "online.classes"),
    ({"classes": list(range(65))}, "online.classes"),
    ({"classes": [0, 1, 0]}, "online.classes"),
    ({"classes": [0, 0.0]}, "online.classes"),
    ({"classes": "01"}, "online.classes"),
    ({"classes": _DELETE}, "online.classes"),
    ({"classes": [True, False]}, "online.classes[0]"),
    ({"classes": [0, "1"]}, "online.classes[1]"),
    ({"classes": [0, float("inf")]}, "online.classes[1]"),
    ({"pending": 0}, "online.pending"),
    ({"pending": 300}, "online.pending"),
    ({"pending": 2.0}, "online.pending"),
    ({"pending": True}, "online.pending"),
    ({"probabilities": ""}, "online.probabilities"),
    ({"probabilities": 3}, "online.probabilities"),
    ({"label": "no spaces"}, "online.label"),
    ({"momentum": 0.9}, "online.momentum"),
])
def test_online_definition_errors_name_the_field(changes, field):
    with pytest.raises(DefinitionError) as info:
        FeatureDefinition.from_dict(_with_online(**changes))
    assert info.value.field == field
    assert f"'{field}'" in str(info.value)


def test_online_is_not_an_object():
    doc = copy.deepcopy(BASE)
    doc["online"] = [0.05]
    with pytest.raises(DefinitionError) as info:
        FeatureDefinition.from_dict(doc)
    assert info.value.field == "online"


def test_online_spec_defaults_round_trip_and_digest():
    plain = FeatureDefinition.from_dict(BASE)
    d = FeatureDefinition.from_dict(_with_online())
    spec = d.online
    assert (spec.lr, spec.l2, spec.classes, spec.pending, spec.probabilities, spec.label) == \
        (0.05, 0.0, (0.0, 1.0), 16, "probabilities", "label")
    assert FeatureDefinition.from_json(d.to_json()) == d
    assert "online" not in plain.to_dict() and '"online"' not in plain.to_json()
    assert d.digest != plain.digest and d.without_online().digest == plain.digest
    assert d.without_online() == plain and d.without_online().online is None
    assert FeatureDefinition.from_dict(_with_online(lr=0.06)).digest != d.digest
    assert FeatureDefinition.from_dict(_with_online(pending=17)).digest != d.digest
    # the same vector either way: the head is not an input of the model
    assert d.width == plain.width and d.output_names == plain.output_names
    named = FeatureDefinition.from_dict(_with_online(probabilities="p", label="y", l2=0.5))
    assert (named.online.probabilities, named.online.label, named.online.l2) == ("p", "y", 0.5)


def test_the_record_grows_by_the_head_only():
    d = online_definition(pending=5)
    plain = FeatureState(d.without_online()).plan
    plan = FeatureState(d).plan
    width, k = plan.width, 3
    D = width + k
    assert plan.kernel_len == plain.record_len
    assert plan.record_len == plain.record_len + 2 + 2 * D + k * D + k + 5 * (2 + D)
    rec = plan.new_record()
    assert plan.kpart(rec).shape == (plan.kernel_len,) and plan.head(rec).shape == (plan.online.length,)
    assert not plan.head(rec).any()  # a new entity's head: nothing learned, nothing pending


@pytest.mark.parametrize("magnitude", [1e90, 0.99e150])
def test_whatever_head_check_accepts_serves_and_learns_finite_values(magnitude):
    """A peer's head at a magnitude the check might accept, on a wide definition (D = 252): weights and
    means as large as that, standard deviations at their floor.  Refused, or served and learned finitely."""
    inputs = [f"x{i}" for i in range(250)]
    d = FeatureDefinition.from_dict({"version": 1, "entity": "e", "inputs": inputs, "features": [],
                                     "online": {"lr": 1.0, "classes": [0, 1], "pending": 2}})
    st = FeatureState(d)
    layout = st.plan.online
    row = np.ones(len(inputs))
    serve_one(st, "k", row, 1.0, [0.5, 0.5])
    rec = st.decode_export("k", st.export_entity("k"))
    head = st.plan.head(rec)
    head[0] = 1.0
    head[layout.o_mean:layout.o_m2] = -magnitude
    head[layout.o_m2:layout.o_w] = 1.0001e-12  # sd just above the 1e-6 floor
    head[layout.o_w:layout.o_b] = magnitude
    data = st.export_entity("k")
    crafted = data[: _EXPORT_HEAD.size + 1] + rec.astype("<f8").tobytes()
    target = FeatureState(d)
    try:
        target.import_entity("k", crafted)
    except StateError as exc:
        assert exc.field == "record.online"
        return
    with np.errstate(over="raise", invalid="raise"):
        for t in (2.0, 3.0):
            _vector, logits = serve_one(target, "k", row, t, [0.5, 0.5])
            assert np.isfinite(logits).all()
            target.update_with_label("k", 1.0, t)
    assert target.stats().online_learned == 2
