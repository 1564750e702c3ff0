"""ADWIN and Page–Hinkley on 0/1 error streams with known change points, over several seeds."""
from __future__ import annotations

import numpy as np
import pytest

from edgeloop.ct.detectors import Adwin, PageHinkley

SEEDS = range(8)
DETECTORS = [Adwin, PageHinkley]


def bernoulli(rng, p, n):
    return (rng.random(n) < p).astype(np.float64)


@pytest.mark.parametrize("cls", DETECTORS)
def test_error_rate_jump_from_10_to_30_percent_is_caught_within_150_samples(cls):
    change = 3000
    delays = []
    for seed in SEEDS:
        rng = np.random.default_rng(seed)
        stream = np.concatenate([bernoulli(rng, 0.1, change), bernoulli(rng, 0.3, 2000)])
        found = cls().update_many(stream)
        assert all(d.index >= change for d in found), f"seed {seed}: false alarm before the change"
        assert found, f"seed {seed}: change not detected"
        delays.append(found[0].index - change)
        assert found[0].mean_after > found[0].mean_before
    assert max(delays) <= 160, delays
    assert np.median(delays) <= 120, delays


@pytest.mark.parametrize("cls", DETECTORS)
@pytest.mark.parametrize("p", [0.05, 0.1, 0.3])
def test_no_false_alarm_in_10k_stationary_samples(cls, p):
    for seed in SEEDS:
        rng = np.random.default_rng(1000 + seed)
        assert cls().update_many(bernoulli(rng, p, 10_000)) == [], f"seed {seed}"


@pytest.mark.parametrize("cls", DETECTORS)
def test_one_at_a_time_equals_batched(cls):
    rng = np.random.default_rng(3)
    stream = np.concatenate([bernoulli(rng, 0.1, 800), bernoulli(rng, 0.4, 400), bernoulli(rng, 0.1, 800),
                             bernoulli(rng, 0.5, 400)])
    one, many = cls(), cls()
    singles = [d for x in stream if (d := one.update(x)) is not None]
    batched = []
    for chunk in np.array_split(stream, 7):
        batched += many.update_many(chunk)
    assert [d.index for d in singles] == [d.index for d in batched]
    assert len(singles) >= 2  # both rises found
    assert "detected at sample" in singles[0].evidence


def test_adwin_adapts_its_window_and_reports_falls_only_when_asked():
    rng = np.random.default_rng(5)
    stream = np.concatenate([bernoulli(rng, 0.4, 2000), bernoulli(rng, 0.05, 1500)])
    up = Adwin()
    assert up.update_many(stream) == []  # a fall in the error rate is not an alarm
    assert up.width <= 1500 and up.mean < 0.1  # but the window forgot the old regime
    both = Adwin(direction="both")
    found = both.update_many(stream)
    assert found and found[0].index >= 2000 and found[0].mean_after < found[0].mean_before


def test_bounded_window_and_bad_arguments():
    a = Adwin(max_window=500)
    a.update_many(np.zeros(5000))
    assert a.width <= 500
    with pytest.raises(ValueError, match="delta"):
        Adwin(delta=2.0)
    with pytest.raises(ValueError, match="lam"):
        PageHinkley(lam=-1)
    with pytest.raises(ValueError, match="finite"):
        PageHinkley().update_many([0.0, float("nan")])
