"""The membership view: who is in the mesh, where, serving what, and whether alive.

Discovery (zeroconf, static peers, seeds) adds and removes members of this mesh (by name);
liveness (gRPC health) marks them up, draining or down.  An up member listing no model is
"not-ready": alive, but placement (which keys on models) never picks it.  Every change that placement can see — a member joining or
leaving, going up or down, changing weight or models — bumps the epoch.  Queue depths
change often and are not part of placement, so they do not bump it.
"""
from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field, replace
from typing import Callable, Mapping

from edgeloop.config.schema import join_host_port
from edgeloop.mesh.placement import NodeEntry, Placement, Snapshot

UNKNOWN, UP, DRAINING, DOWN = "unknown", "up", "draining", "down"
STATES = (UNKNOWN, UP, DRAINING, DOWN)

DEFAULT_MESH = "default"  # MeshConfig.name's default

PROTOCOL_VERSION = "1"
MAX_WEIGHT = 1e100  # the largest weight kernels.hrw_assign accepts


PEER_SOURCE_PREFIX = "peer:"  # source of a member learned from another node's Describe


@dataclass(frozen=True)
class Member:
    """One node as this process sees it."""

    node_id: str
    host: str
    grpc_port: int
    metrics_port: int = 0
    weight: float = 1.0
    zone: str = "default"
    protocol_version: str = PROTOCOL_VERSION
    models: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    state: str = UNKNOWN
    queue_depth: int = 0
    sources: frozenset[str] = frozenset()

    @property
    def address(self) -> str:
        return join_host_port(self.host, self.grpc_port)

    @property
    def alive(self) -> bool:
        """Answering health SERVING (placement candidates); it serves only the ``models`` it lists."""
        return self.state == UP

    @property
    def ready(self) -> bool:
        """Alive with at least one model version ready (an alive node with none waits for models)."""
        return self.alive and any(self.models.values())

    @property
    def condition(self) -> str:
        """One word for people and logs: ready, not-ready (alive, no model yet), draining, down, unknown."""
        if self.state == UP:
            return "ready" if self.ready else "not-ready"
        return self.state

    @property
    def first_hand(self) -> bool:
        """Seen by this process itself (mDNS, a static peer or seed), not only reported by a peer."""
        return any(not s.startswith(PEER_SOURCE_PREFIX) for s in self.sources)

    def placement_entry(self) -> NodeEntry:
        return NodeEntry.build(self.node_id, self.weight, self.models)


# Fields whose change moves keys (or where requests go) and so bumps the epoch.
_EPOCH_FIELDS = ("host", "grpc_port", "weight", "models", "state")


class Membership:
    """Thread-safe view of the mesh with an epoch and a cached placement per epoch."""

    def __init__(self, self_id: str | None = None, capacity_factor: float | None = None):
        self.self_id = self_id
        self.capacity_factor = capacity_factor
        self._members: dict[str, Member] = {}
        self._epoch = 0
        self._cond = threading.Condition()
        self._placement: Placement | None = None
        self._listeners: list[Callable[[int], None]] = []

    # ------------------------------------------------------------------ reading
    @property
    def epoch(self) -> int:
        return self._epoch

    def members(self) -> list[Member]:
        """A copy of the current members, sorted by id."""
        with self._cond:
            return [self._members[k] for k in sorted(self._members)]

    def __contains__(self, node_id: str) -> bool:
        return node_id in self._members

    def get(self, node_id: str) -> Member | None:
        return self._members.get(node_id)

    def placement(self) -> Placement:
        """The placement over the members that are up, for the current epoch (cached)."""
        cached = self._placement
        if cached is not None:
            return cached
        with self._cond:
            if self._placement is None:
                entries = [m.placement_entry() for m in self._members.values() if m.alive]
                self._placement = Placement(Snapshot.build(entries, self._epoch, self.capacity_factor))
            return self._placement

    def wait_until(self, predicate: Callable[["Membership"], bool], timeout: float) -> bool:
        """Block until ``predicate(self)`` holds (re-checked on every change) or ``timeout`` passes."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate(self):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(min(remaining, 0.05))
            return True

    def add_listener(self, fn: Callable[[int], None]) -> None:
        """Call ``fn(epoch)`` after each epoch bump (from the thread that made the change)."""
        self._listeners.append(fn)

    # ------------------------------------------------------------------ writing
    def upsert(self, node_id: str, source: str, **fields) -> Member:
        """Add ``node_id`` (seen through ``source``) or update its fields."""
        with self._cond:
            old = self._members.get(node_id)
            if "models" in fields:
                fields["models"] = {str(m): tuple(sorted(int(v) for v in vs)) for m, vs in fields["models"].items()}
            if old is None:
                new = Member(node_id=node_id, sources=frozenset({source}), **fields)
            else:
                new = replace(old, sources=old.sources | {source}, **fields)
            self._members[node_id] = new
            changed = old is None or any(getattr(old, f) != getattr(new, f) for f in _EPOCH_FIELDS)
            bumped = self._bump_locked() if changed else None
        self._notify(bumped)
        return new

    def remove_source(self, node_id: str, source: str) -> None:
        """Forget that ``source`` sees ``node_id``; the member leaves when no source is left."""
        with self._cond:
            old = self._members.get(node_id)
            if old is None or source not in old.sources:
                return
            rest = old.sources - {source}
            if rest:
                self._members[node_id] = replace(old, sources=rest)
                bumped = None
            else:
                del self._members[node_id]
                bumped = self._bump_locked()
        self._notify(bumped)

    def set_state(self, node_id: str, state: str) -> bool:
        """Mark a member up or down; True when that changed anything."""
        with self._cond:
            old = self._members.get(node_id)
            if old is None or old.state == state:
                return False
            self._members[node_id] = replace(old, state=state)
            bumped = self._bump_locked()
        self._notify(bumped)
        return True

    def set_queue_depth(self, node_id: str, depth: int) -> None:
        """Record a peer's queue depth (from Describe); no epoch bump."""
        with self._cond:
            old = self._members.get(node_id)
            if old is not None and old.queue_depth != depth:
                self._members[node_id] = replace(old, queue_depth=int(depth))

    def _bump_locked(self) -> int:
        self._epoch += 1
        self._placement = None
        self._cond.notify_all()
        return self._epoch

    def _notify(self, epoch: int | None) -> None:
        if epoch is None:
            return
        for fn in list(self._listeners):
            fn(epoch)


def describe_fields(desc) -> dict:
    """Member fields from a ``mesh_pb2.NodeDescription`` (what Peer.Describe returns)."""
    node = desc.node
    models: dict[str, list[int]] = {}
    for mv in desc.models:
        if mv.state in ("", "READY"):
            models.setdefault(mv.model, []).append(int(mv.version))
    return {
        "host": node.host,
        "grpc_port": int(node.grpc_port),
        "metrics_port": int(node.metrics_port),
        # a peer's bad weight (inf, nan, <= 0) must not make placement raise on every node
        "weight": float(node.weight) if math.isfinite(node.weight) and 0 < node.weight <= MAX_WEIGHT else 1.0,
        "zone": node.zone or "default",
        "protocol_version": node.protocol_version or PROTOCOL_VERSION,
        "models": models,
    }
