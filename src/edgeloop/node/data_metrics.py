"""Prometheus families of the edge's data path (outbox, drops, uploads), built at scrape time."""
from __future__ import annotations

from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector


class DataPathCollector(Collector):
    """``edgeloop_samples_dropped_total{model,reason}`` and the outbox/uploader counters."""

    def __init__(self, outbox, uploader_of=lambda: None) -> None:
        self._outbox = outbox
        self._uploader_of = uploader_of

    def describe(self):
        return []

    def collect(self):
        snap = self._outbox.snapshot()
        dropped = CounterMetricFamily("edgeloop_samples_dropped", "Samples not recorded: the in-memory queue or "
                                      "the outbox was full (never silently)", labels=("model", "reason"))
        for (model, reason), n in sorted(snap["dropped"].items()):
            dropped.add_metric([model, reason], n)
        yield dropped
        yield CounterMetricFamily("edgeloop_samples_committed", "Samples committed to the outbox",
                                  value=snap["committed"])
        yield CounterMetricFamily("edgeloop_labels_committed", "Labels committed to the outbox",
                                  value=snap["labels_committed"])
        yield GaugeMetricFamily("edgeloop_outbox_pending_rows", "Samples and labels in the outbox, not yet "
                                "acknowledged by the coordinator", value=snap["pending_rows"])
        yield GaugeMetricFamily("edgeloop_outbox_pending_bytes", "Bytes of the rows in the outbox",
                                value=snap["pending_bytes"])
        yield GaugeMetricFamily("edgeloop_outbox_queue", "Samples waiting for the outbox writer", value=snap["queued"])
        uploader = self._uploader_of()
        if uploader is not None:
            uploaded = CounterMetricFamily("edgeloop_uploaded_rows", "Rows the coordinator acknowledged",
                                           labels=("kind",))
            for kind, n in sorted(uploader.uploaded.items()):
                uploaded.add_metric([kind], n)
            yield uploaded


__all__ = ["DataPathCollector"]
