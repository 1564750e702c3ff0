"""`edgeloop keys init` and `edgeloop rollout` against a real coordinator process's config."""
import json
import socket
import stat
import subprocess
import sys
from dataclasses import replace

from edgeloop.config import load_cloud_config
from edgeloop.coordinator import Coordinator


def cli(*args, timeout=60):
    return subprocess.run([sys.executable, "-m", "edgeloop", *args], capture_output=True, text=True, timeout=timeout)


def by_id(config_file, start_stdout: str) -> dict:
    rollout_id = start_stdout.split()[1].rstrip(":")  # "rollout ID: state (reason)"
    docs = json.loads(cli("rollout", "status", "--config", str(config_file), "--json").stdout)["rollouts"]
    return next(d for d in docs if d["rollout_id"] == rollout_id)


def test_keys_init_then_rollout_start_status_pause_resume_abort(tmp_path):
    out = cli("keys", "init", str(tmp_path / "keys"))
    assert out.returncode == 0, out.stderr
    assert stat.S_IMODE((tmp_path / "keys" / "signing.key").stat().st_mode) == 0o600
    assert cli("keys", "init", str(tmp_path / "keys")).returncode == 2  # never overwrites a key
    config_file = tmp_path / "cloud.toml"
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    metrics = port + 1 if port < 65535 else port - 1
    config_file.write_text(f'[node]\ngrpc_port = {port}\nmetrics_port = {metrics}\n'
                           '[storage]\ndatabase = "c/db.sqlite"\n[delivery]\nsigning_key = "keys/signing.key"\nbake_s = 3600\n')
    config = load_cloud_config(config_file)
    cloud = Coordinator(replace(config, node=replace(config.node, metrics_port=-1))).start()
    try:
        from edgeloop.serving.demo_models import build_mlp

        model = tmp_path / "m.onnx"
        model.write_bytes(build_mlp(seed=3).SerializeToString())
        for node in ("e1", "e2", "e3"):
            cloud.store.join_node(node, f"127.0.0.1:{9000 + len(node)}", {"zone": "z", "weight": 1.0}, [], 1)
        pushed = cli("models", "push", str(model), "--model", "mlp", "--config", str(config_file))
        assert pushed.returncode == 0 and "mlp version 1" in pushed.stdout, pushed.stderr
        status = cli("rollout", "status", "--config", str(config_file), "--json")
        (r,) = json.loads(status.stdout)["rollouts"]
        assert r["state"] == "running" and r["version"] == 1 and len(r["edges"]) == 3
        assert r["plan"]["bake_ms"] == 3_600_000 and len(r["waves"][0]) == 1
        rid = r["rollout_id"]
        assert "paused" in cli("rollout", "pause", rid, "--config", str(config_file)).stdout
        assert "running" in cli("rollout", "resume", rid, "--config", str(config_file)).stdout
        assert "aborted" in cli("rollout", "abort", rid, "--config", str(config_file)).stdout
        (r,) = json.loads(cli("rollout", "status", "--config", str(config_file), "--json").stdout)["rollouts"]
        assert r["state"] == "aborted" and r["reason"] == "aborted by the operator"
        again = cli("rollout", "start", "mlp:1", "--canary", "2", "--bake-s", "5", "--config", str(config_file))
        assert again.returncode == 0 and "running" in again.stdout, again.stderr
        missing = cli("rollout", "start", "mlp:9", "--config", str(config_file))
        assert missing.returncode == 1 and "NOT_FOUND" in missing.stderr and "version 9" in missing.stderr
        bad = cli("rollout", "start", "mlp", "--config", str(config_file))
        assert bad.returncode == 2 and "NAME:VERSION" in bad.stderr
        text = cli("rollout", "status", "--config", str(config_file)).stdout
        assert "aborted" in text and "running" in text
        assert cli("rollout", "pin", "e1", "mlp:1", "--config", str(config_file)).returncode == 0
        assert cli("rollout", "pin", "zone:z", "mlp:1", "--config", str(config_file)).returncode == 0
        pinned = cli("rollout", "start", "mlp:1", "--config", str(config_file))
        assert pinned.returncode == 0 and "no edges to update" in pinned.stdout  # every edge is pinned
        assert cli("rollout", "unpin", "zone:z", "mlp", "--config", str(config_file)).returncode == 0
        doc = by_id(config_file, pinned.stdout)
        assert doc["state"] == "done" and doc["pinned"] == ["e1", "e2", "e3"]
        last = cli("rollout", "start", "mlp:1", "--config", str(config_file))
        assert last.returncode == 0
        doc = by_id(config_file, last.stdout)
        assert doc["pinned"] == ["e1"] and "e1" not in doc["edges"] and len(doc["edges"]) == 2
    finally:
        cloud.stop(1)
