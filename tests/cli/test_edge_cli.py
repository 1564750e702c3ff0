"""``edgeloop edge`` as a real process: flags, demo model, logging, and a clean SIGTERM drain."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest

from edgeloop.cli import main
from edgeloop.protocol import inference_pb2, inference_pb2_grpc
from edgeloop.protocol.codec import build_infer_request, infer_response_to_numpy
from edgeloop.serving.demo_models import build_matmul_chain, write_model

ROOT = Path(__file__).resolve().parents[2]
STARTUP_TIMEOUT_S = 60


def start_edge(*args):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "edgeloop", "edge", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        match = re.search(r"listening on 127\.0\.0\.1:(\d+)", line)
        if match:
            return proc, int(match.group(1))
    proc.kill()
    out, err = proc.communicate(timeout=10)
    pytest.fail(f"edge did not start: {out}\n{err}")


def test_demo_model_flag_writes_a_servable_model(tmp_path, capsys):
    assert main(["edge", "--demo-model", str(tmp_path)]) == 0
    assert (tmp_path / "demo_mlp" / "1" / "model.onnx").is_file()
    assert "demo_mlp" in capsys.readouterr().out


def test_sigterm_finishes_in_flight_requests_and_exits_zero(tmp_path):
    repo = tmp_path / "models"
    write_model(repo, "slow", 1, build_matmul_chain(layers=256))  # computes for seconds, so SIGTERM lands mid-run
    main(["edge", "--demo-model", str(repo)])
    proc, port = start_edge("--model-repository", str(repo), "--grpc-port", "0", "--metrics-port", "0",
                            "--node-id", "cli-edge", "--no-mesh", "--grace-s", "30")
    try:
        channel = grpc.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.max_receive_message_length", 1 << 26)])
        stub = inference_pb2_grpc.GRPCInferenceServiceStub(channel)
        x = np.random.default_rng(0).standard_normal((1, 32)).astype(np.float32)
        reply = stub.ModelInfer(build_infer_request("demo_mlp", {"INPUT0": x}), timeout=10)
        assert infer_response_to_numpy(reply)["OUTPUT0"].shape == (1, 4)
        result = {}

        def in_flight():
            try:
                result["reply"] = stub.ModelInfer(
                    build_infer_request("slow", {"X": np.ones((1024, 1024), np.float32)}), timeout=60)
            except grpc.RpcError as exc:
                result["error"] = exc

        worker = threading.Thread(target=in_flight)
        worker.start()
        time.sleep(1.0)  # the 4 MiB request has reached the server, even a loaded one, and is computing
        proc.send_signal(signal.SIGTERM)
        worker.join(60)
        assert "error" not in result, result.get("error")
        assert result["reply"].model_name == "slow"
        assert proc.wait(timeout=60) == 0
        channel.close()
    finally:
        if proc.poll() is None:
            proc.kill()
    err = proc.stderr.read()
    assert re.search(r"loaded model demo_mlp version 1 inputs \[INPUT0:FP32\[-1, 32\]\] outputs "
                     r"\[OUTPUT0:FP32\[-1, 4\]\] in [\d.]+ ms", err), err
    assert "cli-edge" in err and "SIGTERM" in err and "draining" in err


def test_config_file_with_flag_overrides(tmp_path):
    repo = tmp_path / "models"
    main(["edge", "--demo-model", str(repo)])
    proc, port = start_edge("--config", str(ROOT / "edge-configs" / "edge-a.toml"), "--model-repository", str(repo),
                            "--grpc-port", "0", "--metrics-port", "0", "--no-mesh")
    try:
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        stub = inference_pb2_grpc.GRPCInferenceServiceStub(channel)
        assert stub.ModelReady(inference_pb2.ModelReadyRequest(name="demo_mlp"), timeout=10).ready
        channel.close()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    err = proc.stderr.read()
    assert "edge-a" in err and "max_batch_size=8" in err  # node id and model defaults from the file


def test_bad_flag_value_is_reported(capsys):
    assert main(["edge", "--grpc-port", "70000", "--no-mesh"]) == 2
    assert "--grpc-port 70000" in capsys.readouterr().err


def test_edge_without_config_or_repository_asks_for_one(capsys):
    assert main(["edge"]) == 2
    err = capsys.readouterr().err
    assert "give --config FILE" in err and "--model-repository DIR" in err
    assert "would serve no models on 127.0.0.1:8001 and join mesh 'default'" in err


def test_demo_model_hint_names_the_config_that_serves_the_directory(tmp_path, monkeypatch, capsys):
    """The printed follow-up runs the config whose repository is DIR, so its port is the one really used."""
    import shutil

    from edgeloop.config import load_edge_config

    (tmp_path / "edge-configs").mkdir()
    for name in ("edge-a", "edge-b", "edge-c"):
        shutil.copy(ROOT / "edge-configs" / f"{name}.toml", tmp_path / "edge-configs")
    monkeypatch.chdir(tmp_path)
    for name in ("edge-b", "edge-c"):
        port = load_edge_config(f"edge-configs/{name}.toml").node.grpc_port
        assert port != 8001
        assert main(["edge", "--demo-model", f".edgeloop/{name}/models"]) == 0
        hint = capsys.readouterr().out.splitlines()[-1]
        assert hint.startswith(f"serve it with: edgeloop edge --config edge-configs/{name}.toml ")
        assert f"127.0.0.1:{port}" in hint and "8001" not in hint
    # with --config, that config (its repository overridden when it is another one)
    assert main(["edge", "--demo-model", "elsewhere", "--config", "edge-configs/edge-c.toml"]) == 0
    hint = capsys.readouterr().out.splitlines()[-1]
    assert hint == "serve it with: edgeloop edge --config edge-configs/edge-c.toml --model-repository elsewhere"
