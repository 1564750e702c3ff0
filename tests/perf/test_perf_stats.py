"""Percentile math and level summaries of ``edgeloop perf``."""
import math

import pytest

from edgeloop.perf.stats import percentile, summarize


def test_nearest_rank_percentiles_of_one_to_hundred():
    values = list(range(1, 101))
    assert percentile(values, 50) == 50
    assert percentile(values, 90) == 90
    assert percentile(values, 99) == 99
    assert percentile(values, 100) == 100
    assert percentile(values, 0.5) == 1


def test_percentile_is_an_observed_sample_not_an_interpolation():
    values = [1.0, 2.0, 10.0, 20.0]
    assert percentile(values, 50) == 2.0
    assert percentile(values, 51) == 10.0
    assert percentile(values, 75) == 10.0
    assert percentile(values, 76) == 20.0
    assert percentile([7.0], 99) == 7.0


@pytest.mark.parametrize("p", [0, -1, 100.1])
def test_percentile_rejects_p_outside_range(p):
    with pytest.raises(ValueError, match=r"percentile p must be in \(0, 100\]"):
        percentile([1.0], p)


def test_percentile_of_empty_sample_is_an_error():
    with pytest.raises(ValueError, match="empty"):
        percentile([], 50)


def test_summarize_converts_to_ms_and_counts_throughput():
    latencies = [0.004, 0.001, 0.003, 0.002]  # unsorted on purpose
    s = summarize(concurrency=4, latencies_s=latencies, errors=1, duration_s=2.0, batch_size=8, stopped_by="count")
    assert s.count == 4 and s.errors == 1
    assert s.p50_ms == pytest.approx(2.0)
    assert s.p90_ms == pytest.approx(4.0)
    assert s.max_ms == pytest.approx(4.0) and s.min_ms == pytest.approx(1.0)
    assert s.mean_ms == pytest.approx(2.5)
    assert s.requests_per_s == pytest.approx(2.0)
    assert s.infer_per_s == pytest.approx(16.0)


def test_summarize_without_successes_reports_nan_latencies():
    s = summarize(concurrency=1, latencies_s=[], errors=3, duration_s=0.5, batch_size=1, stopped_by="time")
    assert s.count == 0 and s.errors == 3 and s.requests_per_s == 0.0
    assert math.isnan(s.p50_ms) and math.isnan(s.max_ms)
