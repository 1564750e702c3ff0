"""Per-version inference statistics with Triton's ModelStatistics semantics.

inference_count counts inferences (the batch size of each request for batching models, 1 otherwise);
execution_count counts model executions, so merged batches show execution_count < inference_count.
Per-request durations (success, fail, queue, compute_input/infer/output) and per-execution batch
statistics are kept in nanoseconds.  One lock, taken once per request, keeps the counters coherent.

The same records also feed the Prometheus histograms: inside that one lock a request adds 1 to a
plain bucket array per latency (``bisect`` on integer nanosecond bounds), and the metrics collector
turns sums, counts and buckets into histogram families at scrape time.  So a request pays for its
statistics once, and never for prometheus_client's per-observation locks and label children.
"""
from __future__ import annotations

import threading
import time
from bisect import bisect_left

from edgeloop.protocol import inference_pb2

#: Upper bounds (``le``) of the latency histograms, in seconds and in the nanoseconds they are kept in.
LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
LATENCY_BOUNDS_NS = tuple(round(b * 1e9) for b in LATENCY_BUCKETS)
_N_BUCKETS = len(LATENCY_BOUNDS_NS) + 1  # the last one is +Inf


class MetricTotals:
    """Cumulative counters behind the Prometheus families of one model version (a plain copy).

    ``*_buckets`` are per-bucket (not cumulative) counts over ``LATENCY_BOUNDS_NS`` plus +Inf;
    ``batches`` maps an execution's batch size to how many executions had it.
    """

    __slots__ = ("success_count", "success_ns", "fail_count", "queue_ns", "infer_ns", "request_buckets",
                 "queue_buckets", "compute_buckets", "batches")

    def __init__(self) -> None:
        self.success_count = self.success_ns = self.fail_count = self.queue_ns = self.infer_ns = 0
        self.request_buckets = [0] * _N_BUCKETS
        self.queue_buckets = [0] * _N_BUCKETS
        self.compute_buckets = [0] * _N_BUCKETS
        self.batches: dict[int, int] = {}

    def add(self, other: "MetricTotals") -> None:
        """Fold ``other`` in (a retired version's counters carried into its label's totals)."""
        self.success_count += other.success_count
        self.success_ns += other.success_ns
        self.fail_count += other.fail_count
        self.queue_ns += other.queue_ns
        self.infer_ns += other.infer_ns
        for mine, theirs in ((self.request_buckets, other.request_buckets),
                             (self.queue_buckets, other.queue_buckets),
                             (self.compute_buckets, other.compute_buckets)):
            for i, n in enumerate(theirs):
                mine[i] += n
        for size, n in other.batches.items():
            self.batches[size] = self.batches.get(size, 0) + n


class _Batch:
    __slots__ = ("count", "input_ns", "infer_ns", "output_ns")

    def __init__(self) -> None:
        self.count = self.input_ns = self.infer_ns = self.output_ns = 0


class VersionStats:
    """Counters of one model version; ``snapshot`` renders them as a ModelStatistics message."""

    def __init__(self, name: str, version: str) -> None:
        self.name = name
        self.version = version
        self._lock = threading.Lock()
        self.last_inference_ms = 0
        self.inference_count = 0
        self.execution_count = 0
        self.success_count = self.success_ns = 0
        self.fail_count = self.fail_ns = 0
        self.queue_ns = 0
        self.input_ns = self.infer_ns = self.output_ns = 0
        self.batches: dict[int, _Batch] = {}
        self.request_buckets = [0] * _N_BUCKETS
        self.queue_buckets = [0] * _N_BUCKETS
        self.compute_buckets = [0] * _N_BUCKETS

    def record_success(self, inferences: int, total_ns: int, queue_ns: int, input_ns: int, infer_ns: int,
                       output_ns: int) -> None:
        """One request answered; its compute times are those of the execution it took part in."""
        now_ms = time.time_ns() // 1_000_000
        with self._lock:
            self.last_inference_ms = now_ms
            self.inference_count += inferences
            self.success_count += 1
            self.success_ns += total_ns
            self.queue_ns += queue_ns
            self.input_ns += input_ns
            self.infer_ns += infer_ns
            self.output_ns += output_ns
            self.request_buckets[bisect_left(LATENCY_BOUNDS_NS, total_ns)] += 1
            self.queue_buckets[bisect_left(LATENCY_BOUNDS_NS, queue_ns)] += 1
            self.compute_buckets[bisect_left(LATENCY_BOUNDS_NS, infer_ns)] += 1

    def record_solo(self, total_ns: int, input_ns: int, infer_ns: int, output_ns: int) -> None:
        """A request that ran alone (no batching): one inference, one execution of batch size 1, one lock."""
        now_ms = time.time_ns() // 1_000_000
        with self._lock:
            self.last_inference_ms = now_ms
            self.inference_count += 1
            self.execution_count += 1
            self.success_count += 1
            self.success_ns += total_ns
            self.input_ns += input_ns
            self.infer_ns += infer_ns
            self.output_ns += output_ns
            self.request_buckets[bisect_left(LATENCY_BOUNDS_NS, total_ns)] += 1
            self.compute_buckets[bisect_left(LATENCY_BOUNDS_NS, infer_ns)] += 1
            entry = self.batches.get(1)
            if entry is None:
                entry = self.batches[1] = _Batch()
            entry.count += 1
            entry.input_ns += input_ns
            entry.infer_ns += infer_ns
            entry.output_ns += output_ns

    def record_failure(self, total_ns: int) -> None:
        with self._lock:
            self.fail_count += 1
            self.fail_ns += total_ns

    def record_execution(self, batch_size: int, input_ns: int, infer_ns: int, output_ns: int) -> None:
        """One onnxruntime run over ``batch_size`` inferences (one or several merged requests)."""
        with self._lock:
            self.execution_count += 1
            entry = self.batches.get(batch_size)
            if entry is None:
                entry = self.batches[batch_size] = _Batch()
            entry.count += 1
            entry.input_ns += input_ns
            entry.infer_ns += infer_ns
            entry.output_ns += output_ns

    def totals(self) -> MetricTotals:
        """A coherent copy of what the Prometheus families export (taken at scrape time)."""
        out = MetricTotals()
        with self._lock:
            out.success_count = self.success_count
            out.success_ns = self.success_ns
            out.fail_count = self.fail_count
            out.queue_ns = self.queue_ns
            out.infer_ns = self.infer_ns
            out.request_buckets = list(self.request_buckets)
            out.queue_buckets = list(self.queue_buckets)
            out.compute_buckets = list(self.compute_buckets)
            out.batches = {size: b.count for size, b in self.batches.items()}
        return out

    def snapshot(self):
        """A ``ModelStatistics`` message of the counters now."""
        d = inference_pb2.StatisticDuration
        with self._lock:
            n = self.success_count
            stats = inference_pb2.ModelStatistics(
                name=self.name,
                version=self.version,
                last_inference=self.last_inference_ms,
                inference_count=self.inference_count,
                execution_count=self.execution_count,
                inference_stats=inference_pb2.InferStatistics(
                    success=d(count=n, ns=self.success_ns),
                    fail=d(count=self.fail_count, ns=self.fail_ns),
                    queue=d(count=n, ns=self.queue_ns),
                    compute_input=d(count=n, ns=self.input_ns),
                    compute_infer=d(count=n, ns=self.infer_ns),
                    compute_output=d(count=n, ns=self.output_ns),
                ),
                batch_stats=[
                    inference_pb2.InferBatchStatistics(
                        batch_size=size,
                        compute_input=d(count=b.count, ns=b.input_ns),
                        compute_infer=d(count=b.count, ns=b.infer_ns),
                        compute_output=d(count=b.count, ns=b.output_ns),
                    )
                    for size, b in sorted(self.batches.items())
                ],
            )
        return stats


__all__ = ["LATENCY_BOUNDS_NS", "LATENCY_BUCKETS", "MetricTotals", "VersionStats"]
