"""Data validation: each anomaly kind is quarantined with its reason, a poisoned edge is caught,
and Elec2's columns that start to vary are learned, not rejected."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from edgeloop.ct.drift import build_reference
from edgeloop.ct.validation import (
    Batch, TensorSpec, ValidationPolicy, signature_from_onnx, validate_batches,
)

ROOT = Path(__file__).resolve().parents[2]
ELEC2 = ROOT.parent / "shared" / "data" / "elec2.csv"
F = 5
NAMES = [f"f{i}" for i in range(F)]
SIG = (TensorSpec("input", "float32", (-1, F)),)
WEIGHTS = np.array([1.5, -1.0, 0.8, 0.0, 0.5])
POLICY = ValidationPolicy(label_domain=(0, 1), domains={"f4": (-10.0, 10.0)})


def rows(rng, n, shift=0.0):
    x = rng.normal(size=(n, F))
    x[:, 1] += shift
    y = (rng.random(n) < 1 / (1 + np.exp(-(x @ WEIGHTS)))).astype(np.int64)
    return x.astype(np.float32), y


@pytest.fixture(scope="module")
def profile():
    x, _ = rows(np.random.default_rng(0), 8000)
    return build_reference(x, NAMES, window=200, n_draws=100, seed=1)


def batch(edge, i, x, y, ids=None):
    ids = ids if ids is not None else tuple(f"{edge}-{i}-{k}" for k in range(len(x)))
    return Batch(f"{edge}-b{i}", edge, {"input": x}, y, ids)


def fleet(seed=1, edges=4, per_edge=2, n=200):
    rng = np.random.default_rng(seed)
    return [batch(f"edge-{e}", i, *rows(rng, n)) for e in range(edges) for i in range(per_edge)]


def quarantined(result):
    return {q.batch_id: q for q in result.quarantined}


def test_a_clean_fleet_passes(profile):
    res = validate_batches(fleet(), SIG, profile, POLICY)
    assert res.quarantined == () and len(res.clean) == 8 and res.enough
    assert res.rows_clean == res.rows_total == 1600
    assert res.summary.startswith("8 of 8 batches clean (1600 of 1600 rows); 0 quarantined")


def test_each_anomaly_kind_is_quarantined_with_its_reason(profile):
    rng = np.random.default_rng(2)
    good = fleet()
    x, y = rows(rng, 200)
    bad = []
    bad.append(Batch("missing", "edge-0", {"inputs": x}, y))
    bad.append(Batch("dtype", "edge-1", {"input": x.astype(np.float64)}, y))
    bad.append(Batch("shape", "edge-2", {"input": x[:, :4]}, y))
    xn = x.copy()
    xn[[3, 7], 2] = np.nan
    bad.append(Batch("nan", "edge-3", {"input": xn}, y))
    bad.append(Batch("labels", "edge-0", {"input": x}, np.where(np.arange(200) == 5, 2, y)))
    bad.append(Batch("dupes", "edge-1", {"input": x}, y, good[0].request_ids))
    xc = x.copy()
    xc[:, 3] = 0.25  # a stuck sensor
    bad.append(Batch("stuck", "edge-2", {"input": xc}, y))
    xd = x.copy()
    xd[11, 4] = 50.0
    bad.append(Batch("domain", "edge-3", {"input": xd}, y))
    bad.append(Batch("../etc", "edge-0", {"input": x}, y))
    res = validate_batches(good + bad, SIG, profile, POLICY)
    q = quarantined(res)
    expect = {"missing": ("schema", "missing input(s) ['input']"),
              "dtype": ("schema", "dtype float64, expected float32"),
              "shape": ("schema", "shape [200, 4], expected [-1, 5]"),
              "nan": ("non_finite", "NaN 2, inf 0) in rows [3, 7]"),
              "labels": ("labels", "1 label(s) not one of [0, 1] (e.g. 2) in rows [5]"),
              "dupes": ("duplicate_ids", "200 request id(s) already seen"),
              "stuck": ("constant", "feature 'f3' is constant (= 0.25) over all 200 rows"),
              "domain": ("domain", "feature 'f4' has 1 value(s) outside its domain [-10, 10] (e.g. 50)")}
    for bid, (check, text) in expect.items():
        assert bid in q, bid
        assert check in q[bid].checks, (bid, q[bid])
        assert any(text in r for r in q[bid].reasons), (bid, q[bid].reasons)
    assert "schema" in q["../etc"].checks
    assert {b.batch_id for b in res.clean} == {b.batch_id for b in good}
    assert res.enough  # 1600 clean rows of 3400


def test_not_enough_clean_data_is_reported(profile):
    rng = np.random.default_rng(3)
    batches = []
    for i in range(4):
        x, y = rows(rng, 100)
        x[0, 0] = np.inf
        batches.append(batch("edge-0", i, x, y))
    x, y = rows(rng, 100)
    batches.append(batch("edge-1", 9, x, y))
    res = validate_batches(batches, SIG, profile, POLICY)
    assert not res.enough and res.rows_clean == 100
    assert "not enough clean data" in res.summary


def test_poisoned_edge_with_flipped_labels_is_caught(profile):
    batches = fleet(seed=4)
    poisoned = [Batch(b.batch_id, b.edge, b.inputs, 1 - b.labels, b.request_ids) if b.edge == "edge-2" else b
                for b in batches]
    res = validate_batches(poisoned, SIG, profile, POLICY)
    q = quarantined(res)
    assert set(q) == {"edge-2-b0", "edge-2-b1"}
    assert all(rec.checks == ("edge_labels",) and rec.edge == "edge-2" for rec in q.values())
    assert "labels relate to the features unlike the other 3 edges'" in q["edge-2-b0"].reasons[0]
    assert all(b.edge != "edge-2" for b in res.clean)


def test_poisoned_edge_with_shifted_features_is_caught(profile):
    rng = np.random.default_rng(5)
    batches = [batch(f"edge-{e}", i, *rows(rng, 200, shift=1.0 if e == 1 else 0.0))
               for e in range(4) for i in range(2)]
    res = validate_batches(batches, SIG, profile, POLICY)
    q = quarantined(res)
    assert set(q) == {"edge-1-b0", "edge-1-b1"}
    assert "edge_features" in q["edge-1-b0"].checks
    assert any("edge 'edge-1': feature 'f1' is far from the other 3 edges'" in r for r in q["edge-1-b0"].reasons)


def test_out_of_range_on_one_edge_is_quarantined_but_on_most_edges_it_is_drift(profile):
    rng = np.random.default_rng(6)

    def blown(e):
        x, y = rows(rng, 200)
        if e in hot:
            x[:, 0] = x[:, 0] * 10
        return x, y

    hot = {0}
    res = validate_batches([batch(f"edge-{e}", 0, *blown(e)) for e in range(4)], SIG, profile, POLICY)
    q = quarantined(res)
    assert set(q) == {"edge-0-b0"} and "range" in q["edge-0-b0"].checks
    assert "only 1 of 4 edges show this" in q["edge-0-b0"].reasons[0]
    hot = {0, 1, 2, 3}
    res = validate_batches([batch(f"edge-{e}", 0, *blown(e)) for e in range(4)], SIG, profile, POLICY)
    assert res.quarantined == ()
    assert [n.feature for n in res.notes] == ["f0"] and "accepted as drift: 4 of 4 edge(s)" in res.notes[0].text


def read_elec2():
    with ELEC2.open() as fh:
        reader = csv.reader(fh)
        header = next(reader)
        data = np.array([[float(v) for v in row] for row in reader])
    return header, data


def test_elec2_columns_that_start_to_vary_are_drift_not_an_error():
    header, data = read_elec2()
    names = header[:-1]
    x, y = data[:, :-1].astype(np.float32), data[:, -1].astype(np.int64)
    start = 17_424
    for col in ("vicprice", "vicdemand", "transfer"):
        j = names.index(col)
        assert np.unique(x[:start, j]).size == 1 and np.unique(x[start:start + 2000, j]).size > 100
    sig = (TensorSpec("input", "float32", (-1, len(names))),)
    policy = ValidationPolicy(label_domain=(0, 1), domains={n: (0.0, 1.0) for n in names})
    profile = build_reference(x[start - 8000:start], names, window=200, n_draws=60)
    assert profile.features[names.index("vicprice")].std == 0.0
    after = np.arange(start, start + 1800)
    for edges in (3, 1):  # a fleet of three edges (rows dealt round-robin), and a single edge
        batches = []
        for e in range(edges):
            part = after[e::edges]
            for i, chunk in enumerate(np.array_split(part, 3)):
                batches.append(Batch(f"e{e}-b{i}", f"edge-{e}", {"input": x[chunk]}, y[chunk],
                                     tuple(f"r{k}" for k in chunk)))
        res = validate_batches(batches, sig, profile, policy)
        assert res.quarantined == (), [q.reasons for q in res.quarantined]
        assert res.enough and res.rows_clean == 1800
        assert {"vicprice", "vicdemand", "transfer"} <= {n.feature for n in res.notes}
    # the retrained model's reference spans both periods: the long constant run is no "stuck sensor"
    wide = build_reference(x[:start + 8000], names, window=200, n_draws=40, pca_components=0)
    early = np.arange(2000, 2300)
    res = validate_batches([Batch("old", "edge-0", {"input": x[early]}, y[early])], sig, wide, policy)
    assert res.quarantined == ()


def test_signature_from_onnx():
    inp = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", F])
    out = helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", F])
    graph = helper.make_graph([helper.make_node("Identity", ["input"], ["output"])], "g", [inp], [out])
    model = helper.make_model(graph)
    assert signature_from_onnx(model.SerializeToString()) == (TensorSpec("input", "float32", (-1, F)),)
    assert signature_from_onnx(onnx.load_from_string(model.SerializeToString()))[0].name == "input"


def test_garbage_batches_are_quarantined_not_crashed_on(profile):
    rng = np.random.default_rng(9)
    x, y = rows(rng, 50)
    cases = {
        "list": (Batch("list", "e1", {"input": x.tolist()}, y), "input 'input' must be an array, got list"),
        "strlabels": (Batch("strlabels", "e1", {"input": x}, np.array(["a"] * 50)), "labels must be 50 numbers"),
        "intids": (Batch("intids", "e1", {"input": x}, y, tuple(range(50))), "request_ids must be strings"),
        "notmap": (Batch("notmap", "e1", "input", y), "inputs must be a mapping"),
        "object": (Batch("object", "e1", {"input": x.astype(object)}, y), "dtype object, expected float32"),
        "rows": (Batch("rows", "e1", {"input": x}, y[:10]), "labels must be 50 numbers"),
        "edge": (Batch("edge", "e1/../../x", {"input": x}, y), "edge must be 1..128 characters"),
    }
    res = validate_batches([b for b, _ in cases.values()], SIG, profile, POLICY)
    q = quarantined(res)
    for bid, (_, text) in cases.items():
        assert any(text in r for r in q[bid].reasons), (bid, q[bid].reasons)
    assert res.clean == () and not res.enough
