"""Infra validation: loads with the edges' settings, matches the serving signature, not too slow."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgeloop.config.schema import ModelConfig
from edgeloop.ct.infra import (InfraError, InfraPolicy, ServingSignature, SessionSettings, robust_p99_ms,
                               validate_infra)
from edgeloop.ct.trainers import Dataset, LogisticRegressionTrainer

FAST = InfraPolicy(runs=100, rounds=4, warmup=5)


@pytest.fixture(scope="module")
def models():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 4)).astype(np.float32)
    y2 = (x[:, 0] > 0).astype(int)
    y3 = np.digitize(x[:, 0], [-0.5, 0.5])
    two = LogisticRegressionTrainer().fit(Dataset(x, y2), Dataset(x, y2)).model
    three = LogisticRegressionTrainer().fit(Dataset(x, y3), Dataset(x, y3)).model
    return x, two, three


def test_a_good_candidate_passes(models):
    x, two, _ = models
    settings = SessionSettings.from_config(ModelConfig(name="m", graph_optimization_level="extended"))
    sig = ServingSignature.of_model(two, settings)
    assert [t.describe() for t in sig.outputs] == ["probabilities float32[None, 2]", "label int64[None]"]
    report = validate_infra(two, x, sig, settings, champion=two, policy=FAST)
    assert report.passed, report.reasons
    assert report.outputs["probabilities"] == {"dtype": "float32", "shape": [64, 2]}
    assert report.p99_ms > 0 and report.champion_p99_ms > 0 and report.runs == 100


def test_wrong_output_shape_is_refused(models):
    x, two, three = models
    report = validate_infra(three, x, ServingSignature.of_model(two), policy=FAST)
    assert not report.passed
    assert any("output 'probabilities' is float32[None, 3]; expected float32[None, 2]" in r for r in report.reasons)


def test_renamed_output_is_refused(models):
    x, two, _ = models
    proto = onnx.load_model_from_string(two)
    for node in proto.graph.node:
        node.output[:] = ["prob" if o == "probabilities" else o for o in node.output]
    proto.graph.output[0].name = "prob"
    report = validate_infra(proto.SerializeToString(), x, ServingSignature.of_model(two), policy=FAST)
    assert not report.passed
    assert any("output 'probabilities' is missing" in r for r in report.reasons)
    assert any("['prob'] are not in the serving signature" in r for r in report.reasons)


def test_too_slow_is_refused(models):
    """A 16-layer 768-wide MatMul chain (~9M multiply-adds) against the tiny champion blows a 1.5x + 0.25 ms budget."""
    x, two, _ = models
    w = numpy_helper.from_array(np.eye(768, dtype=np.float32), "W")
    pad = numpy_helper.from_array(np.zeros((4, 768), np.float32), "P")
    nodes = [helper.make_node("MatMul", ["input", "P"], ["h0"])]
    nodes += [helper.make_node("MatMul", [f"h{i}", "W"], [f"h{i + 1}"]) for i in range(16)]
    nodes += [helper.make_node("Slice", ["h16", "s", "e", "a"], ["cut"]),
              helper.make_node("Softmax", ["cut"], ["probabilities"], axis=1),
              helper.make_node("ArgMax", ["cut"], ["label"], axis=1, keepdims=0)]
    consts = [numpy_helper.from_array(np.array(v, np.int64), n) for n, v in (("s", [0]), ("e", [2]), ("a", [1]))]
    graph = helper.make_graph(nodes, "slow", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, 4])],
                              [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [None, 2]),
                               helper.make_tensor_value_info("label", TensorProto.INT64, [None])], [w, pad, *consts])
    slow = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    slow.ir_version = 9
    report = validate_infra(slow.SerializeToString(), x, ServingSignature.of_model(two), champion=two, policy=FAST)
    assert not report.passed and report.latency_ratio > 1.5, report
    assert any("p99 latency at batch 1" in r and "x champion's" in r for r in report.reasons)
    # With a budget wide enough, the same model passes: the check measures, it does not always refuse.
    lax = InfraPolicy(runs=100, rounds=4, warmup=5, max_latency_ratio=1e6)
    assert validate_infra(slow.SerializeToString(), x, ServingSignature.of_model(two), champion=two, policy=lax).passed


def test_unloadable_and_external_data_models_are_refused(models):
    x, two, _ = models
    sig = ServingSignature.of_model(two)
    report = validate_infra(b"not a model", x, sig, policy=FAST)
    assert not report.passed and "candidate: not an ONNX model" in report.reasons[0]
    proto = onnx.load_model_from_string(two)
    tensor = proto.graph.initializer[0]
    tensor.data_location = TensorProto.EXTERNAL
    tensor.external_data.add(key="location", value="../../etc/passwd")
    report = validate_infra(proto.SerializeToString(), x, sig, policy=FAST)
    assert not report.passed and "external file" in report.reasons[0]
    report = validate_infra(two, x, sig, SessionSettings(graph_optimization_level="max"), policy=FAST)
    assert not report.passed and "graph_optimization_level='max'" in report.reasons[0]
    with pytest.raises(InfraError, match="rows"):
        validate_infra(two, x[:0], sig)


def test_robust_p99_ignores_one_hiccup_round():
    samples = [1e-4] * 500
    samples[10:20] = [5e-3] * 10  # ten slow calls (2%), all in the first round
    assert robust_p99_ms(samples, 5) == pytest.approx(0.1)
    assert robust_p99_ms(samples, 1) > 1.0
