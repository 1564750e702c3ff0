"""Prometheus metrics of one node, in a registry of its own (several nodes may share a process).

Label children are bound once per model version (``VersionMetrics``) so a request costs a few
counter/histogram updates and no label lookups.  Process CPU and memory come from ProcessCollector.
"""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector

LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class ServingMetrics:
    """The metric families of the serving layer, registered in ``registry``."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        labels = ("model", "version")
        r = self.registry
        self.requests = Counter("edgeloop_inference_requests", "Inference requests answered successfully",
                                labels, registry=r)
        self.failures = Counter("edgeloop_inference_failures", "Inference requests that failed", labels, registry=r)
        self.request_seconds = Histogram("edgeloop_inference_request_seconds",
                                         "Time from receiving a request to its response", labels,
                                         buckets=LATENCY_BUCKETS, registry=r)
        self.queue_seconds = Histogram("edgeloop_inference_queue_seconds",
                                       "Time a request waited in the dynamic batcher (models with max_batch_size > 0)", labels,
                                       buckets=LATENCY_BUCKETS, registry=r)
        self.compute_seconds = Histogram("edgeloop_inference_compute_seconds",
                                         "onnxruntime execution time of the run a request took part in", labels,
                                         buckets=LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("edgeloop_inference_batch_size", "Inferences per onnxruntime execution",
                                    labels, buckets=BATCH_BUCKETS, registry=r)
        self.loaded = Gauge("edgeloop_model_loaded", "1 for each model version that is loaded and ready",
                            labels, registry=r)
        self.process = ProcessCollector(registry=r)

    def for_version(self, model: str, version: str) -> "VersionMetrics":
        return VersionMetrics(self, model, version)

    def failure(self, model: str, version: str) -> None:
        """Count a failure outside a bound version (unknown version, model not ready)."""
        self.failures.labels(model, version).inc()


class VersionMetrics:
    """Pre-bound label children of one model version (the hot path touches only these)."""

    __slots__ = ("_family", "_labels", "requests", "failures", "request_seconds", "queue_seconds",
                 "compute_seconds", "batch_size")

    def __init__(self, family: ServingMetrics, model: str, version: str) -> None:
        self._family = family
        self._labels = (model, version)
        self.requests = family.requests.labels(model, version)
        self.failures = family.failures.labels(model, version)
        self.request_seconds = family.request_seconds.labels(model, version)
        self.queue_seconds = family.queue_seconds.labels(model, version)
        self.compute_seconds = family.compute_seconds.labels(model, version)
        self.batch_size = family.batch_size.labels(model, version)

    def set_loaded(self, loaded: bool) -> None:
        if loaded:
            self._family.loaded.labels(*self._labels).set(1)
        else:
            try:
                self._family.loaded.remove(*self._labels)
            except KeyError:
                pass


__all__ = ["BATCH_BUCKETS", "LATENCY_BUCKETS", "ServingMetrics", "VersionMetrics"]
