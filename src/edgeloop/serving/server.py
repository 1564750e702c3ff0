"""The gRPC server the serving layer runs in: a sync ``grpc.server`` on a thread pool.

Synchronous handlers on a ThreadPoolExecutor are the lowest-latency way to serve unary requests
from Python grpcio; the dynamic batcher runs inside those handler threads.

Message size limits: ``serving.max_receive_message_bytes`` becomes ``grpc.max_receive_message_length``
(a larger request fails with RESOURCE_EXHAUSTED before any handler runs) and
``serving.max_send_message_bytes`` becomes ``grpc.max_send_message_length``.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor


def grpc_server_options(serving_config) -> list[tuple[str, int]]:
    """Channel arguments for the server, from the serving config."""
    return [
        ("grpc.max_receive_message_length", int(serving_config.max_receive_message_bytes)),
        ("grpc.max_send_message_length", int(serving_config.max_send_message_bytes)),
        ("grpc.so_reuseport", 0),  # a port in use is an error, never silently shared
    ]


def create_grpc_server(serving_config):
    """A not-yet-started ``grpc.Server`` with ``serving.grpc_workers`` handler threads."""
    import grpc

    workers = max(1, int(serving_config.grpc_workers))
    executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="edgeloop-grpc")
    # Calls waiting for a handler thread are bounded too: past the limit gRPC answers RESOURCE_EXHAUSTED
    # at once instead of holding the call until its deadline.
    return grpc.server(executor, options=grpc_server_options(serving_config),
                       maximum_concurrent_rpcs=max_concurrent_rpcs(workers))


def max_concurrent_rpcs(workers: int) -> int:
    """RPCs a node holds at once (running or waiting for a thread): 16 per handler thread, at least 128."""
    return max(128, 16 * workers)


__all__ = ["create_grpc_server", "grpc_server_options", "max_concurrent_rpcs"]
