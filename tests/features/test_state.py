"""Per-entity state: bounded under 1M entities, snapshot/restore, export/import of untrusted bytes."""
from __future__ import annotations

import os
import struct

import numpy as np
import pytest

from edgeloop.features import FeatureDefinition, FeatureError, FeatureState, StateError
from edgeloop.features.state import _EXPORT_HEAD
from featurekit import mixed_definition, random_stream


def rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def fed(definition=None, n=800, entities=9, seed=21, **kw) -> tuple[FeatureState, object]:
    d = definition or mixed_definition()
    s = random_stream(seed, n, entities)
    st = FeatureState(d, **kw)
    for i, (k, row, t) in enumerate(zip(s.keys, s.rows, s.timestamps)):
        if i:
            st.update_with_label(s.keys[i - 1], s.labels[i - 1], s.timestamps[i - 1])
        st.serve(k, row, t)
    return st, s


def test_one_million_entities_stay_bounded():
    d = mixed_definition()
    st = FeatureState(d, max_entities=1024, stripes=16)
    row = np.array([1.0, 2.0, 3.0, 4.0])
    before = rss_bytes()
    n = 1_000_000
    for i in range(n):
        st.update_with_row(f"e{i}", row, float(i))
    grown = rss_bytes() - before
    stats = st.stats()
    assert len(st) == stats.entities <= 1024
    assert stats.evictions == n - stats.entities
    assert stats.rows == n
    # 1M records of this definition would take ~1M * (8 * record_len + ~200) bytes; the bound keeps ~1024
    per_record = 8 * st.plan.record_len
    assert grown < 64 * 2**20 < n * per_record
    assert "e999999" in st and "e0" not in st  # the most recent stays, the oldest went


def test_lru_keeps_recently_used_entities():
    st = FeatureState(mixed_definition(), max_entities=4, stripes=1)
    row = [1.0, 2.0, 3.0, 4.0]
    for key in "abcd":
        st.serve(key, row, 1.0)
    st.serve("a", row, 2.0)  # a is now the most recent
    st.update_with_label("b", 1.0, 0.5)  # so is b
    st.serve("e", row, 3.0)  # evicts c, the least recently used
    assert "c" not in st and all(k in st for k in "abde")
    assert st.stats().evictions == 1


@pytest.mark.parametrize("entity", ["", "x" * 257, 42, None, "\udcff"])
def test_entity_keys_are_validated(entity):
    with pytest.raises(FeatureError) as info:
        FeatureState(mixed_definition()).serve(entity, [1.0, 2.0, 3.0, 4.0], 1.0)
    assert info.value.field == "entity"


def test_snapshot_restore_round_trip(tmp_path):
    st, s = fed(max_entities=64, stripes=4)
    path = tmp_path / "features.npz"
    assert st.snapshot(path) == len(st) == 9
    assert not [p for p in tmp_path.iterdir() if p.name != "features.npz"]  # no temp file left behind
    back = FeatureState(st.definition, max_entities=64, stripes=4)
    assert back.restore(path) == 9
    for key in set(s.keys):
        assert back.export_entity(key) == st.export_entity(key)
    row, t = np.array([0.5, 1.5, 2.5, 3.5]), float(s.timestamps[-1] + 1)
    for key in sorted(set(s.keys)):  # a restarted node serves what the running one would have
        assert back.serve(key, row, t).vector.tobytes() == st.serve(key, row, t).vector.tobytes()


def test_restart_from_a_snapshot_continues_the_stream(tmp_path):
    """Serve half a stream, snapshot, restart (a fresh state restored from the file), serve the rest: as if never stopped."""
    d = mixed_definition()
    s = random_stream(22, 600, 6)
    events = s.label_events()
    from edgeloop.features import replay
    whole = replay(d, s.rows, s.keys, s.timestamps, events).vectors
    half = 300
    first = FeatureState(d)
    order = np.argsort(s.arrivals, kind="stable")
    j = 0
    got = []
    node = first
    for i in range(len(s.keys)):
        if i == half:
            first.snapshot(tmp_path / "snap.npz")
            del first
            node = FeatureState(d)
            node.restore(tmp_path / "snap.npz")
        while j < len(order) and s.arrivals[order[j]] <= s.timestamps[i]:
            e = order[j]
            node.update_with_label(s.keys[e], s.labels[e], s.timestamps[e])
            j += 1
        got.append(node.serve(s.keys[i], s.rows[i], s.timestamps[i]).vector)
    assert np.stack(got).tobytes() == whole.tobytes()


def test_restore_refuses_other_definitions_and_tampered_files(tmp_path):
    st, _ = fed()
    path = tmp_path / "s.npz"
    st.snapshot(path)
    other = FeatureState(mixed_definition(forbidden=[]))
    with pytest.raises(StateError) as info:
        other.restore(path)
    assert info.value.field == "snapshot.meta.definition_digest"
    # a record with a head that does not match its count
    with np.load(path) as npz:
        arrays = {k: npz[k] for k in npz.files}
    arrays["records"][2, 2] += 1
    np.savez(tmp_path / "bad.npz", **arrays)
    fresh = FeatureState(st.definition)
    with pytest.raises(StateError) as info:
        fresh.restore(tmp_path / "bad.npz")
    assert info.value.field.startswith("snapshot.records[2]")
    assert len(fresh) == 0  # nothing half-restored
    # pickled objects are never loaded
    arrays["keys"] = np.array([object()], dtype=object)
    np.savez(tmp_path / "pickled.npz", **arrays)
    with pytest.raises(StateError):
        fresh.restore(tmp_path / "pickled.npz")
    (tmp_path / "trunc.npz").write_bytes(path.read_bytes()[:100])
    with pytest.raises(StateError):
        fresh.restore(tmp_path / "trunc.npz")


def test_restore_into_a_smaller_state_evicts_and_counts(tmp_path):
    st, s = fed(entities=30, n=600, max_entities=64, stripes=1)
    st.snapshot(tmp_path / "s.npz")
    small = FeatureState(st.definition, max_entities=10, stripes=1)
    assert small.restore(tmp_path / "s.npz") == 10
    assert small.stats().evictions == 20


def test_export_import_moves_an_entity():
    st, s = fed()
    key = s.keys[-1]
    data = st.export_entity(key, remove=True)
    assert key not in st and st.export_entity(key) is None
    new_owner = FeatureState(st.definition)
    new_owner.import_entity(key, data)
    assert new_owner.export_entity(key) == data
    assert new_owner.stats().imported == 1 and st.stats().exported == 1
    assert len(data) <= new_owner.export_size


def _corrupt(data: bytes, offset: int, value: bytes) -> bytes:
    return data[:offset] + value + data[offset + len(value):]


def test_import_refuses_oversized_and_corrupt_bytes():
    st, s = fed()
    key = s.keys[-1]
    data = st.export_entity(key)
    head = _EXPORT_HEAD.size
    rec_at = head + len(key.encode())
    target = FeatureState(st.definition)
    cases = {
        "oversized": (data + b"\0" * target.export_size, "data"),
        "empty": (b"", "data"),
        "truncated": (data[:-8], "data"),
        "magic": (_corrupt(data, 0, b"XXXX"), "magic"),
        "version": (_corrupt(data, 4, b"\x07"), "version"),
        "digest": (_corrupt(data, 5, b"\0" * 32), "definition_digest"),
        "record length": (_corrupt(data, head - 4, struct.pack("<I", 3)), "record_length"),
        "other entity": (_corrupt(data, head, b"X"), "entity"),
        "nan": (_corrupt(data, rec_at + 8 * 10, struct.pack("<d", float("nan"))), "record"),
        "rows > H": (_corrupt(data, rec_at + 8 * 1, struct.pack("<d", 1e6)), "record.rows"),
        "fractional": (_corrupt(data, rec_at + 8 * 5, struct.pack("<d", 2.5)), "record.seen"),
        "record version": (_corrupt(data, rec_at, struct.pack("<d", 9.0)), "record.version"),
        "not bytes": ("text", "data"),
    }
    for name, (bad, field) in cases.items():
        with pytest.raises(StateError) as info:
            target.import_entity(key, bad)
        assert info.value.field == field, name
    assert len(target) == 0
    with pytest.raises(StateError) as info:
        target.import_entity("someone-else", data)
    assert info.value.field == "entity"


def test_import_refuses_unsorted_labels():
    d = mixed_definition()
    st = FeatureState(d)
    for ts in (1.0, 2.0, 3.0):
        st.update_with_label("k", 1.0, ts)
    data = bytearray(st.export_entity("k"))
    plan = st.plan
    label_ts_at = _EXPORT_HEAD.size + 1 + 8 * (8 + plan.H * plan.C)
    data[label_ts_at: label_ts_at + 8] = struct.pack("<d", 5.0)
    with pytest.raises(StateError) as info:
        FeatureState(d).import_entity("k", bytes(data))
    assert info.value.field == "record.label_times"


def test_random_byte_flips_never_crash_the_importer():
    st, s = fed()
    key = s.keys[-1]
    data = st.export_entity(key)
    rng = np.random.default_rng(5)
    target = FeatureState(st.definition)
    for _ in range(400):
        bad = bytearray(data)
        for pos in rng.integers(0, len(bad), rng.integers(1, 4)):
            bad[pos] = int(rng.integers(0, 256))
        try:
            target.import_entity(key, bytes(bad))
        except StateError:
            continue
        target.serve(key, [0.0, 1.0, 2.0, 3.0], 1e9)  # whatever was accepted is a usable record


def test_stats_count_what_happened():
    d = FeatureDefinition.from_dict({"version": 1, "entity": "k", "inputs": ["a"],
                                     "features": [{"op": "lag", "col": "a", "k": 2}]})
    st = FeatureState(d)
    st.serve("x", [1.0], 1.0)
    st.serve("x", [2.0], 2.0)
    st.serve("x", [3.0], 3.0)
    assert not st.update_with_label("x", 1.0, 1.0)  # no label features: dropped, counted
    s = st.stats()
    assert (s.served, s.cold, s.partial, s.rows, s.labels, s.labels_dropped) == (3, 1, 2, 3, 1, 1)


def test_serve_into_is_serve_bit_for_bit_with_the_row_in_the_output_and_nothing_allocated():
    """The node's per-request form (``serve_into``: the row already in the graph's vector, the plan
    checked once) and ``serve`` on two states fed the same stream: same vectors, flags, records, counts."""
    d = mixed_definition()
    s = random_stream(33, 600, 7)
    a, b = FeatureState(d, max_entities=5, stripes=1), FeatureState(d, max_entities=5, stripes=1)  # evicts too
    width, n_in = a.plan.width, a.plan.n_inputs
    for i, (k, row, t) in enumerate(zip(s.keys, s.rows, s.timestamps)):
        if i:
            for st in (a, b):
                st.update_with_label(s.keys[i - 1], s.labels[i - 1], s.timestamps[i - 1])
        want = a.serve(k, np.asarray(row, np.float32), t)
        out = np.full((1, width), np.nan, np.float32)
        out[0, :n_in] = row
        flags = b.serve_into(k, k.encode("utf-8"), float(t), out)
        assert out.tobytes() == want.vector.tobytes(), i
        assert (bool(flags & 1), bool(flags & 2)) == (want.cold, want.partial), i
    assert a.stats() == b.stats() and a.stats().evictions > 0
    assert sorted(a.keys()) == sorted(b.keys())
    assert all(a.export_entity(k) == b.export_entity(k) for k in a.keys())


def test_serve_into_only_held_leaves_an_unknown_entity_alone_and_bad_input_is_named():
    d = mixed_definition()
    st = FeatureState(d)
    out = np.zeros((1, st.plan.width), np.float32)
    assert st.serve_into("new", b"new", 1.0, out, only_held=True) == -1
    assert "new" not in st and st.stats().served == 0 and not out.any()
    assert st.serve_into("new", b"new", 1.0, out) & 1  # cold: first row of the entity
    assert st.serve_into("new", b"new", 2.0, out, only_held=True) >= 0 and st.stats().served == 2
    for entity, key in (("x" * 257, b"x" * 257), ("", b""), ("k", "k")):
        with pytest.raises(FeatureError, match="entity"):
            st.serve_into(entity, key, 3.0, out)
    kept = d.inputs.index(st.plan.columns[0])
    out[0, kept] = np.inf
    with pytest.raises(FeatureError, match=d.inputs[kept]):
        st.serve_into("new", b"new", 3.0, out)
    out[0, kept] = 1.0
    with pytest.raises(FeatureError, match="timestamp"):
        st.serve_into("new", b"new", float("nan"), out)
    with pytest.raises(ValueError, match="out"):
        st.serve_into("new", b"new", 3.0, np.zeros((1, st.plan.width), np.float64))
    assert st.stats().served == 2  # refused rows never enter the state
