"""A tiny timing harness: median wall time of ours vs a baseline, timed in the same run.

Machines are noisy, so every figure is reported as a ratio against a baseline measured
in the same process, interleaved with ours, and the verdict is against a target ratio.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Callable


@dataclass
class Case:
    """One benchmark row: ``ours`` and ``baseline`` are zero-argument callables."""

    kernel: str
    shape: str
    ours: Callable[[], object]
    baseline: Callable[[], object]
    baseline_name: str
    target: float  # pass when ours/baseline <= target
    note: Callable[[], str] | None = None  # extra text (e.g. errors), computed once
    min_repeats: int = 5
    min_seconds: float = 0.2


@dataclass
class Result:
    case: Case
    ours_s: float
    base_s: float
    note: str = ""

    @property
    def ratio(self) -> float:
        return self.ours_s / self.base_s if self.base_s > 0 else float("inf")

    @property
    def ok(self) -> bool:
        return self.ratio <= self.case.target


def _time_once(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def measure(case: Case, max_repeats: int = 200, max_seconds: float = 10.0) -> Result:
    """Interleave ours and baseline; stop after enough repeats or the time budget."""
    case.ours()  # warm-up (imports, allocations, BLAS thread start)
    case.baseline()
    ours, base = [], []
    start = time.perf_counter()
    while len(ours) < max_repeats:
        ours.append(_time_once(case.ours))
        base.append(_time_once(case.baseline))
        elapsed = time.perf_counter() - start
        if len(ours) >= case.min_repeats and (elapsed >= case.min_seconds or elapsed >= max_seconds):
            break
        if elapsed >= max_seconds and len(ours) >= 3:
            break
    note = case.note() if case.note else ""
    return Result(case, statistics.median(ours), statistics.median(base), note)


def _fmt_time(s: float) -> str:
    if s < 1e-3:
        return f"{s * 1e6:8.1f} us"
    if s < 1:
        return f"{s * 1e3:8.2f} ms"
    return f"{s:8.3f} s "


def print_table(results: list[Result], out=None) -> None:
    import sys

    out = out or sys.stdout
    header = f"{'kernel':<18} {'shape':<34} {'ours':>11} {'baseline':>11} {'ratio':>7} {'target':>7}  verdict  baseline / notes"
    print(header, file=out)
    print("-" * len(header), file=out)
    for r in results:
        verdict = "ok" if r.ok else "MISS"
        print(
            f"{r.case.kernel:<18} {r.case.shape:<34} {_fmt_time(r.ours_s):>11} {_fmt_time(r.base_s):>11} "
            f"{r.ratio:7.3f} {r.case.target:7.2f}  {verdict:<7}  {r.case.baseline_name}"
            + (f"; {r.note}" if r.note else ""),
            file=out,
            flush=True,
        )


def single_blas_thread():
    """Context manager limiting every BLAS/OpenMP pool in the process to one thread."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError as exc:  # pragma: no cover
        raise ImportError(
            "benchmarks need threadpoolctl to pin BLAS to one thread: pip install 'edgeloop[bench]'"
        ) from exc
    return threadpool_limits(limits=1)
