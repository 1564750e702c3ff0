"""Helpers for the feature store's tests: definitions, random streams, and a plain-Python oracle.

The oracle keeps every row and label of every entity in lists and computes each feature from
its written definition (docs of ``edgeloop.features.definition``), independently of the ring
buffers and the native kernel, so a wrong index or window in the kernel shows up as a mismatch.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from edgeloop.features import FeatureDefinition, Plan

INPUTS = ["a", "b", "c", "price"]


def mixed_definition(**overrides) -> FeatureDefinition:
    """Every op, several windows, one declared default, ``price`` forbidden."""
    doc = {
        "version": 1,
        "entity": "meter",
        "inputs": INPUTS,
        "features": [
            {"op": "lag", "col": "a", "k": 1},
            {"op": "lag", "col": "a", "k": 3},
            {"op": "delta", "col": "b", "k": 2},
            {"op": "mean", "col": "a", "k": 4},
            {"op": "std", "col": "b", "k": 5},
            {"op": "dev", "col": "c", "k": 3},
            {"op": "mean", "col": "c", "k": 7, "default": -1.0},
            {"op": "since_last"},
            {"op": "label_lag", "k": 1},
            {"op": "label_lag", "k": 3},
            {"op": "label_mean", "k": 4, "default": 0.5},
        ],
        "forbidden": ["price"],
    }
    doc.update(overrides)
    return FeatureDefinition.from_dict(doc)


def twenty_definition() -> FeatureDefinition:
    """20 derived features over 6 raw inputs (the overhead target's shape)."""
    feats = [{"op": op, "col": col, "k": k}
             for op in ("lag", "delta", "mean", "std", "dev") for col, k in (("b", 1), ("c", 6), ("d", 48))][:16]
    feats += [{"op": "label_lag", "k": 1}, {"op": "label_lag", "k": 2},
              {"op": "label_mean", "k": 6}, {"op": "label_mean", "k": 48}]
    return FeatureDefinition.from_dict({"version": 1, "entity": "key", "inputs": list("abcdef"), "features": feats})


@dataclass
class Stream:
    keys: list[str]
    rows: np.ndarray
    timestamps: np.ndarray
    labels: np.ndarray
    arrivals: np.ndarray  # when each row's label reaches the owner

    def label_events(self):
        return [(k, float(y), float(t), float(a))
                for k, y, t, a in zip(self.keys, self.labels, self.timestamps, self.arrivals)]


def random_stream(seed: int, n: int, n_entities: int, n_inputs: int = len(INPUTS), max_delay: float = 40.0) -> Stream:
    """Interleaved entities, strictly increasing times, labels arriving after random delays (out of order)."""
    rng = np.random.default_rng(seed)
    keys = [f"entity-{int(i)}" for i in rng.integers(0, n_entities, n)]
    rows = rng.standard_normal((n, n_inputs)) * 3 + 1
    timestamps = np.cumsum(rng.uniform(0.5, 2.0, n))
    labels = (rows[:, 0] > 1).astype(np.float64)  # the label is a function of the row itself
    arrivals = timestamps + rng.uniform(0.0, max_delay, n)
    return Stream(keys, rows, timestamps, labels, arrivals)


@dataclass
class _Entity:
    rows: list = field(default_factory=list)
    times: list = field(default_factory=list)
    labels: dict = field(default_factory=dict)  # timestamp -> label, the newest L by timestamp


class Reference:
    """A slow, obviously-correct model of the feature store (no eviction)."""

    def __init__(self, definition: FeatureDefinition) -> None:
        self.d = definition
        self.L = Plan(definition).L  # labels kept: the longest label window plus a documented slack
        self.entities: dict[str, _Entity] = {}

    def _e(self, key: str) -> _Entity:
        return self.entities.setdefault(key, _Entity())

    def label(self, key: str, label: float, ts: float) -> None:
        e = self._e(key)
        if self.L == 0:
            return
        e.labels[ts] = label
        for old in sorted(e.labels)[: max(0, len(e.labels) - self.L)]:
            del e.labels[old]

    def serve(self, key: str, row, t: float) -> tuple[np.ndarray, bool, bool]:
        e = self._e(key)
        row = [float(v) for v in row]
        idx = {name: i for i, name in enumerate(self.d.inputs)}
        visible = [e.labels[ts] for ts in sorted(e.labels) if ts < t]
        partial = False
        out = list(row)
        for f in self.d.features:
            if f.op in ("lag", "delta", "mean", "std", "dev"):
                x = row[idx[f.col]]
                past = [r[idx[f.col]] for r in e.rows][::-1][: f.k]  # newest first
                partial |= len(past) < f.k
                if not past:
                    builtin = x if f.op in ("lag", "mean") else 0.0
                    out.append(builtin if f.default is None else f.default)
                    continue
                mean = sum(past) / len(past)
                value = {
                    "lag": past[-1],
                    "delta": x - past[-1],
                    "mean": mean,
                    "std": math.sqrt(sum((v - mean) ** 2 for v in past) / len(past)),
                    "dev": x - mean,
                }[f.op]
                out.append(value)
            elif f.op == "since_last":
                if not e.times:
                    partial = True
                    out.append(0.0 if f.default is None else f.default)
                else:
                    out.append(max(0.0, t - e.times[-1]))
            else:
                window = visible[-f.k:]
                partial |= len(window) < f.k
                if not window:
                    out.append(0.0 if f.default is None else f.default)
                elif f.op == "label_lag":
                    out.append(window[0])
                else:
                    out.append(sum(window) / len(window))
        cold = not e.rows
        e.rows.append(row)
        e.times.append(t)
        return np.array(out, dtype=np.float32), cold, partial
