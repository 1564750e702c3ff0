"""Mesh benchmark: placement speed, key movement, load balance, and the cost of one forwarding hop.

    .venv/bin/python benchmarks/mesh.py [--quick] [--check]

Every figure is measured in this run; speed is also given as a ratio to a baseline timed
in the same run (for placement the same rendezvous algorithm vectorised in NumPy over the
node hashes, one key per call like owner(); for forwarding a direct call).
Targets: single owner() <= 10 us at 100 nodes; movement <= 1.05x ideal; max/mean <= 1.25
with cap 1.25; forwarding p50 <= 2.1x direct.  With --check the exit status is 1 when a
target is missed.
"""
from __future__ import annotations

import argparse
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

from edgeloop import kernels
from edgeloop.bench.kernel_cases_stats import hrw_first_numpy
from edgeloop.mesh.placement import NodeEntry, Placement, Snapshot, key_hash

ROOT = Path(__file__).resolve().parents[1]


def snapshot(n: int, weighted: bool = False, capacity_factor=None, drop: str | None = None, epoch: int = 1):
    nodes = [NodeEntry.build(f"node-{i:03d}", (1.0 + i % 4) if weighted else 1.0, {"m": [1]})
             for i in range(n) if f"node-{i:03d}" != drop]
    return Snapshot.build(nodes, epoch, capacity_factor)


def numpy_owner(key: str, ids: list[str], node_hashes: np.ndarray, weights: np.ndarray | None) -> str:
    """Baseline: the same rendezvous algorithm in NumPy (same key hash, mixing and scores)."""
    return ids[hrw_first_numpy(key_hash(key), node_hashes, weights)]


def bench_owner(n: int, weighted: bool, calls: int) -> tuple[float, float, float, float]:
    """(ours s/call over all keys, NumPy s/call, fraction of keys with the same owner, ours s/call
    in the blocks interleaved with NumPy: the ratio uses this one)."""
    snap = snapshot(n, weighted)
    placement = Placement(snap)
    keys = [f"user-{i}" for i in range(calls)]
    ids = list(placement.candidates("m"))
    node_hashes = kernels.stable_hash_many(ids)
    weight_of = {e.node_id: e.weight for e in snap.nodes}
    w = np.array([weight_of[i] for i in ids]) if weighted else None
    placement.owner("warm", "m")
    numpy_owner("warm", ids, node_hashes, w)
    base_calls = max(50, calls // 20)
    ours_s = base_s = 0.0
    for start in range(0, base_calls, 10):  # interleaved blocks, so load drifts hit both alike
        block = keys[start:start + 10]
        t0 = time.perf_counter()
        for k in block:
            placement.owner(k, "m")
        t1 = time.perf_counter()
        for k in block:
            numpy_owner(k, ids, node_hashes, w)
        ours_s += t1 - t0
        base_s += time.perf_counter() - t1
    t0 = time.perf_counter()  # plus the full count for ours alone (cheap), for the absolute figure
    for k in keys:
        placement.owner(k, "m")
    ours = (time.perf_counter() - t0) / calls
    agree = sum(placement.owner(k, "m") == numpy_owner(k, ids, node_hashes, w) for k in keys[:base_calls])
    return ours, base_s / base_calls, agree / base_calls, ours_s / base_calls


def bench_batch(n: int, weighted: bool, keys: int, cap) -> float:
    placement = Placement(snapshot(n, weighted, cap))
    names = [f"user-{i}" for i in range(keys)]
    placement.assign(names[:100], "m")
    t0 = time.perf_counter()
    placement.assign(names, "m")
    return keys / (time.perf_counter() - t0)


def movement(n: int, keys: int) -> tuple[float, float]:
    names = [f"user-{i}" for i in range(keys)]
    base = Placement(snapshot(n)).assign(names, "m")
    joined = Placement(snapshot(n + 1)).assign(names, "m")
    left = Placement(snapshot(n, drop=f"node-{n // 2:03d}")).assign(names, "m")
    moved_join = sum(a != b for a, b in zip(base, joined)) / keys
    moved_leave = sum(a != b for a, b in zip(base, left)) / keys
    return moved_join / (1 / (n + 1)), moved_leave / (1 / n)


def balance(n: int, keys: int, cap) -> float:
    names = [f"user-{i}" for i in range(keys)]
    counts = Counter(Placement(snapshot(n, capacity_factor=cap)).assign(names, "m"))
    loads = [counts.get(f"node-{i:03d}", 0) for i in range(n)]
    return max(loads) / (sum(loads) / n)


# ---------------------------------------------------------------------------- forwarding
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _health_ok(address: str) -> bool:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(address) as ch:
        try:
            return health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=0.5).status == 1
        except grpc.RpcError:
            return False


def bench_forwarding(requests: int, time_limit_s: float) -> dict:
    """Two real `edgeloop edge` processes (static peers, no multicast); p50 of direct vs one hop."""
    import grpc

    from edgeloop.protocol import inference_pb2_grpc
    from edgeloop.protocol.codec import build_infer_request
    from edgeloop.serving.demo_models import build_mlp, write_model

    tmp = Path(tempfile.mkdtemp(prefix="edgeloop-bench-mesh-"))
    ports = {"a": _free_port(), "b": _free_port()}
    procs = []
    try:
        for name, other in (("a", "b"), ("b", "a")):
            write_model(tmp / name, "mlp", 1, build_mlp())
            cfg = tmp / f"{name}.toml"
            cfg.write_text(
                f'[node]\nid = "bench-{name}"\nhost = "127.0.0.1"\ngrpc_port = {ports[name]}\nmetrics_port = 9\n'
                f'[serving]\nmodel_repository = "{tmp / name}"\n'
                f'[mesh]\nenabled = true\nzeroconf_interfaces = []\nstatic_peers = ["127.0.0.1:{ports[other]}"]\n')
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "edgeloop", "edge", "--config", str(cfg), "--metrics-port", "0",
                 "--log-level", "WARNING"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        addr = {k: f"127.0.0.1:{p}" for k, p in ports.items()}
        deadline = time.monotonic() + 60
        while not all(_health_ok(a) for a in addr.values()):
            if time.monotonic() > deadline:
                raise RuntimeError("benchmark nodes did not start within 60 s")
            time.sleep(0.1)
        # a key that bench-b owns in the (identical) two-node placement
        placement = Placement(Snapshot.build([NodeEntry.build("bench-a", 1, {"mlp": [1]}),
                                              NodeEntry.build("bench-b", 1, {"mlp": [1]})], 0))
        key = next(f"k{i}" for i in range(1000) if placement.owner(f"k{i}", "mlp") == "bench-b")
        x = np.random.default_rng(0).normal(size=(1, 32)).astype(np.float32)
        req = build_infer_request("mlp", {"INPUT0": x})
        req.parameters["routing_key"].string_param = key
        ch = {k: grpc.insecure_channel(a) for k, a in addr.items()}
        stub = {k: inference_pb2_grpc.GRPCInferenceServiceStub(c) for k, c in ch.items()}
        # wait until a routes the key to b (its view has b up)
        time.sleep(1.0)
        direct, hop = [], []
        for _ in range(50):  # warm-up both paths
            stub["b"].ModelInfer(req, timeout=10)
            stub["a"].ModelInfer(req, timeout=10)
        start = time.monotonic()
        for _ in range(requests):
            if time.monotonic() - start > time_limit_s:
                break
            t0 = time.perf_counter()
            stub["b"].ModelInfer(req, timeout=10)
            t1 = time.perf_counter()
            stub["a"].ModelInfer(req, timeout=10)
            t2 = time.perf_counter()
            direct.append(t1 - t0)
            hop.append(t2 - t1)
        for c in ch.values():
            c.close()
        p50_d, p50_h = statistics.median(direct), statistics.median(hop)
        return {"n": len(direct), "direct_p50_us": p50_d * 1e6, "hop_p50_us": p50_h * 1e6, "ratio": p50_h / p50_d}
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
        shutil.rmtree(tmp, ignore_errors=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer keys and requests")
    parser.add_argument("--no-forwarding", action="store_true", help="skip the two-process hop benchmark")
    parser.add_argument("--check", action="store_true", help="exit 1 when any target is missed")
    args = parser.parse_args(argv)
    calls, keys, reqs = (5_000, 20_000, 300) if args.quick else (50_000, 100_000, 2_000)
    ok = True

    print("placement: single owner() call (us) vs the same algorithm in NumPy, one key per call")
    for n in (10, 100):
        for weighted in (False, True):
            ours, base, agree, ours_interleaved = bench_owner(n, weighted, calls)
            good = n != 100 or ours <= 10e-6
            ok &= good
            print(f"  {n:3d} nodes {'weighted  ' if weighted else 'unweighted'}: {ours * 1e6:6.2f} us "
                  f"({1 / ours:,.0f}/s)  NumPy {base * 1e6:7.1f} us  ratio {ours_interleaved / base:.4f} "
                  f"(same owner on {agree:.2%} of keys)"
                  + ("" if n != 100 else f"  target <= 10 us: {'PASS' if good else 'FAIL'}"))
    print(f"placement: batched assign of {keys:,} keys (decisions/s)")
    for n in (10, 100):
        for cap in (None, 1.25):
            rate = bench_batch(n, True, keys, cap)
            print(f"  {n:3d} nodes weighted cap={cap}: {rate:,.0f}/s")
    print(f"movement on join/leave ({keys:,} keys; 1.00 = ideal 1/n)")
    for n in (10, 100):
        j, lv = movement(n, keys)
        good = j <= 1.05 and lv <= 1.05
        ok &= good
        print(f"  {n:3d} nodes: join {j:.3f}x ideal, leave {lv:.3f}x ideal  target <= 1.05: "
              f"{'PASS' if good else 'FAIL'}")
    print("load max/mean (few keys per node is where the cap matters)")
    for n, k in ((10, keys), (100, keys), (100, 4_000)):
        free, capped = balance(n, k, None), balance(n, k, 1.25)
        good = capped <= 1.25
        ok &= good
        print(f"  {n:3d} nodes, {k:>7,} keys: no cap {free:.3f}, cap 1.25 {capped:.3f}  target <= 1.25: "
              f"{'PASS' if good else 'FAIL'}")
    if not args.no_forwarding:
        f = bench_forwarding(reqs, 60.0)
        good = f["ratio"] <= 2.1
        ok &= good
        print(f"forwarding ({f['n']} interleaved requests, 2 real nodes on loopback): direct p50 "
              f"{f['direct_p50_us']:.0f} us, one hop p50 {f['hop_p50_us']:.0f} us, ratio {f['ratio']:.2f}  "
              f"target <= 2.1: {'PASS' if good else 'FAIL'}")
    if not ok:
        print("some targets missed" + ("" if args.check else " (exit status 0 without --check)"))
    return 1 if args.check and not ok else 0


if __name__ == "__main__":
    raise SystemExit(main())
