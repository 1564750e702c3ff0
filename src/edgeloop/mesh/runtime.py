"""``Mesh``: the mesh side of one edge node, composed from discovery, liveness and routing.

Use (node.py does this): ``mesh = Mesh(config.node, config.mesh, models)``;
``mesh.attach(server, servicer)`` before the gRPC server starts (adds the Peer service and
sets ``servicer.router``); ``mesh.start(grpc_port, metrics_port)`` once the ports are bound;
``mesh.stop()`` first on shutdown (goodbye: peers drop this node at once).
"""
from __future__ import annotations

import logging
import threading
from typing import Mapping, Protocol

from edgeloop.mesh.channels import ChannelPool
from edgeloop.mesh.decision_log import DecisionLog
from edgeloop.mesh.discovery import Announcement, Discovery
from edgeloop.mesh.liveness import LivenessMonitor
from edgeloop.mesh.membership import UP, Membership
from edgeloop.mesh.peer_service import PeerServicer, node_identity
from edgeloop.mesh.router import Router
from edgeloop.protocol import mesh_pb2_grpc

log = logging.getLogger(__name__)

SELF = "self"


class ModelSource(Protocol):
    """What the mesh needs from the node's model manager."""

    def ready_models(self) -> Mapping[str, list[int]]: ...
    def add_listener(self, fn) -> None: ...
    def queue_depth(self, model: str | None = None) -> int: ...


class Mesh:
    """Membership, discovery, liveness, the Peer service and the router of one node."""

    def __init__(self, node, mesh, models: ModelSource, token: str | None = None):
        """``token``: the fleet token every peer call carries and every peer must prove (None: unauthenticated)."""
        self.node = node  # config.NodeConfig
        self.config = mesh  # config.MeshConfig
        self.models = models
        self.grpc_port = node.grpc_port
        self.metrics_port = node.metrics_port
        self.membership = Membership(self_id=node.id, capacity_factor=mesh.capacity_factor)
        self.pool = ChannelPool(token)
        self.decision_log = DecisionLog(mesh.decision_log) if mesh.decision_log else None
        self.router = Router(node.id, self.membership, self.pool, local_queue_depth=models.queue_depth,
                             spill_queue_depth=mesh.spill_queue_depth, decision_log=self.decision_log)
        self.peer_servicer = PeerServicer(self._identity, models.ready_models, models.queue_depth,
                                          lambda: self.membership.epoch, self.membership.members, token=token)
        self.discovery: Discovery | None = None
        self.liveness = LivenessMonitor(self.membership, self.pool, mesh.heartbeat_interval_ms, mesh.down_after_ms,
                                        mesh_name=mesh.name, token=token)
        self._started = False
        self._models_lock = threading.Lock()

    def _identity(self):
        return node_identity(self.node.id, self.node.host, self.grpc_port, self.metrics_port,
                             self.node.weight, self.node.zone, self.config.name)

    def attach(self, server, servicer=None) -> None:
        """Add the Peer service to ``server`` (before it starts) and route ``servicer``'s requests."""
        mesh_pb2_grpc.add_PeerServicer_to_server(self.peer_servicer, server)
        if servicer is not None:
            servicer.router = self.router

    def start(self, grpc_port: int | None = None, metrics_port: int | None = None) -> None:
        """Join: announce over zeroconf, browse, watch static peers, start heartbeats."""
        if grpc_port:
            self.grpc_port = grpc_port
        if metrics_port:
            self.metrics_port = metrics_port
        self._refresh_models()
        self.models.add_listener(lambda *_: self._refresh_models())
        announcement = Announcement(self.node.id, self.node.host, self.grpc_port, self.metrics_port,
                                    self.node.weight, self.node.zone, self.models.ready_models(), self.config.name)
        if self.config.zeroconf_interfaces:
            discovery = Discovery(self.membership, self.config.service_type,
                                  self.config.zeroconf_interfaces, announcement, self.config.name)
            try:
                discovery.start()
                self.discovery = discovery
            except (OSError, ValueError) as exc:  # serve on (static peers still work) but say so
                log.error("mesh: zeroconf discovery on %s failed, continuing without it: %s",
                          ",".join(self.config.zeroconf_interfaces), exc)
        for address in self.config.static_peers:
            self.liveness.add_seed(address, "static")
        self.liveness.start()
        self._started = True
        log.info("mesh: node %s joined mesh %r (service %s on %s, %d static peers)", self.node.id,
                 self.config.name, self.config.service_type, ",".join(self.config.zeroconf_interfaces),
                 len(self.config.static_peers))

    def _refresh_models(self) -> None:
        with self._models_lock:
            models = {m: list(vs) for m, vs in self.models.ready_models().items()}
            self.router.set_local_models(models)
            self.membership.upsert(self.node.id, SELF, host=self.node.host, grpc_port=self.grpc_port,
                                   metrics_port=self.metrics_port, weight=self.node.weight, zone=self.node.zone,
                                   models=models, state=UP)
            if self.discovery is not None:
                try:
                    self.discovery.update_models(models)
                except Exception:  # a slow mDNS update must not fail a model load
                    log.exception("mesh: could not update the TXT record")

    def stop(self) -> None:
        """Leave: goodbye over mDNS first (peers drop us at once), then stop heartbeats."""
        if not self._started:
            return
        self._started = False
        self.membership.remove_source(self.node.id, SELF)  # the router serves alone from here on
        if self.discovery is not None:
            try:
                self.discovery.stop()
            except Exception:
                log.exception("mesh: zeroconf shutdown failed")
        self.liveness.stop()
        self.pool.close()
        if self.decision_log is not None:
            self.decision_log.close()
