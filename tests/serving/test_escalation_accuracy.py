"""Joint inference earns its keep: a linear edge model escalating its unsure rows to an MLP on another node
is about as accurate as the MLP alone, while the MLP sees only a minority of the rows."""
from __future__ import annotations

import numpy as np
from serving_fixtures import NodeHandle, make_config

from edgeloop.config import EscalationPolicy, ModelConfig
from edgeloop.node import EdgeNode
from edgeloop.protocol.codec import build_infer_request, infer_response_to_numpy
from edgeloop.serving.demo_models import build_softmax_classifier, fit_softmax_classifier, write_model


def _data(rng, n):
    """Two classes split by a sine: a line gets most rows right, only a curve gets the rest."""
    x = rng.uniform(-1.0, 1.0, (n, 2))
    return x.astype(np.float32), (x[:, 1] > 0.5 * np.sin(3.0 * x[:, 0])).astype(np.int64)


def test_joint_accuracy_matches_the_big_model_while_escalating_a_minority(tmp_path):
    rng = np.random.default_rng(7)
    x_train, y_train = _data(rng, 2000)
    x_test, y_test = _data(rng, 2000)
    small_layers = fit_softmax_classifier(x_train, y_train, epochs=300)
    big_layers = fit_softmax_classifier(x_train, y_train, hidden=16, epochs=600)
    write_model(tmp_path / "cloud", "big", 1, build_softmax_classifier(big_layers))
    write_model(tmp_path / "edge", "small", 1, build_softmax_classifier(small_layers))
    write_model(tmp_path / "edge", "small_alone", 1, build_softmax_classifier(small_layers))
    big = NodeHandle(EdgeNode(make_config(tmp_path / "cloud")).start())
    try:
        policy = EscalationPolicy(target_model="big", output="probabilities", rule="top1", threshold=0.95,
                                  target_address=big.node.address, budget_ms=5000)
        small = NodeHandle(EdgeNode(make_config(tmp_path / "edge", [ModelConfig(name="small", escalation=policy)]))
                           .start())
        try:
            def answer(handle, model):
                response = handle.infer(build_infer_request(model, {"x": x_test}))
                return infer_response_to_numpy(response)["probabilities"].argmax(1), response.parameters

            small_alone, _ = answer(small, "small_alone")
            big_alone, _ = answer(big, "big")
            joint, params = answer(small, "small")
        finally:
            small.close()
    finally:
        big.close()
    acc = {name: float((pred == y_test).mean()) for name, pred in
           (("small", small_alone), ("big", big_alone), ("joint", joint))}
    share = params["edgeloop_escalated_rows"].int64_param / len(y_test)
    assert params["edgeloop_answered_by"].string_param == "escalated"
    assert 0.05 < share < 0.5, (share, acc)
    assert acc["big"] > acc["small"] + 0.05, acc  # the task really needs the bigger model
    assert acc["joint"] >= acc["big"] - 0.01, acc
    assert acc["joint"] >= acc["small"] + 0.05, acc
