"""Joint inference on a real data set: a small edge model escalating its unsure rows to a bigger one.

    .venv/bin/python benchmarks/joint_inference.py [--rows 5312] [--threshold 0.8] [--check]

Data: Elec2 (``../shared/data/elec2.csv``, see its README), in time order.  Features: the five scaled
market columns and ``period`` as given, the last four labels (label history is fair), the change of
``nswdemand`` over 1, 2 and 6 rows, and the time of day as sine/cosine — never any ``nswprice``
history (it recomputes the label).  Rows 30,000..39,999 train, the rows after them test.

* small (edge): a logistic regression on the raw columns and the last label (7 features), trained here
  with numpy and served as ONNX on an edge node (zone "edge");
* big (cloud): an MLP (32 hidden units) on all 15 features, served on a second node (zone "cloud").

Both take the same 15-column input (the small model's weights for the other columns are zero), so an
escalated row travels as it came.  The edge node serves the small model twice: ``small_alone`` with
no policy (local-only) and ``small`` with ``top1 < --threshold`` escalating to ``big`` in zone
"cloud" through the mesh (static peers, no multicast).  Every test row is one request to each of
``small_alone`` (local only), ``big`` directly (big only) and ``small`` (joint), interleaved row by
row so the three see the same machine noise (bounded by ``--rows`` and ``--seconds``).  Printed: the
accuracy of each, the share of rows escalated, the joint accuracy minus the big model's, p50/p99
latency of local-only requests and, within the joint run, of requests answered locally vs escalated;
the escalated/local p50 ratio and the policy's overhead on easy rows (joint answered locally /
local-only p50).
Targets (``--check`` exits 1 when missed): no failed request and no fallback; escalated share <= 0.5;
joint accuracy >= big accuracy - 0.01; joint accuracy >= small accuracy + 0.01.
"""
from __future__ import annotations

import argparse
import socket
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "elec2.csv"
TRAIN = (30_000, 40_000)
SMALL_COLUMNS = 7  # the raw columns and the last label
MAX_SHARE = 0.5
MAX_ACCURACY_LOSS = 0.01
MIN_GAIN_OVER_SMALL = 0.01


def features(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(x [rows, 15] float32, y [rows]) from Elec2, with no nswprice history."""
    table = np.loadtxt(path, delimiter=",", skiprows=1)
    raw, y = table[:, :6], table[:, 6].astype(np.int64)
    labels = np.stack([np.r_[np.zeros(lag), y[:-lag]] for lag in range(1, 5)], axis=1)
    demand = table[:, 2]
    demand_change = np.stack([demand - np.r_[demand[:lag], demand[:-lag]] for lag in (1, 2, 6)], axis=1)
    period = table[:, 0]
    day = np.stack([np.sin(2 * np.pi * period), np.cos(2 * np.pi * period)], axis=1)
    return np.hstack([raw, labels, demand_change, day]).astype(np.float32), y


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_nodes(tmp: Path, small_proto, big_proto, threshold: float):
    from edgeloop.config import EdgeConfig, EscalationPolicy, MeshConfig, ModelConfig, NodeConfig, ServingConfig
    from edgeloop.node import EdgeNode
    from edgeloop.serving.demo_models import write_model

    write_model(tmp / "cloud", "big", 1, big_proto)
    write_model(tmp / "edge", "small", 1, small_proto)
    write_model(tmp / "edge", "small_alone", 1, small_proto)
    ports = {"edge": _free_port(), "cloud": _free_port()}
    policy = EscalationPolicy(target_model="big", output="probabilities", rule="top1", threshold=threshold,
                              target_zone="cloud", budget_ms=1000)
    nodes = {}
    for name, models in (("cloud", ()), ("edge", (ModelConfig(name="small", escalation=policy),))):
        other = "edge" if name == "cloud" else "cloud"
        mesh = replace(MeshConfig(), zeroconf_interfaces=(), static_peers=(f"127.0.0.1:{ports[other]}",),
                       heartbeat_interval_ms=200, down_after_ms=2000)
        config = EdgeConfig(node=NodeConfig(id=f"{name}-1", grpc_port=ports[name], metrics_port=0, zone=name),
                            serving=ServingConfig(model_repository=tmp / name, models=models), mesh=mesh)
        nodes[name] = EdgeNode(config).start()
    deadline = time.monotonic() + 30
    while any(sum(m.alive for m in n.mesh.membership.members()) < 2 for n in nodes.values()):
        if time.monotonic() > deadline:
            raise RuntimeError("the two nodes did not see each other within 30 s")
        time.sleep(0.05)
    return nodes


def run(targets: list[tuple[str, str]], x: np.ndarray, seconds: float):
    """Every row as one request to each ``(address, model)`` in turn (interleaved, so all see the same noise).

    Per target: (predictions, latencies s, answered_by per row, failures).
    """
    import grpc

    from edgeloop.protocol import inference_pb2_grpc
    from edgeloop.protocol.codec import build_infer_request, infer_response_to_numpy

    channels = {address: grpc.insecure_channel(address) for address, _ in targets}
    stubs = {a: inference_pb2_grpc.GRPCInferenceServiceStub(c) for a, c in channels.items()}
    out = [([], [], [], [0]) for _ in targets]
    end = time.monotonic() + seconds
    try:
        for i in range(len(x)):
            if time.monotonic() > end:
                break
            for (address, model), (preds, lat, paths, failed) in zip(targets, out):
                request = build_infer_request(model, {"x": x[i:i + 1]}, request_id=str(i))
                t0 = time.perf_counter()
                try:
                    response = stubs[address].ModelInfer(request, timeout=10)
                except grpc.RpcError:
                    lat.append(time.perf_counter() - t0)
                    failed[0] += 1
                    preds.append(-1)
                    paths.append("failed")
                    continue
                lat.append(time.perf_counter() - t0)
                preds.append(int(infer_response_to_numpy(response)["probabilities"].argmax(1)[0]))
                params = response.parameters
                paths.append(params["edgeloop_answered_by"].string_param if "edgeloop_answered_by" in params else "")
    finally:
        for channel in channels.values():
            channel.close()
    return [(np.array(p), np.array(t), np.array(a), f[0]) for p, t, a, f in out]


def pct(values: np.ndarray, q: float) -> float:
    return float(np.percentile(values, q) * 1000) if len(values) else float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=5312, help="test rows (after the training rows)")
    parser.add_argument("--threshold", type=float, default=0.8, help="escalate rows whose top-1 probability is below")
    parser.add_argument("--seconds", type=float, default=240.0, help="time limit of the request loop")
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args()
    from edgeloop.serving.demo_models import build_softmax_classifier, fit_softmax_classifier

    x, y = features(DATA)
    train = slice(*TRAIN)
    test = slice(TRAIN[1], min(len(y), TRAIN[1] + args.rows))
    t0 = time.perf_counter()
    (w, b), = fit_softmax_classifier(x[train, :SMALL_COLUMNS], y[train], epochs=300)
    w_full = np.zeros((x.shape[1], w.shape[1]))
    w_full[:SMALL_COLUMNS] = w  # the small model reads only its 7 columns of the shared input
    small = build_softmax_classifier([(w_full, b)])
    big = build_softmax_classifier(fit_softmax_classifier(x[train], y[train], hidden=32, epochs=400, lr=0.01))
    print(f"trained small (logistic, {SMALL_COLUMNS} features) and big (MLP 32, {x.shape[1]} features) on rows "
          f"{TRAIN[0]}..{TRAIN[1] - 1} in {time.perf_counter() - t0:.1f} s")
    x_test, y_test = x[test], y[test]
    with tempfile.TemporaryDirectory(prefix="edgeloop-joint-") as tmp:
        nodes = start_nodes(Path(tmp), small, big, args.threshold)
        try:
            edge, cloud = nodes["edge"].address, nodes["cloud"].address
            passes = run([(edge, "small_alone"), (cloud, "big"), (edge, "small")], x_test, args.seconds)
            (alone, lat_alone, _, fail_alone), (big_only, lat_big, _, fail_big), (joint, lat_joint, paths,
                                                                                fail_joint) = passes
        finally:
            for node in nodes.values():
                node.stop(2.0)
    n = min(len(alone), len(big_only), len(joint))
    acc = {name: float((pred[:n] == y_test[:n]).mean()) for name, pred in
           (("small", alone), ("big", big_only), ("joint", joint))}
    escalated = paths[:n] == "escalated"
    fallbacks = int(np.isin(paths[:n], ("fallback", "capped")).sum())
    share = float(escalated.mean())
    failed = fail_alone + fail_big + fail_joint
    local_lat, esc_lat = lat_joint[:n][~escalated], lat_joint[:n][escalated]
    print(f"rows {n} (Elec2 rows {TRAIN[1]}..{TRAIN[1] + n - 1}), threshold top1 < {args.threshold}")
    print(f"accuracy: small alone {acc['small']:.4f}  big alone {acc['big']:.4f}  joint {acc['joint']:.4f}  "
          f"(joint - big {acc['joint'] - acc['big']:+.4f}, joint - small {acc['joint'] - acc['small']:+.4f})")
    print(f"escalated share {share:.3f} ({int(escalated.sum())} rows); fallbacks {fallbacks}; failed requests {failed}")
    print(f"latency ms p50/p99: local-only {pct(lat_alone, 50):.2f}/{pct(lat_alone, 99):.2f}  big direct "
          f"{pct(lat_big, 50):.2f}/{pct(lat_big, 99):.2f}  joint answered locally {pct(local_lat, 50):.2f}/"
          f"{pct(local_lat, 99):.2f}  joint escalated {pct(esc_lat, 50):.2f}/{pct(esc_lat, 99):.2f}")
    ratio = pct(esc_lat, 50) / pct(local_lat, 50) if len(esc_lat) and len(local_lat) else float("nan")
    overhead = pct(local_lat, 50) / pct(lat_alone, 50) if len(local_lat) else float("nan")
    print(f"ratio escalated/local p50 latency {ratio:.2f}; ratio joint-answered-locally/local-only p50 latency "
          f"{overhead:.2f}; ratio joint/big accuracy {acc['joint'] / acc['big']:.4f}")
    missed = []
    if failed or fallbacks:
        missed.append(f"{failed} failed requests, {fallbacks} fallbacks (target 0)")
    if share > MAX_SHARE:
        missed.append(f"escalated share {share:.3f} > {MAX_SHARE}")
    if acc["joint"] < acc["big"] - MAX_ACCURACY_LOSS:
        missed.append(f"joint accuracy {acc['joint']:.4f} < big {acc['big']:.4f} - {MAX_ACCURACY_LOSS}")
    if acc["joint"] < acc["small"] + MIN_GAIN_OVER_SMALL:
        missed.append(f"joint accuracy {acc['joint']:.4f} < small {acc['small']:.4f} + {MIN_GAIN_OVER_SMALL}")
    for line in missed:
        print(f"MISSED: {line}")
    return 1 if args.check and missed else 0


if __name__ == "__main__":
    sys.exit(main())
