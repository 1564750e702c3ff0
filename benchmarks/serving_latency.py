"""Edge-node serving overhead against a bare-grpcio floor, on loopback, in one run.

Model: the 32->64->4 float32 MLP of ``demo_models.build_mlp``; onnxruntime with one
intra-op and one inter-op thread, sequential execution, everywhere.

  (a) in-process ``session.run``                       — the model's own cost
  (b) the floor: bare grpcio, raw bytes in and out     — the least a Python gRPC server costs
  (c) the edge node via ModelInfer (``edgeloop edge``) — what we ship

(b) and (c) run in their own processes; this process is the client.  Batch 1, sequential,
measured in interleaved blocks (floor, node, floor, node, ...) so drifts in machine load
hit both alike.  Then throughput at concurrency 1, 4, 16 with dynamic batching off and on
(two node processes, also interleaved).  Every loop is bounded in count and time.

    python benchmarks/serving_latency.py [--quick] [--json FILE]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import grpc  # noqa: E402
import numpy as np  # noqa: E402

from serving_harness import (  # noqa: E402
    process_cpu_s, start_floor, start_node, time_calls, write_edge_config,
)

MODEL = "mlp"
IN_DIM, HIDDEN, OUT_DIM = 32, 64, 4
TARGETS = {"latency_p50": 1.10, "cpu_per_request": 1.15, "batching_throughput_c16": 1.5}
SCALE_NOTE = "For scale: MLServer 1.7 ~1.7x floor, PyTriton 0.7 ~4.3x floor (measured previously on this kind of machine)."


def percentile_ms(values: list[float], p: float) -> float:
    from edgeloop.perf.stats import percentile

    return percentile(sorted(values), p) * 1e3


def make_session(path: Path):
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from floor_server import make_session as floor_session

    return floor_session(str(path))


def node_request(x: np.ndarray) -> bytes:
    from edgeloop.protocol import inference_pb2

    request = inference_pb2.ModelInferRequest(model_name=MODEL)
    tensor = request.inputs.add(name="INPUT0", datatype="FP32")
    tensor.shape.extend(x.shape)
    request.raw_input_contents.append(x.astype("<f4").tobytes())
    return request.SerializeToString()


def check_answers(floor_call, node_call, x: np.ndarray, expected: np.ndarray) -> None:
    """Both servers must return what the in-process session returns, or the timings mean nothing."""
    from edgeloop.protocol import inference_pb2

    got_floor = np.frombuffer(floor_call(x.tobytes(), timeout=10), dtype=np.float32).reshape(expected.shape)
    response = inference_pb2.ModelInferResponse.FromString(node_call(node_request(x), timeout=10))
    got_node = np.frombuffer(response.raw_output_contents[0], dtype="<f4").reshape(expected.shape)
    for name, got in (("floor", got_floor), ("node", got_node)):
        if not np.allclose(got, expected, rtol=1e-5, atol=1e-6):
            raise SystemExit(f"{name} server answered {got.tolist()}, expected {expected.tolist()}")


def measure_in_process(session, x: np.ndarray, count: int, max_s: float) -> list[float]:
    feed = {"INPUT0": x}
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


def measure_sequential(floor, floor_call, node, node_call, x, blocks: int, per_block: int, max_s: float):
    """Interleaved blocks of sequential batch-1 requests; latencies and server CPU per request."""
    floor_payload, node_payload = x.tobytes(), node_request(x)
    time_calls(floor_call, floor_payload, 50, 2.0)  # warm-up: connections, allocations
    time_calls(node_call, node_payload, 50, 2.0)
    lat = {"floor": [], "node": []}
    cpu = {"floor": 0.0, "node": 0.0}
    stop = time.perf_counter() + max_s
    block_s = max_s / (2 * blocks)
    for block in range(blocks):
        order = [("floor", floor, floor_call, floor_payload), ("node", node, node_call, node_payload)]
        if block % 2:
            order.reverse()  # ABBA: neither side always runs second
        for name, server, call, payload in order:
            c0 = process_cpu_s(server.pid)
            lat[name] += time_calls(call, payload, per_block, block_s)
            cpu[name] += process_cpu_s(server.pid) - c0
        if time.perf_counter() > stop:
            break
    return lat, {k: cpu[k] / len(lat[k]) for k in cpu}


def measure_throughput(channels: dict, pids: dict, levels: list[int], rounds: int, seconds: float) -> dict:
    """Requests/s and CPU per request (server, and this client) per (config, concurrency), configs alternating."""
    from edgeloop.perf.load import LevelPlan, run_level

    rng = np.random.default_rng(1)
    pool = [node_request(rng.standard_normal((1, IN_DIM)).astype(np.float32)) for _ in range(16)]
    result = {}
    for c in levels:
        acc = {name: {"count": 0, "seconds": 0.0, "errors": 0, "server_cpu": 0.0, "client_cpu": 0.0}
               for name in channels}
        for r in range(rounds):
            names = list(channels) if r % 2 == 0 else list(reversed(channels))
            for name in names:
                plan = LevelPlan(concurrency=c, max_requests=1_000_000, max_duration_s=seconds, warmup=2 * c)
                s0, k0 = process_cpu_s(pids[name]), time.process_time()
                stats = run_level(channels[name], pool, plan).stats
                s1, k1 = process_cpu_s(pids[name]), time.process_time()
                total = stats.count + stats.errors + plan.warmup
                a = acc[name]
                a["count"] += stats.count
                a["seconds"] += stats.duration_s
                a["errors"] += stats.errors
                a["server_cpu"] += (s1 - s0) / total
                a["client_cpu"] += (k1 - k0) / total
        for name, a in acc.items():
            result[(name, c)] = {
                "infer_per_s": a["count"] / a["seconds"] if a["seconds"] else 0.0,
                "count": a["count"],
                "errors": a["errors"],
                "server_cpu_us": a["server_cpu"] / rounds * 1e6,
                "client_cpu_us": a["client_cpu"] / rounds * 1e6,
            }
    return result


def mean_batch_size(channel) -> float:
    """Inferences per model execution on a node so far: > 1 only if the batcher merged requests."""
    from edgeloop.protocol import inference_pb2, inference_pb2_grpc

    stub = inference_pb2_grpc.GRPCInferenceServiceStub(channel)
    stats = stub.ModelStatistics(inference_pb2.ModelStatisticsRequest(name=MODEL), timeout=10).model_stats
    executions = sum(s.execution_count for s in stats)
    return sum(s.inference_count for s in stats) / executions if executions else float("nan")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short run (~15 s) to check it works")
    parser.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    args = parser.parse_args(argv)

    from edgeloop.serving.demo_models import build_mlp, write_model

    if args.quick:
        blocks, per_block, seq_max_s, rounds, level_s = 4, 100, 10.0, 2, 0.5
    else:
        blocks, per_block, seq_max_s, rounds, level_s = 20, 250, 40.0, 3, 2.0
    levels = [1, 4, 16]
    x = np.random.default_rng(0).standard_normal((1, IN_DIM)).astype(np.float32)
    figures: dict = {"quick": args.quick}

    with tempfile.TemporaryDirectory(prefix="edgeloop-bench-") as tmp:
        root = Path(tmp) / "models"
        model_path = write_model(root, MODEL, 1, build_mlp(IN_DIM, HIDDEN, OUT_DIM))
        session = make_session(model_path)
        expected = session.run(None, {"INPUT0": x})[0]

        in_proc = measure_in_process(session, x, blocks * per_block, seq_max_s / 4)
        configs = {
            "off": write_edge_config(Path(tmp) / "edge-off.toml", "bench-off", root, 0, 0),
            "on": write_edge_config(Path(tmp) / "edge-on.toml", "bench-on", root, 64, 500),
        }
        floor, floor_port = start_floor(model_path)
        nodes = {}
        try:
            for name, cfg in configs.items():
                nodes[name] = start_node(cfg, MODEL)
            floor_channel = grpc.insecure_channel(f"127.0.0.1:{floor_port}")
            node_channels = {name: grpc.insecure_channel(f"127.0.0.1:{port}") for name, (_, port) in nodes.items()}
            floor_call = floor_channel.unary_unary("/edgeloop.bench.Floor/Infer")
            node_call = node_channels["off"].unary_unary("/inference.GRPCInferenceService/ModelInfer")
            check_answers(floor_call, node_call, x, expected)

            lat, cpu = measure_sequential(floor, floor_call, nodes["off"][0], node_call, x, blocks, per_block, seq_max_s)
            pids = {name: server.pid for name, (server, _) in nodes.items()}
            tput = measure_throughput(node_channels, pids, levels, rounds, level_s)
            mean_batch = mean_batch_size(node_channels["on"])
            floor_channel.close()
            for ch in node_channels.values():
                ch.close()
        finally:
            floor.close()
            for server, _ in nodes.values():
                server.close()

    rows = [("(a) in-process session.run", in_proc), ("(b) floor: bare grpcio", lat["floor"]),
            ("(c) edge node ModelInfer", lat["node"])]
    print(f"serving latency, batch 1, sequential; onnxruntime 1 intra-op / 1 inter-op thread; {os.cpu_count()} CPUs")
    print(f"{'':34} {'n':>6} {'p50 ms':>8} {'p99 ms':>8} {'server CPU/req':>15}")
    for label, values in rows:
        key = "floor" if "floor" in label else "node" if "node" in label else None
        cpu_text = f"{cpu[key] * 1e6:12.1f} us" if key else f"{'-':>15}"
        p50, p99 = percentile_ms(values, 50), percentile_ms(values, 99)
        print(f"{label:34} {len(values):>6} {p50:8.3f} {p99:8.3f} {cpu_text}")
        figures[label] = {"n": len(values), "p50_ms": p50, "p99_ms": p99, "server_cpu_us": cpu[key] * 1e6 if key else None}

    print(f"\nnode throughput (infer/s), batch 1 requests, {rounds} interleaved rounds of {level_s:g} s per level")
    print(f"{'':11} {'---------- batching off ----------':>34}  {'---------- batching on -----------':>34}")
    print(f"{'concurrency':>11} {'infer/s':>10} {'server CPU':>11} {'client CPU':>11}  "
          f"{'infer/s':>10} {'server CPU':>11} {'client CPU':>11} {'on/off':>7} {'errors':>6}")
    for c in levels:
        off, on = tput[("off", c)], tput[("on", c)]
        ratio = on["infer_per_s"] / off["infer_per_s"] if off["infer_per_s"] else float("nan")
        cells = [f"{d['infer_per_s']:10.1f} {d['server_cpu_us']:8.1f} us {d['client_cpu_us']:8.1f} us" for d in (off, on)]
        print(f"{c:>11} {cells[0]}  {cells[1]} {ratio:7.2f} {off['errors'] + on['errors']:>6}")
        figures[f"throughput_c{c}"] = {"off": off, "on": on, "on_over_off": ratio}
    run_us = percentile_ms(in_proc, 50) * 1e3
    print(f"(CPU per request; session.run itself is {run_us:.1f} us at batch 1, all that batching can merge away; "
          f"batching node: {mean_batch:.2f} inferences per execution over the whole run)")
    figures["batching_mean_batch_size"] = mean_batch

    ratios = {
        "latency_p50": percentile_ms(lat["node"], 50) / percentile_ms(lat["floor"], 50),
        "cpu_per_request": cpu["node"] / cpu["floor"],
        "batching_throughput_c16": figures["throughput_c16"]["on_over_off"],
    }
    labels = {
        "latency_p50": "node p50 / floor p50",
        "cpu_per_request": "node CPU / floor CPU per request",
        "batching_throughput_c16": "throughput batching on / off, c=16",
    }
    print("\nratios")
    misses = 0
    for key, value in ratios.items():
        target = TARGETS[key]
        ok = value >= target if key.startswith("batching") else value <= target
        misses += not ok
        sign = ">=" if key.startswith("batching") else "<="
        print(f"  {labels[key]:36} {value:6.2f}   target {sign} {target:.2f}   {'ok' if ok else 'MISS'}")
    print(f"\n{SCALE_NOTE}")
    figures["ratios"] = ratios
    figures["targets"] = TARGETS
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(figures, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
