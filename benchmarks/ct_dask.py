"""A CT training window 10x the loop's default, trained in process vs on a 2-worker Dask LocalCluster.

Data: ``../shared/data/elec2.csv`` (6 raw inputs and ``class``, as ``ct_trainers.py`` reads them),
stored as the coordinator stores it: each row a ``Sample`` payload with its label in a SQLite store.
The window is the newest ``--rows`` labelled rows (default 10 x ``[training] train_rows`` = 20000);
the validation window (2000 rows) and the test window (5000 rows) come after it in the stream.

  inprocess: what the CT loop does today: ``labelled_latest`` -> ``decode_rows`` on the coordinator ->
             ``LogisticRegressionTrainer.fit`` (or the MLP)
  dask:      ``DaskTrainer.fit_store``: the coordinator reads label row ids only; 2 worker processes
             read and decode their chunks from the store file and return per-chunk sums.  The local
             cluster's scheduler runs in its own process (``SubprocessCluster``), as a remote one would:
             the coordinator's figures are the client's alone

Each mode runs in its own fresh process (so peak RSS is its own), fits a 1000-row window once untraced
(first-use imports), and reports: fit wall time (store
read included; the cluster's start-up reported apart), the driver's peak traced allocation during the
fit (tracemalloc: Python objects and NumPy buffers of the coordinator process), the driver's peak RSS,
and the test accuracy.  Targets (``--check`` exits 1 if one is missed): driver traced peak on Dask <=
``TARGET_MEMORY_RATIO`` x in-process, and test accuracy equal within ``TARGET_ACCURACY_GAP`` (same
predicted labels on >= 99.9% of test rows).  Time is reported, not targeted: on a shared 2-core
machine the cluster's round trips cost more than they save at this size.

``--loop``: a whole CT loop run instead of a bare fit.  A real Coordinator (127.0.0.1, port 0) on a
SQLite store, a logistic champion trained on Elec2's first 4000 rows, its 2000-row reference built by a
loop step, then ``--rows`` newer labelled rows over 4 edges and one manual run (``CTLoop.run``, traced:
window read, validation, training, evaluation, infra validation, compression, publication) with
``train_rows = --rows``.  inprocess: ``[training] backend = "inprocess"``; dask: ``backend = "dask"``
on a 2-worker LocalCluster (started before tracing), the workers read, decode and validate the window.
Reports the run's wall time, the coordinator's traced peak, the run's outcome and the evaluation's
challenger accuracy; ``--check`` also needs the same outcome, quarantine and evaluation in both modes.

    python benchmarks/ct_dask.py [--rows N] [--trainer logistic|mlp] [--loop] [--check] [--json FILE]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from ct_trainers import DATA, load  # noqa: E402

DEFAULT_TRAIN_ROWS = 2000  # TrainingConfig.train_rows
VAL_ROWS, TEST_ROWS = 2000, 5000
TARGET_MEMORY_RATIO = 0.5
WARMUP_ROWS = 1000
TARGET_ACCURACY_GAP = 0.001
TARGET_LABEL_AGREEMENT = 0.999
MODEL, INPUT = "elec2", "input"


def build_store(path: Path, x: np.ndarray, y: np.ndarray) -> None:
    from edgeloop.protocol import mesh_pb2
    from edgeloop.store import LabelRow, SampleRow, SqliteStore

    store = SqliteStore(path)
    try:
        for start in range(0, len(x), 5000):
            rows, labels = [], []
            for i in range(start, min(start + 5000, len(x))):
                t = mesh_pb2.TensorData(name=INPUT, datatype="FP32", shape=[1, x.shape[1]], data=x[i].tobytes())
                payload = mesh_pb2.Sample(sample_id=f"s{i}", model=MODEL, model_version=1, timestamp_ms=i,
                                          inputs=[t]).SerializeToString()
                rows.append(SampleRow(MODEL, f"s{i}", 1, "", i, payload))
                labels.append(LabelRow(f"s{i}", MODEL, "", 0, float(y[i]), i))
            store.ingest_samples("edge-a", f"b{start}", rows, start)
            store.ingest_labels("edge-a", f"l{start}", labels, start)
    finally:
        store.close()


def child(args) -> dict:
    """One mode in this (fresh) process; prints its figures as JSON."""
    from edgeloop.coordinator.ct_link import decode_sample
    from edgeloop.ct.trainers import Dataset, LogisticRegressionTrainer, MLPTrainer

    x, y = load(DATA)
    n = args.rows
    val = Dataset(x[n:n + VAL_ROWS], y[n:n + VAL_ROWS])
    test_x = x[n + VAL_ROWS:n + VAL_ROWS + TEST_ROWS]
    del x, y
    base = LogisticRegressionTrainer() if args.trainer == "logistic" else MLPTrainer(batch_size=args.batch_size)
    out = {"mode": args.child}
    backend = None
    if args.child == "dask":
        from edgeloop.ct.trainer_dask import DaskBackend, DaskTrainer, StoreWindow

        started = time.perf_counter()
        backend = DaskBackend("local", n_workers=2)
        backend.client()
        out["cluster_start_s"] = time.perf_counter() - started

    def fit(rows: int):
        if args.child == "dask":
            window = StoreWindow(args.db, MODEL, INPUT, 6, decode_sample, rows=rows)
            return DaskTrainer(backend, base, chunk_rows=args.chunk_rows).fit_store(window, val, seed=0)
        from edgeloop.ct.window import decode_rows
        from edgeloop.store import SqliteStore

        store = SqliteStore(args.db)
        try:
            win = decode_rows(store.labelled_latest(MODEL, rows), decode_sample, INPUT, 6)
        finally:
            store.close()
        return base.fit(Dataset(win.X, win.y), val, seed=0)

    try:
        fit(WARMUP_ROWS)  # untimed, untraced: the first-use imports of either path are not the window's memory
        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        tracemalloc.start()
        started = time.perf_counter()
        try:
            result = fit(n)
            out["fit_s"] = time.perf_counter() - started
            out["traced_peak_mb"] = tracemalloc.get_traced_memory()[1] / 2**20
        finally:
            tracemalloc.stop()
    finally:
        if backend is not None:
            backend.close()
    out["rss_peak_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out["rss_peak_before_fit_mb"] = rss_before / 1024
    from edgeloop.ct.onnx_export import from_onnx

    out["labels"] = from_onnx(result.model).predict(test_x).astype(int).tolist()
    out["n_train"] = result.report.n_train
    out["iterations"] = result.report.iterations
    return out


LOOP_EDGES = ("edge-a", "edge-b", "edge-c", "edge-d")
CHAMPION_ROWS, REFERENCE_ROWS = 4000, 2000


def _feed(store, x: np.ndarray, y: np.ndarray, first: int) -> None:
    """Rows as uploads store them: 100-row batches from the 4 edges in turn, served by version 1."""
    from edgeloop.protocol import mesh_pb2
    from edgeloop.store import LabelRow, SampleRow

    for start in range(0, len(x), 100):
        edge = LOOP_EDGES[(start // 100) % len(LOOP_EDGES)]
        rows, labels = [], []
        for i in range(start, min(start + 100, len(x))):
            k = first + i
            ts = 1_700_000_000_000 + 10 * k
            t = mesh_pb2.TensorData(name=INPUT, datatype="FP32", shape=[1, x.shape[1]], data=x[i].tobytes())
            payload = mesh_pb2.Sample(sample_id=f"s{k}", model=MODEL, model_version=1, timestamp_ms=ts,
                                      inputs=[t]).SerializeToString()
            rows.append(SampleRow(MODEL, f"s{k}", 1, "", ts, payload))
            labels.append(LabelRow(f"s{k}", MODEL, "", 0, float(y[i]), ts))
        store.ingest_samples(edge, f"b{k}", rows, ts)
        store.ingest_labels(edge, f"l{k}", labels, ts)


def loop_child(args) -> dict:
    """One CT loop run (``--loop``) in this fresh process, inprocess or on Dask; its figures as a dict.

    A first, untraced run on its own coordinator with a ``WARMUP_ROWS`` window does the first-use imports
    of either path (modules loaded during a traced run would count as the window's memory)."""
    x, y = load(DATA)
    base = Path(args.db)
    _loop_once(args, base / "warmup", x, y, WARMUP_ROWS)
    return _loop_once(args, base / "run", x, y, args.rows)


def _loop_once(args, base_dir: Path, x, y, n: int) -> dict:
    from dataclasses import replace

    from edgeloop.config import parse_cloud_config
    from edgeloop.coordinator import Coordinator
    from edgeloop.ct.trainers import Dataset, LogisticRegressionTrainer
    from edgeloop.ct.triggers import TriggerFiring

    training = {"enabled": False, "monitor_window": 500, "reference_rows": REFERENCE_ROWS, "drift_windows": 1000,
                "train_rows": n, "min_slice_samples": 40, "cooldown_s": 0.0, "latency_ratio": 50.0,
                "trainer": args.trainer}
    if args.child == "loop-dask":
        training.update(backend="dask", scheduler="local", n_workers=2, chunk_rows=args.chunk_rows)
    config = parse_cloud_config({"storage": {"database": "coord.sqlite", "artifact_dir": "artifacts"},
                                 "training": training}, base_dir=base_dir)
    config = replace(config, node=replace(config.node, grpc_port=0, metrics_port=-1))
    cloud = Coordinator(config).start()
    out = {"mode": args.child}
    try:
        c = CHAMPION_ROWS
        champion = LogisticRegressionTrainer().fit(Dataset(x[:c - 1000], y[:c - 1000]),
                                                   Dataset(x[c - 1000:c], y[c - 1000:c]), seed=0).model
        sha, size = cloud.artifacts.put_bytes(champion)
        cloud.core.publish(MODEL, 0, sha, size, "push")
        _feed(cloud.store, x[c:c + REFERENCE_ROWS], y[c:c + REFERENCE_ROWS], c)
        cloud.ct.step(1000.0)  # the champion's reference (untraced)
        r = c + REFERENCE_ROWS
        _feed(cloud.store, x[r:r + n], y[r:r + n], r)
        st = cloud.ct._sync(MODEL)
        if st is None or st.profile is None:
            raise SystemExit("the loop built no reference for the champion")
        if args.child == "loop-dask":
            started = time.perf_counter()
            cloud.ct._trainer()
            cloud.ct._dask.client()
            out["cluster_start_s"] = time.perf_counter() - started
        firing = TriggerFiring(MODEL, "manual", ("manual",), 3000.0, "benchmark: ct_dask --loop")
        tracemalloc.start()
        started = time.perf_counter()
        try:
            outcome = cloud.ct.run(st, firing, 3000.0)
            out["fit_s"] = time.perf_counter() - started
            out["traced_peak_mb"] = tracemalloc.get_traced_memory()[1] / 2**20
        finally:
            tracemalloc.stop()
        out["rss_peak_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        out["state"], out["reason"] = outcome.state, outcome.reason
        ev = cloud.store.evaluations(MODEL, outcome.run_id)
        out["evaluation"] = [(e["blessed"], e["challenger"], e["champion"]) for e in ev]
        out["quarantine"] = sorted((q["batch_id"], list(q["checks"])) for q in cloud.store.quarantine(MODEL))
        steps = {s["type"]: s.get("properties", s) for s in cloud.store.executions(MODEL, outcome.run_id)}
        out["validation"] = steps.get("validation", {}).get("summary", "")
        out["training_rows"] = steps.get("training", {}).get("rows")
    finally:
        cloud.stop(5.0)
    return out


def loop_main(args) -> int:
    """``--loop``: the two loop runs, each in its own process; their figures and the targets."""
    results = {}
    for mode in ("loop-inprocess", "loop-dask"):
        with tempfile.TemporaryDirectory() as tmp:
            cmd = [sys.executable, __file__, "--child", mode, "--db", tmp, "--rows", str(args.rows),
                   "--trainer", args.trainer, "--chunk-rows", str(args.chunk_rows)]
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, env=dict(os.environ))
            if done.returncode:
                sys.stderr.write(done.stderr[-3000:])
                raise SystemExit(f"{mode} child failed with {done.returncode}")
            results[mode] = json.loads(done.stdout.strip().splitlines()[-1])
    a, b = results["loop-inprocess"], results["loop-dask"]
    mem_ratio = b["traced_peak_mb"] / a["traced_peak_mb"]
    print(f"CT loop run, window {args.rows} rows over {len(LOOP_EDGES)} edges, trainer {args.trainer}, "
          f"Dask: 2 workers, chunks of {args.chunk_rows} rows")
    print(f"{'':15} {'run s':>8} {'traced peak MB':>15} {'RSS peak MB':>12} {'holdout acc':>12}  outcome")
    for name, r in (("inprocess", a), ("dask", b)):
        acc = r["evaluation"][0][1] if r["evaluation"] else float("nan")
        print(f"{name:15} {r['fit_s']:8.2f} {r['traced_peak_mb']:15.2f} {r['rss_peak_mb']:12.1f} {acc:12.4f}  "
              f"{r['state']}: {r['reason'][:90]}")
    print(f"validation: inprocess {a['validation']!r}; dask {b['validation']!r}")
    print(f"dask cluster start {b['cluster_start_s']:.2f} s (not in run s); time ratio dask/inprocess "
          f"{b['fit_s'] / a['fit_s']:.2f}; coordinator traced-peak ratio {mem_ratio:.3f} "
          f"(target <= {TARGET_MEMORY_RATIO})")
    missed = []
    if mem_ratio > TARGET_MEMORY_RATIO:
        missed.append(f"coordinator memory ratio {mem_ratio:.3f} > {TARGET_MEMORY_RATIO}")
    for key in ("state", "quarantine", "validation", "training_rows"):
        if a[key] != b[key]:
            missed.append(f"{key} differs: {str(a[key])[:100]} vs {str(b[key])[:100]}")
    pairs = list(zip(a["evaluation"], b["evaluation"]))
    if len(a["evaluation"]) != len(b["evaluation"]) or any(
            ea[0] != eb[0] or abs(ea[1] - eb[1]) > TARGET_ACCURACY_GAP for ea, eb in pairs):
        missed.append(f"evaluation differs: {a['evaluation']} vs {b['evaluation']}")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": args.rows, "trainer": args.trainer, "inprocess": a,
                                               "dask": b, "memory_ratio": mem_ratio, "missed": missed}, indent=1))
    if missed:
        print("MISSED: " + "; ".join(missed))
    return 1 if args.check and missed else 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rows", type=int, default=10 * DEFAULT_TRAIN_ROWS)
    p.add_argument("--trainer", choices=("logistic", "mlp"), default="logistic")
    p.add_argument("--batch-size", type=int, default=4096, help="MLP batch (one cluster round trip per step)")
    p.add_argument("--chunk-rows", type=int, default=5000)
    p.add_argument("--check", action="store_true")
    p.add_argument("--json")
    p.add_argument("--loop", action="store_true", help="a whole CT loop run instead of a bare fit")
    p.add_argument("--child", choices=("inprocess", "dask", "loop-inprocess", "loop-dask"), help=argparse.SUPPRESS)
    p.add_argument("--db", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(loop_child(args) if args.child.startswith("loop") else child(args)))
        return 0
    if args.loop:
        return loop_main(args)
    x, y = load(DATA)
    if not 100 <= args.rows <= len(y) - VAL_ROWS - TEST_ROWS:
        raise SystemExit(f"--rows {args.rows}: expected 100..{len(y) - VAL_ROWS - TEST_ROWS} (Elec2 has {len(y)})")
    test_y = y[args.rows + VAL_ROWS:args.rows + VAL_ROWS + TEST_ROWS]
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "coord.sqlite"
        build_store(db, x[:args.rows], y[:args.rows])
        for mode in ("inprocess", "dask"):
            cmd = [sys.executable, __file__, "--child", mode, "--db", str(db), "--rows", str(args.rows),
                   "--trainer", args.trainer, "--batch-size", str(args.batch_size),
                   "--chunk-rows", str(args.chunk_rows)]
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=dict(os.environ))
            if done.returncode:
                sys.stderr.write(done.stderr[-3000:])
                raise SystemExit(f"{mode} child failed with {done.returncode}")
            results[mode] = json.loads(done.stdout.strip().splitlines()[-1])
    a, b = results["inprocess"], results["dask"]
    la, lb = np.asarray(a.pop("labels")), np.asarray(b.pop("labels"))
    acc_a, acc_b = float((la == test_y).mean()), float((lb == test_y).mean())
    agree = float((la == lb).mean())
    mem_ratio = b["traced_peak_mb"] / a["traced_peak_mb"]
    print(f"window {args.rows} rows (10 x train_rows {DEFAULT_TRAIN_ROWS} by default), trainer {args.trainer}, "
          f"Dask: 2 workers, chunks of {args.chunk_rows} rows")
    print(f"{'':10} {'fit s':>8} {'traced peak MB':>15} {'RSS peak MB':>12} {'test acc':>9} {'iters':>6}")
    for name, r, acc in (("inprocess", a, acc_a), ("dask", b, acc_b)):
        print(f"{name:10} {r['fit_s']:8.2f} {r['traced_peak_mb']:15.2f} {r['rss_peak_mb']:12.1f} {acc:9.4f} "
              f"{r['iterations']:6d}")
    print(f"dask cluster start {b['cluster_start_s']:.2f} s (not in fit s); time ratio dask/inprocess "
          f"{b['fit_s'] / a['fit_s']:.2f}; driver traced-peak ratio {mem_ratio:.3f} (target <= {TARGET_MEMORY_RATIO}); "
          f"test accuracy gap {acc_b - acc_a:+.4f} (target |gap| <= {TARGET_ACCURACY_GAP}); "
          f"label agreement {agree:.4f} (target >= {TARGET_LABEL_AGREEMENT})")
    missed = []
    if mem_ratio > TARGET_MEMORY_RATIO:
        missed.append(f"driver memory ratio {mem_ratio:.3f} > {TARGET_MEMORY_RATIO}")
    if abs(acc_b - acc_a) > TARGET_ACCURACY_GAP:
        missed.append(f"accuracy gap {acc_b - acc_a:+.4f}")
    if agree < TARGET_LABEL_AGREEMENT:
        missed.append(f"label agreement {agree:.4f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": args.rows, "trainer": args.trainer, "inprocess": a,
                                               "dask": b, "accuracy": [acc_a, acc_b], "agreement": agree,
                                               "memory_ratio": mem_ratio, "missed": missed}, indent=1))
    if missed:
        print("MISSED: " + "; ".join(missed))
    return 1 if args.check and missed else 0


if __name__ == "__main__":
    sys.exit(main())
