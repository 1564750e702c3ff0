"""Deterministic placement: which node owns a key for a model.

Placement is weighted rendezvous hashing (``kernels.hrw_assign`` / ``hrw_rank``) over a
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
import threading
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

import numpy as np

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
    """The nodes serving one (model, version), as arrays the kernel takes.

    The arrays are validated once here (through the public ``kernels.hrw_assign``), so
    ``first_choice`` can call the compiled scoring kernel directly: the public wrappers
    re-check their arguments on every call, which costs more than the decision itself at
    100 nodes, and ``hrw_assign``'s parallel loop wakes a thread team even for one key
    (hundreds of microseconds on a busy machine).  The winner is picked exactly as
    ``hrw_rank`` orders nodes (highest score; ties to the smaller node hash), which the
    kernels guarantee equals ``hrw_assign``'s first choice.
    """

    __slots__ = ("ids", "hashes", "weights", "_kernel_weights", "_weighted", "_scores", "_buffers")

    def __init__(self, entries: Sequence[NodeEntry]):
        self.ids = tuple(e.node_id for e in entries)
        self.hashes = np.array([kernels.stable_hash(i) for i in self.ids], dtype=np.uint64)
        ws = np.array([e.weight for e in entries], dtype=np.float64)
        # Equal weights: let the kernel compare raw hashes (exact integer order, same result).
        self._weighted = bool(len(ws) > 0 and not np.all(ws == ws[0]))
        self.weights = ws if self._weighted else None
        self._kernel_weights = ws if self._weighted else np.ones(len(ws), dtype=np.float64)
        self._scores = None
        self._buffers = threading.local()
        if len(self.ids) > 1:
            kernels.hrw_assign(np.zeros(1, dtype=np.uint64), self.hashes, self.weights)  # validates the arrays
            self._scores = _scores_kernel()

    def first_choice(self, key_hash_value: int) -> int:
        """Index of the rendezvous winner for one hashed key."""
        if self._scores is None:
            return int(kernels.hrw_rank(key_hash_value, self.hashes, self.weights)[0])
        try:
            raw, score = self._buffers.pair
        except AttributeError:  # first call on this thread: its own scratch arrays
            self._buffers.pair = raw, score = np.empty(len(self.ids), np.uint64), np.zeros(len(self.ids))
        self._scores(key_hash_value, self.hashes, self._kernel_weights, self._weighted, raw, score)
        if not self._weighted:
            # Raw pair hashes are mix64(a ^ mix64(node ^ salt)); mix64 is a bijection and node
            # ids are unique, so no two nodes can tie: the maximum is the winner.
            return int(raw.argmax())
        best = score.argmax()
        if np.count_nonzero(score == score[best]) == 1:
            return int(best)
        tied = np.flatnonzero(score == score[best])
        return int(tied[np.argmin(self.hashes[tied])])


def _scores_kernel():
    """The compiled per-node scoring kernel behind ``kernels.hrw_rank``, or None if not exposed."""
    from edgeloop.kernels import placement as kp

    native = getattr(kp, "_pl", None)
    return getattr(native, "scores", None)


def _hash_many(keys: Sequence[str | bytes]) -> np.ndarray:
    """``stable_hash`` of every key, vectorised when the kernels offer it."""
    from edgeloop.kernels import placement as kp

    many = getattr(kp, "stable_hash_many", None)
    if many is not None:
        return many(keys)
    return np.fromiter((key_hash(k) for k in keys), dtype=np.uint64, count=len(keys))


def key_hash(key: str | bytes) -> int:
    """The stable 64-bit hash placement uses for a routing key."""
    if not isinstance(key, (str, bytes)):
        raise TypeError(f"key: got {type(key).__name__} {key!r}, expected str or bytes")
    return kernels.stable_hash(key)


class Placement:
    """Owner and fallback order of keys over one snapshot.

    Per-(model, version) candidate arrays are built once per snapshot, so ``owner`` is a
    dictionary lookup, one hash and one compiled kernel call.
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
        n = len(cand.ids)
        if n == 0:
            return None
        if n == 1:
            return cand.ids[0]
        return cand.ids[cand.first_choice(key_hash(key))]

    def preference(self, key: str | bytes, model: str, version: int | None = None) -> list[str]:
        """All nodes serving ``model``, best first: the owner, then the fallbacks in order."""
        cand = self._lookup(model, version)
        if len(cand.ids) <= 1:
            return list(cand.ids)
        order = kernels.hrw_rank(key_hash(key), cand.hashes, cand.weights)
        return [cand.ids[int(i)] for i in order]

    def assign(self, keys: Sequence[str | bytes], model: str, version: int | None = None) -> list[str]:
        """Owners of a batch of keys, with the snapshot's bounded-load cap applied in key order."""
        cand = self._lookup(model, version)
        if not cand.ids:
            raise LookupError(f"model {model!r}: no node in snapshot {self.digest[:12]} serves it")
        for k in keys[:1]:
            key_hash(k)  # type check with a clear message
        hashes = _hash_many(keys)
        idx = kernels.hrw_assign(hashes, cand.hashes, cand.weights, self.snapshot.capacity_factor)
        ids = cand.ids
        return [ids[int(i)] for i in idx]
