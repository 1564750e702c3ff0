"""The built-in CT trainers against scikit-learn on the same Elec2 window, in one run.

Data: ``../shared/data/elec2.csv``, its 6 raw inputs (period, nswprice, nswdemand, vicprice,
vicdemand, transfer; no price-history features, which would leak the label) and ``class``.
Rows in time order, at several points of the stream (``--train-starts``): a training window, the
validation window after it (ours early-stops on it; scikit-learn's MLP early-stops on its own 10%
of the training window), and a test window after that which no model has seen: the accuracy
reported is on the test window.

Pairs (same standardisation, same l2, same hidden width, batch size, epoch cap and patience):
  logistic: ``LogisticRegressionTrainer``  vs  StandardScaler + ``LogisticRegression(lbfgs)``
            with C = 1 / (l2 * n_train), the same penalty on the same loss
  mlp:      ``MLPTrainer(hidden=(32,))``    vs  StandardScaler + ``MLPClassifier(32, adam, early_stopping)``
Our time includes the ONNX export; scikit-learn's includes no conversion.  After one untimed
warm-up fit each, every fit runs ``--repeats`` times, interleaved (the order rotates), and the
median wall time is compared.
BLAS is held to one thread for both (threadpoolctl) so a busy machine moves both alike.

Targets (``--check`` exits 1 if any is missed), for both pairs: the median over windows of the time
ratio ours/sklearn <= 1.0, and the mean over windows of the test accuracy gap >= -0.01.

    python benchmarks/ct_trainers.py [--quick] [--check] [--json FILE]
"""
from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "elec2.csv"
FEATURES = ("period", "nswprice", "nswdemand", "vicprice", "vicdemand", "transfer")
STARTS = (5_000, 15_000, 25_000, 30_000)
TARGET_TIME_RATIO = 1.0
TARGET_ACCURACY_GAP = 0.01
MAX_ROWS = 45_312


def load(path: Path):
    table = np.genfromtxt(path, delimiter=",", names=True, max_rows=MAX_ROWS)
    missing = [c for c in (*FEATURES, "class") if c not in table.dtype.names]
    if missing:
        raise SystemExit(f"{path}: columns {missing} are missing; expected {FEATURES} and 'class'")
    x = np.stack([table[c] for c in FEATURES], axis=1).astype(np.float32)
    return x, table["class"].astype(np.int64)


def one_thread():
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(limits=1)


def run_window(args, x, y, a: int, repeats: int) -> dict:
    """Both pairs on one window starting at row ``a``: median times, test accuracies, iterations."""
    import warnings

    from sklearn.linear_model import LogisticRegression
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from edgeloop.ct.evaluation import predict
    from edgeloop.ct.trainers import Dataset, LogisticRegressionTrainer, MLPTrainer

    b, c = a + args.train_rows, a + args.train_rows + args.val_rows
    d = c + args.test_rows
    if not 0 <= a < b < c < d <= len(y):
        raise SystemExit(f"windows [{a}, {b}) [{b}, {c}) [{c}, {d}) do not fit {len(y)} rows")
    train, val, test = Dataset(x[a:b], y[a:b]), Dataset(x[b:c], y[b:c]), Dataset(x[c:d], y[c:d])
    lr, mlp = LogisticRegressionTrainer(), MLPTrainer(hidden=(32,))

    def ours(trainer):
        def fit():
            result = trainer.fit(train, val, seed=args.seed)
            return (lambda: predict(result.model, test.X).label), result.report.iterations
        return fit

    def theirs(estimator):
        def fit():
            pipe = make_pipeline(StandardScaler(), estimator).fit(train.X, train.y)
            return (lambda: pipe.predict(test.X)), int(np.max(pipe[-1].n_iter_))
        return fit

    fits = {
        "logistic/edgeloop": ours(lr),
        "logistic/sklearn": theirs(LogisticRegression(C=1.0 / (lr.l2 * len(train)), max_iter=lr.max_iter)),
        "mlp/edgeloop": ours(mlp),
        "mlp/sklearn": theirs(MLPClassifier(
            hidden_layer_sizes=mlp.hidden, batch_size=mlp.batch_size, learning_rate_init=mlp.learning_rate,
            alpha=mlp.l2, max_iter=mlp.max_epochs, early_stopping=True, n_iter_no_change=mlp.patience,
            tol=mlp.tol, random_state=args.seed)),
    }
    names = list(fits)
    times = {n: [] for n in names}
    accuracy, iterations = {}, {}
    with one_thread(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn's ConvergenceWarning at the shared epoch cap
        for n in names:  # one untimed fit each: imports and first-call costs are not what is compared
            fits[n]()
        for r in range(repeats):
            order = names[r % len(names):] + names[: r % len(names)]
            for n in order:
                t0 = time.perf_counter()
                pred, iterations[n] = fits[n]()
                times[n].append(time.perf_counter() - t0)
                accuracy[n] = float((pred() == test.y).mean())
    out = {"window": [a, b, c, d]}
    for pair in ("logistic", "mlp"):
        mine, base = f"{pair}/edgeloop", f"{pair}/sklearn"
        t_mine, t_base = statistics.median(times[mine]), statistics.median(times[base])
        out[pair] = {"seconds": t_mine, "sklearn_seconds": t_base, "time_ratio": t_mine / t_base,
                     "accuracy": accuracy[mine], "sklearn_accuracy": accuracy[base],
                     "accuracy_gap": accuracy[mine] - accuracy[base],
                     "iterations": iterations[mine], "sklearn_iterations": iterations[base]}
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--train-starts", type=int, nargs="+", default=list(STARTS))
    parser.add_argument("--train-rows", type=int, default=10_000)
    parser.add_argument("--val-rows", type=int, default=2_500)
    parser.add_argument("--test-rows", type=int, default=2_500)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="1 repeat, windows at the first and last start only")
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    repeats = 1 if args.quick else max(1, min(args.repeats, 50))
    starts = args.train_starts[:: max(1, len(args.train_starts) - 1)] if args.quick else args.train_starts
    x, y = load(args.data)
    print(f"Elec2 {args.data.name}, {len(FEATURES)} raw inputs; per window: train {args.train_rows} rows, "
          f"validation {args.val_rows}, test {args.test_rows} (accuracy on test); median of {repeats} "
          f"interleaved fits, BLAS 1 thread")
    windows = [run_window(args, x, y, a, repeats) for a in starts]
    for w in windows:
        a, b, c, d = w["window"]
        for pair in ("logistic", "mlp"):
            r = w[pair]
            print(f"  [{a:5d},{d:5d}) {pair:8s} time {r['seconds'] * 1e3:7.1f} ms vs sklearn "
                  f"{r['sklearn_seconds'] * 1e3:7.1f} ms ({r['time_ratio']:4.2f}x);  test accuracy "
                  f"{r['accuracy']:.4f} vs {r['sklearn_accuracy']:.4f} ({r['accuracy_gap']:+.4f});  "
                  f"iterations/epochs {r['iterations']} vs {r['sklearn_iterations']}")
    missed, summary = [], {}
    for pair in ("logistic", "mlp"):
        ratio = statistics.median(w[pair]["time_ratio"] for w in windows)
        gap = statistics.fmean(w[pair]["accuracy_gap"] for w in windows)
        ok_time, ok_acc = ratio <= TARGET_TIME_RATIO, gap >= -TARGET_ACCURACY_GAP
        summary[pair] = {"median_time_ratio": ratio, "mean_accuracy_gap": gap}
        print(f"{pair:8s} over {len(windows)} windows: median time ratio {ratio:.2f}x (target <= "
              f"{TARGET_TIME_RATIO:g}x: {'ok' if ok_time else 'MISSED'}); mean test accuracy gap {gap:+.4f} "
              f"(target >= -{TARGET_ACCURACY_GAP:g}: {'ok' if ok_acc else 'MISSED'})")
        missed += [f"{pair} time ratio {ratio:.2f}x"] * (not ok_time) + [f"{pair} accuracy gap {gap:+.4f}"] * (not ok_acc)
    if args.json:
        args.json.write_text(json.dumps({"repeats": repeats, "windows": windows, "summary": summary,
                                         "missed": missed}, indent=2))
    if missed:
        print("missed: " + "; ".join(missed))
    return 1 if (args.check and missed) else 0


if __name__ == "__main__":
    sys.exit(main())
