"""One cached gRPC channel (and stubs) per peer address.

Reconnect backoff is kept short: gRPC's default (1 s growing to 120 s) would keep a peer
that restarted looking dead for minutes, and liveness must see it back within seconds.
"""
from __future__ import annotations

import threading

from edgeloop.protocol import inference_pb2_grpc, mesh_pb2_grpc
from edgeloop.protocol.auth import open_channel

_MAX_MESSAGE = 64 * 2**20

CHANNEL_OPTIONS = (
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 500),
    ("grpc.max_receive_message_length", _MAX_MESSAGE),
    ("grpc.max_send_message_length", _MAX_MESSAGE),
    ("grpc.enable_retries", 0),
    ("grpc.use_local_subchannel_pool", 1),
)


class PeerStubs:
    """The stubs one process uses to talk to one peer."""

    __slots__ = ("address", "channel", "inference", "peer", "health")

    def __init__(self, address: str, token: str | None = None):
        from grpc_health.v1 import health_pb2_grpc

        self.address = address
        self.channel = open_channel(address, token=token, options=CHANNEL_OPTIONS)  # carries the fleet token
        self.inference = inference_pb2_grpc.GRPCInferenceServiceStub(self.channel)
        self.peer = mesh_pb2_grpc.PeerStub(self.channel)
        self.health = health_pb2_grpc.HealthStub(self.channel)


class ChannelPool:
    """Address -> PeerStubs, created on first use and closed together; every call carries ``token``."""

    def __init__(self, token: str | None = None):
        self.token = token
        self._stubs: dict[str, PeerStubs] = {}
        self._lock = threading.Lock()

    def get(self, address: str) -> PeerStubs:
        stubs = self._stubs.get(address)
        if stubs is None:
            with self._lock:
                stubs = self._stubs.get(address)
                if stubs is None:
                    stubs = PeerStubs(address, self.token)
                    self._stubs[address] = stubs
        return stubs

    def close(self) -> None:
        with self._lock:
            stubs, self._stubs = list(self._stubs.values()), {}
        for s in stubs:
            s.channel.close()
