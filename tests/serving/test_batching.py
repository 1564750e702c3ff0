"""Dynamic batching on a real node: merged runs happen, results are bit-identical, idle requests do not wait."""
from __future__ import annotations

import threading
import time

import grpc
import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from serving_fixtures import RPC_TIMEOUT_S

from edgeloop.config import ModelConfig
from edgeloop.protocol.codec import build_infer_request, infer_response_to_numpy
from edgeloop.serving.demo_models import IR_VERSION, OPSET, build_mlp, write_model

CLIENTS = 16
REQUESTS_PER_CLIENT = 12


def build_scaler():
    """Y = 2 * X with a dynamic non-batch dim, so requests of different widths cannot merge."""
    graph = helper.make_graph([helper.make_node("Mul", ["X", "two"], ["Y"])], "scaler",
                              [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["batch", "width"])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["batch", "width"])],
                              [numpy_helper.from_array(np.array(2.0, np.float32), "two")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    return model


@pytest.fixture
def batching_node(tmp_path, start_node):
    root = tmp_path / "models"
    write_model(root, "mlp", 1, build_mlp(seed=4))
    write_model(root, "scaler", 1, build_scaler())
    models = [ModelConfig(name="mlp", max_batch_size=16, max_queue_delay_us=20_000),
              ModelConfig(name="scaler", max_batch_size=8, max_queue_delay_us=5_000)]
    return start_node(root, models=models, grpc_workers=CLIENTS + 2)


def run_clients(fn, clients=CLIENTS):
    errors = []

    def body(i):
        try:
            fn(i)
        except Exception as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=body, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []


def hold_first_run_until_queued(handle, model: str, depth: int) -> threading.Thread:
    """Delay the model's first onnxruntime run until ``depth`` requests are waiting behind it.

    Merging needs requests that arrive while a run is in progress; the MLP runs in microseconds,
    and a loaded machine can serialise the clients so that none ever overlaps.  Holding the
    first run (the real session still computes it) makes the overlap certain.
    """
    models = handle.node.models
    version = models.acquire(model, "1")
    version.leave()
    batcher = version._batcher  # the batcher's run hook: the session's run, called once per merged batch
    gate, run = threading.Event(), batcher._run
    batcher._run = lambda feeds: (gate.wait(10), run(feeds))[1]

    def open_gate():
        deadline = time.monotonic() + 10
        while models.queue_depth(model) < depth and time.monotonic() < deadline:
            time.sleep(0.001)
        gate.set()

    opener = threading.Thread(target=open_gate)
    opener.start()
    return opener


def test_concurrent_requests_are_merged_with_bit_identical_results(batching_node):
    rng = np.random.default_rng(11)
    inputs = [[rng.standard_normal((1 + (j % 3 == 0), 32)).astype(np.float32) for j in range(REQUESTS_PER_CLIENT)]
              for _ in range(CLIENTS)]
    results = [[None] * REQUESTS_PER_CLIENT for _ in range(CLIENTS)]
    barrier = threading.Barrier(CLIENTS, timeout=30)
    opener = hold_first_run_until_queued(batching_node, "mlp", CLIENTS)

    def client(i):
        barrier.wait()
        for j, x in enumerate(inputs[i]):
            response = batching_node.infer(build_infer_request("mlp", {"INPUT0": x}, request_id=f"{i}-{j}"))
            assert response.id == f"{i}-{j}"
            results[i][j] = infer_response_to_numpy(response)["OUTPUT0"]

    run_clients(client)
    opener.join(15)
    reference = ort.InferenceSession(build_mlp(seed=4).SerializeToString(), providers=["CPUExecutionProvider"])
    for i in range(CLIENTS):
        for j, x in enumerate(inputs[i]):
            expected = reference.run(None, {"INPUT0": x})[0]  # the same request run alone
            assert results[i][j].tobytes() == expected.tobytes(), (i, j)
    (stats,) = batching_node.stats("mlp")
    rows = sum(x.shape[0] for per_client in inputs for x in per_client)
    assert stats.inference_count == rows
    assert stats.inference_stats.success.count == CLIENTS * REQUESTS_PER_CLIENT
    assert stats.execution_count < stats.inference_stats.success.count  # merged runs happened
    assert max(b.batch_size for b in stats.batch_stats) == 16  # the held run's followers: max_batch_size
    assert sum(b.batch_size * b.compute_infer.count for b in stats.batch_stats) == rows


def test_requests_with_other_non_batch_dims_run_apart(batching_node):
    widths = [3, 5]
    results = {}

    def client(i):
        for j in range(6):
            x = np.full((1, widths[i % 2]), i * 100 + j, np.float32)
            response = batching_node.infer(build_infer_request("scaler", {"X": x}))
            results[(i, j)] = (x, infer_response_to_numpy(response)["Y"])

    run_clients(client, clients=8)
    for x, y in results.values():
        assert y.shape == x.shape
        np.testing.assert_array_equal(y, 2 * x)


def test_idle_request_runs_without_queue_delay(tmp_path, start_node):
    root = tmp_path / "models"
    write_model(root, "mlp", 1, build_mlp())
    handle = start_node(root, models=[ModelConfig(name="mlp", max_batch_size=8, max_queue_delay_us=2_000_000)])
    request = build_infer_request("mlp", {"INPUT0": np.ones((1, 32), np.float32)})
    handle.infer(request)
    start = time.monotonic()
    for _ in range(3):
        handle.infer(request)
    assert time.monotonic() - start < 1.0  # each would wait 2 s if an idle request were queued
    (stats,) = handle.stats("mlp")
    assert stats.inference_stats.queue.ns == 0 and stats.execution_count == 4


def test_request_larger_than_max_batch_size_is_refused(batching_node):
    with pytest.raises(grpc.RpcError) as err:
        batching_node.infer(build_infer_request("mlp", {"INPUT0": np.ones((17, 32), np.float32)}),
                            timeout=RPC_TIMEOUT_S)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "17" in err.value.details() and "max_batch_size" in err.value.details()
