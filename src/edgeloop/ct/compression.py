"""Compression before push, gated on accuracy: original, low-rank, int8, low-rank + int8.

Low-rank: every MatMul/Gemm weight W is factorised by the kernels' tolerance-driven
``svd_compress`` and the node rewritten as two MatMuls when ``rank * (k + m) < k * m``.
int8: onnxruntime's own dynamic quantisation (``quantize_dynamic``, weights int8).  Each candidate
is scored on the holdout and infra-validated; the smallest one whose metric is within the
tolerance of the uncompressed challenger (and which passes infra validation) is chosen.  The
report lists every candidate's size, p99 latency and metric, and why each was or was not chosen.
"""
from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import asdict, dataclass, field

import numpy as np

from edgeloop.ct.evaluation import CLASSIFICATION, METRICS, predict
from edgeloop.ct.infra import InfraPolicy, ServingSignature, SessionSettings, validate_infra
from edgeloop.ct.trainers import Dataset, TrainingError, _cut, class_labels


@dataclass(frozen=True)
class CompressionPolicy:
    """rank_tolerance: relative Frobenius error allowed per weight (svd_compress's ``tol``);
    metric_tolerance: largest allowed loss of ``metric`` against the uncompressed challenger."""

    metric: str = "accuracy"
    metric_tolerance: float = 0.005
    rank_tolerance: float = 0.05
    seed: int = 0

    def __post_init__(self):
        if self.metric not in METRICS:
            raise TrainingError(f"metric: {_cut(self.metric)}; expected one of {', '.join(METRICS)}")
        if not (self.metric_tolerance >= 0):
            raise TrainingError(f"metric_tolerance: {_cut(self.metric_tolerance)}; expected a number >= 0")
        if not (0 < self.rank_tolerance < 1):
            raise TrainingError(f"rank_tolerance: {_cut(self.rank_tolerance)}; expected 0 < tol < 1")


@dataclass(frozen=True)
class LayerRewrite:
    """One weight's factorisation: kept (rewritten) only when it has fewer parameters."""

    weight: str
    shape: tuple
    rank: int
    params_before: int
    params_after: int
    relative_error: float
    rewritten: bool


@dataclass(frozen=True)
class Candidate:
    name: str
    size_bytes: int
    metric: float | None
    metric_loss: float | None  # > 0: worse than the uncompressed challenger
    p99_ms: float | None
    infra_passed: bool
    within_tolerance: bool
    chosen: bool
    note: str
    rewrites: tuple[LayerRewrite, ...] = field(default=())


@dataclass(frozen=True)
class CompressionResult:
    model: bytes | None
    chosen: str | None
    reason: str
    candidates: tuple[Candidate, ...]

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("model")
        return d


# ------------------------------------------------------------------------ rewrites


def low_rank(model: bytes, tol: float, seed: int = 0) -> tuple[bytes, tuple[LayerRewrite, ...]]:
    """Rewrite every MatMul/Gemm with a 2-D initializer weight as two MatMuls where that is smaller."""
    import onnx
    from onnx import helper, numpy_helper

    from edgeloop.kernels import svd_compress

    proto = onnx.load_model_from_string(bytes(model))
    graph = proto.graph
    inits = {t.name: t for t in graph.initializer}
    uses = {}
    for node in graph.node:
        for name in node.input:
            uses[name] = uses.get(name, 0) + 1
    rewrites, nodes, dropped = [], [], set()
    for node in graph.node:
        weight = node.input[1] if len(node.input) > 1 else ""
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        ok = (node.op_type == "MatMul" or node.op_type == "Gemm" and attrs.get("transA", 0) == 0
              and attrs.get("alpha", 1.0) == 1.0)
        if not ok or weight not in inits or uses.get(weight) != 1 or len(inits[weight].dims) != 2:
            nodes.append(node)
            continue
        w = numpy_helper.to_array(inits[weight])
        if w.dtype not in (np.float32, np.float64):
            nodes.append(node)
            continue
        trans_b = node.op_type == "Gemm" and attrs.get("transB", 0) == 1
        mat = np.ascontiguousarray(w.T if trans_b else w)
        us, vt, rep = svd_compress(mat, tol=float(tol), seed=int(seed))
        smaller = 0 < rep.rank and rep.params_after < rep.params_before
        rewrites.append(LayerRewrite(weight, tuple(mat.shape), rep.rank, rep.params_before, rep.params_after,
                                     rep.relative_error, smaller))
        if not smaller:
            nodes.append(node)
            continue
        u_name, v_name, mid = f"{weight}_lowrank_u", f"{weight}_lowrank_v", f"{node.output[0]}_lowrank"
        graph.initializer.extend([numpy_helper.from_array(us.astype(w.dtype), u_name),
                                  numpy_helper.from_array(vt.astype(w.dtype), v_name)])
        dropped.add(weight)
        nodes.append(helper.make_node("MatMul", [node.input[0], u_name], [mid], name=f"{node.name}_lowrank_u"))
        if node.op_type == "MatMul":
            nodes.append(helper.make_node("MatMul", [mid, v_name], list(node.output), name=f"{node.name}_lowrank_v"))
        else:
            nodes.append(helper.make_node("Gemm", [mid, v_name, *node.input[2:]], list(node.output),
                                          name=f"{node.name}_lowrank_v", beta=float(attrs.get("beta", 1.0))))
    kept = [t for t in graph.initializer if t.name not in dropped]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    del graph.node[:]
    graph.node.extend(nodes)
    onnx.checker.check_model(proto)
    return proto.SerializeToString(deterministic=True), tuple(rewrites)


def int8(model: bytes) -> bytes:
    """onnxruntime's dynamic quantisation of MatMul/Gemm weights to int8."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quiet = _DropMessage("Please consider to run pre-processing")
    logging.getLogger().addFilter(quiet)  # quantize_dynamic logs this advice on the root logger every call
    try:
        return _int8(model, QuantType, quantize_dynamic)
    finally:
        logging.getLogger().removeFilter(quiet)


class _DropMessage(logging.Filter):
    def __init__(self, prefix: str):
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefix)


def _int8(model, QuantType, quantize_dynamic) -> bytes:
    with tempfile.TemporaryDirectory(prefix="edgeloop-int8-") as tmp:
        src, dst = os.path.join(tmp, "model.onnx"), os.path.join(tmp, "model.int8.onnx")
        with open(src, "wb") as f:
            f.write(model)
        quantize_dynamic(src, dst, weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul", "Gemm"])
        with open(dst, "rb") as f:
            return f.read()


def build_variants(candidate: bytes, policy: CompressionPolicy) -> list[tuple[str, bytes | None, tuple, str]]:
    """(name, ONNX bytes or None, low-rank rewrites, note) of original, low-rank, int8, low-rank+int8."""
    built: list[tuple[str, bytes | None, tuple, str]] = [("original", candidate, (), "")]
    try:
        lr_model, rewrites = low_rank(candidate, policy.rank_tolerance, policy.seed)
        if not any(r.rewritten for r in rewrites):
            lr_model = None
            note = f"not built: no weight has a smaller factorisation within rank_tolerance {policy.rank_tolerance:g}"
        else:
            note = ""
        built.append(("low-rank", lr_model, rewrites, note))
    except Exception as exc:  # a graph the rewrite cannot handle: report it, keep the others
        lr_model, rewrites = None, ()
        built.append(("low-rank", None, (), f"not built: {type(exc).__name__}: {_cut(str(exc))}"))
    for name, source, rw in (("int8", candidate, ()), ("low-rank+int8", lr_model, rewrites)):
        if source is None:
            built.append((name, None, rw, "not built: no low-rank model"))
            continue
        try:
            built.append((name, int8(source), rw, ""))
        except Exception as exc:  # onnxruntime.quantization raises many types
            built.append((name, None, rw, f"not built: quantize_dynamic failed: {_cut(str(exc))}"))
    return built


# ----------------------------------------------------------------------- selection


def compress(challenger: bytes, holdout: Dataset, policy: CompressionPolicy = CompressionPolicy(),
             settings: SessionSettings = SessionSettings(), champion: bytes | None = None,
             infra_policy: InfraPolicy = InfraPolicy(), signature: ServingSignature | None = None) -> CompressionResult:
    """Build the four candidates, score and infra-validate each, choose the smallest that qualifies.

    The latency baseline is the champion when given, else the uncompressed challenger; the
    signature is the serving one when given, else the uncompressed challenger's own.
    """
    if len(holdout) == 0:
        raise TrainingError("holdout: 0 rows; compression is gated on a labelled holdout")
    sign = 1.0 if METRICS[policy.metric] else -1.0
    y = class_labels(holdout.y, "holdout") if policy.metric in CLASSIFICATION else np.asarray(holdout.y, np.float64)
    signature = signature or ServingSignature.of_model(challenger, settings)
    baseline = champion if champion is not None else challenger
    built = build_variants(challenger, policy)
    reference = predict(challenger, holdout.X, settings, "challenger").score(policy.metric, y)
    rows = []
    for name, data, rw, note in built:
        if data is None:
            rows.append(Candidate(name, 0, None, None, None, False, False, False, note, rw))
            continue
        try:
            value = predict(data, holdout.X, settings, name).score(policy.metric, y)
        except Exception as exc:
            rows.append(Candidate(name, len(data), None, None, None, False, False, False,
                                  f"cannot be scored: {_cut(str(exc))}", rw))
            continue
        loss = sign * (reference - value)
        infra = validate_infra(data, holdout.X, signature, settings, baseline, infra_policy)
        rows.append(judged(name, len(data), value, loss, infra, policy, rw))
    return pick(built, rows, reference, policy)


def judged(name: str, size: int, value: float, loss: float, infra, policy: CompressionPolicy, rw) -> Candidate:
    """A built variant's row: within the metric tolerance and through infra validation, or why not."""
    within = loss <= policy.metric_tolerance + 1e-12
    why = []
    if not within:
        why.append(f"{policy.metric} loss {loss:.4f} > tolerance {policy.metric_tolerance:g}")
    if not infra.passed:
        why.append("infra: " + "; ".join(infra.reasons))
    return Candidate(name, size, value, loss, infra.p99_ms, infra.passed, within, False,
                     "refused: " + "; ".join(why) if why else "qualifies", rw)


def pick(built, rows: list[Candidate], reference: float, policy: CompressionPolicy,
         where: str = "") -> CompressionResult:
    """The smallest qualifying variant (ties: the order built), every row marked; ``where`` names the rows
    the metric was measured on, for the reason."""
    fit = [c for c in rows if c.infra_passed and c.within_tolerance]
    if not fit:
        return CompressionResult(None, None, "no candidate qualifies: " + " | ".join(
            f"{c.name}: {c.note}" for c in rows), tuple(rows))
    best = min(fit, key=lambda c: (c.size_bytes, [r.name for r in rows].index(c.name)))
    rows = [Candidate(**{**c.__dict__, "chosen": c is best}) for c in rows]
    original = rows[0]
    reason = (f"chose {best.name}: {best.size_bytes} bytes vs original {original.size_bytes} "
              f"({best.size_bytes / max(1, original.size_bytes):.1%}), {policy.metric} {best.metric:.4f} vs "
              f"{reference:.4f} (loss {best.metric_loss:+.4f} <= {policy.metric_tolerance:g}){where}, "
              f"p99 {best.p99_ms:.3f} ms")
    model = dict((name, data) for name, data, _, _ in built)[best.name]
    return CompressionResult(model, best.name, reason, tuple(rows))


__all__ = ["Candidate", "CompressionPolicy", "CompressionResult", "LayerRewrite", "build_variants", "compress",
           "int8", "judged", "low_rank", "pick"]
