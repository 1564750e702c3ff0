"""Deterministic placement: which node owns a key for a model.

Placement is weighted rendezvous hashing (``kernels.HrwNodes``, the prepared form of
``kernels.hrw_assign`` / ``hrw_rank``, one per model per snapshot) over a
*canonical* membership snapshot: node ids sorted, weights, the model versions each node
serves, and the epoch.  The snapshot has a digest (sha256 of its canonical JSON) so every
decision can be logged with the digest and replayed later on any machine.

Keys are hashed with ``kernels.stable_hash`` (never Python's ``hash()``), node ids too, so
the same snapshot gives the same owner in every process, on every machine, under any
``PYTHONHASHSEED``.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

from edgeloop import kernels

SNAPSHOT_FORMAT = 1


@dataclass(frozen=True)
class NodeEntry:
    """One member as placement sees it: id, weight and the ready versions per model."""

    node_id: str
    weight: float = 1.0
    models: tuple[tuple[str, tuple[int, ...]], ...] = ()

    @staticmethod
    def build(node_id: str, weight: float = 1.0, models: Mapping[str, Iterable[int]] | None = None) -> "NodeEntry":
        """A canonical entry (models and versions sorted) with checked arguments."""
        if not isinstance(node_id, str) or not node_id:
            raise ValueError(f"node_id: got {node_id!r}, expected a non-empty string")
        weight = float(weight)
        if not math.isfinite(weight) or weight <= 0:
            raise ValueError(f"weight of node {node_id!r}: got {weight!r}, expected a finite number > 0")
        canon = tuple(sorted((str(m), tuple(sorted({int(v) for v in vs}))) for m, vs in (models or {}).items()))
        return NodeEntry(node_id, weight, canon)

    def serves(self, model: str, version: int | None = None) -> bool:
        """True when this node has ``model`` ready (in ``version``, when given)."""
        for name, versions in self.models:
            if name == model:
                return bool(versions) and (version is None or version in versions)
        return False

    def to_json(self) -> dict:
        return {"id": self.node_id, "weight": self.weight, "models": {m: list(vs) for m, vs in self.models}}


@dataclass(frozen=True)
class Snapshot:
    """A canonical membership snapshot: what every placement decision is a function of."""

    epoch: int
    nodes: tuple[NodeEntry, ...]
    capacity_factor: float | None = None

    @staticmethod
    def build(nodes: Iterable[NodeEntry], epoch: int = 0, capacity_factor: float | None = None) -> "Snapshot":
        """Sort nodes by id and reject duplicates, so equal memberships give equal snapshots."""
        ordered = tuple(sorted(nodes, key=lambda n: n.node_id))
        for a, b in zip(ordered, ordered[1:]):
            if a.node_id == b.node_id:
                raise ValueError(f"nodes: node id {a.node_id!r} appears twice, expected unique ids")
        if capacity_factor is not None:
            capacity_factor = float(capacity_factor)
            if not math.isfinite(capacity_factor) or capacity_factor < 1.0:
                raise ValueError(f"capacity_factor: got {capacity_factor!r}, expected None or a number >= 1.0")
        if int(epoch) < 0:
            raise ValueError(f"epoch: got {epoch!r}, expected an integer >= 0")
        return Snapshot(int(epoch), ordered, capacity_factor)

    def to_json(self) -> dict:
        return {
            "format": SNAPSHOT_FORMAT,
            "epoch": self.epoch,
            "capacity_factor": self.capacity_factor,
            "nodes": [n.to_json() for n in self.nodes],
        }

    def canonical_json(self) -> str:
        """Sorted keys, no whitespace, shortest float repr: byte-identical everywhere."""
        return json.dumps(self.to_json(), sort_keys=True, separators=(",", ":"), ensure_ascii=True)

    @property
    def digest(self) -> str:
        cached = self.__dict__.get("_digest")
        if cached is None:
            cached = hashlib.sha256(self.canonical_json().encode("ascii")).hexdigest()
            object.__setattr__(self, "_digest", cached)
        return cached

    @staticmethod
    def from_json(data: Mapping) -> "Snapshot":
        """Parse what ``to_json`` wrote (e.g. from a decision log)."""
        if data.get("format") != SNAPSHOT_FORMAT:
            raise ValueError(f"snapshot format: got {data.get('format')!r}, expected {SNAPSHOT_FORMAT}")
        nodes = [NodeEntry.build(n["id"], n["weight"], n.get("models", {})) for n in data["nodes"]]
        return Snapshot.build(nodes, data["epoch"], data.get("capacity_factor"))


class _Candidates:
    """The nodes serving one (model, version), prepared once for the placement kernel.

    ``nodes`` is a ``kernels.HrwNodes`` over the node-id hashes (None when no node serves
    the model): it validates and pre-mixes the node side once, and every decision (owner,
    preference, batch) is the kernel's own rule.  Equal weights are passed as None so that
    the bounded-load caps are computed exactly as with unweighted ``hrw_assign``.
    """

    __slots__ = ("ids", "nodes")

    def __init__(self, entries: Sequence[NodeEntry]):
        self.ids = tuple(e.node_id for e in entries)
        self.nodes = None
        if entries:
            weights = [e.weight for e in entries]
            equal = all(w == weights[0] for w in weights)
            self.nodes = kernels.HrwNodes(kernels.stable_hash_many(self.ids), None if equal else weights)


def key_hash(key: str | bytes) -> int:
    """The stable 64-bit hash placement uses for a routing key."""
    if not isinstance(key, (str, bytes)):
        raise TypeError(f"key: got {type(key).__name__} {key!r}, expected str or bytes")
    return kernels.stable_hash(key)


class Placement:
    """Owner and fallback order of keys over one snapshot.

    Per-(model, version) candidates are prepared once per snapshot (``kernels.HrwNodes``),
    so ``owner`` is a dictionary lookup, one hash and one compiled kernel call.
    """

    def __init__(self, snapshot: Snapshot):
        self.snapshot = snapshot
        self.digest = snapshot.digest
        self._candidates: dict[tuple[str, int | None], _Candidates] = {}

    def candidates(self, model: str, version: int | None = None) -> tuple[str, ...]:
        """Ids of the nodes that serve ``model`` (``version``), in snapshot order."""
        return self._lookup(model, version).ids

    def _lookup(self, model: str, version: int | None) -> _Candidates:
        found = self._candidates.get((model, version))
        if found is None:
            found = _Candidates([n for n in self.snapshot.nodes if n.serves(model, version)])
            self._candidates[(model, version)] = found
        return found

    def owner(self, key: str | bytes, model: str, version: int | None = None) -> str | None:
        """The node that owns ``key`` for ``model``; None when no node serves it.

        A single key never exceeds the bounded-load cap, so the owner of one key is its
        rendezvous winner; ``assign`` applies the cap across a batch of keys.
        """
        cand = self._lookup(model, version)
        if cand.nodes is None:
            return None
        return cand.ids[cand.nodes.first(key_hash(key))]

    def preference(self, key: str | bytes, model: str, version: int | None = None) -> list[str]:
        """All nodes serving ``model``, best first: the owner, then the fallbacks in order."""
        cand = self._lookup(model, version)
        if cand.nodes is None:
            return []
        ids = cand.ids
        return [ids[i] for i in cand.nodes.rank(key_hash(key)).tolist()]

    def assign(self, keys: Sequence[str | bytes], model: str, version: int | None = None) -> list[str]:
        """Owners of a batch of keys, with the snapshot's bounded-load cap applied in key order."""
        cand = self._lookup(model, version)
        if not cand.ids:
            raise LookupError(f"model {model!r}: no node in snapshot {self.digest[:12]} serves it")
        for k in keys[:1]:
            key_hash(k)  # type check with a clear message
        idx = cand.nodes.assign(kernels.stable_hash_many(keys), self.snapshot.capacity_factor)
        ids = cand.ids
        return [ids[i] for i in idx.tolist()]
