"""edgeloop.kernels linear algebra against NumPy/SciPy, in float32 and float64."""
import numpy as np
import pytest
import scipy.linalg

from edgeloop.kernels import CompressionReport, dense, lowrank_dense, randomized_svd, svd_compress

DTYPES = [np.float32, np.float64]
ACTIVATIONS = ["identity", "relu", "sigmoid", "tanh"]
# Elementwise tolerance relative to |x| @ |w| + |b|, the scale of the rounding error
# of any summation order (entries of x @ w itself may cancel to ~0).
TOL = {np.float32: 1e-5, np.float64: 1e-12}


def _act(name, z):
    if name == "relu":
        return np.maximum(z, 0)
    if name == "sigmoid":
        with np.errstate(over="ignore"):
            return 1.0 / (1.0 + np.exp(-z))
    if name == "tanh":
        return np.tanh(z)
    return z


def _assert_close_product(got, x, w, b, activation, dtype):
    x64, w64 = x.astype(np.float64), w.astype(np.float64)
    b64 = np.zeros(w.shape[1]) if b is None else b.astype(np.float64)
    want = _act(activation, x64 @ w64 + b64)
    scale = np.abs(x64) @ np.abs(w64) + np.abs(b64) + 1e-30
    # Every activation here is 1-Lipschitz, so the pre-activation bound carries over.
    assert got.dtype == dtype
    assert got.shape == want.shape
    assert np.all(np.abs(got - want) <= TOL[dtype] * scale + TOL[dtype] * np.abs(want))


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


# ----------------------------------------------------------------------------- dense


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("n", [0, 1, 2, 37])
def test_dense_matches_numpy(rng, dtype, activation, n):
    x = rng.standard_normal((n, 24)).astype(dtype)
    w = rng.standard_normal((24, 17)).astype(dtype)
    b = rng.standard_normal(17).astype(dtype)
    got = dense(x, w, b, activation)
    _assert_close_product(got, x, w, b, activation, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [1, 5])
def test_dense_without_bias_and_with_one_feature(rng, dtype, n):
    x = rng.standard_normal((n, 1)).astype(dtype)
    w = rng.standard_normal((1, 9)).astype(dtype)
    _assert_close_product(dense(x, w), x, w, None, "identity", dtype)
    _assert_close_product(dense(x, w, None, "relu"), x, w, None, "relu", dtype)
    w1 = rng.standard_normal((1, 1)).astype(dtype)  # one output too
    _assert_close_product(dense(x, w1, None, "tanh"), x, w1, None, "tanh", dtype)


def test_dense_empty_batch_keeps_output_width(rng):
    out = dense(np.zeros((0, 8), np.float32), np.ones((8, 3), np.float32), np.ones(3, np.float32), "relu")
    assert out.shape == (0, 3) and out.dtype == np.float32


@pytest.mark.parametrize("dtype", DTYPES)
def test_dense_zero_features_gives_bias(rng, dtype):
    b = rng.standard_normal(4).astype(dtype)
    out = dense(np.zeros((3, 0), dtype), np.zeros((0, 4), dtype), b, "identity")
    np.testing.assert_array_equal(out, np.tile(b, (3, 1)))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [1, 6])
def test_dense_out_is_reused(rng, dtype, n):
    w = rng.standard_normal((10, 7)).astype(dtype)
    b = rng.standard_normal(7).astype(dtype)
    out = np.full((n, 7), np.nan, dtype)
    for _ in range(3):
        x = rng.standard_normal((n, 10)).astype(dtype)
        got = dense(x, w, b, "sigmoid", out=out)
        assert got is out
        _assert_close_product(out, x, w, b, "sigmoid", dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_dense_reads_non_contiguous_and_fortran_inputs(rng, dtype):
    big_x = rng.standard_normal((9, 40)).astype(dtype)
    big_w = rng.standard_normal((40, 30)).astype(dtype)
    b = rng.standard_normal(15).astype(dtype)[::1]
    x = big_x[::2, ::2]  # strided: copied once
    w = big_w[::2, ::2]
    assert not x.flags.c_contiguous and not w.flags.f_contiguous
    _assert_close_product(dense(x, w, b, "relu"), x, w, b, "relu", dtype)
    xf, wf = np.asfortranarray(x), np.asfortranarray(w)  # read in place through BLAS 'T'
    _assert_close_product(dense(xf, wf, b, "relu"), x, w, b, "relu", dtype)
    _assert_close_product(dense(xf[:1], wf, b, "tanh"), x[:1], w, b, "tanh", dtype)
    strided_b = rng.standard_normal(30).astype(dtype)[::2]
    _assert_close_product(dense(x, w, strided_b), x, w, strided_b, "identity", dtype)


def test_dense_accepts_lists_as_float64():
    out = dense([[1.0, 2.0]], [[1.0], [1.0]], [0.5])
    assert out.dtype == np.float64
    np.testing.assert_allclose(out, [[3.5]])


@pytest.mark.parametrize(
    "x_shape, w_shape, b_shape, needle",
    [
        ((4, 5), (6, 3), None, "w must have shape (k, m) with k = x.shape[1] = 5"),
        ((4, 5), (5, 3), (4,), "b must have shape (m,) = (3,)"),
        ((5,), (5, 3), None, "x must be 2-D"),
        ((4, 5), (5,), None, "w must be 2-D"),
        ((4, 5), (5, 3), (3, 1), "b must be 1-D"),
    ],
)
def test_dense_shape_errors_name_the_argument(x_shape, w_shape, b_shape, needle):
    x = np.ones(x_shape, np.float32)
    w = np.ones(w_shape, np.float32)
    b = None if b_shape is None else np.ones(b_shape, np.float32)
    with pytest.raises(ValueError) as info:
        dense(x, w, b)
    assert needle in str(info.value)


def test_dense_argument_errors():
    x = np.ones((2, 3), np.float32)
    w = np.ones((3, 4), np.float32)
    with pytest.raises(TypeError, match="w has dtype float64 but x has dtype float32"):
        dense(x, w.astype(np.float64))
    with pytest.raises(TypeError, match="b has dtype float64"):
        dense(x, w, np.ones(4))
    with pytest.raises(TypeError, match="x must have dtype float32 or float64; got int64"):
        dense(np.ones((2, 3), np.int64), w)
    with pytest.raises(ValueError, match="activation must be one of .*got 'gelu'"):
        dense(x, w, None, "gelu")
    with pytest.raises(ValueError, match=r"out must have shape \(2, 4\); got shape \(4, 2\)"):
        dense(x, w, out=np.empty((4, 2), np.float32))
    with pytest.raises(TypeError, match="out must have dtype float32"):
        dense(x, w, out=np.empty((2, 4), np.float64))
    with pytest.raises(ValueError, match="out must be C-contiguous"):
        dense(x, w, out=np.empty((2, 4), np.float32, order="F"))
    with pytest.raises(ValueError, match="out must not share memory"):
        sq = np.ones((3, 3), np.float32)
        dense(sq, sq, out=sq)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_dense_propagates_nan_like_numpy(rng, dtype, activation):
    x = rng.standard_normal((3, 6)).astype(dtype)
    x[1, 2] = np.nan
    w = rng.standard_normal((6, 4)).astype(dtype)
    got = dense(x, w, np.zeros(4, dtype), activation)
    assert np.isnan(got[1]).all()
    assert np.isfinite(got[[0, 2]]).all()
    got1 = dense(x[1:2], w, None, activation)  # the gemv path too
    assert np.isnan(got1).all()


def test_dense_sigmoid_saturates_without_nan():
    x = np.array([[1.0], [-1.0]], np.float32)
    w = np.array([[1e4]], np.float32)
    np.testing.assert_array_equal(dense(x, w, None, "sigmoid"), [[1.0], [0.0]])


# --------------------------------------------------------------------- lowrank_dense


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("n", [0, 1, 13])
def test_lowrank_dense_matches_numpy(rng, dtype, activation, n):
    x = rng.standard_normal((n, 20)).astype(dtype)
    u = rng.standard_normal((20, 4)).astype(dtype)
    v = rng.standard_normal((4, 11)).astype(dtype)
    b = rng.standard_normal(11).astype(dtype)
    got = lowrank_dense(x, u, v, b, activation)
    x64, u64, v64 = (a.astype(np.float64) for a in (x, u, v))
    want = _act(activation, (x64 @ u64) @ v64 + b)
    scale = (np.abs(x64) @ np.abs(u64)) @ np.abs(v64) + np.abs(b)
    assert got.shape == (n, 11) and got.dtype == dtype
    assert np.all(np.abs(got - want) <= 4 * TOL[dtype] * (scale + np.abs(want)))


def test_lowrank_dense_shape_errors_name_the_argument():
    x = np.ones((2, 5), np.float32)
    with pytest.raises(ValueError, match=r"u must have shape \(k, r\) with k = x.shape\[1\] = 5"):
        lowrank_dense(x, np.ones((4, 2), np.float32), np.ones((2, 3), np.float32))
    with pytest.raises(ValueError, match=r"v must have shape \(r, m\) with r = u.shape\[1\] = 2"):
        lowrank_dense(x, np.ones((5, 2), np.float32), np.ones((3, 3), np.float32))
    with pytest.raises(TypeError, match="v has dtype float64"):
        lowrank_dense(x, np.ones((5, 2), np.float32), np.ones((2, 3)))


# ------------------------------------------------------------------- randomized_svd


def _spectral_matrix(m, n, decay, dtype, seed=7):
    """U diag(s) V^T with random orthogonal U, V and a chosen singular value decay."""
    rng = np.random.default_rng(seed)
    r = min(m, n)
    u, _ = np.linalg.qr(rng.standard_normal((m, r)))
    v, _ = np.linalg.qr(rng.standard_normal((n, r)))
    i = np.arange(r)
    s = np.exp(-i / 6.0) if decay == "fast" else 1.0 / np.sqrt(1.0 + i)
    return np.ascontiguousarray(((u * s) @ v.T).astype(dtype))


def _optimal_error(a, k):
    s = scipy.linalg.svd(a.astype(np.float64), compute_uv=False)
    return np.sqrt(np.sum(s[k:] ** 2) / np.sum(s**2))


def _error(a, u, s, vt):
    a64 = a.astype(np.float64)
    return np.linalg.norm(a64 - (u.astype(np.float64) * s) @ vt.astype(np.float64)) / np.linalg.norm(a64)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("decay", ["fast", "slow"])
@pytest.mark.parametrize("shape, k", [((300, 240), 12), ((160, 420), 20), ((500, 120), 8)])
def test_randomized_svd_error_within_one_percent_of_optimal(dtype, decay, shape, k):
    a = _spectral_matrix(*shape, decay, dtype)
    u, s, vt = randomized_svd(a, k)
    assert u.shape == (shape[0], k) and s.shape == (k,) and vt.shape == (k, shape[1])
    assert u.dtype == s.dtype == vt.dtype == dtype
    assert np.all(np.diff(s) <= 0)
    assert _error(a, u, s, vt) <= 1.01 * _optimal_error(a, k)
    eye = np.eye(k)
    atol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(u.T.astype(np.float64) @ u, eye, atol=atol)
    np.testing.assert_allclose(vt.astype(np.float64) @ vt.T, eye, atol=atol)


@pytest.mark.parametrize("iters", [0, 1, 3])
def test_randomized_svd_fixed_iterations_beat_hmt_subspace_iteration(iters):
    """With an int power_iters the Krylov space contains HMT's, so the error is no worse."""
    a = _spectral_matrix(200, 260, "slow", np.float64)  # wide: the basis is on the row side
    k, p = 10, 5
    u, s, vt = randomized_svd(a, k, oversample=p, power_iters=iters, seed=3)
    # HMT (QR-normalised subspace iteration) from the same starting block.
    omega = np.random.default_rng(3).standard_normal((260, k + p))
    q, _ = np.linalg.qr(a @ omega)
    for _ in range(iters):
        q, _ = np.linalg.qr(a.T @ q)
        q, _ = np.linalg.qr(a @ q)
    ub, sb, vtb = np.linalg.svd(q.T @ a, full_matrices=False)
    hmt = _error(a, q @ ub[:, :k], sb[:k], vtb[:k])
    assert _error(a, u, s, vt) <= hmt * (1 + 1e-9)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(40, 25), (25, 40)])
def test_randomized_svd_full_rank_is_exact(dtype, shape):
    a = _spectral_matrix(*shape, "slow", dtype)
    k = min(shape)
    u, s, vt = randomized_svd(a, k)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    assert _error(a, u, s, vt) <= tol
    np.testing.assert_allclose(s, scipy.linalg.svd(a, compute_uv=False), rtol=tol * 10)


@pytest.mark.parametrize("dtype", DTYPES)
def test_randomized_svd_same_seed_same_bits_and_sign_convention(dtype):
    a = _spectral_matrix(220, 180, "slow", dtype)
    first = randomized_svd(a, 15, seed=11)
    second = randomized_svd(a.copy(), 15, seed=11)
    for x, y in zip(first, second):
        assert x.tobytes() == y.tobytes()
    u, _, vt = first
    top = np.argmax(np.abs(u), axis=0)
    assert np.all(u[top, np.arange(u.shape[1])] > 0)
    # Flipping a sign pair is the only freedom; the product is unchanged by the convention.
    other = randomized_svd(a, 15, seed=12)
    assert not np.array_equal(first[0], other[0])  # the seed is really used
    np.testing.assert_allclose(np.abs(np.sum(u * other[0], axis=0)), 1, atol=1e-3)
    assert np.all(np.sum(u * other[0], axis=0) > 0)  # and both obey the same sign rule
    assert vt.flags.c_contiguous and u.flags.c_contiguous


@pytest.mark.parametrize("dtype", DTYPES)
def test_randomized_svd_low_rank_input(dtype):
    """A matrix of exact rank 3 asked for rank 6: the extra values are ~0, no NaN."""
    rng = np.random.default_rng(0)
    a = (rng.standard_normal((80, 3)) @ rng.standard_normal((3, 70))).astype(dtype)
    u, s, vt = randomized_svd(a, 6)
    assert np.isfinite(u).all() and np.isfinite(s).all() and np.isfinite(vt).all()
    assert _error(a, u, s, vt) <= (1e-5 if dtype == np.float32 else 1e-12)
    assert s[3:].max() <= 1e-4 * s[0]


def test_randomized_svd_refuses_bad_input():
    a = np.ones((10, 8), np.float32)
    bad = a.copy()
    bad[2, 3] = np.nan
    with pytest.raises(ValueError, match="randomized_svd: a contains NaN or inf"):
        randomized_svd(bad, 2)
    bad[2, 3] = np.inf
    with pytest.raises(ValueError, match="a contains NaN or inf"):
        randomized_svd(bad, 2)
    with pytest.raises(ValueError, match=r"rank must be in \[1, 8\]; got 9"):
        randomized_svd(a, 9)
    with pytest.raises(TypeError, match="rank must be an int; got 2.5"):
        randomized_svd(a, 2.5)
    with pytest.raises(ValueError, match="power_iters must be 'auto' or an int"):
        randomized_svd(a, 2, power_iters="many")
    with pytest.raises(ValueError, match="oversample must be >= 0; got -1"):
        randomized_svd(a, 2, oversample=-1)
    with pytest.raises(TypeError, match="a must have dtype float32 or float64; got int64"):
        randomized_svd(np.ones((4, 4), np.int64), 2)
    with pytest.raises(ValueError, match=r"a must be a 2-D matrix; got shape \(5,\)"):
        randomized_svd(np.ones(5), 1)


def test_randomized_svd_non_contiguous_input_is_copied_once():
    a = _spectral_matrix(120, 200, "fast", np.float64)
    view = a.T  # Fortran-ordered view of the (200, 120) transpose
    u, s, vt = randomized_svd(view, 5)
    assert _error(view, u, s, vt) <= 1.01 * _optimal_error(view, 5)


# --------------------------------------------------------------------- svd_compress


@pytest.mark.parametrize("dtype", DTYPES)
def test_svd_compress_rank_mode_report(dtype):
    a = _spectral_matrix(150, 90, "fast", dtype)
    us, vt, report = svd_compress(a, rank=7)
    assert isinstance(report, CompressionReport)
    assert us.shape == (150, 7) and vt.shape == (7, 90)
    assert report.rank == 7
    assert report.params_before == 150 * 90
    assert report.params_after == 7 * (150 + 90)
    measured = np.linalg.norm(a.astype(np.float64) - us.astype(np.float64) @ vt) / np.linalg.norm(a.astype(np.float64))
    assert report.relative_error == pytest.approx(measured, rel=1e-4)
    assert report.relative_error <= 1.01 * _optimal_error(a, 7)
    with pytest.raises(AttributeError):
        report.rank = 3  # frozen


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("decay", ["fast", "slow"])
@pytest.mark.parametrize("tol", [0.5, 0.2, 0.05, 0.01])
def test_svd_compress_tol_mode_finds_smallest_rank(dtype, decay, tol):
    """Guarantee: error <= tol and r* <= rank <= r* + 1, r* the optimal smallest rank."""
    a = _spectral_matrix(260, 180, decay, dtype)
    s = scipy.linalg.svd(a.astype(np.float64), compute_uv=False)
    tail = np.sqrt(np.maximum(1 - np.cumsum(s**2) / np.sum(s**2), 0))  # error at rank i+1
    r_star = int(np.nonzero(tail <= tol)[0][0]) + 1
    us, vt, report = svd_compress(a, tol=tol)
    assert report.relative_error <= tol
    assert r_star <= report.rank <= r_star + 1
    assert us.shape == (260, report.rank) and vt.shape == (report.rank, 180)


def test_svd_compress_argument_errors():
    a = np.ones((6, 5))
    with pytest.raises(ValueError, match="exactly one of rank or tol"):
        svd_compress(a)
    with pytest.raises(ValueError, match="exactly one of rank or tol"):
        svd_compress(a, rank=2, tol=0.1)
    with pytest.raises(ValueError, match="tol must be a float with 0 < tol < 1; got 1.5"):
        svd_compress(a, tol=1.5)
    with pytest.raises(ValueError, match=r"rank must be in \[1, 5\]; got 0"):
        svd_compress(a, rank=0)
    bad = a.copy()
    bad[0, 0] = np.inf
    with pytest.raises(ValueError, match="svd_compress: w contains NaN or inf"):
        svd_compress(bad, tol=0.1)


def test_svd_compress_zero_matrix_needs_rank_zero():
    us, vt, report = svd_compress(np.zeros((7, 4), np.float32), tol=0.1)
    assert report.rank == 0 and us.shape == (7, 0) and vt.shape == (0, 4)
    assert report.relative_error == 0.0


@pytest.mark.parametrize("activation", ["sigmoid", "tanh"])
def test_dense_large_batch_threaded_epilogue(rng, activation):
    """Above 2**16 outputs the transcendental epilogue is split over OpenMP threads."""
    x = rng.standard_normal((300, 16)).astype(np.float32)
    w = rng.standard_normal((16, 256)).astype(np.float32)
    b = rng.standard_normal(256).astype(np.float32)
    _assert_close_product(dense(x, w, b, activation), x, w, b, activation, np.float32)
