"""The rollout planner: who gets a version when, and whether it may go further.

The order of the edges is weighted rendezvous hashing of the edge ids with the rollout id as the key
(``mesh.placement``), so the canary set is a pure function of (rollout id, edges, weights): the same
inputs always choose the same edges, and the choice can be replayed from the recorded plan.  Waves
grow by ``factor`` after the canary.  After every edge of a wave applied the version and the bake time
passed, the gates are checked on the edges' own status reports; a failed gate rolls back every edge
that took the version, and the edges not yet reached never receive it.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from edgeloop.mesh.placement import NodeEntry, Placement, Snapshot

RUNNING, DONE, PAUSED, ROLLED_BACK, ABORTED = "running", "done", "paused", "rolled_back", "aborted"
STATES = (RUNNING, DONE, PAUSED, ROLLED_BACK, ABORTED)


@dataclass(frozen=True)
class Plan:
    """How a rollout proceeds and what it must show at each step (defaults after Flagger's)."""

    canary: int = 1                 # edges in the first wave
    factor: float = 2.0             # each later wave is this many times the previous
    bake_ms: int = 60_000           # after a wave applied, wait this long with the gates green
    min_requests: int = 20          # below this many requests on the new version, the traffic gates wait
    min_success: float = 0.99       # share of the new version's requests that must succeed
    max_p99_ratio: float = 1.2      # new p99 latency at most this times the champion's ...
    p99_slack_ms: float = 5.0       # ... plus this (timer resolution on fast models)
    max_accuracy_drop: float = 0.02  # labelled accuracy of the new version vs the champion (when labels arrive)
    max_psi: float = 0.5            # prediction drift (PSI) reported by edges serving the new version

    def to_json(self) -> dict:
        return asdict(self)


def order_edges(rollout_id: str, model: str, weights: dict[str, float]) -> list[str]:
    """Every edge, ranked by weighted rendezvous hashing of its id with ``rollout_id`` (replayable)."""
    if not weights:
        return []
    entries = [NodeEntry.build(node, max(float(w), 1e-9), {model: [1]}) for node, w in sorted(weights.items())]
    return list(Placement(Snapshot.build(entries)).preference(rollout_id, model))


def make_waves(order: list[str], canary: int, factor: float) -> list[list[str]]:
    """``order`` split into a canary of ``canary`` edges then waves growing by ``factor``."""
    waves, i, size = [], 0, max(1, canary)
    while i < len(order):
        waves.append(order[i:i + size])
        i += size
        size = max(size + 1, int(math.ceil(size * factor)))
    return waves


def _traffic(entries: list[dict]) -> dict:
    ok = sum(int(e.get("requests", 0)) for e in entries)
    failed = sum(int(e.get("failures", 0)) for e in entries)
    p99 = max((float(e.get("latency_p99_ms", 0.0)) for e in entries), default=0.0)
    return {"requests": ok, "failures": failed, "p99_ms": p99}


def check_gates(plan: Plan, new: list[dict], champion: list[dict], psis: list[float],
                accuracy: tuple[float | None, float | None] = (None, None)) -> tuple[bool | None, dict]:
    """(verdict, evidence): False when a gate failed, None when there is not yet enough traffic, else True.

    ``new`` / ``champion``: the edges' per-version serving stats (requests, failures, latency_p99_ms).
    """
    t_new, t_old = _traffic(new), _traffic(champion)
    evidence = {"new": t_new, "champion": t_old, "psi": max(psis) if psis else None,
                "accuracy_new": accuracy[0], "accuracy_champion": accuracy[1], "failed": []}
    total = t_new["requests"] + t_new["failures"]
    if total:
        success = t_new["requests"] / total
        evidence["success"] = success
        if success < plan.min_success and t_new["failures"] >= max(1, int(plan.min_requests * (1 - plan.min_success))):
            evidence["failed"].append(f"success {success:.4f} < {plan.min_success}")
    if psis and max(psis) > plan.max_psi:
        evidence["failed"].append(f"prediction drift psi {max(psis):.3f} > {plan.max_psi}")
    if accuracy[0] is not None and accuracy[1] is not None and accuracy[0] < accuracy[1] - plan.max_accuracy_drop:
        evidence["failed"].append(f"accuracy {accuracy[0]:.4f} < champion {accuracy[1]:.4f} - "
                                  f"{plan.max_accuracy_drop}")
    if total >= plan.min_requests and t_old["requests"] >= plan.min_requests:
        limit = t_old["p99_ms"] * plan.max_p99_ratio + plan.p99_slack_ms
        evidence["p99_limit_ms"] = limit
        if t_new["p99_ms"] > limit:
            evidence["failed"].append(f"p99 {t_new['p99_ms']:.2f} ms > {limit:.2f} ms")
    if evidence["failed"]:
        return False, evidence
    return (True if total >= plan.min_requests or plan.min_requests == 0 else None), evidence


def new_rollout(rollout_id: str, model: str, version: int, sha256: str, previous: int, weights: dict[str, float],
                zones: dict[str, str], pins: dict[str, int], plan: Plan, now_ms: int, reason: str) -> dict:
    """The rollout document (stored as JSON): plan, order, waves, per-edge progress and the decision log."""
    pinned = sorted(n for n in weights if n in pins or f"zone:{zones.get(n, '')}" in pins)
    targets = {n: w for n, w in weights.items() if n not in pinned}
    order = order_edges(rollout_id, model, targets)
    waves = make_waves(order, plan.canary, plan.factor)
    doc = {"rollout_id": rollout_id, "model": model, "version": version, "sha256": sha256, "previous": previous,
           "state": RUNNING, "reason": reason, "plan": plan.to_json(), "weights": weights, "order": order,
           "waves": waves, "wave": -1, "wave_started_ms": 0, "baked_since_ms": 0, "pinned": pinned,
           "edges": {n: "waiting" for n in order}, "decisions": [], "created_ms": now_ms, "updated_ms": now_ms}
    decide(doc, now_ms, "planned", {"canary": waves[0] if waves else [], "waves": waves, "pinned": pinned,
                                    "reason": reason})
    return doc


def decide(doc: dict, now_ms: int, decision: str, evidence: dict) -> None:
    doc["decisions"].append({"at_ms": now_ms, "decision": decision, "evidence": evidence})
    doc["updated_ms"] = now_ms


def replay_canary(doc: dict) -> list[str]:
    """Recompute the canary from the recorded inputs (rollout id, weights, pins, plan)."""
    targets = {n: w for n, w in doc["weights"].items() if n not in doc["pinned"]}
    order = order_edges(doc["rollout_id"], doc["model"], targets)
    return make_waves(order, doc["plan"]["canary"], doc["plan"]["factor"])[0] if order else []
