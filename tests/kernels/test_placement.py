"""Placement hashing: golden vectors (the wire contract), exact references, HRW properties."""
from __future__ import annotations

import hashlib
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from edgeloop.kernels import HrwNodes, hrw_assign, hrw_rank, stable_hash
from edgeloop.kernels.placement import KEY_SALT, NODE_SALT, stable_hash_many

M64 = (1 << 64) - 1

# --------------------------------------------------------------------------- references


def xxh64_reference(data: bytes, seed: int = 0) -> int:
    """Straight transcription of xxHash's XXH64 specification, in pure Python."""
    p1, p2, p3, p4, p5 = (
        0x9E3779B185EBCA87, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9, 0x85EBCA77C2B2AE63, 0x27D4EB2F165667C5,
    )

    def rotl(x, r):
        return ((x << r) | (x >> (64 - r))) & M64

    def rnd(acc, lane):
        return (rotl((acc + lane * p2) & M64, 31) * p1) & M64

    n, i = len(data), 0
    if n >= 32:
        v = [(seed + p1 + p2) & M64, (seed + p2) & M64, seed, (seed - p1) & M64]
        while i + 32 <= n:
            for j in range(4):
                v[j] = rnd(v[j], int.from_bytes(data[i + 8 * j : i + 8 * j + 8], "little"))
            i += 32
        h = (rotl(v[0], 1) + rotl(v[1], 7) + rotl(v[2], 12) + rotl(v[3], 18)) & M64
        for x in v:
            h = (((h ^ rnd(0, x)) * p1) + p4) & M64
    else:
        h = (seed + p5) & M64
    h = (h + n) & M64
    while i + 8 <= n:
        h ^= rnd(0, int.from_bytes(data[i : i + 8], "little"))
        h = (rotl(h, 27) * p1 + p4) & M64
        i += 8
    if i + 4 <= n:
        h ^= (int.from_bytes(data[i : i + 4], "little") * p1) & M64
        h = (rotl(h, 23) * p2 + p3) & M64
        i += 4
    while i < n:
        h ^= (data[i] * p5) & M64
        h = (rotl(h, 11) * p1) & M64
        i += 1
    h ^= h >> 33
    h = (h * p2) & M64
    h ^= h >> 29
    h = (h * p3) & M64
    return h ^ (h >> 32)


def mix64_np(z: np.ndarray) -> np.ndarray:
    z = z ^ (z >> np.uint64(30))
    z = z * np.uint64(0xBF58476D1CE4E5B9)
    z = z ^ (z >> np.uint64(27))
    z = z * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def neg_log_u_np(h: np.ndarray) -> np.ndarray:
    """fdlibm's log, step by step in NumPy double ops: must match the compiled one bit for bit."""
    t = ((h >> np.uint64(12)) << np.uint64(1)) | np.uint64(1)
    x, e = np.frexp(t.astype(np.float64))  # x in [0.5, 1): t = x * 2**e exactly
    x = x * 2.0
    k = (e - 1 - 53).astype(np.float64)
    big = x > 1.41421356237309514547
    x = np.where(big, x * 0.5, x)
    k = np.where(big, k + 1.0, k)
    f = x - 1.0
    hfsq = 0.5 * f * f
    s = f / (2.0 + f)
    z = s * s
    w = z * z
    t1 = w * (3.999999999940941908e-01 + w * (2.222219843214978396e-01 + w * 1.531383769920937332e-01))
    t2 = z * (6.666666666666735130e-01 + w * (2.857142874366239149e-01 + w * (1.818357216161805012e-01 + w * 1.479819860511658591e-01)))
    r = t2 + t1
    ln_u = k * 6.93147180369123816490e-01 - ((hfsq - (s * (hfsq + r) + k * 1.90821492927058770002e-10)) - f)
    return -ln_u


def hrw_reference(keys: np.ndarray, nodes: np.ndarray, weights: np.ndarray | None) -> np.ndarray:
    """Brute force over every (key, node) pair with the documented tie rule."""
    a = mix64_np(keys ^ np.uint64(KEY_SALT))[:, None]
    b = mix64_np(nodes ^ np.uint64(NODE_SALT))[None, :]
    h = mix64_np(a ^ b)
    if weights is None:
        primary = h
    else:
        primary = weights[None, :] / neg_log_u_np(h)
    best = primary.max(axis=1, keepdims=True)
    ids = np.where(primary == best, nodes[None, :], np.uint64(M64))
    return ids.argmin(axis=1)


def golden_keys_nodes():
    keys = stable_hash_many([f"key-{i}" for i in range(10_000)])
    nodes = stable_hash_many([f"node-{j}" for j in range(10)])
    weights = np.array([1.0, 2.0, 1.5, 1.0, 3.0, 0.5, 1.0, 2.5, 1.0, 1.25])
    return keys, nodes, weights


def digest(arr: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(arr, dtype="<i8").tobytes()).hexdigest()


# --------------------------------------------------------------------------- stable_hash


@pytest.mark.parametrize(
    "text,expected",
    [
        ("", 0xEF46DB3751D8E999),
        ("a", 0xD24EC4F1A98C6E5B),
        ("abc", 0x44BC2CF5AD770999),
        ("xxhash", 0x32DD38952C4BC720),
        ("Nobody inspects the spammish repetition", 0xFBCEA83C8A378BF1),
    ],
)
def test_stable_hash_golden_values(text, expected):
    assert stable_hash(text) == expected
    assert stable_hash(text.encode()) == expected


def test_stable_hash_matches_reference_at_every_tail_length():
    rng = np.random.default_rng(7)
    for n in range(0, 131):
        data = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
        assert stable_hash(data) == xxh64_reference(data), n


def test_stable_hash_encodes_str_as_utf8():
    assert stable_hash("grüße-節点") == stable_hash("grüße-節点".encode("utf-8"))
    assert stable_hash(bytearray(b"abc")) == stable_hash(b"abc")


def test_stable_hash_many_matches_scalar():
    items = ["", "a", b"bytes", "ünïcode", "x" * 100]
    got = stable_hash_many(items)
    assert got.dtype == np.uint64
    assert got.tolist() == [stable_hash(s) for s in items]


def test_stable_hash_rejects_other_types():
    with pytest.raises(TypeError, match="data must be str or bytes, got int"):
        stable_hash(42)
    with pytest.raises(TypeError, match=r"items\[1\] must be str or bytes"):
        stable_hash_many(["a", 3])
    with pytest.raises(TypeError, match="items must be a sequence"):
        stable_hash_many("abc")


# --------------------------------------------------------------------------- golden assignment

GOLDEN_UNWEIGHTED = "c8b71d69671515fc5158aff4f2671608cdfc2e772e1ff7026720c81b287dcec8"
GOLDEN_WEIGHTED = "e8cecc615768132cea7df9f53bf5ac97f46e1736c4f466447ea7282cbf608c57"
GOLDEN_CAPPED = "93b78acff272dfd634585a055cea3046e9ec22a55b7c933b6165b7580e6695b4"

_GOLDEN_SCRIPT = """
import hashlib, numpy as np
from edgeloop.kernels.placement import hrw_assign, stable_hash_many
keys = stable_hash_many([f"key-{i}" for i in range(10_000)])
nodes = stable_hash_many([f"node-{j}" for j in range(10)])
w = np.array([1.0, 2.0, 1.5, 1.0, 3.0, 0.5, 1.0, 2.5, 1.0, 1.25])
for a in (hrw_assign(keys, nodes), hrw_assign(keys, nodes, w), hrw_assign(keys, nodes, w, capacity_factor=1.02)):
    print(hashlib.sha256(np.ascontiguousarray(a, dtype="<i8").tobytes()).hexdigest())
"""


def test_golden_assignment_digests():
    keys, nodes, w = golden_keys_nodes()
    assert digest(hrw_assign(keys, nodes)) == GOLDEN_UNWEIGHTED
    assert digest(hrw_assign(keys, nodes, w)) == GOLDEN_WEIGHTED
    assert digest(hrw_assign(keys, nodes, w, capacity_factor=1.02)) == GOLDEN_CAPPED


def test_golden_assignment_is_identical_in_another_process():
    env = dict(os.environ, PYTHONHASHSEED="12345", OMP_NUM_THREADS="1")
    out = subprocess.run(
        [sys.executable, "-c", _GOLDEN_SCRIPT], env=env, capture_output=True, text=True, timeout=120, check=True
    )
    assert out.stdout.split() == [GOLDEN_UNWEIGHTED, GOLDEN_WEIGHTED, GOLDEN_CAPPED]


# --------------------------------------------------------------------------- exactness


@pytest.mark.parametrize("weighted", [False, True])
def test_assignment_equals_brute_force_reference(weighted):
    rng = np.random.default_rng(3)
    keys = rng.integers(0, 2**63, 3000, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
    nodes = rng.integers(0, 2**63, 37, dtype=np.uint64)
    w = rng.uniform(0.1, 5.0, 37) if weighted else None
    np.testing.assert_array_equal(hrw_assign(keys, nodes, w), hrw_reference(keys, nodes, w))


@pytest.mark.parametrize("n_nodes", [1, 2, 3, 5])
def test_few_nodes_and_extreme_weights_equal_brute_force(n_nodes):
    # few nodes exercise the every-node fallback; extreme weights the pruning thresholds
    rng = np.random.default_rng(n_nodes)
    keys = rng.integers(0, 2**64 - 1, 4000, dtype=np.uint64)
    nodes = rng.integers(0, 2**64 - 1, n_nodes, dtype=np.uint64)
    for w in (
        rng.uniform(0.1, 10.0, n_nodes),
        np.geomspace(1e-300, 1e100, n_nodes),
        np.where(np.arange(n_nodes) % 2 == 0, 1.0, 0.0),
    ):
        np.testing.assert_array_equal(hrw_assign(keys, nodes, w), hrw_reference(keys, nodes, w))


def test_wide_weight_spread_equals_brute_force():
    rng = np.random.default_rng(21)
    keys = rng.integers(0, 2**64 - 1, 3000, dtype=np.uint64)
    nodes = rng.integers(0, 2**64 - 1, 64, dtype=np.uint64)
    w = np.geomspace(1e-6, 1e6, 64)[rng.permutation(64)]
    w[::9] = 0.0
    np.testing.assert_array_equal(hrw_assign(keys, nodes, w), hrw_reference(keys, nodes, w))


@pytest.mark.parametrize("weighted", [False, True])
def test_result_does_not_depend_on_thread_count(weighted):
    rng = np.random.default_rng(12)
    keys = rng.integers(0, 2**64 - 1, 20_000, dtype=np.uint64)  # above the serial cut-off
    nodes = rng.integers(0, 2**64 - 1, 31, dtype=np.uint64)
    w = rng.uniform(0.5, 2.0, 31) if weighted else None
    one = hrw_assign(keys, nodes, w, n_threads=1)
    np.testing.assert_array_equal(one, hrw_assign(keys, nodes, w, n_threads=2))
    np.testing.assert_array_equal(one, hrw_assign(keys, nodes, w))
    np.testing.assert_array_equal(one[:500], hrw_reference(keys[:500], nodes, w))
    with pytest.raises(ValueError, match="n_threads must be None or an int >= 1, got 0"):
        hrw_assign(keys, nodes, w, n_threads=0)


def test_deterministic_log_matches_math_log():
    from edgeloop._native import load

    pl = load("_placement")
    rng = np.random.default_rng(11)
    hs = [0, M64, 1 << 63, (1 << 12) - 1, 1 << 12] + rng.integers(0, 2**63, 500, dtype=np.uint64).tolist()
    for h in hs:
        t = 2 * (h >> 12) + 1
        exact = -math.log(t / 2**53)
        assert math.isclose(pl._neg_log_u(h), exact, rel_tol=4e-16), h
    got = np.array([pl._neg_log_u(h) for h in hs])
    np.testing.assert_array_equal(got, neg_log_u_np(np.array(hs, dtype=np.uint64)))


def test_ties_go_to_the_smaller_node_id():
    # weight 0 on every node but one: all the zero-weight nodes tie at score 0
    nodes = np.array([50, 7, 9, 30], dtype=np.uint64)
    keys = np.arange(200, dtype=np.uint64)
    w = np.array([0.0, 0.0, 0.0, 1.0])
    assert (hrw_assign(keys, nodes, w) == 3).all()
    rank = hrw_rank(5, nodes, w)
    assert rank.tolist() == [3, 1, 2, 0]  # then ids 7, 9, 50


# --------------------------------------------------------------------------- properties


@pytest.mark.parametrize("weighted", [False, True])
def test_permuting_nodes_permutes_indices(weighted):
    rng = np.random.default_rng(5)
    keys = rng.integers(0, 2**64 - 1, 5000, dtype=np.uint64)
    nodes = rng.integers(0, 2**64 - 1, 23, dtype=np.uint64)
    w = rng.uniform(0.5, 2.0, 23) if weighted else None
    perm = rng.permutation(23)
    base = nodes[hrw_assign(keys, nodes, w)]
    moved = nodes[perm][hrw_assign(keys, nodes[perm], None if w is None else w[perm])]
    np.testing.assert_array_equal(base, moved)
    capped = nodes[hrw_assign(keys, nodes, w, capacity_factor=1.05)]
    capped_perm = nodes[perm][hrw_assign(keys, nodes[perm], None if w is None else w[perm], capacity_factor=1.05)]
    np.testing.assert_array_equal(capped, capped_perm)


@pytest.mark.parametrize("weighted", [False, True])
def test_only_the_joining_or_leaving_nodes_keys_move(weighted):
    rng = np.random.default_rng(9)
    keys = rng.integers(0, 2**64 - 1, 20_000, dtype=np.uint64)
    nodes = rng.integers(0, 2**64 - 1, 12, dtype=np.uint64)
    w = rng.uniform(0.5, 2.0, 12) if weighted else None
    before = nodes[hrw_assign(keys, nodes, w)]
    # join: node 11 is new
    small = nodes[:11]
    without = small[hrw_assign(keys, small, None if w is None else w[:11])]
    moved = before != without
    assert moved.any()
    assert (before[moved] == nodes[11]).all()  # every moved key went to / came from node 11
    assert (without[~moved] == before[~moved]).all()
    # leave: node 3 departs
    keep = np.delete(np.arange(12), 3)
    after = nodes[keep][hrw_assign(keys, nodes[keep], None if w is None else w[keep])]
    changed = before != after
    assert (before[changed] == nodes[3]).all()
    assert changed.sum() == (before == nodes[3]).sum()


def test_weighted_shares_follow_weights():
    keys = stable_hash_many([f"user/{i}" for i in range(100_000)])
    nodes = stable_hash_many([f"edge-{j}" for j in range(8)])
    w = np.array([1.0, 2.0, 3.0, 4.0, 1.0, 0.5, 2.5, 6.0])
    share = np.bincount(hrw_assign(keys, nodes, w), minlength=8) / keys.size
    expected = w / w.sum()
    assert np.all(np.abs(share - expected) <= 0.05 * expected), (share, expected)


def test_equal_weights_same_as_unweighted():
    keys = np.arange(5000, dtype=np.uint64)
    nodes = np.arange(10, 20, dtype=np.uint64)
    np.testing.assert_array_equal(hrw_assign(keys, nodes), hrw_assign(keys, nodes, np.full(10, 2.5)))
    assert hrw_rank(77, nodes).tolist() == hrw_rank(77, nodes, [3.0] * 10).tolist()


@pytest.mark.parametrize("weighted", [False, True])
def test_rank_starts_with_the_assignment(weighted):
    rng = np.random.default_rng(2)
    keys = rng.integers(0, 2**64 - 1, 300, dtype=np.uint64)
    nodes = rng.integers(0, 2**64 - 1, 15, dtype=np.uint64)
    w = rng.uniform(0.2, 3.0, 15) if weighted else None
    assigned = hrw_assign(keys, nodes, w)
    for k, a in zip(keys.tolist(), assigned.tolist()):
        rank = hrw_rank(k, nodes, w)
        assert rank.dtype == np.int64
        assert sorted(rank.tolist()) == list(range(15))
        assert rank[0] == a
        # the rest of the list is the assignment once the leader is gone
        rest = np.delete(np.arange(15), rank[0])
        assert rest[hrw_assign([k], nodes[rest], None if w is None else w[rest])[0]] == rank[1]


# --------------------------------------------------------------------------- capacity


def capped_reference(keys, nodes, w, c):
    """Sequential walk down each key's preference list (hrw_rank) with the documented caps."""
    ww = np.ones(len(nodes)) if w is None else np.asarray(w, dtype=float)
    total = 0.0
    for i in np.argsort(nodes):
        total += ww[i]
    caps = [min(len(keys), math.ceil(((c * len(keys)) * x) / total)) for x in ww]
    load = [0] * len(nodes)
    out = []
    for k in keys.tolist():
        for i in hrw_rank(k, nodes, w):
            if load[i] < caps[i]:
                load[i] += 1
                out.append(i)
                break
    return np.array(out), np.array(caps)


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("factor", [1.0, 1.02, 1.25])
def test_capacity_cap_never_exceeded_and_matches_walk(weighted, factor):
    rng = np.random.default_rng(int(factor * 100) + weighted)
    keys = rng.integers(0, 2**64 - 1, 1500, dtype=np.uint64)
    nodes = rng.integers(0, 2**64 - 1, 9, dtype=np.uint64)
    w = rng.uniform(0.5, 3.0, 9) if weighted else None
    got = hrw_assign(keys, nodes, w, capacity_factor=factor)
    expected, caps = capped_reference(keys, nodes, w, factor)
    assert (np.bincount(got, minlength=9) <= caps).all()
    np.testing.assert_array_equal(got, expected)


def test_loose_cap_equals_uncapped():
    keys = stable_hash_many([f"k{i}" for i in range(20_000)])
    nodes = stable_hash_many([f"n{j}" for j in range(10)])
    w = np.linspace(1.0, 2.0, 10)
    np.testing.assert_array_equal(hrw_assign(keys, nodes, w, capacity_factor=2.0), hrw_assign(keys, nodes, w))
    np.testing.assert_array_equal(hrw_assign(keys, nodes, capacity_factor=10.0), hrw_assign(keys, nodes))


def test_capped_moves_the_overflow_only():
    keys = np.arange(10_000, dtype=np.uint64)
    nodes = np.arange(1, 6, dtype=np.uint64)
    free = hrw_assign(keys, nodes)
    capped = hrw_assign(keys, nodes, capacity_factor=1.0)
    assert (np.bincount(capped, minlength=5) == 2000).all()  # a factor of 1 forces a perfect balance
    assert (free == capped).mean() > 0.9


# --------------------------------------------------------------------------- argument errors


def test_argument_errors():
    nodes = np.arange(4, dtype=np.uint64)
    keys = np.arange(10, dtype=np.uint64)
    with pytest.raises(ValueError, match="capacity_factor=0.5 is infeasible.*sum to 8 but 10 keys"):
        hrw_assign(keys, nodes, capacity_factor=0.5)
    with pytest.raises(ValueError, match="capacity_factor must be a finite number > 0, got -1"):
        hrw_assign(keys, nodes, capacity_factor=-1)
    with pytest.raises(ValueError, match="capacity_factor must be a finite number > 0, got nan"):
        hrw_assign(keys, nodes, capacity_factor=float("nan"))
    with pytest.raises(TypeError, match="capacity_factor must be a number, got 'x'"):
        hrw_assign(keys, nodes, capacity_factor="x")
    with pytest.raises(ValueError, match=r"nodes must be unique ids, got duplicates \[2\]"):
        hrw_assign(keys, [1, 2, 2])
    with pytest.raises(ValueError, match="nodes must not be empty"):
        hrw_assign(keys, [])
    with pytest.raises(ValueError, match="keys must be non-negative 64-bit ids, got -3"):
        hrw_assign([1, -3], nodes)
    with pytest.raises(ValueError, match=r"keys must be 1-D, got shape \(2, 5\)"):
        hrw_assign(keys.reshape(2, 5), nodes)
    with pytest.raises(TypeError, match="keys must be unsigned 64-bit integers, got dtype float64"):
        hrw_assign([1.5], nodes)
    with pytest.raises(ValueError, match=r"weights must have shape \(4,\) to match nodes, got \(3,\)"):
        hrw_assign(keys, nodes, [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match=r"weights must be finite and in \[0, 1e\+100\], got \[-1.0\]"):
        hrw_assign(keys, nodes, [1.0, -1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match=r"weights must be finite.*got \[nan\]"):
        hrw_assign(keys, nodes, [1.0, float("nan"), 1.0, 1.0])
    with pytest.raises(ValueError, match="weights must not all be zero"):
        hrw_assign(keys, nodes, [0.0] * 4)
    with pytest.raises(ValueError, match=r"key must be in \[0, 2\*\*64\), got -1"):
        hrw_rank(-1, nodes)
    with pytest.raises(TypeError, match="key must be an int"):
        hrw_rank("k", nodes)


def test_accepts_python_ints_and_empty_keys():
    assert hrw_assign([], [1, 2]).shape == (0,)
    big = [2**64 - 1, 0, 2**63]
    got = hrw_assign(big, [10, 20, 30])
    np.testing.assert_array_equal(got, hrw_assign(np.array(big, dtype=np.uint64), np.array([10, 20, 30], dtype=np.uint64)))


# --------------------------------------------------------------------------- prepared node sets (HrwNodes)


def _weight_variants(rng, n):
    return {
        "none": None,
        "uniform": rng.uniform(0.2, 5.0, n),
        "zeros": np.where(np.arange(n) % 3 == 1, 0.0, rng.uniform(0.5, 2.0, n)) if n > 1 else np.ones(1),
        "spread": np.geomspace(1e-6, 1e6, n)[rng.permutation(n)],
        "equal-2.5": np.full(n, 2.5),
    }


@pytest.mark.parametrize("n_nodes", [1, 2, 7, 100, 700])  # 700: beyond first()'s stack scratch
def test_prepared_first_rank_assign_equal_the_functions(n_nodes):
    rng = np.random.default_rng(100 + n_nodes)
    keys = rng.integers(0, 2**64 - 1, 3000 if n_nodes < 700 else 600, dtype=np.uint64)
    nodes = rng.integers(0, 2**64 - 1, n_nodes, dtype=np.uint64)
    for name, w in _weight_variants(rng, n_nodes).items():
        prepared = HrwNodes(nodes, w)
        expected = hrw_assign(keys, nodes, w)
        firsts = np.array([prepared.first(k) for k in keys.tolist()])
        np.testing.assert_array_equal(firsts, expected, err_msg=name)
        equal = w is None or np.all(w == w[0])
        np.testing.assert_array_equal(firsts[:300], hrw_reference(keys[:300], nodes, None if equal else w), name)
        np.testing.assert_array_equal(prepared.assign(keys), expected, err_msg=name)
        for factor in (1.0, 1.1):
            np.testing.assert_array_equal(
                prepared.assign(keys, factor), hrw_assign(keys, nodes, w, capacity_factor=factor), err_msg=name
            )
        for k in keys[:100].tolist():
            rank = prepared.rank(k)
            assert rank.dtype == np.int64
            np.testing.assert_array_equal(rank, hrw_rank(k, nodes, w), err_msg=name)
            assert rank[0] == prepared.first(k)


def _unmix64(z: int) -> int:
    """Inverse of mix64 (SplitMix64's finaliser): to build nodes with chosen pair hashes."""
    def unxorshift(x, s):
        y = x
        for _ in range(64 // s + 1):
            y = x ^ (y >> s)
        return y

    z = unxorshift(z, 31)
    z = (z * pow(0x94D049BB133111EB, -1, 1 << 64)) & M64
    z = unxorshift(z, 27)
    z = (z * pow(0xBF58476D1CE4E5B9, -1, 1 << 64)) & M64
    return unxorshift(z, 30)


def _node_with_pair_hash(key: int, h: int) -> int:
    """The node id whose pair hash with ``key`` is exactly ``h`` (see the module docstring)."""
    a = int(mix64_np(np.array([key ^ KEY_SALT], dtype=np.uint64))[0])
    return _unmix64(_unmix64(h) ^ a) ^ NODE_SALT


def test_unmix64_inverts_mix64():
    zs = np.random.default_rng(1).integers(0, 2**64 - 1, 50, dtype=np.uint64)
    assert [_unmix64(int(m)) for m in mix64_np(zs)] == zs.tolist()


@pytest.mark.parametrize("t_top", [2**52 - 1, 2**52 - 2**39, 2**51])  # winner far, near and inside the fast path
def test_prepared_forced_ties_go_to_the_smaller_id(t_top):
    # Two nodes whose pair hashes differ only in the low 12 bits have the same u, hence
    # (same weight) bit-identical scores: an exact tie, which the smaller node id must win.
    rng = np.random.default_rng(t_top % 1000)
    seen = set()
    for key in rng.integers(0, 2**64 - 1, 20, dtype=np.uint64).tolist():
        tie_a = _node_with_pair_hash(key, (t_top << 12) | int(rng.integers(0, 4096)))
        tie_b = _node_with_pair_hash(key, (t_top << 12) | int(rng.integers(0, 4096)))
        if tie_a == tie_b:
            continue
        others = rng.integers(0, 2**64 - 1, 40, dtype=np.uint64)
        nodes = np.concatenate([others[:20], np.array([tie_b, tie_a], dtype=np.uint64), others[20:]])
        w = np.concatenate([rng.uniform(0.5, 1.0, 20), [3.0, 3.0], rng.uniform(0.5, 1.0, 20)])
        if t_top == 2**51:  # u = 1/2: not a sure winner; zero out the rivals so the pair ties at the top
            w[:20] = w[22:] = 0.0
        key_side = mix64_np(np.array([key ^ KEY_SALT], dtype=np.uint64))
        pair = mix64_np(key_side ^ mix64_np(np.array([tie_a, tie_b], dtype=np.uint64) ^ np.uint64(NODE_SALT)))
        assert pair[0] >> np.uint64(12) == pair[1] >> np.uint64(12) == t_top and pair[0] != pair[1]
        smaller = 20 if tie_b < tie_a else 21
        seen.add(smaller)
        prepared = HrwNodes(nodes, w)
        assert prepared.first(key) == smaller
        assert hrw_assign([key], nodes, w)[0] == smaller
        assert hrw_reference(np.array([key], dtype=np.uint64), nodes, w)[0] == smaller
        rank = prepared.rank(key)
        assert rank[:2].tolist() == [smaller, 41 - smaller]
        np.testing.assert_array_equal(rank, hrw_rank(key, nodes, w))
    assert seen == {20, 21}  # the smaller id sat at either position


def test_prepared_zero_weight_ties_rank_by_id():
    nodes = np.array([50, 7, 9, 30, 11], dtype=np.uint64)
    prepared = HrwNodes(nodes, [0.0, 0.0, 2.0, 0.0, 1.0])
    for key in range(200):
        rank = prepared.rank(key).tolist()
        assert set(rank[:2]) == {2, 4} and rank[2:] == [1, 3, 0]  # ids 7, 30, 50 tie at score 0
        assert prepared.first(key) == rank[0] == hrw_assign([key], nodes, prepared.weights)[0]


def test_prepared_is_immutable_shareable_and_picklable():
    import pickle
    import threading

    rng = np.random.default_rng(4)
    nodes = rng.integers(0, 2**64 - 1, 600, dtype=np.uint64)
    w = rng.uniform(0.5, 2.0, 600)
    source = nodes.copy()
    prepared = HrwNodes(source, w)
    source[:] = 0  # the prepared set holds its own copy
    keys = rng.integers(0, 2**64 - 1, 2000, dtype=np.uint64).tolist()
    expected = hrw_assign(keys, nodes, w).tolist()
    with pytest.raises(ValueError, match="read-only"):
        prepared.ids[0] = 1
    with pytest.raises(RuntimeError, match="already prepared"):
        prepared._prepare(nodes, w, True)
    results = {}

    def work(i):
        results[i] = [prepared.first(k) for k in keys]

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert all(results[i] == expected for i in range(4))
    clone = pickle.loads(pickle.dumps(prepared))
    assert isinstance(clone, HrwNodes) and clone.weighted and len(clone) == 600
    assert [clone.first(k) for k in keys[:200]] == expected[:200]


def test_prepared_argument_errors():
    nodes = np.arange(4, dtype=np.uint64)
    prepared = HrwNodes(nodes)
    assert not prepared.weighted and prepared.weights.tolist() == [1.0] * 4
    assert prepared.first(np.uint64(3)) == prepared.first(3) == prepared.first(np.int64(3))
    with pytest.raises(ValueError, match=r"key must be in \[0, 2\*\*64\), got -1"):
        prepared.first(-1)
    with pytest.raises(ValueError, match=r"key must be in \[0, 2\*\*64\), got 18446744073709551616"):
        prepared.rank(2**64)
    with pytest.raises(TypeError, match="key must be an int.*got float: 1.5"):
        prepared.first(1.5)  # never truncated
    with pytest.raises(TypeError, match="key must be an int.*got str"):
        prepared.rank("k")
    with pytest.raises(ValueError, match=r"nodes must be unique ids, got duplicates \[2\]"):
        HrwNodes([1, 2, 2])
    with pytest.raises(ValueError, match="nodes must not be empty"):
        HrwNodes([])
    with pytest.raises(ValueError, match="weights must not all be zero"):
        HrwNodes(nodes, [0.0] * 4)
    with pytest.raises(ValueError, match="capacity_factor=0.5 is infeasible"):
        prepared.assign(np.arange(10, dtype=np.uint64), 0.5)
    with pytest.raises(ValueError, match="n_threads must be None or an int >= 1, got 0"):
        prepared.assign([1, 2], n_threads=0)
    from edgeloop._native import load

    with pytest.raises(RuntimeError, match="not prepared"):
        load("_placement").PreparedNodes().first(1)


def test_kernels_package_exports_the_prepared_form():
    import edgeloop.kernels as k

    assert k.HrwNodes is HrwNodes and k.stable_hash_many is stable_hash_many
    assert {"HrwNodes", "stable_hash_many"} <= set(k.__all__)
