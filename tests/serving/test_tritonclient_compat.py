"""The unmodified ``tritonclient[grpc]`` package works against an edgeloop edge node.

tritonclient brings its own ``inference`` proto and protobuf pin, so it runs in a separate
virtualenv whose python is named by ``EDGELOOP_TRITONCLIENT_PYTHON``; the checks are in
``tritonclient_script.py``.  The node is a real ``edgeloop edge`` process on loopback
serving a multi-dtype model built here with onnx.helper.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

HERE = Path(__file__).resolve().parent
PYTHON_ENV = "EDGELOOP_TRITONCLIENT_PYTHON"
MODEL = "multi-dtype"
STARTUP_TIMEOUT_S = 60.0
SCRIPT_TIMEOUT_S = 120.0


def build_multi_dtype_model() -> onnx.ModelProto:
    """The model tritonclient_script.py expects: arithmetic per datatype, so answers are checkable."""
    T = TensorProto
    signature = [("x_fp32", "y_fp32", T.FLOAT, 4), ("x_int64", "y_int64", T.INT64, 3),
                 ("x_bool", "y_bool", T.BOOL, 2), ("x_fp16", "y_fp16", T.FLOAT16, 2),
                 ("x_bytes", "y_bytes", T.STRING, 1)]
    inputs = [helper.make_tensor_value_info(i, t, ["batch", w]) for i, _, t, w in signature]
    outputs = [helper.make_tensor_value_info(o, t, ["batch", w]) for _, o, t, w in signature]
    constants = [
        numpy_helper.from_array(np.array(2, np.float32), "two"),
        numpy_helper.from_array(np.array(1, np.float32), "one"),
        numpy_helper.from_array(np.array(10, np.int64), "ten"),
        numpy_helper.from_array(np.array(2, np.float16), "two_fp16"),
    ]
    nodes = [
        helper.make_node("Mul", ["x_fp32", "two"], ["x_fp32_doubled"]),
        helper.make_node("Add", ["x_fp32_doubled", "one"], ["y_fp32"]),
        helper.make_node("Add", ["x_int64", "ten"], ["y_int64"]),
        helper.make_node("Not", ["x_bool"], ["y_bool"]),
        helper.make_node("Mul", ["x_fp16", "two_fp16"], ["y_fp16"]),
        helper.make_node("Identity", ["x_bytes"], ["y_bytes"]),
    ]
    graph = helper.make_graph(nodes, "multi_dtype", inputs, outputs, constants)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="edgeloop-tests")
    model.ir_version = 9
    onnx.checker.check_model(model)
    return model


@pytest.fixture
def tc_python() -> str:
    """The tritonclient virtualenv's python; skip (or fail under CI) when it is not configured."""
    python = os.environ.get(PYTHON_ENV)
    if not python:
        reason = (f"{PYTHON_ENV} is not set: point it at the python of a virtualenv with "
                  f"'tritonclient[grpc]' and numpy (.ci/run creates .ci-venv-tritonclient)")
        if os.environ.get("CI"):
            pytest.fail(f"CI is set but {reason}")
        pytest.skip(reason)
    if not os.access(python, os.X_OK):
        pytest.fail(f"{PYTHON_ENV}={python!r} is not an executable python")
    return python


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until_ready(proc: subprocess.Popen, port: int, model: str) -> None:
    import grpc

    from edgeloop.protocol import inference_pb2, inference_pb2_grpc

    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = inference_pb2_grpc.GRPCInferenceServiceStub(channel)
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                pytest.fail(f"edgeloop edge exited with {proc.returncode}: {proc.stderr.read()[-2000:]}")
            try:
                if stub.ModelReady(inference_pb2.ModelReadyRequest(name=model), timeout=1.0).ready:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.1)
    pytest.fail(f"model {model!r} not ready on 127.0.0.1:{port} within {STARTUP_TIMEOUT_S} s")


@pytest.fixture
def edge_node(tmp_path):
    """An ``edgeloop edge`` process serving the multi-dtype model; yields (url, model file)."""
    from edgeloop.serving.demo_models import write_model

    model_path = write_model(tmp_path / "models", MODEL, 1, build_multi_dtype_model())
    grpc_port, metrics_port = free_port(), free_port()
    config = tmp_path / "edge.toml"
    config.write_text(
        f'[node]\nid = "tritonclient-compat"\nhost = "127.0.0.1"\ngrpc_port = {grpc_port}\n'
        f'metrics_port = {metrics_port}\n\n[serving]\nmodel_repository = "{tmp_path / "models"}"\n\n'
        f"[mesh]\nenabled = false\n"
    )
    proc = subprocess.Popen([sys.executable, "-m", "edgeloop", "edge", "--config", str(config)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        wait_until_ready(proc, grpc_port, MODEL)
        yield f"127.0.0.1:{grpc_port}", model_path
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=15)
        proc.stderr.close()


@pytest.mark.slow
def test_tritonclient_drives_the_edge_node(tc_python, edge_node):
    python = tc_python
    url, model_path = edge_node
    result = subprocess.run(
        [python, str(HERE / "tritonclient_script.py"), "--url", url, "--model", MODEL, "--model-file", str(model_path)],
        capture_output=True, text=True, timeout=SCRIPT_TIMEOUT_S,
    )
    assert result.returncode == 0, f"tritonclient checks failed:\n{result.stdout}\n{result.stderr}"
    for check in ("health", "model_metadata", "model_config", "infer_all_dtypes", "infer_output_subset", "streaming",
                  "statistics", "load_unload"):
        assert f"ok   {check}" in result.stdout


def test_script_exits_non_zero_when_a_check_fails(tc_python):
    """A failing check must fail the test: point the script at a port nobody serves."""
    python = tc_python
    port = free_port()
    result = subprocess.run(
        [python, str(HERE / "tritonclient_script.py"), "--url", f"127.0.0.1:{port}", "--model", MODEL,
         "--model-file", os.devnull],
        capture_output=True, text=True, timeout=SCRIPT_TIMEOUT_S,
    )
    assert result.returncode == 1
    assert "FAIL health" in result.stderr
