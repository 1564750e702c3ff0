"""The Prometheus endpoint of a real node, scraped over HTTP on loopback."""
from __future__ import annotations

import urllib.request

import grpc
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from edgeloop.config import ModelConfig
from edgeloop.protocol.codec import build_infer_request


def scrape(port: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def test_metrics_scrape_counts_requests_latency_batches_and_models(repo, start_node):
    handle = start_node(repo, models=[ModelConfig(name="mlp", max_batch_size=8)])
    labels = (("model", "mlp"), ("version", "1"))
    for _ in range(3):
        handle.infer(build_infer_request("mlp", {"INPUT0": np.ones((2, 32), np.float32)}))
    with pytest.raises(grpc.RpcError):
        handle.infer(build_infer_request("mlp", {"INPUT0": np.ones((2, 3), np.float32)}))
    samples = scrape(handle.node.metrics_port)
    assert samples[("edgeloop_inference_requests_total", labels)] == 3
    assert samples[("edgeloop_inference_failures_total", labels)] == 1
    assert samples[("edgeloop_inference_request_seconds_count", labels)] == 3
    assert samples[("edgeloop_inference_request_seconds_sum", labels)] > 0
    assert samples[("edgeloop_inference_queue_seconds_count", labels)] == 3  # mlp batches here
    assert samples[("edgeloop_inference_compute_seconds_count", labels)] == 3
    assert samples[("edgeloop_inference_batch_size_count", labels)] == 3  # executions (warm-up not counted)
    assert samples[("edgeloop_inference_batch_size_sum", labels)] == 6
    assert samples[("edgeloop_model_loaded", labels)] == 1
    assert samples[("edgeloop_model_loaded", (("model", "multi"), ("version", "1")))] == 1
    assert samples[("process_resident_memory_bytes", ())] > 0
    assert ("process_cpu_seconds_total", ()) in samples
    handle.node.models.unload("multi")
    assert ("edgeloop_model_loaded", (("model", "multi"), ("version", "1"))) not in scrape(handle.node.metrics_port)
