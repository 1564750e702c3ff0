"""Down, up-but-not-ready and draining are three different states, in the view and in the peers' logs."""
from __future__ import annotations

import logging
import time

from grpc_health.v1 import health_pb2

from edgeloop.config import EdgeConfig, MeshConfig, NodeConfig, ServingConfig
from edgeloop.mesh.membership import DOWN, DRAINING, UP
from edgeloop.node import EdgeNode
from meshkit import BarePeer, wait_for


def test_a_real_node_with_an_empty_repository_is_a_live_member(tmp_path, caplog):
    """It will get models from the coordinator later: up, not ready, and never picked for a model."""
    caplog.set_level(logging.INFO, logger="edgeloop.mesh.liveness")
    (tmp_path / "empty").mkdir()
    config = EdgeConfig(node=NodeConfig(id="edge-empty", grpc_port=0, metrics_port=None),
                        serving=ServingConfig(model_repository=tmp_path / "empty"),
                        mesh=MeshConfig(zeroconf_interfaces=(), heartbeat_interval_ms=100, down_after_ms=600))
    node = EdgeNode(config).start()
    watcher = BarePeer("edge-watch", zeroconf_interfaces=(), static_peers=(node.address,)).start()
    try:
        assert wait_for(lambda: watcher.view().get("edge-empty") is not None
                        and watcher.view()["edge-empty"].state == UP, 5) is not None
        seen = watcher.view()["edge-empty"]
        assert seen.alive and not seen.ready and seen.condition == "not-ready"
        time.sleep(0.8)  # longer than down_after_ms: still up, never counted as down or draining
        assert watcher.view()["edge-empty"].state == UP
        assert watcher.mesh.membership.placement().candidates("mlp") == ("edge-watch",)
        assert "peer edge-empty is up, no model ready yet" in caplog.text
        assert "draining" not in caplog.text and "is down" not in caplog.text
    finally:
        watcher.stop()
        node.stop(1.0)


def test_draining_is_not_down_and_down_is_silence(caplog):
    caplog.set_level(logging.INFO, logger="edgeloop.mesh.liveness")
    watched = BarePeer("edge-w", models={}, zeroconf_interfaces=()).start()
    watcher = BarePeer("edge-v", zeroconf_interfaces=(), static_peers=(watched.address,)).start()
    try:
        view = watcher.view
        assert wait_for(lambda: "edge-w" in view() and view()["edge-w"].condition == "not-ready", 5) is not None
        watched.table.set({"mlp": [1]})  # a model arrives: ready, and now a placement candidate
        assert wait_for(lambda: view()["edge-w"].condition == "ready", 5) is not None
        assert watcher.mesh.membership.placement().candidates("mlp") == ("edge-v", "edge-w")

        watched.health.set("", health_pb2.HealthCheckResponse.NOT_SERVING)  # shutting down, still answering
        assert wait_for(lambda: view()["edge-w"].state == DRAINING, 5) is not None
        assert watcher.mesh.membership.placement().candidates("mlp") == ("edge-v",)
        states = set()
        end = time.monotonic() + 1.2  # twice down_after_ms: answering NOT_SERVING never reads as silence
        while time.monotonic() < end:
            states.add(view()["edge-w"].state)
            time.sleep(0.02)
        assert states == {DRAINING}

        watched.stop_serving()  # no answers at all
        assert wait_for(lambda: view()["edge-w"].state == DOWN, 5) is not None
        assert view()["edge-w"].condition == "down"
        log = caplog.text
        assert "peer edge-w is up, no model ready yet" in log and "peer edge-w is ready (has models)" in log
        assert "peer edge-w is draining" in log and "peer edge-w is down (no health answer" in log
        assert log.index("is draining") < log.index("is down")
    finally:
        watcher.stop()
        watched.stop()
