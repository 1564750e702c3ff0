"""RPCs racing an unload answer NOT_FOUND/UNAVAILABLE (or succeed), never UNKNOWN."""
from __future__ import annotations

import threading
import time

import grpc
import numpy as np
import pytest
from serving_fixtures import RPC_TIMEOUT_S

from edgeloop.protocol import inference_pb2
from edgeloop.protocol.codec import build_infer_request

ALLOWED = {grpc.StatusCode.OK, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.UNAVAILABLE}
CYCLES = 12
RACE_BUDGET_S = 60.0


class SwappedAfterRead(dict):
    """The served snapshot, replaced by an unload's empty one right after a reader looked a model up in it:
    the interleaving that let a KeyError escape between ``_peek`` and a second lookup."""

    def __init__(self, snapshot, manager):
        super().__init__(snapshot)
        self.manager = manager

    def get(self, key, default=None):
        value = super().get(key, default)
        self.manager._served = {}
        return value


@pytest.mark.parametrize("read", ["metadata", "triton_config", "statistics"])
def test_a_read_that_an_unload_overtakes_answers_from_the_snapshot_it_saw(repo, start_node, read):
    models = start_node(repo).node.models
    models._served = SwappedAfterRead(models._served, models)
    answer = getattr(models, read)("mlp", "")
    assert answer  # answered from the snapshot it read, not a KeyError
    assert "mlp" not in models.ready_models()  # the unload did happen


def test_rpcs_racing_unload_and_load_get_documented_statuses(repo, start_node):
    handle = start_node(repo)
    stub = handle.stub
    x = {"INPUT0": np.ones((1, 32), np.float32)}
    calls = [
        lambda: stub.ModelMetadata(inference_pb2.ModelMetadataRequest(name="mlp"), timeout=RPC_TIMEOUT_S),
        lambda: stub.ModelConfig(inference_pb2.ModelConfigRequest(name="mlp"), timeout=RPC_TIMEOUT_S),
        lambda: stub.ModelStatistics(inference_pb2.ModelStatisticsRequest(name="mlp"), timeout=RPC_TIMEOUT_S),
        lambda: stub.ModelStatistics(inference_pb2.ModelStatisticsRequest(name="mlp", version="1"),
                                     timeout=RPC_TIMEOUT_S),
        lambda: stub.ModelMetadata(inference_pb2.ModelMetadataRequest(name="mlp", version="1"),
                                   timeout=RPC_TIMEOUT_S),
        lambda: handle.infer(build_infer_request("mlp", x)),
        lambda: stub.ModelReady(inference_pb2.ModelReadyRequest(name="mlp"), timeout=RPC_TIMEOUT_S),
        lambda: stub.RepositoryIndex(inference_pb2.RepositoryIndexRequest(), timeout=RPC_TIMEOUT_S),
    ]
    done = threading.Event()
    seen: dict[grpc.StatusCode, int] = {}
    bad: list[tuple] = []
    deadline = time.monotonic() + RACE_BUDGET_S

    def reader(offset):
        i = offset
        while not done.is_set() and time.monotonic() < deadline and i < 100_000:
            try:
                calls[i % len(calls)]()
                code = grpc.StatusCode.OK
            except grpc.RpcError as exc:
                code = exc.code()
                if code not in ALLOWED:
                    bad.append((i % len(calls), code, exc.details()))
            seen[code] = seen.get(code, 0) + 1
            i += 1

    readers = [threading.Thread(target=reader, args=(k,)) for k in range(3)]
    for t in readers:
        t.start()
    try:
        for _ in range(CYCLES):
            stub.RepositoryModelUnload(inference_pb2.RepositoryModelUnloadRequest(model_name="mlp"),
                                       timeout=RPC_TIMEOUT_S)
            stub.RepositoryModelLoad(inference_pb2.RepositoryModelLoadRequest(model_name="mlp"),
                                     timeout=RPC_TIMEOUT_S)
    finally:
        done.set()
        for t in readers:
            t.join(RPC_TIMEOUT_S * 2)
    assert not bad, bad[:5]
    assert seen.get(grpc.StatusCode.OK, 0) > 0, seen
    assert handle.node.models.ready_models()["mlp"] == [1]
