"""Infra validation (TFX InfraValidator's job): will the candidate load and run on an edge, as fast?

The candidate is loaded in onnxruntime with the edges' session settings (plain values: ``ct`` never
imports ``serving``), fed real holdout rows, and its outputs' names, dtypes and shapes are checked
against the serving signature.  Its p99 latency at batch 1 is measured interleaved with the
champion's (same rows, same moments, so machine noise hits both alike) and must stay within
``max_latency_ratio`` of it (plus a small absolute slack for sub-millisecond models).
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import numpy as np

#: Refuse bigger models outright (what the edges would refuse too).
MAX_MODEL_BYTES = 256 << 20
GRAPH_OPTIMIZATION_LEVELS = {"disable": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC",
                             "extended": "ORT_ENABLE_EXTENDED", "all": "ORT_ENABLE_ALL"}


class InfraError(ValueError):
    """onnxruntime refused the model or its settings; the message says why."""


def _cut(value, limit: int = 200) -> str:
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


@dataclass(frozen=True)
class SessionSettings:
    """The onnxruntime options the edges serve with (the fields of ``config.ModelConfig``)."""

    intra_op_threads: int = 1
    inter_op_threads: int = 1
    graph_optimization_level: str = "all"
    execution_providers: tuple[str, ...] = ("CPUExecutionProvider",)

    @classmethod
    def from_config(cls, config) -> "SessionSettings":
        """From any object with the ModelConfig session fields (e.g. a ``config.ModelConfig``)."""
        return cls(int(config.intra_op_threads), int(config.inter_op_threads), str(config.graph_optimization_level),
                   tuple(config.execution_providers))


def open_session(data: bytes, settings: SessionSettings = SessionSettings(), what: str = "model"):
    """An onnxruntime session for ``data`` with ``settings``; InfraError (naming ``what``) if refused."""
    import onnx
    import onnxruntime as ort

    if not isinstance(data, (bytes, bytearray)) or not data or len(data) > MAX_MODEL_BYTES:
        size = len(data) if isinstance(data, (bytes, bytearray)) else type(data).__name__
        raise InfraError(f"{what}: {size} bytes; expected 1..{MAX_MODEL_BYTES} bytes of ONNX")
    try:
        proto = onnx.load_model_from_string(bytes(data))
    except Exception as exc:
        raise InfraError(f"{what}: not an ONNX model ({type(exc).__name__}: {_cut(str(exc))})") from None
    for t in proto.graph.initializer:
        if t.data_location == onnx.TensorProto.EXTERNAL:
            raise InfraError(f"{what}: initializer {_cut(t.name)} references an external file; pushed models "
                             "must be self-contained")
    level = GRAPH_OPTIMIZATION_LEVELS.get(settings.graph_optimization_level)
    if level is None:
        raise InfraError(f"{what}: graph_optimization_level={_cut(repr(settings.graph_optimization_level))}; expected one "
                         f"of {', '.join(GRAPH_OPTIMIZATION_LEVELS)}")
    options = ort.SessionOptions()
    options.intra_op_num_threads = max(0, int(settings.intra_op_threads))
    options.inter_op_num_threads = max(0, int(settings.inter_op_threads))
    options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
    options.log_severity_level = 3
    available = ort.get_available_providers()
    providers = [p for p in settings.execution_providers if p in available] or ["CPUExecutionProvider"]
    try:
        return ort.InferenceSession(bytes(data), options, providers=providers)
    except Exception as exc:  # onnxruntime raises its own pybind exception types
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InfraError(f"{what}: onnxruntime cannot load the model: {_cut(text)}") from None


# ------------------------------------------------------------------------ signature

_ORT_DTYPES = {"tensor(float)": "float32", "tensor(double)": "float64", "tensor(int64)": "int64",
               "tensor(int32)": "int32", "tensor(string)": "object", "tensor(bool)": "bool",
               "tensor(float16)": "float16", "tensor(int8)": "int8", "tensor(uint8)": "uint8"}


@dataclass(frozen=True)
class TensorSig:
    """One input or output: name, NumPy dtype name, shape with None for a dynamic dimension."""

    name: str
    dtype: str
    shape: tuple

    def describe(self) -> str:
        return f"{self.name} {self.dtype}{list(self.shape)}"


@dataclass(frozen=True)
class ServingSignature:
    """What the edges' clients rely on: inputs and outputs by name, dtype and shape."""

    inputs: tuple[TensorSig, ...]
    outputs: tuple[TensorSig, ...]

    @classmethod
    def of_session(cls, session) -> "ServingSignature":
        def sig(arg):
            dims = tuple(d if isinstance(d, int) and d >= 0 else None for d in arg.shape)
            return TensorSig(arg.name, _ORT_DTYPES.get(arg.type, arg.type), dims)

        return cls(tuple(sig(a) for a in session.get_inputs()), tuple(sig(a) for a in session.get_outputs()))

    @classmethod
    def of_model(cls, data: bytes, settings: SessionSettings = SessionSettings()) -> "ServingSignature":
        """The signature of a model (e.g. the champion's), as onnxruntime reads it."""
        return cls.of_session(open_session(data, settings, "signature model"))


def _shape_fits(actual: tuple, expected: tuple) -> bool:
    return len(actual) == len(expected) and all(e is None or a is None or a == e for a, e in zip(actual, expected))


def signature_problems(have: ServingSignature, want: ServingSignature) -> list[str]:
    """Every way ``have`` differs from ``want`` (names, dtypes, ranks, static dims), in words."""
    problems = []
    for kind, got, exp in (("input", have.inputs, want.inputs), ("output", have.outputs, want.outputs)):
        by_name = {t.name: t for t in got}
        for t in exp:
            g = by_name.get(t.name)
            if g is None:
                problems.append(f"{kind} {t.name!r} is missing; the model has {_cut([x.name for x in got])}")
            elif g.dtype != t.dtype or not _shape_fits(g.shape, t.shape):
                problems.append(f"{kind} {t.name!r} is {g.dtype}{list(g.shape)}; expected {t.dtype}{list(t.shape)}")
        extra = sorted(set(by_name) - {t.name for t in exp})
        if extra:
            problems.append(f"{kind}s {_cut(extra)} are not in the serving signature "
                            f"{_cut([t.name for t in exp])}")
    return problems


# -------------------------------------------------------------------------- latency


@dataclass(frozen=True)
class InfraPolicy:
    """Latency budget: candidate p99 <= max_latency_ratio x champion p99 + latency_slack_ms.

    Without a champion only ``max_p99_ms`` (if set) applies.  ``runs`` batch-1 calls per model,
    interleaved, in ``rounds`` equal rounds; the p99 reported is the median of the rounds' p99s, so one
    scheduling hiccup on a busy machine moves one round, not the verdict.  Measurement stops early
    after ``max_seconds`` (both bounds hold).
    """

    max_latency_ratio: float = 1.5
    latency_slack_ms: float = 0.25
    max_p99_ms: float | None = None
    runs: int = 500
    rounds: int = 5
    warmup: int = 20
    max_seconds: float = 10.0
    check_rows: int = 64


@dataclass(frozen=True)
class InfraReport:
    passed: bool
    reasons: tuple[str, ...]
    p99_ms: float | None
    champion_p99_ms: float | None
    latency_ratio: float | None
    runs: int
    outputs: dict  # name -> {"dtype": ..., "shape": [...]} as run on the check rows

    def to_dict(self) -> dict:
        return asdict(self)


def robust_p99_ms(samples: list[float], rounds: int) -> float:
    """Median over ``rounds`` consecutive chunks of each chunk's p99, in milliseconds."""
    chunks = [c for c in np.array_split(np.asarray(samples), max(1, min(int(rounds), len(samples)))) if len(c)]
    return float(np.median([np.percentile(c, 99) for c in chunks])) * 1e3


def batch1_latency(sessions: list, feeds: list[dict], runs: int, warmup: int, max_seconds: float) -> list[list[float]]:
    """Batch-1 latencies (seconds) of each session, interleaved call by call over the same feeds."""
    times = [[] for _ in sessions]
    for i in range(min(warmup, runs)):
        for s in sessions:
            s.run(None, feeds[i % len(feeds)])
    deadline = time.perf_counter() + max_seconds
    for i in range(runs):
        feed = feeds[i % len(feeds)]
        for s, out in zip(sessions, times):
            t0 = time.perf_counter()
            s.run(None, feed)
            out.append(time.perf_counter() - t0)
        if time.perf_counter() > deadline:
            break
    return times


def validate_infra(candidate: bytes, rows: np.ndarray, signature: ServingSignature,
                   settings: SessionSettings = SessionSettings(), champion: bytes | None = None,
                   policy: InfraPolicy = InfraPolicy()) -> InfraReport:
    """Load, signature, real-row run and latency checks; every failure is a reason in the report."""
    rows = np.asarray(rows)
    if rows.ndim != 2 or len(rows) == 0:
        raise InfraError(f"rows: shape {rows.shape}; expected real holdout rows [n >= 1, features]")
    if len(signature.inputs) != 1:
        raise InfraError(f"signature: {len(signature.inputs)} inputs; infra validation feeds one input")
    reasons = []
    try:
        session = open_session(candidate, settings, "candidate")
    except InfraError as exc:
        return InfraReport(False, (str(exc),), None, None, None, 0, {})
    reasons += signature_problems(ServingSignature.of_session(session), signature)
    inp = signature.inputs[0]
    batch = rows[: policy.check_rows].astype(inp.dtype)
    outputs = {}
    try:
        results = session.run(None, {inp.name: batch})
    except Exception as exc:  # onnxruntime's own exception types
        return InfraReport(False, (*reasons, f"candidate failed on {len(batch)} holdout rows: {_cut(str(exc))}"),
                           None, None, None, 0, {})
    want = {t.name: t for t in signature.outputs}
    for meta, value in zip(session.get_outputs(), results):
        value = np.asarray(value)
        outputs[meta.name] = {"dtype": str(value.dtype), "shape": list(value.shape)}
        exp = want.get(meta.name)
        if exp is None:
            continue
        expected_shape = (len(batch), *exp.shape[1:])
        if str(value.dtype) != exp.dtype or not _shape_fits(value.shape, expected_shape):
            reasons.append(f"output {meta.name!r} on {len(batch)} rows is {value.dtype}{list(value.shape)}; expected "
                           f"{exp.dtype}{[d if d is not None else 'any' for d in expected_shape]}")
        elif value.dtype.kind == "f" and not np.isfinite(value).all():
            reasons.append(f"output {meta.name!r} has NaN or inf on real holdout rows; expected finite values")
    sessions, names = [session], ["candidate"]
    if champion is not None:
        try:
            sessions.append(open_session(champion, settings, "champion"))
        except InfraError as exc:
            reasons.append(f"latency baseline unavailable: {exc}")
    feeds = [{inp.name: batch[i:i + 1]} for i in range(len(batch))]
    times = batch1_latency(sessions, feeds, int(policy.runs), int(policy.warmup), float(policy.max_seconds))
    p99 = robust_p99_ms(times[0], policy.rounds)
    champ_p99 = robust_p99_ms(times[1], policy.rounds) if len(times) > 1 else None
    ratio = p99 / champ_p99 if champ_p99 else None
    if champ_p99 is not None:
        limit = policy.max_latency_ratio * champ_p99 + policy.latency_slack_ms
        if p99 > limit:
            reasons.append(f"p99 latency at batch 1 is {p99:.3f} ms; budget {limit:.3f} ms "
                           f"({policy.max_latency_ratio:g} x champion's {champ_p99:.3f} ms + {policy.latency_slack_ms:g} ms)")
    if policy.max_p99_ms is not None and p99 > policy.max_p99_ms:
        reasons.append(f"p99 latency at batch 1 is {p99:.3f} ms; expected at most {policy.max_p99_ms:g} ms")
    return InfraReport(not reasons, tuple(reasons), p99, champ_p99, ratio, len(times[0]), outputs)


__all__ = ["InfraError", "InfraPolicy", "InfraReport", "ServingSignature", "SessionSettings", "TensorSig",
           "batch1_latency", "open_session", "robust_p99_ms", "signature_problems", "validate_infra"]
