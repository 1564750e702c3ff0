"""Streaming statistics for drift monitoring: the edge updates them per batch, the cloud merges.

Floating inputs may be float32 or float64 and are used as they are when C-contiguous;
anything else (other dtypes, Fortran order, strided views, lists) is copied once into a
C-contiguous float64 array (float32 stays float32).  Accumulators are always float64/int64.

Non-finite values:
* ``HistogramAccumulator``: NaN is counted per feature in ``nan_counts`` and in no bin;
  -inf goes to bin 0 and +inf to the last bin, like any value outside the edges.
* ``RunningMoments``: NaN and +-inf are skipped per feature (``count`` counts the finite
  values used), so one bad reading cannot poison a long-running accumulator.
* ``reconstruction_error``: non-finite inputs propagate (the row's error is nan or inf).
"""
from __future__ import annotations

import numpy as np

from edgeloop._native import load

_st = load("_stats")

__all__ = ["HistogramAccumulator", "RunningMoments", "psi", "js_distance", "reconstruction_error"]


def _as_float_matrix(name: str, x, n_features: int | None = None) -> np.ndarray:
    """x as a C-contiguous 2-D float32/float64 array (one copy at most)."""
    arr = np.asarray(x)
    if arr.dtype not in (np.float32, np.float64):
        if arr.dtype.kind not in "biuf":
            raise TypeError(f"{name} must hold real numbers, got dtype {arr.dtype}")
        arr = arr.astype(np.float64)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be 2-D (rows, features), got shape {arr.shape}")
    if n_features is not None and arr.shape[1] != n_features:
        raise ValueError(f"{name} must have {n_features} features (columns), got shape {arr.shape}")
    return np.ascontiguousarray(arr)


class HistogramAccumulator:
    """Per-feature histograms over fixed edges (e.g. the reference quantiles of each feature).

    ``edges`` is (F, B+1), non-decreasing per row.  Bins are those of ``np.histogram``:
    [e0, e1), [e1, e2), ..., [e_{B-1}, e_B]; values below e0 count in bin 0 and values above
    e_B in bin B-1, so every non-NaN value is counted.  ``counts`` is int64 (F, B).
    Not thread-safe (``update`` runs without the GIL): give each thread its own
    accumulator and ``merge`` them.
    """

    def __init__(self, edges):
        e = np.array(edges, dtype=np.float64, order="C", copy=True)
        if e.ndim != 2 or e.shape[1] < 2:
            raise ValueError(f"edges must be 2-D (features, bins + 1) with at least 2 edges per row, got shape {e.shape}")
        if not np.all(np.isfinite(e)):
            raise ValueError(f"edges must be finite, got non-finite values in features {np.unique(np.nonzero(~np.isfinite(e))[0])[:5].tolist()}")
        bad = np.nonzero(np.any(np.diff(e, axis=1) < 0, axis=1))[0]
        if bad.size:
            raise ValueError(f"edges must be non-decreasing per feature, got decreasing edges in features {bad[:5].tolist()}")
        e.flags.writeable = False
        self.edges = e
        self.counts = np.zeros((e.shape[0], e.shape[1] - 1), dtype=np.int64)
        self.nan_counts = np.zeros(e.shape[0], dtype=np.int64)

    @property
    def n_features(self) -> int:
        return self.edges.shape[0]

    @property
    def n_bins(self) -> int:
        return self.edges.shape[1] - 1

    def update(self, x) -> "HistogramAccumulator":
        """Count a batch x (n, F) in one pass (compares or a binary search per value, GIL released).

        A C-contiguous float32/float64 (n, F) array goes straight to the native entry, which
        checks it (a batch of 64 features costs a few microseconds, so the checks are not
        done twice); anything else is converted once, with this module's error messages.
        """
        try:
            _st.hist_update(x, self.edges, self.counts, self.nan_counts)
        except (TypeError, ValueError):  # refused before anything was counted
            arr = _as_float_matrix("x", x, self.n_features)
            _st.hist_update(arr, self.edges, self.counts, self.nan_counts)
        return self

    def merge(self, other: "HistogramAccumulator") -> "HistogramAccumulator":
        """Add another accumulator's counts (the same edges are required)."""
        if not isinstance(other, HistogramAccumulator):
            raise TypeError(f"other must be a HistogramAccumulator, got {type(other).__name__}")
        if other.edges.shape != self.edges.shape or not np.array_equal(other.edges, self.edges):
            raise ValueError(f"other must have the same edges, got shape {other.edges.shape} vs {self.edges.shape} or different values")
        self.counts += other.counts
        self.nan_counts += other.nan_counts
        return self

    def reset(self) -> "HistogramAccumulator":
        self.counts[...] = 0
        self.nan_counts[...] = 0
        return self

    def to_state(self) -> dict[str, np.ndarray]:
        """Plain arrays (edges, counts, nan_counts) that ``from_state`` turns back into an accumulator."""
        return {"edges": self.edges.copy(), "counts": self.counts.copy(), "nan_counts": self.nan_counts.copy()}

    @classmethod
    def from_state(cls, state) -> "HistogramAccumulator":
        acc = cls(state["edges"])
        counts = np.asarray(state["counts"])
        nan_counts = np.asarray(state["nan_counts"])
        if counts.shape != acc.counts.shape:
            raise ValueError(f"state['counts'] must have shape {acc.counts.shape}, got {counts.shape}")
        if nan_counts.shape != acc.nan_counts.shape:
            raise ValueError(f"state['nan_counts'] must have shape {acc.nan_counts.shape}, got {nan_counts.shape}")
        if np.any(counts < 0) or np.any(nan_counts < 0):
            raise ValueError("state['counts'] and state['nan_counts'] must be non-negative")
        acc.counts[...] = counts
        acc.nan_counts[...] = nan_counts
        return acc


class RunningMoments:
    """Per-feature count, mean and variance over a stream (Welford within a batch, Chan across).

    ``count`` is per feature because non-finite values are skipped per feature.
    """

    def __init__(self, n_features: int):
        if isinstance(n_features, bool) or not isinstance(n_features, (int, np.integer)) or n_features < 1:
            raise ValueError(f"n_features must be an int >= 1, got {n_features!r}")
        self.count = np.zeros(int(n_features), dtype=np.int64)
        self.mean = np.zeros(int(n_features), dtype=np.float64)
        self.m2 = np.zeros(int(n_features), dtype=np.float64)

    @property
    def n_features(self) -> int:
        return self.count.shape[0]

    def update(self, x) -> "RunningMoments":
        """Fold a batch x (n, F) in: one pass for the batch's mean/M2, then Chan's formula."""
        arr = _as_float_matrix("x", x, self.n_features)
        if arr.shape[0]:
            F = self.n_features
            _st.moments_update(
                arr, self.count, self.mean, self.m2,
                np.zeros(F, dtype=np.int64), np.zeros(F, dtype=np.float64), np.zeros(F, dtype=np.float64),
            )
        return self

    def merge(self, other: "RunningMoments") -> "RunningMoments":
        """Fold in another accumulator (e.g. one edge's state) with Chan's parallel formula."""
        if not isinstance(other, RunningMoments):
            raise TypeError(f"other must be a RunningMoments, got {type(other).__name__}")
        if other.n_features != self.n_features:
            raise ValueError(f"other must have {self.n_features} features, got {other.n_features}")
        _st.moments_merge(self.count, self.mean, self.m2, other.count, other.mean, other.m2)
        return self

    def variance(self, ddof: int = 0) -> np.ndarray:
        """M2 / (count - ddof) per feature; nan where count <= ddof."""
        if ddof not in (0, 1):
            raise ValueError(f"ddof must be 0 or 1, got {ddof!r}")
        denom = (self.count - ddof).astype(np.float64)
        out = np.full(self.n_features, np.nan)
        ok = denom > 0
        out[ok] = self.m2[ok] / denom[ok]
        return out

    def reset(self) -> "RunningMoments":
        self.count[...] = 0
        self.mean[...] = 0.0
        self.m2[...] = 0.0
        return self

    def to_state(self) -> dict[str, np.ndarray]:
        """Plain arrays (count, mean, m2) for shipping an edge's state to the cloud."""
        return {"count": self.count.copy(), "mean": self.mean.copy(), "m2": self.m2.copy()}

    @classmethod
    def from_state(cls, state) -> "RunningMoments":
        count = np.asarray(state["count"])
        if count.ndim != 1 or count.size < 1:
            raise ValueError(f"state['count'] must be 1-D with at least one feature, got shape {count.shape}")
        if count.dtype.kind not in "iu" or np.any(count < 0):
            raise ValueError(f"state['count'] must hold non-negative integers, got dtype {count.dtype}")
        acc = cls(count.size)
        for key in ("mean", "m2"):
            arr = np.asarray(state[key], dtype=np.float64)
            if arr.shape != count.shape:
                raise ValueError(f"state[{key!r}] must have shape {count.shape}, got {arr.shape}")
            getattr(acc, key)[...] = arr
        if np.any(acc.m2 < 0):
            raise ValueError("state['m2'] must be non-negative")
        acc.count[...] = count
        return acc


def _count_pair(ref_counts, cur_counts) -> tuple[np.ndarray, np.ndarray, bool]:
    ref = np.asarray(ref_counts)
    cur = np.asarray(cur_counts)
    for name, arr in (("ref_counts", ref), ("cur_counts", cur)):
        if arr.dtype.kind not in "biuf":
            raise TypeError(f"{name} must hold counts (numbers), got dtype {arr.dtype}")
        if arr.ndim not in (1, 2) or arr.shape[-1] < 1:
            raise ValueError(f"{name} must be (bins,) or (features, bins), got shape {arr.shape}")
    if ref.shape != cur.shape:
        raise ValueError(f"cur_counts must have the shape of ref_counts {ref.shape}, got {cur.shape}")
    single = ref.ndim == 1
    ref = np.ascontiguousarray(np.atleast_2d(ref), dtype=np.float64)
    cur = np.ascontiguousarray(np.atleast_2d(cur), dtype=np.float64)
    for name, arr in (("ref_counts", ref), ("cur_counts", cur)):
        bad = ~np.isfinite(arr) | (arr < 0)
        if bad.any():
            where = tuple(int(i) for i in np.unravel_index(int(np.argmax(bad)), arr.shape))
            shown = where[1:] if single else where  # the index as the caller wrote it (1-D stays 1-D)
            raise ValueError(f"{name} must be finite and >= 0, got {float(arr[where])!r} at index {shown}")
    return ref, cur, single


def psi(ref_counts, cur_counts, eps: float = 1e-6):
    """Population stability index per feature from histogram counts (F, B) -> (F,).

    p = ref / sum(ref) and q = cur / sum(cur) per feature, each proportion floored at ``eps``
    (so an empty bin costs a finite amount), then PSI = sum_b (q_b - p_b) ln(q_b / p_b).
    A feature whose reference or current histogram is empty gives nan.  1-D counts give a float.
    """
    ref, cur, single = _count_pair(ref_counts, cur_counts)
    eps = float(eps)
    if not np.isfinite(eps) or eps < 0:
        raise ValueError(f"eps must be a finite number >= 0, got {eps!r}")
    out = np.empty(ref.shape[0], dtype=np.float64)
    _st.psi(ref, cur, eps, out)
    return float(out[0]) if single else out


def js_distance(ref_counts, cur_counts):
    """Jensen-Shannon distance (base 2, so in [0, 1]) per feature from counts (F, B) -> (F,).

    The square root of the JS divergence between the normalised histograms; equal to
    ``scipy.spatial.distance.jensenshannon(p, q, base=2)``.  An empty histogram gives nan.
    """
    ref, cur, single = _count_pair(ref_counts, cur_counts)
    out = np.empty(ref.shape[0], dtype=np.float64)
    _st.js_distance(ref, cur, out)
    return float(out[0]) if single else out


def reconstruction_error(x, mean, scale, components) -> np.ndarray:
    """Per-row squared residual of a PCA projection: ||z - z C^T C||^2, z = (x - mean) / scale.

    x (n, F); mean, scale (F,) with scale != 0; components C (k, F) with orthonormal rows
    (not checked).  Computed in x's precision (float32 or float64) with BLAS, summed in
    float64; returns float64 (n,).
    """
    arr = _as_float_matrix("x", x)
    n, F = arr.shape
    dtype = arr.dtype
    mu = np.ascontiguousarray(mean, dtype=dtype)
    sc = np.ascontiguousarray(scale, dtype=dtype)
    comp = np.ascontiguousarray(components, dtype=dtype)
    if mu.shape != (F,):
        raise ValueError(f"mean must have shape ({F},) to match x, got {mu.shape}")
    if sc.shape != (F,):
        raise ValueError(f"scale must have shape ({F},) to match x, got {sc.shape}")
    if np.any(sc == 0) or not np.all(np.isfinite(sc)):
        raise ValueError(f"scale must be finite and non-zero, got {sc[(sc == 0) | ~np.isfinite(sc)][:5].tolist()}")
    if comp.ndim != 2 or comp.shape[1] != F or comp.shape[0] > F:
        raise ValueError(f"components must have shape (k, {F}) with k <= {F}, got {comp.shape}")
    k = comp.shape[0]
    out = np.empty(n, dtype=np.float64)
    z = np.empty((n, F), dtype=dtype)
    proj = np.empty((n, max(k, 1)), dtype=dtype)
    _st.reconstruction_error(arr, mu, sc, comp, z, proj, out)
    return out
