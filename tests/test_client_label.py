"""``MeshClient.label``: late labels reach the node that served the request, durable in its outbox."""
from __future__ import annotations

import socket
import time
from dataclasses import replace

import numpy as np
import pytest

from edgeloop.client import MeshClient
from edgeloop.config import CoordinatorConfig, EdgeConfig, MeshConfig, NodeConfig, ServingConfig
from edgeloop.node import EdgeNode
from edgeloop.serving.demo_models import build_mlp, write_model

X = np.ones((1, 32), dtype=np.float32)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def pair(tmp_path):
    ports = {"a": free_port(), "b": free_port()}
    nodes = {}
    for name, port in ports.items():
        repo = tmp_path / name
        write_model(repo, "mlp", 1, build_mlp())
        serving = ServingConfig(model_repository=repo)
        serving = replace(serving, model_defaults=replace(serving.model_defaults, sample_rate=1.0))
        peers = tuple(f"127.0.0.1:{p}" for n, p in ports.items() if n != name)
        config = EdgeConfig(node=NodeConfig(id=f"node-{name}", host="127.0.0.1", grpc_port=port, metrics_port=0),
                            serving=serving, mesh=MeshConfig(zeroconf_interfaces=(), static_peers=peers),
                            coordinator=CoordinatorConfig(outbox_path=tmp_path / f"{name}.sqlite"))
        nodes[name] = EdgeNode(config)
    for node in nodes.values():
        node.start()
    yield nodes
    for node in nodes.values():
        node.stop(1.0)


def labels_in(node) -> int:
    return node.outbox.pending("labels")


def test_labels_go_to_the_node_that_served_the_request(pair):
    by_id = {n.config.node.id: n for n in pair.values()}
    with MeshClient(seeds=[pair["a"].address], interfaces=()) as client:
        assert client.wait_ready(nodes=2, model="mlp", timeout=20)
        # by routing key: the key's owner served it, and gets the label
        owner = client.owner("user-42", "mlp")
        client.infer("mlp", {"INPUT0": X}, routing_key="user-42", request_id="r-1")
        assert client.label("mlp", 1.0, routing_key="user-42", timestamp_ms=int(time.time() * 1000)) == 1
        assert labels_in(by_id[owner]) == 1
        # by a request id the edge generated: its node id prefixes it
        from edgeloop.protocol.codec import build_infer_request

        response = client.infer_request(build_infer_request("mlp", {"INPUT0": X}))
        server = next(i for i in by_id if response.id.startswith(f"{i}-"))
        before = labels_in(by_id[server])
        assert client.label("mlp", 0.0, request_id=response.id) == 1
        assert labels_in(by_id[server]) == before + 1
        with pytest.raises(ValueError):
            client.label("mlp", 1.0)
