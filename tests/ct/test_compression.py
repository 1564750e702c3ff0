"""Compression: low-rank and int8 candidates, the smallest within the metric tolerance wins."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgeloop.ct.compression import CompressionPolicy, compress, int8, low_rank
from edgeloop.ct.infra import InfraPolicy
from edgeloop.ct.onnx_export import DenseModel, to_onnx
from edgeloop.ct.trainers import Dataset, TrainingError

#: Compression tests are about the metric gate; a wide latency budget keeps machine noise out of them.
LAX = InfraPolicy(runs=60, rounds=3, warmup=5, latency_slack_ms=5.0)


def low_rank_mlp(seed=0, d=48, h=192, c=4, rank=6, noise=1e-4):
    """An MLP whose big weights are (nearly) rank ``rank``: what a low-rank rewrite should shrink."""
    rng = np.random.default_rng(seed)
    w1 = rng.normal(size=(d, rank)) @ rng.normal(size=(rank, h)) / np.sqrt(rank * d) + rng.normal(size=(d, h)) * noise
    w2 = rng.normal(size=(h, rank)) @ rng.normal(size=(rank, h)) / np.sqrt(rank * h) + rng.normal(size=(h, h)) * noise
    w3 = rng.normal(size=(h, c)) / np.sqrt(h)
    layers = tuple((w.astype(np.float32), np.zeros(w.shape[1], np.float32)) for w in (w1, w2, w3))
    model = DenseModel("mlp", np.zeros(d, np.float32), np.ones(d, np.float32), layers, np.arange(c))
    x = rng.normal(size=(1500, d)).astype(np.float32)
    return model, Dataset(x, model.predict(x))


def run(data, x):
    return ort.InferenceSession(data, providers=["CPUExecutionProvider"]).run(["probabilities"], {"input": x})[0]


def test_low_rank_rewrite_is_smaller_and_close():
    model, hold = low_rank_mlp()
    original = to_onnx(model)
    small, rewrites = low_rank(original, 0.01)
    assert [r.weight for r in rewrites if r.rewritten] == ["W1", "W2"]  # W3 (192x4) cannot get smaller
    assert all(r.relative_error <= 0.01 and r.params_after < r.params_before for r in rewrites if r.rewritten)
    assert len(small) < len(original) / 3
    np.testing.assert_allclose(run(small, hold.X), run(original, hold.X), atol=0.02)
    ops = [n.op_type for n in onnx.load_model_from_string(small).graph.node]
    assert ops.count("MatMul") == 5


def test_gemm_with_transposed_weight_is_rewritten():
    rng = np.random.default_rng(1)
    w = (rng.normal(size=(64, 3)) @ rng.normal(size=(3, 80))).astype(np.float32)  # (out=64, in=80) for transB
    b = rng.normal(size=64).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "W", "B"], ["y"], transB=1, beta=0.5)], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 80])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 64])],
        [numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "B")])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 9
    small, rewrites = low_rank(proto.SerializeToString(), 1e-3)
    assert rewrites[0].rank == 3 and rewrites[0].rewritten
    x = rng.normal(size=(5, 80)).astype(np.float32)
    got = ort.InferenceSession(small, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, x @ w.T + 0.5 * b, rtol=1e-3, atol=1e-3)


def test_int8_uses_onnxruntime_quantisation():
    model, hold = low_rank_mlp(noise=0.2)
    q = int8(to_onnx(model))
    ops = {n.op_type for n in onnx.load_model_from_string(q).graph.node}
    assert "DynamicQuantizeLinear" in ops and ("MatMulInteger" in ops or "DynamicQuantizeMatMul" in ops)
    assert len(q) < len(to_onnx(model)) / 2


def test_compress_picks_the_smallest_candidate_within_tolerance():
    model, hold = low_rank_mlp()
    original = to_onnx(model)
    result = compress(original, hold, CompressionPolicy(metric_tolerance=0.02, rank_tolerance=0.01),
                      infra_policy=LAX)
    by = {c.name: c for c in result.candidates}
    assert list(by) == ["original", "low-rank", "int8", "low-rank+int8"]
    assert all(c.size_bytes > 0 and c.p99_ms is not None and c.metric is not None for c in by.values())
    fit = [c for c in result.candidates if c.within_tolerance and c.infra_passed]
    assert result.chosen == min(fit, key=lambda c: c.size_bytes).name != "original"
    assert by[result.chosen].chosen and sum(c.chosen for c in result.candidates) == 1
    assert len(result.model) == by[result.chosen].size_bytes < by["original"].size_bytes / 3
    assert result.reason.startswith(f"chose {result.chosen}: ")
    assert by["original"].metric_loss == 0


def test_compress_refuses_a_candidate_outside_the_tolerance():
    """A coarse factorisation (50% error per weight) changes predictions: refused, a faithful model is chosen."""
    model, hold = low_rank_mlp(noise=0.05)
    result = compress(to_onnx(model), hold, CompressionPolicy(metric_tolerance=0.0, rank_tolerance=0.5),
                      infra_policy=LAX)
    by = {c.name: c for c in result.candidates}
    assert by["low-rank"].size_bytes and by["low-rank"].metric_loss > 0
    assert not by["low-rank"].within_tolerance and "accuracy loss" in by["low-rank"].note
    assert result.chosen in ("original", "int8") and by[result.chosen].metric_loss <= 0
    assert result.model is not None


def test_tiny_model_keeps_the_original_and_says_why():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(300, 3)).astype(np.float32)
    model = DenseModel("logistic", np.zeros(3, np.float32), np.ones(3, np.float32),
                       ((rng.normal(size=(3, 2)).astype(np.float32), np.zeros(2, np.float32)),), np.arange(2))
    result = compress(to_onnx(model), Dataset(x, model.predict(x)), infra_policy=LAX)
    by = {c.name: c for c in result.candidates}
    assert by["low-rank"].size_bytes == 0 and "no weight has a smaller factorisation" in by["low-rank"].note
    assert result.chosen in ("original", "int8")
    with pytest.raises(TrainingError, match="holdout"):
        compress(to_onnx(model), Dataset(x[:0], np.zeros(0, int)))
    with pytest.raises(TrainingError, match="rank_tolerance"):
        CompressionPolicy(rank_tolerance=1.5)
