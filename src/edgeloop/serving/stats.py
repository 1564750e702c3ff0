"""Per-version inference statistics with Triton's ModelStatistics semantics.

inference_count counts inferences (the batch size of each request for batching models, 1 otherwise);
execution_count counts model executions, so merged batches show execution_count < inference_count.
Per-request durations (success, fail, queue, compute_input/infer/output) and per-execution batch
statistics are kept in nanoseconds.  One lock, taken once per request, keeps the counters coherent.
"""
from __future__ import annotations

import threading
import time

from edgeloop.protocol import inference_pb2


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


__all__ = ["VersionStats"]
