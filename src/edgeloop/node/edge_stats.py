"""Streaming statistics of what each served model sees and answers, for status reports and PSI gauges.

Per (model, version, tensor): a histogram per feature (the compiled ``HistogramAccumulator``) and
running moments (``RunningMoments``).  The bin edges are the reference edges of the model's
manifest when it carries them (``reference_stats``, below), else fixed edges learned once from the
first ``learn_rows`` rows (quantiles), so every report of one edge uses the same bins.  Rows are
buffered and folded in blocks, so the per-request cost is one append on the outbox writer thread.

A manifest may carry, per tensor name, reference bin edges and counts from the training data::

    "reference_stats": {"INPUT0": {"bin_edges": [[e0, ..., eB], ...], "counts": [[c1, ..., cB], ...]}}

With a reference, each feature's PSI against it is exported as ``edgeloop_feature_psi``.
Reports carry the period's deltas (histogram counts and moments since the last accepted report).
"""
from __future__ import annotations

import json
import logging
import math
import threading

import numpy as np
from prometheus_client.metrics_core import GaugeMetricFamily
from prometheus_client.registry import Collector

from edgeloop.kernels.stats import HistogramAccumulator, RunningMoments, psi
from edgeloop.protocol import mesh_pb2
from edgeloop.protocol.codec import decode_input, decode_output

log = logging.getLogger("edgeloop.node.stats")

LEARN_ROWS = 512
N_BINS = 10
MAX_FEATURES = 256  # columns tracked per tensor (the rest are ignored)
FLUSH_ROWS = 256
MAX_MANIFEST_BYTES = 16 << 20
_SKIPPED_DATATYPES = ("BYTES",)


class _Column:
    """The statistics of one tensor of one model version."""

    def __init__(self, n_features: int, reference: dict | None) -> None:
        self.n_features = n_features
        self.ref_counts = None
        self.hist: HistogramAccumulator | None = None
        if reference is not None:
            self.hist = HistogramAccumulator(reference["edges"])
            self.ref_counts = reference["counts"]
        self.moments = RunningMoments(n_features)
        self.reported_counts: np.ndarray | None = None
        self.reported_nan: np.ndarray | None = None
        self.buffer: list[np.ndarray] = []
        self.buffered = 0
        self.learning: list[np.ndarray] = []  # rows kept until the edges are learned

    def add(self, rows: np.ndarray) -> None:
        self.buffer.append(rows)
        self.buffered += rows.shape[0]
        if self.buffered >= FLUSH_ROWS:
            self.flush()

    def flush(self) -> None:
        if not self.buffer:
            return
        block = np.concatenate(self.buffer) if len(self.buffer) > 1 else self.buffer[0]
        self.buffer, self.buffered = [], 0
        self.moments.update(block)
        if self.hist is None:
            self.learning.append(block)
            if sum(b.shape[0] for b in self.learning) < LEARN_ROWS:
                return
            block = np.concatenate(self.learning)
            self.learning = []
            self.hist = HistogramAccumulator(learn_edges(block))
        self.hist.update(block)

    def psi(self) -> np.ndarray | None:
        if self.ref_counts is None or self.hist is None:
            return None
        return psi(self.ref_counts, self.hist.counts)


def learn_edges(rows: np.ndarray, n_bins: int = N_BINS) -> np.ndarray:
    """(F, n_bins + 1) quantile edges of ``rows`` per feature (non-decreasing, finite)."""
    qs = np.linspace(0.0, 1.0, n_bins + 1)
    edges = np.empty((rows.shape[1], n_bins + 1))
    for j in range(rows.shape[1]):
        col = rows[:, j]
        col = col[np.isfinite(col)]
        row = np.quantile(col, qs) if col.size else np.linspace(0.0, 1.0, n_bins + 1)
        edges[j] = row if np.all(np.diff(row) > 0) else _even_edges(row[0], row[-1], n_bins)
    return edges


def _even_edges(lo: float, hi: float, n_bins: int) -> np.ndarray:
    """Evenly spaced, strictly increasing edges over [lo, hi] (widened when the values are all equal)."""
    if not hi > lo:
        lo, hi = lo - 0.5, lo + 0.5
    return np.linspace(lo, hi, n_bins + 1)


def parse_reference(manifest: dict | None, tensor: str, n_features: int) -> dict | None:
    """The reference edges and counts of ``tensor`` in a manifest (None when absent or unusable)."""
    if not isinstance(manifest, dict):
        return None
    entry = (manifest.get("reference_stats") or {}).get(tensor) if isinstance(manifest.get("reference_stats"),
                                                                              dict) else None
    if not isinstance(entry, dict):
        return None
    try:
        edges = np.asarray(entry["bin_edges"], dtype=np.float64)
        counts = np.asarray(entry["counts"], dtype=np.float64)
        if edges.ndim != 2 or edges.shape[0] != n_features or counts.shape != (n_features, edges.shape[1] - 1):
            raise ValueError(f"bin_edges shape {edges.shape} / counts shape {counts.shape}; expected "
                             f"({n_features}, B+1) / ({n_features}, B)")
        HistogramAccumulator(edges)  # checks finite, non-decreasing
        if np.any(np.diff(edges, axis=1) <= 0):
            raise ValueError("bin_edges must be strictly increasing per feature")
        if not np.all(np.isfinite(counts)) or np.any(counts < 0):
            raise ValueError("counts must be finite and >= 0")
    except (KeyError, TypeError, ValueError) as exc:
        log.warning("reference_stats of tensor %r ignored: %s", tensor[:200], str(exc)[:200])
        return None
    return {"edges": edges, "counts": counts}


def as_rows(array: np.ndarray) -> np.ndarray | None:
    """A tensor as (rows, features) floats: the first dimension is the batch; None for non-numbers."""
    if array.dtype.kind not in "biuf":
        return None
    if array.ndim == 0:
        array = array.reshape(1, 1)
    elif array.ndim == 1:
        array = array.reshape(-1, 1)
    else:
        array = array.reshape(array.shape[0], -1)
    if array.shape[1] > MAX_FEATURES:
        array = array[:, :MAX_FEATURES]
    if array.shape[1] == 0 or array.shape[0] == 0:
        return None
    return np.asarray(array, dtype=np.float64)


class EdgeStats:
    """All tensors' statistics of one node.  ``manifest_of(model, version)`` gives a manifest dict or None."""

    def __init__(self, manifest_of=None) -> None:
        self._manifest_of = manifest_of or (lambda model, version: None)
        self._lock = threading.Lock()
        self._columns: dict[tuple[str, int, str, bool], _Column] = {}

    def observe(self, request, response, model: str, version: int) -> None:
        """Fold one answered request in (called on the outbox writer thread)."""
        raw_in, raw_out = request.raw_input_contents, response.raw_output_contents
        for i, tensor in enumerate(request.inputs):
            if tensor.datatype not in _SKIPPED_DATATYPES:
                self._add(model, version, tensor.name, False,
                          decode_input(tensor, raw_in[i] if i < len(raw_in) else None))
        for i, tensor in enumerate(response.outputs):
            if tensor.datatype not in _SKIPPED_DATATYPES:
                self._add(model, version, tensor.name, True,
                          decode_output(tensor, raw_out[i] if i < len(raw_out) else None))

    def observe_array(self, model: str, version: int, tensor: str, is_output: bool, array) -> None:
        self._add(model, version, tensor, is_output, np.asarray(array))

    def _add(self, model, version, tensor, is_output, array) -> None:
        rows = as_rows(array)
        if rows is None:
            return
        key = (model, version, tensor, is_output)
        with self._lock:
            column = self._columns.get(key)
            if column is None or column.n_features != rows.shape[1]:
                manifest = None if is_output else self._manifest_of(model, version)
                column = self._columns[key] = _Column(rows.shape[1],
                                                      parse_reference(manifest, tensor, rows.shape[1]))
            column.add(rows)

    def forget(self, model: str, keep_versions=()) -> None:
        """Drop the statistics of ``model``'s versions not in ``keep_versions`` (after an unload)."""
        with self._lock:
            for key in [k for k in self._columns if k[0] == model and k[1] not in keep_versions]:
                del self._columns[key]

    def report(self) -> tuple[list[mesh_pb2.FeatureStats], callable]:
        """The period's FeatureStats and a ``commit()`` to call once the coordinator accepted them."""
        out, marks = [], []
        with self._lock:
            for (model, version, tensor, is_output), column in sorted(self._columns.items()):
                column.flush()
                hist = column.hist
                counts = hist.counts.copy() if hist is not None else None
                nan = hist.nan_counts.copy() if hist is not None else None
                delta = counts - column.reported_counts if counts is not None and column.reported_counts is not None \
                    else counts
                nan_delta = nan - column.reported_nan if nan is not None and column.reported_nan is not None else nan
                values = column.psi()
                moments = column.moments
                for j in range(column.n_features):
                    out.append(mesh_pb2.FeatureStats(
                        model=model, model_version=version, tensor=tensor, is_output=is_output, feature=j,
                        bin_edges=hist.edges[j].tolist() if hist is not None else [],
                        counts=delta[j].tolist() if delta is not None else [],
                        n=int(moments.count[j]), mean=float(moments.mean[j]), m2=float(moments.m2[j]),
                        nan_count=int(nan_delta[j]) if nan_delta is not None else 0,
                        psi=float(values[j]) if values is not None else math.nan))
                marks.append((column, counts, nan, moments))

        def commit() -> None:
            with self._lock:
                for column, counts, nan, moments in marks:
                    if counts is not None:
                        column.reported_counts, column.reported_nan = counts, nan
                    if column.moments is moments:
                        column.moments = RunningMoments(column.n_features)
        return out, commit

    def psi_values(self) -> list[tuple[str, int, str, int, float]]:
        """(model, version, tensor, feature, psi) for every input feature with a reference."""
        out = []
        with self._lock:
            for (model, version, tensor, is_output), column in sorted(self._columns.items()):
                column.flush()
                values = column.psi()
                if values is not None:
                    out.extend((model, version, tensor, j, float(v)) for j, v in enumerate(values))
        return out


class PsiCollector(Collector):
    """``edgeloop_feature_psi{model,version,tensor,feature}`` at scrape time."""

    def __init__(self, stats: EdgeStats) -> None:
        self._stats = stats

    def describe(self):
        return []

    def collect(self):
        family = GaugeMetricFamily("edgeloop_feature_psi", "Population stability index of a served input feature "
                                   "against the model's reference statistics",
                                   labels=("model", "version", "tensor", "feature"))
        for model, version, tensor, feature, value in self._stats.psi_values():
            family.add_metric([model, str(version), tensor, str(feature)], value)
        yield family


def read_manifest(repository, model: str, version: int) -> dict | None:
    """The manifest.json beside a model file in ``repository`` (bounded read; None when absent or bad)."""
    try:
        path = repository.model_path(model, version).with_name("manifest.json")
        with open(path, "rb") as fh:
            data = fh.read(MAX_MANIFEST_BYTES + 1)
        if len(data) > MAX_MANIFEST_BYTES:
            return None
        manifest = json.loads(data)
    except (OSError, ValueError, RecursionError):
        return None
    return manifest if isinstance(manifest, dict) else None


__all__ = ["EdgeStats", "PsiCollector", "learn_edges", "parse_reference", "read_manifest"]
