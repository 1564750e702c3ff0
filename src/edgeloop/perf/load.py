"""The load loop: N worker threads, each a blocking ModelInfer caller, over one channel.

Requests are pre-serialized and responses left as bytes (identity (de)serializers), so
the client spends its time waiting on the server rather than in protobuf.  Every level
is bounded by a request count AND a wall-clock limit; warm-up requests are sent first
and not recorded.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import grpc

from edgeloop.perf.stats import LevelStats, summarize
from edgeloop.perf.target import MODEL_INFER_METHOD
from edgeloop.protocol import inference_pb2

MAX_ERROR_SAMPLES = 5


@dataclass(frozen=True)
class LevelPlan:
    """How one concurrency level is bounded."""

    concurrency: int
    max_requests: int
    max_duration_s: float
    warmup: int = 0
    timeout_s: float = 10.0
    batch_size: int = 1


@dataclass
class LevelOutcome:
    stats: LevelStats
    error_samples: list[str] = field(default_factory=list)


class _Level:
    """Shared state of one level: hands out request slots, collects results."""

    def __init__(self, plan: LevelPlan):
        self.plan = plan
        self.lock = threading.Lock()
        self.issued = 0
        self.started = time.perf_counter()
        self.warmup_deadline = self.started + plan.max_duration_s
        self.measure_start: float | None = None
        self.measure_deadline = float("inf")
        self.stopped_by = "count"
        self.latencies: list[list[float]] = [[] for _ in range(plan.concurrency)]
        self.ends: list[float] = [0.0] * plan.concurrency
        self.errors = 0
        self.error_samples: list[str] = []

    def claim(self) -> bool | None:
        """``None``: stop; ``False``: a warm-up request; ``True``: a measured one."""
        plan = self.plan
        with self.lock:
            now = time.perf_counter()
            if self.issued < plan.warmup:
                if now < self.warmup_deadline:
                    self.issued += 1
                    return False
                self.issued = plan.warmup  # warm-up ran out of time: measure anyway
            if self.measure_start is None:
                self.measure_start = now
                self.measure_deadline = now + plan.max_duration_s
            if self.issued - plan.warmup >= plan.max_requests:
                return None
            if now >= self.measure_deadline:
                self.stopped_by = "time"
                return None
            self.issued += 1
            return True

    def record_error(self, message: str, measured: bool) -> None:
        with self.lock:
            if measured:
                self.errors += 1
            if message not in self.error_samples and len(self.error_samples) < MAX_ERROR_SAMPLES:
                self.error_samples.append(message)

    def completed(self) -> tuple[int, int]:
        return sum(len(x) for x in self.latencies), self.errors


def _check_response(raw: bytes) -> str | None:
    """Why a response is unusable, or None; only the first response per worker is parsed."""
    response = inference_pb2.ModelInferResponse.FromString(raw)
    if not response.outputs:
        return "response carried no output tensors"
    return None


def _worker(level: _Level, index: int, call, pool: list[bytes]) -> None:
    plan = level.plan
    latencies = level.latencies[index]
    checked = False
    slot = index
    while True:
        measured = level.claim()
        if measured is None:
            return
        payload = pool[slot % len(pool)]
        slot += plan.concurrency
        t0 = time.perf_counter()
        try:
            raw = call(payload, timeout=plan.timeout_s)
        except grpc.RpcError as err:
            level.record_error(f"{err.code().name}: {err.details()}", measured)
            continue
        t1 = time.perf_counter()
        if not checked:
            checked = True
            problem = _check_response(raw)
            if problem:
                level.record_error(problem, measured)
                continue
        if measured:
            latencies.append(t1 - t0)
            level.ends[index] = t1


def run_level(
    channel: grpc.Channel,
    pool: list[bytes],
    plan: LevelPlan,
    progress: Callable[[int, int, float], None] | None = None,
    progress_interval_s: float = 0.25,
) -> LevelOutcome:
    """Run one concurrency level to its count or time bound; ``progress(done, errors, elapsed_s)``."""
    if plan.concurrency < 1:
        raise ValueError(f"concurrency must be >= 1, got {plan.concurrency}")
    call = channel.unary_unary(MODEL_INFER_METHOD)  # bytes in, bytes out
    level = _Level(plan)
    threads = [
        threading.Thread(target=_worker, args=(level, i, call, pool), name=f"perf-worker-{i}", daemon=True)
        for i in range(plan.concurrency)
    ]
    for t in threads:
        t.start()
    # Workers stop by themselves; the join bound only guards against a hung RPC past its timeout.
    hard_stop = level.started + 2 * plan.max_duration_s + plan.timeout_s + 5.0
    while any(t.is_alive() for t in threads) and time.perf_counter() < hard_stop:
        _join_any(threads, progress_interval_s)
        if progress:
            done, errors = level.completed()
            progress(done, errors, time.perf_counter() - level.started)
    start = level.measure_start if level.measure_start is not None else level.started
    end = max([e for e in level.ends if e > 0] or [time.perf_counter()])
    latencies = [x for per in level.latencies for x in per]
    stats = summarize(plan.concurrency, latencies, level.errors, max(end - start, 0.0), plan.batch_size, level.stopped_by)
    return LevelOutcome(stats, list(level.error_samples))


def _join_any(threads: list[threading.Thread], timeout_s: float) -> None:
    for t in threads:
        if t.is_alive():
            t.join(timeout_s)
            return
