"""Outage soak: two edges under steady load, the coordinator SIGKILLed and restarted, one edge SIGKILLed once.

Phase 1 (soak): ``edgeloop cloud`` and two ``edgeloop edge`` processes; this process sends each edge
``--rate`` requests/s with unique ids.  After ``--warm-s`` the coordinator is SIGKILLed; after
``--outage-s`` (default 60) it is restarted on the same files; a few seconds later edge-b is
SIGKILLed and restarted.  The load then stops and the outboxes drain.  Printed: samples served
(answered), received (stored at the coordinator), duplicated (stored twice, by request id), lost
(answered but never stored) and how many of those fall outside the allowed window (answered within
``--loss-window-s`` before edge-b's kill: the only loss the data path allows), and the rate at which
the backlog built during the outage drained.

Phase 2 (backlog drain): an outbox file is filled with ``--drain-samples`` samples of 32 float
features, and the edge's uploader drains it to a fresh ``edgeloop cloud`` process; printed as
samples/s against the goal of 50k samples/s, beside the same coordinator's direct ingest of the same
samples (the ceiling, same run) and the drain's samples per CPU-second of the coordinator and of the
edge side (stable on a busy machine).  ``--skip-soak`` runs phase 2 alone.

``--check`` exits 1 when anything was stored twice, lost outside the window, or the drain is slower
than the goal.

    python benchmarks/outage_soak.py [--outage-s 60] [--rate 200] [--drain-samples 200000] [--skip-soak] [--check]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fleet_harness import FEATURES, Fleet, Load, audit, outbox_pending, wait_drained  # noqa: E402

DRAIN_GOAL = 50_000.0


def soak(root: Path, args) -> tuple:
    fleet = Fleet(root / "soak", upload_backoff_max_ms=args.backoff_max_ms)
    edges = ("edge-a", "edge-b")
    load = Load(fleet, rate_per_edge=args.rate, max_requests=int(args.rate * (args.outage_s + 120)))
    try:
        fleet.start_cloud()
        for node_id in edges:
            fleet.start_edge(node_id)
        load.start(edges)
        time.sleep(args.warm_s)
        fleet.kill_cloud()
        print(f"coordinator SIGKILLed; down for {args.outage_s:.0f} s", flush=True)
        time.sleep(args.outage_s)
        backlog = sum(outbox_pending(fleet.outbox(n)) for n in edges)
        t_back = time.monotonic()
        fleet.start_cloud()
        print(f"coordinator restarted; backlog {backlog} samples", flush=True)
        # the backlog drains while the load goes on: time until the outboxes are back to the steady level
        drained_s = None
        while time.monotonic() - t_back < 120:
            if sum(outbox_pending(fleet.outbox(n)) for n in edges) <= max(10, args.rate):
                drained_s = time.monotonic() - t_back
                break
            time.sleep(0.05)
        time.sleep(2.0)
        fleet.kill_edge("edge-b")
        killed_at = time.monotonic()  # after the process is gone: nothing it answered is later
        print("edge-b SIGKILLed", flush=True)
        time.sleep(2.0)
        fleet.start_edge("edge-b")
        print("edge-b restarted", flush=True)
        time.sleep(3.0)
        load.stop()
        wait_drained(fleet, edges, timeout_s=120)
        result = audit(load, fleet.database, {"edge-b": killed_at}, args.loss_window_s)
    finally:
        load.stop()
        fleet.close()
    return result, backlog, drained_s, load.failed


def direct_ingest(address: str, template, n_samples: int, batch: int = 5000) -> float:
    """The ceiling in the same run: the same samples, pre-encoded, streamed straight to UploadSamples."""
    import grpc

    from edgeloop.protocol import mesh_pb2

    frames = []
    for start in range(0, n_samples, batch):
        rows = []
        for i in range(start, min(n_samples, start + batch)):
            template.sample_id = f"direct-{i}"
            rows.append(template.SerializeToString())
        b = mesh_pb2.SampleBatch(batch_id=f"direct-{start}", node_id="edge-direct")
        b.samples.extend(mesh_pb2.Sample.FromString(r) for r in rows)
        frames.append(b.SerializeToString())
    channel = grpc.insecure_channel(address, options=[("grpc.max_send_message_length", 64 << 20)])
    call = channel.stream_unary("/edgeloop.v1.Coordinator/UploadSamples", request_serializer=lambda b: b,
                                response_deserializer=mesh_pb2.UploadAck.FromString)
    t0 = time.perf_counter()
    for i in range(0, len(frames), 16):
        call(iter(frames[i:i + 16]), timeout=300)
    elapsed = time.perf_counter() - t0
    channel.close()
    return n_samples / elapsed


def drain(root: Path, n_samples: int) -> tuple[float, int, float, float, float]:
    """Samples/s at which the uploader empties an outbox of ``n_samples`` into a coordinator process,
    the direct-ingest ceiling of that coordinator measured in the same run, and the drain's samples per
    CPU-second of the coordinator process and of this (the edge's uploader) process: on a busy machine
    the CPU-time rates are the stable figures."""
    from coordinator_ingest import cpu_seconds

    from edgeloop.node.outbox import Outbox
    from edgeloop.node.recorder import build_sample
    from edgeloop.node.uploader import Uploader
    from edgeloop.protocol.auth import open_channel
    from edgeloop.protocol import inference_pb2
    from edgeloop.protocol.codec import build_infer_request, encode_output

    fleet = Fleet(root / "drain")
    box = Outbox(root / "drain" / "outbox.sqlite", max_rows=n_samples + 1, max_bytes=1 << 40,
                 queue_size=n_samples + 1).start()
    x = np.random.default_rng(0).normal(size=(1, FEATURES)).astype(np.float32)
    request = build_infer_request("mlp", {"INPUT0": x})
    response = inference_pb2.ModelInferResponse(model_name="mlp", model_version="1")
    tensor, raw = encode_output("OUTPUT0", np.zeros((1, 4), dtype=np.float32))
    response.outputs.append(tensor)
    response.raw_output_contents.append(raw)
    now = int(time.time() * 1000)
    template = build_sample(request, response, "mlp", 1, "x", now)
    for i in range(n_samples):
        template.sample_id = f"drain-{i}"
        box.offer("mlp", (bytes, (template.SerializeToString(),)))
    deadline = time.monotonic() + 300
    while box.snapshot()["committed"] < n_samples and time.monotonic() < deadline:
        time.sleep(0.05)
    channel = None
    try:
        fleet.start_cloud()
        channel = open_channel(fleet.cloud.address, None, None, options=[("grpc.max_send_message_length", 64 << 20)])
        uploader = Uploader(box, channel, "edge-drain", batch_size=5000, backoff_max_s=1.0)
        pid = fleet.cloud.popen.pid
        t0, c0, e0 = time.perf_counter(), cpu_seconds(pid), time.process_time()
        uploader.start()
        while box.snapshot()["pending_rows"] and time.perf_counter() - t0 < 300:
            time.sleep(0.01)
        elapsed, cloud_cpu, edge_cpu = time.perf_counter() - t0, cpu_seconds(pid) - c0, time.process_time() - e0
        uploader.stop()
        stored = uploader.uploaded["samples"]
        ceiling = direct_ingest(fleet.cloud.address, template, n_samples)
    finally:
        if channel is not None:
            channel.close()
        box.close()
        fleet.close()
    return stored / elapsed, stored, ceiling, stored / cloud_cpu, stored / edge_cpu


def soak_phase(root: Path, args, failed: list) -> None:
    """Phase 1 and its printout; a duplicate or a loss outside the window is added to ``failed``."""
    result, backlog, drained_s, request_failures = soak(root, args)
    print(f"soak: outage {args.outage_s:.0f} s, 2 edges at {args.rate:.0f} req/s each, edge-b SIGKILLed once")
    print(f"  samples served {result.served}, received {result.received}, duplicated {result.duplicated}, "
          f"lost {result.lost} (outside the {args.loss_window_s:.1f} s kill window: "
          f"{result.lost_outside_window}); failed requests {request_failures}")
    if drained_s is not None and drained_s > 0:
        print(f"  outage backlog {backlog} samples drained (under load) {drained_s:.2f} s after the restart "
              f"began (includes the coordinator's start and the edges' reconnect backoff)")
    if result.duplicated or result.lost_outside_window:
        failed.append("exactly-once")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--outage-s", type=float, default=60.0, help="coordinator downtime (default 60)")
    parser.add_argument("--warm-s", type=float, default=3.0, help="load before the coordinator is killed")
    parser.add_argument("--rate", type=float, default=200.0, help="requests/s per edge (default 200)")
    parser.add_argument("--loss-window-s", type=float, default=1.0,
                        help="answered this long before edge-b's kill may be lost (default 1.0)")
    parser.add_argument("--backoff-max-ms", type=int, default=2000, help="the edges' upload_backoff_max_ms")
    parser.add_argument("--drain-samples", type=int, default=200_000, help="backlog for phase 2 (0 = skip)")
    parser.add_argument("--skip-soak", action="store_true", help="run phase 2 (the backlog drain) only")
    parser.add_argument("--check", action="store_true", help="exit 1 on a duplicate, a loss outside the window, "
                                                             f"or a drain below {DRAIN_GOAL:.0f} samples/s")
    args = parser.parse_args(argv)
    failed = []
    with tempfile.TemporaryDirectory(prefix="edgeloop-soak-") as tmp:
        root = Path(tmp)
        if not args.skip_soak:
            soak_phase(root, args, failed)
        if args.drain_samples > 0:
            rate, stored, ceiling, cloud_rate, edge_rate = drain(root, args.drain_samples)
            print(f"drain: {stored} samples (32 FP32 features) uploaded at {rate:.0f} samples/s "
                  f"(goal >= {DRAIN_GOAL:.0f}: ratio {rate / DRAIN_GOAL:.2f}); the same coordinator's direct "
                  f"ingest of pre-encoded batches in this run: {ceiling:.0f} samples/s (uploader / direct "
                  f"{rate / ceiling:.2f})")
            print(f"  drain CPU-time rates: {cloud_rate:.0f} samples per coordinator CPU-second, {edge_rate:.0f} per "
                  f"edge (uploader + outbox) CPU-second; load average {os.getloadavg()[0]:.1f}, cpus {os.cpu_count()}")
            if rate < DRAIN_GOAL:
                failed.append("drain rate")
    if args.check and failed:
        print(f"FAILED: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
