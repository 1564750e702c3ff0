"""The compression step of a federated candidate: the CT loop's variants, scored on the edges' holdouts.

``ct.compression.compress`` scores each variant on a holdout it is handed; the coordinator holds no
raw row of a federated model, so here the same step runs with the scoring moved to the edges: the
same builders (``low_rank``, ``int8``) and policy (``compression_tolerance``), each variant's
accuracy is the edges' summed holdout counts for it (the EVALUATE phase runs every variant as an
edge serves it), infra validation (serving signature, p99 latency against the champion's) runs here
on probe rows drawn from the champion's own standardisation (latency and shape need no real rows),
and the smallest variant that qualifies is chosen, reported as the loop reports it (``CompressionResult``).
"""
from __future__ import annotations

import numpy as np

from edgeloop.ct.compression import (Candidate, CompressionPolicy, CompressionResult, build_variants, judged,
                                     pick)
from edgeloop.ct.infra import InfraPolicy, ServingSignature, SessionSettings, validate_infra

PROBE_ROWS = 256


def probe_rows(mean: np.ndarray, inv_std: np.ndarray, n: int = PROBE_ROWS, seed: int = 0) -> np.ndarray:
    """Rows shaped like the served ones (the champion's mean and scale), for latency and signature checks."""
    rng = np.random.default_rng(seed)
    scale = 1.0 / np.where(np.asarray(inv_std, np.float64) > 0, inv_std, 1.0)
    return (np.asarray(mean, np.float64) + rng.standard_normal((n, len(mean))) * scale).astype(np.float32)


def variant_counts(evals: dict, n_variants: int) -> tuple[list[int], int]:
    """Summed correct counts per variant and the holdout rows behind them (edges that scored every variant)."""
    correct, rows = [0] * n_variants, 0
    for u in evals.values():
        if len(u.variant_correct) != n_variants or any(c > u.holdout_rows for c in u.variant_correct):
            continue  # an edge that could not score them all has no say in the choice
        rows += int(u.holdout_rows)
        for i, c in enumerate(u.variant_correct):
            correct[i] += int(c)
    return correct, rows


def choose(built, correct: list[int], n_rows: int, probe: np.ndarray, policy: CompressionPolicy,
           settings: SessionSettings, champion: bytes, infra_policy: InfraPolicy,
           signature: ServingSignature) -> CompressionResult:
    """The smallest built variant whose edge-measured accuracy is within tolerance and which passes infra."""
    sent = [i for i, b in enumerate(built) if b[1] is not None]  # the order the variants were sent in
    score = {built[i][0]: correct[k] / n_rows for k, i in enumerate(sent)} if n_rows else {}
    reference = score.get("original")
    rows = []
    for name, data, rw, note in built:
        if data is None:
            rows.append(Candidate(name, 0, None, None, None, False, False, False, note, rw))
            continue
        if reference is None or name not in score:
            rows.append(Candidate(name, len(data), None, None, None, False, False, False,
                                  "cannot be scored: no edge scored every variant on its holdout", rw))
            continue
        value = score[name]
        infra = validate_infra(data, probe, signature, settings, champion, infra_policy)
        rows.append(judged(name, len(data), value, reference - value, infra, policy, rw))
    return pick(built, rows, reference, policy, where=f" on {n_rows} holdout rows of the edges")


__all__ = ["build_variants", "choose", "probe_rows", "variant_counts"]
