"""Streaming statistics against NumPy/SciPy references, both float dtypes, edge shapes, NaN/inf."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.distance import jensenshannon

from edgeloop.kernels import HistogramAccumulator, RunningMoments, js_distance, psi, reconstruction_error

DTYPES = [np.float32, np.float64]


def quantile_edges(x: np.ndarray, bins: int) -> np.ndarray:
    return np.ascontiguousarray(np.quantile(x, np.linspace(0, 1, bins + 1), axis=0).T)


def reference_hist(x: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """np.histogram per feature, after clamping out-of-range values to the end edges."""
    out = []
    for f in range(edges.shape[0]):
        col = x[:, f].astype(np.float64)
        col = np.clip(col[~np.isnan(col)], edges[f, 0], edges[f, -1])
        out.append(np.histogram(col, bins=edges[f])[0])
    return np.array(out)


# --------------------------------------------------------------------------- histograms


@pytest.mark.parametrize("dtype", DTYPES)
def test_histogram_matches_numpy(dtype):
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(2000, 7))
    edges = quantile_edges(ref, 10)
    x = (rng.normal(size=(500, 7)) * 1.5).astype(dtype)  # some values fall outside the edges
    acc = HistogramAccumulator(edges).update(x)
    assert acc.counts.dtype == np.int64 and acc.counts.shape == (7, 10)
    np.testing.assert_array_equal(acc.counts, reference_hist(x, edges))
    assert acc.counts.sum() == x.size


def test_histogram_values_on_edges_and_repeated_edges_follow_numpy():
    edges = np.array([[0.0, 1.0, 1.0, 2.0, 3.0]])
    x = np.array([[0.0], [1.0], [1.5], [2.0], [3.0], [2.999]])
    acc = HistogramAccumulator(edges).update(x)
    np.testing.assert_array_equal(acc.counts[0], np.histogram(x[:, 0], bins=edges[0])[0])
    np.testing.assert_array_equal(acc.counts[0], [1, 0, 2, 3])


def test_histogram_outside_values_clamp_to_end_bins_and_nan_is_counted_apart():
    edges = np.array([[0.0, 1.0, 2.0], [10.0, 20.0, 30.0]])
    x = np.array([[-5.0, np.nan], [np.inf, 35.0], [-np.inf, np.nan], [np.nan, 15.0], [0.5, -np.inf]])
    acc = HistogramAccumulator(edges).update(x)
    np.testing.assert_array_equal(acc.counts, [[3, 1], [2, 1]])
    np.testing.assert_array_equal(acc.nan_counts, [1, 2])


@pytest.mark.parametrize("dtype", DTYPES)
def test_histogram_large_batch_takes_the_parallel_path(dtype):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(3000, 64)).astype(dtype)  # 192k values: above the parallel threshold
    x[::97, 5] = np.nan
    edges = quantile_edges(rng.normal(size=(1000, 64)), 16)
    acc = HistogramAccumulator(edges).update(x)
    np.testing.assert_array_equal(acc.counts, reference_hist(x, edges))
    assert acc.nan_counts[5] == len(range(0, 3000, 97)) and acc.nan_counts.sum() == acc.nan_counts[5]


def test_histogram_edge_shapes():
    edges = np.array([[0.0, 0.5, 1.0]])
    acc = HistogramAccumulator(edges)
    acc.update(np.empty((0, 1)))
    assert acc.counts.sum() == 0
    acc.update(np.array([[0.7]], dtype=np.float32))
    np.testing.assert_array_equal(acc.counts, [[0, 1]])
    assert acc.n_features == 1 and acc.n_bins == 2


def test_histogram_merge_equals_update_of_concatenation():
    rng = np.random.default_rng(2)
    edges = quantile_edges(rng.normal(size=(500, 4)), 8)
    a, b = rng.normal(size=(300, 4)), rng.normal(size=(200, 4))
    b[3, 2] = np.nan
    merged = HistogramAccumulator(edges).update(a).merge(HistogramAccumulator(edges).update(b))
    whole = HistogramAccumulator(edges).update(np.vstack([a, b]))
    np.testing.assert_array_equal(merged.counts, whole.counts)
    np.testing.assert_array_equal(merged.nan_counts, whole.nan_counts)
    restored = HistogramAccumulator.from_state(merged.to_state())
    np.testing.assert_array_equal(restored.counts, whole.counts)
    np.testing.assert_array_equal(restored.nan_counts, whole.nan_counts)
    merged.reset()
    assert merged.counts.sum() == 0 and merged.nan_counts.sum() == 0


def test_histogram_copies_non_contiguous_and_integer_input():
    rng = np.random.default_rng(3)
    edges = np.tile(np.linspace(-3, 3, 7), (3, 1))
    x = rng.normal(size=(50, 6))
    strided = x[:, ::2]
    fortran = np.asfortranarray(x[:, :3])
    expected = reference_hist(np.ascontiguousarray(strided), edges)
    np.testing.assert_array_equal(HistogramAccumulator(edges).update(strided).counts, expected)
    np.testing.assert_array_equal(
        HistogramAccumulator(edges).update(fortran).counts, reference_hist(np.ascontiguousarray(fortran), edges)
    )
    ints = rng.integers(-3, 4, size=(20, 3))
    np.testing.assert_array_equal(HistogramAccumulator(edges).update(ints).counts, reference_hist(ints, edges))


def test_histogram_argument_errors():
    with pytest.raises(ValueError, match=r"edges must be 2-D \(features, bins \+ 1\).*got shape \(3,\)"):
        HistogramAccumulator([0.0, 1.0, 2.0])
    with pytest.raises(ValueError, match=r"edges must be non-decreasing per feature, got decreasing edges in features \[1\]"):
        HistogramAccumulator([[0.0, 1.0, 2.0], [0.0, 2.0, 1.0]])
    with pytest.raises(ValueError, match=r"edges must be finite.*features \[0\]"):
        HistogramAccumulator([[0.0, np.nan, 2.0]])
    acc = HistogramAccumulator([[0.0, 1.0], [0.0, 1.0]])
    with pytest.raises(ValueError, match=r"x must have 2 features \(columns\), got shape \(4, 3\)"):
        acc.update(np.zeros((4, 3)))
    with pytest.raises(ValueError, match=r"x must be 2-D \(rows, features\), got shape \(2,\)"):
        acc.update(np.zeros(2))
    with pytest.raises(TypeError, match="x must hold real numbers, got dtype <U1"):
        acc.update(np.array([["a", "b"]]))
    with pytest.raises(ValueError, match="other must have the same edges"):
        acc.merge(HistogramAccumulator([[0.0, 2.0], [0.0, 1.0]]))
    with pytest.raises(TypeError, match="other must be a HistogramAccumulator, got RunningMoments"):
        acc.merge(RunningMoments(2))


# --------------------------------------------------------------------------- moments


@pytest.mark.parametrize("dtype", DTYPES)
def test_moments_match_numpy_over_batches(dtype):
    rng = np.random.default_rng(4)
    x = (rng.normal(size=(1000, 6)) * [1, 2, 3, 4, 5, 6] + 10).astype(dtype)
    acc = RunningMoments(6)
    for chunk in np.array_split(x, [1, 17, 400, 401]):
        acc.update(chunk)
    ref = x.astype(np.float64)
    np.testing.assert_array_equal(acc.count, 1000)
    np.testing.assert_allclose(acc.mean, ref.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(acc.variance(0), ref.var(axis=0), rtol=1e-10)
    np.testing.assert_allclose(acc.variance(1), ref.var(axis=0, ddof=1), rtol=1e-10)


def test_moments_are_stable_far_from_zero():
    rng = np.random.default_rng(5)
    x = 1e9 + rng.normal(size=(10_000, 1))
    acc = RunningMoments(1)
    for chunk in np.array_split(x, 7):
        acc.update(chunk)
    np.testing.assert_allclose(acc.variance(1), x.var(ddof=1), rtol=1e-6)


def test_moments_merge_equals_update_of_concatenation_and_survives_state_export():
    rng = np.random.default_rng(6)
    parts = [rng.normal(loc=i, size=(n, 3)) for i, n in enumerate([50, 1, 300, 0])]
    whole = RunningMoments(3).update(np.vstack(parts))
    edges = [RunningMoments(3).update(p).to_state() for p in parts]  # edge side
    cloud = RunningMoments(3)
    for state in edges:
        cloud.merge(RunningMoments.from_state(state))
    np.testing.assert_array_equal(cloud.count, whole.count)
    np.testing.assert_allclose(cloud.mean, whole.mean, rtol=1e-12)
    np.testing.assert_allclose(cloud.variance(1), whole.variance(1), rtol=1e-12)


def test_moments_skip_non_finite_values_per_feature():
    x = np.array([[1.0, np.nan], [2.0, 5.0], [np.inf, 7.0], [4.0, -np.inf]])
    acc = RunningMoments(2).update(x)
    np.testing.assert_array_equal(acc.count, [3, 2])
    np.testing.assert_allclose(acc.mean, [7 / 3, 6.0])
    np.testing.assert_allclose(acc.variance(0), [np.var([1, 2, 4]), 1.0])


def test_moments_edge_shapes():
    acc = RunningMoments(1)
    acc.update(np.empty((0, 1)))
    assert acc.count[0] == 0 and np.isnan(acc.variance(0)[0])
    acc.update(np.array([[3.0]], dtype=np.float32))
    assert acc.mean[0] == 3.0 and acc.variance(0)[0] == 0.0 and np.isnan(acc.variance(1)[0])
    acc.reset()
    assert acc.count[0] == 0 and acc.mean[0] == 0.0


def test_moments_argument_errors():
    with pytest.raises(ValueError, match="n_features must be an int >= 1, got 0"):
        RunningMoments(0)
    with pytest.raises(ValueError, match="n_features must be an int >= 1, got 2.5"):
        RunningMoments(2.5)
    acc = RunningMoments(2)
    with pytest.raises(ValueError, match=r"x must have 2 features \(columns\), got shape \(3, 1\)"):
        acc.update(np.zeros((3, 1)))
    with pytest.raises(ValueError, match="ddof must be 0 or 1, got 2"):
        acc.variance(2)
    with pytest.raises(ValueError, match="other must have 2 features, got 3"):
        acc.merge(RunningMoments(3))
    with pytest.raises(ValueError, match=r"state\['mean'\] must have shape \(2,\), got \(3,\)"):
        RunningMoments.from_state({"count": np.zeros(2, dtype=np.int64), "mean": np.zeros(3), "m2": np.zeros(2)})
    with pytest.raises(ValueError, match=r"state\['count'\] must hold non-negative integers"):
        RunningMoments.from_state({"count": np.array([-1, 2]), "mean": np.zeros(2), "m2": np.zeros(2)})


# --------------------------------------------------------------------------- PSI and JS


def reference_psi(ref, cur, eps):
    p = np.maximum(ref / ref.sum(axis=1, keepdims=True), eps)
    q = np.maximum(cur / cur.sum(axis=1, keepdims=True), eps)
    return ((q - p) * np.log(q / p)).sum(axis=1)


def test_psi_matches_reference_formula():
    rng = np.random.default_rng(7)
    ref = rng.integers(0, 50, size=(5, 10))
    cur = rng.integers(0, 50, size=(5, 10))
    ref[0, 3] = 0  # an empty bin: the eps floor keeps it finite
    for eps in (1e-6, 1e-3):
        np.testing.assert_allclose(psi(ref, cur, eps=eps), reference_psi(ref, cur, eps), rtol=1e-12)
    assert np.all(np.isfinite(psi(ref, cur)))
    np.testing.assert_array_equal(psi(ref, ref), 0.0)
    assert psi(np.array([10, 0]), np.array([0, 10]), eps=0.01) == pytest.approx(2 * 0.99 * np.log(100))


def test_psi_and_js_of_an_empty_histogram_are_nan_and_1d_gives_a_float():
    ref = np.array([[1, 2, 3], [0, 0, 0]])
    cur = np.array([[3, 2, 1], [1, 1, 1]])
    assert np.isnan(psi(ref, cur)[1]) and np.isfinite(psi(ref, cur)[0])
    assert np.isnan(js_distance(ref, cur)[1])
    assert isinstance(psi([1, 2, 3], [3, 2, 1]), float)
    assert isinstance(js_distance([1, 2, 3], [3, 2, 1]), float)


def test_js_distance_matches_scipy():
    rng = np.random.default_rng(8)
    ref = rng.integers(0, 20, size=(6, 12)).astype(float)
    cur = rng.integers(0, 20, size=(6, 12)).astype(float)
    ref[1, :6] = 0  # zero bins on one side only
    expected = [jensenshannon(ref[i], cur[i], base=2) for i in range(6)]
    np.testing.assert_allclose(js_distance(ref, cur), expected, rtol=1e-12, atol=1e-15)
    np.testing.assert_array_equal(js_distance(ref, ref), 0.0)
    assert js_distance([5, 0], [0, 7]) == pytest.approx(1.0)


def test_divergence_argument_errors():
    with pytest.raises(ValueError, match=r"cur_counts must have the shape of ref_counts \(2, 3\), got \(2, 4\)"):
        psi(np.ones((2, 3)), np.ones((2, 4)))
    with pytest.raises(ValueError, match=r"ref_counts must be finite and >= 0, got -1\.0 at index \(0, 1\)"):
        js_distance([[1, -1]], [[1, 1]])
    with pytest.raises(ValueError, match=r"cur_counts must be finite and >= 0, got nan at index \(0, 0\)"):
        psi([[1, 1]], [[np.nan, 1]])
    with pytest.raises(ValueError, match=r"cur_counts must be finite and >= 0, got -3\.0 at index \(2,\)"):
        psi([1, 1, 1], [1, 1, -3])
    with pytest.raises(ValueError, match=r"ref_counts must be \(bins,\) or \(features, bins\), got shape \(1, 1, 2\)"):
        psi(np.ones((1, 1, 2)), np.ones((1, 1, 2)))
    with pytest.raises(ValueError, match="eps must be a finite number >= 0, got -1.0"):
        psi([1, 2], [2, 1], eps=-1)


# --------------------------------------------------------------------------- PCA residual


def pca_fixture(rng, n=200, F=9, k=4):
    basis, _ = np.linalg.qr(rng.normal(size=(F, k)))
    x = rng.normal(size=(n, k)) @ basis.T * 3 + rng.normal(size=(n, F)) * 0.3 + 5
    mean, scale = x.mean(axis=0), x.std(axis=0)
    z = (x - mean) / scale
    components = np.linalg.svd(z, full_matrices=False)[2][:k]
    return x, mean, scale, components


def reference_error(x, mean, scale, comps):
    z = (x - mean) / scale
    return ((z - z @ comps.T @ comps) ** 2).sum(axis=1)


@pytest.mark.parametrize("dtype", DTYPES)
def test_reconstruction_error_matches_numpy(dtype):
    rng = np.random.default_rng(9)
    x, mean, scale, comps = pca_fixture(rng)
    expected = reference_error(x.astype(dtype).astype(np.float64), mean, scale, comps)
    got = reconstruction_error(x.astype(dtype), mean, scale, comps)
    assert got.dtype == np.float64 and got.shape == (200,)
    tol = 1e-4 if dtype == np.float32 else 1e-10
    np.testing.assert_allclose(got, expected, rtol=tol, atol=tol)
    outlier = x[:1] + 10 * (np.eye(9)[0] - comps.T @ comps[:, 0]) * scale  # off the principal subspace
    assert reconstruction_error(outlier.astype(dtype), mean, scale, comps)[0] > 10 * got.max()


def test_reconstruction_error_edge_shapes():
    rng = np.random.default_rng(10)
    x, mean, scale, comps = pca_fixture(rng, n=5)
    assert reconstruction_error(x[:0], mean, scale, comps).shape == (0,)
    row = x[:1] + rng.normal(size=(1, 9))  # off the subspace the 5 rows were fitted on
    expected = reference_error(row, mean, scale, comps)
    assert expected[0] > 0.1
    np.testing.assert_allclose(reconstruction_error(row, mean, scale, comps), expected, rtol=1e-10)
    z = (x - mean) / scale
    np.testing.assert_allclose(reconstruction_error(x, mean, scale, np.empty((0, 9))), (z**2).sum(axis=1))
    full = np.linalg.qr(rng.normal(size=(9, 9)))[0].T
    np.testing.assert_allclose(reconstruction_error(x, mean, scale, full), 0.0, atol=1e-20)
    one = rng.normal(size=(4, 1))
    np.testing.assert_allclose(reconstruction_error(one, [0.0], [2.0], [[1.0]]), 0.0, atol=1e-30)
    np.testing.assert_allclose(reconstruction_error(np.asfortranarray(x), mean, scale, comps), reference_error(x, mean, scale, comps))


def test_reconstruction_error_propagates_non_finite_rows_only():
    rng = np.random.default_rng(11)
    x, mean, scale, comps = pca_fixture(rng, n=4)
    x[1, 2] = np.nan
    got = reconstruction_error(x, mean, scale, comps)
    assert np.isnan(got[1]) and np.all(np.isfinite(got[[0, 2, 3]]))


def test_reconstruction_error_argument_errors():
    x = np.zeros((3, 4))
    comps = np.eye(4)[:2]
    with pytest.raises(ValueError, match=r"mean must have shape \(4,\) to match x, got \(3,\)"):
        reconstruction_error(x, np.zeros(3), np.ones(4), comps)
    with pytest.raises(ValueError, match=r"scale must be finite and non-zero, got \[0.0\]"):
        reconstruction_error(x, np.zeros(4), [1, 1, 0, 1], comps)
    with pytest.raises(ValueError, match=r"components must have shape \(k, 4\) with k <= 4, got \(2, 3\)"):
        reconstruction_error(x, np.zeros(4), np.ones(4), np.eye(3)[:2])
    with pytest.raises(ValueError, match=r"x must be 2-D \(rows, features\), got shape \(4,\)"):
        reconstruction_error(np.zeros(4), np.zeros(4), np.ones(4), comps)
