"""Entity-state hand-over: the new owner of a routing key asks its previous owner for the key's state.

Placement is weighted rendezvous hashing, so when a node joins and wins a key, the key's previous
owner is the node now *second* on the key's preference list; when the owner leaves, the new owner
was second and the previous one is gone.  So the new owner asks the first other live node on the
key's preference list, once (lazily, on the key's first request here), within a small time budget
(``DEFAULT_BUDGET_S``); with no answer, no such node, or no state there, the entity starts cold
(documented defaults, flagged and counted by the feature state).  The answering node removes what
it sends (ownership moved), so one entity's history never continues on two nodes.

Eager hand-over (``EagerPull``): after each membership epoch bump the node also pulls, in the
background, every entity it now owns from each live peer serving the model (``EntityState`` with no
keys and ``for_node`` = this node; the peer picks the keys with its own placement, at most
``MAX_KEYS_PER_CALL`` per call, ``MAX_PULL_CALLS`` calls per peer and pass), so the first request
after a move is served warm.  Peers learn of an epoch change at different moments, so each change
is followed by a few passes (``PULL_DELAYS_S``); the lazy path above stays as the fallback.

Dead previous owner: a member that is known but not alive (down, or not yet checked) and that ranks
before this node on the key's preference list over *every* known member was the key's owner when it
died; ``fetch`` raises ``PreviousOwnerGone`` without calling anyone (so does a previous owner that does
not answer, as ``ConnectionError``), and the node rebuilds the entity from the coordinator's log
(``node.rebuild``) when it has a coordinator, else starts it cold.

The bytes are ``FeatureState.export_entity``'s; the mesh only carries them (``serving`` checks them
with ``import_entity``).  The Peer service answers with ``export`` (a callable the node provides).
"""
from __future__ import annotations

import logging
import threading
from typing import Callable, Iterable

import grpc

from edgeloop.mesh.channels import ChannelPool
from edgeloop.mesh.membership import Membership
from edgeloop.mesh.placement import Placement, Snapshot
from edgeloop.protocol import mesh_pb2

log = logging.getLogger(__name__)

#: how long a request waits for its entity's state from the previous owner before serving it cold
DEFAULT_BUDGET_S = 0.05
#: keys per EntityState call (each answer is at most one record per key)
MAX_KEYS_PER_CALL = 256
#: eager pull: calls per (peer, model) and pass (so at most 64 x 256 entities move per pass)
MAX_PULL_CALLS = 64
#: eager pull: passes after an epoch bump, in seconds after it (peers see the change at different times)
PULL_DELAYS_S = (0.0, 0.3, 1.0, 3.0)
#: eager pull: time budget of one EntityState call
PULL_TIMEOUT_S = 2.0


class PreviousOwnerGone(ConnectionError):
    """The key's previous owner is a known member that is not alive: its state is only in the coordinator's log."""


class EntityHandover:
    """``fetch(model, digest, key)``: the key's state from its previous owner, or None (start cold)."""

    def __init__(self, self_id: str, membership: Membership, pool: ChannelPool,
                 budget_s: float = DEFAULT_BUDGET_S) -> None:
        self.self_id = self_id
        self.membership = membership
        self.pool = pool
        self.budget_s = budget_s
        self._everyone: tuple[int, Placement] | None = None  # (epoch, placement over all known members)

    def dead_previous_owner(self, key: str, model: str) -> str | None:
        """The known, not-alive member that ranks first on ``key``'s preference over all known members
        serving ``model``, when it ranks before this node (it owned the key until it died); else None."""
        epoch = self.membership.epoch
        cached = self._everyone
        if cached is None or cached[0] != epoch:
            entries = [m.placement_entry() for m in self.membership.members()]
            cached = self._everyone = (epoch, Placement(Snapshot.build(entries, epoch)))
        for node_id in cached[1].preference(key, model):
            if node_id == self.self_id:
                return None
            member = self.membership.get(node_id)
            if member is not None and not member.alive:
                return node_id
        return None

    def previous_owner(self, key: str, model: str) -> str | None:
        """The node that held ``key`` before this one took it: the next live node on its preference list.

        None when this node is not the key's owner (a spilled or fallback request must not take the
        owner's state) or no other node serves the model.
        """
        if self.self_id not in self.membership:
            return None
        preference = self.membership.placement().preference(key, model)
        if not preference or preference[0] != self.self_id:
            return None
        for node_id in preference[1:]:
            member = self.membership.get(node_id)
            if member is not None and member.alive:
                return node_id
        return None

    def fetch(self, model: str, digest: str, key: str) -> bytes | None:
        if self.self_id in self.membership:
            placement = self.membership.placement()
            preference = placement.preference(key, model)
            if preference and preference[0] == self.self_id:
                dead = self.dead_previous_owner(key, model)
                if dead is not None:
                    raise PreviousOwnerGone(f"previous owner {dead!r} of this key is not alive")
        node_id = self.previous_owner(key, model)
        if node_id is None:
            return None
        member = self.membership.get(node_id)
        if member is None:
            return None
        request = mesh_pb2.EntityStateRequest(model=model, feature_digest=digest, keys=[key], remove=True)
        try:
            reply = self.pool.get(member.address).peer.EntityState(request, timeout=self.budget_s)
        except grpc.RpcError as exc:
            raise ConnectionError(f"EntityState from {node_id!r}: {exc.code().name}: {exc.details()}") from None
        for got_key, data in zip(reply.keys, reply.entities):
            if got_key == key:
                return bytes(data)
        return None


def keys_owned_by(membership: Membership, keys: Iterable[str], model: str, node_id: str, limit: int) -> list[str]:
    """Up to ``limit`` of ``keys`` that ``node_id`` owns for ``model`` under ``membership``'s placement."""
    placement = membership.placement()
    out = []
    for key in keys:
        if placement.owner(key, model) == node_id:
            out.append(key)
            if len(out) >= limit:
                break
    return out


class EagerPull:
    """After each epoch bump, pull the entities this node now owns from every live peer (a daemon thread).

    ``held()`` lists this node's ``(model, digest)`` feature states; ``adopt(model, digest, key, data)``
    imports one entity (and counts it).  Bounded: ``MAX_PULL_CALLS`` calls of ``MAX_KEYS_PER_CALL``
    keys per peer, model and pass; a pass per entry of ``PULL_DELAYS_S`` after the latest bump.
    """

    def __init__(self, handover: EntityHandover, held: Callable[[], list[tuple[str, str]]],
                 adopt: Callable[[str, str, str, bytes], None]) -> None:
        self.handover = handover
        self.held = held
        self.adopt = adopt
        self.pulled = 0  # entities received (for tests and logs)
        self.failed = 0  # calls that failed (peer gone or slow): those keys fall back to the lazy path
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="edgeloop-eager-handover")

    def start(self) -> "EagerPull":
        self.handover.membership.add_listener(lambda _epoch: self._wake.set())
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait()
            if self._stop.is_set():
                return
            self._wake.clear()
            waited = 0.0
            for delay in PULL_DELAYS_S:
                if self._stop.wait(delay - waited) or self._wake.is_set():
                    break  # stopping, or a newer bump restarts the passes
                waited = delay
                try:
                    self.pull_once()
                except Exception:  # never let the thread die: the lazy path still serves
                    log.exception("eager hand-over pass failed")

    def pull_once(self) -> int:
        """One pass: every held state, every live peer serving its model; returns the entities adopted."""
        handover = self.handover
        membership = handover.membership
        if handover.self_id not in membership:
            return 0
        got = 0
        for model, digest in self.held():
            for member in membership.members():
                if member.node_id == handover.self_id or not member.alive or model not in member.models:
                    continue
                for _ in range(MAX_PULL_CALLS):
                    request = mesh_pb2.EntityStateRequest(model=model, feature_digest=digest, remove=True,
                                                          for_node=handover.self_id)
                    try:
                        reply = handover.pool.get(member.address).peer.EntityState(request, timeout=PULL_TIMEOUT_S)
                    except grpc.RpcError as exc:
                        self.failed += 1
                        log.debug("eager hand-over from %s (model %s) failed: %s", member.node_id, model,
                                  exc.code().name)
                        break
                    for key, data in zip(reply.keys, reply.entities):
                        self.adopt(model, digest, key, bytes(data))
                        got += 1
                    if len(reply.keys) < MAX_KEYS_PER_CALL:
                        break
        self.pulled += got
        return got


def answer_entity_state(request, export: Callable[[str, str, Iterable[str], bool], list[tuple[str, bytes]]] | None,
                        owned_by: Callable[[str, str, str, int], list[str]] | None = None):
    """The EntityStateResponse for ``request``, or ``(code, message)`` when it must be refused.

    With ``for_node`` and no keys, the keys are those held here that ``for_node`` owns now
    (``owned_by(model, digest, node, limit)``, the answering node's placement).
    """
    if export is None:
        return grpc.StatusCode.UNIMPLEMENTED, "Peer.EntityState: this node keeps no feature state"
    if len(request.keys) > MAX_KEYS_PER_CALL:
        return (grpc.StatusCode.INVALID_ARGUMENT,
                f"keys: {len(request.keys)} keys; expected at most {MAX_KEYS_PER_CALL} per call")
    if not request.model or len(request.model) > 128:
        return grpc.StatusCode.INVALID_ARGUMENT, f"model: {request.model[:200]!r}; expected a model name"
    digest = request.feature_digest
    if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        return (grpc.StatusCode.INVALID_ARGUMENT,
                f"feature_digest: {digest[:200]!r}; expected the definition's sha256 as 64 lowercase hex digits")
    for i, key in enumerate(request.keys):
        if not 0 < len(key.encode("utf-8")) <= 256:
            return (grpc.StatusCode.INVALID_ARGUMENT,
                    f"keys[{i}]: {key[:200]!r}; expected a routing key of 1..256 bytes of UTF-8")
    keys = list(request.keys)
    if request.for_node:
        if keys:
            return (grpc.StatusCode.INVALID_ARGUMENT,
                    f"for_node: {request.for_node[:200]!r} with {len(keys)} keys; expected either keys or for_node")
        if len(request.for_node) > 128:
            return (grpc.StatusCode.INVALID_ARGUMENT,
                    f"for_node: {request.for_node[:200]!r}; expected a node id of at most 128 characters")
        if owned_by is None:
            return grpc.StatusCode.UNIMPLEMENTED, "Peer.EntityState for_node: this node has no placement"
        keys = owned_by(request.model, digest, request.for_node, MAX_KEYS_PER_CALL)
    found = export(request.model, digest, keys, request.remove)
    return mesh_pb2.EntityStateResponse(keys=[k for k, _ in found], entities=[d for _, d in found])


__all__ = ["DEFAULT_BUDGET_S", "EagerPull", "EntityHandover", "MAX_KEYS_PER_CALL", "PreviousOwnerGone",
           "answer_entity_state",
           "keys_owned_by"]
