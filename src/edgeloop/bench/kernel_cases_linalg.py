"""Benchmark cases for the linear-algebra kernels.

* ``dense`` (512x512 float32, relu) vs NumPy ``np.maximum(x @ w + b, 0)``;
* ``randomized_svd`` vs ``sklearn.utils.extmath.randomized_svd`` with its defaults at
  the same rank, on matrices U diag(s) V^T with fast (exp(-i/20)) and slow (1/sqrt(1+i))
  singular value decay; the note gives both relative Frobenius errors;
* ``svd_compress(tol=...)`` vs a full ``scipy.linalg.svd`` (gesdd) plus picking the
  smallest rank within tol from the spectrum.

Test matrices are built on first use and cached, so listing the cases is cheap.
"""
from __future__ import annotations

import functools

import numpy as np

from edgeloop.bench.harness import Case


@functools.lru_cache(maxsize=None)
def _orthogonal_factors(m: int, n: int):
    rng = np.random.default_rng(2024)
    r = min(m, n)
    u, _ = np.linalg.qr(rng.standard_normal((m, r), dtype=np.float32))
    v, _ = np.linalg.qr(rng.standard_normal((n, r), dtype=np.float32))
    return u, v


def _spectrum(r: int, decay: str) -> np.ndarray:
    i = np.arange(r, dtype=np.float64)
    return np.exp(-i / 20.0) if decay == "fast" else 1.0 / np.sqrt(1.0 + i)


@functools.lru_cache(maxsize=4)
def _matrix(m: int, n: int, decay: str) -> np.ndarray:
    u, v = _orthogonal_factors(m, n)
    s = _spectrum(min(m, n), decay).astype(np.float32)
    return np.ascontiguousarray((u * s) @ v.T)


def _relative_error(a, u, s, vt) -> float:
    a64 = a.astype(np.float64)
    approx = (u.astype(np.float64) * s.astype(np.float64)) @ vt.astype(np.float64)
    return float(np.linalg.norm(a64 - approx) / np.linalg.norm(a64))


def _dense_cases() -> list[Case]:
    from edgeloop.kernels import dense

    rng = np.random.default_rng(0)
    w = rng.standard_normal((512, 512), dtype=np.float32) / np.float32(np.sqrt(512))
    b = rng.standard_normal(512, dtype=np.float32)
    cases = []
    for batch, target in ((1, 0.9), (32, 1.0), (256, 1.05)):
        x = rng.standard_normal((batch, 512), dtype=np.float32)

        def ours(x=x):
            return dense(x, w, b, "relu")

        def baseline(x=x):
            return np.maximum(x @ w + b, 0)

        def note(ours=ours, baseline=baseline):
            diff = float(np.max(np.abs(ours() - baseline())))
            return f"max |ours - numpy| = {diff:.2e}"

        cases.append(
            Case("dense", f"512x512 f32 batch {batch} relu", ours, baseline,
                 "numpy x @ w + b, np.maximum", target, note=note,
                 min_repeats=20 if batch < 256 else 5)
        )
    return cases


def _svd_case(m: int, n: int, rank: int, decay: str) -> Case:
    from sklearn.utils.extmath import randomized_svd as sklearn_randomized_svd

    from edgeloop.kernels import randomized_svd

    def ours():
        return randomized_svd(_matrix(m, n, decay), rank, seed=0)

    def baseline():
        return sklearn_randomized_svd(_matrix(m, n, decay), rank, random_state=0)

    def note():
        a = _matrix(m, n, decay)
        e_ours = _relative_error(a, *ours())
        e_base = _relative_error(a, *baseline())
        s = _spectrum(min(m, n), decay)
        e_opt = float(np.sqrt(np.sum(s[rank:] ** 2) / np.sum(s**2)))
        if e_ours <= e_base:
            verdict = "ours <= sklearn"
        elif e_ours <= e_base * (1 + np.finfo(np.float32).eps):
            verdict = "equal to float32 rounding"
        else:
            verdict = "OURS WORSE"
        return f"err ours {e_ours:.7g} sklearn {e_base:.7g} optimal {e_opt:.7g} ({verdict})"

    return Case("randomized_svd", f"{m}x{n} f32 rank {rank} {decay}", ours, baseline,
                "sklearn randomized_svd (defaults)", 0.75, note=note, min_repeats=7)


def _compress_case(size: int, tol: float) -> Case:
    import scipy.linalg

    from edgeloop.kernels import svd_compress

    def ours():
        return svd_compress(_matrix(size, size, "fast"), tol=tol)

    def baseline():
        a = _matrix(size, size, "fast")
        u, s, vt = scipy.linalg.svd(a, full_matrices=False, lapack_driver="gesdd", check_finite=False)
        s64 = s.astype(np.float64)
        tail = np.sqrt(np.maximum(1.0 - np.cumsum(s64**2) / np.sum(s64**2), 0.0))
        r = int(np.argmax(tail <= tol)) + 1
        return u[:, :r] * s[:r], vt[:r]

    def note():
        _, _, report = ours()
        us, vt = baseline()
        return (f"rank ours {report.rank} (err {report.relative_error:.5f}) vs full SVD {vt.shape[0]}; "
                f"tol {tol}")

    return Case("svd_compress", f"{size}x{size} f32 tol {tol} fast", ours, baseline,
                "scipy.linalg.svd gesdd + rank from spectrum", 0.2, note=note, min_repeats=3)


def _load_blas_libraries() -> None:
    """Import everything that loads a BLAS (SciPy's OpenBLAS via our kernels, sklearn's via NumPy).

    threadpoolctl limits only the libraries already loaded when the runner enters its one-thread
    limit, and the runner collects the cases before entering it.
    """
    import scipy.linalg  # noqa: F401
    import sklearn.utils.extmath  # noqa: F401

    import edgeloop.kernels.linalg  # noqa: F401


def cases(quick: bool) -> list[Case]:
    """All linear-algebra cases; ``quick`` keeps one SVD shape and a smaller compression."""
    _load_blas_libraries()
    out = _dense_cases()
    shapes = [(2048, 2048)] if quick else [(2048, 2048), (4096, 1024)]
    for m, n in shapes:
        for rank in (32, 128):
            for decay in ("fast", "slow"):
                out.append(_svd_case(m, n, rank, decay))
    out.append(_compress_case(1024 if quick else 2048, 0.01))
    return out
