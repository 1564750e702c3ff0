"""The benchmark baselines compute what the kernels compute (else a ratio means nothing),
and ``--check`` turns a missed target into exit status 1."""
import numpy as np
import pytest

from edgeloop.bench.harness import Case, Result
from edgeloop.bench.kernel_cases_stats import histogram_baselines, hrw_assign_numpy, hrw_first_numpy
from edgeloop.bench.kernels import exit_status
from edgeloop.kernels import HistogramAccumulator, HrwNodes, hrw_assign, stable_hash_many


@pytest.mark.parametrize("n_bins", [1, 2, 10, 40])
def test_every_histogram_baseline_gives_the_kernels_counts(n_bins):
    rng = np.random.default_rng(n_bins)
    edges = np.sort(rng.normal(size=(9, n_bins + 1)), axis=1)
    x = rng.normal(size=(33, 9)) * 2  # values beyond both end edges too
    x[0, 0] = edges[0, min(1, n_bins)]  # on an edge
    expected = HistogramAccumulator(edges).update(x).counts
    forms = histogram_baselines(x, edges)
    assert len(forms) >= 2
    for name, form in forms.items():
        np.testing.assert_array_equal(form(), expected, err_msg=name)


@pytest.mark.parametrize("weighted", [False, True])
def test_numpy_hrw_baselines_pick_the_kernels_owner(weighted):
    rng = np.random.default_rng(3)
    nodes = stable_hash_many([f"node-{i}" for i in range(37)])
    weights = rng.uniform(0.5, 4.0, nodes.size) if weighted else None
    keys = rng.integers(0, 2**64 - 1, 500, dtype=np.uint64)
    prepared = HrwNodes(nodes, weights)
    firsts = [hrw_first_numpy(int(k), nodes, weights) for k in keys]
    assert firsts == [prepared.first(int(k)) for k in keys]
    if weighted:
        np.testing.assert_array_equal(hrw_assign_numpy(keys, nodes, weights), hrw_assign(keys, nodes, weights))


def test_check_turns_a_missed_target_into_exit_status_1(capsys):
    case = Case("k", "s", lambda: None, lambda: None, "b", target=0.5)
    hit, miss = Result(case, 1.0, 4.0), Result(case, 3.0, 4.0)
    assert exit_status([hit], check=True) == 0
    assert exit_status([hit, miss], check=False) == 0
    assert exit_status([hit, miss], check=True) == 1
    assert "0.750 > 0.50" in capsys.readouterr().out
