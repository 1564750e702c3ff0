"""Built-in trainers: ONNX equals the NumPy forward, byte-identical across processes, warm start, windows."""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from edgeloop.ct import onnx_export
from edgeloop.ct.trainers import (Dataset, LogisticRegressionTrainer, MLPTrainer, TrainingError, TrainingWindow,
                                  apply_window, last_n_days, last_n_samples, rebase, recency_weights, standardisation)

ROOT = Path(__file__).resolve().parents[2]
TRAINERS = [LogisticRegressionTrainer(), MLPTrainer(hidden=(16,), batch_size=64, learning_rate=5e-3, max_epochs=20)]
IDS = ["logistic", "mlp"]


def blobs(n=1500, d=5, classes=(0, 1, 2), seed=0, shift=0.0):
    """Seeded multi-class data on very different feature scales and offsets (standardisation matters)."""
    rng = np.random.default_rng(seed)
    scale = np.array([1.0, 100.0, 0.01, 5.0, 1e3][:d])
    offset = np.array([0.0, 500.0, -3.0, 40.0, 1e4][:d])
    centers = np.random.default_rng(99).normal(size=(len(classes), d)) * 1.5
    idx = rng.integers(0, len(classes), n)
    z = centers[idx] + rng.normal(size=(n, d)) + shift
    return (z * scale + offset).astype(np.float32), np.asarray(classes)[idx]


def split(x, y, n_train=1000):
    return Dataset(x[:n_train], y[:n_train]), Dataset(x[n_train:], y[n_train:])


@pytest.fixture(scope="module")
def window():
    return split(*blobs())


@pytest.mark.parametrize("trainer", TRAINERS, ids=IDS)
def test_onnx_predictions_equal_numpy_forward(trainer, window):
    train, val = window
    result = trainer.fit(train, val, seed=3)
    model = onnx_export.from_onnx(result.model)
    proba, label = ort.InferenceSession(result.model, providers=["CPUExecutionProvider"]).run(
        ["probabilities", "label"], {"input": val.X})
    np.testing.assert_allclose(proba, model.predict_proba(val.X), atol=2e-6)
    assert (label == model.predict(val.X)).mean() > 0.998  # only exact ties may differ
    assert proba.shape == (len(val), 3) and label.dtype == np.int64
    assert result.report.validation["accuracy"] > 0.8  # the blobs are separable: the trainer learned


@pytest.mark.parametrize("trainer", TRAINERS, ids=IDS)
def test_same_data_and_seed_give_identical_bytes_and_another_seed_differs(trainer, window):
    train, val = window
    a, b = trainer.fit(train, val, seed=7), trainer.fit(train, val, seed=7)
    assert a.model == b.model and a.report.model_sha256 == hashlib.sha256(a.model).hexdigest()
    other = trainer.fit(Dataset(train.X[1:], train.y[1:]), val, seed=8)
    assert other.model != a.model


_SCRIPT = textwrap.dedent("""
    import hashlib, sys
    import numpy as np
    sys.path.insert(0, {tests!r})
    from test_trainers import blobs, split, TRAINERS
    train, val = split(*blobs())
    print(" ".join(hashlib.sha256(t.fit(train, val, seed=11).model).hexdigest() for t in TRAINERS))
""")


def test_byte_identical_across_two_processes_with_different_hash_seeds(window):
    script = _SCRIPT.format(tests=str(Path(__file__).parent))
    digests = []
    for hash_seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr[-2000:]
        digests.append(out.stdout.split())
    here = [hashlib.sha256(t.fit(*window, seed=11).model).hexdigest() for t in TRAINERS]
    assert digests[0] == digests[1] == here


@pytest.mark.parametrize("trainer", TRAINERS, ids=IDS)
def test_multiclass_with_arbitrary_label_values(trainer):
    x, y = blobs(classes=(2, 5, 9, 11), seed=4)
    result = trainer.fit(*split(x, y), seed=0)
    label = ort.InferenceSession(result.model, providers=["CPUExecutionProvider"]).run(["label"], {"input": x})[0]
    assert set(np.unique(label)) <= {2, 5, 9, 11} and len(np.unique(label)) == 4
    assert result.report.classes == (2, 5, 9, 11)


def test_standardisation_is_in_the_graph(window):
    train, val = window
    result = LogisticRegressionTrainer().fit(train, val, seed=0)
    proto = onnx.load_model_from_string(result.model)
    ops = [n.op_type for n in proto.graph.node]
    assert ops[:2] == ["Sub", "Mul"]
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in proto.graph.initializer}
    mean, inv = standardisation(train.X)
    np.testing.assert_array_equal(inits["mean"], mean)
    np.testing.assert_array_equal(inits["inv_std"], inv)
    assert [i.name for i in proto.graph.input] == ["input"]
    dims = [d.dim_value or None for d in proto.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [None, 5]


def test_constant_column_gets_unit_scale():
    x, y = blobs(d=3)
    x[:, 1] = 7.0  # like Elec2's first 17,424 rows
    result = LogisticRegressionTrainer().fit(*split(x, y), seed=0)
    model = onnx_export.from_onnx(result.model)
    assert model.inv_std[1] == 1.0 and np.isfinite(model.layers[0][0]).all()


def test_rebase_keeps_the_champions_function():
    x, y = blobs(classes=(0, 1))
    champion = onnx_export.from_onnx(MLPTrainer(hidden=(8,), max_epochs=3).fit(*split(x, y), seed=0).model)
    x2 = (x * 1.3 + 2.0).astype(np.float32)
    mean, inv = standardisation(x2)
    layers = rebase(champion, mean, inv, np.array([0, 1, 4]))
    moved = onnx_export.DenseModel("mlp", mean, inv, tuple((w.astype(np.float32), b.astype(np.float32))
                                                            for w, b in layers), np.array([0, 1, 4]))
    np.testing.assert_allclose(moved.logits(x2)[:, :2], champion.logits(x2), rtol=1e-3, atol=1e-3)
    assert (moved.logits(x2)[:, 2] == 0).all()  # the new class starts with zero weights


def test_logistic_warm_start_starts_from_champion_and_converges_faster(window):
    train, val = window
    cold = LogisticRegressionTrainer().fit(train, val, seed=0)
    more = Dataset(*blobs(n=1200, seed=5, shift=0.05))
    warm = LogisticRegressionTrainer().fit(more, val, warm_start=cold.model, seed=0)
    cold2 = LogisticRegressionTrainer().fit(more, val, seed=0)
    assert warm.report.warm_started and "warm start" in warm.report.warm_start_note
    assert warm.report.initial_loss < 0.5 * cold2.report.initial_loss  # started from the champion, not zeros
    assert warm.report.iterations < cold2.report.iterations
    assert warm.model != cold.model


def test_mlp_warm_start_starts_from_champion_and_converges_faster(window):
    train, val = window
    trainer = MLPTrainer(hidden=(16,), batch_size=64, learning_rate=5e-3, max_epochs=60, patience=3)
    champion = trainer.fit(train, val, seed=0)
    warm = trainer.fit(train, val, warm_start=champion.model, seed=1)
    cold = trainer.fit(train, val, seed=1)
    assert warm.report.warm_started
    assert abs(warm.report.initial_loss - champion.report.train_loss) < 1e-4  # exactly the champion's function
    assert warm.report.initial_loss < cold.report.initial_loss
    assert warm.report.iterations < cold.report.iterations
    assert warm.report.validation["log_loss"] <= cold.report.validation["log_loss"] + 0.02


def test_warm_start_that_does_not_fit_falls_back_to_cold_with_the_reason(window):
    train, val = window
    champion = LogisticRegressionTrainer().fit(Dataset(train.X[:, :4], train.y), Dataset(val.X[:, :4], val.y))
    result = LogisticRegressionTrainer().fit(train, val, warm_start=champion.model)
    assert not result.report.warm_started and "takes 4 features" in result.report.warm_start_note
    mlp = MLPTrainer(hidden=(8,), max_epochs=2).fit(train, val, warm_start=champion.model)
    assert not mlp.report.warm_started and "logistic" in mlp.report.warm_start_note
    junk = LogisticRegressionTrainer().fit(train, val, warm_start=b"not onnx")
    assert not junk.report.warm_started and "not an ONNX model" in junk.report.warm_start_note


def test_warm_start_adds_a_new_class(window):
    x, y = blobs(classes=(0, 1), seed=1)
    champion = LogisticRegressionTrainer().fit(*split(x, y))
    train, val = window  # classes 0, 1, 2
    result = LogisticRegressionTrainer().fit(train, val, warm_start=champion.model)
    assert result.report.warm_started and result.report.classes == (0, 1, 2)


def test_bad_inputs_are_refused_with_the_field():
    x, y = blobs(n=50)
    bad = x.copy()
    bad[3, 2] = np.nan
    with pytest.raises(TrainingError, match="X: row 3 column 2"):
        Dataset(bad, y)
    with pytest.raises(TrainingError, match=r"y: shape \(49,\)"):
        Dataset(x, y[:-1])
    with pytest.raises(TrainingError, match="seed"):
        LogisticRegressionTrainer().fit(Dataset(x, y), Dataset(x, y), seed=-1)
    with pytest.raises(TrainingError, match="expected integer class labels"):
        LogisticRegressionTrainer().fit(Dataset(x, y + 0.5), Dataset(x, y))
    with pytest.raises(TrainingError, match="1 distinct classes"):
        MLPTrainer().fit(Dataset(x, np.zeros(50, int)), Dataset(x, y))
    with pytest.raises(TrainingError, match="hidden"):
        MLPTrainer(hidden=(0,)).fit(Dataset(x, y), Dataset(x, y))


def test_recency_weights_follow_the_new_concept():
    """Old rows say class = x0 > 0, new rows say the opposite; a short half-life learns the new rule."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2000, 2)).astype(np.float32)
    y = (x[:, 0] > 0).astype(int)
    y[1400:] = 1 - y[1400:]
    data = Dataset(x, y, timestamps=np.arange(2000) * 1800.0)
    plain = LogisticRegressionTrainer().fit(apply_window(data, TrainingWindow("all")), Dataset(x[1400:], y[1400:]))
    recent = LogisticRegressionTrainer().fit(apply_window(data, TrainingWindow("all", half_life=100)),
                                             Dataset(x[1400:], y[1400:]))
    assert plain.report.validation["accuracy"] < 0.5 < 0.95 < recent.report.validation["accuracy"]


def test_windows_select_the_newest_rows_in_time_order():
    ts = np.array([5, 1, 4, 2, 3], float) * 86400.0
    data = Dataset(np.arange(10, dtype=np.float32).reshape(5, 2), np.array([0, 1, 0, 1, 0]), timestamps=ts)
    assert last_n_samples(data, 2).timestamps.tolist() == [4 * 86400.0, 5 * 86400.0]
    assert last_n_days(data, 2).timestamps.tolist() == [4 * 86400.0, 5 * 86400.0]
    assert len(last_n_days(data, 10)) == 5
    w = apply_window(data, TrainingWindow("days", 3, half_life=1)).weight
    np.testing.assert_allclose(w, [0.25, 0.5, 1.0])
    np.testing.assert_allclose(recency_weights([0, 10, 20], 10), [1, 0.5, 0.25])
    with pytest.raises(TrainingError, match="timestamps"):
        last_n_days(Dataset(data.X, data.y), 1)
    with pytest.raises(TrainingError, match="window.kind"):
        TrainingWindow("weeks", 2)


def test_from_onnx_refuses_foreign_models():
    with pytest.raises(onnx_export.ModelFormatError, match="not an ONNX model"):
        onnx_export.from_onnx(b"\x00garbage")
    from edgeloop.ct.compression import int8  # a valid ONNX model that is not a built-in one

    x, y = blobs(n=60)
    data = LogisticRegressionTrainer().fit(Dataset(x, y), Dataset(x, y)).model
    proto = onnx.load_model_from_string(data)
    del proto.metadata_props[:]
    with pytest.raises(onnx_export.ModelFormatError, match="edgeloop.kind"):
        onnx_export.from_onnx(proto.SerializeToString())
    assert int8(data)  # quantised bytes exist; reading them back as a built-in model is refused
    with pytest.raises(onnx_export.ModelFormatError):
        onnx_export.from_onnx(int8(data))


def test_newton_and_lbfgs_reach_the_same_optimum(window, monkeypatch):
    """Small problems take Newton's method, large ones L-BFGS: on the same data both find the same minimum."""
    import edgeloop.ct.trainers as trainers

    train, val = window
    newton = LogisticRegressionTrainer(tol=1e-7).fit(train, val)
    monkeypatch.setattr(trainers, "NEWTON_MAX_PARAMS", 0)
    lbfgs = LogisticRegressionTrainer(tol=1e-7).fit(train, val)
    assert (newton.report.params["solver"], lbfgs.report.params["solver"]) == ("newton", "lbfgs")
    assert newton.report.converged and lbfgs.report.converged
    assert newton.report.iterations < lbfgs.report.iterations
    assert abs(newton.report.train_loss - lbfgs.report.train_loss) < 1e-7
    a, b = onnx_export.from_onnx(newton.model), onnx_export.from_onnx(lbfgs.model)
    np.testing.assert_allclose(a.predict_proba(val.X), b.predict_proba(val.X), atol=1e-4)


ELEC2 = ROOT.parent / "shared" / "data" / "elec2.csv"


@pytest.mark.skipif(not ELEC2.exists(), reason=f"{ELEC2} is not there (the shared data folder)")
def test_elec2_warm_start_across_the_columns_that_start_to_vary():
    """Elec2's vicprice, vicdemand and transfer are constant until row 17,424: a champion trained there has
    1/std = 1 for them; warm-starting on later rows re-expresses it exactly, then learns those columns."""
    table = np.genfromtxt(ELEC2, delimiter=",", names=True, max_rows=21_000)
    cols = ("period", "nswprice", "nswdemand", "vicprice", "vicdemand", "transfer")
    x = np.stack([table[c] for c in cols], 1).astype(np.float32)
    y = table["class"].astype(int)
    old, new, hold = slice(14_000, 17_000), slice(17_424, 20_000), slice(20_000, 21_000)
    assert np.ptp(x[old, 3:], axis=0).max() == 0 and np.ptp(x[new, 3:], axis=0).min() > 0
    trainer = LogisticRegressionTrainer()
    champion = trainer.fit(Dataset(x[old], y[old]), Dataset(x[hold], y[hold]))
    assert (onnx_export.from_onnx(champion.model).inv_std[3:] == 1).all()
    warm = trainer.fit(Dataset(x[new], y[new]), Dataset(x[hold], y[hold]), warm_start=champion.model)
    proba = onnx_export.from_onnx(champion.model).predict_proba(x[new]).astype(np.float64)
    champion_loss = -np.mean(np.log(proba[np.arange(len(proba)), y[new]]))
    assert warm.report.warm_started
    assert warm.report.initial_loss == pytest.approx(champion_loss, rel=1e-3)  # + l2/2 ||W||^2, ~1e-5 here
    assert np.abs(onnx_export.from_onnx(warm.model).layers[0][0][3:]).max() > 0.05  # the new columns are used
    assert warm.report.validation["accuracy"] >= champion.report.validation["accuracy"] - 0.02

