"""A model's batch queue is bounded: past ``max_queue_size`` a request is refused at once, not at its deadline."""
from __future__ import annotations

import logging
import threading
import time

import grpc
import numpy as np
import pytest
from serving_fixtures import RPC_TIMEOUT_S

from edgeloop.config import ConfigError, ModelConfig, load_edge_config
from edgeloop.config.schema import DEFAULT_MAX_QUEUE_SIZE
from edgeloop.protocol.codec import build_infer_request, infer_response_to_numpy
from edgeloop.serving.batcher import merge_limit_warning
from edgeloop.serving.demo_models import build_mlp, write_model

X = np.random.default_rng(3).normal(size=(1, 32)).astype(np.float32)


class Gate:
    """Holds the model's real runs until ``open()``; tells when one has started."""

    def __init__(self, run):
        self._run = run
        self.entered = threading.Event()
        self._open = threading.Event()

    def __call__(self, feeds):
        self.entered.set()
        assert self._open.wait(30), "gate never opened"
        return self._run(feeds)

    def open(self):
        self._open.set()


def wait_until(predicate, timeout=10.0):
    end = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < end, "condition not reached in time"
        time.sleep(0.005)


def test_full_queue_gets_resource_exhausted_at_once_naming_model_and_limit(tmp_path, start_node):
    root = tmp_path / "models"
    write_model(root, "mlp", 1, build_mlp(seed=2))
    node = start_node(root, models=[ModelConfig(name="mlp", max_batch_size=4, max_queue_delay_us=0,
                                                max_queue_size=2)], grpc_workers=8)
    version = node.node.models.acquire("mlp", "")
    version.leave()
    batcher = version._batcher
    assert batcher.max_queue_size == 2
    gate = Gate(batcher._run)
    batcher._run = gate
    request = build_infer_request("mlp", {"INPUT0": X})
    results, errors = [], []

    def call():
        try:
            results.append(infer_response_to_numpy(node.infer(request)))
        except grpc.RpcError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=call)]
    threads[0].start()
    assert gate.entered.wait(10)  # the first request runs (idle fast path) and is held
    for _ in range(2):  # two more wait for the next batch: the queue is full
        threads.append(threading.Thread(target=call))
        threads[-1].start()
    wait_until(lambda: batcher.queued == 2)
    try:
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as err:
            node.infer(request, timeout=RPC_TIMEOUT_S)
        refused_after = time.monotonic() - started
    finally:
        gate.open()
        for t in threads:
            t.join(RPC_TIMEOUT_S + 5)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert refused_after < RPC_TIMEOUT_S / 2  # at once, not when the deadline ran out
    details = err.value.details()
    assert "model 'mlp' version 1" in details and "max_queue_size is 2" in details
    assert not errors and len(results) == 3  # the held and the queued requests are all answered
    np.testing.assert_array_equal(results[1]["OUTPUT0"], results[0]["OUTPUT0"])
    # the queue drained: the next request runs again
    assert infer_response_to_numpy(node.infer(request))["OUTPUT0"].shape == results[0]["OUTPUT0"].shape


def test_max_queue_size_is_read_per_model_from_toml(tmp_path):
    path = tmp_path / "edge.toml"
    path.write_text('[node]\nid = "e"\n[serving.model_defaults]\nmax_batch_size = 8\n'
                    '[serving.models.mlp]\nmax_queue_size = 3\n[serving.models.other]\n')
    config = load_edge_config(path)
    by_name = {m.name: m for m in config.serving.models}
    assert by_name["mlp"].max_queue_size == 3
    assert by_name["other"].max_queue_size == DEFAULT_MAX_QUEUE_SIZE == config.serving.model_defaults.max_queue_size
    for bad in ("0", "-1", "true", '"8"', "70000"):
        path.write_text(f'[node]\nid = "e"\n[serving.models.mlp]\nmax_queue_size = {bad}\n')
        with pytest.raises(ConfigError) as err:
            load_edge_config(path)
        assert err.value.key == "serving.models.mlp.max_queue_size" and "1..65536" in str(err.value)


def test_max_batch_size_beyond_the_worker_pool_is_reported_once_at_load(tmp_path, start_node, caplog):
    root = tmp_path / "models"
    write_model(root, "big", 1, build_mlp(seed=5))
    write_model(root, "fits", 1, build_mlp(seed=6))
    with caplog.at_level(logging.WARNING, logger="edgeloop.serving"):
        start_node(root, grpc_workers=4,
                   models=[ModelConfig(name="big", max_batch_size=16), ModelConfig(name="fits", max_batch_size=4)])
    warnings = [r.getMessage() for r in caplog.records if "grpc_workers" in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert "'big'" in warnings[0] and "max_batch_size 16" in warnings[0] and "grpc_workers 4" in warnings[0]
    assert merge_limit_warning(4, 4) is None and merge_limit_warning(5, 4) is not None


def test_calls_waiting_for_a_handler_thread_are_bounded_too(tmp_path, start_node):
    """Past ``max_concurrent_rpcs`` gRPC itself answers RESOURCE_EXHAUSTED at once, not at the deadline."""
    from edgeloop.protocol import inference_pb2_grpc
    from edgeloop.serving.server import max_concurrent_rpcs

    assert max_concurrent_rpcs(1) == 128 and max_concurrent_rpcs(8) == 128 and max_concurrent_rpcs(64) == 1024
    root = tmp_path / "models"
    write_model(root, "mlp", 1, build_mlp(seed=2))
    node = start_node(root, models=[ModelConfig(name="mlp", max_batch_size=4, max_queue_delay_us=0,
                                                max_queue_size=1024)], grpc_workers=1)
    version = node.node.models.acquire("mlp", "")
    version.leave()
    gate = Gate(version._batcher._run)
    version._batcher._run = gate
    request = build_infer_request("mlp", {"INPUT0": X})
    with grpc.insecure_channel(node.node.address) as channel:
        stub = inference_pb2_grpc.GRPCInferenceServiceStub(channel)
        first = stub.ModelInfer.future(request, timeout=RPC_TIMEOUT_S)
        assert gate.entered.wait(10)  # the one handler thread is held inside the model's run
        start = time.monotonic()
        futures = [stub.ModelInfer.future(request, timeout=RPC_TIMEOUT_S) for _ in range(140)]
        wait_until(lambda: sum(f.done() for f in futures) >= 13, timeout=5)
        refused = [f for f in futures if f.done()]
        assert time.monotonic() - start < 5
        assert all(f.exception() is not None and f.exception().code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                   for f in refused)
        gate.open()
        assert first.result() is not None
        answered = [f for f in futures if f not in refused]
        assert all(f.exception() is None for f in answered) and len(answered) + len(refused) == 140
