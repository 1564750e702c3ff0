"""The rollout planner: who gets a version when, and whether it may go further.

The order of the edges is weighted rendezvous hashing of the edge ids with the rollout id as the key
(``mesh.placement``), so the canary set is a pure function of (rollout id, edges, weights): the same
inputs always choose the same edges, and the choice can be replayed from the recorded plan.  Waves
grow by ``factor`` after the canary.  After every edge of a wave applied the version and the bake time
passed, the gates are checked on the edges' own status reports; a failed gate rolls back every edge
that took the version, and the edges not yet reached never receive it.

The accuracy gate is a test, not a threshold on two noisy numbers: once each version has ``min_labelled``
labelled requests over the same time span, it fails only when a one-sided two-proportion test
(Agresti–Caffo adjusted, normal approximation) rejects "the new version is at most ``max_accuracy_drop``
worse" at significance ``accuracy_alpha``.  Until both sides have enough labels the wave waits, at most
``accuracy_wait_ms`` after the wave started, then passes on the other gates and says so.
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
    min_labelled: int = 30          # labelled requests per version before the accuracy gate judges (at least 1)
    accuracy_alpha: float = 0.05    # significance of the one-sided test "the new version is worse"
    accuracy_wait_ms: int = 300_000  # longest a wave waits for labels, then passes on the other gates (says so)

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


def _upper_tail(z: float) -> float:
    """P(Z >= z) for a standard normal Z."""
    return 0.5 * math.erfc(z / math.sqrt(2.0))


def accuracy_gate(plan: Plan, new: tuple[int, int], champion: tuple[int, int], waited_ms: int,
                  paired: tuple[int, int, int] | None = None) -> dict:
    """The accuracy gate's evidence; ``verdict`` is "pass", "fail", "wait", "timed_out" or "no_labels".

    ``new`` / ``champion``: (correct, labelled) over the same time span.  The test is one-sided with the
    allowed drop as its margin: H0 "champion - new <= max_accuracy_drop", rejected at ``accuracy_alpha``.
    ``paired``: (pairs, champion right where the new version was wrong, new right where the champion was
    wrong) from the champion replayed on the new version's own labelled requests; with ``min_labelled``
    pairs the paired test decides (same requests: no difference of entities or time between the sides).
    """
    (k1, n1), (k0, n0) = new, champion
    ev = {"new": {"correct": k1, "labelled": n1, "accuracy": k1 / n1 if n1 else None},
          "champion": {"correct": k0, "labelled": n0, "accuracy": k0 / n0 if n0 else None},
          "min_labelled": plan.min_labelled, "max_drop": plan.max_accuracy_drop, "alpha": plan.accuracy_alpha,
          "p_value": None}
    if paired is not None and paired[0] >= max(1, plan.min_labelled):
        n, b, c = paired
        # the paired difference (champion - new) with a continuity half added to each discordant count
        bb, cc, nn = b + 0.5, c + 0.5, n + 1.0
        d = (bb - cc) / nn
        se = math.sqrt(max(bb + cc - (bb - cc) ** 2 / nn, 1e-12)) / nn
        p_value = _upper_tail((d - plan.max_accuracy_drop) / se)
        ev["paired"] = {"pairs": n, "champion_only_right": b, "new_only_right": c, "difference": (b - c) / n}
        ev["p_value"] = p_value
        ev["verdict"] = "fail" if p_value < plan.accuracy_alpha else "pass"
        return ev
    if n1 == 0 and n0 == 0:
        ev["verdict"], ev["note"] = "no_labels", "no labelled requests for either version: the gate does not apply"
        return ev
    need = max(1, plan.min_labelled)
    if n1 < need or n0 < need:
        if waited_ms >= plan.accuracy_wait_ms:
            ev["verdict"] = "timed_out"
            ev["note"] = (f"only {n1} (new) and {n0} (champion) labelled requests after {waited_ms / 1000:.0f} s; "
                          f"{need} each are needed: passed on the other gates, accuracy not judged")
        else:
            ev["verdict"] = "wait"
            ev["note"] = f"waiting for {need} labelled requests per version (new {n1}, champion {n0})"
        return ev
    p1, p0 = (k1 + 1) / (n1 + 2), (k0 + 1) / (n0 + 2)  # Agresti–Caffo: sound at 0 % and 100 %
    se = math.sqrt(p1 * (1 - p1) / (n1 + 2) + p0 * (1 - p0) / (n0 + 2))
    p_value = _upper_tail(((p0 - p1) - plan.max_accuracy_drop) / se)
    ev["p_value"] = p_value
    ev["verdict"] = "fail" if p_value < plan.accuracy_alpha else "pass"
    return ev


def check_gates(plan: Plan, new: list[dict], champion: list[dict], psis: list[float],
                accuracy: dict | None = None) -> tuple[bool | None, dict]:
    """(verdict, evidence): False when a gate failed, None when there is not yet enough traffic (or the
    accuracy gate waits for labels: ``evidence["waiting"]``), else True.

    ``new`` / ``champion``: the edges' per-version serving stats (requests, failures, latency_p99_ms);
    ``accuracy``: ``accuracy_gate``'s evidence, when the coordinator has labels to judge by.
    """
    t_new, t_old = _traffic(new), _traffic(champion)
    evidence = {"new": t_new, "champion": t_old, "psi": max(psis) if psis else None, "accuracy": accuracy,
                "failed": []}
    total = t_new["requests"] + t_new["failures"]
    if total:
        success = t_new["requests"] / total
        evidence["success"] = success
        if success < plan.min_success and t_new["failures"] >= max(1, int(plan.min_requests * (1 - plan.min_success))):
            evidence["failed"].append(f"success {success:.4f} < {plan.min_success}")
    if psis and max(psis) > plan.max_psi:
        evidence["failed"].append(f"prediction drift psi {max(psis):.3f} > {plan.max_psi}")
    if accuracy is not None and accuracy["verdict"] == "fail" and "paired" in accuracy:
        p = accuracy["paired"]
        evidence["failed"].append(f"accuracy on the same {p['pairs']} labelled requests: the champion was right on "
                                  f"{p['champion_only_right']} the new version got wrong, the new version on "
                                  f"{p['new_only_right']} (loss {p['difference']:.4f} > {plan.max_accuracy_drop}, "
                                  f"one-sided p = {accuracy['p_value']:.3g} < {plan.accuracy_alpha})")
    elif accuracy is not None and accuracy["verdict"] == "fail":
        a_new, a_old = accuracy["new"], accuracy["champion"]
        evidence["failed"].append(f"accuracy {a_new['accuracy']:.4f} on {a_new['labelled']} labelled < champion "
                                  f"{a_old['accuracy']:.4f} on {a_old['labelled']} - {plan.max_accuracy_drop} "
                                  f"(one-sided p = {accuracy['p_value']:.3g} < {plan.accuracy_alpha})")
    if total >= plan.min_requests and t_old["requests"] >= plan.min_requests:
        limit = t_old["p99_ms"] * plan.max_p99_ratio + plan.p99_slack_ms
        evidence["p99_limit_ms"] = limit
        if t_new["p99_ms"] > limit:
            evidence["failed"].append(f"p99 {t_new['p99_ms']:.2f} ms > {limit:.2f} ms")
    if evidence["failed"]:
        return False, evidence
    if accuracy is not None and accuracy["verdict"] == "wait":
        evidence["waiting"] = accuracy["note"]
        return None, evidence
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
