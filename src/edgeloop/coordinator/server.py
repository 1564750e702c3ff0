"""The coordinator process: store + artifact directory + gRPC services + health + reflection + metrics.

``Coordinator(config)`` opens the database (running migrations) and binds its port; ``start()`` serves;
``stop(grace_s)`` stops accepting, lets in-flight uploads commit or fail unacknowledged within the grace
period, ends directive streams and closes the database cleanly (WAL checkpointed).
"""
from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor

import grpc

from edgeloop.config.schema import join_host_port
from edgeloop.ct.loop import CTLoop
from edgeloop.protocol import auth as fleet_auth
from edgeloop.protocol import mesh_pb2_grpc
from edgeloop.store import (ArtifactStore, SharedArtifactStore, StoreError, is_postgres_url, open_store,
                            redact_url)

from .hub import DirectiveHub
from .leader import LeaderLease
from .metrics import CoordinatorMetrics
from .core import CoordinatorCore
from .ct_link import CtGauges, decode_marked
from .entity_history import EdgeServicer, decode_logged
from .federated import FederatedRounds
from .fleet_service import FleetServicer

log = logging.getLogger("edgeloop.coordinator")

COORDINATOR_SERVICE = "edgeloop.v1.Coordinator"
FLEET_SERVICE = "edgeloop.v1.Fleet"


class Coordinator:
    """One coordinator, built from a CloudConfig."""

    def __init__(self, config, token: str | None = None) -> None:
        from grpc_health.v1 import health, health_pb2_grpc

        self.config = config
        self.token = token
        self.metrics = CoordinatorMetrics()
        try:
            self.store = open_store(config.database, synchronous=config.synchronous,
                                    history_ms=config.history_days * 86_400_000)
        except StoreError as exc:  # e.g. PostgreSQL unreachable: `edgeloop cloud` reports it and exits 1
            raise RuntimeError(str(exc)) from None
        self.artifacts = ArtifactStore(config.artifact_dir, config.max_artifact_bytes)
        if is_postgres_url(str(config.database)):  # every coordinator on the database reads every artifact
            self.artifacts = SharedArtifactStore(self.artifacts, self.store)
        self.hub = DirectiveHub()
        self.core = CoordinatorCore(config, self.store, self.artifacts, self.hub, self.metrics)
        #: several coordinators may share a PostgreSQL database: the lease holder alone runs the CT loop
        #: and drives rollouts (the others ingest and serve edges), every write of both fenced by its epoch
        self.leader = None
        ct_store, ct_publish = self.store, self.core.publish
        if is_postgres_url(str(config.database)):
            self.leader = LeaderLease(self.store, config.node.id, config.lease_s, self._lead, self._follow,
                                      on_refused=self.metrics.fenced_writes.inc)
            self.metrics.leader.set(0)
            self.core.rollouts.driving = lambda: self.leader.leading
            self.core.rollouts.tick = self.leader.guard(self.core.rollouts.tick)
            ct_store, ct_publish = self.leader.fence(self.store), self.leader.guard(self.core.publish)
        #: the continuous-training loop (its thread runs when ``training.enabled``; tests may step it)
        self.ct = CTLoop(ct_store, self.artifacts, ct_publish, decode_marked, config.training,
                         on_results=CtGauges(self.metrics.registry).update, manifest=self.core.rollouts.manifest,
                         rollouts=self.core.rollouts.rollouts)
        self.core.rollouts.on_finish.append(self.ct.rollout_ended)  # a rolled-back version is no champion
        self.core.ct = self.ct
        self.ct.decode_logged = decode_logged  # backfill reads raw inputs and feature times (ct/backfill.py)
        #: federated rounds of the models with [training.models.NAME] mode = "federated"
        self.federated = FederatedRounds(self.core, config.training)
        self.core.federated = self.federated
        interceptors = []
        if token is not None:
            interceptors.append(fleet_auth.TokenInterceptor(
                token, services=(COORDINATOR_SERVICE, FLEET_SERVICE), on_reject=self._on_unauthenticated))
        options = [("grpc.max_receive_message_length", config.max_message_bytes),
                   ("grpc.max_send_message_length", config.max_message_bytes),
                   ("grpc.so_reuseport", 0), *fleet_auth.KEEPALIVE_SERVER_OPTIONS]
        self._executor = ThreadPoolExecutor(max_workers=config.grpc_workers, thread_name_prefix="edgeloop-coord")
        self.server = grpc.server(self._executor, options=options, interceptors=interceptors)
        mesh_pb2_grpc.add_CoordinatorServicer_to_server(EdgeServicer(self.core), self.server)
        mesh_pb2_grpc.add_FleetServicer_to_server(FleetServicer(self.core), self.server)
        self.health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        self._service_names = [COORDINATOR_SERVICE, FLEET_SERVICE, health.SERVICE_NAME]
        address = join_host_port(config.node.host, config.node.grpc_port)
        try:
            creds = fleet_auth.server_credentials(config.auth)
            if creds is None:
                self._grpc_port = self.server.add_insecure_port(address)
            else:
                self._grpc_port = self.server.add_secure_port(address, creds)
        except RuntimeError as exc:
            self.core.writer.close()
            self.store.close()
            raise OSError(f"cannot listen on {address} (node.grpc_port): {exc}") from None
        self._metrics_httpd = None
        self._metrics_port: int | None = None
        self._stop_lock = threading.Lock()
        self._stopped = threading.Event()

    def _lead(self) -> None:
        self.metrics.leader.set(1)
        if self.config.training.enabled:
            self.ct.start()
            self.federated.triggers.start()

    def _follow(self) -> None:
        self.metrics.leader.set(0)
        if self.config.training.enabled:
            self.ct.stop()
            self.federated.triggers.stop()

    def _on_unauthenticated(self, method: str) -> None:
        self.metrics.unauthenticated.labels(method.rsplit("/", 1)[-1][:64]).inc()
        log.warning("refused %s: missing or wrong fleet token", method[:200])

    @property
    def grpc_port(self) -> int:
        return self._grpc_port

    @property
    def metrics_port(self) -> int | None:
        return self._metrics_port

    @property
    def address(self) -> str:
        return join_host_port(self.config.node.host, self._grpc_port)

    def start(self) -> "Coordinator":
        from grpc_health.v1 import health_pb2
        from grpc_reflection.v1alpha import reflection
        from prometheus_client import start_http_server

        reflection.enable_server_reflection([*self._service_names, reflection.SERVICE_NAME], self.server)
        self.server.start()
        self.core.rollouts.start()
        for service in ("", COORDINATOR_SERVICE, FLEET_SERVICE):
            self.health.set(service, health_pb2.HealthCheckResponse.SERVING)
        port = self.config.node.metrics_port
        if port is not None and port >= 0:
            httpd, _thread = start_http_server(port, addr=self.config.node.host, registry=self.metrics.registry)
            self._metrics_httpd = httpd
            self._metrics_port = httpd.server_port
        if self.leader is not None:
            self.leader.start()
        elif self.config.training.enabled:
            self.ct.start()
            self.federated.triggers.start()  # federated models' triggers start their rounds
        log.info("coordinator %s listening on %s%s (metrics on port %s; database %s, schema v%d)",
                 self.config.node.id, self.address, " (TLS)" if self.config.auth.tls_cert else "",
                 self._metrics_port, _shown(self.config.database), self.store.schema_version)
        return self

    def stop(self, grace_s: float = 10.0) -> None:
        """Stop accepting, let in-flight uploads finish (commit) within ``grace_s``, close the database."""
        with self._stop_lock:
            if self._stopped.is_set():
                return
            log.info("coordinator stopping (grace %.1f s)", grace_s)
            self.health.enter_graceful_shutdown()
            self.core.stopping = True
            self.core.rollouts.stop()
            if self.leader is not None:
                self.leader.stop()  # stops the loop if it leads, and releases the lease
            self.ct.stop()  # a run in progress finishes its step first
            self.federated.triggers.stop()
            self.hub.close()  # directive streams end; edges reconnect and resume after their last sequence
            self.server.stop(grace_s).wait()
            self._executor.shutdown(wait=True, cancel_futures=True)
            self.core.writer.close()  # batches handed over commit before the database closes
            self.store.close()
            if self._metrics_httpd is not None:
                threading.Thread(target=_close_http_server, args=(self._metrics_httpd,), daemon=True,
                                 name="edgeloop-coord-metrics-close").start()
            self._stopped.set()
            log.info("coordinator stopped")

    def wait(self, timeout: float | None = None) -> bool:
        return self._stopped.wait(timeout)


def _close_http_server(httpd) -> None:
    httpd.shutdown()
    httpd.server_close()


def _shown(database) -> str:
    """The database as logs may show it (a URL without its password)."""
    return redact_url(database) if is_postgres_url(str(database)) else str(database)
