"""Forwarding under load: two nodes each forwarding every request to the other, vs the same load served locally.

    .venv/bin/python benchmarks/mesh_forwarding.py [--seconds 20] [--clients 64] [--check]

Two real ``edgeloop edge`` processes (default ``serving.grpc_workers = 8``, static peers, no
multicast) serve two identical MLPs, ``m_a`` and ``m_b``.  Two load-driver processes, one per node,
each run ``--clients`` concurrent blocking clients (``edgeloop.perf.load``) for ``--seconds``:

* local phase: every key sent to a node is one it owns itself (no forwarding: the baseline);
* forwarded phase: every key sent to a node is one the *other* node owns, so every request is
  forwarded, in both directions at once.

Node a's clients ask for ``m_a`` and node b's for ``m_b``, so each node's ModelStatistics tell, per
model, which requests it served for its own clients (forward cap reached: served locally) and
which it served for the peer (forwarded).  Printed: failed requests and throughput per phase, the
forwarded/local throughput ratio, and the share of requests that were really forwarded.
Targets (``--check`` exits 1 when missed): 0 failed requests; ratio >= 0.8.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mesh import _free_port, _health_ok  # noqa: E402  (the mesh benchmark's helpers, one copy)

ROOT = Path(__file__).resolve().parents[1]
MODELS = {"a": "m_a", "b": "m_b"}  # the model each node's clients ask for
TARGET_RATIO = 0.8
KEYS_PER_DRIVER = 256
STARTUP_LIMIT_S = 60.0
REQUEST_TIMEOUT_S = 10.0




def _members_up(address: str) -> set[str]:
    """Node ids the node at ``address`` sees up (its Peer.Describe view)."""
    import grpc

    from edgeloop.protocol import mesh_pb2, mesh_pb2_grpc

    with grpc.insecure_channel(address) as ch:
        try:
            reply = mesh_pb2_grpc.PeerStub(ch).Describe(mesh_pb2.DescribeRequest(), timeout=1)
        except grpc.RpcError:
            return set()
    return {m.node.node_id for m in reply.members if m.state == "up"} | {reply.node.node_id}


def _served(address: str) -> dict[str, int]:
    """Requests answered per model by the node at ``address``."""
    import grpc

    from edgeloop.protocol import inference_pb2, inference_pb2_grpc

    with grpc.insecure_channel(address) as ch:
        stats = inference_pb2_grpc.GRPCInferenceServiceStub(ch).ModelStatistics(
            inference_pb2.ModelStatisticsRequest(), timeout=10)
    out: dict[str, int] = {}
    for s in stats.model_stats:
        out[s.name] = out.get(s.name, 0) + s.inference_stats.success.count
    return out


def _cpu_s(pids) -> float:
    """CPU seconds (user + system) the processes ``pids`` have used so far (Linux /proc)."""
    import os

    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return float("nan")
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / os.sysconf("SC_CLK_TCK")


def _keys(owner_of, model: str, owner: str, count: int) -> list[str]:
    keys = []
    for i in range(1_000_000):
        if owner_of(f"user-{i}", model) == owner:
            keys.append(f"user-{i}")
            if len(keys) == count:
                return keys
    raise RuntimeError(f"fewer than {count} keys owned by {owner}")


# ------------------------------------------------------------------------------ the driver process
def drive(address: str, model: str, keys: list[str], clients: int, seconds: float) -> dict:
    """One node's load: ``clients`` blocking callers for ``seconds`` (bounded in count too)."""
    import grpc
    import numpy as np

    from edgeloop.perf.load import LevelPlan, run_level
    from edgeloop.protocol.codec import build_infer_request

    x = np.random.default_rng(0).normal(size=(1, 32)).astype(np.float32)
    pool = []
    for key in keys:
        request = build_infer_request(model, {"INPUT0": x})
        request.parameters["routing_key"].string_param = key
        pool.append(request.SerializeToString())
    plan = LevelPlan(concurrency=clients, max_requests=clients * int(seconds) * 2000, max_duration_s=seconds,
                     warmup=clients, timeout_s=REQUEST_TIMEOUT_S)
    with grpc.insecure_channel(address) as channel:
        outcome = run_level(channel, pool, plan)
    s = outcome.stats
    return {"count": s.count, "errors": s.errors, "rps": s.requests_per_s, "p50_ms": s.p50_ms if s.count else None,
            "p99_ms": s.p99_ms if s.count else None, "error_samples": outcome.error_samples}


def _run_phase(addr: dict, keys: dict, clients: int, seconds: float, node_pids: list[int]) -> dict:
    """Both drivers at once, each in its own process; their results, the per-model served deltas, node CPU."""
    before = {n: _served(a) for n, a in addr.items()}
    cpu_before = _cpu_s(node_pids)
    procs = {}
    for name in addr:
        args = json.dumps({"address": addr[name], "model": MODELS[name], "keys": keys[name], "clients": clients,
                           "seconds": seconds})
        procs[name] = subprocess.Popen([sys.executable, __file__, "--drive", args], stdout=subprocess.PIPE,
                                       text=True)
    results = {}
    for name, proc in procs.items():
        out, _ = proc.communicate(timeout=2 * seconds + REQUEST_TIMEOUT_S + 60)
        if proc.returncode != 0:
            raise RuntimeError(f"driver {name} exited {proc.returncode}")
        results[name] = json.loads(out.strip().splitlines()[-1])
    cpu = _cpu_s(node_pids) - cpu_before
    after = {n: _served(a) for n, a in addr.items()}
    served = {n: {m: after[n].get(m, 0) - before[n].get(m, 0) for m in MODELS.values()} for n in addr}
    total = sum(r["count"] for r in results.values())
    return {"drivers": results, "served": served, "count": total, "cpu_s": cpu,
            "errors": sum(r["errors"] for r in results.values()),
            "rps": sum(r["rps"] for r in results.values())}


def _merge(runs: list[dict]) -> dict:
    """Several runs of one phase as one: counts and CPU summed, throughput averaged over the runs."""
    if len(runs) == 1:
        return runs[0]
    drivers = {n: {"count": sum(r["drivers"][n]["count"] for r in runs),
                   "errors": sum(r["drivers"][n]["errors"] for r in runs),
                   "p50_ms": sorted(r["drivers"][n]["p50_ms"] or 0 for r in runs)[len(runs) // 2],
                   "p99_ms": max(r["drivers"][n]["p99_ms"] or 0 for r in runs),
                   "error_samples": [e for r in runs for e in r["drivers"][n]["error_samples"]][:5]}
               for n in runs[0]["drivers"]}
    served = {n: {m: sum(r["served"][n][m] for r in runs) for m in runs[0]["served"][n]} for n in runs[0]["served"]}
    return {"drivers": drivers, "served": served, "count": sum(r["count"] for r in runs),
            "cpu_s": sum(r["cpu_s"] for r in runs), "errors": sum(r["errors"] for r in runs),
            "rps": sum(r["rps"] for r in runs) / len(runs), "each_rps": [r["rps"] for r in runs]}


def bench(clients: int, seconds: float, workers: int, rounds: int = 1) -> dict:
    from edgeloop.mesh.placement import NodeEntry, Placement, Snapshot
    from edgeloop.serving.demo_models import build_mlp, write_model

    tmp = Path(tempfile.mkdtemp(prefix="edgeloop-bench-fwd-"))
    ports = {"a": _free_port(), "b": _free_port()}
    addr = {k: f"127.0.0.1:{p}" for k, p in ports.items()}
    procs = []
    try:
        for name, other in (("a", "b"), ("b", "a")):
            for model in MODELS.values():
                write_model(tmp / name, model, 1, build_mlp(seed=3))
            cfg = tmp / f"{name}.toml"
            cfg.write_text(
                f'[node]\nid = "fwd-{name}"\nhost = "127.0.0.1"\ngrpc_port = {ports[name]}\nmetrics_port = 9\n'
                f'[serving]\nmodel_repository = "{tmp / name}"\ngrpc_workers = {workers}\n'
                f'[mesh]\nenabled = true\nzeroconf_interfaces = []\nstatic_peers = ["{addr[other]}"]\n')
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "edgeloop", "edge", "--config", str(cfg), "--metrics-port", "0",
                 "--log-level", "WARNING"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        deadline = time.monotonic() + STARTUP_LIMIT_S
        ids = {"fwd-a", "fwd-b"}
        while not (all(_health_ok(a) for a in addr.values()) and all(_members_up(a) >= ids for a in addr.values())):
            if time.monotonic() > deadline:
                raise RuntimeError(f"benchmark nodes did not see each other within {STARTUP_LIMIT_S:.0f} s")
            time.sleep(0.2)
        # the nodes' own placement over the same two members (ids, weight 1, both models at version 1)
        models = {m: [1] for m in MODELS.values()}
        placement = Placement(Snapshot.build([NodeEntry.build("fwd-a", 1.0, models),
                                              NodeEntry.build("fwd-b", 1.0, models)], 0))
        own = {n: _keys(placement.owner, MODELS[n], f"fwd-{n}", KEYS_PER_DRIVER) for n in addr}
        other = {n: _keys(placement.owner, MODELS[n], f"fwd-{'b' if n == 'a' else 'a'}", KEYS_PER_DRIVER)
                 for n in addr}
        pids = [p.pid for p in procs]
        phases = {"local": [], "forwarded": []}
        for _ in range(rounds):  # alternated, so drift in the machine's load hits both alike
            phases["local"].append(_run_phase(addr, own, clients, seconds, pids))
            phases["forwarded"].append(_run_phase(addr, other, clients, seconds, pids))
        local, forwarded = _merge(phases["local"]), _merge(phases["forwarded"])
        # in the forwarded phase node a served m_b only for b (forwards) and m_a only for its own clients
        forwards = forwarded["served"]["a"][MODELS["b"]] + forwarded["served"]["b"][MODELS["a"]]
        # in the local phase nothing may have been forwarded (else the placement above is not the nodes')
        stray = local["served"]["a"][MODELS["b"]] + local["served"]["b"][MODELS["a"]]
        return {"local": local, "forwarded": forwarded, "forwards": forwards, "local_stray": stray,
                "ratio": forwarded["rps"] / local["rps"] if local["rps"] else 0.0}
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
    parser.add_argument("--seconds", type=float, default=20.0, help="length of each phase (default 20)")
    parser.add_argument("--clients", type=int, default=64, help="concurrent clients per node (default 64)")
    parser.add_argument("--workers", type=int, default=8, help="serving.grpc_workers of each node (default 8)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="alternate the two phases this many times (each --seconds long; default 1)")
    parser.add_argument("--check", action="store_true", help=f"exit 1 on any failed request or ratio < {TARGET_RATIO}")
    parser.add_argument("--drive", help=argparse.SUPPRESS)  # internal: run one driver (JSON arguments)
    args = parser.parse_args(argv)
    if args.drive:
        spec = json.loads(args.drive)
        print(json.dumps(drive(spec["address"], spec["model"], spec["keys"], spec["clients"], spec["seconds"])))
        return 0
    if not 0 < args.seconds <= 600 or not 0 < args.clients <= 1024:
        parser.error("--seconds must be in (0, 600] and --clients in 1..1024")
    r = bench(args.clients, args.seconds, args.workers, max(1, args.rounds))
    print(f"two nodes, grpc_workers={args.workers}, {args.clients} clients per node, {args.seconds:g} s per phase"
          + (f", phases alternated {args.rounds} times" if args.rounds > 1 else ""))
    for phase in ("local", "forwarded"):
        p = r[phase]
        lat = ", ".join(f"{n}: p50 {d['p50_ms'] or 0:.1f} ms p99 {d['p99_ms'] or 0:.1f} ms"
                        for n, d in sorted(p["drivers"].items()))
        each = f" (each: {', '.join(f'{x:.0f}' for x in p['each_rps'])})" if "each_rps" in p else ""
        print(f"  {phase:9s}: {p['count']:7d} ok, {p['errors']:4d} failed, {p['rps']:8.0f} req/s{each}, "
              f"nodes' CPU {1e6 * p['cpu_s'] / max(p['count'], 1):.0f} us/request  ({lat})")
        for n, d in sorted(p["drivers"].items()):
            if d["error_samples"]:
                print(f"      errors at node {n}: {d['error_samples']}")
    fwd, loc = r["forwarded"], r["local"]
    answered = sum(sum(per_model.values()) for per_model in fwd["served"].values())  # warm-up included
    share = r["forwards"] / answered if answered else 0.0
    print(f"  forwarded phase: {r['forwards']} of {answered} requests answered by the key's owner after a hop "
          f"({share:.0%}); the rest by the entry node (forward cap reached)")
    if fwd["count"] and loc["count"] and fwd["cpu_s"] > 0:
        efficiency = (loc["cpu_s"] / loc["count"]) / (fwd["cpu_s"] / fwd["count"])
        print(f"  nodes' CPU per request, local/forwarded: {efficiency:.2f} (throughput per CPU-second; on a "
              f"shared machine the throughput ratio also moves with the CPU the nodes get)")
    if r["local_stray"]:
        print(f"  WARNING: {r['local_stray']} local-phase requests were forwarded: the key split is not the nodes'")
    print(f"  forwarded/local throughput ratio: {r['ratio']:.2f} (target >= {TARGET_RATIO})")
    failed = r["local"]["errors"] + fwd["errors"]
    ok = failed == 0 and r["ratio"] >= TARGET_RATIO
    print(f"  failed requests: {failed} (target 0) -> {'OK' if ok else 'MISSED'}")
    return 1 if args.check and not ok else 0


if __name__ == "__main__":
    sys.exit(main())
