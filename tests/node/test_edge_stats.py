"""Edge statistics: learned or reference bin edges, period deltas, PSI gauges, and the coordinator's merge."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
from nodekit import FEATURES, MODEL, Edge, edge_config, start_cloud, wait_for

from edgeloop.node.edge_stats import LEARN_ROWS, EdgeStats, learn_edges, parse_reference


def test_edges_are_learned_once_then_fixed_and_reports_are_period_deltas():
    stats = EdgeStats()
    rng = np.random.default_rng(0)
    first = rng.normal(size=(LEARN_ROWS, 3))
    stats.observe_array("m", 1, "X", False, first)
    report, commit = stats.report()
    assert len(report) == 3
    edges0 = list(report[0].bin_edges)
    assert sum(report[0].counts) == LEARN_ROWS and report[0].n == LEARN_ROWS
    assert report[0].mean == pytest.approx(first[:, 0].mean())
    assert math.isnan(report[0].psi)  # no reference
    commit()
    stats.observe_array("m", 1, "X", False, rng.normal(size=(300, 3)) + 100)
    report, commit = stats.report()
    assert list(report[0].bin_edges) == edges0  # fixed after learning
    assert sum(report[0].counts) == 300 and report[0].n == 300  # only the new period
    assert report[0].counts[-1] == 300  # everything far above the learned edges lands in the last bin
    assert report[0].mean == pytest.approx(100, abs=1)
    # an uncommitted report is sent again, summed with what came since
    stats.observe_array("m", 1, "X", False, rng.normal(size=(10, 3)))
    report2, _ = stats.report()
    assert sum(report2[0].counts) == 310


def test_learned_edges_are_strictly_increasing_even_for_constant_columns():
    edges = learn_edges(np.zeros((100, 2)))
    assert np.all(np.diff(edges, axis=1) > 0)


def test_reference_from_the_manifest_gives_psi():
    ref_edges = [[-10.0, -1.0, 0.0, 1.0, 10.0]] * 2
    ref_counts = [[10, 40, 40, 10]] * 2
    manifest = {"reference_stats": {"X": {"bin_edges": ref_edges, "counts": ref_counts}}}
    stats = EdgeStats(lambda model, version: manifest)
    rng = np.random.default_rng(1)
    same = np.column_stack([rng.normal(size=2000) * 0.8, rng.normal(size=2000) * 0.8 + 3])
    stats.observe_array("m", 1, "X", False, same)
    values = {f: v for _m, _v, _t, f, v in stats.psi_values()}
    assert values[0] < 0.1 < values[1]  # feature 1 shifted by 3: drift


def test_bad_reference_is_ignored():
    assert parse_reference({"reference_stats": {"X": {"bin_edges": [[1, 0]], "counts": [[1]]}}}, "X", 1) is None
    assert parse_reference({"reference_stats": "nope"}, "X", 1) is None
    assert parse_reference(None, "X", 1) is None


def test_served_models_statistics_and_psi_reach_metrics_and_the_coordinator(tmp_path):
    repo = tmp_path / "edge-a-models"
    from edgeloop.serving.demo_models import build_mlp, write_model

    write_model(repo, MODEL, 1, build_mlp())
    manifest_path = repo / MODEL / "1" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["reference_stats"] = {"INPUT0": {"bin_edges": [[-1.0, 0.0, 0.5, 1.0, 2.0]] * FEATURES,
                                              "counts": [[1, 1, 1, 1]] * FEATURES}}
    manifest_path.write_text(json.dumps(manifest))
    cloud = start_cloud(tmp_path)
    edge = Edge(edge_config(tmp_path, "edge-a", cloud.address, repository=repo))
    try:
        for i in range(LEARN_ROWS + 10):
            edge.infer(i % 50)
        from prometheus_client import generate_latest

        assert wait_for(lambda: 'edgeloop_feature_psi{feature="0",model="mlp",tensor="INPUT0",version="1"}'
                        in generate_latest(edge.node.metrics.registry).decode())
        assert wait_for(lambda: any(r.tensor == "OUTPUT0" and r.n > 0 for r in cloud.store.feature_stats(MODEL)))
        rows = {(r.tensor, r.feature): r for r in cloud.store.feature_stats(MODEL, node_id="edge-a")}
        assert wait_for(lambda: sum({(r.tensor, r.feature): r for r in cloud.store.feature_stats(
            MODEL, node_id="edge-a")}[("INPUT0", 0)].counts) == LEARN_ROWS + 10)
        assert rows[("INPUT0", 0)].bin_edges == (-1.0, 0.0, 0.5, 1.0, 2.0)
        assert math.isfinite(rows[("INPUT0", 0)].psi)
    finally:
        edge.close()
        cloud.stop(1.0)
