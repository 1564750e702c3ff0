"""Evaluation: time-ordered holdout, overall margins, per-slice regressions, and the reason in words."""
from __future__ import annotations

import numpy as np
import pytest

from edgeloop.ct.evaluation import EvaluationPolicy, Predictions, compare, evaluate, score, time_split
from edgeloop.ct.trainers import Dataset, LogisticRegressionTrainer, TrainingError


def labelled(correct_a, correct_b, edges):
    """A holdout and two models' labels, right exactly where ``correct_*`` is True."""
    y = np.arange(len(edges)) % 2
    a = np.where(correct_a, y, 1 - y)
    b = np.where(correct_b, y, 1 - y)
    holdout = Dataset(np.zeros((len(y), 1), np.float32), y, slices={"edge": np.asarray(edges)})
    return holdout, Predictions(label=a), Predictions(label=b)


def test_time_split_holdout_is_newer_than_every_training_row():
    ts = np.array([3, 1, 2, 5, 5, 5, 4, 6], float)
    data = Dataset(np.arange(8, dtype=np.float32)[:, None], np.zeros(8, int), timestamps=ts)
    train, hold = time_split(data, 3)  # the boundary timestamp 5 is shared: all of it goes to the holdout
    assert train.timestamps.max() < hold.timestamps.min()
    assert sorted(hold.timestamps.tolist()) == [5, 5, 5, 6] and len(train) == 4
    train, hold = time_split(data, 0.25)
    assert hold.timestamps.tolist() == [5, 6] or hold.timestamps.min() > train.timestamps.max()
    with pytest.raises(TrainingError, match="holdout"):
        time_split(data, 8)
    with pytest.raises(TrainingError, match="same timestamp"):
        time_split(Dataset(data.X, data.y, timestamps=np.ones(8)), 2)


def test_blessed_when_better_overall_and_on_every_slice():
    rng = np.random.default_rng(0)
    edges = np.repeat(["a", "b"], 500)
    holdout, a, b = labelled(rng.random(1000) < 0.9, rng.random(1000) < 0.8, edges)
    result = compare(a, b, holdout, EvaluationPolicy(min_gain=0.02))
    assert result.blessed, result.reason
    assert result.reason.startswith("blessed: accuracy 0.9") and "vs champion 0.8" in result.reason
    assert result.gain == pytest.approx(result.challenger - result.champion)
    assert {(s.slice, s.value) for s in result.slices} == {("edge", "'a'"), ("edge", "'b'")}
    assert all(s.considered and not s.regressed for s in result.slices)


def test_refused_when_the_margin_is_not_met():
    rng = np.random.default_rng(1)
    ok = rng.random(1000) < 0.85
    holdout, a, b = labelled(ok | (rng.random(1000) < 0.05), ok, np.repeat(["a"], 1000))
    gain = compare(a, b, holdout).gain
    assert 0 < gain < 0.05
    refused = compare(a, b, holdout, EvaluationPolicy(min_gain=0.05))
    assert not refused.blessed and "refused" in refused.reason and "0.0500" in refused.reason
    rel = compare(a, b, holdout, EvaluationPolicy(min_relative_gain=0.10))
    assert not rel.blessed and rel.relative_gain < 0.10
    same = compare(b, b, holdout)
    assert not same.blessed and same.gain == 0  # equal is not better


def test_refused_when_one_slice_regresses_even_though_overall_is_better():
    rng = np.random.default_rng(2)
    edges = np.array(["a"] * 800 + ["b"] * 200)
    chall = np.concatenate([rng.random(800) < 0.97, rng.random(200) < 0.70])
    champ = np.concatenate([rng.random(800) < 0.80, rng.random(200) < 0.85])
    holdout, a, b = labelled(chall, champ, edges)
    result = compare(a, b, holdout, EvaluationPolicy(max_slice_regression=0.05, min_slice_samples=100))
    assert result.challenger > result.champion and not result.blessed
    assert "slice edge='b'" in result.reason and "n=200" in result.reason
    # The same regression on a slice too small to judge does not block the blessing.
    small = compare(a, b, holdout, EvaluationPolicy(max_slice_regression=0.05, min_slice_samples=300))
    assert small.blessed, small.reason
    assert [s.considered for s in small.slices] == [True, False]


def test_slice_by_a_declared_feature_and_unknown_slices_are_reported():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 600)
    region = np.repeat([0.0, 1.0, 2.0], 200).astype(np.float32)
    x = np.stack([region, rng.random(600)], 1)
    good = np.where(region == 1.0, 1 - y, y)  # challenger wrong on region 1 only
    holdout = Dataset(x, y, feature_names=("region", "noise"))
    result = compare(Predictions(label=good), Predictions(label=np.where(rng.random(600) < 0.5, y, 1 - y)), holdout,
                     EvaluationPolicy(slice_by=("region", "edge")))
    assert not result.blessed and "slice region=1.0" in result.reason
    assert result.skipped_slices == ("edge: not a slice key or feature of the holdout",)


def test_metrics_and_lower_is_better():
    y = np.array([0, 1, 1, 0])
    proba = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.5, 0.5]])
    assert score("log_loss", y, proba=proba, classes=np.array([0, 1])) == pytest.approx(
        -np.mean(np.log([0.9, 0.8, 0.4, 0.5])))
    assert score("f1_macro", y, label=np.array([0, 1, 0, 0])) == pytest.approx((0.8 + 2 / 3) / 2)
    holdout = Dataset(np.zeros((4, 1), np.float32), np.array([1.0, 2.0, 3.0, 4.0]))
    better, worse = Predictions(value=np.array([1.1, 2, 3, 4])), Predictions(value=np.array([2.0, 2, 3, 5]))
    assert compare(better, worse, holdout, EvaluationPolicy(metric="mae", slice_by=())).blessed
    assert not compare(worse, better, holdout, EvaluationPolicy(metric="rmse", slice_by=())).blessed
    with pytest.raises(TrainingError, match="metric"):
        EvaluationPolicy(metric="auc")


def test_first_model_against_a_floor():
    holdout, a, _ = labelled(np.ones(10, bool), np.ones(10, bool), ["a"] * 10)
    assert compare(a, None, holdout).blessed
    low, bad, _ = labelled(np.zeros(10, bool), np.ones(10, bool), ["a"] * 10)
    r = compare(bad, None, low, EvaluationPolicy(min_metric=0.6))
    assert not r.blessed and "misses the floor 0.6000" in r.reason


def test_evaluate_real_models_after_a_concept_change():
    """Champion learned the old rule; the challenger the new one; scored on the newest rows in onnxruntime."""
    rng = np.random.default_rng(4)
    x = rng.normal(size=(3000, 3)).astype(np.float32)
    y = (x[:, 0] > 0).astype(int)
    y[1500:] = (x[1500:, 1] > 0).astype(int)
    edges = np.where(rng.random(3000) < 0.5, "edge-a", "edge-b")
    data = Dataset(x, y, slices={"edge": edges}, timestamps=np.arange(3000.0))
    old, rest = time_split(data, 1500)
    new, holdout = time_split(rest, 500)
    champion = LogisticRegressionTrainer().fit(old, new).model
    challenger = LogisticRegressionTrainer().fit(new, new).model
    result = evaluate(challenger, champion, holdout, EvaluationPolicy(min_gain=0.1))
    assert result.blessed and result.challenger > 0.95 > 0.7 > result.champion
    assert len([s for s in result.slices if s.considered]) == 2
    back = evaluate(champion, challenger, holdout)
    assert not back.blessed and back.reason.startswith("refused")


def test_results_serialise_to_json_for_the_registry():
    """Evaluations, training reports and compression reports are stored: plain JSON, every number kept."""
    import json

    from edgeloop.ct.compression import compress
    from edgeloop.ct.infra import InfraPolicy

    rng = np.random.default_rng(5)
    x = rng.normal(size=(600, 3)).astype(np.float32)
    y = (x[:, 0] + x[:, 1] > 0).astype(int)
    data = Dataset(x, y, slices={"edge": np.where(np.arange(600) % 2, "a", "b")})
    fit = LogisticRegressionTrainer().fit(data, data)
    ev = evaluate(fit.model, LogisticRegressionTrainer().fit(Dataset(x[:50], y[:50]), data).model, data)
    packed = json.loads(json.dumps({"evaluation": ev.to_dict(), "training": fit.report.to_dict(),
                                    "compression": compress(fit.model, data, infra_policy=InfraPolicy(
                                        runs=20, rounds=2, warmup=2, latency_slack_ms=5.0)).to_dict()}))
    assert packed["evaluation"]["challenger"] == ev.challenger and len(packed["evaluation"]["slices"]) == 2
    assert packed["training"]["model_sha256"] == fit.report.model_sha256
    assert [c["name"] for c in packed["compression"]["candidates"]][0] == "original"
