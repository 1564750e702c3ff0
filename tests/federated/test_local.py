"""The edge's local step: it learns, it is seeded, and FedProx's term keeps it near the global weights."""
from __future__ import annotations

import numpy as np

from edgeloop.federated.local import LocalPlan, correct_count, local_update, loss_and_grad
from edgeloop.federated.weights import theta_size


def _data(seed=1, rows=400, d=4):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, d))
    return x, (x[:, 0] - x[:, 1] > 0).astype(np.int64)


def test_local_update_learns_and_is_seeded():
    x, y = _data()
    d = x.shape[1]
    theta0 = np.zeros(theta_size(d, 2))
    mean, inv = np.zeros(d), np.ones(d)
    up = local_update(theta0, x, y, mean, inv, 2, LocalPlan(epochs=3, seed=7))
    assert correct_count(theta0 + up, x, y, mean, inv, 2) > 0.9 * len(y)
    np.testing.assert_array_equal(up, local_update(theta0, x, y, mean, inv, 2, LocalPlan(epochs=3, seed=7)))
    assert not np.array_equal(up, local_update(theta0, x, y, mean, inv, 2, LocalPlan(epochs=3, seed=8)))
    assert not local_update(theta0, x[:0], y[:0], mean, inv, 2).any()


def test_fedprox_gradient_and_pull_toward_the_global_weights():
    x, y = _data()
    d = x.shape[1]
    rng = np.random.default_rng(3)
    theta_g = rng.normal(size=theta_size(d, 2))
    theta = theta_g + rng.normal(size=theta_g.shape)
    mean, inv = np.zeros(d), np.ones(d)
    # the proximal term adds mu * (theta - theta_g) to the gradient and mu/2 ||.||^2 to the loss
    l0, g0 = loss_and_grad(theta, x, y, 2, 0.0)
    l1, g1 = loss_and_grad(theta, x, y, 2, 0.0, mu=0.5, theta_global=theta_g)
    np.testing.assert_allclose(g1 - g0, 0.5 * (theta - theta_g), rtol=1e-10)
    np.testing.assert_allclose(l1 - l0, 0.25 * float((theta - theta_g) @ (theta - theta_g)), rtol=1e-10)
    # numerically: the analytic gradient matches finite differences
    eps, i = 1e-6, 2
    bumped = theta.copy()
    bumped[i] += eps
    num = (loss_and_grad(bumped, x, y, 2, 0.0, 0.5, theta_g)[0] - l1) / eps
    assert abs(num - g1[i]) < 1e-4
    # a larger mu keeps the local model closer to the global one
    far = np.linalg.norm(local_update(theta_g, x, y, mean, inv, 2, LocalPlan(epochs=5, mu=0.0)))
    near = np.linalg.norm(local_update(theta_g, x, y, mean, inv, 2, LocalPlan(epochs=5, mu=5.0)))
    assert near < 0.5 * far
