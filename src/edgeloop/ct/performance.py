"""Performance of a model on a labelled window, each metric with its window size and a 95% interval.

Labels arrive late and windows are small, so a point value alone invites retraining on noise: every
:class:`Metric` carries an interval (Wilson for accuracy, a normal approximation for the per-row
means log-loss and MAE, the delta method for RMSE, a seeded bootstrap for macro-F1 and ECE, drawn over
the confusion matrix / calibration table so it costs the same for 100 or 100,000 rows) and the
trigger compares the interval, not only the value, with the floor.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .drift import FLEET, MonitorResult

__all__ = ["Metric", "classification_metrics", "regression_metrics", "wilson_interval", "expected_calibration_error",
           "judge"]

Z95 = 1.959963984540054
MAX_CLASSES = 256


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


def _interval(values: np.ndarray) -> tuple[float, float]:
    return float(np.quantile(values, 0.025)), float(np.quantile(values, 0.975))


def _boot_cells(counts: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    """Bootstrap replicates of a table of counts: resampling the window's rows with replacement
    is a multinomial draw over the table's cells, so a replicate costs O(cells), not O(rows)."""
    flat = counts.reshape(-1).astype(np.float64)
    n = int(flat.sum())
    draws = np.random.default_rng(seed).multinomial(n, flat / n, size=n_boot)
    return draws.reshape((n_boot,) + counts.shape).astype(np.float64)


def _macro_f1(cm: np.ndarray) -> np.ndarray:
    """Macro-F1 from confusion matrices (..., true, pred), over classes present in the labels."""
    tp = np.diagonal(cm, axis1=-2, axis2=-1)
    true = cm.sum(axis=-1)
    pred = cm.sum(axis=-2)
    denom = pred + true
    f1 = np.where(denom > 0, 2 * tp / np.maximum(denom, 1e-300), 0.0)
    present = true > 0
    return (f1 * present).sum(axis=-1) / np.maximum(present.sum(axis=-1), 1)


def _ece_table(proba: np.ndarray, y: np.ndarray, bins: int):
    """(bins, 2) counts of wrong/right predictions per confidence bin, and each bin's mean confidence."""
    conf = proba.max(axis=1)
    correct = (proba.argmax(axis=1) == y).astype(np.int64)
    idx = np.minimum((conf * bins).astype(np.int64), bins - 1)
    table = np.bincount(idx * 2 + correct, minlength=2 * bins).reshape(bins, 2)
    n = table.sum(axis=1)
    mean_conf = np.bincount(idx, weights=conf, minlength=bins) / np.maximum(n, 1)
    return table, mean_conf


def _ece_from_table(table: np.ndarray, mean_conf: np.ndarray) -> np.ndarray:
    n = table.sum(axis=-1)
    total = np.maximum(n.sum(axis=-1), 1e-300)
    return np.abs(table[..., 1] - n * mean_conf).sum(axis=-1) / total


def expected_calibration_error(proba: np.ndarray, y: np.ndarray, bins: int = 10) -> float:
    """ECE: |accuracy - confidence| over equal-width confidence bins, weighted by bin size."""
    table, mean_conf = _ece_table(proba, y, bins)
    return float(_ece_from_table(table, mean_conf))


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
    if isinstance(n_boot, bool) or not isinstance(n_boot, int) or not 20 <= n_boot <= 10_000:
        raise ValueError(f"n_boot must be an int in 20..10000, got {n_boot!r}")
    cm = np.bincount(y * C + pred, minlength=C * C).reshape(C, C)
    out["f1_macro"] = Metric("f1_macro", float(_macro_f1(cm)), *_interval(_macro_f1(_boot_cells(cm, n_boot, seed))),
                             n, True)
    ll = -np.log(np.clip(p[np.arange(n), y], 1e-15, 1.0))
    m, lo, hi = _mean_interval(ll)
    out["log_loss"] = Metric("log_loss", m, max(lo, 0.0), hi, n, False)
    table, mean_conf = _ece_table(p, y, 10)
    # replicates keep each bin's mean confidence: the interval is for the bins' accuracy, the noisy part
    ece_boot = _ece_from_table(_boot_cells(table, n_boot, seed + 1), mean_conf)
    out["ece"] = Metric("ece", float(_ece_from_table(table, mean_conf)), *_interval(ece_boot), n, False)
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


def judge(metric: Metric, *, floor: float | None = None, champion_score: float | None = None,
          margin: float | None = None, min_rows: int = 1, slice_key: str = FLEET) -> MonitorResult:
    """A metric as a monitor verdict: alarm when its whole 95% interval is on the wrong side of the
    floor, or of the champion's validation score minus ``margin`` (plus, for lower-is-better).

    Judging the interval, not the point value, keeps a small window's noise from alarming.  A window
    with fewer than ``min_rows`` rows is reported but never alarms.
    """
    better = metric.higher_is_better
    far = metric.high if better else metric.low
    word = "below" if better else "above"
    bars = []
    if floor is not None:
        bars.append((float(floor), f"the floor {floor:.4g}"))
    if margin is not None and champion_score is not None:
        bar = champion_score - margin if better else champion_score + margin
        bars.append((bar, f"the champion's validation {champion_score:.4g} {'−' if better else '+'} {margin:.4g} "
                          f"= {bar:.4g}"))
    crossed = [text for bar, text in bars if (far < bar if better else far > bar)]
    enough = metric.n >= min_rows
    alarm = bool(crossed) and enough
    threshold = (max(b for b, _ in bars) if better else min(b for b, _ in bars)) if bars else math.nan
    if alarm:
        verdict = f"is {' and '.join(f'{word} {t}' for t in crossed)} (whole interval)"
    elif not bars:
        verdict = "has no floor or champion to compare with"
    elif not enough:
        verdict = f"is not judged: {metric.n} rows < {min_rows}"
    else:
        verdict = f"is not {word} {' or '.join(t for _, t in bars)} (whole interval)"
    return MonitorResult(metric.name, "performance", slice_key, metric.value, threshold,
                         "floor / champion's validation score", alarm, metric.n,
                         f"{metric.describe()} {verdict}")
