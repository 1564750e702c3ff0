"""Dense layers, randomized SVD and SVD compression over the compiled core.

``dense``/``lowrank_dense`` are single calls into ``edgeloop._native._linalg`` (the
batch-1 path is a few microseconds, so the wrapper stays thin).  The SVD is written
here over BLAS/LAPACK: its cost is a handful of large matrix products, which the
native ``gemm`` writes straight into preallocated Fortran-ordered buffers.

Randomized SVD algorithm (a randomized block Krylov / block Lanczos method, Musco &
Musco 2015, in the Halko-Martinsson-Tropp framework):

* start from ``Y = A @ Omega`` with a Gaussian block ``Omega`` drawn from ``seed``;
* repeat: orthonormalise ``Y`` against the basis built so far (two block Gram-Schmidt
  passes around Householder QR, so orthogonality holds in float32 too), append it as
  ``Q_j``, compute ``Z_j = A^T Q_j`` and the next block ``Y = A @ Z_j``;
* because every ``Z_j = A^T Q_j`` is kept, ``B = Q^T A`` is known without another pass
  over ``A``; its singular values come from the small float64 Gram matrix ``Z^T Z``.

Keeping all blocks (not only the last, as power iteration does) makes the space at
least as good as HMT's with the same passes over ``A``, so fewer passes reach the
same error.  ``power_iters="auto"`` stops once the rank-``rank`` energy ``sum s_i^2``
has converged.  Cost per iteration: two products of ``A`` with a thin block.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from edgeloop._native import load

_lin = load("_linalg")

__all__ = ["dense", "lowrank_dense", "randomized_svd", "svd_compress", "CompressionReport"]

_native_dense = _lin.dense
_native_lowrank = _lin.lowrank_dense


# ----------------------------------------------------------------------------- dense


def dense(x, w, b=None, activation="identity", out=None):
    """``act(x @ w + b)``: one BLAS product and one fused bias+activation pass.

    x: (n, k), w: (k, m), b: (m,) or None, activation: "identity", "relu", "sigmoid"
    or "tanh"; out: optional preallocated C-contiguous (n, m) array (returned).
    float32 or float64, one dtype for all arrays: mixed dtypes raise TypeError rather
    than silently casting a weight matrix on every call.  C- and F-contiguous x and w
    are read in place (BLAS takes either order); any other layout is copied once.
    A single row goes through SciPy's gemv, more rows through NumPy's gemm (the faster of the
    two bundled OpenBLAS builds for small batches, see ``native/_linalg.pyx``); the GIL is
    released around both and around the epilogue.
    Zero rows give an empty (0, m) result.  NaN and inf propagate as in NumPy
    (``relu(NaN)`` is NaN, like ``np.maximum(NaN, 0)``).
    """
    return _native_dense(x, w, b, activation, out)


def lowrank_dense(x, u, v, b=None, activation="identity", out=None):
    """``act((x @ u) @ v + b)`` for a weight factorised as ``w ~ u @ v``.

    x: (n, k), u: (k, r), v: (r, m), b: (m,) or None; the (n, r) intermediate costs
    ``n*r*(k+m)`` instead of ``n*k*m`` multiply-adds.  Same rules as :func:`dense`
    (one dtype, C/F-contiguous read in place, other layouts copied once, NaN propagates).
    """
    return _native_lowrank(x, u, v, b, activation, out)


# ------------------------------------------------------------------- argument checks


def _matrix(a, name: str, fn: str) -> np.ndarray:
    """``a`` as a C-contiguous float32/float64 2-D array with finite entries."""
    arr = np.asarray(a)
    if arr.dtype not in (np.float32, np.float64):
        raise TypeError(f"{fn}: {name} must have dtype float32 or float64; got {arr.dtype}")
    if arr.ndim != 2:
        raise ValueError(f"{fn}: {name} must be a 2-D matrix; got shape {arr.shape}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"{fn}: {name} must have at least one row and one column; got shape {arr.shape}")
    return np.ascontiguousarray(arr)


def _frobenius2(a: np.ndarray, name: str, fn: str) -> float:
    """||a||_F^2 in float64; non-finite entries are refused here (one pass over ``a``)."""
    total = _lin.sum_squares(a)
    if not math.isfinite(total):
        if not np.isfinite(a).all():
            raise ValueError(f"{fn}: {name} contains NaN or inf; a finite matrix is expected")
        raise ValueError(f"{fn}: {name} is too large: ||{name}||_F^2 overflows float64")
    return total


def _int_arg(value, name: str, fn: str, lo: int, hi: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{fn}: {name} must be an int; got {value!r}")
    value = int(value)
    if value < lo or (hi is not None and value > hi):
        bound = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
        raise ValueError(f"{fn}: {name} must be {bound}; got {value}")
    return value


# ---------------------------------------------------------------- block Krylov core


def _qr_q(y: np.ndarray) -> np.ndarray:
    import scipy.linalg

    return scipy.linalg.qr(y, mode="economic", overwrite_a=True, check_finite=False)[0]


class _Krylov:
    """Grows an orthonormal block Krylov basis Q of A and keeps Z = A^T Q.

    Works on ``A`` or, when ``A`` is tall, on ``A^T`` so that the basis lives in the
    smaller dimension (its orthogonalisation is the dearer side).  ``self.gram`` is
    ``Z^T Z`` in float64: the eigenvalues are the squared singular values of Q^T A.
    """

    def __init__(self, a: np.ndarray, d_max: int, b_max: int):
        m, n = a.shape
        self.transposed = m > n
        # F-ordered view of the stored matrix: a.T is (n, m) Fortran-ordered.
        self.mf = a.T
        self.rows, self.cols = (n, m) if self.transposed else (m, n)
        dt = a.dtype
        self.dtype = dt
        self.q = np.empty((self.rows, d_max), dt, order="F")
        self.z = np.empty((self.cols, d_max), dt, order="F")
        self.z64 = self.z if dt == np.float64 else np.empty((self.cols, d_max), np.float64, order="F")
        self.gram = np.zeros((d_max, d_max), np.float64, order="F")
        self.tmp = np.empty((d_max, b_max), dt, order="F")
        self.d = 0
        self.d_max = d_max

    def apply_a(self, zb: np.ndarray, out: np.ndarray) -> None:
        """out = A @ zb (working orientation)."""
        _lin.gemm(not self.transposed, False, 1.0, self.mf, zb, 0.0, out)

    def apply_at(self, qb: np.ndarray, out: np.ndarray) -> None:
        """out = A^T @ qb (working orientation)."""
        _lin.gemm(self.transposed, False, 1.0, self.mf, qb, 0.0, out)

    def _project_out(self, y: np.ndarray) -> None:
        """y -= Q Q^T y against the current basis (one block Gram-Schmidt pass)."""
        if self.d == 0:
            return
        qs = self.q[:, : self.d]
        t = self.tmp[: self.d, : y.shape[1]]
        _lin.gemm(True, False, 1.0, qs, y, 0.0, t)
        _lin.gemm(False, False, -1.0, qs, t, 1.0, y)

    def append(self, y: np.ndarray) -> np.ndarray:
        """Orthonormalise block ``y`` against the basis, append it, return its Z block.

        Project, QR, project the Q factor again, QR again: Householder QR of a
        numerically rank-deficient block fills its trailing columns from rounding
        noise, which is not orthogonal to the basis until projected a second time.
        """
        lo = self.d
        self._project_out(y)
        q1 = _qr_q(y)
        if lo:
            self._project_out(q1)
            q1 = _qr_q(q1)
        hi = lo + q1.shape[1]
        self.q[:, lo:hi] = q1
        zb = self.z[:, lo:hi]
        self.apply_at(self.q[:, lo:hi], zb)
        if self.z64 is not self.z:
            self.z64[:, lo:hi] = zb
        _lin.gemm(True, False, 1.0, self.z64[:, :hi], self.z64[:, lo:hi], 0.0, self.gram[:hi, lo:hi])
        self.gram[lo:hi, :lo] = self.gram[:lo, lo:hi].T
        self.d = hi
        return zb

    def energies(self) -> np.ndarray:
        """Squared singular values of Q^T A, largest first."""
        import scipy.linalg

        lam = scipy.linalg.eigh(
            self.gram[: self.d, : self.d], eigvals_only=True, check_finite=False, driver="evd"
        )
        return np.maximum(lam[::-1], 0.0)

    def factors(self, k: int):
        """Rank-k SVD of A from the basis: (U, S, Vt) C-ordered in A's orientation."""
        import scipy.linalg

        d = self.d
        k = min(k, d)
        if self.dtype == np.float32:
            # float64 Gram: exact for float32 data, so no accuracy is lost to squaring.
            lam, vecs = scipy.linalg.eigh(self.gram[:d, :d], check_finite=False, driver="evd")
            ub = np.asarray(vecs[:, ::-1][:, :k], dtype=np.float32, order="F")
            s = np.sqrt(np.maximum(lam[::-1][:k], 0.0)).astype(np.float32)
            zu = self.z[:, :d] @ ub  # (cols, k): V * S
        else:
            # float64 data: squaring in a Gram would lose half the digits; SVD Z itself.
            v, s, ubt = scipy.linalg.svd(self.z[:, :d], full_matrices=False, check_finite=False)
            ub = np.asfortranarray(ubt[:k].T)
            s = s[:k].copy()
            zu = np.ascontiguousarray(v[:, :k] * s)
        qu = self.q[:, :d] @ ub  # (rows, k): left singular vectors of the working matrix
        if not self.transposed:
            u = np.ascontiguousarray(qu)
            vt = np.empty((k, zu.shape[0]), self.dtype)
            _lin.scale_columns_to_rows(np.ascontiguousarray(zu), s, vt)
        else:
            u = np.ascontiguousarray(zu)
            _divide_columns(u, s)
            vt = np.ascontiguousarray(qu.T)
        return u, s, vt


def _divide_columns(u: np.ndarray, s: np.ndarray) -> None:
    nz = s > 0
    u[:, nz] /= s[nz]
    u[:, ~nz] = 0


def _exact_svd(a: np.ndarray, k: int):
    import scipy.linalg

    u, s, vt = scipy.linalg.svd(a, full_matrices=False, lapack_driver="gesdd", check_finite=False)
    u = np.ascontiguousarray(u[:, :k])
    vt = np.ascontiguousarray(vt[:k])
    return u, s[:k].copy(), vt


# Auto mode: stop when one more iteration adds less than this fraction of the remaining
# error energy ||A||^2 - sum_{i<=k} s_i^2 (or less than rounding noise).  The error
# then sits within ~0.15x that fraction of its limit.  When rank >= 10% of min(m, n)
# the tail dominates the error and a looser fraction suffices (the reasoning behind
# sklearn's 7-versus-4 power iterations).
#
# The fraction was chosen by counting passes over A (the cost) at an error no worse than
# sklearn's: on the benchmark matrices (2048^2 and 4096x1024, rank 32 and 128, fast and
# slow decay) 1e-3 saves a block on slow decay and leaves every error <= sklearn's.
_CONVERGED = 1e-3
_CONVERGED_LARGE_RANK = 2e-2
_BLOCK_DIVISOR = 3
# A product of a 2048x2048 float32 A with fewer than ~28 columns costs about as much as with
# 28 (one pass streaming A; 1 BLAS thread), so blocks narrower than that only add passes:
# rank 32 (k + p = 42) takes 10 passes of 28 columns instead of 16 of 14.
_MIN_BLOCK = 28


def _auto_block(k: int, oversample: int) -> int:
    """Block width for auto mode: thin blocks and more iterations give the Krylov
    space a higher polynomial degree for the same number of products with A, down to
    the width below which a product with A costs no less (``_MIN_BLOCK``)."""
    return min(k + oversample, max(_MIN_BLOCK, math.ceil((k + oversample) / _BLOCK_DIVISOR)))


def randomized_svd(a, rank, oversample=10, power_iters="auto", seed=0):
    """Rank-``rank`` truncated SVD ``a ~ U @ diag(S) @ Vt`` by randomized block Krylov.

    a: (m, n) float32/float64 (C-contiguous is used in place, anything else copied
    once); must be finite (ValueError naming ``a`` otherwise).  rank: 1..min(m, n).
    oversample: extra basis width beyond ``rank`` (>= 0).  power_iters: "auto", or the
    number of Krylov iterations (each one product with A^T and one with A) using
    blocks of width ``rank + oversample`` -- then the space contains HMT's subspace
    iteration space with the same passes, so the error is never worse than HMT's.
    "auto" uses blocks of width ~(rank + oversample)/3 (at least 28, at most
    rank + oversample) and stops when one more
    iteration raised the captured energy sum_{i<=rank} s_i^2 by less than 1e-3 of the
    remaining error energy (2e-2 when rank >= 10% of min(m, n), where the tail
    dominates the error -- sklearn's 7-versus-4 iterations rule), or by less than
    rounding noise.  When ``rank + oversample >= min(m, n)`` an exact SVD (LAPACK gesdd)
    is cheaper and is used instead.

    Returns U (m, rank), S (rank,), Vt (rank, n) in a's dtype.  Signs are fixed: the
    largest-|.| entry of every U column is positive (Vt rows flipped to match), so the
    same input and seed give the same bits.
    """
    fn = "randomized_svd"
    a = _matrix(a, "a", fn)
    m, n = a.shape
    small = min(m, n)
    k = _int_arg(rank, "rank", fn, 1, small)
    p = _int_arg(oversample, "oversample", fn, 0)
    seed = _int_arg(seed, "seed", fn, 0)
    if isinstance(power_iters, str):
        if power_iters != "auto":
            raise ValueError(f"{fn}: power_iters must be 'auto' or an int >= 0; got {power_iters!r}")
        iters = None
    else:
        iters = _int_arg(power_iters, "power_iters", fn, 0)
    norm2 = _frobenius2(a, "a", fn)
    if k + p >= small:
        u, s, vt = _exact_svd(a, k)
    else:
        u, s, vt = _krylov_svd(a, k, p, iters, seed, norm2)
    _lin.flip_signs(u, vt)
    return u, s, vt


def _krylov_svd(a, k, p, iters, seed, norm2):
    small = min(a.shape)
    if iters is None:
        b = min(_auto_block(k, p), small)
        d_max = min(small, max(4 * (k + p), k + p + 8 * b))
        max_blocks = 64
    else:
        b = k + p
        d_max = min(small, b * (iters + 1))
        max_blocks = iters + 1
    kr = _Krylov(a, d_max, b)
    rng = np.random.default_rng(seed)
    omega = np.asfortranarray(rng.standard_normal((kr.cols, b), dtype=a.dtype))
    y = np.empty((kr.rows, b), a.dtype, order="F")
    kr.apply_a(omega, y)
    floor = float(np.finfo(a.dtype).eps) * norm2
    converged = _CONVERGED if k < 0.1 * small else _CONVERGED_LARGE_RANK
    prev = None
    for j in range(max_blocks):
        zb = kr.append(y[:, : min(b, d_max - kr.d)])
        if kr.d >= d_max or j + 1 == max_blocks:
            break
        if iters is None and kr.d >= k + p:
            top = float(kr.energies()[:k].sum())
            if prev is not None and top - prev <= max(converged * (norm2 - top), floor):
                break
            prev = top
        width = min(b, d_max - kr.d)
        kr.apply_a(zb[:, :width] if width < zb.shape[1] else zb, y[:, :width])
        if width < b:
            y = y[:, :width]
    return kr.factors(k)


# ---------------------------------------------------------------------- compression


@dataclass(frozen=True)
class CompressionReport:
    """What a low-rank factorisation ``w ~ US @ Vt`` kept and what it cost."""

    rank: int
    params_before: int  # m * n
    params_after: int  # rank * (m + n)
    relative_error: float  # ||w - US @ Vt||_F / ||w||_F, measured on the result


def svd_compress(w, rank=None, tol=None, seed=0):
    """Factorise ``w`` (m, n) as ``US @ Vt`` with US = U * S (m, r) and Vt (r, n).

    Give exactly one of ``rank`` (1..min(m, n)) or ``tol`` (0 < tol < 1).  With ``tol``
    the rank is the smallest found whose relative Frobenius error is <= tol, without a
    full SVD: a block Krylov basis grows (widening while the basis is far from tol)
    until ||w||^2 - ||Q^T w||^2 <= tol^2 ||w||^2 and the smallest sufficient rank of
    the small projected problem has stopped changing.

    Guarantees: the returned rank r is never below the optimal r* (the smallest rank
    whose *optimal* error is <= tol: no rank-(r*-1) matrix gets within tol), and
    ``report.relative_error`` -- measured on the returned factors, not estimated -- is
    <= tol; in practice r is r* or r* + 1.  (For float32 input a tol near float32
    rounding, ~1e-6, may be unreachable; the result then has the best rank found and
    its true error.)  w must be finite (ValueError naming ``w`` otherwise).
    """
    fn = "svd_compress"
    a = _matrix(w, "w", fn)
    m, n = a.shape
    if (rank is None) == (tol is None):
        raise ValueError(f"{fn}: give exactly one of rank or tol; got rank={rank!r}, tol={tol!r}")
    seed = _int_arg(seed, "seed", fn, 0)
    norm2 = _frobenius2(a, "w", fn)
    if rank is not None:
        r = _int_arg(rank, "rank", fn, 1, min(m, n))
        u, s, vt = randomized_svd(a, r, seed=seed)
        us = u * s
    else:
        if isinstance(tol, bool) or not isinstance(tol, (int, float, np.floating)) or not (0 < float(tol) < 1):
            raise ValueError(f"{fn}: tol must be a float with 0 < tol < 1; got {tol!r}")
        us, vt = _compress_to_tol(a, float(tol), seed, norm2)
    error = _relative_error(a, us, vt, norm2)
    r = vt.shape[0]
    report = CompressionReport(rank=r, params_before=m * n, params_after=r * (m + n), relative_error=error)
    return us, vt, report


def _relative_error(a, us, vt, norm2) -> float:
    if norm2 == 0:
        return 0.0
    if vt.shape[0] == 0:
        return 1.0
    resid = us @ vt
    np.subtract(a, resid, out=resid)
    return math.sqrt(_lin.sum_squares(resid) / norm2)


_TOL_FIRST_BLOCK = 16
_TOL_MAX_BLOCK = 256


def _compress_to_tol(a, tol, seed, norm2):
    m, n = a.shape
    small = min(m, n)
    if norm2 == 0:
        return np.zeros((m, 0), a.dtype), np.zeros((0, n), a.dtype)
    target = tol * tol * norm2
    kr = _Krylov(a, small, _TOL_MAX_BLOCK)
    rng = np.random.default_rng(seed)
    b = min(_TOL_FIRST_BLOCK, small)
    y = np.empty((kr.rows, _TOL_MAX_BLOCK), a.dtype, order="F")
    kr.apply_a(np.asfortranarray(rng.standard_normal((kr.cols, b), dtype=a.dtype)), y[:, :b])
    width = b
    prev_rank = None
    lam = None
    while True:
        zb = kr.append(y[:, :width])
        lam = kr.energies()
        short = np.nonzero(norm2 - np.cumsum(lam) <= target)[0]
        found = int(short[0]) + 1 if short.size else None
        if kr.d >= small or (found is not None and found == prev_rank):
            break
        prev_rank = found
        # Far from tol: widen the next block with fresh random columns (the Krylov part
        # can only be as wide as the last block).
        grow = b if found is not None else min(2 * b, _TOL_MAX_BLOCK)
        width = min(grow, small - kr.d)
        krylov = min(width, zb.shape[1])
        kr.apply_a(zb[:, :krylov], y[:, :krylov])
        if width > krylov:
            extra = np.asfortranarray(rng.standard_normal((kr.cols, width - krylov), dtype=a.dtype))
            kr.apply_a(extra, y[:, krylov:width])
        b = grow
    r = found if found is not None else kr.d
    while True:
        u, s, vt = kr.factors(r)
        _lin.flip_signs(u, vt)
        us = u * s
        if r >= kr.d or _relative_error(a, us, vt, norm2) <= tol:
            return us, vt
        r += 1  # rounding left the estimate a hair optimistic: take one more component
