"""An edge node: the inference server, its health and reflection services, and its metrics endpoint.

``EdgeNode(config)`` binds its gRPC port at construction (so ``grpc_port`` is known before start and
other parts may add servicers to ``server``), loads the repository in ``start()``, and in ``stop()``
turns health NOT_SERVING, lets in-flight requests finish within the grace period and unloads.
Mesh wiring (discovery, routing) attaches here when ``config.mesh.enabled``.  The data path (sample
outbox, edge statistics, the ``Feedback`` service, and with ``[coordinator] address`` the uploader
and the coordinator link) attaches when a coordinator is configured or a model has ``sample_rate > 0``.
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
from edgeloop.serving.servicer import InferenceServicer, add_to_server, stream_limit

log = logging.getLogger("edgeloop.node")

INFERENCE_SERVICE = "inference.GRPCInferenceService"
#: How long a draining node keeps its gRPC server up for requests already received (see ``stop``).
DRAIN_SETTLE_S = 0.25
#: How often the real-time feature state is snapshotted while serving (and always on stop).
FEATURE_SNAPSHOT_INTERVAL_S = 60.0


class EdgeNode:
    """One edge process's serving side, built from an EdgeConfig."""

    def __init__(self, config) -> None:
        from grpc_health.v1 import health, health_pb2_grpc

        self.config = config
        self.metrics = ServingMetrics()
        self.models = ModelManager(ModelRepository(config.serving.model_repository), config.serving, self.metrics)
        self.servicer = InferenceServicer(self.models, max_streams=stream_limit(config.serving.grpc_workers))
        self.server = create_grpc_server(config.serving)
        add_to_server(self.servicer, self.server)  # raw-bytes requests: parse errors get INVALID_ARGUMENT
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
        self.models.features.snapshot_dir = feature_snapshot_dir(config)  # restored as each state is created
        self._feature_snapshots = None
        self.handover = None  # mesh.handover.EntityHandover when the mesh is on
        self.eager_pull = None  # mesh.handover.EagerPull when the mesh is on
        self.history = None  # node.rebuild.CoordinatorHistory when the mesh is on and a coordinator is configured
        self.mesh = None
        self._token = None
        self.servicer.refuse_unsigned_loads = config.delivery.require_signed
        if config.mesh.enabled or data_path_enabled(config):
            from edgeloop.protocol.auth import process_token

            # read once at start; without one, says once that the mesh/fleet is unauthenticated
            self._token = process_token(config.auth, f"edge {config.node.id}")
        if config.mesh.enabled:  # mesh wiring: Peer service + router now, discovery/heartbeats at start
            from edgeloop.mesh.router import forward_limit
            from edgeloop.mesh.runtime import Mesh

            self.mesh = Mesh(config.node, config.mesh, self.models, token=self._token)
            self.mesh.router.set_max_forwards(forward_limit(config.serving.grpc_workers))  # never every thread
            self.mesh.attach(self.server, self.servicer)
            self.reflection_service_names.append("edgeloop.v1.Peer")
            self._wire_handover()
            self.mesh.peer_servicer.artifacts = self.held_artifact
        elif config.coordinator_address:  # no mesh: still serve held artifacts to peers (Peer.FetchArtifact)
            from edgeloop.mesh.peer_service import PeerServicer, node_identity
            from edgeloop.protocol import mesh_pb2_grpc

            n = config.node
            self.peer_servicer = PeerServicer(
                lambda: node_identity(n.id, n.host, self.grpc_port, self.metrics_port or 0, n.weight, n.zone),
                self.models.ready_models, self.models.queue_depth, lambda: 0, token=self._token)
            self.peer_servicer.artifacts = self.held_artifact
            mesh_pb2_grpc.add_PeerServicer_to_server(self.peer_servicer, self.server)
        self.outbox = self.edge_stats = self.recorder = self.feedback = None
        self.uploader = self.link = self._coordinator_channel = None
        if data_path_enabled(config):
            self._attach_data_path()
        self._wire_escalation()

    def _wire_handover(self) -> None:
        """Entity feature state moves with ownership: asked from the previous owner, given to the new one."""
        from edgeloop.mesh.handover import EagerPull, EntityHandover, keys_owned_by

        features = self.models.features
        membership = self.mesh.membership
        self.mesh.peer_servicer.export_entities = features.export
        self.mesh.peer_servicer.entities_owned_by = (
            lambda model, digest, node, limit: keys_owned_by(membership, features.keys(model, digest), model, node,
                                                             limit))
        self.handover = EntityHandover(self.config.node.id, membership, self.mesh.pool)
        features.fetch_entity = self.handover.fetch
        self.eager_pull = EagerPull(self.handover, features.held, features.adopt_pulled)  # started with the mesh

    def held_artifact(self, sha: str):
        """The model file of a version on disk whose manifest names ``sha`` (what Peer.FetchArtifact serves)."""
        from edgeloop.node.edge_stats import read_manifest

        repository = self.models.repository
        for model in repository.model_names():
            for version in repository.versions(model):
                manifest = read_manifest(repository, model, version)
                if manifest and manifest.get("sha256") == sha:
                    return repository.model_path(model, version)
        return None

    def _wire_escalation(self) -> None:
        """Joint inference: hard rows of a model with an escalation policy go through the mesh's channels."""
        from edgeloop.mesh.channels import ChannelPool
        from edgeloop.mesh.escalation import EscalationSender
        from edgeloop.mesh.router import forward_limit
        from edgeloop.serving.escalation import Escalation

        if self.mesh is not None:
            sender = EscalationSender(self.config.node.id, self.mesh.membership, self.mesh.pool)
        else:  # no mesh: explicit target addresses only, over channels of our own
            self._escalation_pool = ChannelPool(self._token)
            sender = EscalationSender(self.config.node.id, None, self._escalation_pool)

        # an escalation holds a handler thread up to its budget: at most a quarter of them at once, like forwards
        self.escalation = Escalation(sender, self.metrics.registry,
                                     max_in_flight=max(1, forward_limit(self.config.serving.grpc_workers)))
        self.servicer.escalation = self.escalation

    def _attach_data_path(self) -> None:
        """Outbox, statistics, recorder and the Feedback service (uploader and link start in ``start``)."""
        from edgeloop.node.data_metrics import DataPathCollector
        from edgeloop.node.edge_stats import EdgeStats, PsiCollector, read_manifest
        from edgeloop.node.feedback import FeedbackServicer
        from edgeloop.node.outbox import Outbox
        from edgeloop.node.recorder import Recorder
        from edgeloop.protocol import mesh_pb2_grpc

        config = self.config
        c = config.coordinator
        self.outbox = Outbox(outbox_path(config), c.outbox_max_rows, c.outbox_max_bytes, c.outbox_queue_size)
        repository = self.models.repository
        self.edge_stats = EdgeStats(lambda model, version: read_manifest(repository, model, version))
        stats = self.edge_stats
        self.models.add_listener(lambda event: stats.forget(event.model, event.ready_versions))
        self.recorder = Recorder(config.node.id, config.sample_rate, self.outbox, self.edge_stats)
        self.servicer.on_served = self.recorder
        self.feedback = FeedbackServicer(self.outbox, self._token)
        from edgeloop.node.federated import LocalExamples

        from pathlib import Path

        path = Path(outbox_path(config))  # federated models' rows and labels, joined here, in a file beside it
        self.local_examples = LocalExamples(path.with_name(f"{path.stem}.federated{path.suffix}"))
        self.recorder.local = self.local_examples
        self.federated = None  # FederatedEdge once the coordinator link starts
        apply_label, local = self.models.features.apply_label, self.local_examples

        def on_label(sample_id, model, routing_key, timestamp_ms, value):
            apply_label(sample_id, model, routing_key, timestamp_ms, value)  # late labels reach the entity's state
            local.add_label(sample_id, model, value, routing_key, timestamp_ms)

        self.feedback.on_label = on_label
        mesh_pb2_grpc.add_FeedbackServicer_to_server(self.feedback, self.server)
        self.reflection_service_names.append("edgeloop.v1.Feedback")
        self.metrics.registry.register(DataPathCollector(self.outbox, lambda: self.uploader))
        self.metrics.registry.register(PsiCollector(self.edge_stats))

    def _start_data_path(self) -> None:
        from edgeloop.node.coordinator_link import CoordinatorLink
        from edgeloop.node.uploader import Uploader
        from edgeloop.protocol.auth import keepalive_options, open_channel

        address = self.config.coordinator_address
        if not address:
            return
        c = self.config.coordinator
        self._coordinator_channel = open_channel(address, self.config.auth, self._token, options=[
            ("grpc.max_send_message_length", 64 << 20), ("grpc.max_receive_message_length", 64 << 20),
            *keepalive_options(c.keepalive_ms)])
        self.uploader = Uploader(self.outbox, self._coordinator_channel, self.config.node.id, c.upload_batch_size,
                                 c.upload_backoff_max_ms / 1000).start()
        from edgeloop.node.federated import FederatedEdge

        self.federated = FederatedEdge(self.config.node.id, self.local_examples, self._coordinator_channel,
                                       self.outbox)
        self.link = CoordinatorLink(self, self._coordinator_channel, c.upload_backoff_max_ms / 1000).start()
        if self.handover is not None:  # a dead previous owner's entities are rebuilt from the coordinator's log
            from edgeloop.node.rebuild import CoordinatorHistory

            self.history = CoordinatorHistory(self._coordinator_channel, self.config.node.id)
            self.models.features.rebuild_entity = self.history.rebuild
        log.info("node %s: coordinator %s; outbox %s (%d rows pending)", self.config.node.id, address,
                 self.outbox.path, self.outbox.pending_rows)

    def _stop_data_path(self) -> None:
        if self.uploader is not None:
            self.uploader.stop()
        if self._coordinator_channel is not None:
            self._coordinator_channel.close()
        if self.outbox is not None:
            self.outbox.close()
            self.local_examples.close()

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

        if self.outbox is not None:
            from edgeloop.node.coordinator_link import restore_rollback_pins

            self.outbox.start()  # before the first request is served
            restore_rollback_pins(self.models, self.outbox)  # before load_all, so a pinned model never serves newer
        from edgeloop.serving.features import FeatureCollector, PeriodicSnapshots

        self.metrics.registry.register(FeatureCollector(self.models.features))
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
            if self.eager_pull is not None:
                self.eager_pull.start()  # before the mesh: its first epoch bumps already pull
            self.mesh.start(self._grpc_port, self._metrics_port)
        if self.outbox is not None:
            self._start_data_path()
        self._feature_snapshots = PeriodicSnapshots(self.models.features, FEATURE_SNAPSHOT_INTERVAL_S).start()
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
            if self.link is not None:
                self.link.stop()  # no directive may load a model while the node drains
            if self.eager_pull is not None:
                self.eager_pull.stop()
            if self.mesh is not None:
                self.mesh.stop()  # goodbye first: peers stop routing here before we drain
            deadline = time.monotonic() + grace_s
            self.servicer.draining = True  # new inference requests get UNAVAILABLE from here on
            self.health.enter_graceful_shutdown()
            self._drain_in_flight(deadline)
            self.server.stop(max(0.0, deadline - time.monotonic())).wait()
            self.models.close(drain_timeout_s=grace_s)
            if self._feature_snapshots is not None:
                self._feature_snapshots.stop()  # and one last snapshot, after the last request
            if self._escalation_pool is not None:
                self._escalation_pool.close()
            self._stop_data_path()  # after the server: the outbox commits what the last requests queued
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


def data_path_enabled(config) -> bool:
    """True when this node records samples: a coordinator is configured or some model's sample_rate > 0."""
    serving = config.serving
    rates = [serving.model_defaults.sample_rate, *(m.sample_rate for m in serving.models)]
    return bool(config.coordinator_address) or any(r is not None and r > 0 for r in rates)


def feature_snapshot_dir(config):
    """Where the real-time feature state is snapshotted: beside the outbox, else beside the model repository."""
    from pathlib import Path

    if data_path_enabled(config):
        return Path(outbox_path(config)).parent / f"features-{config.node.id}"
    root = config.serving.model_repository
    base = Path(root).resolve().parent if root is not None else Path.cwd() / ".edgeloop"
    return base / f"features-{config.node.id}"


def outbox_path(config):
    """``[coordinator] outbox_path``, else ``outbox-<node id>.sqlite`` beside the model repository."""
    from pathlib import Path

    if config.coordinator.outbox_path is not None:
        return config.coordinator.outbox_path
    root = config.serving.model_repository
    base = Path(root).resolve().parent if root is not None else Path.cwd() / ".edgeloop"
    return base / f"outbox-{config.node.id}.sqlite"


__all__ = ["EdgeNode", "data_path_enabled", "feature_snapshot_dir", "outbox_path"]


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
