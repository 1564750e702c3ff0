"""The ``[dask]`` extra: the built-in trainers data-parallel on a ``dask.distributed`` cluster.

Why: a training window can outgrow the coordinator's memory.  Here the window is cut into chunks of
rows fixed by the coordinator (``chunk_rows``, independent of the number of workers); each chunk is
read by a worker (from the coordinator's store through a read-only connection: the CT loop's window by
its label ids, see :mod:`edgeloop.ct.window_chunks` and :meth:`DaskTrainer.fit_source`, SQLite or
PostgreSQL; the newest rows of a SQLite store by label row-id range, see :class:`StoreWindow`; or
scattered from an in-memory :class:`Dataset`) and stays in that worker's memory for the whole fit.  The coordinator only ever holds per-chunk sums:

* logistic regression: the exact per-chunk loss, gradient and (Newton) Hessian, summed -> the same
  Newton/L-BFGS iterations as :class:`LogisticRegressionTrainer`;
* MLP: the same seeded init, shuffles and Adam as :class:`MLPTrainer`, each step's minibatch gradient
  being the sum of the per-chunk gradients of that minibatch's rows (synchronous data-parallel).
  One cluster round trip per step: use a large ``batch_size`` for large windows.

Sums are taken per chunk in float64 and combined in chunk order, so the model does not depend on the
worker count (1, 2 or 4 workers give the same bytes); against the in-process trainer it differs only by
floating-point summation order (documented tolerance: see ``tests/ct/test_trainer_dask.py``).
Standardisation is the window's exact two-pass mean/std.  dask is imported only when used.

The scikit-learn path (:class:`DaskSklearnTrainer`) runs :class:`SklearnTrainer` under joblib's
``dask`` backend: estimators that parallelise through joblib (``n_jobs``: forests, searches) spread
their work over the cluster; the arrays themselves stay in memory, as scikit-learn needs them.
"""
from __future__ import annotations

import logging
import math
import re
import sqlite3
import threading
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from edgeloop.ct.onnx_export import DenseModel, softmax
from edgeloop.ct.trainers import (MAX_CLASSES, MAX_FEATURES, MAX_ROWS, NEWTON_MAX_PARAMS, Dataset, LogisticRegressionTrainer,
                                  MLPTrainer, TrainingError, TrainResult, _check_seed, _cut, _finish, _SoftmaxLoss,
                                  _warm_model, class_labels, initial_mlp_params, rebase, standardise)

log = logging.getLogger("edgeloop.ct.dask")

#: rows per chunk unless told otherwise (a chunk is one task's share of the window)
DEFAULT_CHUNK_ROWS = 50_000
MAX_CHUNK_ROWS = 5_000_000
#: at most this many chunks per fit (each is a future the scheduler tracks)
MAX_CHUNKS = 10_000
SCHEDULER_RE = re.compile(r"^tcp://[A-Za-z0-9.\-]{1,253}:[0-9]{1,5}$")


def available() -> str | None:
    """None when the extra is installed, else why not (for skips and error messages)."""
    try:
        import dask  # noqa: F401
        import distributed  # noqa: F401
    except ImportError as exc:
        return f"the [dask] extra is not installed ({exc}); pip install 'edgeloop[dask]'"
    return None


# ------------------------------------------------------------------------ the cluster


def _local_cluster(n_workers: int, threads: int):
    """The scheduler and each worker in their own process, all on loopback.

    Why not ``LocalCluster``: it runs the scheduler inside the coordinator's process, where its task
    bookkeeping (every submitted task's spec, logs, transitions) grows with the number of round trips
    and outweighed the window itself (benchmarks/ct_dask.py, MLP: 1.3x the in-process peak)."""
    from distributed.deploy.subprocess import SubprocessCluster

    return SubprocessCluster(host="127.0.0.1", n_workers=n_workers, threads_per_worker=threads,
                             dashboard_address="127.0.0.1:0", worker_class="distributed.Worker",
                             silence_logs=logging.WARNING)


class DaskBackend:
    """A client of an existing scheduler (``tcp://host:port``) or of a local cluster this object starts
    (loopback only; the scheduler and the workers each in their own process) on first use and stops in
    :meth:`close`."""

    def __init__(self, scheduler: str = "local", n_workers: int = 2, threads_per_worker: int = 1,
                 timeout_s: float = 60.0) -> None:
        if scheduler != "local" and not SCHEDULER_RE.match(str(scheduler)):
            raise TrainingError(f"scheduler: {_cut(scheduler)}; expected 'local' or 'tcp://host:port'")
        if isinstance(n_workers, bool) or not isinstance(n_workers, int) or not 1 <= n_workers <= 256:
            raise TrainingError(f"n_workers: {_cut(n_workers)}; expected an int in 1..256")
        self.scheduler, self.n_workers, self.threads = scheduler, n_workers, threads_per_worker
        self.timeout_s = float(timeout_s)
        self._client = None
        self._cluster = None
        self._lock = threading.Lock()

    def client(self):
        with self._lock:
            if self._client is None:
                why = available()
                if why:
                    raise TrainingError(why)
                from distributed import Client

                if self.scheduler == "local":
                    self._cluster = _local_cluster(self.n_workers, self.threads)
                    self._client = Client(self._cluster, timeout=self.timeout_s)
                else:
                    self._client = Client(self.scheduler, timeout=self.timeout_s)
            return self._client

    def close(self) -> None:
        with self._lock:
            client, cluster, self._client, self._cluster = self._client, self._cluster, None, None
        if client is not None:
            client.close()
        if cluster is not None:
            cluster.close()

    def __enter__(self) -> "DaskBackend":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ----------------------------------------------------------------------- the chunks


@dataclass(frozen=True)
class Chunk:
    """One task's rows: X float32 [n, d], raw labels y [n], optional weights [n]."""

    X: np.ndarray
    y: np.ndarray
    weight: np.ndarray | None = None


@dataclass(frozen=True)
class StoreWindow:
    """The newest ``rows`` labelled samples of ``model`` in the coordinator's SQLite file, read by the workers.

    The coordinator reads only label row ids (to cut the window into ranges); each worker opens the
    file read-only and decodes its range with ``decode`` (an importable function such as the
    coordinator's ``decode_sample``), as the CT loop's reader does.  Rows that do not decode are skipped.
    """

    path: str
    model: str
    input_name: str
    n_features: int
    decode: Callable[[bytes, str], np.ndarray]
    rows: int
    after: int = 0  # label row id the window starts after

    def ranges(self, chunk_rows: int) -> list[tuple[int, int]]:
        """Inclusive label row-id ranges of at most ``chunk_rows`` rows each, oldest first."""
        from edgeloop.store.sqlite_ct import _LABELLED

        query = _LABELLED.replace("SELECT l.rowid, s.sample_id, s.node_id, s.model_version, s.timestamp_ms, "
                                  "s.payload, l.value", "SELECT l.rowid")
        with _read_only(self.path) as db:
            ids = [r[0] for r in db.execute(query + " AND l.rowid > ? ORDER BY l.rowid DESC LIMIT ?",
                                            (self.model, self.after, int(self.rows)))]
        ids.reverse()
        return [(ids[i], ids[min(i + chunk_rows, len(ids)) - 1]) for i in range(0, len(ids), chunk_rows)]


class _read_only:
    def __init__(self, path: str) -> None:
        self.db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)

    def __enter__(self) -> sqlite3.Connection:
        return self.db

    def __exit__(self, *exc) -> None:
        self.db.close()


def read_store_chunk(window: StoreWindow, lo: int, hi: int) -> Chunk:
    """(on a worker) The window's rows with label row id in [lo, hi], decoded."""
    from edgeloop.ct.window import decode_rows
    from edgeloop.store.sqlite_ct import _LABELLED

    with _read_only(window.path) as db:
        rows = [(r[0], r[1], r[2], r[3], r[4], bytes(r[5]), r[6]) for r in db.execute(
            _LABELLED + " AND l.rowid >= ? AND l.rowid <= ? ORDER BY l.rowid", (window.model, lo, hi))]
    win = decode_rows(rows, window.decode, window.input_name, window.n_features)
    return Chunk(win.X, win.y)


class _Chunks:
    """Futures of the chunks on the workers, in chunk order; ``map`` runs a function on each, in order."""

    def __init__(self, client, futures: list, sizes: Sequence[int]) -> None:
        self.client, self.futures, self.sizes = client, futures, [int(s) for s in sizes]
        self.starts = np.concatenate([[0], np.cumsum(self.sizes)]).astype(np.int64)

    @property
    def n(self) -> int:
        return int(self.starts[-1])

    def map(self, fn, *args) -> list:
        return self.client.gather([self.client.submit(fn, f, *args, pure=False) for f in self.futures])

    def release(self) -> None:
        for f in self.futures:
            f.release()


def _chunk_stats(chunk: Chunk) -> tuple:
    """(rows, weight sum, float64 column sums, distinct labels); refuses labels and values a trainer would."""
    y = class_labels(chunk.y, "train")
    x = chunk.X
    if not np.isfinite(x).all():
        bad = np.argwhere(~np.isfinite(x))[0]
        raise TrainingError(f"X: a chunk row {bad[0]} column {bad[1]} is {x[bad[0], bad[1]]}; expected finite values")
    w = float(len(y)) if chunk.weight is None else float(chunk.weight.sum())
    return len(y), w, x.sum(axis=0, dtype=np.float64), np.unique(y), x.shape[1]


def _chunk_m2(chunk: Chunk, mean: np.ndarray) -> np.ndarray:
    dev = chunk.X.astype(np.float64) - mean
    return np.einsum("ij,ij->j", dev, dev)


def _prepare_logistic(chunk: Chunk, mean, inv_std, classes, total_weight: float):
    z = standardise(chunk.X, mean, inv_std).astype(np.float64)
    idx = np.searchsorted(classes, class_labels(chunk.y, "train"))
    w = np.ones(len(idx)) if chunk.weight is None else np.asarray(chunk.weight, np.float64)
    return _SoftmaxLoss(z, idx, w / total_weight, len(classes), 0.0)


def _logistic_eval(part: _SoftmaxLoss, theta: np.ndarray, hessian: bool):
    """This chunk's share of the mean loss and gradient (no l2), and of the Hessian when asked."""
    loss, grad = part(theta)
    if not hessian:
        return loss, grad, None
    d, c, w, p = part.d, part.c, part.w, part.p
    z1t = np.vstack([part.zt, np.ones((1, part.n))])
    h = np.empty((d + 1, c, d + 1, c))
    for k in range(c):
        for m in range(k, c):
            a = w * p[k] * ((k == m) - p[m])
            block = (z1t * a) @ z1t.T
            h[:, k, :, m] = block
            h[:, m, :, k] = block.T
    return loss, grad, h.reshape((d + 1) * c, (d + 1) * c)


def _prepare_mlp(chunk: Chunk, mean, inv_std, classes, mean_weight: float):
    z = standardise(chunk.X, mean, inv_std)
    idx = np.searchsorted(classes, class_labels(chunk.y, "train"))
    w = np.ones(len(idx)) if chunk.weight is None else np.asarray(chunk.weight, np.float64)
    return z, idx, (w / mean_weight).astype(np.float32)


def _forward(params: list, x: np.ndarray) -> list:
    from edgeloop.kernels import dense

    acts = [x]
    for i in range(0, len(params), 2):
        last = i == len(params) - 2
        acts.append(dense(acts[-1], params[i], params[i + 1], "identity" if last else "relu"))
    return acts


def _mlp_grad(part, rows: np.ndarray, params: list, batch: int) -> list:
    """This chunk's share of one minibatch's gradient (``rows`` local, in the batch's order), float64, no l2."""
    z, idx, w = part
    acts = _forward(params, z[rows])
    out = acts[-1]
    out -= out.max(axis=1, keepdims=True)
    np.exp(out, out=out)
    out /= out.sum(axis=1, keepdims=True)
    out[np.arange(len(rows)), idx[rows]] -= 1.0
    delta = out * (w[rows] / np.float32(batch))[:, None]
    grads = [None] * len(params)
    for layer in range(len(params) // 2 - 1, -1, -1):
        wi = 2 * layer
        grads[wi] = (acts[layer].T @ delta).astype(np.float64)
        grads[wi + 1] = delta.sum(axis=0, dtype=np.float64)
        if layer:
            delta = (delta @ params[wi].T) * (acts[layer] > 0)
    return grads


def _mlp_loss(part, params: list) -> tuple[float, float]:
    """(sum of w * -log p(true class), sum of w) over the chunk."""
    z, idx, w = part
    proba = softmax(_forward(params, z)[-1].astype(np.float64))
    p = np.clip(proba[np.arange(len(idx)), idx], 1e-15, 1.0)
    w = w.astype(np.float64)
    return float(-(w * np.log(p)).sum()), float(w.sum())


# ------------------------------------------------------------------------ trainers


class _Rows:
    """Stands for the training window where only its length is needed (the report, the metadata)."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n


def _dataset_chunks(client, data: Dataset, chunk_rows: int) -> _Chunks:
    parts = [Chunk(data.X[i:i + chunk_rows], data.y[i:i + chunk_rows],
                   None if data.weight is None else data.weight[i:i + chunk_rows])
             for i in range(0, len(data), chunk_rows)]
    return _Chunks(client, client.scatter(parts, hash=False), [len(p.y) for p in parts])


def _store_chunks(client, window: StoreWindow, chunk_rows: int) -> _Chunks:
    ranges = window.ranges(chunk_rows)
    futures = [client.submit(read_store_chunk, window, lo, hi, pure=False) for lo, hi in ranges]
    sizes = client.gather([client.submit(lambda c: len(c.y), f, pure=False) for f in futures])
    return _Chunks(client, futures, sizes)


def _read_source_chunk(spec) -> Chunk:
    from .window_chunks import read_chunk

    return Chunk(*read_chunk(spec))


def _source_chunks(client, source, chunk_rows: int) -> _Chunks:
    """Each worker reads and decodes its chunk of ``source`` (a WindowSource) from the store: no features pass
    through this process, only label ids and weights."""
    n = len(source)
    specs = [source.chunk(i, min(i + chunk_rows, n)) for i in range(0, n, chunk_rows)]
    futures = [client.submit(_read_source_chunk, spec, pure=False) for spec in specs]
    return _Chunks(client, futures, [len(spec.label_ids) for spec in specs])


def _window_stats(chunks: _Chunks) -> tuple:
    """(n, total weight, mean, inv_std, classes, d) of the whole window from per-chunk sums (two passes)."""
    stats = chunks.map(_chunk_stats)
    stats = [s for s in stats if s[0]]
    n = sum(s[0] for s in stats)
    if not 2 <= n <= MAX_ROWS:
        raise TrainingError(f"train: {n} rows; expected 2..{MAX_ROWS}")
    d = stats[0][4]
    if not 1 <= d <= MAX_FEATURES or any(s[4] != d for s in stats):
        raise TrainingError(f"X: chunks with {sorted({s[4] for s in stats})} features; expected one width in "
                            f"1..{MAX_FEATURES}")
    total_w = sum(s[1] for s in stats)
    if not total_w > 0:
        raise TrainingError("weight: all sample weights are 0; expected some positive weight")
    total = np.zeros(d)
    for s in stats:
        total += s[2]
    mean = total / n
    m2 = np.zeros(d)
    for part in chunks.map(_chunk_m2, mean):
        m2 += part
    std = np.sqrt(m2 / n)
    inv = np.where(std > 1e-12 * np.maximum(1.0, np.abs(mean)), 1.0 / np.where(std > 0, std, 1.0), 1.0)
    classes = np.unique(np.concatenate([s[3] for s in stats]))
    return n, total_w, mean.astype(np.float32), inv.astype(np.float32), classes, d


def _classes_with(classes: np.ndarray, warm) -> np.ndarray:
    if warm is not None:
        classes = np.union1d(classes, warm.classes)
    if len(classes) < 2 or len(classes) > MAX_CLASSES:
        raise TrainingError(f"train.y: {len(classes)} distinct classes {_cut(classes.tolist())}; expected 2.."
                            f"{MAX_CLASSES}")
    return classes.astype(np.int64)


@dataclass(frozen=True)
class DaskTrainer:
    """A built-in trainer (``LogisticRegressionTrainer`` or ``MLPTrainer``, with its settings) run data-parallel.

    ``fit`` takes in-memory Datasets (the CT loop's path: its window is validated on the coordinator
    first) and scatters them in chunks; ``fit_store`` has the workers read the window from the store.
    """

    backend: DaskBackend
    base: object = LogisticRegressionTrainer()
    chunk_rows: int = DEFAULT_CHUNK_ROWS

    @property
    def name(self) -> str:
        return self.base.name

    def _check_chunks(self, n_chunks: int) -> None:
        if isinstance(self.chunk_rows, bool) or not isinstance(self.chunk_rows, int) or \
                not 1 <= self.chunk_rows <= MAX_CHUNK_ROWS:
            raise TrainingError(f"chunk_rows: {_cut(self.chunk_rows)}; expected an int in 1..{MAX_CHUNK_ROWS}")
        if n_chunks > MAX_CHUNKS:
            raise TrainingError(f"chunk_rows: {self.chunk_rows} cuts the window into {n_chunks} chunks; expected "
                                f"at most {MAX_CHUNKS}")

    def fit(self, train: Dataset, validation: Dataset, warm_start: bytes | None = None, seed: int = 0) -> TrainResult:
        if not isinstance(train, Dataset) or not isinstance(validation, Dataset):
            raise TrainingError("train/validation: expected Dataset instances")
        self._check_chunks(math.ceil(len(train) / max(1, int(self.chunk_rows))))
        client = self.backend.client()
        chunks = _dataset_chunks(client, train, int(self.chunk_rows))
        try:
            return self._fit(chunks, validation, warm_start, seed)
        finally:
            chunks.release()

    def fit_store(self, window: StoreWindow, validation: Dataset, warm_start: bytes | None = None,
                  seed: int = 0) -> TrainResult:
        if not isinstance(window, StoreWindow) or not isinstance(validation, Dataset):
            raise TrainingError("window/validation: expected a StoreWindow and a Dataset")
        if isinstance(window.rows, bool) or not isinstance(window.rows, int) or not 2 <= window.rows <= MAX_ROWS:
            raise TrainingError(f"window.rows: {_cut(window.rows)}; expected an int in 2..{MAX_ROWS}")
        if not isinstance(window.n_features, int) or not 1 <= window.n_features <= MAX_FEATURES:
            raise TrainingError(f"window.n_features: {_cut(window.n_features)}; expected an int in 1..{MAX_FEATURES}")
        self._check_chunks(math.ceil(int(window.rows) / max(1, int(self.chunk_rows))))
        client = self.backend.client()
        chunks = _store_chunks(client, window, int(self.chunk_rows))
        try:
            return self._fit(chunks, validation, warm_start, seed)
        finally:
            chunks.release()

    def fit_source(self, source, validation: Dataset, warm_start: bytes | None = None,
                   seed: int = 0) -> TrainResult:
        """Train on a :class:`~edgeloop.ct.window_chunks.WindowSource` (the CT loop's window, by label ids):
        the workers read their chunks from the store; the rows keep the source's order and weights."""
        from .window_chunks import WindowSource

        if not isinstance(source, WindowSource) or not isinstance(validation, Dataset):
            raise TrainingError("source/validation: expected a WindowSource and a Dataset")
        self._check_chunks(math.ceil(len(source) / max(1, int(self.chunk_rows))))
        client = self.backend.client()
        chunks = _source_chunks(client, source, int(self.chunk_rows))
        log.info("dask: %d training rows of %s read by the workers from the store, in chunks of %d", len(source),
                 _cut(source.model, 80), int(self.chunk_rows))
        try:
            return self._fit(chunks, validation, warm_start, seed)
        finally:
            chunks.release()

    def _fit(self, chunks: _Chunks, validation: Dataset, warm_start, seed) -> TrainResult:
        if isinstance(self.base, LogisticRegressionTrainer):
            return _fit_logistic(self.base, chunks, validation, warm_start, seed)
        if isinstance(self.base, MLPTrainer):
            return _fit_mlp(self.base, chunks, validation, warm_start, seed)
        raise TrainingError(f"base: {type(self.base).__name__}; expected LogisticRegressionTrainer or MLPTrainer")


def _fit_logistic(cfg: LogisticRegressionTrainer, chunks: _Chunks, validation: Dataset, warm_start, seed):
    import scipy.optimize

    started = time.perf_counter()
    seed = _check_seed(seed)
    if not (cfg.l2 >= 0) or cfg.max_iter < 1:
        raise TrainingError(f"l2={cfg.l2!r}, max_iter={cfg.max_iter!r}; expected l2 >= 0 and max_iter >= 1")
    n, total_w, mean, inv_std, classes, d = _window_stats(chunks)
    if len(validation) and validation.n_features != d:
        raise TrainingError(f"validation.X: {validation.n_features} features; expected {d} as in train")
    warm, note = _warm_model(warm_start, "logistic", d, ())
    classes = _classes_with(classes, warm)
    c = len(classes)
    keep = [i for i, s in enumerate(chunks.sizes) if s]
    parts = [chunks.client.submit(_prepare_logistic, chunks.futures[i], mean, inv_std, classes, total_w, pure=False)
             for i in keep]
    if warm is not None:
        (w0, b0), = rebase(warm, mean, inv_std, classes)
        theta0 = np.concatenate([w0.ravel(), b0])
    else:
        theta0 = np.zeros(d * c + c)
    l2 = float(cfg.l2)
    history: list[float] = []

    def evaluate(theta, hessian=False):
        results = chunks.client.gather([chunks.client.submit(_logistic_eval, p, theta, hessian, pure=False)
                                        for p in parts])
        wm = theta[: d * c].reshape(d, c)
        flat = wm.ravel()
        loss = sum(r[0] for r in results) + 0.5 * l2 * float(flat @ flat)
        grad = np.zeros_like(theta)
        for r in results:
            grad += r[1]
        grad[: d * c] += l2 * flat
        hess = None
        if hessian:
            hess = np.zeros((len(theta), len(theta)))
            for r in results:
                hess += r[2]
        if len(history) < 10_000:
            history.append(loss)
        return loss, grad, hess

    try:
        if (d + 1) * c <= NEWTON_MAX_PARAMS:
            solver = "newton"
            ridge = np.zeros((d + 1, c))
            ridge[:d], ridge[d] = l2, 1e-10
            theta, nit, converged, final = _newton(evaluate, theta0, ridge.ravel(), float(cfg.tol), int(cfg.max_iter))
        else:
            solver = "lbfgs"
            result = scipy.optimize.minimize(
                lambda t: evaluate(t)[:2], theta0, jac=True, method="L-BFGS-B",
                options={"maxiter": int(cfg.max_iter), "gtol": float(cfg.tol), "ftol": 64 * np.finfo(float).eps})
            theta, nit, converged, final = result.x, result.nit, result.success, result.fun
    finally:
        for p in parts:
            p.release()
    layer = (theta[: d * c].reshape(d, c).astype(np.float32), theta[d * c:].astype(np.float32))
    model = DenseModel("logistic", mean, inv_std, (layer,), classes)
    params = {"l2": l2, "max_iter": int(cfg.max_iter), "tol": float(cfg.tol), "solver": solver}
    return _finish(cfg.name, params, seed, model, _Rows(n), validation, note, warm is not None, nit, converged,
                   history[0], final, history, started)


def _newton(evaluate, theta, ridge, tol, max_iter):
    """The in-process trainer's damped Newton (exact Hessian, Armijo backtracking) on summed chunk terms.

    (theta, iterations, converged, final loss).  Every evaluation brings its Hessian along: a step is
    nearly always accepted at t = 1, so the next iteration needs no extra round trip.
    """
    loss, grad, hess = evaluate(theta, True)
    dim = len(theta)
    for it in range(max_iter):
        if np.abs(grad).max() <= tol:
            return theta, it, True, loss
        hess[np.diag_indices(dim)] += ridge
        step = np.linalg.solve(hess, grad)
        slope = float(grad @ step)
        t = 1.0
        while True:
            new_loss, new_grad, new_hess = evaluate(theta - t * step, True)
            if new_loss <= loss - 1e-4 * t * slope or t < 1e-6:
                break
            t *= 0.5
        moved = loss - new_loss
        theta, loss, grad, hess = theta - t * step, new_loss, new_grad, new_hess
        if moved <= 64 * np.finfo(float).eps * max(1.0, abs(loss)):
            return theta, it + 1, np.abs(grad).max() <= tol or moved >= 0, loss
    return theta, max_iter, np.abs(grad).max() <= tol, loss


def _fit_mlp(cfg: MLPTrainer, chunks: _Chunks, validation: Dataset, warm_start, seed):
    """MLPTrainer.fit with each minibatch gradient summed over the chunks that hold its rows."""
    from edgeloop.ct.trainers import _sample_weights

    started = time.perf_counter()
    seed = _check_seed(seed)
    cfg._check()
    hidden = tuple(int(h) for h in cfg.hidden)
    n, total_w, mean, inv_std, classes, d = _window_stats(chunks)
    if len(validation) and validation.n_features != d:
        raise TrainingError(f"validation.X: {validation.n_features} features; expected {d} as in train")
    warm, note = _warm_model(warm_start, "mlp", d, hidden)
    classes = _classes_with(classes, warm)
    client = chunks.client
    parts = [client.submit(_prepare_mlp, f, mean, inv_std, classes, total_w / n, pure=False) for f in chunks.futures]
    rng = np.random.default_rng(seed)
    sizes = (d, *hidden, len(classes))
    params = initial_mlp_params(sizes, warm, mean, inv_std, classes, rng)
    if len(validation):
        val_z = standardise(validation.X, mean, inv_std)
        vy = class_labels(validation.y, "validation")
        val_known = np.isin(vy, classes)
        val_idx = np.searchsorted(classes, np.where(val_known, vy, classes[0]))
        val_w = _sample_weights(validation)
    else:
        val_z = None

    def train_loss():
        out = [client.submit(_mlp_loss, p, params, pure=False) for p in parts]
        sums = client.gather(out)
        return sum(s[0] for s in sums) / sum(s[1] for s in sums)

    def val_loss():
        if val_z is None:
            return train_loss()
        proba = softmax(_forward(params, val_z)[-1].astype(np.float64))
        p = np.where(val_known, proba[np.arange(len(val_idx)), val_idx], 0.0)
        return float(-(val_w * np.log(np.clip(p, 1e-15, 1.0))).sum() / val_w.sum())

    lr, b1, b2, eps = np.float32(cfg.learning_rate), 0.9, 0.999, 1e-8
    l2 = np.float32(cfg.l2)
    m = [np.zeros_like(p) for p in params]
    v = [np.zeros_like(p) for p in params]
    step = 0
    try:
        initial_loss = train_loss()
        best, best_params, best_epoch, history = val_loss(), [p.copy() for p in params], 0, []
        bs = int(cfg.batch_size)
        starts = chunks.starts
        epochs = 0
        for epoch in range(1, int(cfg.max_epochs) + 1):
            epochs = epoch
            order = rng.permutation(n)
            where = np.searchsorted(starts, order, side="right") - 1  # the chunk of each row
            for start in range(0, n, bs):
                rows, owner = order[start:start + bs], where[start:start + bs]
                futs = []
                for i in np.unique(owner):
                    local = (rows[owner == i] - starts[i]).astype(np.int32)  # < MAX_CHUNK_ROWS: half the bytes per task
                    futs.append(client.submit(_mlp_grad, parts[i], local, params, len(rows), pure=False))
                total = None
                for g in client.gather(futs):  # chunk order: np.unique sorts
                    total = g if total is None else [a + b for a, b in zip(total, g)]
                step += 1
                scale = lr * np.float32(math.sqrt(1 - b2 ** step) / (1 - b1 ** step))
                for k in range(len(params)):
                    g = total[k].astype(np.float32)
                    if k % 2 == 0:
                        g = g + l2 * params[k]
                    m[k] *= b1
                    m[k] += (1 - b1) * g
                    v[k] *= b2
                    v[k] += (1 - b2) * g * g
                    params[k] -= scale * m[k] / (np.sqrt(v[k]) + eps)
            loss = val_loss()
            history.append(loss)
            if loss < best - float(cfg.tol):
                best, best_params, best_epoch = loss, [p.copy() for p in params], epoch
            elif epoch - best_epoch >= int(cfg.patience):
                break
        params[:] = best_params
        final_loss = train_loss()
    finally:
        for p in parts:
            p.release()
    layers = tuple((params[i], params[i + 1]) for i in range(0, len(params), 2))
    model = DenseModel("mlp", mean, inv_std, layers, classes)
    settings = {"hidden": list(hidden), "learning_rate": float(cfg.learning_rate), "batch_size": bs,
                "max_epochs": int(cfg.max_epochs), "patience": int(cfg.patience), "l2": float(cfg.l2),
                "tol": float(cfg.tol)}
    return _finish(cfg.name, settings, seed, model, _Rows(n), validation, note, warm is not None, epochs,
                   epochs < int(cfg.max_epochs), initial_loss, final_loss, history, started)


@dataclass(frozen=True)
class DaskSklearnTrainer:
    """``SklearnTrainer`` with joblib's ``dask`` backend: an estimator's joblib-parallel work (``n_jobs``) runs
    on the cluster.  The arrays stay in memory (scikit-learn estimators fit on in-memory arrays)."""

    backend: DaskBackend
    base: object = None  # an edgeloop.ct.trainer_sklearn.SklearnTrainer

    @property
    def name(self) -> str:
        return self.base.name

    def fit(self, train: Dataset, validation: Dataset, warm_start: bytes | None = None, seed: int = 0) -> TrainResult:
        import joblib

        self.backend.client()  # joblib's dask backend uses the current default client
        with joblib.parallel_backend("dask"):
            return self.base.fit(train, validation, warm_start, seed)


def trainer_for(config, backend: DaskBackend | None):
    """The CT loop's trainer for a ``[training]`` config: built-in in process, or on ``backend``."""
    base = LogisticRegressionTrainer() if config.trainer == "logistic" else MLPTrainer()
    if getattr(config, "backend", "inprocess") != "dask":
        return base
    if backend is None:
        raise TrainingError("backend: 'dask' needs a DaskBackend")
    return DaskTrainer(backend, base, int(getattr(config, "chunk_rows", DEFAULT_CHUNK_ROWS)))


def backend_for(config) -> DaskBackend | None:
    """A (not yet started) DaskBackend when ``[training] backend = "dask"``, else None."""
    if getattr(config, "backend", "inprocess") != "dask":
        return None
    return DaskBackend(config.scheduler, config.n_workers)


__all__ = ["Chunk", "DEFAULT_CHUNK_ROWS", "DaskBackend", "DaskSklearnTrainer", "DaskTrainer", "StoreWindow",
           "available", "backend_for", "read_store_chunk", "trainer_for"]
