"""The mesh: zeroconf discovery, membership and liveness, deterministic placement, routing.

Names resolve lazily, so ``from edgeloop.mesh import Placement`` does not load grpc or zeroconf.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "Placement": "placement",
    "Snapshot": "placement",
    "NodeEntry": "placement",
    "DecisionLog": "decision_log",
    "replay": "decision_log",
    "Membership": "membership",
    "Member": "membership",
    "Discovery": "discovery",
    "LivenessMonitor": "liveness",
    "Router": "router",
    "PeerServicer": "peer_service",
    "Mesh": "runtime",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'edgeloop.mesh' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__():
    return __all__
