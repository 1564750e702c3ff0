"""Performance of a model on a labelled window, each metric with its window size and a 95% interval.

Labels arrive late and windows are small, so a point value alone invites retraining on noise: every
:class:`Metric` carries an interval (Wilson for accuracy, a normal approximation for the per-row
means log-loss and MAE, the delta method for RMSE, a seeded bootstrap for macro-F1 and ECE) and the
trigger compares the interval, not only the value, with the floor.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["Metric", "classification_metrics", "regression_metrics", "wilson_interval", "expected_calibration_error"]

Z95 = 1.959963984540054
MAX_CLASSES = 1024


@dataclass(frozen=True)
class Metric:
    """A metric over a window: value, 95% interval, rows, and which way is better."""

    name: str
    value: float
    low: float
    high: float
    n: int
    higher_is_better: bool

    def describe(self) -> str:
        return f"{self.name} {self.value:.4g} (95% CI {self.low:.4g}–{self.high:.4g}, n={self.n})"


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a proportion (sound near 0 and 1, unlike the normal one)."""
    if n <= 0:
        return (0.0, 1.0)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def _mean_interval(values: np.ndarray) -> tuple[float, float, float]:
    m = float(values.mean())
    half = Z95 * float(values.std(ddof=1)) / math.sqrt(values.size) if values.size > 1 else math.inf
    return m, m - half, m + half


def _bootstrap(fn, n: int, n_boot: int, seed: int) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    vals = np.array([fn(rng.integers(0, n, size=n)) for _ in range(n_boot)])
    return float(np.quantile(vals, 0.025)), float(np.quantile(vals, 0.975))


def _macro_f1(y: np.ndarray, p: np.ndarray, n_classes: int) -> float:
    tp = np.bincount(y[y == p], minlength=n_classes).astype(np.float64)
    pred = np.bincount(p, minlength=n_classes).astype(np.float64)
    true = np.bincount(y, minlength=n_classes).astype(np.float64)
    denom = pred + true
    present = true > 0  # classes absent from the window's labels are not averaged in
    f1 = np.where(denom > 0, 2 * tp / np.maximum(denom, 1), 0.0)
    return float(f1[present].mean()) if present.any() else 0.0


def expected_calibration_error(proba: np.ndarray, y: np.ndarray, bins: int = 10) -> float:
    """ECE: |accuracy - confidence| over equal-width confidence bins, weighted by bin size."""
    conf = proba.max(axis=1)
    correct = (proba.argmax(axis=1) == y).astype(np.float64)
    idx = np.minimum((conf * bins).astype(np.int64), bins - 1)
    n = np.bincount(idx, minlength=bins).astype(np.float64)
    acc = np.bincount(idx, weights=correct, minlength=bins)
    cf = np.bincount(idx, weights=conf, minlength=bins)
    ok = n > 0
    return float(np.sum(np.abs(acc[ok] - cf[ok])) / max(conf.size, 1))


def _labels(y, name: str, n_classes: int) -> np.ndarray:
    arr = np.asarray(y)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
            raise ValueError(f"{name} must hold integer class indices, got non-integer values")
    elif arr.dtype.kind not in "iub":
        raise ValueError(f"{name} must hold integer class indices, got dtype {arr.dtype}")
    arr = arr.astype(np.int64)
    if arr.size and (arr.min() < 0 or arr.max() >= n_classes):
        bad = arr[(arr < 0) | (arr >= n_classes)][0]
        raise ValueError(f"{name} must be class indices in 0..{n_classes - 1}, got {bad}")
    return arr


def classification_metrics(y_true, proba, *, n_boot: int = 200, seed: int = 0) -> dict[str, Metric]:
    """Accuracy, macro-F1, log-loss and ECE of class probabilities ``proba`` (n, C) on labels (n,).

    A 1-D ``proba`` is taken as P(class 1) of a binary model.
    """
    p = np.asarray(proba, dtype=np.float64)
    if p.ndim == 1:
        p = np.column_stack([1.0 - p, p])
    if p.ndim != 2 or not 2 <= p.shape[1] <= MAX_CLASSES:
        raise ValueError(f"proba must be (n,) or (n, 2..{MAX_CLASSES} classes), got shape {p.shape}")
    if not np.all(np.isfinite(p)) or p.min() < 0:
        raise ValueError("proba must hold finite probabilities >= 0")
    n, C = p.shape
    y = _labels(y_true, "y_true", C)
    if y.size != n:
        raise ValueError(f"y_true must have {n} labels (one per row of proba), got {y.size}")
    if n == 0:
        raise ValueError("a window needs at least one labelled row, got 0")
    p = p / np.maximum(p.sum(axis=1, keepdims=True), 1e-300)
    pred = p.argmax(axis=1)
    hits = int(np.sum(pred == y))
    lo, hi = wilson_interval(hits, n)
    out = {"accuracy": Metric("accuracy", hits / n, lo, hi, n, True)}
    f1 = _macro_f1(y, pred, C)
    out["f1_macro"] = Metric("f1_macro", f1, *_bootstrap(lambda i: _macro_f1(y[i], pred[i], C), n, n_boot, seed),
                             n, True)
    ll = -np.log(np.clip(p[np.arange(n), y], 1e-15, 1.0))
    m, lo, hi = _mean_interval(ll)
    out["log_loss"] = Metric("log_loss", m, max(lo, 0.0), hi, n, False)
    ece = expected_calibration_error(p, y)
    out["ece"] = Metric("ece", ece, *_bootstrap(lambda i: expected_calibration_error(p[i], y[i]), n, n_boot, seed + 1),
                        n, False)
    return out


def regression_metrics(y_true, y_pred) -> dict[str, Metric]:
    """MAE (normal interval) and RMSE (delta-method interval from the MSE's) of a regressor."""
    y = np.asarray(y_true, dtype=np.float64).reshape(-1)
    f = np.asarray(y_pred, dtype=np.float64).reshape(-1)
    if y.size != f.size or y.size == 0:
        raise ValueError(f"y_true and y_pred must have the same number (>= 1) of values, got {y.size} and {f.size}")
    if not (np.all(np.isfinite(y)) and np.all(np.isfinite(f))):
        raise ValueError("y_true and y_pred must be finite")
    err = f - y
    m, lo, hi = _mean_interval(np.abs(err))
    out = {"mae": Metric("mae", m, max(lo, 0.0), hi, y.size, False)}
    mse, lo2, hi2 = _mean_interval(err * err)
    out["rmse"] = Metric("rmse", math.sqrt(mse), math.sqrt(max(lo2, 0.0)), math.sqrt(max(hi2, 0.0)) if
                         math.isfinite(hi2) else math.inf, y.size, False)
    return out
