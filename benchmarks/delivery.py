"""Fleet delivery benchmark: transfer throughput, and coordinator egress with peer-assisted fetch.

    .venv/bin/python benchmarks/delivery.py [--mb 256] [--edges 8] [--zones 2] [--check]

1. Throughput: a coordinator (in this process, real gRPC on 127.0.0.1) stores an artifact of --mb MB;
   ``delivery.transfer.fetch`` pulls it in 1 MiB chunks, verifying each chunk's sha256 against the
   manifest and writing it (with its resume point) to disk, then ``finish`` checks the whole file.
   The baseline, timed in the same run, is a bare gRPC stream of the same chunks from the same server,
   read and dropped.  Targets: >= 500 MB/s and >= 0.5x the bare stream.
2. Egress: a coordinator and --edges real EdgeNodes in --zones zones, signed delivery, a staged rollout
   (canary 1, waves x2, no bake); the coordinator's artifact bytes sent / artifact size.  Goal: about the
   number of zones (one edge per zone fetches from the coordinator, the rest from a peer in its zone).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import grpc

from edgeloop.config import parse_cloud_config
from edgeloop.coordinator import Coordinator
from edgeloop.delivery import manifest as mf
from edgeloop.delivery import transfer
from edgeloop.protocol import mesh_pb2, mesh_pb2_grpc

TARGET_MBPS = 500.0
TARGET_RATIO = 0.5
CHUNK = 1 << 20
OPTIONS = [("grpc.max_receive_message_length", 64 << 20)]


def coordinator(root: Path, **delivery) -> Coordinator:
    config = parse_cloud_config({"storage": {"database": "cloud/db.sqlite", "fetch_chunk_bytes": CHUNK,
                                             "max_artifact_bytes": 4 << 30, "max_message_bytes": 8 << 20},
                                 "fleet": {"heartbeat_interval_ms": 200}, "delivery": delivery}, base_dir=root)
    return Coordinator(replace(config, node=replace(config.node, grpc_port=0, metrics_port=-1))).start()


def bare_stream(address: str, sha: str) -> int:
    with grpc.insecure_channel(address, options=OPTIONS) as channel:
        stub = mesh_pb2_grpc.CoordinatorStub(channel)
        return sum(len(m.data) for m in stub.FetchArtifact(mesh_pb2.FetchArtifactRequest(sha256=sha), timeout=600))


def throughput(root: Path, mb: int, repeats: int) -> tuple[float, float]:
    cloud = coordinator(root)
    try:
        block = os.urandom(CHUNK)
        blocks = [bytes([i % 256]) + block[1:] for i in range(mb)]
        sha, size = cloud.artifacts.put(iter(blocks))
        sha_, size_, chunks = mf.chunk_hashes_of_file(cloud.artifacts.path(sha), CHUNK)
        doc = mf.build("bench", 1, sha, size, chunks, 0, chunk_bytes=CHUNK)
        best_bare = best_fetch = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            assert bare_stream(cloud.address, sha) == size
            best_bare = min(best_bare, time.perf_counter() - t0)
            part = root / "fetch.part"
            with grpc.insecure_channel(cloud.address, options=OPTIONS) as channel:
                src = transfer.Source("coordinator", mesh_pb2_grpc.CoordinatorStub(channel), "coordinator")
                t0 = time.perf_counter()
                stats = transfer.fetch(doc, part, [src])
                transfer.finish_path(part, doc)
                best_fetch = min(best_fetch, time.perf_counter() - t0)
            assert stats.bad_chunks == 0 and stats.chunks_received == len(chunks)
            (root / "fetch.bin").unlink()
        return size / best_fetch / 1e6, size / best_bare / 1e6
    finally:
        cloud.stop(1)


def egress(root: Path, n_edges: int, zones: int) -> tuple[float, int, int]:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "node"))
    from nodekit import Edge, edge_config, wait_for  # real EdgeNodes, the tests' helper

    from edgeloop.config.delivery import EdgeDeliveryConfig
    from edgeloop.delivery.keys import init_keys
    from edgeloop.serving.demo_models import build_mlp

    private, public = init_keys(root / "keys")
    cloud = coordinator(root, signing_key=str(private), canary=1, bake_s=0, min_requests=0)
    edges = []
    try:
        for i in range(n_edges):
            cfg = edge_config(root, f"edge-{i}", cloud.address)
            cfg = replace(cfg, node=replace(cfg.node, zone=f"zone-{i % zones}"),
                          delivery=EdgeDeliveryConfig(trusted_keys=(public,), require_signed=True))
            edges.append(Edge(cfg))
        assert wait_for(lambda: all(e.node.link.connected for e in edges), timeout=60)
        data = build_mlp(hidden=16384, seed=5).SerializeToString()  # a few MB
        sha, size = cloud.artifacts.put(iter([data]))
        before = cloud.metrics.artifact_bytes._value.get()
        cloud.core.publish("mlp", 2, sha, size, reason="benchmark")
        (doc,) = cloud.core.rollouts.rollouts()
        done = wait_for(lambda: cloud.core.rollouts.rollouts()[0]["state"] == "done", timeout=120)
        state = cloud.core.rollouts.rollouts()[0]
        if not done:
            raise SystemExit(f"rollout did not finish: {state['state']} {state['reason']} {state['edges']}")
        sent = cloud.metrics.artifact_bytes._value.get() - before
        return sent / size, size, len(doc["waves"])
    finally:
        for e in edges:
            e.close()
        cloud.stop(1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb", type=int, default=256, help="artifact size for the throughput run (MB)")
    parser.add_argument("--repeats", type=int, default=3, help="best of N runs")
    parser.add_argument("--edges", type=int, default=8)
    parser.add_argument("--zones", type=int, default=2)
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args()
    if not (1 <= args.mb <= 4096 and 1 <= args.repeats <= 10 and 1 <= args.zones <= args.edges <= 64):
        parser.error("expected 1 <= --mb <= 4096, 1 <= --repeats <= 10, 1 <= --zones <= --edges <= 64")
    with tempfile.TemporaryDirectory(prefix="edgeloop-delivery-") as tmp:
        root = Path(tmp)
        fetch_mbps, bare_mbps = throughput(root / "t", args.mb, args.repeats)
        ratio = fetch_mbps / bare_mbps
        print(f"throughput ({args.mb} MB, 1 MiB chunks, best of {args.repeats}): verified fetch {fetch_mbps:.0f} MB/s, "
              f"bare gRPC stream {bare_mbps:.0f} MB/s, ratio {ratio:.2f} (targets >= {TARGET_MBPS:.0f} MB/s, "
              f">= {TARGET_RATIO})")
        per_size, size, waves = egress(root / "e", args.edges, args.zones)
        print(f"egress ({args.edges} edges, {args.zones} zones, {waves} waves, artifact {size} bytes): coordinator "
              f"sent {per_size:.2f} x the artifact (goal ~{args.zones}, not {args.edges})")
    missed = []
    if fetch_mbps < TARGET_MBPS:
        missed.append(f"throughput {fetch_mbps:.0f} < {TARGET_MBPS:.0f} MB/s")
    if ratio < TARGET_RATIO:
        missed.append(f"ratio {ratio:.2f} < {TARGET_RATIO}")
    if per_size > args.zones + 0.5:
        missed.append(f"egress {per_size:.2f} x > {args.zones} zones")
    if missed:
        print("MISSED: " + "; ".join(missed))
    return 1 if args.check and missed else 0


if __name__ == "__main__":
    sys.exit(main())
