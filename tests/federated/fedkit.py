"""Helpers for the federated tests: a real coordinator and 4 real edge nodes on 127.0.0.1 (``FedFleet``)."""
from __future__ import annotations

import time

from loopkit import MODEL, Edge, champion, edge_config, push, stream, wait_for

from edgeloop.config import parse_cloud_config
from edgeloop.coordinator import Coordinator
from edgeloop.protocol import mesh_pb2

ROWS_PER_EDGE = 160


def _cloud(tmp, **training):
    from dataclasses import replace

    config = parse_cloud_config({
        "storage": {"database": "cloud/coord.sqlite", "artifact_dir": "cloud/artifacts"},
        "fleet": {"heartbeat_interval_ms": 200},
        "delivery": {"canary": 4},  # the staged rollout's first wave is the whole (4-edge) fleet
        "training": {"enabled": False, "min_slice_samples": 20, "holdout_fraction": 0.25,
                     "models": {MODEL: {"mode": "federated"}}, "federated_timeout_s": 30.0,
                     "federated_min_edges": 3, "federated_epochs": 10,
                     "federated_lr": 0.5,
                     # about rounds, not latency: a loaded 2-core machine's p99 noise must not fail infra validation
                     "latency_ratio": 50.0, **training}}, base_dir=tmp)
    return Coordinator(replace(config, node=replace(config.node, grpc_port=0, metrics_port=-1))).start()


class FedFleet:
    def __init__(self, tmp, **training) -> None:
        self.cloud = _cloud(tmp, **training)
        self.edges: list[Edge] = []
        try:
            first = champion()
            push(self.cloud, first)
            self.configs = [edge_config(tmp, f"edge-{chr(97 + i)}", self.cloud.address, first) for i in range(4)]
            for config in self.configs:
                self.edges.append(Edge(config))
            assert wait_for(lambda: all(e.node.local_examples.models == {MODEL} for e in self.edges), timeout=30)
        except BaseException:
            self.close()
            raise
        self.n = 0

    def serve(self, rows: int, seed: int, keyed: bool = False, changed: bool = True) -> float:
        """Each edge serves ``rows`` rows of the (changed) concept and gets their labels; returns accuracy.

        ``keyed``: each request carries a routing key and its label names only model + key + time.
        """
        right = total = 0
        for k, edge in enumerate(self.edges):
            x, y = stream(rows, seed * 10 + k, changed=changed)
            ids = []
            for i in range(rows):
                self.n += 1
                rid = f"r{self.n}"
                label, _ = edge.predict(x[i], rid, routing_key=f"meter-{self.n}" if keyed else "")
                right += label == y[i]
                total += 1
                ids.append(rid)
            if keyed:
                at = int(time.time() * 1000) + 1000  # after the edge recorded every row of the key
                labels = [mesh_pb2.Label(model=MODEL, routing_key=f"meter-{self.n - rows + 1 + i}", timestamp_ms=at,
                                         value=float(v)) for i, v in enumerate(y)]
                edge.feedback.Label(mesh_pb2.LabelRequest(labels=labels), timeout=10)
            else:
                edge.label(ids, y)
        return right / total

    def restart(self, i: int) -> Edge:
        """Stop edge ``i`` and start it again on the same files (model repository, outbox, examples)."""
        self.edges[i].close()
        self.edges[i] = Edge(self.configs[i])
        return self.edges[i]

    def close(self) -> None:
        for e in self.edges:
            try:
                e.close()
            except Exception:
                pass
        self.cloud.stop(1.0)


def labelled(fleet, rows):
    return wait_for(lambda: all(e.node.local_examples.counts().get(MODEL, (0, 0))[1] >= rows for e in fleet.edges),
                    timeout=30)
