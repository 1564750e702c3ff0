"""Real ``edgeloop cloud`` / ``edgeloop edge`` processes on loopback, a bounded load, and the exactly-once audit.

Used by ``outage_soak.py`` and by ``tests/node/test_exactly_once.py``.  Every process started here is
stopped by ``Fleet.close()`` (SIGTERM, then SIGKILL); every load loop is bounded in count and time.
The audit compares the request ids the clients got answers for with the sample ids the coordinator
stored: duplicates (an id stored twice) and losses (an answered id never stored).
"""
from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np

MODEL = "mlp"
FEATURES = 32
START_TIMEOUT_S = 60.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _toml_path(path: Path) -> str:
    return str(path).replace("\\", "\\\\").replace('"', '\\"')


class Process:
    """One edgeloop process; ``address`` is parsed from its 'listening on' line."""

    def __init__(self, args: list[str], log_path: Path, marker: str) -> None:
        self.log = open(log_path, "ab")
        self.popen = subprocess.Popen([sys.executable, "-m", "edgeloop", *args], stdout=subprocess.PIPE,
                                      stderr=self.log, stdin=subprocess.DEVNULL, text=True,
                                      env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self.address = None
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            line = self.popen.stdout.readline()
            if not line:
                break
            if marker in line:
                self.address = line.split(marker, 1)[1].split()[0]
                break
        if self.address is None:
            self.kill()
            raise RuntimeError(f"{args[:3]} did not start (see {log_path})")
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        for _line in self.popen.stdout:
            pass

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGKILL)
        self.popen.wait(10)
        self.log.close()

    def terminate(self, grace_s: float = 10.0) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(grace_s)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(10)
        if not self.log.closed:
            self.log.close()


class Fleet:
    """A coordinator on a fixed port and edges pointing at it, all in ``root``."""

    def __init__(self, root: Path, upload_backoff_max_ms: int = 1000) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.cloud_port = free_port()
        self.cloud: Process | None = None
        self.edges: dict[str, Process] = {}
        self.backoff_ms = upload_backoff_max_ms
        self.cloud_config = self.root / "cloud.toml"
        self.cloud_config.write_text(
            f'[node]\nid = "cloud"\nhost = "127.0.0.1"\ngrpc_port = {self.cloud_port}\nmetrics_port = 7002\n'
            f'[storage]\ndatabase = "cloud/coordinator.sqlite"\nartifact_dir = "cloud/artifacts"\n'
            f'[fleet]\nheartbeat_interval_ms = 500\n'
            f'[delivery]\ncanary = 1000\nbake_s = 0\n')  # pushes reach every edge at once (not a rollout test)
        self.database = self.root / "cloud" / "coordinator.sqlite"

    def start_cloud(self) -> Process:
        self.cloud = Process(["cloud", "--config", str(self.cloud_config), "--metrics-port", "0", "--log-level",
                              "WARNING"], self.root / "cloud.log", "coordinator listening on ")
        return self.cloud

    def kill_cloud(self) -> None:
        self.cloud.kill()
        self.cloud = None

    def edge_config(self, node_id: str, record: bool = True) -> Path:
        """An edge config; ``record=False`` is the same edge without a coordinator (recording off)."""
        path = self.root / f"{node_id}.toml"
        if not path.exists():
            from edgeloop.serving.demo_models import build_mlp, write_model

            repo = self.root / node_id / "models"
            write_model(repo, MODEL, 1, build_mlp())
            text = (f'[node]\nid = "{node_id}"\nhost = "127.0.0.1"\n'
                    f'[serving]\nmodel_repository = "{_toml_path(repo)}"\ngrpc_workers = 8\n'
                    f'[mesh]\nenabled = false\n')
            if record:
                text += (f'[coordinator]\naddress = "127.0.0.1:{self.cloud_port}"\n'
                         f'outbox_path = "{_toml_path(self.outbox(node_id))}"\n'
                         f'upload_backoff_max_ms = {self.backoff_ms}\n')
            path.write_text(text)
        return path

    def outbox(self, node_id: str) -> Path:
        return self.root / node_id / "outbox.sqlite"

    def start_edge(self, node_id: str, record: bool = True) -> Process:
        proc = Process(["edge", "--config", str(self.edge_config(node_id, record)), "--grpc-port", "0", "--metrics-port",
                        "0", "--log-level", "WARNING"], self.root / f"{node_id}.log", "listening on ")
        self.edges[node_id] = proc
        return proc

    def kill_edge(self, node_id: str) -> None:
        self.edges.pop(node_id).kill()

    def close(self) -> None:
        for proc in list(self.edges.values()):
            proc.terminate()
        self.edges.clear()
        if self.cloud is not None:
            self.cloud.terminate()
            self.cloud = None


@dataclass
class Load:
    """Steady requests with unique ids to each edge (one thread per edge), bounded by ``max_requests`` and time."""

    fleet: Fleet
    rate_per_edge: float = 200.0
    max_requests: int = 1_000_000
    answered: dict[str, list[tuple[str, float]]] = field(default_factory=dict)  # edge -> (id, answered at)
    failed: int = 0

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self, node_ids) -> "Load":
        for node_id in node_ids:
            self.answered[node_id] = []
            thread = threading.Thread(target=self._run, args=(node_id,), daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def _run(self, node_id: str) -> None:
        from edgeloop.protocol import inference_pb2_grpc
        from edgeloop.protocol.codec import build_infer_request

        x = np.random.default_rng(0).normal(size=(1, FEATURES)).astype(np.float32)
        request = build_infer_request(MODEL, {"INPUT0": x})
        address, channel, stub = None, None, None
        period = 1.0 / self.rate_per_edge
        n = 0
        next_at = time.monotonic()
        out = self.answered[node_id]
        while not self._stop.is_set() and n < self.max_requests:
            proc = self.fleet.edges.get(node_id)
            if proc is None:
                time.sleep(0.05)
                continue
            if proc.address != address:
                if channel is not None:
                    channel.close()
                address = proc.address
                channel = grpc.insecure_channel(address)
                stub = inference_pb2_grpc.GRPCInferenceServiceStub(channel)
            n += 1
            request.id = f"{node_id}-{n}"
            try:
                stub.ModelInfer(request, timeout=5)
                out.append((request.id, time.monotonic()))
            except grpc.RpcError:
                self.failed += 1
            next_at += period
            delay = next_at - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            else:
                next_at = time.monotonic()
        if channel is not None:
            channel.close()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)


def outbox_pending(path: Path) -> int:
    """Samples still in an edge's outbox (read-only; 0 when the file does not exist yet)."""
    if not path.exists():
        return 0
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    try:
        return conn.execute("SELECT COUNT(*) FROM samples").fetchone()[0]
    finally:
        conn.close()


def stored_ids(database: Path) -> list[str]:
    conn = sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=10)
    try:
        return [sid for (sid,) in conn.execute("SELECT sample_id FROM samples")]
    finally:
        conn.close()


def wait_drained(fleet: Fleet, node_ids, timeout_s: float) -> float:
    """Seconds until every edge's outbox is empty (raises TimeoutError after ``timeout_s``)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        if all(outbox_pending(fleet.outbox(n)) == 0 for n in node_ids):
            return time.monotonic() - t0
        time.sleep(0.1)
    raise TimeoutError(f"outboxes not drained in {timeout_s} s: "
                       f"{ {n: outbox_pending(fleet.outbox(n)) for n in node_ids} }")


@dataclass
class Audit:
    served: int
    received: int
    duplicated: int
    lost: int
    lost_outside_window: int
    #: each lost id with its edge and when it was answered relative to that edge's kill (s; None: not killed)
    lost_ids: tuple = ()


def audit(load: Load, database: Path, kills: dict[str, float], window_s: float) -> Audit:
    """Compare answered ids with stored ones; a loss is allowed only within ``window_s`` before an edge's kill."""
    ids = stored_ids(database)
    stored = set(ids)
    served = lost = outside = 0
    lost_ids = []
    for node_id, rows in load.answered.items():
        served += len(rows)
        for request_id, at in rows:
            if request_id not in stored:
                lost += 1
                killed = kills.get(node_id)
                lost_ids.append((request_id, None if killed is None else round(at - killed, 3)))
                if killed is None or not (killed - window_s <= at <= killed):
                    outside += 1
    return Audit(served=served, received=len(stored), duplicated=len(ids) - len(stored), lost=lost,
                 lost_outside_window=outside, lost_ids=tuple(lost_ids[:20]))
