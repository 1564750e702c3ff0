"""Deterministic placement: stable 64-bit hashes and weighted rendezvous hashing (HRW).

These functions are part of the mesh's wire contract: every node, on any machine, must
place a key on the same node.  The exact algorithm (XXH64 for names; SplitMix64-mixed
pair hashes; score ``-w / ln u`` with a libm-free logarithm) is specified in
``native/_placement.pyx``; the golden vectors in ``tests/kernels/test_placement.py``
pin it down.

Arrays are taken as C-contiguous uint64 / float64; anything else (lists, other integer
dtypes, strided views) is copied once.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from edgeloop._native import load

_pl = load("_placement")

__all__ = ["stable_hash", "stable_hash_many", "HrwNodes", "hrw_assign", "hrw_rank", "KEY_SALT", "NODE_SALT"]

KEY_SALT: int = _pl.KEY_SALT
NODE_SALT: int = _pl.NODE_SALT
_MAX_WEIGHT = 1e100


def stable_hash(data: str | bytes) -> int:
    """XXH64 with seed 0 of ``data`` (a str is UTF-8 encoded): an int in [0, 2**64).

    Unlike Python's ``hash()`` it is the same in every process and on every machine.
    """
    return _pl.stable_hash(data)


def stable_hash_many(items: Sequence[str | bytes]) -> np.ndarray:
    """``stable_hash`` of every item, as a uint64 array (the mesh hashes many keys at once)."""
    if isinstance(items, (str, bytes)):
        raise TypeError(f"items must be a sequence of str/bytes, got a single {type(items).__name__}")
    items = list(items)
    out = np.empty(len(items), dtype=np.uint64)
    _pl.stable_hash_many(items, out)
    return out


def _as_ids(name: str, value, allow_empty: bool) -> np.ndarray:
    """A C-contiguous 1-D uint64 array from ints / an integer array; negatives are rejected."""
    arr = np.asarray(value)
    if arr.dtype.kind == "f" and not isinstance(value, np.ndarray):
        # NumPy turns a list mixing ints beyond int64 into float64: keep the exact ints
        as_objects = np.asarray(value, dtype=object)
        if all(isinstance(v, (int, np.integer)) for v in as_objects.ravel()):
            arr = as_objects
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if arr.size == 0:
        if not allow_empty:
            raise ValueError(f"{name} must not be empty")
        return np.empty(0, dtype=np.uint64)
    if arr.dtype == np.uint64:
        return np.ascontiguousarray(arr)
    if arr.dtype.kind in "iu":
        if arr.dtype.kind == "i" and arr.min() < 0:
            raise ValueError(f"{name} must be non-negative 64-bit ids, got {int(arr.min())}")
        return np.ascontiguousarray(arr, dtype=np.uint64)
    if arr.dtype == object:
        try:
            return np.array([int(v) for v in arr], dtype=np.uint64)
        except (OverflowError, TypeError, ValueError) as exc:
            raise ValueError(f"{name} must hold integers in [0, 2**64), got {arr[:5].tolist()}...") from exc
    raise TypeError(f"{name} must be unsigned 64-bit integers, got dtype {arr.dtype}")


def _nodes(nodes) -> np.ndarray:
    ids = _as_ids("nodes", nodes, allow_empty=False)
    ordered = np.sort(ids)
    dup = ordered[1:][ordered[1:] == ordered[:-1]]
    if dup.size:
        raise ValueError(f"nodes must be unique ids, got duplicates {np.unique(dup)[:5].tolist()}")
    return ids


def _weights(weights, n: int) -> tuple[np.ndarray, bool]:
    """(float64 weights, weighted?) - equal weights take the exact integer-compare path."""
    if weights is None:
        return np.ones(n, dtype=np.float64), False
    w = np.ascontiguousarray(weights, dtype=np.float64)
    if w.shape != (n,):
        raise ValueError(f"weights must have shape ({n},) to match nodes, got {w.shape}")
    ok = (w >= 0) & (w <= _MAX_WEIGHT)  # False for nan; +-inf fail the bounds
    if not ok.all():
        raise ValueError(f"weights must be finite and in [0, {_MAX_WEIGHT:g}], got {w[~ok][:5].tolist()}")
    lo, hi = w.min(), w.max()
    if hi == 0:
        raise ValueError("weights must not all be zero")
    return w, bool(lo != hi)


class HrwNodes(_pl.PreparedNodes):
    """A node set prepared once for many rendezvous decisions (the mesh keeps one per snapshot).

    nodes: unique uint64[N] node ids (N >= 1); weights: float64[N] in [0, 1e100], not all
    zero (None = equal).  Validation, copying and the node half of every pair hash happen
    here, once; the object is then immutable and thread-safe.  Its decisions ARE the ones of
    ``hrw_assign`` / ``hrw_rank`` (which are built on it), ties and bounded load included:

    * ``first(key) -> int``: index of the winner of one hashed key (int in [0, 2**64)),
      serial, no per-call allocation (about a microsecond at 100 nodes);
    * ``rank(key) -> int64[N]``: the key's full preference order, best first;
    * ``assign(keys, capacity_factor=None) -> int64[K]``: a batch, with the optional cap.

    Indices refer to ``ids`` (the nodes in the order given).
    """

    def __init__(self, nodes, weights=None):
        ids = _nodes(nodes)
        w, weighted = _weights(weights, ids.size)
        self._prepare(ids, w, weighted)

    def assign(self, keys, capacity_factor: float | None = None, *, n_threads: int | None = None) -> np.ndarray:
        """Node index for every key of ``keys`` (uint64[K]); see ``hrw_assign`` for the cap."""
        _check_threads(n_threads)
        return self._assign_ids(_as_ids("keys", keys, allow_empty=True), capacity_factor, n_threads)

    def _assign_ids(self, key_arr: np.ndarray, capacity_factor, n_threads: int | None) -> np.ndarray:
        out = np.empty(key_arr.size, dtype=np.int64)
        if key_arr.size == 0:
            return out
        self._assign_first(key_arr, out, n_threads or 0)
        if capacity_factor is None:
            return out
        caps = _capacities(self.ids, self.weights, capacity_factor, key_arr.size)
        self._assign_capped(key_arr, caps, out)
        return out

    def __repr__(self) -> str:
        return f"HrwNodes({len(self)} nodes, {'weighted' if self.weighted else 'equal weights'})"


def _check_threads(n_threads) -> None:
    if n_threads is not None and (isinstance(n_threads, bool) or not isinstance(n_threads, int) or n_threads < 1):
        raise ValueError(f"n_threads must be None or an int >= 1, got {n_threads!r}")


def hrw_assign(
    keys, nodes, weights=None, capacity_factor: float | None = None, *, n_threads: int | None = None
) -> np.ndarray:
    """Node index (into ``nodes``) for every key, by weighted rendezvous hashing.

    keys: uint64[K] (e.g. from ``stable_hash_many``); nodes: unique uint64[N] node ids;
    weights: float64[N] in [0, 1e100], not all zero (None = equal; a zero-weight node only
    gets keys when every better node is full); capacity_factor c: no node i gets more than
    ``ceil(c * K * w_i / sum(w))`` keys.  Capped keys are placed in index order, and a key
    whose first choice is full goes to the next node on its own preference list with room.
    Permuting ``nodes`` (and ``weights`` alike) permutes the returned indices consistently.
    n_threads: OpenMP threads for the first-choice pass (None: the OpenMP default); the result
    does not depend on it.  For many calls over the same nodes, prepare them once: ``HrwNodes``.
    """
    _check_threads(n_threads)
    key_arr = _as_ids("keys", keys, allow_empty=True)
    return HrwNodes(nodes, weights)._assign_ids(key_arr, capacity_factor, n_threads)


def _capacities(ids: np.ndarray, w: np.ndarray, capacity_factor, n_keys: int) -> np.ndarray:
    """Per-node caps, computed in node-id order so that they do not depend on list order."""
    try:
        c = float(capacity_factor)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"capacity_factor must be a number, got {capacity_factor!r}") from exc
    if not np.isfinite(c) or c <= 0:
        raise ValueError(f"capacity_factor must be a finite number > 0, got {capacity_factor!r}")
    order = np.argsort(ids, kind="stable")
    caps_by_id = np.empty(ids.size, dtype=np.int64)
    _pl.capacities(np.ascontiguousarray(w[order]), c, n_keys, caps_by_id)
    caps = np.empty_like(caps_by_id)
    caps[order] = caps_by_id
    total = int(caps.sum())
    if total < n_keys:
        raise ValueError(
            f"capacity_factor={capacity_factor!r} is infeasible: the node caps sum to {total} "
            f"but {n_keys} keys must be placed (use a factor >= 1)"
        )
    return caps


def hrw_rank(key: int, nodes, weights=None) -> np.ndarray:
    """The key's full preference order over ``nodes`` (indices, best first).

    ``hrw_rank(k, nodes, w)[0] == hrw_assign([k], nodes, w)[0]``; the mesh walks the rest
    as its fallback list.
    """
    try:
        k = int(key)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"key must be an int in [0, 2**64), got {key!r}") from exc
    if not 0 <= k < 2**64:
        raise ValueError(f"key must be in [0, 2**64), got {k}")
    return HrwNodes(nodes, weights).rank(k)
