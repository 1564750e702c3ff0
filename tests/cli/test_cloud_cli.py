"""``edgeloop cloud`` as a real process, and the fleet commands against it: status, models, labels, certs."""
import json
import signal
import socket
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "coordinator"))
from coordkit import join, onnx_bytes, sample_batch  # noqa: E402

from edgeloop.config import load_cloud_config  # noqa: E402
from edgeloop.coordinator.fleet_client import open_fleet_channel  # noqa: E402
from edgeloop.protocol import mesh_pb2_grpc  # noqa: E402

START_TIMEOUT_S = 30


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def edgeloop(*args, timeout=60):
    return subprocess.run([sys.executable, "-m", "edgeloop", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture
def cloud(tmp_path):
    """A cloud config with a token (from certs init), and a helper that starts `edgeloop cloud` on it."""
    assert edgeloop("certs", "init", tmp_path / "certs").returncode == 0
    config = tmp_path / "cloud.toml"
    config.write_text(f'[node]\nhost = "127.0.0.1"\ngrpc_port = {free_port()}\nmetrics_port = {free_port()}\n'
                      f'[storage]\ndatabase = "data/coord.sqlite"\n[auth]\ntoken_file = "certs/token"\n')
    procs = []

    def start():
        proc = subprocess.Popen([sys.executable, "-m", "edgeloop", "cloud", "--config", str(config)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        procs.append(proc)
        line = proc.stdout.readline()
        assert "listening" in line, line + proc.stderr.read()
        return proc

    yield config, start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def stop(proc) -> int:
    proc.send_signal(signal.SIGTERM)
    return proc.wait(START_TIMEOUT_S)


def test_cloud_process_serves_fleet_commands_and_exits_0_on_sigterm(cloud, tmp_path):
    config, start = cloud
    proc = start()
    channel = open_fleet_channel(load_cloud_config(config))
    coord = mesh_pb2_grpc.CoordinatorStub(channel)
    join(coord, "edge-a")
    coord.UploadSamples(iter([sample_batch("b1", ["r1", "r2", "r3"])]), timeout=10)
    model = tmp_path / "m.onnx"
    model.write_bytes(onnx_bytes(3000))
    out = edgeloop("models", "push", model, "--model", "m", "--config", config)
    assert out.returncode == 0 and "version 1" in out.stdout and "1 edge(s) directed" in out.stdout, out.stderr
    csv = tmp_path / "labels.csv"
    csv.write_text("request_id,label,timestamp\nr1,1,1700000000000\nr2,oops,\n r3 ,0.5,\nbad id,1,\n")
    out = edgeloop("labels", "import", csv, "--config", config)
    assert out.returncode == 1 and "line 3" in out.stderr and "line 5" in out.stderr and "line 4" not in out.stderr
    out = edgeloop("labels", "import", csv, "--config", config, "--skip-bad")
    assert out.returncode == 0 and "imported 2 label(s)" in out.stdout, out.stderr
    out = edgeloop("status", "--config", config, "--json")
    assert out.returncode == 0, out.stderr
    view = json.loads(out.stdout)
    (node,) = view["nodes"]
    assert node["node_id"] == "edge-a" and node["samples_received"] == 3 and node["connected"] is False
    assert set(node) >= {"node_id", "last_seen_ms", "models", "requests", "samples_received", "labels_received",
                         "outbox_pending", "outbox_dropped", "max_psi", "connected"}
    assert view["models"] == [{"model": "m", "samples": 3, "labelled": 2, "labels": 2, "unjoined_labels": 0}]
    table = edgeloop("status", "--config", config)
    assert table.returncode == 0 and "edge-a" in table.stdout and "UNJOINED" in table.stdout
    listing = edgeloop("models", "list", "--config", config, "--json")
    assert json.loads(listing.stdout)["models"][0]["samples"] == 3
    channel.close()
    assert stop(proc) == 0
    # restart: everything is still there
    proc = start()
    out = edgeloop("status", "--config", config, "--json")
    assert json.loads(out.stdout)["models"][0]["labelled"] == 2
    assert stop(proc) == 0


def test_fleet_commands_without_the_token_are_refused(cloud, tmp_path):
    config, start = cloud
    proc = start()
    no_token = tmp_path / "cloud-no-token.toml"
    no_token.write_text(config.read_text().replace('token_file = "certs/token"', ""))
    out = edgeloop("status", "--config", no_token, "--json")
    assert out.returncode == 1 and "UNAUTHENTICATED" in out.stderr
    assert stop(proc) == 0


def test_sigterm_during_an_upload_stream_commits_or_leaves_unacknowledged(cloud):
    config, start = cloud
    proc = start()
    channel = open_fleet_channel(load_cloud_config(config))
    coord = mesh_pb2_grpc.CoordinatorStub(channel)
    join(coord, "edge-a")
    acked: set[str] = set()

    def batches():
        for i in range(400):
            yield sample_batch(f"s{i}", [f"x{i}-{j}" for j in range(50)])
            if i == 20:
                proc.send_signal(signal.SIGTERM)

    try:
        ack = coord.UploadSamples(batches(), timeout=30)
        acked.update(ack.accepted_batch_ids)
    except grpc.RpcError as exc:
        assert exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)
    channel.close()
    assert proc.wait(START_TIMEOUT_S) == 0
    # every acknowledged batch is stored (the database was closed cleanly)
    import sqlite3
    db = sqlite3.connect(str(load_cloud_config(config).database))
    stored = {r[0] for r in db.execute("SELECT batch_id FROM upload_batches")}
    count = db.execute("SELECT count(*) FROM samples").fetchone()[0]
    db.close()
    assert acked <= stored and count == 50 * len(stored)


def test_bad_cloud_config_and_bad_csv_header_are_reported(tmp_path):
    config = tmp_path / "cloud.toml"
    config.write_text('[storage]\ndatabase = "c.sqlite"\nmax_batch_rows = 0\n')
    out = edgeloop("cloud", "--config", config)
    assert out.returncode == 2 and "storage.max_batch_rows" in out.stderr
    csv = tmp_path / "labels.csv"
    csv.write_text("id,value\nr1,1\n")
    out = edgeloop("labels", "import", csv, "--config", config)
    assert out.returncode == 2 and "line 1" in out.stderr and "request_id,label[,timestamp]" in out.stderr
    out = edgeloop("models", "push", tmp_path / "missing.onnx", "--model", "m", "--config", config)
    assert out.returncode == 2 and "missing.onnx: cannot be read" in out.stderr
