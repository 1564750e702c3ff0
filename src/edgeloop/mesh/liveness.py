"""Liveness: every heartbeat, ask each peer's gRPC health service whether it is serving.

mDNS caches a dead peer's records for minutes, so it cannot say who is alive.  Instead each
tick sends ``grpc.health.v1.Health/Check`` (short deadline) and ``Peer/Describe`` (models,
queue depth) to every member.  Three states, told apart because people act on each differently:

* **up**: health ``""`` answers SERVING.  An up node with no model ready yet (an empty repository
  waiting for the coordinator) is a live member; placement still only picks nodes listing the model.
* **draining**: health answers, but NOT_SERVING (the node is shutting down); at once, no routing.
* **down**: no health answer for ``down_after_ms``.

Seed addresses whose identity is not known yet are resolved with Describe.  Every Describe answer
(seed, member, or members a peer reports) must carry this mesh's name; others are ignored.
"""
from __future__ import annotations

import logging
import os
import threading
import time

import grpc

from edgeloop.mesh.channels import ChannelPool
from edgeloop.mesh.membership import (DEFAULT_MESH, DOWN, DRAINING, PEER_SOURCE_PREFIX, STATES, UNKNOWN, UP,
                                     Membership, describe_fields)
from edgeloop.protocol import mesh_pb2
from edgeloop.protocol.auth import NONCE_MIN_BYTES, proof_matches

log = logging.getLogger(__name__)


class LivenessMonitor:
    """Background heartbeats that keep ``membership`` states and queue depths current."""

    def __init__(
        self,
        membership: Membership,
        pool: ChannelPool,
        heartbeat_interval_ms: int = 250,
        down_after_ms: int = 1000,
        learn_from_peers: bool = False,
        mesh_name: str = DEFAULT_MESH,
        token: str | None = None,
    ):
        """``learn_from_peers``: also watch the members each peer reports in Describe (what a client
        given only seed addresses needs to see the whole mesh); their first state is the peer's.
        ``mesh_name``: a node whose Describe names another mesh is never added (or is dropped).
        ``token``: the fleet token; every Describe carries a fresh challenge, and a node whose answer
        does not prove that it holds the same token is never added (or is dropped), nor marked up."""
        from grpc_health.v1 import health_pb2

        self._health_pb2 = health_pb2
        self.membership = membership
        self.pool = pool
        self.interval = heartbeat_interval_ms / 1000.0
        self.down_after = down_after_ms / 1000.0
        self.timeout = min(1.0, max(0.1, self.interval))
        self.learn_from_peers = learn_from_peers
        self.mesh_name = mesh_name
        self.token = token
        self._verified: set[str] = set()  # node ids whose last Describe proved the token (token set only)
        self._unproven_logged: set[str] = set()
        self._foreign_seeds: set[str] = set()  # seed addresses answering for another mesh, logged once
        self._seeds: dict[str, str] = {}  # address -> source, until their identity is known
        self._seed_ids: dict[str, str] = {}  # address -> node id once known
        self._last_ok: dict[str, float] = {}  # node id -> last health answer (any status)
        self.remote_epochs: dict[str, int] = {}  # each peer's own membership epoch (from Describe)
        self._in_flight: set[tuple[str, str]] = set()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        membership.add_listener(lambda _epoch: self._wake.set())

    def add_seed(self, address: str, source: str = "static") -> None:
        """Watch ``address`` (``host:port``) and add it to the view once Describe answers."""
        with self._lock:
            self._seeds[address] = source
        self._wake.set()

    def seeds_pending(self) -> int:
        """Seed addresses that have not answered Describe yet (a foreign-mesh seed stays pending)."""
        with self._lock:
            return sum(1 for a in self._seeds if a not in self._seed_ids)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="edgeloop-liveness", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._tick()
            except Exception:  # a bad tick must not end liveness for the process
                log.exception("liveness tick failed")
            self._wake.wait(self.interval)
            self._wake.clear()

    # ------------------------------------------------------------------ one tick
    def _tick(self) -> None:
        now = time.monotonic()
        with self._lock:
            seeds = [(a, s) for a, s in self._seeds.items() if a not in self._seed_ids]
        for address, source in seeds:
            request = self._describe_request()
            self._send(("seed", address), self.pool.get(address).peer.Describe, request,
                       lambda f, a=address, s=source, r=request: self._on_seed(f, a, s, r.nonce))
        members = self.membership.members()
        present = {m.node_id for m in members}
        for gone in [n for n in list(self._last_ok) if n not in present]:  # list(): callbacks add keys
            del self._last_ok[gone]  # a member that left and comes back starts a fresh timer
            self._verified.discard(gone)
        for member in members:
            if member.node_id == self.membership.self_id:
                continue
            node_id = member.node_id
            self._last_ok.setdefault(node_id, now)
            stubs = self.pool.get(member.address)
            self._send(("check", node_id), stubs.health.Check, self._health_pb2.HealthCheckRequest(),
                       lambda f, n=node_id: self._on_check(f, n))
            request = self._describe_request()
            self._send(("describe", node_id), stubs.peer.Describe, request,
                       lambda f, n=node_id, r=request: self._on_describe(f, n, r.nonce))
            if member.state != DOWN and now - self._last_ok[node_id] > self.down_after:
                if self.membership.set_state(node_id, DOWN):
                    log.info("peer %s is down (no health answer for %.0f ms)", node_id, self.down_after * 1000)

    def _describe_request(self):
        """A Describe request; with a token it carries a fresh random challenge."""
        if self.token is None:
            return mesh_pb2.DescribeRequest()
        return mesh_pb2.DescribeRequest(nonce=os.urandom(NONCE_MIN_BYTES))

    def _proven(self, desc, nonce: bytes) -> bool:
        """True without a token; with one, when the answer proves that the node holds it (logged once if not)."""
        if self.token is None:
            return True
        node_id = desc.node.node_id
        if proof_matches(self.token, nonce, node_id, desc.proof):
            self._unproven_logged.discard(node_id)
            return True
        if node_id not in self._unproven_logged:
            self._unproven_logged.add(node_id)
            log.warning("ignoring node %s: its Describe does not prove the fleet token (it is not a member of "
                        "this authenticated mesh)", node_id[:200])
        return False

    def _set_state(self, node_id: str, state: str) -> None:
        """Set a member's state and log the change as people need it (which of the states, and why)."""
        if not self.membership.set_state(node_id, state):
            return
        member = self.membership.get(node_id)
        if state == UP:
            if member is not None and member.ready:
                log.info("peer %s is up", node_id)
            else:
                log.info("peer %s is up, no model ready yet (a live member waiting for models)", node_id)
        elif state == DRAINING:
            log.info("peer %s is draining (health NOT_SERVING): no new requests go to it", node_id)

    def _send(self, tag: tuple[str, str], method, request, on_done) -> None:
        """Fire one RPC unless the previous one with this tag is still pending."""
        with self._lock:
            if tag in self._in_flight:
                return
            self._in_flight.add(tag)
        future = method.future(request, timeout=self.timeout)

        def done(f, tag=tag):
            with self._lock:
                self._in_flight.discard(tag)
            if not self._stop.is_set():
                on_done(f)

        future.add_done_callback(done)

    def _on_check(self, future, node_id: str) -> None:
        try:
            status = future.result().status
        except grpc.RpcError:
            return  # counted as silence: down once down_after has passed
        if self.membership.get(node_id) is None:
            return  # left while the check was in flight
        if self.token is not None and node_id not in self._verified:
            return  # not proven to hold the token: never up (counted as silence)
        self._last_ok[node_id] = time.monotonic()  # it answers: not down, whatever it says
        self._set_state(node_id, UP if status == self._health_pb2.HealthCheckResponse.SERVING else DRAINING)

    def _on_describe(self, future, node_id: str, nonce: bytes = b"") -> None:
        try:
            desc = future.result()
        except grpc.RpcError:
            return
        member = self.membership.get(node_id)
        if desc.node.node_id != node_id or member is None:
            return  # another process now answers at that address, or the member left
        if desc.node.mesh_name != self.mesh_name:
            log.warning("dropping peer %s: its Describe says mesh %r, this is mesh %r", node_id,
                        desc.node.mesh_name[:200], self.mesh_name)
            for source in member.sources:
                self.membership.remove_source(node_id, source)
            return
        if not self._proven(desc, nonce):
            self._verified.discard(node_id)
            for source in member.sources:
                self.membership.remove_source(node_id, source)
            return
        self._verified.add(node_id)
        self.remote_epochs[node_id] = int(desc.membership_epoch)
        fields = describe_fields(desc)
        fields.pop("host")  # keep the address we reached it on
        fields.pop("grpc_port")
        updated = self.membership.upsert(node_id, next(iter(member.sources)), **fields)
        self.membership.set_queue_depth(node_id, desc.queue_depth)
        if updated.alive and updated.ready != member.ready:
            log.info("peer %s %s", node_id, "is ready (has models)" if updated.ready else "has no model ready")
        self._learn(node_id, desc)

    def _on_seed(self, future, address: str, source: str, nonce: bytes = b"") -> None:
        try:
            desc = future.result()
        except grpc.RpcError:
            return  # retried next tick
        node_id = desc.node.node_id
        if not node_id or node_id == self.membership.self_id:
            with self._lock:
                self._seed_ids[address] = node_id or "?"
            return
        if desc.node.mesh_name != self.mesh_name:  # retried: the process there may be reconfigured
            if address not in self._foreign_seeds:
                self._foreign_seeds.add(address)
                log.warning("ignoring %s (node %s): it is in mesh %r, this is mesh %r", address, node_id[:200],
                            desc.node.mesh_name[:200], self.mesh_name)
            return
        self._foreign_seeds.discard(address)
        if not self._proven(desc, nonce):
            return  # retried next tick
        self._verified.add(node_id)
        host, _, port = address.rpartition(":")
        fields = describe_fields(desc)
        fields["host"], fields["grpc_port"] = host.strip("[]"), int(port)
        with self._lock:
            self._seed_ids[address] = node_id
        self._last_ok[node_id] = time.monotonic()
        self.remote_epochs[node_id] = int(desc.membership_epoch)
        self.membership.upsert(node_id, source, **fields)
        self.membership.set_queue_depth(node_id, desc.queue_depth)
        self._learn(node_id, desc)  # its state comes from its first health answer, like any member

    def _learn(self, peer_id: str, desc) -> None:
        """Add the members ``peer_id`` knows first-hand; forget those it no longer reports."""
        if not self.learn_from_peers:
            return
        source = PEER_SOURCE_PREFIX + peer_id
        reported = set()
        for state in desc.members:
            node_id = state.node.node_id
            if not node_id or node_id in (peer_id, self.membership.self_id) or state.node.mesh_name != self.mesh_name:
                continue
            reported.add(node_id)
            known = self.membership.get(node_id)
            if known is None:
                self.membership.upsert(node_id, source, **describe_fields(state))
                if state.state in STATES and state.state != UNKNOWN:
                    self.membership.set_state(node_id, state.state)
            elif source not in known.sources:
                self.membership.upsert(node_id, source)
        for member in self.membership.members():
            if source in member.sources and member.node_id not in reported:
                self.membership.remove_source(member.node_id, source)
