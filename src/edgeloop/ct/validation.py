"""Data validation before training (TFDV's job): which uploaded batches may reach the trainer.

A batch that fails a check is quarantined with its reasons (the caller stores the record and keeps
the batch); the rest go on, and the result says whether enough clean data remains to train.

Checks, per batch: the model's input signature (names, dtypes, shapes), NaN/Inf, hard value
domains, the label domain, request ids seen before, and a column that is suddenly constant (longer
than any constant run in the reference).  Across batches: per-edge anomalies, i.e. one edge whose
feature distribution, or whose label-feature relation, is far from the other edges' (a poisoned
edge: features shifted, labels flipped).

Values outside the reference's range are judged by consensus, because a change the whole fleet
sees is drift to learn, not corruption: they quarantine a batch only when they show on a minority
of the edges.  Otherwise they are accepted with a note.  (In Elec2 three columns are constant for
17,424 rows and then vary on every edge; rejecting that would keep the model blind to it forever.)
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from edgeloop.kernels import HistogramAccumulator, psi

from .drift import ReferenceProfile, check_name

__all__ = ["TensorSpec", "Batch", "BatchSummary", "ValidationPolicy", "QuarantineRecord", "ValidationNote",
           "ValidationResult", "check_request_ids", "merge_summaries", "signature_from_onnx", "summarise_batch",
           "validate_batches", "validation_context"]

MAX_ROWS = 1_000_000
MAX_ID = 256
_SHOW = 5


def _cut(value, limit: int = 200) -> str:
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


@dataclass(frozen=True)
class TensorSpec:
    """One model input: name, NumPy dtype name, shape (-1 for a dynamic dimension)."""

    name: str
    dtype: str
    shape: tuple[int, ...]


def signature_from_onnx(model) -> tuple[TensorSpec, ...]:
    """The input signature of an ONNX model (bytes or ModelProto); initializers are not inputs."""
    import onnx
    from onnx import helper

    proto = onnx.load_from_string(model) if isinstance(model, (bytes, bytearray)) else model
    inits = {i.name for i in proto.graph.initializer}
    specs = []
    for inp in proto.graph.input:
        if inp.name in inits:
            continue
        tt = inp.type.tensor_type
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tt.elem_type)).name
        shape = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in tt.shape.dim)
        specs.append(TensorSpec(inp.name, dtype, shape))
    return tuple(specs)


@dataclass(frozen=True)
class Batch:
    """One uploaded batch: its id, the edge it came from, input tensors, labels and request ids."""

    batch_id: str
    edge: str
    inputs: Mapping[str, np.ndarray]
    labels: np.ndarray | None = None
    request_ids: tuple[str, ...] | None = None


@dataclass(frozen=True)
class ValidationPolicy:
    """Limits of the checks; the defaults suit windows of a few hundred rows per batch."""

    feature_input: str | None = None  # input holding the profile's features (None: the only 2-D input)
    label_domain: tuple | None = None  # allowed label values (classification); None: any finite label
    require_labels: bool = True
    domains: dict = field(default_factory=dict)  # feature -> (low, high): hard limits, never drift
    range_tolerance: float = 0.1  # beyond the reference's [min, max] by this fraction of its range
    max_out_of_range: float = 0.05  # fraction of a batch's rows allowed out of range
    min_constant_rows: int = 50  # a batch shorter than this is not judged constant
    min_edge_rows: int = 100  # an edge with fewer rows is not compared with the others
    edge_psi_factor: float = 4.0  # an edge's PSI vs the others must exceed this x their median
    min_edge_psi: float = 0.05  # ... and this (smaller differences are never worth a quarantine)
    min_label_agreement: float = 0.0  # cosine of label-conditional means, an edge vs the others
    min_clean_rows: int = 100
    min_clean_fraction: float = 0.5


@dataclass(frozen=True)
class QuarantineRecord:
    """A batch kept out of training, with every reason it failed."""

    batch_id: str
    edge: str
    rows: int
    checks: tuple[str, ...]  # "schema", "non_finite", "domain", "labels", "duplicate_ids", "constant",
    # "range", "edge_features", "edge_labels"
    reasons: tuple[str, ...]


@dataclass(frozen=True)
class ValidationNote:
    """Something accepted but worth knowing (e.g. a fleet-wide move out of the reference range)."""

    check: str
    feature: str
    text: str


@dataclass(frozen=True)
class ValidationResult:
    clean: tuple[Batch, ...]
    quarantined: tuple[QuarantineRecord, ...]
    notes: tuple[ValidationNote, ...]
    rows_total: int
    rows_clean: int
    enough: bool
    summary: str


@dataclass
class _Checked:
    batch: Batch
    rows: int
    x: np.ndarray | None = None  # (rows, F) float64 features
    y: np.ndarray | None = None
    checks: list = field(default_factory=list)
    reasons: list = field(default_factory=list)

    def fail(self, check: str, reason: str) -> None:
        if check not in self.checks:
            self.checks.append(check)
        self.reasons.append(reason)


def _rows_text(idx: np.ndarray) -> str:
    shown = ", ".join(str(int(i)) for i in idx[:_SHOW])
    return f"rows [{shown}{', ...' if idx.size > _SHOW else ''}]"


def _check_schema(c: _Checked, signature, policy: ValidationPolicy, feature_input: str, n_features: int) -> None:
    b = c.batch
    if not isinstance(b.inputs, Mapping):
        c.fail("schema", f"inputs must be a mapping of input name to array, got {type(b.inputs).__name__}")
        return
    names = [s.name for s in signature]
    missing = [n for n in names if n not in b.inputs]
    extra = [_cut(str(n), 60) for n in b.inputs if n not in names]
    if missing:
        c.fail("schema", f"missing input(s) {missing}; the model expects {names}")
    if extra:
        c.fail("schema", f"unexpected input(s) {extra[:_SHOW]}; the model expects {names}")
    rows = None
    for spec in signature:
        if spec.name not in b.inputs:
            continue
        arr = b.inputs[spec.name]
        if not isinstance(arr, np.ndarray):
            c.fail("schema", f"input '{spec.name}' must be an array, got {type(arr).__name__}")
            continue
        if arr.dtype.name != spec.dtype:
            c.fail("schema", f"input '{spec.name}' has dtype {arr.dtype.name}, expected {spec.dtype}")
        if arr.ndim != len(spec.shape) or any(d >= 0 and d != a for d, a in zip(spec.shape, arr.shape)):
            c.fail("schema", f"input '{spec.name}' has shape {list(arr.shape)}, expected {list(spec.shape)} "
                             f"(-1: any)")
            continue
        if arr.ndim == 0:
            continue
        if rows is None:
            rows = arr.shape[0]
        elif arr.shape[0] != rows:
            c.fail("schema", f"input '{spec.name}' has {arr.shape[0]} rows, other inputs have {rows}")
    if c.reasons:
        return
    rows = rows or 0
    c.rows = rows
    if rows > MAX_ROWS:
        c.fail("schema", f"batch has {rows} rows, at most {MAX_ROWS} are accepted")
        return
    feats = b.inputs[feature_input]
    if feats.ndim != 2 or feats.shape[1] != n_features:
        c.fail("schema", f"input '{feature_input}' has shape {list(feats.shape)}, expected [rows, {n_features}] "
                         f"(the reference's features)")
        return
    if feats.dtype.kind not in "biuf":
        c.fail("schema", f"input '{feature_input}' must hold numbers, got dtype {feats.dtype}")
        return
    c.x = np.asarray(feats, dtype=np.float64)
    if b.labels is not None:
        y = np.asarray(b.labels)
        if y.ndim != 1 or y.shape[0] != rows or y.dtype.kind not in "biuf":
            c.fail("schema", f"labels must be {rows} numbers (one per row), got shape {list(y.shape)} dtype {y.dtype}")
            return
        c.y = y.astype(np.float64)
    elif policy.require_labels:
        c.fail("labels", "batch has no labels; training needs them")
    if b.request_ids is not None and len(b.request_ids) != rows:
        c.fail("schema", f"request_ids must be {rows} ids (one per row), got {len(b.request_ids)}")


def _check_values(c: _Checked, profile: ReferenceProfile, policy: ValidationPolicy, label_set) -> None:
    b = c.batch
    for name, arr in b.inputs.items():
        if arr.dtype.kind == "f" and arr.size:
            bad = ~np.isfinite(arr.reshape(arr.shape[0], -1)).all(axis=1) if arr.ndim else ~np.isfinite(arr)
            if np.any(bad):
                nan = int(np.isnan(arr).sum())
                inf = int(np.isinf(arr).sum())
                c.fail("non_finite", f"input '{name}' has non-finite values (NaN {nan}, inf {inf}) in "
                                     f"{_rows_text(np.nonzero(bad)[0])}")
    x = c.x
    for f, fp in enumerate(profile.features):
        dom = policy.domains.get(fp.name)
        if dom is not None:
            col = x[:, f]
            out = np.nonzero(np.isfinite(col) & ((col < dom[0]) | (col > dom[1])))[0]
            if out.size:
                c.fail("domain", f"feature '{fp.name}' has {out.size} value(s) outside its domain "
                                 f"[{dom[0]:g}, {dom[1]:g}] (e.g. {col[out[0]]:.6g}) in {_rows_text(out)}")
        if fp.kind == "categorical" and fp.categories:
            col = x[:, f]
            out = np.nonzero(np.isfinite(col) & ~np.isin(col, fp.categories))[0]
            if out.size:
                cats = ", ".join(f"{v:g}" for v in fp.categories[:10])
                c.fail("domain", f"feature '{fp.name}' has {out.size} value(s) not among the reference's categories "
                                 f"[{cats}] (e.g. {col[out[0]]:g}) in {_rows_text(out)}")
    if c.y is not None:
        y = c.y
        bad = ~np.isfinite(y)
        if label_set is not None:
            bad |= ~np.isin(y, label_set)
        idx = np.nonzero(bad)[0]
        if idx.size:
            expected = ("one of [" + ", ".join(f"{v:g}" for v in label_set[:10]) + "]") if label_set is not None \
                else "finite"
            c.fail("labels", f"{idx.size} label(s) not {expected} (e.g. {y[idx[0]]:g}) in {_rows_text(idx)}")
    if c.rows >= policy.min_constant_rows:
        for f, fp in enumerate(profile.features):
            col = x[:, f]
            if fp.std > 0 and np.all(col == col[0]) and c.rows > fp.longest_run:
                c.fail("constant", f"feature '{fp.name}' is constant (= {col[0]:.6g}) over all {c.rows} rows; in the "
                                   f"reference it varies (sd {fp.std:.3g}) and never repeats one value for more than "
                                   f"{fp.longest_run} rows")


def _check_ids(c: _Checked, seen: set) -> None:
    ids = c.batch.request_ids
    if ids is None:
        return
    if not all(isinstance(i, str) and 0 < len(i) <= MAX_ID for i in ids):
        c.fail("schema", f"request_ids must be strings of 1..{MAX_ID} characters")
        return
    dup_in = len(ids) - len(set(ids))
    again = [i for i in dict.fromkeys(ids) if i in seen]
    if dup_in:
        c.fail("duplicate_ids", f"{dup_in} request id(s) repeated within the batch")
    if again:
        c.fail("duplicate_ids", f"{len(again)} request id(s) already seen in earlier data, e.g. {_cut(again[0], 80)}")
    seen.update(ids)


def _out_of_range(c: _Checked, profile: ReferenceProfile, policy: ValidationPolicy) -> dict[int, str]:
    """Features of this batch out of the reference's range on too many rows -> text."""
    out = {}
    for f, fp in enumerate(profile.features):
        if fp.kind != "numeric":
            continue
        span = fp.maximum - fp.minimum
        lo, hi = fp.minimum - policy.range_tolerance * span, fp.maximum + policy.range_tolerance * span
        col = c.x[:, f]
        bad = np.isfinite(col) & ((col < lo) | (col > hi))
        share = float(bad.mean()) if col.size else 0.0
        if share > policy.max_out_of_range:
            out[f] = (f"feature '{fp.name}' is outside the reference range [{fp.minimum:.4g}, {fp.maximum:.4g}] "
                      f"(± {policy.range_tolerance:g} of its span) on {share:.1%} of {c.rows} rows "
                      f"(limit {policy.max_out_of_range:.1%}); values {np.nanmin(col):.4g}..{np.nanmax(col):.4g}")
    return out


def _edge_feature_anomalies(by_edge: dict, profile: ReferenceProfile, policy: ValidationPolicy) -> dict[str, list]:
    """Edges whose feature histogram is far from the other edges' pooled one (from the batches' summaries)."""
    counts = {e: sum(s.hist for s in ss) for e, ss in by_edge.items()}
    total = sum(counts.values())
    names = sorted(counts)
    vals = {e: psi(total - counts[e], counts[e]) for e in names}
    found: dict[str, list] = {}
    for e in names:
        n = int(counts[e][0].sum())
        for f, fp in enumerate(profile.features):
            others = [vals[o][f] for o in names if o != e]
            med = float(np.median(others))
            bar = max(profile.threshold("psi", f, n), policy.edge_psi_factor * med, policy.min_edge_psi)
            v = float(vals[e][f])
            if v > bar:
                found.setdefault(e, []).append(
                    f"edge '{e}': feature '{fp.name}' is far from the other {len(names) - 1} edges' (PSI {v:.3g} > "
                    f"{bar:.3g}, the largest of the reference threshold, {policy.edge_psi_factor:g}× the others' "
                    f"median {med:.3g} and {policy.min_edge_psi:g}); mean {_mean(by_edge[e], f):.4g} vs "
                    f"{_pooled_mean(by_edge, e, f):.4g}")
    return found


def _mean(ss, f) -> float:
    return float(sum(s.xsum[f] for s in ss) / max(1, sum(s.rows for s in ss)))


def _pooled_mean(by_edge, skip, f) -> float:
    return _mean([s for e, ss in by_edge.items() if e != skip for s in ss], f)


def _relation(ss, label_set) -> np.ndarray:
    """How labels relate to features: per-class centroids (classification) or correlations, centred;
    from the summed standardised features of the batches ``ss``."""
    n = float(sum(s.rows for s in ss))
    zbar = sum(s.zsum for s in ss) / n
    if label_set is None:
        ybar = sum(s.ysum for s in ss) / n
        cov = sum(s.zy for s in ss) / n - zbar * ybar
        sd = float(np.sqrt(max(sum(s.y2sum for s in ss) / n - ybar * ybar, 0.0)))
        return cov / max(sd, 1e-12)
    zk, nk = sum(s.zk for s in ss), sum(s.nk for s in ss)
    rows = [zk[k] / nk[k] - zbar if nk[k] else np.zeros(len(zbar)) for k in range(len(label_set))]
    return np.concatenate(rows)


def _edge_label_anomalies(by_edge: dict, profile: ReferenceProfile, policy: ValidationPolicy, label_set) -> dict:
    found: dict[str, list] = {}
    for e in sorted(by_edge):
        others = [s for o, ss in by_edge.items() if o != e for s in ss]
        a, b = _relation(by_edge[e], label_set), _relation(others, label_set)
        na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
        if na == 0 or nb == 0:
            continue
        cos = float(a @ b / (na * nb))
        if cos < policy.min_label_agreement:
            what = "class-conditional feature means" if label_set is not None else "feature-label correlations"
            found.setdefault(e, []).append(
                f"edge '{e}': its labels relate to the features unlike the other {len(by_edge) - 1} edges' (cosine of "
                f"{what} {cos:.2f} < {policy.min_label_agreement:g}; flipped or wrong labels?)")
    return found


@dataclass
class BatchSummary:
    """One checked batch as the cross-batch checks see it: its own verdicts and small sufficient statistics.

    Why: the per-batch checks need the rows, the cross-batch ones only sums and histogram counts, so a
    Dask worker can check its chunk's batches where the rows are and send back just this (``batch`` is
    None then).  Sums of standardised features (by the reference's mean and sd) give the label-feature
    relation exactly as from the rows, up to floating-point summation order.
    """

    batch_id: str
    edge: str
    rows: int
    has_x: bool
    has_y: bool
    checks: list
    reasons: list
    out_of_range: dict  # feature index -> text (the batch alone; consensus decides)
    hist: np.ndarray | None = None  # (F, B) counts on the reference's bin edges
    xsum: np.ndarray | None = None  # (F,)
    zsum: np.ndarray | None = None  # (F,) standardised
    zy: np.ndarray | None = None  # (F,) standardised x label
    ysum: float = 0.0
    y2sum: float = 0.0
    zk: np.ndarray | None = None  # (K, F) standardised sums per class of the label domain
    nk: np.ndarray | None = None  # (K,)
    batch: Batch | None = None

    def fail(self, check: str, reason: str) -> None:
        if check not in self.checks:
            self.checks.append(check)
        self.reasons.append(reason)


def validation_context(signature, profile: ReferenceProfile, policy: ValidationPolicy | None):
    """(policy, signature tuple, feature input, label set): what every per-batch check needs."""
    policy = policy or ValidationPolicy()
    signature = tuple(signature)
    names = [s.name for s in signature]
    feature_input = policy.feature_input
    if feature_input is None:
        two_d = [s.name for s in signature if len(s.shape) == 2]
        if len(two_d) != 1:
            raise ValueError(f"feature_input must be set: the signature has {len(two_d)} 2-D inputs {two_d}")
        feature_input = two_d[0]
    if feature_input not in names:
        raise ValueError(f"feature_input {feature_input!r} is not a model input; inputs are {names}")
    label_set = None if policy.label_domain is None else np.array(sorted(policy.label_domain), dtype=np.float64)
    return policy, signature, feature_input, label_set


def summarise_batch(b, signature, profile: ReferenceProfile, policy: ValidationPolicy, feature_input: str,
                    label_set, keep_batch: bool = True) -> BatchSummary:
    """The per-batch checks of ``b`` (schema, values; not request ids, which need the batches' order) and the
    statistics the cross-batch checks need."""
    if not isinstance(b, Batch):
        raise TypeError(f"batches must hold Batch, got {type(b).__name__}")
    c = _Checked(b, 0)
    s = BatchSummary(b.batch_id, b.edge, 0, False, False, c.checks, c.reasons, {},
                     batch=b if keep_batch else None)
    try:
        check_name("slice_key", b.edge, "edge")
        check_name("slice_key", b.batch_id, "batch_id")
    except ValueError as exc:
        c.fail("schema", str(exc))
        return s
    _check_schema(c, signature, policy, feature_input, len(profile.features))
    s.rows = c.rows
    if c.x is None:
        return s
    _check_values(c, profile, policy, label_set)
    s.has_x, s.has_y = True, c.y is not None
    if c.reasons:
        return s  # the cross-batch checks never see it
    x = c.x
    s.out_of_range = _out_of_range(c, profile, policy)
    s.hist = HistogramAccumulator(profile.edges_matrix()).update(x).counts.copy()
    s.xsum = x.sum(axis=0)
    mean = np.array([f.mean for f in profile.features])
    scale = np.array([f.std if f.std > 0 else 1.0 for f in profile.features])
    z = (x - mean) / scale
    s.zsum = z.sum(axis=0)
    if c.y is not None:
        y = c.y
        s.zy, s.ysum, s.y2sum = (z * y[:, None]).sum(axis=0), float(y.sum()), float((y * y).sum())
        if label_set is not None:
            s.zk = np.stack([z[y == k].sum(axis=0) for k in label_set]) if len(label_set) else np.zeros((0, z.shape[1]))
            s.nk = np.array([int((y == k).sum()) for k in label_set], np.int64)
    return s


def check_request_ids(s: BatchSummary, request_ids, seen: set) -> None:
    """The request-id check of one summarised batch, in the batches' order (``seen`` grows)."""
    if not s.has_x:
        return  # a batch that failed its schema is never read further
    stub = _Checked(Batch(s.batch_id, s.edge, {}, None, None if request_ids is None else tuple(request_ids)), s.rows)
    stub.checks, stub.reasons = s.checks, s.reasons
    _check_ids(stub, seen)


def validate_batches(batches, signature, profile: ReferenceProfile, policy: ValidationPolicy | None = None,
                     seen_request_ids=()) -> ValidationResult:
    """Check ``batches`` (time-ordered) against the model's ``signature`` and reference ``profile``.

    ``seen_request_ids``: ids already in the training data (a duplicate of one quarantines the
    batch).  Within the call, the first batch carrying an id wins.
    """
    policy, signature, feature_input, label_set = validation_context(signature, profile, policy)
    seen = set(seen_request_ids)
    summaries = []
    for b in batches:
        s = summarise_batch(b, signature, profile, policy, feature_input, label_set)
        check_request_ids(s, b.request_ids, seen)
        summaries.append(s)
    return merge_summaries(summaries, profile, policy, label_set)


def merge_summaries(summaries, profile: ReferenceProfile, policy: ValidationPolicy, label_set) -> ValidationResult:
    """The cross-batch checks over summarised batches (in time order) and the verdict.

    A summary without its batch (checked on a Dask worker) is clean as ``Batch(batch_id, edge, {})``.
    """
    checked = list(summaries)
    notes: list[ValidationNote] = []
    alive = [c for c in checked if not c.reasons]
    # out-of-range: quarantine only when a minority of edges shows it (else it is drift)
    oor = {id(c): c.out_of_range for c in alive}
    edges_all = {c.edge for c in alive}
    for f, fp in enumerate(profile.features):
        hit_edges = {c.edge for c in alive if f in oor[id(c)]}
        if not hit_edges:
            continue
        if len(edges_all) >= 3 and len(hit_edges) * 2 < len(edges_all):
            for c in alive:
                if f in oor[id(c)]:
                    c.fail("range", oor[id(c)][f] + f"; only {len(hit_edges)} of {len(edges_all)} edges show this")
        else:
            example = next(oor[id(c)][f] for c in alive if f in oor[id(c)])
            notes.append(ValidationNote("range", fp.name, f"accepted as drift: {len(hit_edges)} of {len(edges_all)} "
                                                          f"edge(s) show it: {example}"))

    alive = [c for c in checked if not c.reasons]
    by_edge: dict[str, list] = {}
    for c in alive:
        by_edge.setdefault(c.edge, []).append(c)
    big = {e: cs for e, cs in by_edge.items() if sum(c.rows for c in cs) >= policy.min_edge_rows}
    if len(big) >= 3:
        found = _edge_feature_anomalies(big, profile, policy)
        labelled = {e: cs for e, cs in big.items() if all(c.has_y for c in cs)}
        if len(labelled) >= 3:
            for e, reasons in _edge_label_anomalies(labelled, profile, policy, label_set).items():
                found.setdefault(e, []).extend(reasons)
        for e, reasons in found.items():
            for c in by_edge[e]:
                for r in reasons:
                    c.fail("edge_labels" if "labels relate" in r else "edge_features", r)
    elif len(by_edge) > 1:
        notes.append(ValidationNote("edges", "", f"per-edge comparison skipped: {len(big)} edge(s) with >= "
                                                 f"{policy.min_edge_rows} rows, 3 needed"))

    clean = tuple(c.batch if c.batch is not None else Batch(c.batch_id, c.edge, {}) for c in checked if not c.reasons)
    quarantined = tuple(QuarantineRecord(_cut(c.batch_id), _cut(c.edge), c.rows, tuple(c.checks),
                                         tuple(c.reasons))
                        for c in checked if c.reasons)
    rows_total = sum(c.rows for c in checked)
    rows_clean = sum(c.rows for c in checked if not c.reasons)
    enough = rows_clean >= policy.min_clean_rows and (
        rows_total == 0 or rows_clean / rows_total >= policy.min_clean_fraction)
    summary = (f"{len(clean)} of {len(checked)} batches clean ({rows_clean} of {rows_total} rows); "
               f"{len(quarantined)} quarantined"
               + (f" ({', '.join(sorted({k for q in quarantined for k in q.checks}))})" if quarantined else "")
               + ("" if enough else f"; not enough clean data (need >= {policy.min_clean_rows} rows and "
                                    f">= {policy.min_clean_fraction:.0%} of the rows)"))
    return ValidationResult(clean, quarantined, tuple(notes), rows_total, rows_clean, enough, summary)
