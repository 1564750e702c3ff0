"""Coordinator ingest benchmark: samples/s committed through the real gRPC UploadSamples path.

    .venv/bin/python benchmarks/coordinator_ingest.py [--samples N] [--batch 500] [--check]

A coordinator (``edgeloop cloud``) runs as a subprocess on 127.0.0.1; the client streams pre-encoded
SampleBatch messages (1-row requests, 32 float32 features, batches of --batch) and counts a sample
as ingested when its stream's UploadAck arrives (so it is committed).  The baseline, timed in the
same run, is a bare ``executemany`` of the same rows into a fresh SQLite database with the same
schema, pragmas and one transaction per batch (the coordinator commits a stream's batches in groups of
about 5000 rows, i.e. 10 batches of 500, so a bare run with one transaction per 10 batches, the same
unit of commit, is printed with its ratio for reference).
Targets: >= 0.5 of the baseline and >= 50k samples/s.

Wall-clock rates depend on what else the machine runs; the run also prints CPU-time rates (samples per
CPU-second of the coordinator process, and of the baseline loop), which hold on a busy machine.
"""
from __future__ import annotations

import argparse
import os
import socket
import sqlite3
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc

from edgeloop.protocol import mesh_pb2
from edgeloop.store.migrations import apply_migrations
from edgeloop.store.sqlite import _INSERT_SAMPLE, pragmas

FEATURES = 32
TARGET_RATIO = 0.5
TARGET_RATE = 50_000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_batches(total: int, batch: int, node: str) -> list[mesh_pb2.SampleBatch]:
    now = int(time.time() * 1000)
    out = []
    for b in range(0, total, batch):
        samples = []
        for i in range(b, min(total, b + batch)):
            samples.append(mesh_pb2.Sample(
                sample_id=f"{node}-{i:09d}", model="bench", model_version=1, routing_key=f"user-{i % 1000}",
                timestamp_ms=now + i,
                inputs=[mesh_pb2.TensorData(name="input", datatype="FP32", shape=[1, FEATURES],
                                            data=struct.pack(f"<{FEATURES}f", *([i * 0.001] * FEATURES)))],
                outputs=[mesh_pb2.TensorData(name="output", datatype="FP32", shape=[1, 4],
                                             data=struct.pack("<4f", 0.1, 0.2, 0.3, 0.4))]))
        out.append(mesh_pb2.SampleBatch(batch_id=f"batch-{b // batch}", node_id=node, samples=samples))
    return out


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def bare_executemany(db: Path, batches, synchronous: str, group: int = 1) -> tuple[float, float]:
    """Samples/s for the same rows written straight into SQLite (same schema and pragmas).

    One transaction per ``group`` batches (1: per batch, the protocol's unit of commit).
    """
    rows = [[(s.model, s.sample_id, b.node_id, s.model_version, s.routing_key, s.timestamp_ms, 0,
              s.SerializeToString()) for s in b.samples] for b in batches]
    conn = sqlite3.connect(str(db), isolation_level=None)
    for pragma in pragmas(synchronous):
        conn.execute(pragma)
    apply_migrations(conn)
    t0, c0 = time.perf_counter(), time.process_time()
    for i in range(0, len(rows), group):
        conn.execute("BEGIN IMMEDIATE")
        for batch_rows in rows[i:i + group]:
            conn.executemany(_INSERT_SAMPLE, batch_rows)
        conn.execute("COMMIT")
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
    count = conn.execute("SELECT count(*) FROM samples").fetchone()[0]
    conn.close()
    assert count == sum(len(r) for r in rows), count
    return count / elapsed, count / cpu


def start_coordinator(tmp: Path, synchronous: str) -> tuple[subprocess.Popen, str]:
    port, mport = free_port(), free_port()
    cfg = tmp / "cloud.toml"
    cfg.write_text(f'[node]\nhost = "127.0.0.1"\ngrpc_port = {port}\nmetrics_port = {mport}\n'
                   f'[storage]\ndatabase = "coord.sqlite"\nsynchronous = "{synchronous}"\n')
    proc = subprocess.Popen([sys.executable, "-m", "edgeloop", "cloud", "--config", str(cfg), "--log-level", "WARNING"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    if "listening" not in line:
        proc.kill()
        raise SystemExit(f"coordinator did not start: {line}{proc.stderr.read()}")
    return proc, f"127.0.0.1:{port}"


def grpc_ingest(address: str, batches, per_stream: int, pid: int) -> tuple[float, float]:
    """Samples/s committed through UploadSamples (streams of ``per_stream`` batches, pre-encoded)."""
    encoded = [b.SerializeToString() for b in batches]
    total = sum(len(b.samples) for b in batches)
    channel = grpc.insecure_channel(address, options=[("grpc.max_send_message_length", 64 << 20)])
    upload = channel.stream_unary("/edgeloop.v1.Coordinator/UploadSamples", request_serializer=lambda b: b,
                                  response_deserializer=mesh_pb2.UploadAck.FromString)
    grpc.channel_ready_future(channel).result(timeout=10)
    stored = 0
    deadline = time.monotonic() + 300
    t0, c0 = time.perf_counter(), cpu_seconds(pid)
    for i in range(0, len(encoded), per_stream):
        ack = upload(iter(encoded[i:i + per_stream]), timeout=120)
        stored += ack.rows_stored
        if time.monotonic() > deadline:
            raise SystemExit("ingest took longer than 300 s")
    elapsed, cpu = time.perf_counter() - t0, cpu_seconds(pid) - c0
    channel.close()
    if stored != total:
        raise SystemExit(f"coordinator stored {stored} of {total} samples")
    return total / elapsed, total / cpu


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--batches-per-stream", type=int, default=20)
    parser.add_argument("--synchronous", choices=("normal", "full"), default="normal")
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args()
    if not 1 <= args.samples <= 5_000_000 or not 1 <= args.batch <= 10_000:
        parser.error("--samples 1..5000000, --batch 1..10000")
    batches = make_batches(args.samples, args.batch, "edge-bench")
    with tempfile.TemporaryDirectory(prefix="edgeloop-ingest-") as tmp:
        tmp = Path(tmp)
        bare, bare_cpu = bare_executemany(tmp / "bare.sqlite", batches, args.synchronous)
        proc, address = start_coordinator(tmp, args.synchronous)
        try:
            ours, ours_cpu = grpc_ingest(address, batches, args.batches_per_stream, proc.pid)
        finally:
            proc.terminate()
            try:
                rc = proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                rc = proc.wait()
        bare_again, bare_cpu_again = bare_executemany(tmp / "bare2.sqlite", batches, args.synchronous)
        grouped, grouped_cpu = bare_executemany(tmp / "bare3.sqlite", batches, args.synchronous, group=10)
    baseline = max(bare, bare_again)  # the faster of two baseline runs around ours: the stricter ratio
    baseline_cpu = max(bare_cpu, bare_cpu_again)
    ratio = ours / baseline
    load = os.getloadavg()[0]
    print(f"samples: {args.samples}  batch: {args.batch}  synchronous: {args.synchronous}  cpus: {os.cpu_count()}  "
          f"load average: {load:.1f}")
    print(f"bare executemany: {bare:,.0f} / {bare_again:,.0f} samples/s wall (baseline = the faster); "
          f"{baseline_cpu:,.0f} samples per CPU-second")
    print(f"(for reference, bare with one transaction per 10 batches, as the coordinator's group commit may do: "
          f"{grouped:,.0f} samples/s wall, {grouped_cpu:,.0f} per CPU-second)")
    print(f"gRPC UploadSamples (committed): {ours:,.0f} samples/s wall; "
          f"{ours_cpu:,.0f} samples per coordinator CPU-second")
    print(f"ratio vs bare: {ratio:.2f} wall, {ours_cpu / baseline_cpu:.2f} CPU (target >= {TARGET_RATIO}); "
          f"rate target >= {TARGET_RATE:,}/s wall")
    print(f"(ratio vs bare with the same unit of commit, 10 batches: {ours / grouped:.2f} wall, "
          f"{ours_cpu / grouped_cpu:.2f} CPU)")
    print(f"coordinator exit code on SIGTERM: {rc}")
    missed = [m for m, bad in (("ratio", ratio < TARGET_RATIO), ("rate", ours < TARGET_RATE), ("exit", rc != 0)) if bad]
    if missed:
        print("MISSED: " + ", ".join(missed))
    return 1 if args.check and missed else 0


if __name__ == "__main__":
    sys.exit(main())
