"""Helpers for mesh tests: in-process peers (a real gRPC server with health + Peer service and
a real Mesh), free ports, bounded waits."""
from __future__ import annotations

import socket
import threading
import time
from concurrent import futures
from dataclasses import replace

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from edgeloop.config import MeshConfig, NodeConfig
from edgeloop.mesh.runtime import Mesh


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout: float, step: float = 0.02, since: float | None = None) -> float | None:
    """Seconds until ``predicate()`` held (counted from ``since``, default now), or None on timeout."""
    start = time.monotonic() if since is None else since
    while True:
        if predicate():
            return time.monotonic() - start
        if time.monotonic() - start > timeout:
            return None
        time.sleep(step)


class FirstTrue:
    """Poll several predicates in the background and record when each first held.

    Timing a state change by waiting for it *afterwards* measures the caller's own delay as well;
    this watches while the caller is busy (e.g. sending a request stream), so the recorded
    moments are those of the change itself, within one ``step``.
    """

    def __init__(self, predicates: dict, step: float = 0.05, timeout: float = 15.0):
        self.predicates = dict(predicates)
        self.times: dict[str, float] = {}
        self.errors: dict[str, str] = {}
        self._step, self._timeout = step, timeout
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        end = time.monotonic() + self._timeout
        while not self._stop.is_set() and time.monotonic() < end and len(self.times) < len(self.predicates):
            for name, predicate in self.predicates.items():
                if name in self.times:
                    continue
                try:
                    if predicate():
                        self.times[name] = time.monotonic()
                except Exception as exc:  # a peer may be briefly unreachable; keep watching
                    self.errors[name] = repr(exc)
            time.sleep(self._step)

    def result(self, wait: float) -> dict[str, float]:
        """The moments recorded, after waiting up to ``wait`` s for the rest to hold."""
        self._thread.join(timeout=wait)
        self._stop.set()
        self._thread.join(timeout=5)
        return dict(self.times)


class ModelTable:
    """The model-manager side the mesh reads (ready versions, listeners, queue depth), held in memory.

    Used where a test is about discovery and liveness, not inference; routing tests use real nodes.
    """

    def __init__(self, models: dict[str, list[int]]):
        self._models = dict(models)
        self._listeners = []
        self.depth = 0

    def ready_models(self):
        return dict(self._models)

    def add_listener(self, fn):
        self._listeners.append(fn)

    def queue_depth(self, model=None):
        return self.depth

    def set(self, models: dict[str, list[int]]):
        self._models = dict(models)
        for fn in self._listeners:
            fn()


class BarePeer:
    """A node without inference: gRPC health + Peer service, and the mesh around them."""

    def __init__(self, node_id: str, models=None, weight: float = 1.0, port: int | None = None, **mesh_fields):
        self.node_id = node_id
        self.port = port or free_port()
        self.table = ModelTable(models if models is not None else {"mlp": [1]})
        self.node_config = NodeConfig(id=node_id, host="127.0.0.1", grpc_port=self.port, metrics_port=0,
                                      weight=weight, zone="test")
        mesh_fields.setdefault("name", mesh_fields.pop("mesh_name", "default"))
        self.mesh_config = replace(MeshConfig(), heartbeat_interval_ms=100, down_after_ms=600, **mesh_fields)
        self.server = None
        self.mesh = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> "BarePeer":
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        self.health = health.HealthServicer()
        self.health.set("", health_pb2.HealthCheckResponse.SERVING)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        self.mesh = Mesh(self.node_config, self.mesh_config, self.table)
        self.mesh.attach(self.server)
        bound = self.server.add_insecure_port(self.address)
        assert bound == self.port, f"could not bind {self.address}"
        self.server.start()
        self.mesh.start(self.port, 0)
        return self

    def stop(self) -> None:
        """Clean shutdown: goodbye first, then the server."""
        if self.mesh is not None:
            self.mesh.stop()
        if self.server is not None:
            self.server.stop(0).wait(5)

    def stop_serving(self) -> None:
        """The gRPC server goes away while the mDNS announcement stays (as after a hang or crash)."""
        self.server.stop(0).wait(5)

    def resume_serving(self) -> None:
        """A new gRPC server on the same port, as a restarted process would bind."""
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        self.mesh.attach(self.server)
        assert self.server.add_insecure_port(self.address) == self.port
        self.server.start()

    def view(self) -> dict:
        return {m.node_id: m for m in self.mesh.membership.members()}

    def alive_ids(self) -> set[str]:
        return {m.node_id for m in self.mesh.membership.members() if m.alive}


class NodeProcess:
    """A real ``edgeloop edge`` process from edge-configs/, on a free port, serving the demo MLP as 'mlp'."""

    def __init__(self, name: str, workdir, port: int | None = None, extra_args=()):
        import sys
        from pathlib import Path

        from edgeloop.serving.demo_models import build_mlp, write_model

        self.name = name
        self.node_id = f"edge-{name}"
        self.port = port or free_port()
        self.repo = Path(workdir) / f"repo-{name}"
        if not (self.repo / "mlp").exists():
            write_model(self.repo, "mlp", 1, build_mlp())
        self.log_path = Path(workdir) / f"{name}.log"
        root = Path(__file__).resolve().parents[2]
        self.argv = [sys.executable, "-m", "edgeloop", "edge", "--config", str(root / "edge-configs" / f"edge-{name}.toml"),
                     "--grpc-port", str(self.port), "--metrics-port", "0", "--model-repository", str(self.repo),
                     *extra_args]
        self.proc = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> "NodeProcess":
        import subprocess

        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.argv, stdout=self._log, stderr=subprocess.STDOUT)
        return self

    def serving(self) -> bool:
        channel = grpc.insecure_channel(self.address)
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=0.5)
            return reply.status == health_pb2.HealthCheckResponse.SERVING
        except grpc.RpcError:
            return False
        finally:
            channel.close()

    def request_count(self, model: str = "mlp") -> int:
        from edgeloop.protocol import inference_pb2, inference_pb2_grpc

        with grpc.insecure_channel(self.address) as channel:
            stats = inference_pb2_grpc.GRPCInferenceServiceStub(channel).ModelStatistics(
                inference_pb2.ModelStatisticsRequest(name=model), timeout=5)
        return sum(s.inference_stats.success.count for s in stats.model_stats)  # requests, not rows

    def kill(self) -> None:
        import signal

        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except Exception:
                self.proc.kill()
                self.proc.wait(5)
        if self.proc is not None:
            self._log.close()

    def log_tail(self, n: int = 30) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
