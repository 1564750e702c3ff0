"""Request routing: serve here, or forward (at most one hop) to the node that owns the key.

The inference servicer calls ``maybe_forward(request, context)`` first thing; None means
"serve it here", anything else is the owner's response, returned unchanged.  Where a request
goes (key, version, spill, retry) is decided by ``mesh.routing``, the helper ``MeshClient`` uses too.

* A request with a routing key (request parameter ``routing_key``, a string) goes to the
  key's owner under the current placement; without one it is served here, unless this
  node does not serve the model — then it goes to the first node in the preference list of
  the request id (or the model name).  No node serves it: NOT_FOUND naming the model.
* A forwarded request carries ``edgeloop_forwarded = true`` and is never forwarded again.
* Spill: when ``spill_queue_depth`` is set, the first node on the key's preference list
  whose queue is not over it takes the request (the owner if all are), deterministically.
* A forward that fails with UNAVAILABLE is retried once on the next node (inference is
  idempotent); if that next node is this one, it is served here.
* Forward cap: a forward holds one of this node's gRPC handler threads while it waits on the
  peer, and the peer's threads may all be waiting on us (both nodes forwarding to each other).
  So at most ``max_forwards`` forwards are in flight at once (``forward_limit``: a quarter of the
  handler threads), and the rest of the threads always serve — local requests and the peer's
  forwards, which are never forwarded again — so the cycle cannot close.  Past the cap a request
  is served here when this node has the model (counted in ``local_fallbacks``), else refused at
  once with RESOURCE_EXHAUSTED.  The cap only bites under overload (a forward normally takes about
  a millisecond): then a forward, which costs this node and its peer over twice the CPU of serving
  the request here (``benchmarks/mesh_forwarding.py`` prints it), is the first work to shed.
"""
from __future__ import annotations

import logging
import threading
from typing import Callable, Mapping

import grpc

from edgeloop.mesh.channels import ChannelPool
from edgeloop.mesh.decision_log import DecisionLog
from edgeloop.mesh.membership import Membership
from edgeloop.mesh.routing import ROUTING_KEY, NodeGone, route_of, routing_key_of, send_with_failover, spill_order
from edgeloop.protocol.auth import TOKEN_METADATA_KEY, token_matches
from edgeloop.protocol.errors import ProtocolError, not_found, unauthenticated

log = logging.getLogger(__name__)

FORWARDED = "edgeloop_forwarded"
DEFAULT_FORWARD_TIMEOUT_S = 30.0
#: forwards in flight at once when the node's worker count is not known (``forward_limit`` of the default 8)
DEFAULT_MAX_FORWARDS = 2
#: decision-log reason of a request served here because the forward cap was reached
FORWARD_CAP = "forward-cap"


def forward_limit(grpc_workers: int) -> int:
    """Forwards a node with ``grpc_workers`` handler threads keeps in flight: a quarter of them (at least 1).

    Open streams may hold up to half the threads (``servicer.stream_limit``); with forwards capped at
    a quarter, a quarter still always serves, so two nodes forwarding to each other never wait on
    each other with every thread.  Never all of them: one worker gives 0 (that node never forwards
    what it can serve itself).
    """
    workers = int(grpc_workers)
    return max(0, min(workers - 1, max(1, workers // 4)))


class Router:
    """``maybe_forward`` for one node, over a shared membership view."""

    def __init__(
        self,
        self_id: str,
        membership: Membership,
        pool: ChannelPool,
        local_queue_depth: Callable[[], int] = lambda: 0,
        spill_queue_depth: int | None = None,
        decision_log: DecisionLog | None = None,
        max_forwards: int = DEFAULT_MAX_FORWARDS,
    ):
        self.self_id = self_id
        self.membership = membership
        self.pool = pool
        self.local_queue_depth = local_queue_depth
        self.spill_queue_depth = spill_queue_depth
        self.decision_log = decision_log
        self._local_models: dict[str, frozenset[int]] = {}
        self._counts = threading.Lock()
        self.forwarded = 0  # requests this node sent on (for status and tests)
        self.local_fallbacks = 0  # requests served here because the forward cap was reached
        self.set_max_forwards(max_forwards)

    def set_max_forwards(self, limit: int) -> None:
        """Cap forwards in flight at ``limit`` (see ``forward_limit``); call before serving starts."""
        if limit < 0:
            raise ValueError(f"max_forwards={limit}; expected >= 0")
        self.max_forwards = int(limit)
        self._forward_slots = threading.BoundedSemaphore(limit) if limit > 0 else None

    def set_local_models(self, models: Mapping[str, list[int]]) -> None:
        self._local_models = {m: frozenset(vs) for m, vs in models.items() if vs}

    def _serves_locally(self, model: str, version: int | None) -> bool:
        versions = self._local_models.get(model)
        return bool(versions) and (version is None or version in versions)

    def _depth(self, node_id: str) -> int:
        if node_id == self.self_id:
            return self.local_queue_depth()
        member = self.membership.get(node_id)
        return member.queue_depth if member is not None else 0

    # ------------------------------------------------------------------ the hook
    def maybe_forward(self, request, context):
        params = request.parameters
        if FORWARDED in params and params[FORWARDED].bool_param:
            token = self.pool.token
            if token is not None and not token_matches(context.invocation_metadata() if context else (), token):
                raise unauthenticated(f"a forwarded request (parameters[{FORWARDED!r}] = true) needs the fleet "
                                      f"token in metadata {TOKEN_METADATA_KEY!r} (missing or wrong)")
            return None
        if self.self_id not in self.membership:
            return None  # the mesh has not started yet (or has stopped): serve alone
        route = route_of(request)
        model, version, route_key = route.model, route.version, route.key
        local = self._serves_locally(model, version)
        if not route.keyed and local:
            return None
        placement = self.membership.placement()
        owner = placement.owner(route_key, model, version)
        if owner is None:
            if local:
                return None
            wanted = f"model {model!r}" + (f" version {version}" if version is not None else "")
            raise not_found(f"{wanted}: no node in the mesh serves it (node {self.self_id!r}, "
                            f"membership epoch {placement.snapshot.epoch}, {len(placement.snapshot.nodes)} nodes up)")
        order = None
        chosen, reason = owner, None
        if self.spill_queue_depth is not None and self._depth(owner) > self.spill_queue_depth:
            order = spill_order(placement.preference(route_key, model, version), self._depth, self.spill_queue_depth)
            chosen, reason = order[0], ("spill" if order[0] != owner else None)
        if chosen == self.self_id:
            self._log(placement, route_key, model, version, owner, chosen, reason)
            return None
        slots = self._forward_slots
        if slots is None or not slots.acquire(blocking=False):
            return self._over_cap(placement, route, owner, local)
        try:
            served_by, response = send_with_failover(
                chosen, lambda: order or placement.preference(route_key, model, version),
                lambda node_id: self._forward(node_id, request, context),
                f"model {model!r} key {route_key[:200]!r}")
        finally:
            slots.release()
        self._log(placement, route_key, model, version, owner, served_by,
                  reason if served_by == chosen else "unavailable")
        return response

    def _over_cap(self, placement, route, owner: str, local: bool):
        """Every forward slot is taken: serve here if this node can, else refuse at once."""
        if local:
            with self._counts:
                self.local_fallbacks += 1
            log.debug("forward cap %d reached: serving model %r key %r here instead of on %r",
                      self.max_forwards, route.model, route.key, owner)
            self._log(placement, route.key, route.model, route.version, owner, self.self_id, FORWARD_CAP)
            return None
        raise ProtocolError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                            f"model {route.model!r}: node {self.self_id!r} does not serve it and already has "
                            f"{self.max_forwards} forwards in flight (its limit, a quarter of serving.grpc_workers); "
                            f"expected to be retried, or sent to the owner {owner!r} directly")

    def _forward(self, node_id: str, request, context):
        """The peer's answer, or ``None`` when ``node_id`` is this node (a fallback that lands here)."""
        if node_id == self.self_id:
            return None
        member = self.membership.get(node_id)
        if member is None:
            raise NodeGone(f"node {node_id!r} left the mesh")
        request.parameters[FORWARDED].bool_param = True
        remaining = context.time_remaining() if context is not None else None
        timeout = DEFAULT_FORWARD_TIMEOUT_S if remaining is None else min(remaining, DEFAULT_FORWARD_TIMEOUT_S)
        with self._counts:
            self.forwarded += 1
        return self.pool.get(member.address).inference.ModelInfer(request, timeout=timeout)

    def _log(self, placement, key, model, version, owner, served_by, reason) -> None:
        if self.decision_log is not None:
            self.decision_log.decision(placement, key, model, version, owner, served_by=served_by, reason=reason)


__all__ = ["DEFAULT_MAX_FORWARDS", "FORWARDED", "FORWARD_CAP", "ROUTING_KEY", "Router", "forward_limit",
           "routing_key_of", "spill_order"]
