"""Feature drift monitors against a reference profile, with thresholds calibrated on the reference.

A :class:`ReferenceProfile` is built once from the champion's training data and travels as JSON in
the model's manifest (no pickle).  It holds per-feature histogram edges and counts, moments, a
bounded seeded sample for the raw-window tests, an optional PCA basis, and the thresholds (about
20 KB of JSON per feature with the default 1,000-row sample).

Thresholds are calibrated, not guessed: ``n_draws`` contiguous blocks of ``window`` rows are taken
from the reference at seeded offsets, and each statistic is computed between a block and the rest of
the reference.  Each statistic's threshold is a high quantile of its values over the blocks, chosen
family-wise: its tail is extrapolated from a log-normal fitted to the draws, at the Bonferroni level
(1 - quantile) / (statistics x features), and never below its empirical ``quantile``.  So on a
stream like the reference few windows raise *any* alarm (measured: 6 of 300 stationary windows of
8 correlated features at the default 0.99, PSI, JS, KS, Wasserstein and PCA together).  Contiguous blocks keep the reference's own slow variation (a daily cycle, say) inside the
null, so it does not alarm.  For windows of another size the threshold is rescaled by the
statistic's sampling rate under no change (PSI and chi-square/n like 1/n, distances like
1/sqrt(n)).  ``fixed`` thresholds are the usual defaults (PSI 0.25, JS 0.1, normed Wasserstein 0.1,
KS and chi-square at p = 0.05).

Monitors take a ``slice_key`` (an edge id, or ``"fleet"``) and :class:`SliceHistograms` merges
edges' streaming histograms, so the same calls serve per-edge and fleet-wide monitoring.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field
from functools import cached_property

import numpy as np
import scipy.stats

from edgeloop.kernels import HistogramAccumulator, js_distance, psi, randomized_svd, reconstruction_error

__all__ = [
    "FeatureProfile", "PcaProfile", "ReferenceProfile", "MonitorResult", "SliceHistograms",
    "build_reference", "histogram_drift", "window_drift", "pca_drift", "prediction_reference",
    "FIXED_THRESHOLDS", "FLEET",
]

FLEET = "fleet"
FIXED = "fixed"
PSI_WARN = 0.1  # fixed mode: PSI in [0.1, 0.25) is reported as a moderate shift, not an alarm
PROFILE_FORMAT = 1
FIXED_THRESHOLDS = {"psi": 0.25, "js": 0.1, "wasserstein": 0.1}
FIXED_ALPHA = 0.05  # KS and chi-square in fixed mode: the test's critical value at this p
HIST_STATS = ("psi", "js")
# How each statistic's spread under "no change" shrinks with the window size n: rate(n)**power.
RATE_POWER = {"psi": 1.0, "js": 0.5, "ks": 0.5, "wasserstein": 0.5, "chi2": 1.0, "pca": 0.5}
MAX_FEATURES = 4096
MAX_BINS = 256
MAX_CATEGORIES = 64
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.:/\- ()]{0,127}$")
_SLICE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.:\-]{0,127}$")
STAT_LABEL = {"psi": "PSI", "js": "JS distance", "ks": "KS statistic", "wasserstein": "Wasserstein/sd",
              "chi2": "chi-square/n", "pca": "PCA reconstruction error"}


def _cut(value, limit: int = 200) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_name(what: str, name, label: str | None = None) -> str:
    """A feature or slice name (``what``: "feature name" or "slice_key"): bounded, printable, no
    path or control characters.  ``label`` names the field in the error (default: ``what``)."""
    pattern = _SLICE if what == "slice_key" else _NAME
    if not isinstance(name, str) or not pattern.match(name):
        raise ValueError(f"{label or what} must be 1..128 characters of letters, digits and _.:-"
                         f"{'' if what == 'slice_key' else '/ ()'} (not starting with punctuation), got {_cut(name)}")
    return name


@dataclass(frozen=True)
class FeatureProfile:
    """One input's reference: histogram over ``edges`` (numeric) or ``categories``, and moments."""

    name: str
    kind: str  # "numeric" | "categorical"
    edges: tuple[float, ...]  # B+1 histogram edges (padded by repeating the last edge)
    counts: tuple[int, ...]  # reference counts per bin
    categories: tuple[float, ...]  # categorical: the values seen (bin b holds categories[b])
    count: int  # finite values
    mean: float
    std: float
    minimum: float
    maximum: float
    longest_run: int  # longest run of one repeated value, in rows (validation's "sudden constant")
    sample: tuple[float, ...]  # seeded subsample for KS / Wasserstein on raw windows


@dataclass(frozen=True)
class PcaProfile:
    """NannyML-style multivariate drift: mean reconstruction error of a PCA fitted on the reference."""

    mean: tuple[float, ...]
    scale: tuple[float, ...]
    components: tuple[tuple[float, ...], ...]  # (k, F), orthonormal rows
    error_mean: float  # mean over reference blocks of the block's mean error
    error_std: float  # std of that over the blocks
    sigmas: float  # alarm band: error_mean +- sigmas * error_std (at the calibration window)


@dataclass(frozen=True)
class ReferenceProfile:
    """What the champion was trained on, in a form that travels as JSON in its manifest."""

    features: tuple[FeatureProfile, ...]
    n_rows: int
    window: int  # the window size the thresholds were calibrated for
    thresholds: dict[str, tuple[float, ...]]  # statistic -> per-feature threshold
    threshold_source: str  # "calibrated p99 of reference chunks" or "fixed"
    quantile: float
    n_draws: int
    seed: int
    pca: PcaProfile | None = None
    format: int = PROFILE_FORMAT

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.features)

    @cached_property
    def _arrays(self) -> dict[str, np.ndarray]:
        """The tuples as read-only arrays, built once per profile (monitors run every window)."""
        arrays = {
            "edges": np.array([f.edges for f in self.features], dtype=np.float64),
            "counts": np.array([f.counts for f in self.features], dtype=np.int64),
            "sorted_sample": np.sort(np.array([f.sample for f in self.features], dtype=np.float64), axis=1),
        }
        if self.pca is not None:
            arrays["pca_mean"] = np.array(self.pca.mean)
            arrays["pca_scale"] = np.array(self.pca.scale)
            arrays["pca_components"] = np.array(self.pca.components)
        for a in arrays.values():
            a.flags.writeable = False
        return arrays

    def edges_matrix(self) -> np.ndarray:
        return self._arrays["edges"]

    def counts_matrix(self) -> np.ndarray:
        return self._arrays["counts"]

    def accumulator(self) -> HistogramAccumulator:
        """An empty streaming histogram with this profile's edges (what an edge keeps per model)."""
        return HistogramAccumulator(self.edges_matrix())

    def threshold(self, stat: str, feature: int, n: int) -> float:
        """The threshold of ``stat`` for feature ``feature`` on a window of ``n`` rows."""
        base = self.thresholds[stat][feature]
        if self.threshold_source == FIXED or n >= self.window or n < 1:
            # Larger windows keep the calibrated value: real data varies slowly (days, seasons), and
            # that variation does not shrink like 1/n the way sampling noise does.
            return base
        ref = max(self.n_rows - self.window, 1)
        rate = (1.0 / n + 1.0 / ref) / (1.0 / self.window + 1.0 / ref)
        return base * rate ** RATE_POWER[stat]

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"), allow_nan=False)

    @classmethod
    def from_json(cls, text: str | bytes, max_bytes: int = 16 << 20) -> "ReferenceProfile":
        """Parse and check a profile (it comes from a manifest: untrusted, bounded)."""
        if len(text) > max_bytes:
            raise ValueError(f"profile JSON must be at most {max_bytes} bytes, got {len(text)}")
        try:
            doc = json.loads(text)
        except ValueError as exc:
            raise ValueError(f"profile must be JSON, got a parse error: {exc}") from None
        return _profile_from_doc(doc)


def _req(doc, key, kinds, where):
    if not isinstance(doc, dict) or key not in doc:
        raise ValueError(f"profile field {where}{key} is missing")
    value = doc[key]
    if isinstance(value, bool) and bool not in kinds or not isinstance(value, kinds):
        raise ValueError(f"profile field {where}{key} must be {'/'.join(k.__name__ for k in kinds)}, got {_cut(value)}")
    return value


def _floats(value, where, length=None) -> tuple[float, ...]:
    if not isinstance(value, list) or (length is not None and len(value) != length):
        raise ValueError(f"profile field {where} must be a list of {length if length is not None else 'some'} numbers, "
                         f"got {_cut(value)}")
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value):
        raise ValueError(f"profile field {where} must hold finite numbers, got {_cut(value)}")
    return tuple(float(v) for v in value)


def _profile_from_doc(doc) -> ReferenceProfile:
    if _req(doc, "format", (int,), "") != PROFILE_FORMAT:
        raise ValueError(f"profile field format must be {PROFILE_FORMAT}, got {_cut(doc['format'])}")
    feats_doc = _req(doc, "features", (list,), "")
    if not 1 <= len(feats_doc) <= MAX_FEATURES:
        raise ValueError(f"profile field features must list 1..{MAX_FEATURES} features, got {len(feats_doc)}")
    features = []
    width = None
    for i, fd in enumerate(feats_doc):
        w = f"features[{i}]."
        name = check_name("feature name", _req(fd, "name", (str,), w))
        kind = _req(fd, "kind", (str,), w)
        if kind not in ("numeric", "categorical"):
            raise ValueError(f"profile field {w}kind must be 'numeric' or 'categorical', got {_cut(kind)}")
        edges = _floats(_req(fd, "edges", (list,), w), w + "edges")
        width = len(edges) if width is None else width
        if not 2 <= len(edges) <= MAX_BINS + 1 or len(edges) != width or any(np.diff(edges) < 0):
            raise ValueError(f"profile field {w}edges must be {width} non-decreasing numbers (2..{MAX_BINS + 1}), "
                             f"got {_cut(list(edges))}")
        counts = _req(fd, "counts", (list,), w)
        if len(counts) != len(edges) - 1 or not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0
                                                    for c in counts):
            raise ValueError(f"profile field {w}counts must be {len(edges) - 1} integers >= 0, got {_cut(counts)}")
        cats = _floats(_req(fd, "categories", (list,), w), w + "categories")
        if len(cats) > MAX_CATEGORIES:
            raise ValueError(f"profile field {w}categories must list at most {MAX_CATEGORIES}, got {len(cats)}")
        nums = {k: float(_req(fd, k, (int, float), w)) for k in ("mean", "std", "minimum", "maximum")}
        if not all(math.isfinite(v) for v in nums.values()) or nums["std"] < 0:
            raise ValueError(f"profile field {w}mean/std/minimum/maximum must be finite (std >= 0), got {_cut(nums)}")
        ints = {k: _req(fd, k, (int,), w) for k in ("count", "longest_run")}
        if any(v < 0 for v in ints.values()):
            raise ValueError(f"profile field {w}count/longest_run must be >= 0, got {_cut(ints)}")
        sample = _floats(_req(fd, "sample", (list,), w), w + "sample")
        features.append(FeatureProfile(name, kind, edges, tuple(int(c) for c in counts), cats, ints["count"],
                                       nums["mean"], nums["std"], nums["minimum"], nums["maximum"],
                                       ints["longest_run"], sample))
    if len({len(f.sample) for f in features}) != 1 or not features[0].sample:
        raise ValueError("profile field features[*].sample must be non-empty and of one length for all features")
    if len({f.name for f in features}) != len(features):
        raise ValueError("profile field features must have distinct names")
    F = len(features)
    th_doc = _req(doc, "thresholds", (dict,), "")
    thresholds = {}
    for stat, values in th_doc.items():
        if stat not in RATE_POWER:
            raise ValueError(f"profile field thresholds has unknown statistic {_cut(stat)}; "
                             f"expected one of {sorted(RATE_POWER)}")
        thresholds[stat] = _floats(values, f"thresholds.{stat}", F)
    pca = None
    if doc.get("pca") is not None:
        pd = doc["pca"]
        mean = _floats(_req(pd, "mean", (list,), "pca."), "pca.mean", F)
        scale = _floats(_req(pd, "scale", (list,), "pca."), "pca.scale", F)
        if any(s == 0 for s in scale):
            raise ValueError("profile field pca.scale must be non-zero")
        comps = _req(pd, "components", (list,), "pca.")
        if not 1 <= len(comps) <= F:
            raise ValueError(f"profile field pca.components must have 1..{F} rows, got {len(comps)}")
        components = tuple(_floats(r, f"pca.components[{i}]", F) for i, r in enumerate(comps))
        em, es, sg = (float(_req(pd, k, (int, float), "pca.")) for k in ("error_mean", "error_std", "sigmas"))
        pca = PcaProfile(mean, scale, components, em, es, sg)
    n_rows = _req(doc, "n_rows", (int,), "")
    window = _req(doc, "window", (int,), "")
    n_draws = _req(doc, "n_draws", (int,), "")
    seed = _req(doc, "seed", (int,), "")
    quantile = float(_req(doc, "quantile", (int, float), ""))
    if n_rows < 1 or window < 1 or n_draws < 0 or seed < 0 or not 0 < quantile < 1:
        raise ValueError(f"profile fields n_rows, window >= 1, n_draws, seed >= 0, 0 < quantile < 1 expected, got "
                         f"{_cut((n_rows, window, n_draws, seed, quantile))}")
    source = _req(doc, "threshold_source", (str,), "")[:200]
    return ReferenceProfile(tuple(features), n_rows, window, thresholds, source, quantile, n_draws, seed, pca)


@dataclass(frozen=True)
class MonitorResult:
    """One monitor's verdict on one window: value vs threshold, with the evidence in words."""

    monitor: str  # "psi", "js", "ks", "wasserstein", "chi2", "pca", or a performance metric
    subject: str  # the feature, "prediction", or "all features"
    slice_key: str  # an edge id or "fleet"
    value: float
    threshold: float
    threshold_source: str
    alarm: bool
    window: int  # rows behind the value
    evidence: str
    details: dict = field(default_factory=dict, compare=False)


# ------------------------------------------------------------------------------------ building


def _feature_edges(col: np.ndarray, kind: str, bins: int) -> tuple[list[float], list[float]]:
    """Histogram edges (unpadded) and, for categorical features, the categories."""
    if kind == "categorical":
        cats = np.unique(col)
        if cats.size > MAX_CATEGORIES:
            raise ValueError(f"a categorical feature may have at most {MAX_CATEGORIES} values, got {cats.size}")
        if cats.size == 1:
            return _constant_edges(float(cats[0])), [float(cats[0])]
        mids = (cats[:-1] + cats[1:]) / 2.0
        # the last edge just above the last category, so padding bins hold only unseen values above it
        return [float(cats[0]), *mids.tolist(), float(np.nextafter(cats[-1], np.inf))], cats.tolist()
    q = np.unique(np.quantile(col, np.linspace(0.0, 1.0, bins + 1)))
    if q.size < 2:
        return _constant_edges(float(q[0])), []
    return q.tolist(), []


def _constant_edges(c: float) -> list[float]:
    """Bins for a constant reference: below c, exactly c, above c (so any change shows)."""
    return [float(np.nextafter(c, -np.inf)), c, float(np.nextafter(c, np.inf))]


def _longest_run(col: np.ndarray) -> int:
    if col.size == 0:
        return 0
    change = np.nonzero(col[1:] != col[:-1])[0]
    bounds = np.concatenate(([-1], change, [col.size - 1]))
    return int(np.diff(bounds).max())


def _block_starts(n_rows: int, window: int, n_draws: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.sort(rng.integers(0, n_rows - window + 1, size=n_draws))


def _familywise_thresholds(draws: np.ndarray, quantile: float) -> np.ndarray:
    """Per-column thresholds from draws (D, K) so that P(any column above its own) <= 1 - quantile.

    A few hundred draws cannot resolve the (1 - quantile) / K tail that a family of K statistics
    needs (Bonferroni), so each column's tail is extrapolated from a log-normal fitted to its draws
    (the statistics are positive and right-skewed); the threshold is never below the column's own
    empirical ``quantile``.
    """
    D, K = draws.shape
    z = float(scipy.stats.norm.isf((1.0 - quantile) / K))
    empirical = np.quantile(draws, quantile, axis=0, method="higher")
    out = empirical.copy()
    for k in range(K):
        pos = draws[:, k][draws[:, k] > 0]
        if pos.size >= max(10, D // 2):  # exact zeros (identical histograms) say nothing about the tail
            logs = np.log(pos)
            out[k] = max(out[k], float(np.exp(logs.mean() + z * logs.std(ddof=1))))
    return out


def build_reference(x, names, kinds=None, *, bins: int = 10, window: int = 500, n_draws: int = 200,
                    quantile: float = 0.99, thresholds: str = "calibrated", seed: int = 0,
                    sample_size: int = 1000, pca_components: int | None = None,
                    pca_sigmas: float = 3.0) -> ReferenceProfile:
    """Profile reference rows ``x`` (n, F), time-ordered, and calibrate thresholds for windows of ``window``.

    ``kinds``: per feature "numeric" (default) or "categorical" (at most 64 values).
    ``thresholds``: "calibrated" (default) or "fixed".  ``pca_components``: None picks
    ceil(F/2) when F >= 3 (no PCA monitor for fewer features), 0 disables.
    """
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] < 1 or arr.shape[1] > MAX_FEATURES:
        raise ValueError(f"x must be 2-D (rows, 1..{MAX_FEATURES} features), got shape {arr.shape}")
    n, F = arr.shape
    names = tuple(check_name("feature name", nm) for nm in names)
    if len(names) != F or len(set(names)) != F:
        raise ValueError(f"names must be {F} distinct feature names, got {_cut(names)}")
    kinds = tuple(kinds) if kinds is not None else ("numeric",) * F
    if len(kinds) != F or any(k not in ("numeric", "categorical") for k in kinds):
        raise ValueError(f"kinds must be {F} of 'numeric'/'categorical', got {_cut(kinds)}")
    if not np.all(np.isfinite(arr)):
        raise ValueError("x must be finite (validate and clean the reference before profiling)")
    if isinstance(bins, bool) or not isinstance(bins, int) or not 2 <= bins <= MAX_BINS:
        raise ValueError(f"bins must be an int in 2..{MAX_BINS}, got {bins!r}")
    if thresholds not in ("calibrated", "fixed"):
        raise ValueError(f"thresholds must be 'calibrated' or 'fixed', got {thresholds!r}")
    if not 0.5 < quantile < 1:
        raise ValueError(f"quantile must be in (0.5, 1), got {quantile!r}")
    if thresholds == "calibrated" and (window < 10 or n < 2 * window):
        raise ValueError(f"window must be >= 10 and the reference at least 2 windows long, "
                         f"got window {window} and {n} rows")
    if thresholds == "calibrated" and n_draws < 20:
        raise ValueError(f"n_draws must be >= 20 for a calibrated quantile, got {n_draws}")

    edge_lists, cat_lists = zip(*(_feature_edges(arr[:, f], kinds[f], bins) for f in range(F)))
    width = max(len(e) for e in edge_lists)
    edges = np.array([e + [e[-1]] * (width - len(e)) for e in edge_lists], dtype=np.float64)
    acc = HistogramAccumulator(edges).update(arr)
    rng = np.random.default_rng(seed)
    take = np.sort(rng.choice(n, size=min(sample_size, n), replace=False))
    sample = arr[take]

    pca_k = (math.ceil(F / 2) if F >= 3 else 0) if pca_components is None else int(pca_components)
    if not 0 <= pca_k <= F:
        raise ValueError(f"pca_components must be in 0..{F}, got {pca_components!r}")

    th: dict[str, np.ndarray] = {}
    source = FIXED
    pca = None
    if pca_k:
        pca = _fit_pca(arr, pca_k, window, n_draws, seed, pca_sigmas)
    if thresholds == "fixed":
        for stat, value in FIXED_THRESHOLDS.items():
            th[stat] = np.full(F, value)
    else:
        source = f"calibrated p{quantile * 100:g} of reference chunks, family-wise"
        starts = _block_starts(n, window, n_draws, seed)
        draws = _calibration_draws(arr, acc, take, kinds, starts, window)
        stats = list(draws)
        joint = np.hstack([draws[k] for k in stats])  # (draws, stats x features), nan: not computed
        usable = ~np.isnan(joint).all(axis=0)
        t = np.full(joint.shape[1], np.inf)
        if usable.any():
            t[usable] = _familywise_thresholds(np.nan_to_num(joint[:, usable], nan=0.0), quantile)
        for i, stat in enumerate(stats):
            th[stat] = t[i * F: (i + 1) * F]
    th = {k: tuple(float(v) if math.isfinite(v) else 1e300 for v in t) for k, t in th.items()}
    feats = []
    for f in range(F):
        col = arr[:, f]
        feats.append(FeatureProfile(
            names[f], kinds[f], tuple(edges[f].tolist()), tuple(int(c) for c in acc.counts[f]),
            tuple(float(c) for c in cat_lists[f]), n, float(col.mean()), float(col.std()),
            float(col.min()), float(col.max()), _longest_run(col), tuple(sample[:, f].tolist())))
    return ReferenceProfile(tuple(feats), n, int(window), th, source, float(quantile), int(n_draws), int(seed), pca)


def _calibration_draws(arr, acc, take, kinds, starts, window) -> dict[str, np.ndarray]:
    """Each statistic between a reference block and the rest of the reference: (draws, features)."""
    F = arr.shape[1]
    D = starts.size
    out = {s: np.full((D, F), np.nan) for s in ("psi", "js", "ks", "wasserstein", "chi2")}
    block_acc = HistogramAccumulator(acc.edges)
    numeric = [f for f in range(F) if kinds[f] == "numeric"]
    for d, s in enumerate(starts):
        block = arr[s: s + window]
        block_acc.reset().update(block)
        rest = acc.counts - block_acc.counts
        out["psi"][d] = psi(rest, block_acc.counts)
        out["js"][d] = js_distance(rest, block_acc.counts)
        keep = (take < s) | (take >= s + window)  # the sample's rows outside the block
        ref_sorted = np.sort(arr[take[keep]].T, axis=1)
        stats = _raw_stats(ref_sorted, block, kinds, numeric, rest, block_acc.counts)
        for k, v in stats.items():
            out[k][d] = v
    return out


def _ks_and_wasserstein(ref_sorted: np.ndarray, cur_sorted: np.ndarray) -> tuple[float, float]:
    """Two-sample KS statistic and 1-Wasserstein distance from one merge of two sorted samples.

    Equal to ``scipy.stats.ks_2samp(...).statistic`` and ``scipy.stats.wasserstein_distance``
    (tests/ct/test_drift.py checks it, ties included).  A stable argsort of two sorted runs is
    a linear-time merge; both ECDFs are then running counts.
    """
    both = np.concatenate([ref_sorted, cur_sorted])
    order = np.argsort(both, kind="stable")
    v = both[order]
    from_ref = order < ref_sorted.size
    gap = np.abs(np.cumsum(from_ref) / ref_sorted.size - np.cumsum(~from_ref) / cur_sorted.size)
    last_of_value = np.empty(v.size, dtype=bool)  # ECDFs are compared after all ties of a value
    np.not_equal(v[1:], v[:-1], out=last_of_value[:-1])
    last_of_value[-1] = True
    return float(gap[last_of_value].max()), float(np.dot(gap[:-1], np.diff(v)))


def _ks_statistic(ref_sorted: np.ndarray, cur_sorted: np.ndarray) -> float:
    return _ks_and_wasserstein(ref_sorted, cur_sorted)[0]


def _wasserstein(ref_sorted: np.ndarray, cur_sorted: np.ndarray) -> float:
    return _ks_and_wasserstein(ref_sorted, cur_sorted)[1]


def _raw_stats(ref_sorted, cur, kinds, numeric, ref_counts, cur_counts) -> dict[str, np.ndarray]:
    """KS, Wasserstein/sd (numeric) and chi-square/n (categorical) per feature; nan where n/a.

    ``ref_sorted`` (F, m): each feature's reference sample, sorted.  The KS statistic and the
    Wasserstein distance are computed as scipy.stats computes them (the tests check equality), on
    arrays sorted once, which makes hundreds of calibration draws and 10k-row windows cheap.
    """
    F = cur.shape[1]
    ks = np.full(F, np.nan)
    ws = np.full(F, np.nan)
    chi = np.full(F, np.nan)
    for f in numeric:
        r = ref_sorted[f]
        c = np.sort(cur[:, f])
        ks[f], w = _ks_and_wasserstein(r, c)
        sd = r.std()
        ws[f] = w / (sd if sd > 0 else 1.0)
    for f in range(F):
        if kinds[f] == "categorical":
            chi[f] = _chi2(ref_counts[f], cur_counts[f])[0] / max(int(cur_counts[f].sum()), 1)
    return {"ks": ks, "wasserstein": ws, "chi2": chi}


def _chi2(ref_counts, cur_counts) -> tuple[float, int]:
    """Chi-square statistic of the 2 x bins table (bins empty in both dropped), and its dof."""
    table = np.vstack([ref_counts, cur_counts]).astype(np.float64)
    table = table[:, table.sum(axis=0) > 0]
    if table.shape[1] < 2 or np.any(table.sum(axis=1) == 0):
        return 0.0, 0
    stat = scipy.stats.chi2_contingency(table, correction=False).statistic
    return float(stat), table.shape[1] - 1


def _fit_pca(arr, k, window, n_draws, seed, sigmas) -> PcaProfile | None:
    mean = arr.mean(axis=0)
    scale = arr.std(axis=0)
    scale[scale == 0] = 1.0
    z = (arr - mean) / scale
    _, _, vt = randomized_svd(np.ascontiguousarray(z), k, seed=seed)
    err = reconstruction_error(arr, mean, scale, vt)
    n = arr.shape[0]
    if n < 2 * window:
        return None  # no spread over chunks to set a band from
    starts = _block_starts(n, window, max(n_draws, 20), seed + 1)
    cs = np.concatenate(([0.0], np.cumsum(err)))
    block_means = (cs[starts + window] - cs[starts]) / window
    return PcaProfile(tuple(mean.tolist()), tuple(scale.tolist()), tuple(tuple(r) for r in vt.tolist()),
                      float(block_means.mean()), float(block_means.std()), float(sigmas))


# ------------------------------------------------------------------------------------- slices


class SliceHistograms:
    """Streaming histograms per slice (edge) for one model; ``fleet()`` merges them all."""

    def __init__(self, profile: ReferenceProfile, max_slices: int = 4096):
        self.profile = profile
        self.max_slices = max_slices
        self._edges = profile.edges_matrix()
        self._slices: dict[str, HistogramAccumulator] = {}

    def _get(self, key: str) -> HistogramAccumulator:
        check_name("slice_key", key)
        if key == FLEET:
            raise ValueError(f"slice_key {key!r} is reserved for the merged view; expected an edge id")
        acc = self._slices.get(key)
        if acc is None:
            if len(self._slices) >= self.max_slices:
                raise ValueError(f"at most {self.max_slices} slices are kept, got a new one {_cut(key)}")
            acc = self._slices[key] = HistogramAccumulator(self._edges)
        return acc

    def update(self, key: str, x) -> None:
        """Count raw rows from slice ``key``."""
        self._get(key).update(x)

    def merge_state(self, key: str, state) -> None:
        """Fold in an edge's shipped accumulator state (``HistogramAccumulator.to_state()``)."""
        self._get(key).merge(HistogramAccumulator.from_state(state))

    def keys(self) -> list[str]:
        return sorted(self._slices)

    def get(self, key: str) -> HistogramAccumulator:
        if key == FLEET:
            return self.fleet()
        if key not in self._slices:
            raise KeyError(f"no histogram for slice {_cut(key)}; known: {_cut(self.keys())}")
        return self._slices[key]

    def fleet(self) -> HistogramAccumulator:
        merged = HistogramAccumulator(self._edges)
        for key in self.keys():
            merged.merge(self._slices[key])
        return merged

    def reset(self) -> None:
        for acc in self._slices.values():
            acc.reset()


# ------------------------------------------------------------------------------------ monitors


def _fmt(v: float) -> str:
    return f"{v:.3g}" if abs(v) < 1e4 else f"{v:.3e}"


def _bin_label(fp: FeatureProfile, b: int) -> str:
    e = fp.edges
    last = b == len(e) - 2
    if fp.kind == "categorical":
        inside = [c for c in fp.categories if e[b] <= c < e[b + 1] or (last and c == e[b + 1])]
        if inside:
            return "value " + ", ".join(f"{c:g}" for c in inside)
    return f"[{_fmt(e[b])}, {_fmt(e[b + 1])}{']' if last else ')'}"


def _worst_bin(fp: FeatureProfile, ref: np.ndarray, cur: np.ndarray) -> str:
    p = ref / max(ref.sum(), 1)
    q = cur / max(cur.sum(), 1)
    pe, qe = np.maximum(p, 1e-6), np.maximum(q, 1e-6)
    b = int(np.argmax(np.abs((qe - pe) * np.log(qe / pe))))
    return f"worst bin {_bin_label(fp, b)}: {p[b]:.1%} → {q[b]:.1%}"


def _check_slice(slice_key: str) -> str:
    return slice_key if slice_key == FLEET else check_name("slice_key", slice_key)


def histogram_drift(profile: ReferenceProfile, current, slice_key: str = FLEET,
                    stats=HIST_STATS) -> list[MonitorResult]:
    """PSI and JS distance per feature of a window's histogram against the reference's.

    ``current``: a HistogramAccumulator with the profile's edges (an edge's merged streaming
    state), or its counts (F, B).  Features with an empty window give no result.
    """
    _check_slice(slice_key)
    counts = current.counts if isinstance(current, HistogramAccumulator) else np.asarray(current)
    ref = profile.counts_matrix()
    if counts.shape != ref.shape:
        raise ValueError(f"current counts must have shape {ref.shape} (the profile's features x bins), "
                         f"got {counts.shape}")
    out = []
    values = {"psi": psi(ref, counts), "js": js_distance(ref, counts)}
    for stat in stats:
        if stat not in values:
            raise ValueError(f"stats must be among {HIST_STATS}, got {stat!r}")
        for f, fp in enumerate(profile.features):
            n = int(counts[f].sum())
            v = float(values[stat][f])
            if n == 0 or not math.isfinite(v):
                continue
            t = profile.threshold(stat, f, n)
            alarm = v > t
            worst = _worst_bin(fp, ref[f], counts[f])
            if stat == "psi" and profile.threshold_source == FIXED and PSI_WARN <= v <= t:
                worst = f"moderate shift (PSI {PSI_WARN:g}–{t:g}); " + worst
            out.append(MonitorResult(
                stat, fp.name, slice_key, v, t, profile.threshold_source, alarm, n,
                f"feature '{fp.name}' {STAT_LABEL[stat]} {v:.3g} {'>' if alarm else '<='} {t:.3g} "
                f"({profile.threshold_source}; {n} rows, slice {slice_key}); {worst}",
                {"feature_index": f}))
    return out


def window_drift(profile: ReferenceProfile, window, slice_key: str = FLEET,
                 histogram: HistogramAccumulator | None = None) -> list[MonitorResult]:
    """Two-sample tests of raw window rows (n, F) against the profile's reference sample.

    Numeric features: the two-sample KS statistic and the Wasserstein distance (in reference
    standard deviations), equal to ``scipy.stats.ks_2samp``'s and ``wasserstein_distance``'s;
    categorical ones: ``scipy.stats.chi2_contingency`` over the categories, divided by the rows.
    ``histogram``: this window's histogram if the caller already has it (saves a pass).
    """
    _check_slice(slice_key)
    cur = np.asarray(window, dtype=np.float64)
    F = len(profile.features)
    if cur.ndim != 2 or cur.shape[1] != F:
        raise ValueError(f"window must be 2-D (rows, {F} features), got shape {cur.shape}")
    finite = np.all(np.isfinite(cur), axis=1)
    cur = cur[finite]
    n = cur.shape[0]
    if n == 0:
        return []
    kinds = [fp.kind for fp in profile.features]
    ref_sorted = profile._arrays["sorted_sample"]
    if histogram is not None and not np.array_equal(histogram.edges, profile.edges_matrix()):
        raise ValueError("histogram must use the profile's edges (profile.accumulator())")
    acc = histogram if histogram is not None else profile.accumulator().update(cur)
    ref_counts = profile.counts_matrix()
    stats = _raw_stats(ref_sorted, cur, kinds, [f for f in range(F) if kinds[f] == "numeric"], ref_counts, acc.counts)
    fixed = profile.threshold_source == FIXED
    out = []
    for f, fp in enumerate(profile.features):
        names = ("ks", "wasserstein") if fp.kind == "numeric" else ("chi2",)
        for stat in names:
            v = float(stats[stat][f])
            if not math.isfinite(v):
                continue
            if fixed and stat == "ks":
                m = ref_sorted.shape[1]
                t = math.sqrt(-math.log(FIXED_ALPHA / 2) / 2) * math.sqrt((n + m) / (n * m))
                source = f"KS critical value at p={FIXED_ALPHA}"
            elif fixed and stat == "chi2":
                dof = max(_chi2(ref_counts[f], acc.counts[f])[1], 1)
                t = float(scipy.stats.chi2.ppf(1 - FIXED_ALPHA, dof)) / n
                source = f"chi-square critical value at p={FIXED_ALPHA}"
            else:
                t = profile.threshold(stat, f, n)
                source = profile.threshold_source
            alarm = v > t
            detail = _worst_bin(fp, ref_counts[f], acc.counts[f])
            if fp.kind == "numeric":
                detail = (f"mean {fp.mean:.3g} → {cur[:, f].mean():.3g}, sd {fp.std:.3g} → {cur[:, f].std():.3g}; "
                          + detail)
            out.append(MonitorResult(
                stat, fp.name, slice_key, v, t, source, alarm, n,
                f"feature '{fp.name}' {STAT_LABEL[stat]} {v:.3g} {'>' if alarm else '<='} {t:.3g} "
                f"({source}; {n} rows, slice {slice_key}); {detail}",
                {"feature_index": f}))
    return out


def pca_drift(profile: ReferenceProfile, window, slice_key: str = FLEET) -> MonitorResult | None:
    """Multivariate drift: the window's mean PCA reconstruction error against the reference band.

    Alarm when it leaves error_mean +- sigmas * error_std (the spread over reference blocks of the
    calibration window, widened like 1/sqrt(n) for smaller windows).  None without a PCA.
    """
    _check_slice(slice_key)
    pca = profile.pca
    if pca is None:
        return None
    cur = np.asarray(window, dtype=np.float64)
    F = len(profile.features)
    if cur.ndim != 2 or cur.shape[1] != F:
        raise ValueError(f"window must be 2-D (rows, {F} features), got shape {cur.shape}")
    cur = cur[np.all(np.isfinite(cur), axis=1)]
    n = cur.shape[0]
    if n == 0:
        return None
    a = profile._arrays
    err = reconstruction_error(cur, a["pca_mean"], a["pca_scale"], a["pca_components"])
    value = float(err.mean())
    spread = pca.error_std * math.sqrt(profile.window / n) if n < profile.window else pca.error_std
    spread = max(spread, 1e-12)
    lo, hi = pca.error_mean - pca.sigmas * spread, pca.error_mean + pca.sigmas * spread
    alarm = not lo <= value <= hi
    side = ">" if value > hi else "<" if value < lo else "within"
    bound = hi if value > hi else lo
    text = (f"{side} {bound:.3g}" if alarm else f"within [{lo:.3g}, {hi:.3g}]")
    return MonitorResult(
        "pca", "all features", slice_key, value, hi if value >= pca.error_mean else lo,
        f"reference mean ± {pca.sigmas:g}σ over chunks", alarm, n,
        f"all features: PCA ({len(pca.components)} of {F} components) reconstruction error {value:.3g} {text} "
        f"(reference {pca.error_mean:.3g} ± {pca.sigmas:g}×{spread:.3g}; {n} rows, slice {slice_key})",
        {"low": lo, "high": hi})


def prediction_reference(outputs, labels=None, **kwargs) -> ReferenceProfile:
    """A profile of the model's outputs, for prediction drift with the same monitors.

    ``outputs``: (n,) regression values or predicted classes, or (n, C) class probabilities
    (then each class's probability is a feature ``p(<label>)``).  Predicted classes are
    profiled as a categorical feature ``prediction``.
    """
    out = np.asarray(outputs, dtype=np.float64)
    if out.ndim == 1:
        is_class = labels is not None
        return build_reference(out[:, None], ["prediction"], ["categorical" if is_class else "numeric"],
                               pca_components=0, **kwargs)
    if out.ndim != 2:
        raise ValueError(f"outputs must be (n,) or (n, classes), got shape {out.shape}")
    labels = list(range(out.shape[1])) if labels is None else list(labels)
    if len(labels) != out.shape[1]:
        raise ValueError(f"labels must name the {out.shape[1]} output columns, got {_cut(labels)}")
    return build_reference(out, [f"p({lab})" for lab in labels], pca_components=0, **kwargs)
