"""Entity-state hand-over: the new owner of a routing key asks its previous owner for the key's state.

Placement is weighted rendezvous hashing, so when a node joins and wins a key, the key's previous
owner is the node now *second* on the key's preference list; when the owner leaves, the new owner
was second and the previous one is gone.  So the new owner asks the first other live node on the
key's preference list, once (lazily, on the key's first request here), within a small time budget
(``DEFAULT_BUDGET_S``); with no answer, no such node, or no state there, the entity starts cold
(documented defaults, flagged and counted by the feature state).  The answering node removes what
it sends (ownership moved), so one entity's history never continues on two nodes.

The bytes are ``FeatureState.export_entity``'s; the mesh only carries them (``serving`` checks them
with ``import_entity``).  The Peer service answers with ``export`` (a callable the node provides).
"""
from __future__ import annotations

import logging
from typing import Callable, Iterable

import grpc

from edgeloop.mesh.channels import ChannelPool
from edgeloop.mesh.membership import Membership
from edgeloop.protocol import mesh_pb2

log = logging.getLogger(__name__)

#: how long a request waits for its entity's state from the previous owner before serving it cold
DEFAULT_BUDGET_S = 0.05
#: keys per EntityState call (each answer is at most one record per key)
MAX_KEYS_PER_CALL = 256


class EntityHandover:
    """``fetch(model, digest, key)``: the key's state from its previous owner, or None (start cold)."""

    def __init__(self, self_id: str, membership: Membership, pool: ChannelPool,
                 budget_s: float = DEFAULT_BUDGET_S) -> None:
        self.self_id = self_id
        self.membership = membership
        self.pool = pool
        self.budget_s = budget_s

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


def answer_entity_state(request, export: Callable[[str, str, Iterable[str], bool], list[tuple[str, bytes]]] | None):
    """The EntityStateResponse for ``request``, or ``(code, message)`` when it must be refused."""
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
    found = export(request.model, digest, list(request.keys), request.remove)
    return mesh_pb2.EntityStateResponse(keys=[k for k, _ in found], entities=[d for _, d in found])


__all__ = ["DEFAULT_BUDGET_S", "EntityHandover", "MAX_KEYS_PER_CALL", "answer_entity_state"]
