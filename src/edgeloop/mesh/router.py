"""Request routing: serve here, or forward (at most one hop) to the node that owns the key.

The inference servicer calls ``maybe_forward(request, context)`` first thing; None means
"serve it here", anything else is the owner's response, returned unchanged.

* A request with a routing key (request parameter ``routing_key``, a string) goes to the
  key's owner under the current placement; without one it is served here, unless this
  node does not serve the model — then it goes to the first node in the preference list of
  the request id (or the model name).  No node serves it: NOT_FOUND naming the model.
* A forwarded request carries ``edgeloop_forwarded = true`` and is never forwarded again.
* Spill: when ``spill_queue_depth`` is set, the first node on the key's preference list
  whose queue is not over it takes the request (the owner if all are), deterministically.
* A forward that fails with UNAVAILABLE is retried once on the next node (inference is
  idempotent); if that next node is this one, it is served here.
"""
from __future__ import annotations

import logging
from typing import Callable, Mapping

import grpc

from edgeloop.mesh.channels import ChannelPool
from edgeloop.mesh.decision_log import DecisionLog
from edgeloop.mesh.membership import Membership
from edgeloop.protocol.errors import ProtocolError, invalid_argument, not_found, unavailable

log = logging.getLogger(__name__)

ROUTING_KEY = "routing_key"
FORWARDED = "edgeloop_forwarded"
DEFAULT_FORWARD_TIMEOUT_S = 30.0


def routing_key_of(request) -> str | None:
    """The request's ``routing_key`` parameter; INVALID_ARGUMENT when it is not a string."""
    params = request.parameters
    if ROUTING_KEY not in params:
        return None
    param = params[ROUTING_KEY]
    if param.WhichOneof("parameter_choice") != "string_param":
        raise invalid_argument(
            f"parameters[{ROUTING_KEY!r}]: got {param.WhichOneof('parameter_choice')}, expected string_param")
    return param.string_param


def version_of(request) -> int | None:
    """The requested model version as an int (None: any); None too when it is not an integer."""
    text = request.model_version
    if not text:
        return None
    try:
        return int(text)
    except ValueError:
        return None  # served here, where the servicer reports the bad version


def spill_order(preference: list[str], depth_of: Callable[[str], int], limit: int | None) -> list[str]:
    """Preference list rotated so the first node whose queue is within ``limit`` leads.

    Nodes before it stay at the end (in order) so a failure can still fall back to them.
    """
    if limit is None:
        return preference
    for i, node in enumerate(preference):
        if depth_of(node) <= limit:
            return preference[i:] + preference[:i]
    return preference


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
    ):
        self.self_id = self_id
        self.membership = membership
        self.pool = pool
        self.local_queue_depth = local_queue_depth
        self.spill_queue_depth = spill_queue_depth
        self.decision_log = decision_log
        self._local_models: dict[str, frozenset[int]] = {}
        self.forwarded = 0  # requests this node sent on (for status and tests)

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
            return None
        if self.self_id not in self.membership:
            return None  # the mesh has not started yet (or has stopped): serve alone
        key = routing_key_of(request)
        model = request.model_name
        version = version_of(request)
        local = self._serves_locally(model, version)
        if key is None and local:
            return None
        if request.model_version and version is None:
            return None  # not an integer version: the servicer says so
        route_key = key if key is not None else (request.id or model)
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
        try:
            response = self._forward(chosen, request, context)
            self._log(placement, route_key, model, version, owner, chosen, reason)
            return response
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.UNAVAILABLE:
                raise ProtocolError(exc.code(), exc.details() or f"forward to {chosen!r} failed") from None
            first_error = exc
        if order is None:
            order = placement.preference(route_key, model, version)
        rest = [n for n in order if n != chosen]
        if not rest:
            raise unavailable(f"model {model!r}: node {chosen!r} is unavailable ({first_error.details()}) "
                              f"and no other node serves it")
        fallback = rest[0]
        self._log(placement, route_key, model, version, owner, fallback, "unavailable")
        if fallback == self.self_id:
            return None
        try:
            return self._forward(fallback, request, context)
        except grpc.RpcError as exc:
            raise ProtocolError(exc.code(), f"forward to {fallback!r} after {chosen!r} was unavailable: "
                                f"{exc.details()}") from None

    def _forward(self, node_id: str, request, context):
        member = self.membership.get(node_id)
        if member is None:
            raise _Unavailable(f"node {node_id!r} left the mesh")
        request.parameters[FORWARDED].bool_param = True
        remaining = context.time_remaining() if context is not None else None
        timeout = DEFAULT_FORWARD_TIMEOUT_S if remaining is None else min(remaining, DEFAULT_FORWARD_TIMEOUT_S)
        self.forwarded += 1
        return self.pool.get(member.address).inference.ModelInfer(request, timeout=timeout)

    def _log(self, placement, key, model, version, owner, served_by, reason) -> None:
        if self.decision_log is not None:
            self.decision_log.decision(placement, key, model, version, owner, served_by=served_by, reason=reason)


class _Unavailable(grpc.RpcError):
    """A forward target vanished between placement and the call: treated like UNAVAILABLE."""

    def __init__(self, details: str):
        super().__init__(details)
        self._details = details

    def code(self):
        return grpc.StatusCode.UNAVAILABLE

    def details(self):
        return self._details
