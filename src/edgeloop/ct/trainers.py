"""Trainers: ``fit(train, validation, warm_start, seed) -> TrainResult`` (ONNX bytes + a training report).

The built-in ones need nothing beyond NumPy/SciPy: multinomial logistic regression (Newton's method
on the exact softmax loss, L-BFGS for wide problems) and a small ReLU MLP (seeded Adam with early stopping on the validation window).
Both standardise with the training window's mean/std inside the ONNX graph, warm-start from a
champion's ONNX initializers (re-expressed in the new window's standardisation, so the starting
function is exactly the champion's), and are deterministic: same data and seed, same bytes.
Training windows (last N samples / N days / all) and recency weights are plain functions over arrays.
"""
from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Mapping, Protocol

import numpy as np

from edgeloop.ct import onnx_export
from edgeloop.ct.onnx_export import DenseModel, softmax

SECONDS_PER_DAY = 86400.0
#: Bounds on what a trainer accepts (the window comes from edge traffic: untrusted in size).
MAX_ROWS = 20_000_000
MAX_FEATURES = 4096
MAX_CLASSES = 1000


class TrainingError(ValueError):
    """The data or the settings cannot be trained on; the message names the field, value and expectation."""


def _cut(value, limit: int = 200) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ------------------------------------------------------------------------------ data


@dataclass(frozen=True)
class Dataset:
    """One window of labelled rows, in time order.

    X: float32 [n, d] (other float dtypes are rounded to float32 here, the precision serving uses);
    y: labels [n]; weight: optional non-negative sample weights; slices: optional per-row keys by
    name (e.g. ``{"edge": ids}``) for per-slice evaluation; timestamps: optional seconds (any epoch)
    for day windows and time-ordered splits; feature_names: optional column names.
    """

    X: np.ndarray
    y: np.ndarray
    weight: np.ndarray | None = None
    slices: Mapping[str, np.ndarray] = field(default_factory=dict)
    timestamps: np.ndarray | None = None
    feature_names: tuple[str, ...] = ()

    def __post_init__(self):
        x = np.asarray(self.X)
        if x.ndim != 2:
            raise TrainingError(f"X: shape {_cut(x.shape)}; expected a 2-D array [rows, features]")
        n, d = x.shape
        if n > MAX_ROWS or d > MAX_FEATURES or d == 0:
            raise TrainingError(f"X: shape {x.shape}; expected at most {MAX_ROWS} rows and 1..{MAX_FEATURES} features")
        if x.dtype.kind not in "fiub":
            raise TrainingError(f"X: dtype {x.dtype}; expected a numeric array")
        x = np.ascontiguousarray(x, dtype=np.float32)
        if not np.isfinite(x).all():
            bad = np.argwhere(~np.isfinite(x))[0]
            raise TrainingError(f"X: row {bad[0]} column {bad[1]} is {x[bad[0], bad[1]]}; expected finite values")
        y = np.asarray(self.y)
        if y.shape != (n,):
            raise TrainingError(f"y: shape {_cut(y.shape)}; expected ({n},) to match X")
        weight = None
        if self.weight is not None:
            weight = np.ascontiguousarray(self.weight, dtype=np.float64)
            if weight.shape != (n,) or not np.isfinite(weight).all() or (weight < 0).any():
                raise TrainingError(f"weight: shape {weight.shape}; expected ({n},) finite values >= 0")
        slices = {}
        for key, values in dict(self.slices).items():
            arr = np.asarray(values)
            if not isinstance(key, str) or arr.shape != (n,):
                raise TrainingError(f"slices[{_cut(key)}]: shape {_cut(arr.shape)}; expected a name and ({n},) keys")
            slices[key] = arr
        ts = None
        if self.timestamps is not None:
            ts = np.ascontiguousarray(self.timestamps, dtype=np.float64)
            if ts.shape != (n,) or not np.isfinite(ts).all():
                raise TrainingError(f"timestamps: shape {ts.shape}; expected ({n},) finite seconds")
        names = tuple(self.feature_names)
        if names and (len(names) != d or not all(isinstance(s, str) for s in names)):
            raise TrainingError(f"feature_names: {_cut(names)}; expected {d} strings")
        for name, value in (("X", x), ("y", y), ("weight", weight), ("slices", slices), ("timestamps", ts),
                            ("feature_names", names)):
            object.__setattr__(self, name, value)

    def __len__(self) -> int:
        return int(self.X.shape[0])

    @property
    def n_features(self) -> int:
        return int(self.X.shape[1])

    def take(self, rows) -> "Dataset":
        """The rows ``rows`` (indices or a boolean mask), every per-row array alike."""
        return Dataset(
            self.X[rows], self.y[rows], None if self.weight is None else self.weight[rows],
            {k: v[rows] for k, v in self.slices.items()},
            None if self.timestamps is None else self.timestamps[rows], self.feature_names)

    def time_order(self) -> np.ndarray:
        """Row indices oldest first (stable: rows without timestamps keep their given order)."""
        if self.timestamps is None:
            return np.arange(len(self))
        return np.argsort(self.timestamps, kind="stable")


# --------------------------------------------------------------------------- windows


@dataclass(frozen=True)
class TrainingWindow:
    """Which rows to train on: ``all``, the last ``size`` samples, or the last ``size`` days.

    ``half_life`` (in samples for ``samples``/``all``, in days for ``days``) adds recency weights:
    a row ``half_life`` older than the newest weighs half as much.  None means equal weights.
    """

    kind: str = "all"
    size: float | None = None
    half_life: float | None = None

    def __post_init__(self):
        if self.kind not in ("all", "samples", "days"):
            raise TrainingError(f"window.kind: {_cut(self.kind)}; expected 'all', 'samples' or 'days'")
        if self.kind != "all" and (self.size is None or not (float(self.size) > 0)):
            raise TrainingError(f"window.size: {_cut(self.size)}; expected a number > 0 for kind {self.kind!r}")
        if self.half_life is not None and not (float(self.half_life) > 0):
            raise TrainingError(f"window.half_life: {_cut(self.half_life)}; expected a number > 0 or None")


def last_n_samples(data: Dataset, n: int) -> Dataset:
    """The newest ``n`` rows, oldest first."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise TrainingError(f"window size: {_cut(n)}; expected an int >= 1")
    order = data.time_order()
    return data.take(order[max(0, len(order) - int(n)):])


def last_n_days(data: Dataset, days: float, now: float | None = None) -> Dataset:
    """Rows newer than ``now - days`` (``now`` defaults to the newest timestamp), oldest first."""
    if data.timestamps is None:
        raise TrainingError("timestamps: None; a window of days needs per-row timestamps")
    if not (float(days) > 0):
        raise TrainingError(f"window days: {_cut(days)}; expected a number > 0")
    end = float(data.timestamps.max()) if now is None and len(data) else float(now or 0.0)
    order = data.time_order()
    keep = order[data.timestamps[order] > end - float(days) * SECONDS_PER_DAY]
    return data.take(keep)


def recency_weights(ages: np.ndarray, half_life: float) -> np.ndarray:
    """``0.5 ** (age / half_life)``: the newest row (age 0) weighs 1."""
    if not (float(half_life) > 0):
        raise TrainingError(f"half_life: {_cut(half_life)}; expected a number > 0")
    return np.exp2(-np.asarray(ages, np.float64) / float(half_life))


def apply_window(data: Dataset, window: TrainingWindow, now: float | None = None) -> Dataset:
    """The rows ``window`` selects, oldest first, with recency weights multiplied into ``weight``."""
    if window.kind == "samples":
        out = last_n_samples(data, int(window.size))
    elif window.kind == "days":
        out = last_n_days(data, float(window.size), now)
    else:
        out = data.take(data.time_order())
    if window.half_life is None or len(out) == 0:
        return out
    if window.kind == "days":
        end = float(out.timestamps.max()) if now is None else float(now)
        ages = (end - out.timestamps) / SECONDS_PER_DAY
    else:
        ages = np.arange(len(out) - 1, -1, -1, dtype=np.float64)
    w = recency_weights(ages, float(window.half_life))
    return replace(out, weight=w if out.weight is None else out.weight * w)


# ---------------------------------------------------------------------------- result


@dataclass(frozen=True)
class TrainingReport:
    """What a fit did, in numbers: enough to store with the model and to explain it."""

    trainer: str
    params: dict
    seed: int
    n_train: int
    n_validation: int
    n_features: int
    classes: tuple
    warm_started: bool
    warm_start_note: str
    iterations: int  # L-BFGS iterations, or epochs for the MLP
    converged: bool
    initial_loss: float  # training loss at the starting point (the champion's, when warm-started)
    train_loss: float
    validation: dict  # metric -> value on the validation window
    history: tuple = ()  # per epoch validation loss (MLP) or the training loss at each evaluation (LR)
    seconds: float = 0.0
    model_sha256: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class TrainResult:
    model: bytes
    report: TrainingReport


class Trainer(Protocol):
    """Anything that turns a window into a servable ONNX model."""

    name: str

    def fit(self, train: Dataset, validation: Dataset, warm_start: bytes | None = None,
            seed: int = 0) -> TrainResult: ...


# ------------------------------------------------------------------ shared machinery


def _check_seed(seed) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= int(seed) < 2**63:
        raise TrainingError(f"seed: {_cut(seed)}; expected an int in [0, 2**63)")
    return int(seed)


def class_labels(y: np.ndarray, what: str) -> np.ndarray:
    """``y`` as int64 class values (integral floats are accepted; anything else is refused)."""
    y = np.asarray(y)
    if y.dtype.kind == "f":
        if not np.isfinite(y).all() or (y != np.round(y)).any():
            bad = y[~np.isfinite(y) | (y != np.round(y))][0]
            raise TrainingError(f"{what}.y: value {_cut(float(bad))}; expected integer class labels")
    elif y.dtype.kind not in "iub":
        raise TrainingError(f"{what}.y: dtype {y.dtype}; expected integer class labels")
    return y.astype(np.int64)


def standardisation(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean, 1/std) in float32 from the training window; a constant column gets 1/std = 1."""
    mean = x.mean(axis=0, dtype=np.float64)
    std = x.std(axis=0, dtype=np.float64)
    inv = np.where(std > 1e-12 * np.maximum(1.0, np.abs(mean)), 1.0 / np.where(std > 0, std, 1.0), 1.0)
    return mean.astype(np.float32), inv.astype(np.float32)


def standardise(x: np.ndarray, mean: np.ndarray, inv_std: np.ndarray) -> np.ndarray:
    """The graph's Sub then Mul, in float32, so training sees exactly what serving computes."""
    return np.ascontiguousarray((x - mean) * inv_std, dtype=np.float32)


def rebase(model: DenseModel, mean: np.ndarray, inv_std: np.ndarray, classes: np.ndarray) -> list:
    """The champion's layers re-expressed for a new standardisation and class list (float64).

    z_old = (x - m0) s0 and z_new = (x - m1) s1 give z_old = z_new (s0/s1) + (m1 - m0) s0, so the first
    layer becomes W' = diag(s0/s1) W, b' = b + ((m1 - m0) s0) W: the same function of x.  Classes the
    champion did not know get zero output columns; classes it knew and the window lacks are kept.
    """
    s0, s1 = model.inv_std.astype(np.float64), inv_std.astype(np.float64)
    m0, m1 = model.mean.astype(np.float64), mean.astype(np.float64)
    layers = [(w.astype(np.float64), b.astype(np.float64)) for w, b in model.layers]
    w1, b1 = layers[0]
    layers[0] = ((s0 / s1)[:, None] * w1, b1 + ((m1 - m0) * s0) @ w1)
    w, b = layers[-1]
    col = {int(c): j for j, c in enumerate(model.classes)}
    w_new = np.zeros((w.shape[0], len(classes)))
    b_new = np.zeros(len(classes))
    for j, c in enumerate(classes):
        if int(c) in col:
            w_new[:, j], b_new[j] = w[:, col[int(c)]], b[col[int(c)]]
    layers[-1] = (w_new, b_new)
    return layers


def _warm_model(warm_start, kind: str, d: int, hidden: tuple) -> tuple[DenseModel | None, str]:
    """The champion's weights if they fit this trainer, else None and the reason in words."""
    if warm_start is None:
        return None, "cold start: no champion given"
    try:
        model = onnx_export.from_onnx(warm_start)
    except onnx_export.ModelFormatError as exc:
        return None, f"cold start: {exc}"
    if model.kind != kind:
        return None, f"cold start: champion is a {model.kind} model; this trainer fits {kind}"
    if model.n_features != d:
        return None, f"cold start: champion takes {model.n_features} features; the window has {d}"
    widths = tuple(w.shape[1] for w, _ in model.layers[:-1])
    if widths != hidden:
        return None, f"cold start: champion's hidden layers are {widths}; this trainer uses {hidden}"
    return model, f"warm start from the champion's weights ({len(model.classes)} classes)"


def _union_classes(y: np.ndarray, warm: DenseModel | None) -> np.ndarray:
    classes = np.unique(y)
    if warm is not None:
        classes = np.union1d(classes, warm.classes)
    if len(classes) < 2 or len(classes) > MAX_CLASSES:
        raise TrainingError(f"train.y: {len(classes)} distinct classes {_cut(classes.tolist())}; expected 2.."
                            f"{MAX_CLASSES}")
    return classes.astype(np.int64)


def _sample_weights(data: Dataset) -> np.ndarray:
    w = np.ones(len(data)) if data.weight is None else data.weight
    if not w.sum() > 0:
        raise TrainingError("weight: all sample weights are 0; expected some positive weight")
    return w


def _log_loss(proba: np.ndarray, idx: np.ndarray, w: np.ndarray) -> float:
    p = np.clip(proba[np.arange(len(idx)), idx], 1e-15, 1.0)
    return float(-(w * np.log(p)).sum() / w.sum())


def _validation_metrics(model: DenseModel, validation: Dataset) -> dict:
    if len(validation) == 0:
        return {}
    y = class_labels(validation.y, "validation")
    logits = model.logits(validation.X).astype(np.float64)
    proba = softmax(logits)
    pred = model.classes[np.argmax(logits, axis=1)]
    w = _sample_weights(validation)
    known = np.isin(y, model.classes)
    idx = np.searchsorted(model.classes, np.where(known, y, model.classes[0]))
    p_true = np.where(known, proba[np.arange(len(y)), idx], 0.0)
    loss = float(-(w * np.log(np.clip(p_true, 1e-15, 1.0))).sum() / w.sum())
    return {"accuracy": float((w * (pred == y)).sum() / w.sum()), "log_loss": loss}


def _finish(name: str, params: dict, seed: int, model: DenseModel, train: Dataset, validation: Dataset,
            note: str, warm: bool, iterations: int, converged: bool, initial_loss: float, train_loss: float,
            history, started: float) -> TrainResult:
    meta = {"edgeloop.trainer": name, "edgeloop.seed": str(seed), "edgeloop.params": json.dumps(params, sort_keys=True),
            "edgeloop.n_train": str(len(train)), "edgeloop.warm_started": str(warm).lower()}
    data = onnx_export.to_onnx(model, meta)
    report = TrainingReport(
        trainer=name, params=params, seed=seed, n_train=len(train), n_validation=len(validation),
        n_features=model.n_features, classes=tuple(int(c) for c in model.classes), warm_started=warm,
        warm_start_note=note, iterations=int(iterations), converged=bool(converged),
        initial_loss=float(initial_loss), train_loss=float(train_loss),
        validation=_validation_metrics(model, validation), history=tuple(float(h) for h in history),
        seconds=time.perf_counter() - started, model_sha256=hashlib.sha256(data).hexdigest())
    return TrainResult(data, report)


def _check_inputs(train: Dataset, validation: Dataset) -> None:
    if not isinstance(train, Dataset) or not isinstance(validation, Dataset):
        raise TrainingError("train/validation: expected Dataset instances")
    if len(train) < 2:
        raise TrainingError(f"train: {len(train)} rows; expected at least 2")
    if len(validation) and validation.n_features != train.n_features:
        raise TrainingError(f"validation.X: {validation.n_features} features; expected {train.n_features} as in train")


# --------------------------------------------------------------- logistic regression


@dataclass(frozen=True)
class LogisticRegressionTrainer:
    """Multinomial logistic regression on the weighted mean softmax loss + l2/2 ||W||^2: Newton's method
    while (d + 1) x classes <= NEWTON_MAX_PARAMS (a handful of iterations), L-BFGS beyond.

    The loss is convex, so a cold start from zeros and a warm start from the champion reach the same
    optimum; the warm start gets there in fewer iterations when the world has not moved far.  Nothing
    is random: the seed is only recorded with the model.
    """

    l2: float = 1e-4
    max_iter: int = 500
    tol: float = 1e-5
    name: str = "logistic"

    def fit(self, train: Dataset, validation: Dataset, warm_start: bytes | None = None, seed: int = 0) -> TrainResult:
        import scipy.optimize

        started = time.perf_counter()
        seed = _check_seed(seed)
        _check_inputs(train, validation)
        if not (self.l2 >= 0) or self.max_iter < 1:
            raise TrainingError(f"l2={self.l2!r}, max_iter={self.max_iter!r}; expected l2 >= 0 and max_iter >= 1")
        y = class_labels(train.y, "train")
        d = train.n_features
        warm, note = _warm_model(warm_start, "logistic", d, ())
        classes = _union_classes(y, warm)
        c = len(classes)
        mean, inv_std = standardisation(train.X)
        z = standardise(train.X, mean, inv_std).astype(np.float64)
        idx = np.searchsorted(classes, y)
        w = _sample_weights(train)
        if warm is not None:
            (w0, b0), = rebase(warm, mean, inv_std, classes)
            theta0 = np.concatenate([w0.ravel(), b0])
        else:
            theta0 = np.zeros(d * c + c)
        l2 = float(self.l2)
        evaluate = _SoftmaxLoss(z, idx, w / w.sum(), c, l2)
        history = evaluate.history
        if (d + 1) * c <= NEWTON_MAX_PARAMS:
            solver = "newton"
            theta, nit, converged = _newton(evaluate, theta0, float(self.tol), int(self.max_iter))
            final = evaluate.last
        else:
            # Converged when the largest gradient entry of the mean loss is below tol (scikit-learn's
            # criterion for lbfgs), or the loss stops moving at rounding level.
            solver = "lbfgs"
            result = scipy.optimize.minimize(
                evaluate, theta0, jac=True, method="L-BFGS-B",
                options={"maxiter": int(self.max_iter), "gtol": float(self.tol), "ftol": 64 * np.finfo(float).eps})
            theta, nit, converged, final = result.x, result.nit, result.success, result.fun
        initial_loss = history[0]
        layer = (theta[: d * c].reshape(d, c).astype(np.float32), theta[d * c:].astype(np.float32))
        model = DenseModel("logistic", mean, inv_std, (layer,), classes)
        params = {"l2": l2, "max_iter": int(self.max_iter), "tol": float(self.tol), "solver": solver}
        return _finish(self.name, params, seed, model, train, validation, note, warm is not None, nit,
                       converged, initial_loss, final, history, started)


#: Newton's method while the Hessian ((d + 1) C square) is small; L-BFGS beyond.
NEWTON_MAX_PARAMS = 256


class _SoftmaxLoss:
    """Weighted mean softmax loss + l2/2 ||W||^2 and its gradient at theta = [W; b] (row-major (d + 1, C)).

    Per-row arrays are kept class-major, (C, n), so every reduction over classes runs along the long
    axis.  ``p`` holds the class probabilities at the last point evaluated (Newton reuses them).
    """

    def __init__(self, z: np.ndarray, idx: np.ndarray, w: np.ndarray, c: int, l2: float):
        self.zt = np.ascontiguousarray(z.T)
        self.d, self.n = self.zt.shape
        self.c, self.w, self.l2 = c, w, l2
        self.idx, self.rows = idx, np.arange(self.n)
        self.onehot = np.zeros((c, self.n))
        self.onehot[idx, self.rows] = w
        self.history: list[float] = []
        self.p = None
        self.last = float("nan")

    def __call__(self, theta: np.ndarray):
        d, c = self.d, self.c
        wm = theta[: d * c].reshape(d, c)
        logits = wm.T @ self.zt
        logits += theta[d * c:, None]
        top = logits.max(axis=0)
        e = np.exp(logits - top)
        s = e.sum(axis=0)
        flat = wm.ravel()
        loss = float(self.w @ (np.log(s) + top) - self.w @ logits[self.idx, self.rows]) + 0.5 * self.l2 * float(flat @ flat)
        e /= s
        self.p = e
        g = e * self.w - self.onehot
        grad = np.concatenate([(self.zt @ g.T + self.l2 * wm).ravel(), g.sum(axis=1)])
        self.last = loss
        if len(self.history) < 10_000:
            self.history.append(loss)
        return loss, grad


def _newton(evaluate: _SoftmaxLoss, theta, tol, max_iter):
    """Damped Newton on the softmax loss: exact Hessian, Armijo backtracking.  (theta, iterations, converged).

    The Hessian block of classes (k, l) is Z1^T diag(w p_k (delta_kl - p_l)) Z1 with Z1 = [z, 1]; the
    bias row is unpenalised and softmax is shift-invariant in it, so a 1e-10 ridge keeps it solvable.
    """
    d, c, w = evaluate.d, evaluate.c, evaluate.w
    dim = (d + 1) * c
    z1t = np.vstack([evaluate.zt, np.ones((1, evaluate.n))])
    ridge = np.zeros((d + 1, c))
    ridge[:d], ridge[d] = evaluate.l2, 1e-10
    ridge = ridge.ravel()
    loss, grad = evaluate(theta)
    for it in range(max_iter):
        if np.abs(grad).max() <= tol:
            return theta, it, True
        p = evaluate.p
        h = np.empty((d + 1, c, d + 1, c))
        for k in range(c):
            for m in range(k, c):
                a = w * p[k] * ((k == m) - p[m])
                block = (z1t * a) @ z1t.T
                h[:, k, :, m] = block
                h[:, m, :, k] = block.T
        hess = h.reshape(dim, dim)
        hess[np.diag_indices(dim)] += ridge
        step = np.linalg.solve(hess, grad)
        slope = float(grad @ step)
        t = 1.0
        while True:
            new_loss, new_grad = evaluate(theta - t * step)  # the last call is at the accepted point
            if new_loss <= loss - 1e-4 * t * slope or t < 1e-6:
                break
            t *= 0.5
        moved = loss - new_loss
        theta, loss, grad = theta - t * step, new_loss, new_grad
        if moved <= 64 * np.finfo(float).eps * max(1.0, abs(loss)):
            return theta, it + 1, np.abs(grad).max() <= tol or moved >= 0
    return theta, max_iter, np.abs(grad).max() <= tol


# ----------------------------------------------------------------------------- MLP


@dataclass(frozen=True)
class MLPTrainer:
    """A small ReLU MLP with softmax output: seeded Glorot init, seeded shuffles, Adam, l2, and early
    stopping on the validation window's log-loss (the best epoch's weights are kept)."""

    hidden: tuple[int, ...] = (32,)
    learning_rate: float = 1e-3
    batch_size: int = 256
    max_epochs: int = 50
    patience: int = 5
    l2: float = 1e-4
    tol: float = 1e-4
    name: str = "mlp"

    def _check(self) -> None:
        if not self.hidden or any(isinstance(h, bool) or not isinstance(h, int) or not 1 <= h <= 4096
                                  for h in self.hidden):
            raise TrainingError(f"hidden: {_cut(self.hidden)}; expected a non-empty tuple of ints in 1..4096")
        for name, value, lo in (("batch_size", self.batch_size, 1), ("max_epochs", self.max_epochs, 1),
                                ("patience", self.patience, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < lo:
                raise TrainingError(f"{name}: {_cut(value)}; expected an int >= {lo}")
        if not (self.learning_rate > 0) or not (self.l2 >= 0) or not (self.tol >= 0):
            raise TrainingError(f"learning_rate={self.learning_rate!r}, l2={self.l2!r}, tol={self.tol!r}; expected "
                                "learning_rate > 0, l2 >= 0, tol >= 0")

    def fit(self, train: Dataset, validation: Dataset, warm_start: bytes | None = None, seed: int = 0) -> TrainResult:
        started = time.perf_counter()
        seed = _check_seed(seed)
        _check_inputs(train, validation)
        self._check()
        hidden = tuple(int(h) for h in self.hidden)
        y = class_labels(train.y, "train")
        d = train.n_features
        warm, note = _warm_model(warm_start, "mlp", d, hidden)
        classes = _union_classes(y, warm)
        mean, inv_std = standardisation(train.X)
        z = standardise(train.X, mean, inv_std)
        idx = np.searchsorted(classes, y)
        w = _sample_weights(train)
        w = (w / w.mean()).astype(np.float32)
        rng = np.random.default_rng(seed)
        sizes = (d, *hidden, len(classes))
        params = initial_mlp_params(sizes, warm, mean, inv_std, classes, rng)
        val_z = standardise(validation.X, mean, inv_std) if len(validation) else z
        if len(validation):
            vy = class_labels(validation.y, "validation")
            val_known = np.isin(vy, classes)
            val_idx = np.searchsorted(classes, np.where(val_known, vy, classes[0]))
            val_w = _sample_weights(validation)
        else:
            val_idx, val_w, val_known = idx, w.astype(np.float64), np.ones(len(idx), bool)

        def forward(x):
            from edgeloop.kernels import dense

            acts = [x]
            for i in range(0, len(params), 2):
                last = i == len(params) - 2
                acts.append(dense(acts[-1], params[i], params[i + 1], "identity" if last else "relu"))
            return acts

        def val_loss():
            proba = softmax(forward(val_z)[-1].astype(np.float64))
            p = np.where(val_known, proba[np.arange(len(val_idx)), val_idx], 0.0)
            return float(-(val_w * np.log(np.clip(p, 1e-15, 1.0))).sum() / val_w.sum())

        def train_loss():
            proba = softmax(forward(z)[-1].astype(np.float64))
            return _log_loss(proba, idx, w.astype(np.float64))

        lr, b1, b2, eps = np.float32(self.learning_rate), 0.9, 0.999, 1e-8
        l2 = np.float32(self.l2)
        m = [np.zeros_like(p) for p in params]
        v = [np.zeros_like(p) for p in params]
        step = 0
        initial_loss = train_loss()
        best, best_params, best_epoch, history = val_loss(), [p.copy() for p in params], 0, []
        n, bs = len(y), int(self.batch_size)
        epochs = 0
        for epoch in range(1, int(self.max_epochs) + 1):
            epochs = epoch
            order = rng.permutation(n)
            for start in range(0, n, bs):
                rows = order[start:start + bs]
                acts = forward(z[rows])
                out = acts[-1]
                out -= out.max(axis=1, keepdims=True)
                np.exp(out, out=out)
                out /= out.sum(axis=1, keepdims=True)
                out[np.arange(len(rows)), idx[rows]] -= 1.0
                delta = out * (w[rows] / np.float32(len(rows)))[:, None]  # d(loss)/d(logits)
                step += 1
                scale = lr * np.float32(math.sqrt(1 - b2 ** step) / (1 - b1 ** step))  # Adam's bias correction
                for layer in range(len(params) // 2 - 1, -1, -1):
                    wi = 2 * layer
                    grads = (acts[layer].T @ delta + l2 * params[wi], delta.sum(axis=0))
                    if layer:
                        delta = (delta @ params[wi].T) * (acts[layer] > 0)
                    for k, g in ((wi, grads[0]), (wi + 1, grads[1])):
                        m[k] *= b1
                        m[k] += (1 - b1) * g
                        v[k] *= b2
                        v[k] += (1 - b2) * g * g
                        params[k] -= scale * m[k] / (np.sqrt(v[k]) + eps)
            loss = val_loss()
            history.append(loss)
            if loss < best - float(self.tol):
                best, best_params, best_epoch = loss, [p.copy() for p in params], epoch
            elif epoch - best_epoch >= int(self.patience):
                break
        params = best_params
        layers = tuple((params[i], params[i + 1]) for i in range(0, len(params), 2))
        model = DenseModel("mlp", mean, inv_std, layers, classes)
        settings = {"hidden": list(hidden), "learning_rate": float(self.learning_rate), "batch_size": bs,
                    "max_epochs": int(self.max_epochs), "patience": int(self.patience), "l2": float(self.l2),
                    "tol": float(self.tol)}
        return _finish(self.name, settings, seed, model, train, validation, note, warm is not None, epochs,
                       epochs < int(self.max_epochs), initial_loss, train_loss(), history, started)


__all__ = ["Dataset", "LogisticRegressionTrainer", "MLPTrainer", "SECONDS_PER_DAY", "TrainResult", "Trainer",
           "TrainingError", "TrainingReport", "TrainingWindow", "apply_window", "class_labels", "last_n_days",
           "last_n_samples", "rebase", "recency_weights", "standardisation", "standardise"]


def initial_mlp_params(sizes, warm, mean, inv_std, classes, rng) -> list[np.ndarray]:
    """The MLP's starting weights: the champion's rebased to this window, else seeded Glorot-uniform.

    Shared by the in-process and the Dask trainer, so both start from the same bytes for one seed.
    """
    if warm is not None:
        params = [a.astype(np.float32) for layer in rebase(warm, mean, inv_std, classes) for a in layer]
    else:
        params = []
        for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
            bound = math.sqrt(6.0 / (fan_in + fan_out))
            params.append(rng.uniform(-bound, bound, (fan_in, fan_out)).astype(np.float32))
            params.append(rng.uniform(-bound, bound, fan_out).astype(np.float32))
    return [np.ascontiguousarray(p) for p in params]
