"""Process and timing helpers for ``serving_latency.py``: start servers, read their CPU time, time calls.

Servers run in their own processes (the benchmark process is the client), on loopback,
and are always stopped: stdin is closed and then SIGTERM, then SIGKILL after a grace period.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc

HERE = Path(__file__).resolve().parent
_CLK_TCK = os.sysconf("SC_CLK_TCK")


def process_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) used so far by every thread of ``pid``.

    Summed from ``/proc/<pid>/task/*/schedstat`` (nanoseconds) because ``/proc/<pid>/stat``
    counts in 10 ms ticks, too coarse for a few thousand 100 us requests; falls back to it
    where schedstat is missing.
    """
    total_ns = 0
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{task}/schedstat") as fh:
                    total_ns += int(fh.read().split()[0])
            except (FileNotFoundError, ProcessLookupError):
                continue  # the thread ended between listdir and open
        return total_ns / 1e9
    except FileNotFoundError:
        pass
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK  # utime, stime


class ServerProcess:
    """A child server process that is stopped on ``close()`` (and as a context manager)."""

    def __init__(self, name: str, argv: list[str], env: dict | None = None):
        self.name = name
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env=env, text=True, start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def read_port(self, pattern: str = r"^PORT (\d+)", timeout_s: float = 60.0) -> int:
        """The port announced on stdout by the first line matching ``pattern`` (one group: the port)."""
        import re
        import selectors

        selector = selectors.DefaultSelector()
        selector.register(self.proc.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not selector.select(timeout=max(0.0, deadline - time.monotonic())):
                break
            line = self.proc.stdout.readline()
            if not line:
                break
            match = re.search(pattern, line)
            if match:
                return int(match.group(1))
        raise RuntimeError(f"{self.name} did not announce its port within {timeout_s} s: {self.stderr_tail()}")

    def stderr_tail(self) -> str:
        if self.proc.poll() is None:
            return "(still running)"
        return (self.proc.stderr.read() or "")[-2000:]

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.close()
            except OSError:
                pass
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout=10)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.proc.wait(timeout=10)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream:
                stream.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def start_floor(model_path: Path, protocol: bool = False) -> tuple[ServerProcess, int]:
    """The raw floor, or with ``protocol`` the protocol floor (ModelInfer protobufs), in its own process."""
    argv = [sys.executable, str(HERE / "floor_server.py"), "--model", str(model_path)]
    name = "protocol floor server" if protocol else "floor server"
    server = ServerProcess(name, argv + ["--protocol"] if protocol else argv)
    try:
        return server, server.read_port()
    except BaseException:
        server.close()
        raise


def write_edge_config(path: Path, node_id: str, repository: Path, max_batch_size: int,
                      max_queue_delay_us: int) -> Path:
    """Ports are not in the file: ``start_node`` passes ``--grpc-port 0 --metrics-port 0``."""
    path.write_text(
        f"""[node]
id = "{node_id}"
host = "127.0.0.1"

[serving]
model_repository = "{repository}"
grpc_workers = 16

[serving.model_defaults]
max_batch_size = {max_batch_size}
max_queue_delay_us = {max_queue_delay_us}
intra_op_threads = 1
inter_op_threads = 1

[mesh]
enabled = false
"""
    )
    return path


def start_node(config: Path, model: str, timeout_s: float = 60.0) -> tuple[ServerProcess, int]:
    """An ``edgeloop edge`` process on free ports; returns once ``model`` is ready."""
    from edgeloop.protocol import inference_pb2, inference_pb2_grpc

    argv = [sys.executable, "-m", "edgeloop", "edge", "--config", str(config), "--grpc-port", "0",
            "--metrics-port", "0", "--no-mesh", "--log-level", "WARNING"]
    server = ServerProcess(f"edge node ({config.name})", argv)
    try:
        port = server.read_port(r"listening on 127\.0\.0\.1:(\d+)", timeout_s)
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = inference_pb2_grpc.GRPCInferenceServiceStub(channel)
            deadline = time.monotonic() + timeout_s
            while True:
                if server.proc.poll() is not None:
                    raise RuntimeError(f"{server.name} exited with {server.proc.returncode}: {server.stderr_tail()}")
                try:
                    if stub.ModelReady(inference_pb2.ModelReadyRequest(name=model), timeout=1.0).ready:
                        return server, port
                except grpc.RpcError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{server.name}: model {model!r} not ready on port {port} within {timeout_s} s")
                time.sleep(0.1)
    except BaseException:
        server.close()
        raise


def time_calls(call, payload: bytes, count: int, max_s: float, timeout_s: float = 10.0) -> list[float]:
    """Latencies (s) of up to ``count`` sequential calls, stopping after ``max_s`` seconds."""
    out = []
    stop = time.perf_counter() + max_s
    for _ in range(count):
        t0 = time.perf_counter()
        call(payload, timeout=timeout_s)
        t1 = time.perf_counter()
        out.append(t1 - t0)
        if t1 > stop:
            break
    return out


def time_session_run(session, x, count: int, max_s: float) -> list[float]:
    """Seconds per ``session.run`` on ``x`` (after one warm-up run), up to ``count`` runs or ``max_s`` seconds."""
    feed = {session.get_inputs()[0].name: x}
    session.run(None, feed)
    out, stop = [], time.perf_counter() + max_s
    for _ in range(count):
        t0 = time.perf_counter()
        session.run(None, feed)
        t1 = time.perf_counter()
        out.append(t1 - t0)
        if t1 > stop:
            break
    return out
