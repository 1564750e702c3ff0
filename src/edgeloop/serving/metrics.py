"""Prometheus metrics of one node, in a registry of its own (several nodes may share a process).

Nothing here runs per request.  The request and failure counts and the latency / batch-size
histograms are the counters ``VersionStats`` already keeps for ModelStatistics (plus plain bucket
arrays it fills under the same lock); a custom collector turns them into metric families when the
endpoint is scraped.  Counters stay monotonic across hot swaps: when a version retires, its totals
are carried into its ``(model, version)`` label, so a reload of the same version keeps counting on.
Process CPU and memory come from ProcessCollector.
"""
from __future__ import annotations

import threading

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from edgeloop.serving.stats import LATENCY_BUCKETS, MetricTotals, VersionStats

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
_LABELS = ("model", "version")
_LATENCY_LE = tuple(repr(float(b)) for b in LATENCY_BUCKETS) + ("+Inf",)


class ServingMetrics:
    """The metric families of the serving layer, registered in ``registry``."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self._lock = threading.Lock()
        self._labels: dict[tuple[str, str], VersionMetrics] = {}
        self.registry.register(_ServingCollector(self))
        self.process = ProcessCollector(registry=self.registry)

    def for_version(self, model: str, version: str) -> "VersionMetrics":
        """The (shared) metrics handle of one ``(model, version)`` label."""
        key = (model, version)
        with self._lock:
            vm = self._labels.get(key)
            if vm is None:
                vm = self._labels[key] = VersionMetrics(self, model, version)
            return vm

    def label_totals(self) -> list[tuple[tuple[str, str], MetricTotals, bool]]:
        """``((model, version), totals, loaded)`` per label, sorted: carried totals plus live versions'."""
        with self._lock:
            entries = [(key, vm.carried, list(vm.live), vm.loaded) for key, vm in sorted(self._labels.items())]
        out = []
        for key, carried, live, loaded in entries:
            totals = MetricTotals()
            totals.add(carried)
            for stats in live:
                totals.add(stats.totals())
            out.append((key, totals, loaded))
        return out


class VersionMetrics:
    """Bookkeeping of one ``(model, version)`` label: which versions' stats it exports, and the gauge."""

    __slots__ = ("_family", "labels", "live", "carried", "loaded")

    def __init__(self, family: ServingMetrics, model: str, version: str) -> None:
        self._family = family
        self.labels = (model, version)
        self.live: list[VersionStats] = []
        self.carried = MetricTotals()
        self.loaded = False

    def serve(self, stats: VersionStats) -> None:
        """A version of this label is published: export its stats and mark the label loaded."""
        with self._family._lock:
            if not any(s is stats for s in self.live):
                self.live.append(stats)
            self.loaded = True

    def release(self, stats: VersionStats) -> None:
        """A version of this label retired (drained): carry its totals and drop the loaded mark."""
        with self._family._lock:
            for i, s in enumerate(self.live):
                if s is stats:
                    del self.live[i]
                    self.carried.add(stats.totals())
                    break
            self.loaded = False


class _ServingCollector(Collector):
    """Builds the serving families from the version counters at scrape time."""

    def __init__(self, metrics: ServingMetrics) -> None:
        self._metrics = metrics

    def describe(self):
        return []  # families depend on what is loaded; nothing to check at registration

    def collect(self):
        requests = CounterMetricFamily("edgeloop_inference_requests", "Inference requests answered successfully",
                                       labels=_LABELS)
        failures = CounterMetricFamily("edgeloop_inference_failures", "Inference requests that failed",
                                       labels=_LABELS)
        request_s = HistogramMetricFamily("edgeloop_inference_request_seconds",
                                          "Time from receiving a request to its response", labels=_LABELS)
        queue_s = HistogramMetricFamily("edgeloop_inference_queue_seconds",
                                        "Time a request waited in the dynamic batcher (models with max_batch_size > 0)",
                                        labels=_LABELS)
        compute_s = HistogramMetricFamily("edgeloop_inference_compute_seconds",
                                          "onnxruntime execution time of the run a request took part in",
                                          labels=_LABELS)
        batch_size = HistogramMetricFamily("edgeloop_inference_batch_size", "Inferences per onnxruntime execution",
                                           labels=_LABELS)
        loaded = GaugeMetricFamily("edgeloop_model_loaded", "1 for each model version that is loaded and ready",
                                   labels=_LABELS)
        for labels, t, is_loaded in self._metrics.label_totals():
            labels = list(labels)
            requests.add_metric(labels, t.success_count)
            failures.add_metric(labels, t.fail_count)
            request_s.add_metric(labels, _latency_buckets(t.request_buckets), t.success_ns * 1e-9)
            queue_s.add_metric(labels, _latency_buckets(t.queue_buckets), t.queue_ns * 1e-9)
            compute_s.add_metric(labels, _latency_buckets(t.compute_buckets), t.infer_ns * 1e-9)
            batch_size.add_metric(labels, *_batch_buckets(t.batches))
            if is_loaded:
                loaded.add_metric(labels, 1)
        yield from (requests, failures, request_s, queue_s, compute_s, batch_size, loaded)


def _latency_buckets(counts: list[int]) -> list[tuple[str, int]]:
    """Per-bucket counts -> Prometheus' cumulative ``(le, count)`` pairs."""
    out, running = [], 0
    for le, n in zip(_LATENCY_LE, counts):
        running += n
        out.append((le, running))
    return out


def _batch_buckets(batches: dict[int, int]) -> tuple[list[tuple[str, int]], int]:
    """Executions per batch size -> cumulative ``(le, count)`` pairs over BATCH_BUCKETS, and the sum."""
    out = []
    for bound in BATCH_BUCKETS:
        out.append((repr(float(bound)), sum(n for size, n in batches.items() if size <= bound)))
    out.append(("+Inf", sum(batches.values())))
    return out, sum(size * n for size, n in batches.items())


__all__ = ["BATCH_BUCKETS", "LATENCY_BUCKETS", "ServingMetrics", "VersionMetrics"]
