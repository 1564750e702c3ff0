"""Fleet authentication on the wire: the token in call metadata, and TLS/mTLS credentials.

Every edge↔coordinator and edge↔edge call carries the fleet token in ``x-edgeloop-token`` when one
is configured; servers compare it in constant time and answer ``UNAUTHENTICATED`` otherwise.
Inference calls from ordinary clients (tritonclient, ``edgeloop perf``) carry no token: the server
interceptor guards only the services it is told to, and the servicer checks forwarded requests
itself with ``token_matches``.  TLS is optional and uses PEM files named in ``[auth]``.
"""
from __future__ import annotations

import hmac
import logging
from pathlib import Path
from typing import Callable, Iterable

import grpc

log = logging.getLogger(__name__)

TOKEN_METADATA_KEY = "x-edgeloop-token"
#: A token is a secret of printable ASCII; bounded so a token file cannot be a memory bomb.
MAX_TOKEN_BYTES = 4096
MIN_TOKEN_CHARS = 16


class AuthError(ValueError):
    """A token file or TLS file that cannot be used, with the path and the reason."""


def read_token_file(path: str | Path) -> str:
    """The token in ``path`` (surrounding whitespace dropped); AuthError naming the file when unusable."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            raw = fh.read(MAX_TOKEN_BYTES + 1)
    except OSError as exc:
        raise AuthError(f"token file {str(path)!r}: cannot be read ({exc.strerror})") from None
    if len(raw) > MAX_TOKEN_BYTES:
        raise AuthError(f"token file {str(path)!r}: longer than {MAX_TOKEN_BYTES} bytes, expected one short secret")
    try:
        token = raw.decode("ascii").strip()
    except UnicodeDecodeError:
        raise AuthError(f"token file {str(path)!r}: not ASCII, expected printable ASCII characters") from None
    if len(token) < MIN_TOKEN_CHARS or not token.isprintable() or any(c.isspace() for c in token):
        raise AuthError(f"token file {str(path)!r}: expected at least {MIN_TOKEN_CHARS} printable characters "
                        f"without spaces (got {len(token)} characters)")
    return token


def token_matches(metadata: Iterable[tuple[str, object]] | None, expected: str | None) -> bool:
    """True when no token is expected, or ``metadata`` carries exactly ``expected`` (constant-time compare)."""
    if expected is None:
        return True
    for key, value in metadata or ():
        if key == TOKEN_METADATA_KEY:
            given = value.encode() if isinstance(value, str) else bytes(value)
            return hmac.compare_digest(given, expected.encode())
    return False


#: Bounds of the Describe challenge (``DescribeRequest.nonce``).
NONCE_MIN_BYTES, NONCE_MAX_BYTES = 16, 64


def membership_proof(token: str, nonce: bytes, node_id: str) -> bytes:
    """What a node answers to a Describe challenge: HMAC-SHA256 over the nonce and its own id.

    Binding the node id stops a member from replaying another member's answer as its own.
    """
    return hmac.new(token.encode(), b"edgeloop-describe\0" + nonce + node_id.encode(), "sha256").digest()


def proof_matches(token: str, nonce: bytes, node_id: str, proof: bytes) -> bool:
    """True when ``proof`` is ``membership_proof(token, nonce, node_id)`` (constant-time compare)."""
    return hmac.compare_digest(membership_proof(token, nonce, node_id), bytes(proof))


def token_metadata(token: str | None) -> tuple[tuple[str, str], ...]:
    """Call metadata that carries ``token`` (empty when there is none)."""
    return () if token is None else ((TOKEN_METADATA_KEY, token),)


def _abort_unauthenticated(method: str):
    def deny(request_or_iterator, context):
        context.abort(grpc.StatusCode.UNAUTHENTICATED,
                      f"call to {method[:200]!r} needs the fleet token in metadata {TOKEN_METADATA_KEY!r} "
                      f"(missing or wrong)")
    return deny


class TokenInterceptor(grpc.ServerInterceptor):
    """Refuses calls to the guarded services without the right token; ``on_reject(method)`` counts them.

    ``services`` are full service names (``edgeloop.v1.Coordinator``); None guards every service
    except health and reflection, which stay open so liveness probes and tools work.
    """

    OPEN_SERVICES = ("grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection",
                     "grpc.reflection.v1.ServerReflection")

    def __init__(self, token: str, services: Iterable[str] | None = None,
                 on_reject: Callable[[str], None] | None = None) -> None:
        self._token = token
        self._services = None if services is None else frozenset(services)
        self._on_reject = on_reject

    def _guarded(self, method: str) -> bool:
        service = method.lstrip("/").split("/", 1)[0]
        if self._services is None:
            return service not in self.OPEN_SERVICES
        return service in self._services

    def intercept_service(self, continuation, handler_call_details):
        method = handler_call_details.method or ""
        if not self._guarded(method) or token_matches(handler_call_details.invocation_metadata, self._token):
            return continuation(handler_call_details)
        if self._on_reject is not None:
            self._on_reject(method)
        handler = continuation(handler_call_details)
        deny = _abort_unauthenticated(method)
        if handler is None:
            return grpc.unary_unary_rpc_method_handler(deny)
        if handler.request_streaming and handler.response_streaming:
            return grpc.stream_stream_rpc_method_handler(lambda it, ctx: iter(deny(it, ctx) or ()),
                                                        handler.request_deserializer, handler.response_serializer)
        if handler.request_streaming:
            return grpc.stream_unary_rpc_method_handler(deny, handler.request_deserializer,
                                                       handler.response_serializer)
        if handler.response_streaming:
            return grpc.unary_stream_rpc_method_handler(lambda req, ctx: iter(deny(req, ctx) or ()),
                                                       handler.request_deserializer, handler.response_serializer)
        return grpc.unary_unary_rpc_method_handler(deny, handler.request_deserializer, handler.response_serializer)


class _TokenClientInterceptor(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor,
                              grpc.StreamUnaryClientInterceptor, grpc.StreamStreamClientInterceptor):
    """Adds the token to every call made on a channel."""

    def __init__(self, token: str) -> None:
        self._pair = (TOKEN_METADATA_KEY, token)

    def _details(self, details):
        metadata = [*(details.metadata or ()), self._pair]
        return _CallDetails(details.method, details.timeout, metadata, details.credentials,
                            getattr(details, "wait_for_ready", None), getattr(details, "compression", None))

    def intercept_unary_unary(self, continuation, details, request):
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation, details, request):
        return continuation(self._details(details), request)

    def intercept_stream_unary(self, continuation, details, request_iterator):
        return continuation(self._details(details), request_iterator)

    def intercept_stream_stream(self, continuation, details, request_iterator):
        return continuation(self._details(details), request_iterator)


class _CallDetails(grpc.ClientCallDetails):
    def __init__(self, method, timeout, metadata, credentials, wait_for_ready, compression):
        self.method = method
        self.timeout = timeout
        self.metadata = metadata
        self.credentials = credentials
        self.wait_for_ready = wait_for_ready
        self.compression = compression


def _read_pem(path: Path | None, what: str) -> bytes | None:
    if path is None:
        return None
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise AuthError(f"{what} {str(path)!r}: cannot be read ({exc.strerror})") from None


def server_credentials(auth) -> grpc.ServerCredentials | None:
    """TLS server credentials from an ``AuthConfig`` (None: plaintext); mTLS when ``tls_client_auth``."""
    if auth.tls_cert is None:
        return None
    cert, key = _read_pem(auth.tls_cert, "auth.tls_cert"), _read_pem(auth.tls_key, "auth.tls_key")
    ca = _read_pem(auth.tls_ca, "auth.tls_ca")
    return grpc.ssl_server_credentials([(key, cert)], root_certificates=ca,
                                       require_client_auth=bool(auth.tls_client_auth))


def channel_credentials(auth) -> grpc.ChannelCredentials | None:
    """TLS channel credentials from an ``AuthConfig`` (None: plaintext); presents its cert for mTLS."""
    if not auth.tls:
        return None
    ca = _read_pem(auth.tls_ca, "auth.tls_ca")
    cert = _read_pem(auth.tls_cert, "auth.tls_cert") if auth.tls_client_auth or auth.tls_cert else None
    key = _read_pem(auth.tls_key, "auth.tls_key") if cert is not None else None
    return grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)


def open_channel(address: str, auth=None, token: str | None = None, options=(), server_name: str | None = None):
    """A channel to ``address`` that carries ``token`` on every call, over TLS when ``auth`` says so.

    ``server_name`` overrides the name checked against the server certificate (the example
    certificates are issued for ``localhost`` and ``127.0.0.1``).
    """
    creds = channel_credentials(auth) if auth is not None else None
    opts = list(options)
    if server_name:
        opts.append(("grpc.ssl_target_name_override", server_name))
    channel = grpc.secure_channel(address, creds, options=opts) if creds else grpc.insecure_channel(address, options=opts)
    if token is not None:
        channel = grpc.intercept_channel(channel, _TokenClientInterceptor(token))
    return channel


#: the shortest ping interval a server accepts from a client on a connection without data (ms)
MIN_PING_INTERVAL_MS = 1000


def keepalive_options(interval_ms: int) -> list[tuple[str, int]]:
    """Client channel options: an HTTP/2 ping every ``interval_ms`` (even on an idle connection), the
    connection given up when one is not answered within 10 s (or the interval, when shorter), so a
    peer that vanished without closing its sockets (frozen, unplugged) ends the calls waiting on it."""
    interval = max(int(interval_ms), MIN_PING_INTERVAL_MS)
    return [("grpc.keepalive_time_ms", interval), ("grpc.keepalive_timeout_ms", min(10_000, interval)),
            ("grpc.keepalive_permit_without_calls", 1), ("grpc.http2.max_pings_without_data", 0),
            ("grpc.http2.ping_timeout_ms", min(10_000, interval))]


#: server options that accept the pings of ``keepalive_options`` (gRPC's default would answer a ping
#: more often than every 5 minutes without data with GOAWAY "too_many_pings")
KEEPALIVE_SERVER_OPTIONS = [("grpc.keepalive_permit_without_calls", 1),
                            ("grpc.http2.min_ping_interval_without_data_ms", MIN_PING_INTERVAL_MS)]


def process_token(auth, who: str) -> str | None:
    """The fleet token of a process, read once at start; logs once when the fleet is unauthenticated."""
    if auth is None or auth.token_file is None:
        log.warning("%s: no [auth] token_file configured: this fleet/mesh is unauthenticated "
                    "(any process on the network can join and call it)", who)
        return None
    return read_token_file(auth.token_file)


__all__ = [
    "AuthError",
    "KEEPALIVE_SERVER_OPTIONS",
    "keepalive_options",
    "MAX_TOKEN_BYTES",
    "TOKEN_METADATA_KEY",
    "TokenInterceptor",
    "channel_credentials",
    "membership_proof",
    "proof_matches",
    "open_channel",
    "process_token",
    "read_token_file",
    "server_credentials",
    "token_matches",
    "token_metadata",
]
