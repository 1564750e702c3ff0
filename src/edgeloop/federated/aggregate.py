"""Combining edge updates: FedAvg (weighted by rows), coordinate-wise median, trimmed mean; norm clipping.

Every update is first clipped to ``clip_norm`` (L2), which bounds what a scaled update can do to
FedAvg; the median and the trimmed mean also ignore a sign-flipped one, because per coordinate
the honest majority decides.  The trimmed mean drops ``ceil(trim * n)`` values at each end (at
least one when ``trim > 0`` and n >= 3).
"""
from __future__ import annotations

import math

import numpy as np

STRATEGIES = ("fedavg", "median", "trimmed_mean")


class AggregationError(ValueError):
    """Updates that cannot be combined; the message says what was received and what was expected."""


def clip(update: np.ndarray, max_norm: float) -> np.ndarray:
    """``update`` scaled down to L2 norm ``max_norm`` (unchanged when smaller, or when max_norm <= 0)."""
    update = np.asarray(update, np.float64)
    norm = float(np.linalg.norm(update))
    if max_norm <= 0 or norm <= max_norm:
        return update
    return update * (max_norm / norm)


def fedavg(updates: np.ndarray, counts: np.ndarray) -> np.ndarray:
    counts = np.asarray(counts, np.float64)
    if counts.sum() <= 0:
        raise AggregationError(f"counts: {counts.tolist()[:20]}; expected at least one edge with rows")
    return (updates * counts[:, None]).sum(axis=0) / counts.sum()


def median(updates: np.ndarray) -> np.ndarray:
    return np.median(updates, axis=0)


def trimmed_mean(updates: np.ndarray, trim: float) -> np.ndarray:
    n = updates.shape[0]
    k = min(math.ceil(trim * n), (n - 1) // 2) if trim > 0 else 0
    ordered = np.sort(updates, axis=0)
    return ordered[k:n - k].mean(axis=0)


def aggregate(strategy: str, updates, counts, clip_norm: float = 0.0, trim: float = 0.25) -> np.ndarray:
    """The combined update of ``updates`` (one row per edge), each clipped to ``clip_norm`` first."""
    if strategy not in STRATEGIES:
        raise AggregationError(f"strategy: {strategy[:200]!r}; expected one of {', '.join(STRATEGIES)}")
    if not 0.0 <= trim < 0.5:
        raise AggregationError(f"trim: {trim!r}; expected a fraction in [0, 0.5)")
    rows = [clip(u, clip_norm) for u in updates]
    if not rows:
        raise AggregationError("updates: none; expected at least one edge's update")
    if len({r.shape for r in rows}) != 1:
        raise AggregationError(f"updates: shapes {sorted({r.shape for r in rows})}; expected one shape")
    stacked = np.stack(rows)
    counts = np.asarray(counts, np.float64)
    keep = counts > 0  # an edge with no rows sent a zero update: it has no say
    if not keep.any():
        raise AggregationError(f"counts: {counts.tolist()[:20]}; expected at least one edge with rows")
    stacked, counts = stacked[keep], counts[keep]
    if strategy == "fedavg":
        return fedavg(stacked, counts)
    if strategy == "median":
        return median(stacked)
    return trimmed_mean(stacked, trim)


__all__ = ["STRATEGIES", "AggregationError", "aggregate", "clip", "fedavg", "median", "trimmed_mean"]
