"""Performance metrics on labelled windows match scikit-learn, and their intervals cover the truth."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score, log_loss

from edgeloop.ct.performance import (
    classification_metrics, expected_calibration_error, regression_metrics, wilson_interval,
)


def calibrated_window(rng, n, classes=3):
    logits = rng.normal(size=(n, classes)) * 2
    proba = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    y = np.array([rng.choice(classes, p=p) for p in proba])  # labels drawn from the model's own beliefs
    return y, proba


def test_classification_metrics_match_sklearn():
    rng = np.random.default_rng(0)
    y, proba = calibrated_window(rng, 600)
    m = classification_metrics(y, proba)
    pred = proba.argmax(axis=1)
    assert m["accuracy"].value == pytest.approx(accuracy_score(y, pred))
    assert m["f1_macro"].value == pytest.approx(f1_score(y, pred, average="macro"))
    assert m["log_loss"].value == pytest.approx(log_loss(y, proba, labels=[0, 1, 2]))
    for metric in m.values():
        assert metric.low <= metric.value <= metric.high and metric.n == 600
    assert m["accuracy"].higher_is_better and not m["log_loss"].higher_is_better
    assert "accuracy" in m["accuracy"].describe() and "n=600" in m["accuracy"].describe()


def test_binary_probability_vector_is_accepted():
    y = np.array([0, 1, 1, 0, 1])
    m = classification_metrics(y, np.array([0.2, 0.9, 0.4, 0.1, 0.7]))
    assert m["accuracy"].value == pytest.approx(0.8)


def test_ece_is_small_for_a_calibrated_model_and_large_for_an_overconfident_one():
    rng = np.random.default_rng(1)
    y, proba = calibrated_window(rng, 4000)
    assert expected_calibration_error(proba, y) < 0.03
    sharp = np.zeros_like(proba)
    sharp[np.arange(len(y)), proba.argmax(axis=1)] = 1.0  # always 100% sure
    assert expected_calibration_error(sharp, y) > 0.15


def test_wilson_interval_known_values_and_coverage():
    lo, hi = wilson_interval(81, 100)
    assert lo == pytest.approx(0.7222, abs=1e-3) and hi == pytest.approx(0.8749, abs=1e-3)
    assert wilson_interval(0, 20)[0] == 0.0 and wilson_interval(20, 20)[1] == 1.0
    rng = np.random.default_rng(2)
    covered = 0
    for _ in range(400):
        k = int((rng.random(200) < 0.9).sum())
        lo, hi = wilson_interval(k, 200)
        covered += lo <= 0.9 <= hi
    assert covered >= 0.92 * 400


def test_regression_metrics_and_interval():
    rng = np.random.default_rng(3)
    y = rng.normal(size=500)
    f = y + rng.normal(0, 0.5, size=500)
    m = regression_metrics(y, f)
    assert m["mae"].value == pytest.approx(np.abs(f - y).mean())
    assert m["rmse"].value == pytest.approx(np.sqrt(((f - y) ** 2).mean()))
    assert m["rmse"].low < 0.5 < m["rmse"].high
    assert m["mae"].low < 0.5 * np.sqrt(2 / np.pi) < m["mae"].high


def test_bad_windows_are_refused_with_the_field_named():
    with pytest.raises(ValueError, match="y_true must be class indices in 0..1"):
        classification_metrics(np.array([0, 2]), np.array([[0.5, 0.5], [0.4, 0.6]]))
    with pytest.raises(ValueError, match="y_true must have 2 labels"):
        classification_metrics(np.array([0]), np.array([[0.5, 0.5], [0.4, 0.6]]))
    with pytest.raises(ValueError, match="proba must hold finite"):
        classification_metrics(np.array([0]), np.array([[np.nan, 0.5]]))
    with pytest.raises(ValueError, match="same number"):
        regression_metrics([1.0, 2.0], [1.0])


def test_judge_turns_a_metric_into_a_monitor_verdict():
    from edgeloop.ct.performance import Metric, judge

    bad = Metric("accuracy", 0.64, 0.60, 0.68, 400, True)
    r = judge(bad, floor=0.7, champion_score=0.8, margin=0.05, slice_key="edge-1")
    assert r.alarm and r.threshold == 0.75 and r.slice_key == "edge-1" and r.monitor == "accuracy"
    assert r.evidence.endswith("is below the floor 0.7 and below the champion's validation 0.8 − 0.05 = 0.75 "
                               "(whole interval)")
    noisy = Metric("accuracy", 0.69, 0.60, 0.78, 100, True)  # the interval still reaches both bars
    assert not judge(noisy, floor=0.7, champion_score=0.8, margin=0.05).alarm
    assert not judge(bad, floor=0.7, min_rows=500).alarm  # too few rows to judge
    loss = Metric("log_loss", 0.7, 0.62, 0.78, 300, False)
    r = judge(loss, floor=0.6)
    assert r.alarm and "above the floor 0.6" in r.evidence
