"""Stopping a node under load: requests it already received are answered, none is cancelled."""
from __future__ import annotations

import threading
import time

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc
from serving_fixtures import RPC_TIMEOUT_S

from edgeloop.protocol import inference_pb2
from edgeloop.protocol.codec import build_infer_request

CLIENTS = 16


def test_stop_under_load_answers_every_request_sent_before_it(repo, start_node):
    handle = start_node(repo)
    request = build_infer_request("mlp", {"INPUT0": np.ones((64, 32), np.float32)})
    results, lock, stop_called = [], threading.Lock(), []

    def client():
        deadline = time.monotonic() + 20
        for _ in range(5000):
            if time.monotonic() > deadline:
                break
            t0 = time.monotonic()
            try:
                handle.stub.ModelInfer(request, timeout=RPC_TIMEOUT_S)
                code, details = grpc.StatusCode.OK, ""
            except grpc.RpcError as exc:
                code, details = exc.code(), exc.details() or ""
            with lock:
                results.append((t0, code, details))
            if stop_called and t0 > stop_called[0] + 0.5:
                break

    threads = [threading.Thread(target=client) for _ in range(CLIENTS)]
    for t in threads:
        t.start()
    time.sleep(0.5)
    stopper = threading.Thread(target=handle.node.stop, args=(10.0,))
    stop_called.append(time.monotonic())
    stopper.start()
    time.sleep(0.05)
    try:
        health = health_pb2_grpc.HealthStub(handle.channel)
        status = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=RPC_TIMEOUT_S).status
        ready = handle.stub.ServerReady(inference_pb2.ServerReadyRequest(), timeout=RPC_TIMEOUT_S).ready
    except grpc.RpcError as exc:  # the node should still be up, answering, while it drains
        status, ready = exc.code(), None
    stopper.join(30)
    for t in threads:
        t.join(30)
    before = [(code, details) for t0, code, details in results if t0 < stop_called[0]]
    assert sum(code == grpc.StatusCode.OK for code, _ in before) > CLIENTS
    wrong = [(code.name, details) for code, details in before
             if code != grpc.StatusCode.OK and not (code == grpc.StatusCode.UNAVAILABLE and "draining" in details)]
    assert not wrong, f"{len(wrong)} of {len(before)} requests sent before stop(): {wrong[:3]}"
    assert status == health_pb2.HealthCheckResponse.NOT_SERVING and not ready  # while draining
