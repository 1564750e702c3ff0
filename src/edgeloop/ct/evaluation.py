"""Proving the challenger (TFMA Evaluator's job): better overall, and no slice made worse.

Challenger and champion are run in onnxruntime on the same labelled holdout, newer than every
training row (:func:`time_split`).  The challenger is blessed only if its metric beats the
champion's by the absolute and relative margins, and no slice (per edge, per value of a declared
slice feature) with enough samples regresses by more than the allowed amount.  The result keeps
every number and says why in words.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import numpy as np

from edgeloop.ct.infra import SessionSettings, open_session
from edgeloop.ct.trainers import Dataset, TrainingError, _cut, class_labels

#: metric -> True when higher is better.
METRICS = {"accuracy": True, "f1_macro": True, "log_loss": False, "mae": False, "rmse": False}
CLASSIFICATION = ("accuracy", "f1_macro", "log_loss")


# --------------------------------------------------------------------------- split


def time_split(data: Dataset, holdout: float | int) -> tuple[Dataset, Dataset]:
    """(train, holdout): the holdout is the newest rows, strictly newer than every training row.

    ``holdout`` is a fraction in (0, 1) or a row count.  Rows sharing the boundary timestamp all go
    to the holdout, so no training row is as new as any holdout row.
    """
    n = len(data)
    if isinstance(holdout, bool) or not isinstance(holdout, (int, float, np.integer, np.floating)):
        raise TrainingError(f"holdout: {_cut(holdout)}; expected a fraction in (0, 1) or a row count")
    k = int(round(float(holdout) * n)) if isinstance(holdout, (float, np.floating)) and holdout < 1 else int(holdout)
    if not 1 <= k < n:
        raise TrainingError(f"holdout: {_cut(holdout)} gives {k} of {n} rows; expected between 1 and {n - 1}")
    order = data.time_order()
    cut = n - k
    if data.timestamps is not None:
        ts = data.timestamps[order]
        while cut > 0 and ts[cut - 1] >= ts[cut]:
            cut -= 1
        if cut == 0:
            raise TrainingError("holdout: every row has the same timestamp; no row is older than the holdout")
    return data.take(order[:cut]), data.take(order[cut:])


# ------------------------------------------------------------------------- metrics


def score(metric: str, y: np.ndarray, label: np.ndarray | None = None, proba: np.ndarray | None = None,
          classes: np.ndarray | None = None, value: np.ndarray | None = None) -> float:
    """One metric on one set of rows (classification: label and/or probabilities; regression: value)."""
    if metric == "accuracy":
        return float((label == y).mean())
    if metric == "f1_macro":
        f1s = []
        for c in np.union1d(np.unique(y), np.unique(label)):
            tp = float(((label == c) & (y == c)).sum())
            denom = float((label == c).sum() + (y == c).sum())
            f1s.append(2 * tp / denom if denom else 0.0)
        return float(np.mean(f1s))
    if metric == "log_loss":
        idx = np.searchsorted(classes, y)
        idx_c = np.minimum(idx, len(classes) - 1)
        known = classes[idx_c] == y
        p = np.where(known, proba[np.arange(len(y)), idx_c], 0.0)
        return float(-np.log(np.clip(p, 1e-15, 1.0)).mean())
    err = np.asarray(value, np.float64).reshape(-1) - np.asarray(y, np.float64)
    if metric == "mae":
        return float(np.abs(err).mean())
    if metric == "rmse":
        return float(np.sqrt((err * err).mean()))
    raise TrainingError(f"metric: {_cut(metric)}; expected one of {', '.join(METRICS)}")


@dataclass(frozen=True)
class Predictions:
    """A model's outputs on the holdout rows, enough to score any metric on any subset."""

    label: np.ndarray | None = None
    proba: np.ndarray | None = None
    classes: np.ndarray | None = None
    value: np.ndarray | None = None

    def take(self, rows) -> "Predictions":
        pick = (lambda a: None if a is None else a[rows])
        return Predictions(pick(self.label), pick(self.proba), self.classes, pick(self.value))

    def score(self, metric: str, y: np.ndarray) -> float:
        return score(metric, y, self.label, self.proba, self.classes, self.value)


def predict(model: bytes, x: np.ndarray, settings: SessionSettings = SessionSettings(),
            what: str = "model") -> Predictions:
    """Run ``model`` on ``x`` in onnxruntime; classes come from the model's ``edgeloop.classes``
    metadata or its ``classes`` initializer, else 0..C-1."""
    import onnx
    from onnx import numpy_helper

    session = open_session(model, settings, what)
    names = [o.name for o in session.get_outputs()]
    out = dict(zip(names, session.run(None, {session.get_inputs()[0].name: np.asarray(x, np.float32)})))
    if "label" in out:
        proto = onnx.load_model_from_string(bytes(model))
        meta = {p.key: p.value for p in proto.metadata_props}
        proba = out.get("probabilities")
        if "edgeloop.classes" in meta:
            classes = np.asarray(json.loads(meta["edgeloop.classes"]), np.int64)
        else:
            inits = {t.name: t for t in proto.graph.initializer}
            classes = numpy_helper.to_array(inits["classes"]).astype(np.int64) if "classes" in inits else (
                np.arange(proba.shape[1]) if proba is not None else None)
        return Predictions(label=np.asarray(out["label"]).reshape(-1), proba=proba, classes=classes)
    if "variable" in out:
        return Predictions(value=np.asarray(out["variable"]).reshape(-1))
    raise TrainingError(f"{what} outputs: {_cut(names)}; expected 'label' (+ 'probabilities') or 'variable'")


# ---------------------------------------------------------------------- evaluation


@dataclass(frozen=True)
class EvaluationPolicy:
    """When a challenger is blessed.

    gain = challenger - champion for higher-is-better metrics (champion - challenger otherwise);
    it must be > 0, >= ``min_gain`` and >= ``min_relative_gain`` x |champion|.  A slice with at
    least ``min_slice_samples`` rows may lose at most ``max_slice_regression`` (absolute).
    ``slice_by`` names keys of ``holdout.slices`` (e.g. "edge") or ``holdout.feature_names``.
    """

    metric: str = "accuracy"
    min_gain: float = 0.0
    min_relative_gain: float = 0.0
    max_slice_regression: float = 0.02
    min_slice_samples: int = 100
    slice_by: tuple[str, ...] = ("edge",)
    max_slice_values: int = 1000
    min_metric: float | None = None  # floor for a first model (no champion)

    def __post_init__(self):
        if self.metric not in METRICS:
            raise TrainingError(f"metric: {_cut(self.metric)}; expected one of {', '.join(METRICS)}")
        for name in ("min_gain", "min_relative_gain", "max_slice_regression"):
            if not (getattr(self, name) >= 0):
                raise TrainingError(f"{name}: {_cut(getattr(self, name))}; expected a number >= 0")


@dataclass(frozen=True)
class SliceScore:
    slice: str
    value: str
    n: int
    challenger: float
    champion: float
    gain: float  # positive: the challenger is better on this slice
    considered: bool  # n >= min_slice_samples
    regressed: bool


@dataclass(frozen=True)
class Evaluation:
    blessed: bool
    reason: str
    metric: str
    n_holdout: int
    challenger: float
    champion: float | None
    gain: float | None
    relative_gain: float | None
    slices: tuple[SliceScore, ...]
    skipped_slices: tuple[str, ...]
    policy: dict

    def to_dict(self) -> dict:
        return asdict(self)


def _slice_keys(holdout: Dataset, name: str) -> np.ndarray | None:
    if name in holdout.slices:
        return holdout.slices[name]
    if name in holdout.feature_names:
        return holdout.X[:, holdout.feature_names.index(name)]
    return None


def compare(challenger: Predictions, champion: Predictions | None, holdout: Dataset,
            policy: EvaluationPolicy = EvaluationPolicy()) -> Evaluation:
    """Bless or refuse from both models' predictions on ``holdout``."""
    metric = policy.metric
    sign = 1.0 if METRICS[metric] else -1.0
    y = class_labels(holdout.y, "holdout") if metric in CLASSIFICATION else np.asarray(holdout.y, np.float64)
    n = len(holdout)
    if n == 0:
        raise TrainingError("holdout: 0 rows; expected labelled rows newer than the training window")
    chall = challenger.score(metric, y)
    fmt = (lambda v: f"{v:.4f}")
    if champion is None:
        ok = policy.min_metric is None or sign * (chall - policy.min_metric) >= 0
        reason = (f"{'blessed' if ok else 'refused'}: no champion; {metric} {fmt(chall)} on {n} holdout rows"
                  + ("" if policy.min_metric is None else
                     f" {'meets' if ok else 'misses'} the floor {fmt(policy.min_metric)}"))
        return Evaluation(ok, reason, metric, n, chall, None, None, None, (), (), asdict(policy))
    champ = champion.score(metric, y)
    gain = sign * (chall - champ)
    rel = gain / abs(champ) if champ else (float("inf") if gain > 0 else 0.0)
    slices, skipped = [], []
    for name in policy.slice_by:
        keys = _slice_keys(holdout, name)
        if keys is None:
            skipped.append(f"{name}: not a slice key or feature of the holdout")
            continue
        values = np.unique(keys)
        if len(values) > policy.max_slice_values:
            skipped.append(f"{name}: {len(values)} distinct values; at most {policy.max_slice_values} are sliced")
            continue
        for v in values:
            rows = np.nonzero(keys == v)[0]
            a, b = challenger.take(rows).score(metric, y[rows]), champion.take(rows).score(metric, y[rows])
            g = sign * (a - b)
            considered = len(rows) >= policy.min_slice_samples
            slices.append(SliceScore(name, _cut(v.item() if hasattr(v, "item") else v, 80), int(len(rows)), a, b, g,
                                     considered, considered and -g > policy.max_slice_regression))
    margin = max(policy.min_gain, policy.min_relative_gain * abs(champ))
    head = (f"{metric} {fmt(chall)} vs champion {fmt(champ)} ({gain:+.4f}, {rel:+.2%}) on {n} holdout rows")
    worst = [s for s in slices if s.regressed]
    considered = [s for s in slices if s.considered]
    if gain <= 0 or gain < margin:
        reason = f"refused: {head}; needed a gain > 0 and >= {margin:.4f} (min_gain {policy.min_gain:g}, " \
                 f"min_relative_gain {policy.min_relative_gain:g})"
    elif worst:
        s = min(worst, key=lambda s: s.gain)
        reason = (f"refused: {head}, but slice {s.slice}={s.value} {metric} {fmt(s.challenger)} vs champion "
                  f"{fmt(s.champion)} ({s.gain:+.4f}, worse than the allowed -{policy.max_slice_regression:g}, "
                  f"n={s.n}); {len(worst)} of {len(considered)} slices regressed")
    else:
        reason = (f"blessed: {head} >= margin {margin:.4f}; no slice regressed by more than "
                  f"{policy.max_slice_regression:g} ({len(considered)} slices with >= {policy.min_slice_samples} rows)")
    return Evaluation(reason.startswith("blessed"), reason, metric, n, chall, champ, gain, rel, tuple(slices),
                      tuple(skipped), asdict(policy))


def evaluate(challenger: bytes, champion: bytes | None, holdout: Dataset,
             policy: EvaluationPolicy = EvaluationPolicy(),
             settings: SessionSettings = SessionSettings()) -> Evaluation:
    """Run both models on the holdout in onnxruntime and :func:`compare` them."""
    a = predict(challenger, holdout.X, settings, "challenger")
    b = None if champion is None else predict(champion, holdout.X, settings, "champion")
    return compare(a, b, holdout, policy)


__all__ = ["CLASSIFICATION", "METRICS", "Evaluation", "EvaluationPolicy", "Predictions", "SliceScore", "compare",
           "evaluate", "predict", "score", "time_split"]
