"""Benchmark cases for the streaming-statistics and placement kernels.

* histogram update of one edge batch vs the fastest of several vectorised NumPy forms
  (broadcast compare against the edges + one ``bincount``; ``searchsorted`` per feature with
  offsets + one ``bincount``), the fastest picked by timing them in the same run;
* weighted ``hrw_assign`` vs the same algorithm vectorised in NumPy (same hash mixing,
  ``np.log`` for the logarithm), both on one thread.
"""
from __future__ import annotations

import time

import numpy as np

from edgeloop.bench.harness import Case

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def _mix64(z: np.ndarray) -> np.ndarray:
    z = z ^ (z >> np.uint64(30))
    z = z * _M1
    z = z ^ (z >> np.uint64(27))
    z = z * _M2
    return z ^ (z >> np.uint64(31))


def _pre30(z: np.ndarray) -> np.ndarray:
    return z ^ (z >> np.uint64(30))


def _mix64_tail(z: np.ndarray) -> np.ndarray:
    """_mix64 without its first step, which distributes over xor and is done per side."""
    z = z * _M1
    z = z ^ (z >> np.uint64(27))
    z = z * _M2
    return z ^ (z >> np.uint64(31))


def hrw_assign_numpy(keys: np.ndarray, nodes: np.ndarray, weights: np.ndarray, chunk: int = 1024) -> np.ndarray:
    """Weighted rendezvous hashing in NumPy: score = w / -ln(u) per (key, node), argmax per key.

    Keys are processed in chunks so the (chunk, N) temporaries stay in cache (1024 keys x 100
    nodes was the fastest chunk measured: 3x faster than 4096, which spills out of L2); ties
    go to the first index rather than the smallest id (a tie needs two equal 53-bit scores).
    """
    from edgeloop.kernels.placement import KEY_SALT, NODE_SALT

    b = _pre30(_mix64(nodes ^ np.uint64(NODE_SALT)))[None, :]
    out = np.empty(keys.size, dtype=np.int64)
    for start in range(0, keys.size, chunk):
        a = _pre30(_mix64(keys[start : start + chunk] ^ np.uint64(KEY_SALT)))[:, None]
        h = _mix64_tail(a ^ b)  # == _mix64(mixed key ^ mixed node)
        t = ((h >> np.uint64(12)) << np.uint64(1)) | np.uint64(1)
        u = t.astype(np.float64) * (1.0 / 2.0**53)
        out[start : start + chunk] = np.argmax(weights / -np.log(u), axis=1)
    return out


def hrw_first_numpy(key: int, nodes: np.ndarray, weights: np.ndarray | None) -> int:
    """One key's winner index, the same algorithm in NumPy: the raw pair hash compared as an
    integer when weights are equal (None), else the score w / -ln(u) (``np.log``)."""
    from edgeloop.kernels.placement import KEY_SALT, NODE_SALT

    a = _pre30(_mix64(np.array([key], dtype=np.uint64) ^ np.uint64(KEY_SALT)))
    h = _mix64_tail(a ^ _pre30(_mix64(nodes ^ np.uint64(NODE_SALT))))
    if weights is None:
        return int(np.argmax(h))
    u = (((h >> np.uint64(12)) << np.uint64(1)) | np.uint64(1)).astype(np.float64) * (1.0 / 2.0**53)
    return int(np.argmax(weights / -np.log(u)))


def histogram_baselines(x: np.ndarray, edges: np.ndarray) -> dict:
    """Vectorised NumPy forms of ``HistogramAccumulator.update`` for a NaN-free batch.

    Each returns the (F, B) counts with the same bins (values outside the edges clamp to the
    end bins).  The bin of v is the number of interior edges <= v, so no form needs a
    Python loop over values; they skip NaN handling (the benchmark batch has none), which
    only makes them faster.
    """
    n_features, n_bins = edges.shape[0], edges.shape[1] - 1
    inner_t = np.ascontiguousarray(edges[:, 1:-1].T)  # (B - 1, F): one row per interior edge
    inner = np.ascontiguousarray(edges[:, 1:-1])
    offsets = np.arange(n_features) * n_bins
    size = n_features * n_bins

    def compare_sum():
        bins = (x[None, :, :] >= inner_t[:, None, :]).sum(axis=0)
        return np.bincount((bins + offsets).ravel(), minlength=size).reshape(n_features, n_bins)

    def compare_sum_u8():  # the compares summed as uint8: exact while B - 1 <= 255
        bins = np.add.reduce((x[None, :, :] >= inner_t[:, None, :]).view(np.uint8), axis=0, dtype=np.uint8)
        return np.bincount((bins + offsets).ravel(), minlength=size).reshape(n_features, n_bins)

    def searchsorted():
        idx = np.empty((n_features, x.shape[0]), dtype=np.intp)
        for f in range(n_features):
            idx[f] = np.searchsorted(inner[f], x[:, f], side="right")
        idx += offsets[:, None]
        return np.bincount(idx.ravel(), minlength=size).reshape(n_features, n_bins)

    forms = {"broadcast >= edges, sum, bincount": compare_sum,
             "searchsorted per feature + offsets, bincount": searchsorted}
    if n_bins - 1 <= 255:
        forms["broadcast >= edges, uint8 sum, bincount"] = compare_sum_u8
    return forms


def _fastest(forms: dict, budget_s: float = 0.3) -> str:
    """Name of the fastest form: median of interleaved timings, within a small time budget."""
    times = {name: [] for name in forms}
    stop = time.perf_counter() + budget_s
    for _ in range(200):
        for name, fn in forms.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
        if time.perf_counter() > stop and len(times[name]) >= 5:
            break
    return min(times, key=lambda name: float(np.median(times[name])))


def _histogram_case() -> Case:
    from edgeloop.kernels import HistogramAccumulator

    rng = np.random.default_rng(0)
    n_features, batch, n_bins = 64, 32, 10
    reference = rng.normal(size=(5000, n_features))
    edges = np.ascontiguousarray(np.quantile(reference, np.linspace(0, 1, n_bins + 1), axis=0).T)
    x = rng.normal(size=(batch, n_features))
    acc = HistogramAccumulator(edges)
    forms = histogram_baselines(x, edges)
    chosen = {}

    def baseline():
        if not chosen:  # picked on first use, i.e. inside the runner's one-thread limit
            chosen["name"] = _fastest(forms)
        return forms[chosen["name"]]()

    def note():
        fresh = HistogramAccumulator(edges).update(x).counts
        agree = all(np.array_equal(fresh, form()) for form in forms.values())
        return (f"fastest of {len(forms)} NumPy forms: {chosen.get('name')}; "
                + ("all give our counts" if agree else "COUNTS DIFFER"))

    return Case(
        kernel="histogram update",
        shape=f"{n_features} features x batch {batch}, {n_bins} bins",
        ours=lambda: acc.update(x),
        baseline=baseline,
        baseline_name="vectorised NumPy",
        target=0.1,
        note=note,
        min_repeats=50,
    )


def _hrw_case(quick: bool) -> Case:
    from edgeloop.kernels.placement import hrw_assign

    rng = np.random.default_rng(1)
    n_keys, n_nodes = 100_000, 100
    keys = rng.integers(0, 2**64 - 1, n_keys, dtype=np.uint64)
    nodes = rng.integers(0, 2**64 - 1, n_nodes, dtype=np.uint64)
    weights = rng.uniform(0.5, 4.0, n_nodes)

    def note():
        agree = np.mean(hrw_assign(keys, nodes, weights, n_threads=1) == hrw_assign_numpy(keys, nodes, weights))
        return f"agrees with NumPy on {agree:.4%} of keys; 1 OpenMP thread"

    return Case(
        kernel="hrw_assign",
        shape=f"{n_keys // 1000}k keys x {n_nodes} nodes, weighted",
        ours=lambda: hrw_assign(keys, nodes, weights, n_threads=1),
        baseline=lambda: hrw_assign_numpy(keys, nodes, weights),
        baseline_name="same algorithm in NumPy (np.log)",
        target=0.2,
        note=note,
        min_repeats=3 if quick else 5,
    )


def cases(quick: bool) -> list[Case]:
    """The stats/placement rows of ``edgeloop bench kernels``."""
    return [_histogram_case(), _hrw_case(quick)]
