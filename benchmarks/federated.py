"""Federated vs central training on Elec2 spread over the demo's edges: prequential accuracy and bytes edge→cloud.

Data: ``../shared/data/elec2.csv``, its 6 raw inputs (no history of ``nswprice``, which would leak
the label) and ``class``, in time order.  Rows are dealt round-robin to ``--edges`` edges (the demo
has 3).  Both arms start from the same logistic model trained centrally on the first 10% (4,531
rows; its standardisation is kept), and then, every ``--round-rows`` rows (48 = one day):

* every row of the day is predicted before any label of the day is used (prequential accuracy);
* central: the edges upload each row as the ``Sample`` the recorder builds (inputs and outputs) and
  its ``Label``; the cloud runs ``--epochs`` epochs of SGD (warm start) on the newest ``--window``
  labelled rows of all edges;
* federated: the edges upload only the ``Label``s (the raw rows stay); in a round each edge runs the
  same SGD on its own newest ``window / edges`` rows and sends a ``WeightUpdate`` (TRAIN), and
  holdout counts (EVALUATE); the cloud aggregates (``--strategy``, default FedAvg by rows).
  The EVALUATE directive carries the candidate's serving variants (original, low-rank, int8,
  low-rank+int8: the compression step, scored on the edges' holdouts) and each answer their counts;
  every ``--monitor-window`` labels the edges also answer an EVALUATE-only probe (the performance
  trigger's accuracy).  The variants are built once, from the first candidate: their sizes depend on
  the model's shape, not its weights.

The same optimiser, step size, epochs and window in both arms: what differs is where the rows are.
Bytes are the serialized sizes of the real protobuf messages each arm sends edge→cloud (each
FederatedRound directive cloud→edge is also counted, separately).

Targets (``--check`` exits 1 if any is missed): federated accuracy >= central − 0.02, and bytes
edge→cloud central/federated >= 2.0 (all messages; labels included in both arms).

    python benchmarks/federated.py [--quick] [--check] [--strategy fedavg|median|trimmed_mean]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from edgeloop.coordinator.federated_compression import build_variants
from edgeloop.ct.compression import CompressionPolicy
from edgeloop.ct.onnx_export import DenseModel, to_onnx
from edgeloop.federated.aggregate import aggregate
from edgeloop.federated.local import LocalPlan, local_update, predict_index
from edgeloop.federated.weights import theta_size, to_bytes, unpack
from edgeloop.protocol import mesh_pb2

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "elec2.csv"
FEATURES = ("period", "nswprice", "nswdemand", "vicprice", "vicdemand", "transfer")
TARGET_ACCURACY_GAP = 0.02
TARGET_BYTES_RATIO = 2.0
START = 4_531


def load(path: Path) -> tuple[np.ndarray, np.ndarray]:
    head = path.read_text().splitlines()[0].split(",")
    data = np.loadtxt(path, delimiter=",", skiprows=1)
    cols = [head.index(f) for f in FEATURES]
    return data[:, cols].astype(np.float32), data[:, head.index("class")].astype(np.int64)


def sample_bytes(row: np.ndarray, i: int, proba: float) -> int:
    """What the recorder uploads for one served row (the raw features and the model's outputs)."""
    inp = mesh_pb2.TensorData(name="input", datatype="FP32", shape=[1, row.shape[0]],
                              data=np.asarray(row, "<f4").tobytes())
    outs = [mesh_pb2.TensorData(name="probabilities", datatype="FP32", shape=[1, 2],
                                data=np.asarray([1 - proba, proba], "<f4").tobytes()),
            mesh_pb2.TensorData(name="label", datatype="INT64", shape=[1], data=np.asarray([1], "<i8").tobytes())]
    return mesh_pb2.Sample(sample_id=f"edge-a-1a2b3c4d-{i}", model="elec2", model_version=1,
                           timestamp_ms=1_700_000_000_000 + i, inputs=[inp], outputs=outs).ByteSize()


def label_bytes(i: int, y: int) -> int:
    return mesh_pb2.Label(sample_id=f"edge-a-1a2b3c4d-{i}", model="elec2", value=float(y),
                          received_ms=1_700_000_000_000 + i).ByteSize()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--edges", type=int, default=3)
    ap.add_argument("--round-rows", type=int, default=48)
    ap.add_argument("--window", type=int, default=1440, help="newest labelled rows trained on (30 days)")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--mu", type=float, default=0.0, help="FedProx proximal weight on the edges")
    ap.add_argument("--strategy", default="fedavg", choices=("fedavg", "median", "trimmed_mean"))
    ap.add_argument("--monitor-window", type=int, default=200, help="labels between two accuracy probes")
    ap.add_argument("--quick", action="store_true", help="the first 12,000 rows only")
    ap.add_argument("--check", action="store_true")
    args = ap.parse_args(argv)
    x, y = load(DATA)
    if args.quick:
        x, y = x[:12_000], y[:12_000]
    d, k = x.shape[1], 2
    edge_of = np.arange(len(y)) % args.edges
    mean = x[:START].mean(axis=0).astype(np.float64)
    std = x[:START].std(axis=0)
    inv_std = np.where(std > 1e-6, 1.0 / np.maximum(std, 1e-6), 1.0)
    plan = LocalPlan(epochs=args.epochs, lr=args.lr, seed=0)
    theta0 = local_update(np.zeros(theta_size(d, k)), x[:START], y[:START], mean, inv_std, k,
                          LocalPlan(epochs=10, lr=args.lr, seed=0))
    arms = {"central": theta0.copy(), "federated": theta0.copy()}
    right = {a: 0 for a in arms}
    sent = {"central": 0, "federated": 0}
    directive_bytes = 0
    n_eval = 0
    w, b = unpack(theta0, d, k)
    first = to_onnx(DenseModel("logistic", mean.astype(np.float32), inv_std.astype(np.float32),
                               ((w.astype(np.float32), b.astype(np.float32)),), np.arange(k, dtype=np.int64)))
    variants = [v[1] for v in build_variants(first, CompressionPolicy()) if v[1] is not None]
    labels_since_probe = 0
    t0 = time.perf_counter()
    for start in range(START, len(y), args.round_rows):
        stop = min(len(y), start + args.round_rows)
        xb, yb = x[start:stop], y[start:stop]
        for arm, theta in arms.items():
            right[arm] += int((predict_index(theta, xb, mean, inv_std, k) == yb).sum())
        n_eval += len(yb)
        for i in range(start, stop):  # what leaves the edges for the day's rows
            labels = label_bytes(i, int(y[i]))
            sent["central"] += labels + sample_bytes(x[i], i, 0.5)
            sent["federated"] += labels
        # central: the newest window of all edges' rows, pooled in the cloud
        lo = max(0, stop - args.window)
        arms["central"] = arms["central"] + local_update(arms["central"], x[lo:stop], y[lo:stop], mean, inv_std, k,
                                                         plan)
        # federated: each edge its own share of the same window; only updates leave the edges
        g = arms["federated"]
        msg = mesh_pb2.FederatedRound(model="elec2", round_id=f"elec2-{start}", n_features=d, n_classes=k,
                                      mean=to_bytes(mean), inv_std=to_bytes(inv_std), classes=[0.0, 1.0],
                                      theta=to_bytes(g), epochs=args.epochs, lr=args.lr, mu=args.mu, batch_size=32,
                                      holdout_fraction=0.25, max_rows=args.window // args.edges)
        deltas, counts = [], []
        for e in range(args.edges):
            rows = np.nonzero(edge_of[lo:stop] == e)[0] + lo
            delta = local_update(g, x[rows], y[rows], mean, inv_std, k,
                                 LocalPlan(epochs=args.epochs, lr=args.lr, mu=args.mu, seed=0))
            deltas.append(delta)
            counts.append(len(rows))
            upd = mesh_pb2.WeightUpdate(node_id=f"edge-{chr(97 + e)}", model="elec2", round_id=msg.round_id,
                                        delta=to_bytes(delta), train_rows=len(rows), holdout_rows=len(rows) // 4)
            ev = mesh_pb2.WeightUpdate(node_id=upd.node_id, model="elec2", round_id=msg.round_id, phase=1,
                                       train_rows=len(rows), holdout_rows=len(rows) // 4,
                                       candidate_correct=len(rows) // 5, champion_correct=len(rows) // 5,
                                       variant_correct=[len(rows) // 5] * len(variants))
            sent["federated"] += upd.ByteSize() + ev.ByteSize()
            evaluate = mesh_pb2.FederatedRound()
            evaluate.CopyFrom(msg)
            evaluate.phase, evaluate.champion_theta = 1, msg.theta
            evaluate.variants.extend(variants)
            directive_bytes += msg.ByteSize() + evaluate.ByteSize()
        labels_since_probe += stop - start
        if labels_since_probe >= args.monitor_window:  # the performance trigger's accuracy probe
            labels_since_probe = 0
            for e in range(args.edges):
                probe = mesh_pb2.WeightUpdate(node_id=f"edge-{chr(97 + e)}", model="elec2",
                                              round_id=f"elec2-probe-{start}", phase=1, holdout_rows=120,
                                              candidate_correct=100, champion_correct=100)
                sent["federated"] += probe.ByteSize()
                directive_bytes += msg.ByteSize()
        arms["federated"] = g + aggregate(args.strategy, deltas, counts)
    seconds = time.perf_counter() - t0
    acc = {a: right[a] / n_eval for a in arms}
    gap = acc["federated"] - acc["central"]
    ratio = sent["central"] / sent["federated"]
    raw_rows = n_eval
    print(f"Elec2 rows {START}..{len(y)} ({n_eval} predicted) over {args.edges} edges; a round every "
          f"{args.round_rows} rows; window {args.window}; {args.epochs} epochs, lr {args.lr}; "
          f"strategy {args.strategy}, mu {args.mu}  ({seconds:.1f} s)")
    print(f"prequential accuracy: central {acc['central']:.4f}  federated {acc['federated']:.4f}  "
          f"gap {gap:+.4f} (target >= -{TARGET_ACCURACY_GAP})")
    print(f"bytes edge->cloud: central {sent['central']:,} ({sent['central'] / raw_rows:.1f}/row)  "
          f"federated {sent['federated']:,} ({sent['federated'] / raw_rows:.1f}/row)  ratio {ratio:.2f}x "
          f"(target >= {TARGET_BYTES_RATIO}x); raw feature rows sent: central {raw_rows}, federated 0")
    print(f"bytes cloud->edge for federated rounds (directives): {directive_bytes:,}")
    missed = []
    if gap < -TARGET_ACCURACY_GAP:
        missed.append(f"accuracy gap {gap:+.4f} < -{TARGET_ACCURACY_GAP}")
    if ratio < TARGET_BYTES_RATIO:
        missed.append(f"bytes ratio {ratio:.2f} < {TARGET_BYTES_RATIO}")
    if missed:
        print("MISSED: " + "; ".join(missed))
    return 1 if (args.check and missed) else 0


if __name__ == "__main__":
    sys.exit(main())
