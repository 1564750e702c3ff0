"""Turning refusals into gRPC statuses: one decorator for unary/client-streaming handlers, one for streams."""
from __future__ import annotations

import logging
import sqlite3
import time

import grpc

from edgeloop.protocol.errors import ProtocolError
from edgeloop.store import StoreError

log = logging.getLogger("edgeloop.coordinator")


def now_ms() -> int:
    return int(time.time() * 1000)


def guard(method: str):
    """Map ProtocolError (and a closed store) to the right gRPC status; count refusals."""
    def wrap(fn):
        def handler(self, request, context):
            try:
                return fn(self, request, context)
            except ProtocolError as exc:
                self.metrics.rejected.labels(method, exc.code.name).inc()
                context.abort(exc.code, exc.message)
            except StoreError as exc:
                code = grpc.StatusCode.UNAVAILABLE if self.stopping else grpc.StatusCode.FAILED_PRECONDITION
                self.metrics.rejected.labels(method, code.name).inc()
                context.abort(code, str(exc))
            except (sqlite3.Error, OSError, RuntimeError) as exc:  # storage failed: say so, never die
                code = grpc.StatusCode.UNAVAILABLE if self.stopping else grpc.StatusCode.INTERNAL
                if not self.stopping:
                    log.exception("%s failed in storage", method)
                self.metrics.rejected.labels(method, code.name).inc()
                context.abort(code, f"{method}: storage failed ({type(exc).__name__}: {str(exc)[:200]}); "
                                    f"nothing of the failed batch or call was acknowledged")
        handler.__name__ = fn.__name__
        return handler
    return wrap


def stream_guard(method: str):
    """The same for server-streaming handlers (generators)."""
    def wrap(fn):
        def handler(self, request, context):
            try:
                yield from fn(self, request, context)
            except ProtocolError as exc:
                self.metrics.rejected.labels(method, exc.code.name).inc()
                context.abort(exc.code, exc.message)
        handler.__name__ = fn.__name__
        return handler
    return wrap
