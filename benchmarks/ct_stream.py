"""The continuous-training benchmark: one table, every row prequential on the same evaluation region.

Rows (each row predicted before its label is used; labels ``--label-delay`` rows late):

* no change: the last label known at the time;
* static: the demo's first model (softmax regression on the rows before ``--eval-start``), never retrained;
* periodic in-process: the same model refitted every day (48 rows) / every week (336 rows) on the last
  30 days of labelled rows, on the raw inputs and on raw + the real-time features below, and every 6 hours
  (12 rows) on raw + features;
* River's ARF and online logistic regression on the same inputs (``[river]`` extra; skipped with a note);
* the same daily model and the static one behind the definition's *online head* (``features/online.py``: a
  per-entity correction of the model's output that the key's owner learns from each late label), driven by the
  edge's own code in the demo's order;
* edgeloop through the real mesh: ``edgeloop demo``'s engine (cloud + 3 edges as processes, ``--speed 0``),
  the CT loop retraining on its own triggers, on the raw inputs, with the feature definition without its online
  head, and with it (the edges compute the features of each row's entity and apply the head; the model is
  pushed with the definition, the loop's challengers carry it).

The real-time features are the demo's declared definition (``edgeloop/demo/data/elec2_features.json``, or
``--definition``: label history and demand/transfer history; ``nswprice`` forbidden: its history recomputes
the label), computed by ``edgeloop.features.replay`` per entity, the code the edges serve with.
``--splits`` measures the entity rules (every 12 rows, raw + features) that the demo's rule was chosen from.

Also (``--controls``): retrains on a stationary synthetic stream (target: at most 1 by drift/performance),
and recovery after an abrupt concept change in a synthetic stream, in evaluation windows.

    python benchmarks/ct_stream.py [--data FILE.csv --label COLUMN] [--definition DEF.json] [--skip-mesh]
        [--splits] [--controls] [--check]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from dataclasses import replace

from edgeloop.demo import definition as definitions
from edgeloop.demo import model as demo_model
from edgeloop.demo.report import no_change
from edgeloop.demo.run import Options, run
from edgeloop.demo.stream import Stream, elec2, load_csv
from edgeloop.features import FeatureDefinition

TARGET_WITH = 0.885
TARGET_WITHOUT = 0.79
DAY, WEEK, WINDOW_DAYS = 48, 336, 30
CONTROL_ROWS = 100_000


def with_features(stream: Stream, delay: int, definition) -> tuple[np.ndarray, list[str]]:
    """Raw inputs + derived features per entity, point in time (label i arrives ``delay`` rows later)."""
    return definitions.vectors(definition, stream, delay).astype(np.float64), [f.name for f in definition.features]


def periodic(x: np.ndarray, y: np.ndarray, classes: int, start: int, every: int, delay: int) -> np.ndarray:
    """Refit every ``every`` rows on the last 30 days of rows whose labels have arrived; predictions per row."""
    return periodic_proba(x, y, classes, start, every, delay).argmax(axis=1)


def periodic_proba(x: np.ndarray, y: np.ndarray, classes: int, start: int, every: int, delay: int) -> np.ndarray:
    """``periodic``'s class probabilities per row (float32, what the served model would output)."""
    n = x.shape[0]
    params = demo_model.fit_softmax(x[:start], y[:start], classes, iters=150)
    proba = demo_model.proba(params, x)  # rows before ``start``: the first model serves them (as in the demo)
    for begin in range(start, n, every):
        known = begin - delay + 1
        lo = max(0, known - WINDOW_DAYS * DAY)
        if begin > start and known - lo >= 50 and len(np.unique(y[lo:known])) > 1:
            params = demo_model.fit_softmax(x[lo:known], y[lo:known], classes, iters=150)
        end = min(n, begin + every)
        proba[begin:end] = demo_model.proba(params, x[begin:end])
    return proba


def raw_with_head(definition):
    """The definition's raw inputs and online head without derived features (None without a head)."""
    if definition.online is None:
        return None
    doc = definition.to_dict()
    doc["features"] = []
    return FeatureDefinition.from_dict(doc)


def river_rows(x: np.ndarray, y: np.ndarray, start: int, delay: int) -> dict[str, np.ndarray] | str:
    try:
        from river import forest, linear_model, preprocessing
    except ImportError:
        return "River not installed (pip install '.[river]'): ARF and online LR rows skipped"
    models = {"River ARF": forest.ARFClassifier(seed=0),
              "River online LR": preprocessing.StandardScaler() | linear_model.LogisticRegression()}
    out = {}
    for name, m in models.items():
        pred = np.zeros(len(y), np.int64)
        rows = [dict(enumerate(r)) for r in x.tolist()]
        for i in range(len(y)):
            if i >= start:
                p = m.predict_one(rows[i])
                pred[i] = int(p) if p is not None else 0
            j = i - delay + 1  # the label that arrives with row i
            if j >= 0:
                m.learn_one(rows[j], int(y[j]))
        out[name] = pred
    return out


def mesh_row(stream: Stream, start: int, delay: int, definition=None) -> tuple[dict, np.ndarray]:
    """``edgeloop demo``'s engine at unlimited speed: its summary and the mesh's prediction per row."""
    with tempfile.TemporaryDirectory(prefix="ct-stream-") as tmp:
        summary = run(Options(stream, Path(tmp), delay, start, 0.0, False, live=False, definition=definition))
        with open(Path(tmp) / "predictions.csv") as fh:
            served = [line.split(",")[2] for line in fh.read().splitlines()[1:]]
    index = {c: i for i, c in enumerate(stream.classes)}
    return summary, np.array([index.get(v, -1) for v in served], np.int64)


def splits(stream: Stream, start: int, delay: int, definition) -> list[str]:
    """Raw + features retrained every 12 rows, for each way of splitting the stream into entities."""
    n = stream.rows
    rules = {"one stream": ["all"] * n,
             "per 3-hour part of the day (interleaved)": [f"h{int(min(7, v * 8))}" for v in stream.x[:, 0]],
             "per day (48 rows)": [f"day-{i // 48}" for i in range(n)],
             "per week (336 rows)": [f"week-{i // 336}" for i in range(n)],
             "per four weeks (1,344 rows)": [f"weeks-{i // 1344}" for i in range(n)]}
    out = []
    for name, keys in rules.items():
        xf, _ = with_features(replace(stream, keys=tuple(keys)), delay, definition)
        pred = periodic(xf, stream.y, len(stream.classes), start, 12, delay)
        out.append(f"entities {name}: raw + features every 12 rows {float((pred[start:] == stream.y[start:]).mean()):.4f}")
    return out


def synthetic(rows: int, change_at: int | None, seed: int = 0) -> Stream:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, 4)).astype(np.float32)
    w = np.array([1.5, -1.0, 0.5, 0.0])
    score = x @ w + 0.3 * rng.standard_normal(rows)
    if change_at is not None:
        w2 = np.array([-1.0, 0.0, 0.5, 1.5])
        score[change_at:] = x[change_at:] @ w2 + 0.3 * rng.standard_normal(rows - change_at)
    y = (score > 0).astype(np.int64)
    keys = tuple(f"stream-{i % 8}" for i in range(rows))
    return Stream("synthetic", ("a", "b", "c", "d"), x, y, ("0", "1"), keys, "eight streams, round robin")


SYNTHETIC_HEAD = {"version": 1, "entity": "stream", "inputs": ["a", "b", "c", "d"], "features": [],
                  "online": {"lr": 0.05, "classes": [0, 1], "pending": 16}}


def controls(rows: int, change_rows: int, window: int = 200) -> list[str]:
    """False retrains on a stationary stream; recovery (in windows of ``window`` rows) after an abrupt change,
    with the model alone and behind an online head (raw inputs, no derived features)."""
    summary, _ = mesh_row(synthetic(rows, None), 2000, 1)
    fired = [t for t in summary["triggers"] if t["kind"] in ("drift", "performance")]
    by_alarm = [r for r in summary["retrains"] if r["trigger"] in ("drift", "performance")]
    lines = [f"stationary control ({rows} rows): {len(fired)} drift/performance trigger(s), {len(by_alarm)} "
             f"retrain(s) published on them, {len(summary['retrains'])} in all (target: at most 1 by drift or "
             f"performance)"]
    change = change_rows // 2
    stream = synthetic(change_rows, change, seed=1)
    head = FeatureDefinition.from_dict(SYNTHETIC_HEAD)
    for tag, definition in (("model alone", None), ("+ online head", head)):
        summary, pred = mesh_row(stream, 2000, 1, definition)
        hit = (pred == stream.y).astype(float)
        before = hit[2000:change].mean()
        recovered = None
        for w0 in range(change, change_rows - window + 1, window):
            if hit[w0:w0 + window].mean() >= before - 0.05:
                recovered = (w0 - change) // window
                break
        firsts = [round(float(hit[w0:w0 + window].mean()), 3) for w0 in range(change, change + 5 * window, window)]
        lines.append(f"abrupt change at row {change} ({tag}): accuracy before {before:.3f}; windows after "
                     f"{firsts}; back within 0.05 of it after {recovered} window(s) of {window} rows (target: 2); "
                     f"retrains {[(r['row'], r['trigger']) for r in summary['retrains']]}")
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="a CSV stream (default: Elec2 shipped with edgeloop)")
    parser.add_argument("--label", help="its class column (with --data)")
    parser.add_argument("--key", help="its entity column")
    parser.add_argument("--label-delay", type=int, default=1)
    parser.add_argument("--eval-start", type=int, default=4531)
    parser.add_argument("--definition", help="the model's feature definition (default: the demo's for Elec2)")
    parser.add_argument("--skip-mesh", action="store_true", help="in-process rows only")
    parser.add_argument("--skip-river", action="store_true", help="no River rows (they take minutes)")
    parser.add_argument("--splits", action="store_true", help="also: the entity rules, in-process")
    parser.add_argument("--controls", action="store_true", help="the stationary and abrupt-change synthetic runs")
    parser.add_argument("--control-rows", type=int, default=CONTROL_ROWS, help="rows of the stationary control")
    parser.add_argument("--change-rows", type=int, default=20_000, help="rows of the abrupt-change stream")
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    parser.add_argument("--controls-only", action="store_true", help="only the synthetic control runs")
    args = parser.parse_args(argv)
    if args.controls_only:
        for line in controls(args.control_rows, args.change_rows):
            print(line, flush=True)
        return 0
    stream = load_csv(args.data, args.label, args.key) if args.data else elec2()
    definition = definitions.load(args.definition or definitions.ELEC2_DEFINITION, stream)
    start, delay, y, k = args.eval_start, args.label_delay, stream.y, len(stream.classes)
    ev = slice(start, stream.rows)
    acc = lambda p: float((p[ev] == y[ev]).mean())  # noqa: E731
    xf, names = with_features(stream, delay, definition)
    x = stream.x.astype(np.float64)
    print(f"stream {stream.name}: {stream.rows} rows, entities: {stream.key_rule}; evaluated rows {start}..end, "
          f"labels {delay} row(s) late")
    print(f"feature set (raw + derived; forbidden: {', '.join(definition.forbidden) or 'none'}): "
          f"{', '.join(stream.columns)} + {', '.join(names)}")
    table: list[tuple[str, float, str]] = []
    table.append(("no change (last label)", acc(no_change(y, delay)), ""))
    static = demo_model.predict(demo_model.fit_softmax(x[:start], y[:start], k), x)
    table.append(("static (trained once on rows < eval start)", acc(static), ""))
    for label, every in (("daily", DAY), ("weekly", WEEK)):
        t0 = time.perf_counter()
        table.append((f"periodic {label}, raw inputs", acc(periodic(x, y, k, start, every, delay)), ""))
        table.append((f"periodic {label}, raw + features", acc(periodic(xf, y, k, start, every, delay)),
                      f"{time.perf_counter() - t0:.0f} s"))
    t0 = time.perf_counter()
    table.append(("periodic every 12 rows, raw + features", acc(periodic(xf, y, k, start, 12, delay)),
                  f"{time.perf_counter() - t0:.0f} s"))
    raw_head = raw_with_head(definition)
    if definition.online is not None:
        t0 = time.perf_counter()
        for tag, d, data in (("raw inputs", raw_head, x), ("raw + features", definition, xf)):
            static_p = demo_model.proba(demo_model.fit_softmax(data[:start], y[:start], k, iters=150), data)
            daily_p = periodic_proba(data, y, k, start, DAY, delay)
            for label, proba in (("static", static_p), ("periodic daily", daily_p)):
                table.append((f"{label}, {tag}, + online head",
                              acc(definitions.with_online_head(d, stream, delay, proba)),
                              f"lr {definition.online.lr:g}, {time.perf_counter() - t0:.0f} s"))
    for tag, data in (("raw inputs", x), ("raw + features", xf)):
        if args.skip_river:
            break
        rows = river_rows(data, y, start, delay)
        if isinstance(rows, str):
            print(f"note: {rows}")
            break
        for name, pred in rows.items():
            table.append((f"{name}, {tag}", acc(pred), ""))
    mesh = {}
    if not args.skip_mesh:
        runs = [("raw inputs", None), ("raw + features", definition.without_online())]
        if definition.online is not None:
            runs += [("raw inputs + online head", raw_head), ("raw + features + online head", definition)]
        for tag, d in runs:
            t0 = time.perf_counter()
            summary, _ = mesh_row(stream, start, delay, d)
            mesh[tag] = summary["prequential_accuracy"]["edgeloop"]
            table.append((f"edgeloop mesh + CT loop, {tag}", mesh[tag],
                          f"{len(summary['retrains'])} retrains, {time.perf_counter() - t0:.0f} s, "
                          f"lost {summary['samples']['lost']}"))
    width = max(len(r[0]) for r in table)
    print(f"\n{'row':<{width}}  accuracy  note")
    for name, a, note in table:
        print(f"{name:<{width}}  {a:.4f}    {note}")
    if args.splits:
        for line in splits(stream, start, delay, definition):
            print(line)
    if args.controls:
        for line in controls(args.control_rows, args.change_rows):
            print(line)
    missed = []
    if "raw inputs" in mesh and mesh["raw inputs"] < TARGET_WITHOUT:
        missed.append(f"mesh without the feature store {mesh['raw inputs']:.4f} < {TARGET_WITHOUT}"
                      + (f" (with the online head on the raw inputs: {mesh['raw inputs + online head']:.4f})"
                         if "raw inputs + online head" in mesh else ""))
    best_mesh = max((mesh[t] for t in ("raw + features", "raw + features + online head") if t in mesh), default=None)
    if best_mesh is not None:
        # the "+ online head" rows are edgeloop's own mechanism in-process (its ceiling), not a baseline
        best_other = max(a for name, a, _ in table if not name.startswith("edgeloop") and "online head" not in name)
        if best_mesh < TARGET_WITH or best_mesh <= best_other:
            missed.append(f"mesh with the feature store {best_mesh:.4f}: expected >= {TARGET_WITH} and above "
                          f"every other row (best other {best_other:.4f})")
    for m in missed:
        print(f"MISSED: {m}")
    return 1 if (args.check and missed) else 0


if __name__ == "__main__":
    sys.exit(main())
