"""Robust aggregation: one poisoned edge among 4 moves FedAvg but not the median or the trimmed mean."""
from __future__ import annotations

import numpy as np
import pytest

from edgeloop.federated.aggregate import AggregationError, aggregate, clip
from edgeloop.federated.local import LocalPlan, local_update
from edgeloop.federated.weights import WeightsError, from_bytes, pack, theta_size, to_bytes


def _edges(seed=0, n_edges=4, rows=300, d=5):
    """Four edges drawing from one linear concept (labelled rows differ per edge)."""
    rng = np.random.default_rng(seed)
    true_w = rng.normal(size=d)
    out = []
    for _ in range(n_edges):
        x = rng.normal(size=(rows, d))
        out.append((x, (x @ true_w + 0.3 * rng.normal(size=rows) > 0).astype(np.int64)))
    return out, d


def _honest_updates():
    edges, d = _edges()
    theta0 = np.zeros(theta_size(d, 2))
    mean, inv = np.zeros(d), np.ones(d)
    ups = [local_update(theta0, x, y, mean, inv, 2, LocalPlan(epochs=2, lr=0.2, seed=i)) for i, (x, y) in
           enumerate(edges)]
    return np.stack(ups), [len(y) for _, y in edges]


@pytest.mark.parametrize("attack", ["scaled", "flipped"])
def test_a_poisoned_edge_moves_fedavg_but_not_the_robust_aggregators(attack):
    honest, counts = _honest_updates()
    honest_mean = honest[:3].mean(axis=0)
    scale = np.linalg.norm(honest_mean)
    poisoned = honest.copy()
    poisoned[3] = honest[3] * 50.0 if attack == "scaled" else -20.0 * honest[3]
    moved = np.linalg.norm(aggregate("fedavg", poisoned, counts) - honest_mean)
    assert moved > 2.0 * scale, f"FedAvg is moved by a {attack} update ({moved:.3f} vs norm {scale:.3f})"
    for strategy in ("median", "trimmed_mean"):
        err = np.linalg.norm(aggregate(strategy, poisoned, counts, trim=0.25) - honest_mean)
        assert err < 0.35 * scale, f"{strategy} moved by a {attack} edge: {err:.3f} vs honest norm {scale:.3f}"
    # clipping bounds FedAvg's damage from a scaled update to one honest update's norm
    bound = 1.5 * float(np.linalg.norm(honest, axis=1).max())
    clipped = aggregate("fedavg", poisoned, counts, clip_norm=bound)
    assert np.linalg.norm(clipped - honest_mean) < moved


def test_fedavg_weights_by_sample_count():
    ups = np.array([[1.0, 0.0], [0.0, 1.0]])
    np.testing.assert_allclose(aggregate("fedavg", ups, [3, 1]), [0.75, 0.25])
    # an edge with no rows has no say
    np.testing.assert_allclose(aggregate("median", np.array([[1.0], [2.0], [100.0]]), [1, 1, 0]), [1.5])


def test_clip_and_errors():
    np.testing.assert_allclose(np.linalg.norm(clip(np.array([3.0, 4.0]), 1.0)), 1.0)
    np.testing.assert_allclose(clip(np.array([0.3, 0.4]), 1.0), [0.3, 0.4])
    with pytest.raises(AggregationError, match="strategy: 'mean'"):
        aggregate("mean", [np.zeros(2)], [1])
    with pytest.raises(AggregationError, match="counts"):
        aggregate("fedavg", [np.zeros(2)], [0])
    with pytest.raises(AggregationError, match="shapes"):
        aggregate("median", [np.zeros(2), np.zeros(3)], [1, 1])


def test_weight_bytes_are_bounded_and_finite():
    theta = pack(np.ones((3, 2)), np.zeros(2))
    np.testing.assert_allclose(from_bytes("theta", to_bytes(theta), 8), theta)
    with pytest.raises(WeightsError, match="theta: 12 bytes; expected 32"):
        from_bytes("theta", b"\0" * 12, 8)
    with pytest.raises(WeightsError, match="non-finite"):
        from_bytes("theta", to_bytes(np.array([np.nan, 1.0])), 2)
