"""``MeshClient``: send each request straight to the node that owns it (no extra hop).

The client keeps the same membership view the nodes keep — zeroconf browsing on the given
interfaces and/or seed addresses resolved with ``Peer.Describe``, liveness from gRPC
health — and places requests with the same deterministic placement, so a keyed request
reaches its owner directly.  On UNAVAILABLE it retries once on the next node of the key's
preference list (inference is idempotent), as the nodes do when they forward.

    with MeshClient(interfaces=["127.0.0.1"]) as client:
        client.wait_ready(nodes=3, model="mlp")
        outputs = client.infer("mlp", {"INPUT0": x}, routing_key="user-42")
"""
from __future__ import annotations

import threading
import time
from typing import Iterable, Mapping, Sequence

import numpy as np

from edgeloop.mesh.channels import ChannelPool
from edgeloop.mesh.membership import UNKNOWN, Membership
from edgeloop.mesh.routing import ROUTING_KEY, NodeGone, route_of, send_with_failover, spill_order
from edgeloop.protocol.errors import ProtocolError, not_found, unavailable


class MeshClient:
    """A placement-aware Open Inference Protocol client for an edgeloop mesh."""

    def __init__(
        self,
        seeds: Sequence[str] = (),
        interfaces: Sequence[str] | None = ("127.0.0.1",),
        service_type: str = "_edgeloop._tcp.local.",
        heartbeat_interval_ms: int = 250,
        down_after_ms: int = 1000,
        spill_queue_depth: int | None = None,
        timeout_s: float = 30.0,
        start: bool = True,
        mesh_name: str = "default",
        token: str | None = None,
    ):
        """``mesh_name``: the mesh to see; nodes announcing another name are never shown or used.
        ``token``: the mesh's fleet token (``edgeloop.protocol.auth.read_token_file``), needed to see an
        authenticated mesh; nodes that cannot prove they hold it are never used."""
        from edgeloop.config.mesh import MESH_NAME_EXPECTATION, is_mesh_name
        from edgeloop.mesh.liveness import LivenessMonitor

        if not is_mesh_name(mesh_name):
            raise ValueError(f"mesh_name: got {str(mesh_name)[:200]!r}, expected {MESH_NAME_EXPECTATION}")

        for seed in seeds:
            host, sep, port = seed.rpartition(":")
            if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(f"seeds: got {seed!r}, expected 'host:port'")
        self.seeds = list(seeds)
        self.interfaces = list(interfaces or ())
        self.service_type = service_type
        self.mesh_name = mesh_name
        self.spill_queue_depth = spill_queue_depth
        self.timeout_s = timeout_s
        self.membership = Membership(self_id=None)
        self.pool = ChannelPool(token)
        self.liveness = LivenessMonitor(self.membership, self.pool, heartbeat_interval_ms, down_after_ms,
                                        learn_from_peers=True, mesh_name=mesh_name, token=token)
        self.discovery = None
        self.retries = 0  # requests that needed the fallback node
        self._lock = threading.Lock()
        self._started = False
        if start:
            self.start()

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> "MeshClient":
        if self._started:
            return self
        if self.interfaces:
            from edgeloop.mesh.discovery import Discovery

            self.discovery = Discovery(self.membership, self.service_type, self.interfaces, announcement=None,
                                       mesh_name=self.mesh_name)
            self.discovery.start()
        for seed in self.seeds:
            self.liveness.add_seed(seed, "seed")
        self.liveness.start()
        self._started = True
        return self

    def close(self) -> None:
        if not self._started:
            return
        self._started = False
        if self.discovery is not None:
            self.discovery.stop()
        self.liveness.stop()
        self.pool.close()

    def __enter__(self) -> "MeshClient":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ the view
    def view(self):
        """Current members (id, address, state, models, weight, queue depth), sorted by id."""
        return self.membership.members()

    @property
    def epoch(self) -> int:
        return self.membership.epoch

    def wait_ready(self, nodes: int = 1, model: str | None = None, timeout: float = 10.0) -> bool:
        """Wait until ``nodes`` members are up (serving ``model``, when given)."""
        def ready(m: Membership) -> bool:
            up = [x for x in m.members() if x.alive and (model is None or model in x.models)]
            return len(up) >= nodes

        return self.membership.wait_until(ready, timeout)

    def wait_settled(self, timeout: float, quiet_s: float = 0.5) -> bool:
        """Wait until every member's state is known and the view has not changed for ``quiet_s``.

        Peers announce and answer health checks at slightly different moments; a view read at the
        first ready node would miss the others or show them ``unknown``.  False when ``timeout``
        passes first (a quiet window cut short by ``timeout`` still counts).
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            epoch = self.membership.epoch
            quiet_until = min(deadline, time.monotonic() + quiet_s)
            changed = self.membership.wait_until(lambda m: m.epoch != epoch, max(0.0, quiet_until - time.monotonic()))
            if not changed and all(m.state != UNKNOWN for m in self.membership.members()):
                return True
        return False

    def owner(self, key: str | bytes, model: str, version: int | None = None) -> str | None:
        """The node that owns ``key`` for ``model`` in the current view."""
        return self.membership.placement().owner(key, model, version)

    # ------------------------------------------------------------------ inference
    def infer(
        self,
        model: str,
        inputs: Mapping[str, np.ndarray],
        routing_key: str | None = None,
        version: int | None = None,
        outputs: Iterable[str] | None = None,
        request_id: str = "",
    ) -> dict[str, np.ndarray]:
        """Run ``model`` on ``inputs`` at the owner of ``routing_key``; the outputs as arrays."""
        from edgeloop.protocol.codec import build_infer_request, infer_response_to_numpy

        request = build_infer_request(model, inputs, model_version="" if version is None else str(version),
                                      request_id=request_id, outputs=outputs)
        if routing_key is not None:
            request.parameters[ROUTING_KEY].string_param = routing_key  # our own message: no copy needed
        return infer_response_to_numpy(self.infer_request(request))

    def infer_request(self, request, routing_key: str | None = None):
        """Send a ``ModelInferRequest`` to its owner (one retry on the next node); the raw response.

        Routed exactly as a node would route it (``mesh.routing``): a version that is not canonical
        ("+1", "01", " 1") is refused here with INVALID_ARGUMENT, as every node refuses it.
        """
        route = route_of(request, routing_key)
        if routing_key is not None:
            routed = type(request)()  # the caller's message is left as it was
            routed.CopyFrom(request)
            routed.parameters[ROUTING_KEY].string_param = routing_key
            request = routed
        placement = self.membership.placement()
        order = placement.preference(route.key, route.model, route.version)
        if not order:
            raise not_found(f"model {route.model!r}: no node in the client's view serves it "
                            f"(epoch {placement.snapshot.epoch}, {len(placement.snapshot.nodes)} nodes up)")
        if self.spill_queue_depth is not None:
            order = spill_order(order, self._depth, self.spill_queue_depth)

        def send(node_id: str):
            if node_id != order[0]:
                with self._lock:
                    self.retries += 1
            member = self.membership.get(node_id)
            if member is None:
                raise NodeGone(f"node {node_id!r} left the client's view")
            return self.pool.get(member.address).inference.ModelInfer(request, timeout=self.timeout_s)

        return send_with_failover(order[0], lambda: order, send,
                                  f"model {route.model!r} key {route.key[:200]!r}")[1]

    def _depth(self, node_id: str) -> int:
        member = self.membership.get(node_id)
        return member.queue_depth if member is not None else 0

    # ------------------------------------------------------------------ late labels
    def label(self, model: str, value: float, request_id: str | None = None, routing_key: str | None = None,
              timestamp_ms: int | None = None, token: str | None = None) -> int:
        """Send ground truth for an earlier request to the node that served it (where the view can tell).

        By ``request_id`` (the id sent, or the one the edge returned), or by ``routing_key`` +
        ``timestamp_ms`` (the latest sample of that key served at or before then).  The label goes
        to the node whose id prefixes a generated request id, else to the owner of the key the
        request was placed by (``routing_key``, else ``request_id``), one retry on the next node.
        Returns the labels the node made durable (1).  ``token``: the fleet token, when the client was not
        built with it (a client's own ``token`` is carried on every call already).
        """
        import grpc

        from edgeloop.protocol import mesh_pb2, mesh_pb2_grpc
        from edgeloop.protocol.auth import token_metadata

        if not request_id and not (routing_key and timestamp_ms):
            raise ValueError("label: expected request_id, or routing_key and timestamp_ms")
        message = mesh_pb2.Label(sample_id=request_id or "", model=model, routing_key=routing_key or "",
                                 timestamp_ms=int(timestamp_ms or 0), value=float(value))
        key = routing_key if routing_key is not None else request_id
        placement = self.membership.placement()
        order = list(placement.preference(key, model, None))
        served_by = self._generated_by(request_id) if request_id else None
        if served_by is not None:
            order = [served_by, *(n for n in order if n != served_by)]
        if not order:
            raise not_found(f"model {model!r}: no node in the client's view serves it; cannot deliver the label")
        last_error = None
        for node_id in order[:2]:
            member = self.membership.get(node_id)
            if member is None:
                continue
            stub = mesh_pb2_grpc.FeedbackStub(self.pool.get(member.address).channel)
            try:
                ack = stub.Label(mesh_pb2.LabelRequest(labels=[message]), timeout=self.timeout_s,
                                 metadata=token_metadata(token if token != self.pool.token else None))
                return ack.accepted
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.UNAVAILABLE:
                    raise ProtocolError(exc.code(), exc.details() or "") from None
                last_error = exc
        raise unavailable(f"label for model {model!r}: {order[:2]} unavailable"
                          + (f" ({last_error.details()})" if last_error is not None else ""))

    def _generated_by(self, request_id: str) -> str | None:
        """The member whose id prefixes ``request_id`` (ids an edge generates start with its node id)."""
        best = None
        for member in self.membership.members():
            node_id = member.node_id
            if member.alive and request_id.startswith(f"{node_id}-") and (best is None or len(node_id) > len(best)):
                best = node_id
        return best
