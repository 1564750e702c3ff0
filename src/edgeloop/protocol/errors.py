"""gRPC status helpers: one exception type that carries a status code and a clear message.

Code deep inside the server (codecs, the model manager, the mesh router) raises ``ProtocolError``
instead of touching a gRPC context; the servicer maps it with ``context.abort``.  That keeps every
layer testable without a server and makes the status code a decision made where the fault is known.

Messages quote what the client sent through ``quote``/``quote_shape``, which cut a value to
``QUOTE_LIMIT`` characters and note its full length: a status message travels in a gRPC trailer, and
an echoed multi-megabyte name would turn the intended status into the client's RESOURCE_EXHAUSTED
(metadata too large).  ``ProtocolError`` itself caps a whole message at ``MESSAGE_LIMIT`` as a backstop.
"""
from __future__ import annotations

import grpc

#: Characters of one client-sent value (name, datatype, shape ...) quoted in a message.
QUOTE_LIMIT = 200
#: Characters of a whole status message; gRPC clients refuse trailers of more than 8 KiB by default.
MESSAGE_LIMIT = 2000
#: Dimensions of a shape quoted before the rest is summarised.
_SHAPE_ITEMS = 16


def quote(value, limit: int = QUOTE_LIMIT) -> str:
    """``repr(value)``, cut to ``limit`` characters with a note of the value's full length when longer."""
    if isinstance(value, (str, bytes)):
        text = repr(value[:limit + 1])  # never the repr of a multi-megabyte value
        if len(value) <= limit and len(text) <= limit + 2:
            return text
        unit = "characters" if isinstance(value, str) else "bytes"
        return f"{text[:limit]}... ({len(value)} {unit} in all)"
    text = repr(value)
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text)} characters in all)"


def quote_shape(shape) -> str:
    """A shape as ``[d0, d1, ...]``, its first dimensions only when it has many (with the count)."""
    dims = list(shape[:_SHAPE_ITEMS + 1]) if hasattr(shape, "__getitem__") else list(shape)
    if len(dims) <= _SHAPE_ITEMS:
        return str(dims)
    return f"[{', '.join(map(str, dims[:_SHAPE_ITEMS]))}, ...] ({len(shape)} dimensions in all)"


class ProtocolError(Exception):
    """A request the server refuses, with the gRPC status code that says why."""

    __slots__ = ("code", "message")

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        if len(message) > MESSAGE_LIMIT:
            message = f"{message[:MESSAGE_LIMIT]}... (message cut from {len(message)} characters)"
        super().__init__(message)
        self.code = code
        self.message = message

    def __repr__(self) -> str:
        return f"ProtocolError({self.code.name}, {self.message!r})"


def invalid_argument(message: str) -> ProtocolError:
    """The request itself is malformed (field, value received, what was expected)."""
    return ProtocolError(grpc.StatusCode.INVALID_ARGUMENT, message)


def unauthenticated(message: str) -> ProtocolError:
    """The call needs the fleet token (a forwarded request, a peer call) and lacks it."""
    return ProtocolError(grpc.StatusCode.UNAUTHENTICATED, message)


def not_found(message: str) -> ProtocolError:
    """The named model or version does not exist."""
    return ProtocolError(grpc.StatusCode.NOT_FOUND, message)


def unavailable(message: str) -> ProtocolError:
    """The model exists but cannot serve now (not loaded, failed, draining)."""
    return ProtocolError(grpc.StatusCode.UNAVAILABLE, message)


def failed_precondition(message: str) -> ProtocolError:
    """The request is valid but the server state forbids it (e.g. manifest mismatch)."""
    return ProtocolError(grpc.StatusCode.FAILED_PRECONDITION, message)


def resource_exhausted(message: str) -> ProtocolError:
    """The request is valid but needs more than the server can give it now (memory, streams)."""
    return ProtocolError(grpc.StatusCode.RESOURCE_EXHAUSTED, message)


def internal(message: str) -> ProtocolError:
    """The server failed while doing something it should have been able to do."""
    return ProtocolError(grpc.StatusCode.INTERNAL, message)


__all__ = [
    "MESSAGE_LIMIT",
    "ProtocolError",
    "QUOTE_LIMIT",
    "failed_precondition",
    "internal",
    "invalid_argument",
    "not_found",
    "quote",
    "quote_shape",
    "resource_exhausted",
    "unavailable",
]
