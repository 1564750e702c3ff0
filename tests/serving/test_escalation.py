"""Joint inference on real nodes: hard rows of the edge model escalate to a bigger model on another node.

The edge model answers ``[x0, 1 - x0]`` and the "big" one ``[x1, 1 - x1]`` (``build_column_classifier``),
so the caller sets each row's confidence (x0) and can see which model answered it (x1).
"""
from __future__ import annotations

import json
import threading
import time

import grpc
import numpy as np
import pytest
from serving_fixtures import NodeHandle, make_config

from edgeloop.config import EscalationPolicy, ModelConfig
from edgeloop.node import EdgeNode
from edgeloop.protocol import inference_pb2
from edgeloop.protocol.codec import build_infer_request, infer_response_to_numpy
from edgeloop.serving.demo_models import build_column_classifier, write_model
from edgeloop.protocol.codec import encode_output
from edgeloop.serving.escalation import ESCALATED, ShareBucket, TargetError, hard_rows, merge_rows

X = np.array([[0.95, 0.2], [0.55, 0.3], [0.05, 0.7]], dtype=np.float32)  # row 1 is the unsure one


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def policy(address: str, **kw) -> EscalationPolicy:
    fields = dict(target_model="big", output="probabilities", rule="top1", threshold=0.8, target_address=address)
    fields.update(kw)
    return EscalationPolicy(**fields)


@pytest.fixture
def nodes(tmp_path):
    """``start(repo_models: {name: (version, proto)}, configs=()) -> NodeHandle``; all stopped at the end."""
    handles = []

    def start(models, configs=(), name="n", **serving):
        repo = tmp_path / f"{name}{len(handles)}"
        for model, (version, proto) in models.items():
            write_model(repo, model, version, proto)
        handle = NodeHandle(EdgeNode(make_config(repo, configs, **serving)).start())
        handles.append(handle)
        return handle

    yield start
    for handle in handles:
        handle.close()


@pytest.fixture
def big(nodes):
    return nodes({"big": (3, build_column_classifier(2, column=1))}, name="big")


def edge(nodes, pol, **model_fields):
    return nodes({"small": (1, build_column_classifier(2, column=0))},
                 [ModelConfig(name="small", escalation=pol, **model_fields)], name="edge")


def ask(handle, x=X, timeout=10.0, **params):
    request = build_infer_request("small", {"x": x}, request_id="r1")
    for key, value in params.items():
        request.parameters[key].bool_param = value
    response = handle.infer(request, timeout=timeout)
    return infer_response_to_numpy(response)["probabilities"], response.parameters


def served_count(handle, model) -> int:
    return sum(s.inference_stats.success.count for s in handle.stats(model))


def sample(handle, name, **labels) -> float:
    return handle.node.metrics.registry.get_sample_value(name, labels) or 0.0


# ------------------------------------------------------------------------------------ the rule, alone
def test_each_rule_picks_the_rows_it_names():
    probs = np.array([[0.9, 0.1], [0.6, 0.4], [np.nan, np.nan], [0.5, 0.5]])
    assert hard_rows(policy("h:1", rule="top1", threshold=0.8), probs).tolist() == [False, True, True, True]
    assert hard_rows(policy("h:1", rule="margin", threshold=0.3), probs).tolist() == [False, True, True, True]
    assert hard_rows(policy("h:1", rule="entropy", threshold=0.5), probs).tolist() == [False, True, True, True]
    three = np.array([[0.5, 0.4, 0.1], [0.8, 0.1, 0.1]])
    assert hard_rows(policy("h:1", rule="margin", threshold=0.2), three).tolist() == [True, False]
    values = np.array([[0.5], [1.5], [-0.1], [np.nan]])
    assert hard_rows(policy("h:1", rule="range", low=0.0, high=1.0), values).tolist() == [False, True, True, True]
    assert hard_rows(policy("h:1", rule="range", high=1.0), values).tolist() == [False, True, False, True]


def test_share_bucket_grants_share_of_rows_plus_burst():
    bucket = ShareBucket(0.1, 1)
    granted = [bucket.take(1, 1) for _ in range(30)]
    assert sum(granted) == 3 and granted[0] == 1 and granted[10] == 1 and granted[20] == 1
    assert ShareBucket(0.5, 4).take(10, 10) == 4  # never more than the bucket holds


def _response(model, **outputs):
    response = inference_pb2.ModelInferResponse(model_name=model, model_version="1")
    for name, array in outputs.items():
        tensor, raw = encode_output(name, np.asarray(array, dtype=np.float32))
        response.outputs.append(tensor)
        response.raw_output_contents.append(raw)
    return response


def test_merge_puts_the_target_rows_in_place_and_refuses_a_mismatched_answer():
    local = _response("small", probabilities=[[0.9, 0.1], [0.6, 0.4], [0.55, 0.45]])
    merged = merge_rows(local, _response("big", probabilities=[[0.2, 0.8], [0.1, 0.9]]), np.array([1, 2]))
    np.testing.assert_allclose(infer_response_to_numpy(merged)["probabilities"], [[0.9, 0.1], [0.2, 0.8], [0.1, 0.9]])
    with pytest.raises(TargetError, match=r"shape \[2, 3\]; expected \[2, 2\]"):
        merge_rows(local, _response("big", probabilities=[[0.2, 0.7, 0.1]] * 2), np.array([1, 2]))
    with pytest.raises(TargetError, match="without output 'probabilities'"):
        merge_rows(local, _response("big", scores=[[0.2, 0.8]] * 2), np.array([1, 2]))


# ------------------------------------------------------------------------------------ real nodes
@pytest.mark.parametrize("rule,threshold", [("top1", 0.8), ("margin", 0.2), ("entropy", 0.5)])
def test_unsure_row_is_answered_by_the_target(nodes, big, rule, threshold):
    small = edge(nodes, policy(big.node.address, rule=rule, threshold=threshold))
    probs, params = ask(small)
    np.testing.assert_allclose(probs, [[0.95, 0.05], [0.3, 0.7], [0.05, 0.95]], atol=1e-6)
    assert params["edgeloop_answered_by"].string_param == "escalated"
    assert params["edgeloop_hard_rows"].int64_param == 1
    assert params["edgeloop_escalated_rows"].int64_param == 1
    assert params["edgeloop_escalated_row_ids"].string_param == "1"
    assert params["edgeloop_escalation_model"].string_param == "big"
    assert params["edgeloop_escalation_version"].string_param == "3"
    assert params["edgeloop_hard_example"].bool_param
    assert served_count(big, "big") == 1


def test_range_rule_escalates_values_outside_the_range(nodes, big):
    small = edge(nodes, policy(big.node.address, rule="range", threshold=0.0, low=0.1, high=0.9))
    probs, params = ask(small)
    np.testing.assert_allclose(probs, [[0.2, 0.8], [0.55, 0.45], [0.7, 0.3]], atol=1e-6)
    assert params["edgeloop_escalated_row_ids"].string_param == "0,2"


def test_confident_rows_stay_local_and_the_target_is_not_called(nodes, big):
    small = edge(nodes, policy(big.node.address))
    probs, params = ask(small, x=X[[0, 2]])
    np.testing.assert_allclose(probs, [[0.95, 0.05], [0.05, 0.95]], atol=1e-6)
    assert params["edgeloop_answered_by"].string_param == "local"
    assert params["edgeloop_hard_rows"].int64_param == 0 and "edgeloop_hard_example" not in params
    assert served_count(big, "big") == 0
    assert sample(small, "edgeloop_escalation_requests_total", model="small", path="local") == 1
    assert sample(small, "edgeloop_escalation_rows_total", model="small", path="local") == 2


def test_batched_edge_model_escalates_too(nodes, big):
    small = edge(nodes, policy(big.node.address), max_batch_size=8, max_queue_delay_us=100)
    probs, params = ask(small)
    np.testing.assert_allclose(probs[1], [0.3, 0.7], atol=1e-6)
    assert params["edgeloop_answered_by"].string_param == "escalated"


def test_stream_requests_escalate_too(nodes, big):
    small = edge(nodes, policy(big.node.address))
    requests = [build_infer_request("small", {"x": X[i:i + 1]}, request_id=str(i)) for i in range(3)]
    replies = list(small.stub.ModelStreamInfer(iter(requests), timeout=10))
    answered = [r.infer_response.parameters["edgeloop_answered_by"].string_param for r in replies]
    assert answered == ["local", "escalated", "local"]


def test_an_escalated_request_is_never_escalated_again(nodes, big):
    small = edge(nodes, policy(big.node.address))
    probs, params = ask(small, **{ESCALATED: True})
    np.testing.assert_allclose(probs[1], [0.55, 0.45], atol=1e-6)
    assert "edgeloop_answered_by" not in params
    assert served_count(big, "big") == 0


def _assert_local_fallback(small, probs, params, *error_parts):
    np.testing.assert_allclose(probs, [[0.95, 0.05], [0.55, 0.45], [0.05, 0.95]], atol=1e-6)
    assert params["edgeloop_answered_by"].string_param == "fallback"
    assert params["edgeloop_hard_example"].bool_param and params["edgeloop_escalated_rows"].int64_param == 0
    error = params["edgeloop_escalation_error"].string_param
    assert any(part in error for part in error_parts), error
    assert sample(small, "edgeloop_escalation_requests_total", model="small", path="fallback") == 1
    assert sample(small, "edgeloop_escalation_rows_total", model="small", path="fallback") == 1
    assert sample(small, "edgeloop_escalation_request_seconds_count", model="small", path="fallback") == 1


def test_target_down_gives_the_local_answer_flagged(nodes):
    small = edge(nodes, policy(f"127.0.0.1:{_free_port()}"))
    probs, params = ask(small)
    _assert_local_fallback(small, probs, params, "UNAVAILABLE")


def test_target_error_gives_the_local_answer_flagged(nodes):
    wrong = nodes({"big": (1, build_column_classifier(3, column=1))}, name="wrong")  # takes 3 features, not 2
    small = edge(nodes, policy(wrong.node.address))
    probs, params = ask(small)
    _assert_local_fallback(small, probs, params, "INVALID_ARGUMENT")


@pytest.fixture
def busy_big(nodes):
    """A real big node with one handler thread, held by an open idle stream: requests wait, unanswered."""
    handle = nodes({"big": (1, build_column_classifier(2, column=1))}, name="busy", grpc_workers=1)
    release = threading.Event()

    def idle():
        release.wait(20)
        yield from ()

    stream = handle.stub.ModelStreamInfer(idle(), timeout=30)

    def busy() -> bool:
        try:
            handle.stub.ServerLive(inference_pb2.ServerLiveRequest(), timeout=0.2)
            return False
        except grpc.RpcError as exc:
            return exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED

    deadline = time.monotonic() + 10
    while not busy():
        assert time.monotonic() < deadline, "the stream never took the node's only handler thread"
    yield handle
    release.set()
    stream.cancel()


def test_target_slower_than_the_budget_gives_the_local_answer(nodes, busy_big):
    small = edge(nodes, policy(busy_big.node.address, budget_ms=300))
    start = time.monotonic()
    probs, params = ask(small)
    assert 0.25 < time.monotonic() - start < 2.5  # waited for the budget, not for ever
    _assert_local_fallback(small, probs, params, "DEADLINE_EXCEEDED")


def test_escalation_keeps_within_the_requests_own_deadline(nodes, busy_big):
    small = edge(nodes, policy(busy_big.node.address, budget_ms=10_000))
    probs, params = ask(small, timeout=2.0)  # would be DEADLINE_EXCEEDED at the client if the escalation waited on
    _assert_local_fallback(small, probs, params, "DEADLINE_EXCEEDED")


def test_escalations_waiting_at_once_are_capped_per_node(nodes, busy_big):
    small = edge(nodes, policy(busy_big.node.address, budget_ms=3000))  # 8 workers: at most 2 in flight
    assert small.node.escalation.max_in_flight == 2
    waiting = [threading.Thread(target=ask, args=(small,)) for _ in range(2)]
    for thread in waiting:
        thread.start()
    slots = small.node.escalation._slots
    deadline = time.monotonic() + 5
    while slots._value > 0:  # both escalations are waiting on the busy target
        assert time.monotonic() < deadline
        time.sleep(0.01)
    start = time.monotonic()
    probs, params = ask(small)
    assert time.monotonic() - start < 1.0  # answered at once, not after the 3 s budget
    np.testing.assert_allclose(probs[1], [0.55, 0.45], atol=1e-6)
    assert params["edgeloop_answered_by"].string_param == "capped"
    assert "2 escalations already wait" in params["edgeloop_escalation_error"].string_param
    for thread in waiting:
        thread.join(10)
    assert sample(small, "edgeloop_escalation_rows_total", model="small", path="capped") == 1
    assert sample(small, "edgeloop_escalation_requests_total", model="small", path="fallback") == 2


def test_rows_over_the_cap_are_answered_locally_and_counted(nodes, big):
    small = edge(nodes, policy(big.node.address, max_share=0.1, max_burst=1))
    answered = []
    for _ in range(30):
        probs, params = ask(small, x=X[1:2])
        answered.append(params["edgeloop_answered_by"].string_param)
        expected = [0.3, 0.7] if answered[-1] == "escalated" else [0.55, 0.45]
        np.testing.assert_allclose(probs[0], expected, atol=1e-6)
    assert answered.count("escalated") == 3 and answered.count("capped") == 27
    assert served_count(big, "big") == 3
    assert sample(small, "edgeloop_escalation_rows_total", model="small", path="capped") == 27
    assert sample(small, "edgeloop_escalation_requests_total", model="small", path="escalated") == 3
    assert sample(small, "edgeloop_escalation_request_seconds_count", model="small", path="capped") == 27


def test_metrics_and_hard_examples(nodes, big):
    small = edge(nodes, policy(big.node.address))
    seen = []
    small.node.escalation.sink = seen.append
    ask(small)
    ask(small, x=X[[0]])
    assert sample(small, "edgeloop_escalation_requests_total", model="small", path="escalated") == 1
    assert sample(small, "edgeloop_escalation_rows_total", model="small", path="escalated") == 1
    assert sample(small, "edgeloop_escalation_rows_total", model="small", path="local") == 3
    assert sample(small, "edgeloop_escalation_request_seconds_count", model="small", path="local") == 1
    assert sample(small, "edgeloop_escalation_request_seconds_count", model="small", path="escalated") == 1
    assert len(seen) == 1
    example = seen[0]
    assert (example.model, example.version, example.request_id, example.rows, example.path,
            example.target_version) == ("small", "1", "r1", (1,), "escalated", "3")


def test_a_request_naming_its_outputs_escalates_too(nodes, big):
    small = edge(nodes, policy(big.node.address))
    request = build_infer_request("small", {"x": X}, request_id="r1")
    request.outputs.add(name="probabilities")
    assert small.infer(request).parameters["edgeloop_answered_by"].string_param == "escalated"


# ------------------------------------------------------------------------------------ load-time checks
def test_policy_naming_a_missing_output_fails_the_load(nodes, big):
    small = edge(nodes, policy(big.node.address, output="logits"))
    state, reason = small.index()[("small", "1")]
    assert state == "UNAVAILABLE"
    assert "escalation.output 'logits'" in reason and "'probabilities'" in reason


def test_triton_load_config_sets_the_policy(nodes, big):
    small = nodes({"small": (1, build_column_classifier(2, column=0))}, name="edge")
    _, params = ask(small)
    assert "edgeloop_answered_by" not in params  # no policy yet
    config = {"backend": "onnxruntime", "escalation": {
        "target_model": "big", "target_address": big.node.address, "output": "probabilities", "rule": "margin",
        "threshold": 0.2, "budget_ms": 500}}
    load = inference_pb2.RepositoryModelLoadRequest(model_name="small")
    load.parameters["config"].string_param = json.dumps(config)
    small.stub.RepositoryModelLoad(load, timeout=10)
    probs, params = ask(small)
    assert params["edgeloop_answered_by"].string_param == "escalated"
    np.testing.assert_allclose(probs[1], [0.3, 0.7], atol=1e-6)


@pytest.mark.parametrize("block,code,words", [
    ({"target_model": "big", "target_zone": "cloud", "output": "probabilities", "rule": "median", "threshold": 0.5},
     grpc.StatusCode.INVALID_ARGUMENT, "escalation.rule"),
    ({"target_model": "big", "output": "probabilities", "rule": "top1", "threshold": 0.5},
     grpc.StatusCode.INVALID_ARGUMENT, "exactly one of target_zone"),
    ({"target_model": "big", "target_zone": "cloud", "output": "probabilities", "rule": "top1", "threshold": 1.5},
     grpc.StatusCode.INVALID_ARGUMENT, "escalation.threshold"),
    ({"target_model": "big", "target_zone": "cloud", "output": "labels", "rule": "top1", "threshold": 0.5},
     grpc.StatusCode.FAILED_PRECONDITION, "escalation.output 'labels'"),
])
def test_triton_load_config_refuses_a_bad_policy(nodes, big, block, code, words):
    small = nodes({"small": (1, build_column_classifier(2, column=0))}, name="edge")
    load = inference_pb2.RepositoryModelLoadRequest(model_name="small")
    load.parameters["config"].string_param = json.dumps({"escalation": block})
    with pytest.raises(grpc.RpcError) as info:
        small.stub.RepositoryModelLoad(load, timeout=10)
    assert info.value.code() == code and words in info.value.details()
    _, params = ask(small)  # the model still serves, as before
    assert "edgeloop_answered_by" not in params


# ------------------------------------------------------------------------------------ unchanged clients
@pytest.mark.slow
def test_tritonclient_gets_the_escalated_answer(nodes, big):
    """The unmodified tritonclient (its own venv, a subprocess: two ``inference`` protos cannot share one)."""
    import os
    import subprocess
    from pathlib import Path

    python = os.environ.get("EDGELOOP_TRITONCLIENT_PYTHON")
    if not python:
        if os.environ.get("CI"):
            pytest.fail("CI is set but EDGELOOP_TRITONCLIENT_PYTHON is not")
        pytest.skip("EDGELOOP_TRITONCLIENT_PYTHON is not set (scripts/test.sh creates .ci-venv-tritonclient)")
    small = edge(nodes, policy(big.node.address))
    script = Path(__file__).resolve().parent / "tritonclient_escalation_script.py"
    done = subprocess.run([python, str(script), "--url", small.node.address, "--model", "small"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}"
    assert "ok   escalated via tritonclient" in done.stdout
    assert served_count(big, "big") == 1
