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


def test_metrics_are_the_statistics_and_survive_a_reload(repo, start_node):
    """The histograms are exported from the ModelStatistics counters; a reload of a version keeps counting on."""
    from edgeloop.protocol import inference_pb2

    handle = start_node(repo)  # mlp without batching
    labels = (("model", "mlp"), ("version", "1"))
    for _ in range(4):
        handle.infer(build_infer_request("mlp", {"INPUT0": np.ones((1, 32), np.float32)}))
    samples = scrape(handle.node.metrics_port)
    stats = handle.stats("mlp")[0]
    assert samples[("edgeloop_inference_request_seconds_sum", labels)] == pytest.approx(
        stats.inference_stats.success.ns * 1e-9, rel=1e-9)
    assert samples[("edgeloop_inference_compute_seconds_sum", labels)] == pytest.approx(
        stats.inference_stats.compute_infer.ns * 1e-9, rel=1e-9)
    buckets = sorted((float(dict(k[1])["le"]), v) for k, v in samples.items()
                     if k[0] == "edgeloop_inference_request_seconds_bucket" and dict(k[1])["model"] == "mlp")
    counts = [v for _, v in buckets]
    assert counts == sorted(counts) and counts[-1] == 4  # cumulative, +Inf holds every request
    assert samples[("edgeloop_inference_queue_seconds_count", labels)] == 0  # unbatched: never queued
    assert samples[("edgeloop_inference_batch_size_bucket", tuple(sorted(labels + (("le", "1.0"),))))] == 4

    request = inference_pb2.RepositoryModelLoadRequest(model_name="mlp")
    request.parameters["config"].string_param = '{"max_batch_size": 4}'
    handle.stub.RepositoryModelLoad(request, timeout=10)  # a new session for version 1
    assert handle.stats("mlp")[0].inference_count == 0  # ModelStatistics start over (Triton semantics)
    handle.infer(build_infer_request("mlp", {"INPUT0": np.ones((2, 32), np.float32)}))
    samples = scrape(handle.node.metrics_port)
    assert samples[("edgeloop_inference_requests_total", labels)] == 5  # Prometheus counters do not
    assert samples[("edgeloop_inference_request_seconds_count", labels)] == 5
    assert samples[("edgeloop_inference_queue_seconds_count", labels)] == 1
    assert samples[("edgeloop_inference_batch_size_sum", labels)] == 4 + 2
    assert samples[("edgeloop_model_loaded", labels)] == 1
