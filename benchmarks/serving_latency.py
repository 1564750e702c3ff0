"""Edge-node serving overhead against a bare-grpcio floor, on loopback, in one run.

Model: the 32->64->4 float32 MLP of ``demo_models.build_mlp``; onnxruntime with one
intra-op and one inter-op thread, sequential execution, everywhere.

  (a) in-process ``session.run``                       — the model's own cost
  (b) the floor: bare grpcio, raw bytes in and out     — the least a Python gRPC server costs
  (p) the protocol floor: the same server and handler, but ModelInfer protobufs in and out
      (``floor_server.py --protocol``)                 — the least the Open Inference Protocol costs
  (c) the edge node via ModelInfer (``edgeloop edge``) — what we ship

(b), (p) and (c) run in their own processes; this process is the client.  Batch 1,
sequential, measured in interleaved blocks whose server order runs through every
permutation (no server always first, none always after the same one: order effects of
~10% were seen) so drifts in machine load hit all alike.  The targets compare (c) with the
raw floor (b); (p) only adds two informational ratios: (p)/(b), what the protocol itself
costs, and (c)/(p), what edgeloop adds over the protocol.  Then throughput at concurrency 1, 4, 16 with dynamic batching off and on
(two node processes, also interleaved).  Every loop is bounded in count and time.

The small MLP cannot show what batching buys: its ``session.run`` is a few microseconds
while the gRPC path costs hundreds per request, so a supplementary section repeats the
on/off throughput comparison (concurrency 4 and 16) with compute-heavier MLPs from the same
``build_mlp`` (default 512->4096->4 and 2048->4096->4; ``--heavy-dims``, or ``--no-heavy``), so
the point where dynamic batching starts to pay shows.  The required figures and their targets
are those of the small MLP only.

With ``--check`` the exit status is 1 when a required ratio misses its target.  Only
figures measured in this run are printed (no other server's numbers: measure them with
``edgeloop perf`` against that server, in the same run, to compare).

    python benchmarks/serving_latency.py [--quick] [--json FILE] [--check]
"""
from __future__ import annotations

import argparse
import itertools
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
    process_cpu_s, start_floor, start_node, time_calls, time_session_run, write_edge_config,
)

MODEL = "mlp"
IN_DIM, HIDDEN, OUT_DIM = 32, 64, 4
HEAVY_MODEL = "mlp_heavy"
HEAVY_DIMS = [(512, 4096, 4), (2048, 4096, 4)]
HEAVY_LEVELS = [4, 16]
TARGETS = {"latency_p50": 1.10, "cpu_per_request": 1.15, "batching_throughput_c16": 1.5}


def percentile_ms(values: list[float], p: float) -> float:
    from edgeloop.perf.stats import percentile

    return percentile(sorted(values), p) * 1e3


def make_session(path: Path):
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from floor_server import make_session as floor_session

    return floor_session(str(path))


def node_request(x: np.ndarray, model: str = MODEL) -> bytes:
    from edgeloop.protocol import inference_pb2

    request = inference_pb2.ModelInferRequest(model_name=model)
    tensor = request.inputs.add(name="INPUT0", datatype="FP32")
    tensor.shape.extend(x.shape)
    request.raw_input_contents.append(x.astype("<f4").tobytes())
    return request.SerializeToString()


def node_answer(node_call, x: np.ndarray, shape: tuple, model: str = MODEL) -> np.ndarray:
    from edgeloop.protocol import inference_pb2

    response = inference_pb2.ModelInferResponse.FromString(node_call(node_request(x, model), timeout=10))
    return np.frombuffer(response.raw_output_contents[0], dtype="<f4").reshape(shape)


def check_close(name: str, got: np.ndarray, expected: np.ndarray) -> None:
    if not np.allclose(got, expected, rtol=1e-5, atol=1e-6):
        raise SystemExit(f"{name} answered {got.tolist()}, expected {expected.tolist()}")


def check_answers(floor_call, protocol_call, node_call, x: np.ndarray, expected: np.ndarray) -> None:
    """Every server must return what the in-process session returns, or the timings mean nothing."""
    got_floor = np.frombuffer(floor_call(x.tobytes(), timeout=10), dtype=np.float32).reshape(expected.shape)
    check_close("floor server", got_floor, expected)
    check_close("protocol floor server", node_answer(protocol_call, x, expected.shape), expected)
    check_close("node server", node_answer(node_call, x, expected.shape), expected)


def measure_sequential(targets: dict, blocks: int, per_block: int, max_s: float):
    """Interleaved blocks of sequential batch-1 requests; latencies and server CPU per request.

    ``targets`` maps a name to ``(pid, call, payload)``.  Block ``i`` visits the servers in
    the ``i``-th permutation of their order (cycling), so each server is first, middle and
    last equally often and follows each other server equally often.
    """
    for _, call, payload in targets.values():
        time_calls(call, payload, 50, 2.0)  # warm-up: connections, allocations
    orders = list(itertools.permutations(targets))
    lat = {name: [] for name in targets}
    cpu = {name: 0.0 for name in targets}
    stop = time.perf_counter() + max_s
    block_s = max_s / (len(targets) * blocks)
    for block in range(blocks):
        for name in orders[block % len(orders)]:
            pid, call, payload = targets[name]
            c0 = process_cpu_s(pid)
            lat[name] += time_calls(call, payload, per_block, block_s)
            cpu[name] += process_cpu_s(pid) - c0
        if time.perf_counter() > stop:
            break
    return lat, {k: cpu[k] / len(lat[k]) for k in cpu}


def request_pool(model: str, in_dim: int, size: int = 16) -> list[bytes]:
    """Pre-serialized batch-1 requests with seeded random inputs."""
    rng = np.random.default_rng(1)
    return [node_request(rng.standard_normal((1, in_dim)).astype(np.float32), model) for _ in range(size)]


def measure_throughput(channels: dict, pids: dict, levels: list[int], rounds: int, seconds: float,
                       pool: list[bytes]) -> dict:
    """Requests/s and CPU per request (server, and this client) per (config, concurrency), configs alternating."""
    from edgeloop.perf.load import LevelPlan, run_level

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


def mean_batch_size(channel, model: str = MODEL) -> float:
    """Inferences per model execution on a node so far: > 1 only if the batcher merged requests."""
    from edgeloop.protocol import inference_pb2, inference_pb2_grpc

    stub = inference_pb2_grpc.GRPCInferenceServiceStub(channel)
    stats = stub.ModelStatistics(inference_pb2.ModelStatisticsRequest(name=model), timeout=10).model_stats
    executions = sum(s.execution_count for s in stats)
    return sum(s.inference_count for s in stats) / executions if executions else float("nan")


def measure_heavy(tmp: Path, dims: tuple[int, int, int], rounds: int, level_s: float,
                  runs: int, run_max_s: float) -> dict:
    """Supplementary: batching on vs off with a compute-heavier MLP, where merging runs has something to save.

    Same node configs, client and interleaving as the required section; only the model differs.
    """
    from edgeloop.serving.demo_models import build_mlp, write_model

    in_dim, _, out_dim = dims
    tag = "x".join(map(str, dims))
    root = tmp / f"models-heavy-{tag}"
    model_path = write_model(root, HEAVY_MODEL, 1, build_mlp(*dims))
    session = make_session(model_path)
    rng = np.random.default_rng(2)
    x1 = rng.standard_normal((1, in_dim)).astype(np.float32)
    x16 = rng.standard_normal((16, in_dim)).astype(np.float32)
    run1 = time_session_run(session, x1, runs, run_max_s)
    run16 = time_session_run(session, x16, runs, run_max_s)
    expected = session.run(None, {"INPUT0": x1})[0]
    del session
    configs = {
        "off": write_edge_config(tmp / f"edge-heavy-{tag}-off.toml", "bench-heavy-off", root, 0, 0),
        "on": write_edge_config(tmp / f"edge-heavy-{tag}-on.toml", "bench-heavy-on", root, 64, 500),
    }
    nodes = {}
    try:
        for name, cfg in configs.items():
            nodes[name] = start_node(cfg, HEAVY_MODEL)
        channels = {name: grpc.insecure_channel(f"127.0.0.1:{port}") for name, (_, port) in nodes.items()}
        for name, channel in channels.items():
            call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
            check_close(f"heavy node (batching {name})", node_answer(call, x1, (1, out_dim), HEAVY_MODEL), expected)
        pids = {name: server.pid for name, (server, _) in nodes.items()}
        tput = measure_throughput(channels, pids, HEAVY_LEVELS, rounds, level_s, request_pool(HEAVY_MODEL, in_dim))
        mean_batch = mean_batch_size(channels["on"], HEAVY_MODEL)
        for channel in channels.values():
            channel.close()
    finally:
        for server, _ in nodes.values():
            server.close()
    return {"dims": dims, "rounds": rounds, "level_s": level_s, "run1": run1, "run16": run16,
            "tput": tput, "mean_batch": mean_batch}


def print_heavy(heavy: dict) -> dict:
    """Print the supplementary section; return its figures for the JSON file."""
    dims, tput = heavy["dims"], heavy["tput"]
    run1_us = percentile_ms(heavy["run1"], 50) * 1e3
    run16_us = percentile_ms(heavy["run16"], 50) * 1e3
    print(f"\nsupplementary (no target): batching on vs off with a compute-heavier MLP "
          f"{dims[0]}->{dims[1]}->{dims[2]} float32, same node configs and client")
    print(f"  in-process session.run p50: batch 1 {run1_us:.1f} us, batch 16 {run16_us:.1f} us "
          f"(= {run16_us / 16:.1f} us per row, {run1_us / (run16_us / 16):.1f}x cheaper per row than batch 1; "
          f"n={len(heavy['run1'])}/{len(heavy['run16'])})")
    print(f"  node throughput (infer/s), batch 1 requests, {heavy['rounds']} interleaved rounds of "
          f"{heavy['level_s']:g} s per level")
    print(f"  {'concurrency':>11} {'off infer/s':>12} {'server CPU':>11}  {'on infer/s':>11} {'server CPU':>11} "
          f"{'on/off':>7} {'errors':>6}")
    out = {"dims": list(dims), "session_run_batch1_us": run1_us, "session_run_batch16_us": run16_us,
           "mean_batch_size": heavy["mean_batch"]}
    for c in HEAVY_LEVELS:
        off, on = tput[("off", c)], tput[("on", c)]
        ratio = on["infer_per_s"] / off["infer_per_s"] if off["infer_per_s"] else float("nan")
        print(f"  {c:>11} {off['infer_per_s']:12.1f} {off['server_cpu_us']:8.1f} us  {on['infer_per_s']:11.1f} "
              f"{on['server_cpu_us']:8.1f} us {ratio:7.2f} {off['errors'] + on['errors']:>6}")
        out[f"throughput_c{c}"] = {"off": off, "on": on, "on_over_off": ratio}
    off16 = tput[("off", 16)]["server_cpu_us"]
    print(f"  (session.run is {run1_us:.0f} us of {off16:.0f} us server CPU per request with batching off at c=16, "
          f"{run1_us / off16:.0%}; batching node: {heavy['mean_batch']:.2f} inferences per execution, c=4 and c=16 together)")
    return out


def print_protocol_ratios(lat: dict, cpu: dict) -> dict:
    """Split the node's cost over the raw floor into the protocol's share and edgeloop's (no targets)."""
    p50 = {name: percentile_ms(values, 50) for name, values in lat.items()}
    pairs = {
        "protocol_floor_over_floor": ("protocol", "floor", "protocol floor / raw floor", "what the protocol itself costs"),
        "node_over_protocol_floor": ("node", "protocol", "node / protocol floor", "what edgeloop adds over the protocol"),
    }
    print("\ninformational ratios (no target; the targets above stay against the raw floor)")
    out = {}
    for key, (top, bottom, label, meaning) in pairs.items():
        out[key] = {"latency_p50": p50[top] / p50[bottom], "cpu_per_request": cpu[top] / cpu[bottom]}
        print(f"  {label:26} p50 {out[key]['latency_p50']:5.2f}   CPU/req {out[key]['cpu_per_request']:5.2f}   "
              f"({meaning}: {(p50[top] - p50[bottom]) * 1e3:+.1f} us p50, "
              f"{(cpu[top] - cpu[bottom]) * 1e6:+.1f} us CPU per request)")
    return out


def parse_dims(text: str) -> tuple[int, int, int]:
    try:
        dims = tuple(int(part) for part in text.split(","))
    except ValueError:
        dims = ()
    if len(dims) != 3 or min(dims) < 1:
        raise argparse.ArgumentTypeError(f"--heavy-dims={text!r}; expected three positive integers IN,HIDDEN,OUT")
    return dims


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short run (~20 s) to check it works")
    parser.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    parser.add_argument("--heavy-dims", type=parse_dims, nargs="+", default=HEAVY_DIMS, metavar="IN,HIDDEN,OUT",
                        help="dims of the supplementary compute-heavier MLPs (default %(default)s)")
    parser.add_argument("--no-heavy", action="store_true", help="skip the supplementary heavier-model section")
    parser.add_argument("--check", action="store_true", help="exit 1 when a required ratio misses its target")
    args = parser.parse_args(argv)

    from edgeloop.serving.demo_models import build_mlp, write_model

    if args.quick:
        blocks, per_block, seq_max_s, rounds, level_s = 6, 80, 10.0, 2, 0.5
        heavy_rounds, heavy_level_s, heavy_runs, heavy_run_max_s = 2, 0.5, 50, 0.5
    else:
        blocks, per_block, seq_max_s, rounds, level_s = 24, 200, 40.0, 3, 2.0
        heavy_rounds, heavy_level_s, heavy_runs, heavy_run_max_s = 2, 1.5, 200, 1.0
    levels = [1, 4, 16]
    x = np.random.default_rng(0).standard_normal((1, IN_DIM)).astype(np.float32)
    figures: dict = {"quick": args.quick}

    with tempfile.TemporaryDirectory(prefix="edgeloop-bench-") as tmp:
        root = Path(tmp) / "models"
        model_path = write_model(root, MODEL, 1, build_mlp(IN_DIM, HIDDEN, OUT_DIM))
        session = make_session(model_path)
        expected = session.run(None, {"INPUT0": x})[0]

        in_proc = time_session_run(session, x, blocks * per_block, seq_max_s / 4)
        configs = {
            "off": write_edge_config(Path(tmp) / "edge-off.toml", "bench-off", root, 0, 0),
            "on": write_edge_config(Path(tmp) / "edge-on.toml", "bench-on", root, 64, 500),
        }
        floor, floor_port = start_floor(model_path)
        protocol_floor = None
        nodes = {}
        try:
            protocol_floor, protocol_port = start_floor(model_path, protocol=True)
            for name, cfg in configs.items():
                nodes[name] = start_node(cfg, MODEL)
            floor_channel = grpc.insecure_channel(f"127.0.0.1:{floor_port}")
            node_channels = {name: grpc.insecure_channel(f"127.0.0.1:{port}") for name, (_, port) in nodes.items()}
            protocol_channel = grpc.insecure_channel(f"127.0.0.1:{protocol_port}")
            floor_call = floor_channel.unary_unary("/edgeloop.bench.Floor/Infer")
            protocol_call = protocol_channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
            node_call = node_channels["off"].unary_unary("/inference.GRPCInferenceService/ModelInfer")
            check_answers(floor_call, protocol_call, node_call, x, expected)

            targets = {"floor": (floor.pid, floor_call, x.tobytes()),
                       "protocol": (protocol_floor.pid, protocol_call, node_request(x)),
                       "node": (nodes["off"][0].pid, node_call, node_request(x))}
            lat, cpu = measure_sequential(targets, blocks, per_block, seq_max_s)
            pids = {name: server.pid for name, (server, _) in nodes.items()}
            tput = measure_throughput(node_channels, pids, levels, rounds, level_s, request_pool(MODEL, IN_DIM))
            mean_batch = mean_batch_size(node_channels["on"])
            floor_channel.close()
            protocol_channel.close()
            for ch in node_channels.values():
                ch.close()
        finally:
            floor.close()
            if protocol_floor is not None:
                protocol_floor.close()
            for server, _ in nodes.values():
                server.close()
        heavy = [] if args.no_heavy else [
            measure_heavy(Path(tmp), dims, heavy_rounds, heavy_level_s, heavy_runs, heavy_run_max_s)
            for dims in args.heavy_dims]

    rows = [("(a) in-process session.run", None, in_proc), ("(b) floor: bare grpcio", "floor", lat["floor"]),
            ("(p) protocol floor: ModelInfer pb", "protocol", lat["protocol"]),
            ("(c) edge node ModelInfer", "node", lat["node"])]
    print(f"serving latency, batch 1, sequential; onnxruntime 1 intra-op / 1 inter-op thread; {os.cpu_count()} CPUs; "
          f"{blocks} interleaved blocks of up to {per_block} per server, order through all permutations")
    print(f"{'':34} {'n':>6} {'p50 ms':>8} {'p99 ms':>8} {'server CPU/req':>15}")
    for label, key, values in rows:
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
    off16_cpu_us = figures["throughput_c16"]["off"]["server_cpu_us"]
    bound = off16_cpu_us / max(off16_cpu_us - run_us, 1e-9)
    print(f"  {'why' if ratios['batching_throughput_c16'] < TARGETS['batching_throughput_c16'] else 'headroom'}: "
          f"session.run is {run_us:.1f} us per request (in-process, batch 1) of {off16_cpu_us:.1f} us server CPU "
          f"per request (batching off, c=16), so even free batched runs give at most {bound:.2f}x")
    figures["batching_c16_bound"] = {"session_run_us": run_us, "server_cpu_off_c16_us": off16_cpu_us,
                                     "max_on_over_off": bound}
    figures["informational_ratios"] = print_protocol_ratios(lat, cpu)
    figures["supplementary_heavy"] = [print_heavy(h) for h in heavy]
    figures["ratios"] = ratios
    figures["targets"] = TARGETS
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(figures, fh, indent=2)
    return 1 if args.check and misses else 0


if __name__ == "__main__":
    sys.exit(main())
