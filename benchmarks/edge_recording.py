"""Serving p50 with sample recording on vs off, measured in one run.

Two ``edgeloop edge`` processes serve the same model with the same settings; one records every
request (sample_rate 1.0: outbox, edge statistics, uploader to a running ``edgeloop cloud``), the
other has no coordinator (recording off).  This process is the client: one request at a time, in
short rounds that alternate between the two servers (order rotated per round), so machine noise
hits both alike.  Prints both p50s and the ratio on/off; ``--check`` exits 1 when the ratio passes
the goal (1.05).

    python benchmarks/edge_recording.py [--requests 4000] [--rounds 20] [--check]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import grpc
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fleet_harness import FEATURES, MODEL, Fleet, outbox_pending  # noqa: E402

GOAL = 1.05


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=4000, help="requests per server in total (default 4000)")
    parser.add_argument("--rounds", type=int, default=20, help="alternating rounds (default 20)")
    parser.add_argument("--check", action="store_true", help=f"exit 1 if p50 on/off > {GOAL}")
    args = parser.parse_args(argv)
    if args.requests < args.rounds or args.rounds < 2:
        parser.error("--requests must be >= --rounds >= 2")

    from edgeloop.protocol import inference_pb2_grpc
    from edgeloop.protocol.codec import build_infer_request

    with tempfile.TemporaryDirectory(prefix="edgeloop-recording-") as tmp:
        fleet = Fleet(Path(tmp))
        try:
            fleet.start_cloud()
            on = fleet.start_edge("edge-on", record=True)
            off = fleet.start_edge("edge-off", record=False)
            channels = {name: grpc.insecure_channel(p.address) for name, p in (("on", on), ("off", off))}
            stubs = {name: inference_pb2_grpc.GRPCInferenceServiceStub(c) for name, c in channels.items()}
            x = np.random.default_rng(0).normal(size=(1, FEATURES)).astype(np.float32)
            request = build_infer_request(MODEL, {"INPUT0": x})
            for name in stubs:  # warm up both
                for _ in range(200):
                    stubs[name].ModelInfer(request, timeout=10)
            per_round = args.requests // args.rounds
            times = {"on": [], "off": []}
            n = 0
            deadline = time.monotonic() + 600
            for r in range(args.rounds):
                order = ("on", "off") if r % 2 == 0 else ("off", "on")
                for name in order:
                    stub, out = stubs[name], times[name]
                    for _ in range(per_round):
                        n += 1
                        request.id = f"bench-{n}"
                        t0 = time.perf_counter_ns()
                        stub.ModelInfer(request, timeout=10)
                        out.append(time.perf_counter_ns() - t0)
                if time.monotonic() > deadline:
                    break
            p50 = {name: float(np.median(v)) / 1e3 for name, v in times.items()}
            p99 = {name: float(np.percentile(v, 99)) / 1e3 for name, v in times.items()}
            ratio = p50["on"] / p50["off"]
            time.sleep(1.0)
            pending = outbox_pending(fleet.outbox("edge-on"))
            for channel in channels.values():
                channel.close()
        finally:
            fleet.close()
    print(f"requests per server: {len(times['on'])} in {args.rounds} alternating rounds, concurrency 1")
    print(f"recording off: p50 {p50['off']:.1f} us  p99 {p99['off']:.1f} us")
    print(f"recording on : p50 {p50['on']:.1f} us  p99 {p99['on']:.1f} us  (outbox pending after 1 s: {pending})")
    print(f"p50 ratio on/off: {ratio:.3f} (goal <= {GOAL})")
    if args.check and ratio > GOAL:
        print(f"FAILED: p50 ratio {ratio:.3f} > {GOAL}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
