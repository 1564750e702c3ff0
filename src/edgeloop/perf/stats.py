"""Latency percentiles and per-level summaries.

Percentiles use the nearest-rank definition (the smallest sample such that at least
p% of samples are <= it), so every reported figure is a latency that was observed,
never an interpolation between two requests.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Sequence


def percentile(sorted_values: Sequence[float], p: float) -> float:
    """Nearest-rank ``p``-th percentile (0 < p <= 100) of already sorted values."""
    if not 0 < p <= 100:
        raise ValueError(f"percentile p must be in (0, 100], got {p!r}")
    if not sorted_values:
        raise ValueError("percentile of an empty sample is undefined")
    rank = math.ceil(p / 100.0 * len(sorted_values))
    return sorted_values[max(rank, 1) - 1]


@dataclass(frozen=True)
class LevelStats:
    """What one concurrency level measured; latencies in milliseconds."""

    concurrency: int
    count: int  # successful requests measured (warm-up excluded)
    errors: int
    duration_s: float
    batch_size: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    min_ms: float
    mean_ms: float
    requests_per_s: float
    infer_per_s: float  # requests_per_s * batch_size, as perf_analyzer counts inferences
    stopped_by: str  # "count" or "time"

    def as_dict(self) -> dict:
        return asdict(self)


def summarize(
    concurrency: int,
    latencies_s: Sequence[float],
    errors: int,
    duration_s: float,
    batch_size: int,
    stopped_by: str,
) -> LevelStats:
    """Turn raw per-request latencies (seconds) into a :class:`LevelStats`."""
    ordered = sorted(latencies_s)
    n = len(ordered)
    rate = n / duration_s if duration_s > 0 else 0.0
    if n:
        p50, p90, p99 = (percentile(ordered, p) * 1e3 for p in (50, 90, 99))
        mx, mn, mean = ordered[-1] * 1e3, ordered[0] * 1e3, sum(ordered) / n * 1e3
    else:
        p50 = p90 = p99 = mx = mn = mean = float("nan")
    return LevelStats(
        concurrency=concurrency,
        count=n,
        errors=errors,
        duration_s=duration_s,
        batch_size=batch_size,
        p50_ms=p50,
        p90_ms=p90,
        p99_ms=p99,
        max_ms=mx,
        min_ms=mn,
        mean_ms=mean,
        requests_per_s=rate,
        infer_per_s=rate * batch_size,
        stopped_by=stopped_by,
    )
