"""gRPC status helpers: one exception type that carries a status code and a clear message.

Code deep inside the server (codecs, the model manager, the mesh router) raises ``ProtocolError``
instead of touching a gRPC context; the servicer maps it with ``context.abort``.  That keeps every
layer testable without a server and makes the status code a decision made where the fault is known.
"""
from __future__ import annotations

import grpc


class ProtocolError(Exception):
    """A request the server refuses, with the gRPC status code that says why."""

    __slots__ = ("code", "message")

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def __repr__(self) -> str:
        return f"ProtocolError({self.code.name}, {self.message!r})"


def invalid_argument(message: str) -> ProtocolError:
    """The request itself is malformed (field, value received, what was expected)."""
    return ProtocolError(grpc.StatusCode.INVALID_ARGUMENT, message)


def not_found(message: str) -> ProtocolError:
    """The named model or version does not exist."""
    return ProtocolError(grpc.StatusCode.NOT_FOUND, message)


def unavailable(message: str) -> ProtocolError:
    """The model exists but cannot serve now (not loaded, failed, draining)."""
    return ProtocolError(grpc.StatusCode.UNAVAILABLE, message)


def failed_precondition(message: str) -> ProtocolError:
    """The request is valid but the server state forbids it (e.g. manifest mismatch)."""
    return ProtocolError(grpc.StatusCode.FAILED_PRECONDITION, message)


def internal(message: str) -> ProtocolError:
    """The server failed while doing something it should have been able to do."""
    return ProtocolError(grpc.StatusCode.INTERNAL, message)


__all__ = [
    "ProtocolError",
    "failed_precondition",
    "internal",
    "invalid_argument",
    "not_found",
    "unavailable",
]
