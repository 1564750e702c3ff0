"""The demo's processes: one ``edgeloop cloud`` and three ``edgeloop edge``, started and always stopped.

Each gets a config written into the working directory (free ports, a mesh name of its own, zeroconf on
127.0.0.1 only), logs to ``logs/<id>.log``, and its own session so that stopping it stops its children.
``stop`` sends SIGTERM, waits, then SIGKILL: nothing the demo started outlives it.
"""
from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

EDGES = ("edge-a", "edge-b", "edge-c")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _toml(tables: dict[str, dict]) -> str:
    def value(v):
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        if isinstance(v, (list, tuple)):
            return "[" + ", ".join(value(i) for i in v) + "]"
        return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'

    return "".join(f"[{name}]\n" + "".join(f"{k} = {value(v)}\n" for k, v in body.items()) + "\n"
                   for name, body in tables.items())


@dataclass
class Fleet:
    workdir: Path
    training: dict
    delivery: dict = field(default_factory=dict)  # the cloud's [delivery] table: staged rollout pace
    mesh_name: str = field(default_factory=lambda: "demo-" + secrets.token_hex(4))
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    cloud_port: int = 0

    @property
    def cloud_config(self) -> Path:
        return self.workdir / "configs" / "cloud.toml"

    @property
    def database(self) -> Path:
        return self.workdir / "cloud" / "coordinator.sqlite"

    def write_configs(self) -> None:
        (self.workdir / "configs").mkdir(parents=True, exist_ok=True)
        (self.workdir / "logs").mkdir(exist_ok=True)
        self.cloud_port = free_port()
        self.cloud_config.write_text(_toml({
            "node": {"id": "cloud", "host": "127.0.0.1", "grpc_port": self.cloud_port, "metrics_port": free_port()},
            "storage": {"database": str(self.database), "artifact_dir": str(self.workdir / "cloud" / "artifacts")},
            "fleet": {"heartbeat_interval_ms": 500},
            "training": dict(self.training),
            "delivery": dict(self.delivery)}))
        for edge in EDGES:
            (self.workdir / "configs" / f"{edge}.toml").write_text(_toml({
                "node": {"id": edge, "host": "127.0.0.1", "grpc_port": free_port(), "metrics_port": free_port()},
                "serving": {"model_repository": str(self.workdir / edge / "models")},
                "mesh": {"enabled": True, "name": self.mesh_name, "zeroconf_interfaces": ["127.0.0.1"]},
                "coordinator": {"address": f"127.0.0.1:{self.cloud_port}",
                                "outbox_path": str(self.workdir / edge / "outbox.sqlite")}}))

    def _spawn(self, name: str, args: list[str]) -> None:
        log = open(self.workdir / "logs" / f"{name}.log", "ab")
        try:
            self.procs[name] = subprocess.Popen([sys.executable, "-m", "edgeloop", *args], stdout=log,
                                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                                start_new_session=True, cwd=self.workdir)
        finally:
            log.close()

    def start(self, timeout: float = 60.0) -> None:
        """Start the coordinator, wait until it accepts connections, then the three edges."""
        self.write_configs()
        self._spawn("cloud", ["cloud", "--config", str(self.cloud_config), "--log-level", "WARNING"])
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive()
            try:
                socket.create_connection(("127.0.0.1", self.cloud_port), timeout=0.5).close()
                break
            except OSError:
                time.sleep(0.1)
        else:
            raise RuntimeError(f"the coordinator did not listen on 127.0.0.1:{self.cloud_port} within {timeout:.0f} s "
                               f"(log: {self.workdir / 'logs' / 'cloud.log'})")
        for edge in EDGES:
            self._spawn(edge, ["edge", "--config", str(self.workdir / "configs" / f"{edge}.toml"),
                               "--log-level", "WARNING"])

    def check_alive(self) -> None:
        for name, p in self.procs.items():
            if p.poll() is not None:
                raise RuntimeError(f"{name} exited with status {p.returncode} "
                                   f"(log: {self.workdir / 'logs' / f'{name}.log'})")

    def pids(self) -> list[int]:
        return [p.pid for p in self.procs.values()]

    def stop(self, grace_s: float = 10.0) -> None:
        """SIGTERM every process group we started, wait up to ``grace_s``, then SIGKILL what is left."""
        order = sorted(self.procs.values(), key=lambda p: p is self.procs.get("cloud"))  # edges first
        for p in order:
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + grace_s
        for p in order:
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                p.wait(5)
