"""An edge node: the inference server, its health and reflection services, and its metrics endpoint.

``EdgeNode(config)`` binds its gRPC port at construction (so ``grpc_port`` is known before start and
other parts may add servicers to ``server``), loads the repository in ``start()``, and in ``stop()``
turns health NOT_SERVING, lets in-flight requests finish within the grace period and unloads.
Mesh wiring (discovery, routing) attaches here when ``config.mesh.enabled``.
"""
from __future__ import annotations

import logging
import threading
import time

from edgeloop.config.schema import join_host_port
from edgeloop.serving.manager import ModelManager
from edgeloop.serving.metrics import ServingMetrics
from edgeloop.serving.repository import ModelRepository
from edgeloop.serving.server import create_grpc_server
from edgeloop.serving.servicer import InferenceServicer, stream_limit

log = logging.getLogger("edgeloop.node")

INFERENCE_SERVICE = "inference.GRPCInferenceService"
#: How long a draining node keeps its gRPC server up for requests already received (see ``stop``).
DRAIN_SETTLE_S = 0.25


class EdgeNode:
    """One edge process's serving side, built from an EdgeConfig."""

    def __init__(self, config) -> None:
        from grpc_health.v1 import health, health_pb2_grpc

        from edgeloop.protocol import inference_pb2_grpc

        self.config = config
        self.metrics = ServingMetrics()
        self.models = ModelManager(ModelRepository(config.serving.model_repository), config.serving, self.metrics)
        self.servicer = InferenceServicer(self.models, max_streams=stream_limit(config.serving.grpc_workers))
        self.server = create_grpc_server(config.serving)
        inference_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(self.servicer, self.server)
        self.health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        #: full names of services offered by reflection; others may append before ``start()``
        self.reflection_service_names: list[str] = [INFERENCE_SERVICE, health.SERVICE_NAME]
        address = join_host_port(config.node.host, config.node.grpc_port)
        try:
            self._grpc_port = self.server.add_insecure_port(address)
        except RuntimeError as exc:
            raise OSError(f"cannot listen on {address} (node.grpc_port / --grpc-port): {exc}") from None
        self._metrics_port: int | None = None
        self._metrics_httpd = None
        self._escalation_pool = None
        self._stopped = threading.Event()
        self._started = False
        self._stop_lock = threading.Lock()
        self.models.add_listener(lambda event=None: self._update_health())
        self.mesh = None
        if config.mesh.enabled:  # mesh wiring: Peer service + router now, discovery/heartbeats at start
            from edgeloop.mesh.router import forward_limit
            from edgeloop.mesh.runtime import Mesh

            self.mesh = Mesh(config.node, config.mesh, self.models)
            self.mesh.router.set_max_forwards(forward_limit(config.serving.grpc_workers))  # never every thread
            self.mesh.attach(self.server, self.servicer)
            self.reflection_service_names.append("edgeloop.v1.Peer")
        self._wire_escalation()

    def _wire_escalation(self) -> None:
        """Joint inference: hard rows of a model with an escalation policy go through the mesh's channels."""
        from edgeloop.mesh.channels import ChannelPool
        from edgeloop.mesh.escalation import EscalationSender
        from edgeloop.serving.escalation import Escalation

        if self.mesh is not None:
            sender = EscalationSender(self.config.node.id, self.mesh.membership, self.mesh.pool)
        else:  # no mesh: explicit target addresses only, over channels of our own
            self._escalation_pool = ChannelPool()
            sender = EscalationSender(self.config.node.id, None, self._escalation_pool)
        from edgeloop.mesh.router import forward_limit

        # an escalation holds a handler thread up to its budget: at most a quarter of them at once, like forwards
        self.escalation = Escalation(sender, self.metrics.registry,
                                     max_in_flight=max(1, forward_limit(self.config.serving.grpc_workers)))
        self.servicer.escalation = self.escalation

    @property
    def grpc_port(self) -> int:
        """The bound gRPC port (the real one when the config asked for port 0)."""
        return self._grpc_port

    @property
    def metrics_port(self) -> int | None:
        """The bound metrics port once started (None before start or when metrics are off)."""
        return self._metrics_port

    @property
    def address(self) -> str:
        return join_host_port(self.config.node.host, self._grpc_port)

    def start(self) -> "EdgeNode":
        """Load the repository, start serving and the metrics endpoint."""
        from grpc_reflection.v1alpha import reflection
        from prometheus_client import start_http_server

        failed = self.models.load_all()
        for name, reason in failed.items():
            log.error("model %s not loaded: %s", name, reason)
        reflection.enable_server_reflection([*self.reflection_service_names, reflection.SERVICE_NAME], self.server)
        self.server.start()
        self._started = True
        self._update_health()
        if self.config.node.metrics_port is not None and self.config.node.metrics_port >= 0:
            httpd, _thread = start_http_server(self.config.node.metrics_port, addr=self.config.node.host,
                                               registry=self.metrics.registry)
            self._metrics_httpd = httpd
            self._metrics_port = httpd.server_port
        if self.mesh is not None:
            self.mesh.start(self._grpc_port, self._metrics_port)
        ready = self.models.ready_models()
        log.info("node %s listening on %s (metrics on port %s); %d model(s) ready: %s", self.config.node.id,
                 self.address, self._metrics_port, len(ready), ready)
        return self

    def _update_health(self) -> None:
        from grpc_health.v1 import health_pb2

        # "" is the process: SERVING while started and not draining, models or not (an empty node is a live
        # member awaiting models).  The inference service, like ServerReady, is SERVING only with a model ready.
        serving, not_serving = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING
        live = self._started and not self.servicer.draining
        self.health.set("", serving if live else not_serving)
        self.health.set(INFERENCE_SERVICE, serving if live and self.models.any_ready() else not_serving)

    def stop(self, grace_s: float = 10.0) -> None:
        """Stop taking requests (health NOT_SERVING), finish in-flight ones within ``grace_s``, unload."""
        with self._stop_lock:
            if self._stopped.is_set():
                return
            log.info("node %s draining (grace %.1f s)", self.config.node.id, grace_s)
            if self.mesh is not None:
                self.mesh.stop()  # goodbye first: peers stop routing here before we drain
            deadline = time.monotonic() + grace_s
            self.servicer.draining = True  # new inference requests get UNAVAILABLE from here on
            self.health.enter_graceful_shutdown()
            self._drain_in_flight(deadline)
            self.server.stop(max(0.0, deadline - time.monotonic())).wait()
            self.models.close(drain_timeout_s=grace_s)
            if self._escalation_pool is not None:
                self._escalation_pool.close()
            if self._metrics_httpd is not None:
                # serve_forever notices shutdown only at its 0.5 s poll: let that happen in the background
                threading.Thread(target=_close_http_server, args=(self._metrics_httpd,), daemon=True,
                                 name="edgeloop-metrics-close").start()
            self._stopped.set()
            log.info("node %s stopped", self.config.node.id)

    def _drain_in_flight(self, deadline: float) -> None:
        """Keep the server up until the requests it already received are answered (bounded by ``deadline``).

        ``grpc.Server.stop`` cancels calls that reached gRPC's core but no handler yet; under load
        those are requests a client sent before the drain began.  Kept up for ``DRAIN_SETTLE_S``,
        the server hands them to handlers, which answer UNAVAILABLE (retryable) instead of CANCELLED.
        """
        settle_until = min(deadline, time.monotonic() + DRAIN_SETTLE_S)
        while time.monotonic() < deadline:
            if time.monotonic() >= settle_until and self.models.queue_depth() == 0:
                return
            time.sleep(0.005)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until ``stop()`` completed; True if it did within ``timeout``."""
        return self._stopped.wait(timeout)


def _close_http_server(httpd) -> None:
    httpd.shutdown()
    httpd.server_close()


__all__ = ["EdgeNode"]


# ---------------------------------------------------------------- operations the CLI reaches through the node
# (the architecture lets `cli` import node/coordinator/protocol/perf, not the parts themselves)

DEMO_MODEL_NAME = "demo_mlp"


def write_demo_model(root, name: str = DEMO_MODEL_NAME, version: int = 1):
    """Write the project's own demo MLP (32->64->4, built with onnx.helper) into a model repository."""
    from edgeloop.serving.demo_models import build_mlp, write_model

    return write_model(root, name, version, build_mlp())


def replay_decision_log(path):
    """Recompute every placement decision in a mesh decision log (see ``edgeloop.mesh.decision_log``)."""
    from edgeloop.mesh.decision_log import replay

    return replay(path)
