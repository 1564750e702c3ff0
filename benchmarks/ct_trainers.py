"""The built-in CT trainers against scikit-learn on the same Elec2 window, in one run.

Data: ``../shared/data/elec2.csv``, its 6 raw inputs (period, nswprice, nswdemand, vicprice,
vicdemand, transfer; no price-history features, which would leak the label) and ``class``.
Rows in time order: a training window, the validation window after it (ours early-stops on it;
scikit-learn's MLP early-stops on its own 10% of the training window), and a test window after
that which no model has seen: the accuracy reported is on the test window.

Pairs (same standardisation, same l2, same hidden width, batch size, epoch cap and patience):
  logistic: ``LogisticRegressionTrainer``  vs  StandardScaler + ``LogisticRegression(lbfgs)``
            with C = 1 / (l2 * n_train), the same penalty on the same loss
  mlp:      ``MLPTrainer(hidden=(32,))``    vs  StandardScaler + ``MLPClassifier(32, adam, early_stopping)``
Our time includes the ONNX export; scikit-learn's includes no conversion.  After one untimed
warm-up fit each, every fit runs ``--repeats`` times, interleaved (the order rotates), and the
median wall time is compared.
BLAS is held to one thread for both (threadpoolctl) so a busy machine moves both alike.

Targets (``--check`` exits 1 if any is missed): time ratio ours/sklearn <= 1.0 and test
accuracy >= sklearn's - 0.01, for both pairs.

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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--train-start", type=int, default=25_000)
    parser.add_argument("--train-rows", type=int, default=10_000)
    parser.add_argument("--val-rows", type=int, default=2_500)
    parser.add_argument("--test-rows", type=int, default=2_500)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="2 repeats")
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    repeats = 2 if args.quick else max(1, min(args.repeats, 50))

    from sklearn.linear_model import LogisticRegression
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from edgeloop.ct.evaluation import predict
    from edgeloop.ct.trainers import Dataset, LogisticRegressionTrainer, MLPTrainer

    x, y = load(args.data)
    a = args.train_start
    b, c, d = a + args.train_rows, a + args.train_rows + args.val_rows, a + args.train_rows + args.val_rows + args.test_rows
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
    import warnings

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

    print(f"Elec2 {args.data.name}: train [{a}, {b}), validation [{b}, {c}), test [{c}, {d}); "
          f"{len(FEATURES)} raw inputs; median of {repeats} interleaved fits, BLAS 1 thread")
    results, missed = {}, []
    for pair in ("logistic", "mlp"):
        mine, base = f"{pair}/edgeloop", f"{pair}/sklearn"
        t_mine, t_base = statistics.median(times[mine]), statistics.median(times[base])
        ratio = t_mine / t_base
        gap = accuracy[mine] - accuracy[base]
        ok_time, ok_acc = ratio <= TARGET_TIME_RATIO, gap >= -TARGET_ACCURACY_GAP
        print(f"  {pair:8s} time {t_mine * 1e3:8.1f} ms vs sklearn {t_base * 1e3:8.1f} ms  ratio {ratio:5.2f}x "
              f"(target <= {TARGET_TIME_RATIO:g}x: {'ok' if ok_time else 'MISSED'});  test accuracy "
              f"{accuracy[mine]:.4f} vs {accuracy[base]:.4f} ({gap:+.4f}, target >= -{TARGET_ACCURACY_GAP:g}: "
              f"{'ok' if ok_acc else 'MISSED'});  iterations/epochs {iterations[mine]} vs {iterations[base]}")
        results[pair] = {"seconds": t_mine, "sklearn_seconds": t_base, "time_ratio": ratio,
                         "accuracy": accuracy[mine], "sklearn_accuracy": accuracy[base], "accuracy_gap": gap,
                         "iterations": iterations[mine], "sklearn_iterations": iterations[base]}
        missed += [f"{pair} time ratio {ratio:.2f}x"] * (not ok_time) + [f"{pair} accuracy gap {gap:+.4f}"] * (not ok_acc)
    if args.json:
        args.json.write_text(json.dumps({"repeats": repeats, "results": results, "missed": missed}, indent=2))
    if missed:
        print("missed: " + "; ".join(missed))
    return 1 if (args.check and missed) else 0


if __name__ == "__main__":
    sys.exit(main())
