"""A federated candidate's compression step: the loop's variants, chosen on the edges' holdout counts.

The rows never reach the coordinator; the edges score every variant (``node.federated.score_variants``,
onnxruntime as they serve) and the coordinator chooses the smallest one within tolerance that passes
infra validation against the champion.
"""
from __future__ import annotations

import numpy as np

from edgeloop.coordinator.federated_compression import build_variants, choose, probe_rows, variant_counts
from edgeloop.ct.compression import CompressionPolicy
from edgeloop.ct.infra import InfraPolicy, ServingSignature, SessionSettings
from edgeloop.ct.onnx_export import DenseModel, to_onnx
from edgeloop.node.federated import score_variants
from edgeloop.protocol import mesh_pb2

D, C = 256, 4  # wide enough that int8 weights make the smaller file


def _model(seed: int) -> tuple[bytes, DenseModel]:
    rng = np.random.default_rng(seed)
    dense = DenseModel("logistic", np.zeros(D, np.float32), np.ones(D, np.float32),
                       ((rng.normal(size=(D, C)).astype(np.float32), np.zeros(C, np.float32)),),
                       np.arange(C, dtype=np.int64))
    return to_onnx(dense), dense


def _choose(built, correct, n, champion):
    settings = SessionSettings()
    return choose(built, correct, n, probe_rows(np.zeros(D), np.ones(D)), CompressionPolicy(metric_tolerance=0.01),
                  settings, champion, InfraPolicy(max_latency_ratio=100.0, runs=20, max_seconds=0.5),
                  ServingSignature.of_model(champion, settings))


def test_the_edges_score_the_variants_and_the_smallest_within_tolerance_is_chosen():
    champion, _ = _model(0)
    candidate, dense = _model(1)
    built = build_variants(candidate, CompressionPolicy(metric_tolerance=0.01))
    names = [b[0] for b in built if b[1] is not None]
    assert names[0] == "original" and "int8" in names

    # an edge scores each variant on its holdout as it would serve it
    rng = np.random.default_rng(2)
    x = rng.normal(size=(300, D)).astype(np.float32)
    y = dense.predict(x).astype(np.float64)  # the float model is right on every row
    msg = mesh_pb2.FederatedRound(model="m", round_id="r", variants=[b[1] for b in built if b[1] is not None])
    counts = score_variants(msg, x, y)
    assert counts[0] == 300 and counts[names.index("int8")] >= 290
    msg.variants.append(b"not an onnx model")  # a variant the edge cannot load scores 0; the rest still count
    assert score_variants(msg, x, y)[-1] == 0

    # summed over edges: an edge that scored only some variants has no say
    edges = {"a": mesh_pb2.WeightUpdate(holdout_rows=300, variant_correct=counts),
             "b": mesh_pb2.WeightUpdate(holdout_rows=300, variant_correct=counts),
             "old": mesh_pb2.WeightUpdate(holdout_rows=50)}
    correct, n = variant_counts(edges, len(names))
    assert n == 600 and correct == [2 * c for c in counts]

    comp = _choose(built, correct, n, champion)
    rows = {c.name: c for c in comp.candidates}
    assert rows["int8"].size_bytes < rows["original"].size_bytes
    assert comp.chosen == min((c for c in comp.candidates if c.infra_passed and c.within_tolerance),
                              key=lambda c: c.size_bytes).name
    assert comp.chosen in ("int8", "low-rank+int8") and comp.model == dict((b[0], b[1]) for b in built)[comp.chosen]
    assert "holdout rows of the edges" in comp.reason

    # the same variants, but the edges say int8 lost too much: it is refused, a larger one is served
    worse = list(correct)
    for i, name in enumerate(names):
        if name.endswith("int8"):
            worse[i] = int(0.9 * n)
    comp = _choose(built, worse, n, champion)
    rows = {c.name: c for c in comp.candidates}
    assert not rows["int8"].within_tolerance and "accuracy loss 0.1000 > tolerance 0.01" in rows["int8"].note
    assert comp.chosen in ("original", "low-rank")
    # no edge scored them: nothing can be chosen, and the report says why
    none = _choose(built, [0] * len(names), 0, champion)
    assert none.model is None and "no edge scored every variant" in none.reason
