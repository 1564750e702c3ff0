"""One edge's part of a round: a few epochs of minibatch SGD from the global weights, and holdout counts.

The loss is softmax cross-entropy on standardised rows, plus (l2/2)||W||^2 and, with ``mu > 0``,
FedProx's proximal term (mu/2)||theta - theta_global||^2, which keeps a local model near the global
one when edges' data differ.  Seeded: the same rows and seed give the same update.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .weights import pack, unpack


@dataclass(frozen=True)
class LocalPlan:
    """What the coordinator asks of each edge in a round."""

    epochs: int = 3
    lr: float = 0.1
    batch_size: int = 32
    l2: float = 1e-4
    mu: float = 0.0  # FedProx proximal weight (0: plain FedAvg local training)
    seed: int = 0


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def standardised(x: np.ndarray, mean: np.ndarray, inv_std: np.ndarray) -> np.ndarray:
    return (np.asarray(x, np.float64) - mean) * inv_std


def loss_and_grad(theta: np.ndarray, z: np.ndarray, idx: np.ndarray, n_classes: int, l2: float,
                  mu: float = 0.0, theta_global: np.ndarray | None = None) -> tuple[float, np.ndarray]:
    """Mean cross-entropy (+ l2 + proximal term) of standardised rows ``z`` with class indices ``idx``."""
    d = z.shape[1]
    w, b = unpack(theta, d, n_classes)
    p = _softmax(z @ w + b)
    n = max(1, len(idx))
    loss = -float(np.log(np.clip(p[np.arange(len(idx)), idx], 1e-12, None)).sum()) / n + 0.5 * l2 * float((w * w).sum())
    p[np.arange(len(idx)), idx] -= 1.0
    grad = pack(z.T @ p / n + l2 * w, p.sum(axis=0) / n)
    if mu > 0.0 and theta_global is not None:
        diff = theta - theta_global
        loss += 0.5 * mu * float(diff @ diff)
        grad = grad + mu * diff
    return loss, grad


def local_update(theta_global: np.ndarray, x: np.ndarray, idx: np.ndarray, mean: np.ndarray, inv_std: np.ndarray,
                 n_classes: int, plan: LocalPlan = LocalPlan()) -> np.ndarray:
    """theta_local - theta_global after ``plan.epochs`` epochs of SGD on (x, idx); zeros when there are no rows."""
    theta_global = np.asarray(theta_global, np.float64)
    theta = theta_global.copy()
    n = len(idx)
    if n == 0:
        return np.zeros_like(theta)
    z = standardised(x, mean, inv_std)
    rng = np.random.default_rng(plan.seed)
    for _ in range(plan.epochs):
        order = rng.permutation(n)
        for start in range(0, n, plan.batch_size):
            rows = order[start:start + plan.batch_size]
            _, grad = loss_and_grad(theta, z[rows], idx[rows], n_classes, plan.l2, plan.mu, theta_global)
            theta -= plan.lr * grad
    return theta - theta_global


def predict_index(theta: np.ndarray, x: np.ndarray, mean: np.ndarray, inv_std: np.ndarray,
                  n_classes: int) -> np.ndarray:
    z = standardised(x, mean, inv_std)
    w, b = unpack(theta, z.shape[1], n_classes)
    return np.argmax(z @ w + b, axis=1)


def correct_count(theta: np.ndarray, x: np.ndarray, idx: np.ndarray, mean: np.ndarray, inv_std: np.ndarray,
                  n_classes: int) -> int:
    """How many holdout rows ``theta`` classifies right (the edge reports counts; the cloud sums them)."""
    if len(idx) == 0:
        return 0
    return int((predict_index(theta, x, mean, inv_std, n_classes) == idx).sum())


__all__ = ["LocalPlan", "correct_count", "local_update", "loss_and_grad", "predict_index", "standardised"]
