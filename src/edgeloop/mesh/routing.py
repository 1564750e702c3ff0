"""Where a request goes, shared by the node's router and ``MeshClient`` so the two never disagree.

* ``route_of(request)``: the model, the version (the one strict parser, ``protocol.versions``), and
  the key placement hashes: the ``routing_key`` parameter, else the request id, else the model name.
* ``spill_order``: the preference list rotated past nodes whose queue is over the spill limit.
* ``send_with_failover``: one call to the chosen node; on UNAVAILABLE one retry on the next node of
  the key's preference list (inference is idempotent).
"""
from __future__ import annotations

from typing import Callable, NamedTuple, Sequence, TypeVar

import grpc

from edgeloop.protocol.errors import ProtocolError, invalid_argument, unavailable
from edgeloop.protocol.versions import VERSION_EXPECTATION, parse_version

ROUTING_KEY = "routing_key"

T = TypeVar("T")


class Route(NamedTuple):
    """What placement needs to know about one request."""

    model: str
    version: int | None  # None: any version
    key: str  # the routing key, else the request id, else the model name
    keyed: bool  # True when the request carried a routing key


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
    """The requested version (None: any); INVALID_ARGUMENT, as the serving node says, when it is not canonical."""
    text = request.model_version
    if not text:
        return None
    version = parse_version(text)
    if version is None:
        raise invalid_argument(f"model_version {text[:200]!r} for model {request.model_name[:200]!r}; expected "
                               f"{VERSION_EXPECTATION}, or empty for the latest ready version")
    return version


def route_of(request, routing_key: str | None = None) -> Route:
    """The route of ``request`` (``routing_key`` given here wins over the request's parameter)."""
    key = routing_key if routing_key is not None else routing_key_of(request)
    model = request.model_name
    version = version_of(request)
    if key is not None:
        return Route(model, version, key, True)
    return Route(model, version, request.id or model, False)


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


def send_with_failover(first: str, order: Callable[[], Sequence[str]], send: Callable[[str], T],
                       what: str) -> tuple[str, T]:
    """``(node, send(node))`` for ``first``, or — when it answers UNAVAILABLE — for the next node of ``order()``.

    ``order()`` (the key's preference list, computed only on failure) gives the fallback: its first
    node other than ``first``.  Any other error, or a failed retry, is a ``ProtocolError`` with the
    peer's status code; ``what`` (e.g. "model 'mlp' key 'k1'") starts its message.
    """
    try:
        return first, send(first)
    except grpc.RpcError as exc:
        if exc.code() != grpc.StatusCode.UNAVAILABLE:
            raise ProtocolError(exc.code(), exc.details() or f"{what}: node {first!r} failed") from None
        first_error = exc.details()
    fallback = next((n for n in order() if n != first), None)
    if fallback is None:
        raise unavailable(f"{what}: node {first!r} is unavailable ({first_error}) and no other node serves it")
    try:
        return fallback, send(fallback)
    except grpc.RpcError as exc:
        raise ProtocolError(exc.code(), f"{what}: node {fallback!r}, tried after {first!r} was unavailable "
                                        f"({first_error}), failed too: {exc.details()}") from None


class NodeGone(grpc.RpcError):
    """A target vanished between placement and the call: treated like UNAVAILABLE."""

    def __init__(self, details: str):
        super().__init__(details)
        self._details = details

    def code(self):
        return grpc.StatusCode.UNAVAILABLE

    def details(self):
        return self._details


__all__ = ["NodeGone", "ROUTING_KEY", "Route", "route_of", "routing_key_of", "send_with_failover", "spill_order",
           "version_of"]
