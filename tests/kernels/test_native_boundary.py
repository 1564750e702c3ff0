"""Every ``def`` of the compiled core checks the shapes it relies on: mismatched or extreme
shapes are a ValueError at the native entry itself, never an out-of-bounds access.

The native functions are called directly (not through ``edgeloop.kernels``), since their loops
run with bounds checks off.  "Extreme" arrays are zero-stride views (``as_strided``), so a
dimension above 2**31 costs no memory: a check that came after a copy or an allocation, or
a size truncated to a C ``int``, would show here as a MemoryError, a crash or wrong output.
"""
from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
from numpy.lib.stride_tricks import as_strided

from edgeloop._native import load

lin = load("_linalg")
st = load("_stats")
pl = load("_placement")

BIG = 2**31  # one more than a BLAS int can hold


def huge(shape, dtype=np.float32):
    """A read-only view of the given shape over one element (every stride 0)."""
    return as_strided(np.zeros(1, dtype), shape=shape, strides=(0,) * len(shape), writeable=False)


def tall(rows, dtype=np.float32):
    """A (rows, 1) view with unit stride down the column (what gemm accepts), over one element."""
    item = np.dtype(dtype).itemsize
    return as_strided(np.zeros(1, dtype), shape=(rows, 1), strides=(item, item), writeable=False)


# Which test covers each def of each module: a new entry point must be added here (and tested).
COVERED = {
    "_linalg": {"dense", "lowrank_dense", "gemm", "flip_signs", "scale_columns_to_rows", "sum_squares"},
    "_stats": {"hist_update", "moments_update", "moments_merge", "psi", "js_distance", "reconstruction_error"},
    "_placement": {"stable_hash", "stable_hash_many", "_neg_log_u", "_pair_hash", "capacities", "PreparedNodes"},
}


@pytest.mark.parametrize("name", sorted(COVERED))
def test_every_native_entry_point_is_covered_here(name):
    module = load(name)
    public = {
        attr for attr in dir(module)
        if callable(getattr(module, attr)) and not attr.startswith("__")
        and type(getattr(module, attr)).__name__ in ("cython_function_or_method", "builtin_function_or_method",
                                                    "fused_cython_function", "type")
        and getattr(getattr(module, attr), "__module__", name).endswith(name)
    }
    assert public <= COVERED[name], f"untested native entry points in {name}: {sorted(public - COVERED[name])}"


# ------------------------------------------------------------------------------ _linalg


def test_lowrank_dense_with_a_huge_empty_intermediate_does_not_crash():
    """The issue's reproducer: n * r = 2**31 overflowed a C int sizing a scratch buffer (segfault).

    Run in a child process so that a crash fails this test instead of killing the run.
    """
    code = textwrap.dedent("""
        import numpy as np
        from edgeloop._native import load
        lin = load("_linalg")
        for f in (lin.lowrank_dense, __import__("edgeloop.kernels", fromlist=["x"]).lowrank_dense):
            out = f(np.empty((65536, 0)), np.empty((0, 32768)), np.ones((32768, 1)))
            assert out.shape == (65536, 1) and not out.any(), out
            out = f(np.empty((65536, 0)), np.empty((0, 32768)), np.ones((32768, 1)), np.full(1, 2.0), "relu")
            assert (out == 2.0).all()
            out = f(np.ones((1, 3)), np.ones((3, 0)), np.ones((0, 4)), np.full(4, -1.0), "relu")
            assert out.shape == (1, 4) and not out.any()
        print("ok")
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", (proc.returncode, proc.stderr[-2000:])


@pytest.mark.parametrize("call, needle", [
    (lambda: lin.dense(np.ones((2, 3), np.float32), np.ones((4, 5), np.float32)), "w must have shape"),
    (lambda: lin.dense(np.ones((2, 3), np.float32), np.ones((3, 5), np.float32), np.ones(4, np.float32)),
     "b must have shape"),
    (lambda: lin.dense(np.ones((2, 3), np.float32), np.ones((3, 5), np.float32), None, "relu",
                       np.empty((2, 4), np.float32)), "out must have shape"),
    (lambda: lin.dense(np.ones(3, np.float32), np.ones((3, 5), np.float32)), "x must be 2-D"),
    (lambda: lin.dense(huge((1, BIG)), huge((BIG, 1))), r"x.shape\[1\] = 2147483648"),
    (lambda: lin.dense(huge((BIG, 1)), np.ones((1, 1), np.float32)), r"x.shape\[0\] = 2147483648"),
    (lambda: lin.dense(np.ones((1, 1), np.float32), huge((1, BIG))), r"w.shape\[1\] = 2147483648"),
    (lambda: lin.lowrank_dense(np.ones((2, 3)), np.ones((4, 2)), np.ones((2, 5))), "u must have shape"),
    (lambda: lin.lowrank_dense(np.ones((2, 3)), np.ones((3, 2)), np.ones((3, 5))), "v must have shape"),
    (lambda: lin.lowrank_dense(huge((1, 2)), huge((2, BIG)), huge((BIG, 1))), r"u.shape\[1\] = 2147483648"),
    (lambda: lin.lowrank_dense(huge((1, BIG)), huge((BIG, 3)), np.ones((3, 1), np.float32)),
     r"x.shape\[1\] = 2147483648"),
])
def test_dense_entry_points_refuse_bad_and_extreme_shapes(call, needle):
    with pytest.raises(ValueError, match=needle):
        call()


def test_gemm_refuses_mismatched_and_extreme_shapes():
    a = np.ones((4, 3), np.float64, order="F")
    b = np.ones((3, 2), np.float64, order="F")
    with pytest.raises(ValueError, match="do not chain"):
        lin.gemm(False, False, 1.0, a, b, 0.0, np.empty((4, 3), order="F"))
    with pytest.raises(ValueError, match="do not chain"):
        lin.gemm(True, False, 1.0, a, b, 0.0, np.empty((4, 2), order="F"))
    with pytest.raises(ValueError, match="unit stride"):
        lin.gemm(False, False, 1.0, np.ones((4, 3)), b, 0.0, np.empty((4, 2), order="F"))
    with pytest.raises(ValueError, match="overlap"):  # columns that alias each other
        c = as_strided(np.zeros(8), shape=(4, 2), strides=(8, 8))
        lin.gemm(False, False, 1.0, a, b, 0.0, c)
    # 2**31 rows (a real column view, never read): BLAS's int cannot say it
    big_a = tall(BIG, np.float64)
    big_c = as_strided(np.zeros(1), shape=(BIG, 1), strides=(8, 8))  # refused before it is written
    with pytest.raises(ValueError, match=r"a.shape\[0\] = 2147483648"):
        lin.gemm(False, False, 1.0, big_a, np.ones((1, 1), order="F"), 0.0, big_c)
    with pytest.raises(ValueError, match=r"shape\[0\] = 2147483648"):
        lin.gemm(True, False, 1.0, big_a, big_a, 0.0, np.empty((1, 1), order="F"))
    out = np.empty((4, 2), order="F")  # and the checked path still computes
    lin.gemm(False, False, 1.0, a, b, 0.0, out)
    np.testing.assert_array_equal(out, a @ b)


def test_svd_helpers_refuse_mismatched_shapes():
    with pytest.raises(ValueError, match="vt must have 3 rows"):
        lin.flip_signs(np.ones((4, 3)), np.ones((2, 5)))
    with pytest.raises(ValueError, match="shapes do not agree"):
        lin.scale_columns_to_rows(np.ones((4, 3)), np.ones(2), np.empty((3, 4)))
    with pytest.raises(ValueError, match="shapes do not agree"):
        lin.scale_columns_to_rows(np.ones((4, 3)), np.ones(3), np.empty((3, 5)))
    with pytest.raises(ValueError):  # typed memoryview: C-contiguous required
        lin.sum_squares(np.ones((4, 3))[:, ::2])
    assert lin.sum_squares(np.full((3, 9), 2.0)) == 108.0


# ------------------------------------------------------------------------------- _stats


def _hist_args(F=3, B=4, n=5, dtype=np.float64):
    edges = np.tile(np.linspace(0.0, 1.0, B + 1), (F, 1))
    return (np.full((n, F), 0.5, dtype), edges, np.zeros((F, B), np.int64), np.zeros(F, np.int64))


@pytest.mark.parametrize("index, bad, needle", [
    (1, np.ones((4, 5)), "edges must have shape"),                      # F mismatch
    (1, np.ones((3, 1)), "edges must have shape"),                      # fewer than 2 edges
    (2, np.zeros((3, 5), np.int64), "counts must have shape"),           # B mismatch
    (2, np.zeros((2, 4), np.int64), "counts must have shape"),           # F mismatch
    (3, np.zeros(2, np.int64), "nan_counts must have shape"),
    (0, np.ones((5, 3, 1)), "x must be 2-D"),
    (0, np.ones((5, 3))[:, ::-1], "C-contiguous"),
    (1, np.tile([0.0, 2.0, 1.0, 3.0, 4.0], (3, 1)), "non-decreasing"),
    (1, np.tile([0.0, np.nan, 1.0, 3.0, 4.0], (3, 1)), "non-decreasing"),
])
def test_hist_update_refuses_mismatched_shapes(index, bad, needle):
    args = list(_hist_args())
    before = args[2].copy()
    args[index] = bad
    with pytest.raises(ValueError, match=needle):
        st.hist_update(*args)
    if index != 2:
        np.testing.assert_array_equal(args[2], before)  # refused before anything was counted


@pytest.mark.parametrize("index, bad, error", [
    (0, np.ones((5, 3), np.int64), TypeError),
    (1, np.ones((3, 5), np.float32), TypeError),
    (2, np.zeros((3, 4), np.float64), TypeError),
    (3, np.zeros(3, np.int32), TypeError),
    (2, np.zeros((3, 4), np.int64)[::1].view(), None),  # fine: a view of the right layout
])
def test_hist_update_refuses_wrong_dtypes(index, bad, error):
    args = list(_hist_args())
    args[index] = bad
    if error is None:
        st.hist_update(*args)
        assert args[2].sum() == 15
    else:
        with pytest.raises(error):
            st.hist_update(*args)


def test_hist_update_refuses_read_only_counts():
    x, edges, counts, nans = _hist_args()
    counts.flags.writeable = False
    with pytest.raises(ValueError, match="writeable"):
        st.hist_update(x, edges, counts, nans)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("F", [1, 7, 8, 9, 64, 67])
@pytest.mark.parametrize("B", [1, 2, 5, 10, 129, 130])
def test_hist_update_both_paths_agree_with_numpy(dtype, F, B):
    """Compare path (<= 128 interior edges) and search path, full 8-wide blocks and tails."""
    rng = np.random.default_rng(F * 1000 + B)
    edges = np.sort(rng.normal(size=(F, B + 1)), axis=1)
    edges[:, 1] = edges[:, 2] if B > 2 else edges[:, 1]  # a repeated edge
    x = (rng.normal(size=(41, F)) * 1.5).astype(dtype)
    x[::5, 0] = np.nan
    x[1, -1] = np.inf
    x[2, -1] = -np.inf
    x[3, 0] = edges[0, 1]  # exactly on an edge
    counts = np.zeros((F, B), np.int64)
    nans = np.zeros(F, np.int64)
    st.hist_update(np.ascontiguousarray(x), edges, counts, nans)
    for f in range(F):
        col = x[:, f].astype(np.float64)
        col = np.clip(col[~np.isnan(col)], edges[f, 0], edges[f, -1])
        np.testing.assert_array_equal(counts[f], np.histogram(col, bins=edges[f])[0], err_msg=f"feature {f}")
        assert nans[f] == np.isnan(x[:, f]).sum()


def test_moments_refuse_mismatched_lengths():
    x = np.ones((4, 3))
    state = [np.zeros(3, np.int64), np.zeros(3), np.zeros(3)]
    scratch = [np.zeros(3, np.int64), np.zeros(3), np.zeros(3)]
    for i in range(3):
        short = [a.copy() for a in state]
        short[i] = short[i][:2]
        with pytest.raises(ValueError, match="must have shape \\(3,\\)"):
            st.moments_update(x, *short, *scratch)
        with pytest.raises(ValueError, match="must have shape \\(3,\\)"):
            st.moments_update(x, *state, *[a[:2] if j == i else a for j, a in enumerate(scratch)])
        with pytest.raises(ValueError, match="must have shape \\(3,\\)"):
            st.moments_merge(*state, *short)
    with pytest.raises(ValueError, match="count must have shape \\(4,\\) like x"):
        st.moments_update(np.ones((4, 4)), *state, *scratch)


@pytest.mark.parametrize("fn", ["psi", "js_distance"])
def test_distances_refuse_mismatched_tables(fn):
    ref = np.ones((3, 4))
    f = getattr(st, fn)
    args = (1e-6,) if fn == "psi" else ()
    with pytest.raises(ValueError, match="cur must have the shape of ref"):
        f(ref, np.ones((3, 5)), *args, np.empty(3))
    with pytest.raises(ValueError, match="cur must have the shape of ref"):
        f(ref, np.ones((2, 4)), *args, np.empty(3))
    with pytest.raises(ValueError, match="out must have shape"):
        f(ref, np.ones((3, 4)), *args, np.empty(2))
    out = np.empty(3)
    f(ref, np.ones((3, 4)), *args, out)
    np.testing.assert_array_equal(out, 0.0)


def test_reconstruction_error_refuses_mismatched_shapes():
    n, F, k = 5, 4, 2
    good = dict(x=np.ones((n, F)), mean=np.zeros(F), scale=np.ones(F), components=np.eye(k, F),
                z=np.empty((n, F)), proj=np.empty((n, k)), out=np.empty(n))
    bad = [("mean", np.zeros(F + 1), "mean must have shape"), ("scale", np.ones(F - 1), "scale must have shape"),
           ("components", np.eye(k, F + 1), "components must have shape"), ("z", np.empty((n, F + 1)), "z must"),
           ("z", np.empty((n - 1, F)), "z must"), ("proj", np.empty((n, k - 1)), "proj must"),
           ("proj", np.empty((n + 1, k)), "proj must"), ("out", np.empty(n - 1), "out must")]
    for name, value, needle in bad:
        with pytest.raises(ValueError, match=needle):
            st.reconstruction_error(**{**good, name: value})
    st.reconstruction_error(**{**good, "proj": np.empty((n, k + 3))})  # a wider scratch is fine
    np.testing.assert_allclose(good["out"], F - k)


# --------------------------------------------------------------------------- _placement


def _prepared(n=4):
    nodes = pl.PreparedNodes()
    nodes._prepare(np.arange(1, n + 1, dtype=np.uint64), np.ones(n), False)
    return nodes


def test_placement_entry_points_refuse_mismatched_shapes():
    with pytest.raises(ValueError, match="out must have shape \\(3,\\)"):
        pl.stable_hash_many(["a", "b", "c"], np.empty(2, np.uint64))
    with pytest.raises(ValueError, match="caps_by_id must have shape"):
        pl.capacities(np.ones(3), 1.25, 10, np.empty(2, np.int64))
    with pytest.raises(ValueError, match="n_keys must be >= 0"):
        pl.capacities(np.ones(3), 1.25, -1, np.empty(3, np.int64))
    with pytest.raises(ValueError, match="expected N >= 1 ids and N weights"):
        pl.PreparedNodes()._prepare(np.arange(3, dtype=np.uint64), np.ones(2), False)
    nodes = _prepared()
    keys = np.arange(10, dtype=np.uint64)
    with pytest.raises(ValueError, match="out must have shape"):
        nodes._assign_first(keys, np.empty(9, np.int64))
    out = np.empty(10, np.int64)
    nodes._assign_first(keys, out)
    with pytest.raises(ValueError, match="caps/out must have shapes"):
        nodes._assign_capped(keys, np.full(3, 5, np.int64), out)
    with pytest.raises(ValueError, match="room for all 10 keys"):
        nodes._assign_capped(keys, np.full(4, 2, np.int64), out.copy())
    for bad in (-1, 4, 2**40):
        first = out.copy()
        first[3] = bad  # not a node index: it would index the per-node tables out of bounds
        with pytest.raises(ValueError, match=r"out\[3\] = "):
            nodes._assign_capped(keys, np.full(4, 3, np.int64), first)
    capped = out.copy()
    nodes._assign_capped(keys, np.full(4, 2**62, np.int64), capped)  # huge caps: no overflow
    np.testing.assert_array_equal(capped, out)


def test_placement_scalar_entry_points_refuse_out_of_range_ints():
    for fn in (pl._neg_log_u, lambda h: pl._pair_hash(h, 1), lambda h: _prepared().first(h),
               lambda h: _prepared().rank(h)):
        with pytest.raises((OverflowError, ValueError)):
            fn(2**64)
        with pytest.raises((OverflowError, ValueError)):
            fn(-1)
    with pytest.raises(TypeError):
        pl.stable_hash(3.5)
    with pytest.raises(RuntimeError, match="not prepared"):
        pl.PreparedNodes().first(1)
