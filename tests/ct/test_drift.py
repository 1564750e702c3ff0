"""Feature drift monitors: calibrated thresholds stay quiet on a stationary stream and alarm on a
shifted one; the profile survives JSON; slices merge; statistics match scipy.stats."""
from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.stats

from edgeloop.ct import drift
from edgeloop.ct.drift import (
    FLEET, ReferenceProfile, SliceHistograms, build_reference, histogram_drift, pca_drift, prediction_reference,
    window_drift,
)

F = 6
NAMES = [f"x{i}" for i in range(F)]
COV = np.eye(F) * 0.5 + 0.5  # correlated features: the PCA has structure to lose


def sample(rng, n, shift=None, cov=COV):
    x = rng.multivariate_normal(np.zeros(F), cov, size=n)
    if shift:
        for f, d in shift.items():
            x[:, f] += d
    return x


@pytest.fixture(scope="module")
def profile():
    rng = np.random.default_rng(7)
    return build_reference(sample(rng, 12_000), NAMES, window=400, n_draws=200, seed=3)


def all_monitors(profile, window, slice_key=FLEET):
    acc = profile.accumulator().update(window)
    out = histogram_drift(profile, acc, slice_key) + window_drift(profile, window, slice_key)
    pca = pca_drift(profile, window, slice_key)
    return out + ([pca] if pca else [])


def test_calibrated_thresholds_stay_quiet_on_a_stationary_stream(profile):
    """Any-alarm rate per window is ~1% by design (family-wise); 60 seeded windows allow 3."""
    alarmed = 0
    for seed in (11, 12):
        rng = np.random.default_rng(seed)
        for _ in range(30):
            results = all_monitors(profile, sample(rng, 400))
            assert {r.monitor for r in results} == {"psi", "js", "ks", "wasserstein", "pca"}
            alarmed += any(r.alarm for r in results)
    assert alarmed <= 3, f"{alarmed} of 60 stationary windows raised an alarm"


def test_a_shifted_feature_alarms_on_every_statistic_and_names_itself(profile):
    rng = np.random.default_rng(5)
    results = all_monitors(profile, sample(rng, 400, shift={2: 0.5}))
    hot = [r for r in results if r.alarm and r.monitor != "pca"]
    assert {r.monitor for r in hot} == {"psi", "js", "ks", "wasserstein"}
    assert {r.subject for r in hot} == {"x2"}
    psi = next(r for r in hot if r.monitor == "psi")
    assert psi.value > psi.threshold and psi.window == 400
    assert "feature 'x2' PSI" in psi.evidence and "calibrated p99 of reference chunks" in psi.evidence
    assert "worst bin [" in psi.evidence and "→" in psi.evidence


def test_fixed_thresholds_are_the_usual_defaults():
    rng = np.random.default_rng(1)
    prof = build_reference(sample(rng, 3000), NAMES, thresholds="fixed")
    assert prof.pca is not None  # 3000 rows give 6 chunks of the default 500-row window
    assert prof.threshold_source == "fixed"
    assert prof.thresholds["psi"] == (0.25,) * F and prof.thresholds["js"] == (0.1,) * F
    quiet = histogram_drift(prof, prof.accumulator().update(sample(rng, 500)))
    assert not any(r.alarm for r in quiet)
    loud = window_drift(prof, sample(rng, 500, shift={0: 1.0}))
    ks = [r for r in loud if r.monitor == "ks" and r.alarm]  # p=0.05 per test: not family-wise
    assert "x0" in {r.subject for r in ks} and "KS critical value at p=0.05" in ks[0].evidence


def test_pca_catches_a_broken_correlation_that_the_marginals_hide(profile):
    rng = np.random.default_rng(9)
    quiet = [pca_drift(profile, sample(rng, 400)) for _ in range(5)]
    assert not any(r.alarm for r in quiet)
    loose = sample(rng, 400, cov=np.eye(F))  # same means, correlation gone
    r = pca_drift(profile, loose)
    assert r.alarm and r.value > r.threshold
    assert "reconstruction error" in r.evidence and "± 3×" in r.evidence


def test_threshold_grows_for_smaller_windows_and_holds_for_larger_ones(profile):
    assert profile.threshold("psi", 0, 100) > profile.threshold("psi", 0, 400) == profile.threshold("psi", 0, 1600)
    assert profile.threshold("ks", 0, 100) == pytest.approx(
        profile.threshold("ks", 0, 400) * ((1 / 100 + 1 / 11_600) / (1 / 400 + 1 / 11_600)) ** 0.5)
    rng = np.random.default_rng(21)
    for n in (100, 1600):
        for _ in range(4):
            assert not any(r.alarm for r in all_monitors(profile, sample(rng, n))), n
    big = all_monitors(profile, sample(rng, 1600, shift={4: 0.4}))
    assert {r.subject for r in big if r.alarm and r.monitor != "pca"} == {"x4"}


@pytest.mark.parametrize("ties", [False, True])
def test_statistics_match_scipy(ties):
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=700), rng.normal(0.2, 1.3, size=300)
    if ties:  # discrete values: many ties within and across the samples
        a, b = np.round(a * 2) / 2, np.round(b * 2) / 2
    a, b = np.sort(a), np.sort(b)
    ks, w = drift._ks_and_wasserstein(a, b)
    assert ks == pytest.approx(scipy.stats.ks_2samp(a, b).statistic, abs=1e-12)
    assert w == pytest.approx(scipy.stats.wasserstein_distance(a, b), rel=1e-10)


def test_profile_round_trips_through_json_and_rejects_bad_documents(profile):
    text = profile.to_json()
    assert ReferenceProfile.from_json(text) == profile
    doc = json.loads(text)
    for mutate, field in [
        (lambda d: d.update(format=99), "format"),
        (lambda d: d["features"][0].update(edges=[1.0, 0.0]), "features[0].edges"),
        (lambda d: d["features"][1].update(name="../etc"), "feature name"),
        (lambda d: d["thresholds"].update(psi=[0.1]), "thresholds.psi"),
        (lambda d: d["pca"].update(scale=[0.0] * F), "pca.scale"),
        (lambda d: d.pop("window"), "window"),
    ]:
        bad = json.loads(text)
        mutate(bad)
        with pytest.raises(ValueError, match=field.replace("[", r"\[").replace("]", r"\]").replace(".", r"\.")):
            ReferenceProfile.from_json(json.dumps(bad))
    with pytest.raises(ValueError, match="at most"):
        ReferenceProfile.from_json(text, max_bytes=100)
    assert doc["features"][0]["name"] == "x0"


def test_slices_are_monitored_apart_and_merged_for_the_fleet(profile):
    rng = np.random.default_rng(4)
    slices = SliceHistograms(profile)
    slices.update("edge-a", sample(rng, 400))
    slices.update("edge-b", sample(rng, 400, shift={1: 0.8}))
    shipped = profile.accumulator().update(sample(rng, 400)).to_state()  # an edge's own accumulator
    slices.merge_state("edge-c", shipped)
    assert slices.keys() == ["edge-a", "edge-b", "edge-c"]
    fleet = slices.fleet()
    assert np.array_equal(fleet.counts, sum(slices.get(k).counts for k in slices.keys()))
    per_slice = {k: histogram_drift(profile, slices.get(k), k) for k in slices.keys()}
    assert not any(r.alarm for r in per_slice["edge-a"] + per_slice["edge-c"])
    hot = [r for r in per_slice["edge-b"] if r.alarm]
    assert hot and {r.subject for r in hot} == {"x1"} and all(r.slice_key == "edge-b" for r in hot)
    assert all(r.window == 1200 for r in histogram_drift(profile, fleet, FLEET))
    with pytest.raises(ValueError, match="slice_key"):
        slices.update("../x", sample(rng, 10))
    with pytest.raises(ValueError, match="reserved"):
        slices.update(FLEET, sample(rng, 10))


def test_categorical_feature_uses_chi_square():
    rng = np.random.default_rng(8)
    ref = np.column_stack([rng.normal(size=6000), rng.choice([0.0, 1.0, 2.0], p=[0.5, 0.3, 0.2], size=6000)])
    prof = build_reference(ref, ["load", "region"], ["numeric", "categorical"], window=300, n_draws=150)
    same = np.column_stack([rng.normal(size=300), rng.choice([0.0, 1.0, 2.0], p=[0.5, 0.3, 0.2], size=300)])
    moved = np.column_stack([rng.normal(size=300), rng.choice([0.0, 1.0, 2.0], p=[0.2, 0.3, 0.5], size=300)])
    assert not any(r.alarm for r in window_drift(prof, same))
    hot = [r for r in window_drift(prof, moved) if r.alarm]
    assert [(r.monitor, r.subject) for r in hot] == [("chi2", "region")]
    assert "value 2" in hot[0].evidence  # the worst bin names the category


def test_constant_reference_column_still_shows_a_change():
    rng = np.random.default_rng(2)
    ref = np.column_stack([rng.normal(size=4000), np.full(4000, 0.42)])
    prof = build_reference(ref, ["a", "b"], window=200, n_draws=100)
    moved = np.column_stack([rng.normal(size=200), rng.uniform(0.3, 0.9, size=200)])
    hot = {r.subject for r in histogram_drift(prof, prof.accumulator().update(moved)) if r.alarm}
    assert hot == {"b"}


def test_prediction_drift_on_class_probabilities():
    rng = np.random.default_rng(6)
    p1 = rng.beta(2, 5, size=5000)
    prof = prediction_reference(np.column_stack([1 - p1, p1]), labels=["down", "up"], window=250, n_draws=100)
    assert prof.names == ("p(down)", "p(up)")
    q1 = rng.beta(5, 2, size=250)  # the model now says "up" much more often
    hot = [r for r in histogram_drift(prof, prof.accumulator().update(np.column_stack([1 - q1, q1]))) if r.alarm]
    assert {r.subject for r in hot} == {"p(down)", "p(up)"}


def test_bad_arguments_name_the_field(profile):
    with pytest.raises(ValueError, match="names must be"):
        build_reference(np.zeros((100, 2)), ["a"])
    with pytest.raises(ValueError, match="at least 2 windows"):
        build_reference(np.zeros((100, 2)), ["a", "b"], window=80)
    with pytest.raises(ValueError, match="finite"):
        build_reference(np.full((2000, 2), np.nan), ["a", "b"])
    with pytest.raises(ValueError, match="current counts must have shape"):
        histogram_drift(profile, np.zeros((2, 3)))
    with pytest.raises(ValueError, match="window must be 2-D"):
        window_drift(profile, np.zeros((10, 2)))


def test_elec2_constant_columns_alarm_only_once_they_start_to_vary():
    """Real data: vicprice, vicdemand and transfer are constant until row 17,424, then vary."""
    import csv
    from pathlib import Path

    path = Path(__file__).resolve().parents[3] / "shared" / "data" / "elec2.csv"
    with path.open() as fh:
        reader = csv.reader(fh)
        names = next(reader)[:-1]
        data = np.array([[float(v) for v in row[:-1]] for row in reader])
    prof = build_reference(data[5000:15000], names, window=336, n_draws=100)  # a week of half-hours
    watched = {"vicprice", "vicdemand", "transfer"}

    def hot(lo):
        w = data[lo: lo + 336]
        return {r.subject for r in histogram_drift(prof, prof.accumulator().update(w)) if r.alarm} & watched

    assert hot(15_500) == set() and hot(16_800) == set()
    assert hot(17_424) == watched and hot(18_000) == watched


def test_prediction_drift_on_predicted_classes():
    rng = np.random.default_rng(12)
    pred = rng.choice([0.0, 1.0, 2.0], p=[0.6, 0.3, 0.1], size=6000)
    prof = prediction_reference(pred, labels=[0, 1, 2], window=300, n_draws=100)
    assert prof.features[0].kind == "categorical" and prof.names == ("prediction",)
    same = rng.choice([0.0, 1.0, 2.0], p=[0.6, 0.3, 0.1], size=300)[:, None]
    moved = rng.choice([0.0, 1.0, 2.0], p=[0.3, 0.3, 0.4], size=300)[:, None]
    assert not any(r.alarm for r in window_drift(prof, same))
    hot = [r for r in window_drift(prof, moved) if r.alarm]
    assert [r.monitor for r in hot] == ["chi2"] and "worst bin value 2: 9.8% → " in hot[0].evidence


def test_familywise_thresholds_ignore_exact_zeros_and_sit_above_the_empirical_quantile():
    rng = np.random.default_rng(0)
    draws = np.column_stack([rng.lognormal(-3, 0.3, 200), np.where(rng.random(200) < 0.2, 0.0,
                                                                   rng.lognormal(-3, 0.3, 200))])
    t = drift._familywise_thresholds(draws, 0.99)
    assert np.all(t >= np.quantile(draws, 0.99, axis=0))
    assert t[1] == pytest.approx(t[0], rel=0.3)  # the zeros do not blow up the fitted tail
    assert np.all(t < 0.2)
