"""Joint inference: rows the edge model is unsure about are answered by a bigger model elsewhere.

The servicer hands every answer of a model with an escalation policy (``ModelConfig.escalation``)
to ``Escalation.after_local`` right after the local run.  There the policy's rule is evaluated per
row on the declared output; the hard rows (up to the share cap) go in one request to the target,
sent by the ``send`` callable the node composes from the mesh (``serving`` never imports ``mesh``);
the target's rows are merged back in order.  Whatever goes wrong on the way — no target, slow,
error, an answer of the wrong shape — the local answer is returned, flagged in the response
parameters, and counted: escalation never fails a request.

Response parameters (per request): ``edgeloop_answered_by`` is ``local`` (no hard row),
``escalated`` (the target answered the hard rows), ``fallback`` (the target failed: local answer)
or ``capped`` (every hard row was over the share cap: local answer); ``edgeloop_hard_rows`` and
``edgeloop_escalated_rows`` count rows (``edgeloop_escalated_row_ids`` lists them),
``edgeloop_escalation_model`` / ``edgeloop_escalation_version`` name the model version that answered,
``edgeloop_escalation_error`` says why a fallback happened, ``edgeloop_hard_example`` marks a request
with hard rows (the training feed prefers them; ``sink`` receives each one).

Two caps keep a drifted or overloaded edge from hurting anyone: ``max_share`` (per model, a token
bucket) bounds the share of rows that escalate, so the target is not flooded; ``max_in_flight`` (per
node) bounds the escalations waiting on targets at once, since each holds a gRPC handler thread for
up to its budget.  Rows over either cap are answered locally (``capped``).
"""
from __future__ import annotations

import logging
import threading
from time import perf_counter_ns
from typing import Callable, NamedTuple

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Histogram

from edgeloop.protocol import inference_pb2
from edgeloop.protocol.codec import build_infer_request, decode_output, infer_response_to_numpy, to_raw
from edgeloop.serving.signature import SignatureError
from edgeloop.serving.stats import LATENCY_BUCKETS

log = logging.getLogger("edgeloop.serving")

#: request parameter of an escalated request: its receiver answers it itself and never escalates it again
ESCALATED = "edgeloop_escalated"
ANSWERED_BY = "edgeloop_answered_by"
HARD_ROWS = "edgeloop_hard_rows"
ESCALATED_ROWS = "edgeloop_escalated_rows"
ESCALATED_ROW_IDS = "edgeloop_escalated_row_ids"
TARGET_MODEL = "edgeloop_escalation_model"
TARGET_VERSION = "edgeloop_escalation_version"
ERROR = "edgeloop_escalation_error"
HARD_EXAMPLE = "edgeloop_hard_example"
LOCAL, ESCALATED_PATH, FALLBACK, CAPPED = "local", "escalated", "fallback", "capped"
PATHS = (LOCAL, ESCALATED_PATH, FALLBACK, CAPPED)
#: time kept back from the request's own deadline so the local answer can still reach the client:
#: a tenth of what remains, at least 5 ms and at most 100 ms (a loaded node needs more than a fixed few ms)
DEADLINE_MARGIN_S = 0.005
DEADLINE_MARGIN_SHARE = 0.1
DEADLINE_MARGIN_MAX_S = 0.1
_FLOATS = ("FP16", "FP32", "FP64")
_MAX_TEXT = 200


class TargetError(Exception):
    """No escalation target could be reached (the sender's words say why)."""


class HardExample(NamedTuple):
    """A request with rows the edge model was unsure about, for the training feed (hard-example mark)."""

    model: str
    version: str
    request_id: str
    rows: tuple[int, ...]  # the hard rows, by index in the request's batch
    path: str  # escalated | fallback | capped
    target_version: str  # the version of the target that answered ('' when none did)


# ------------------------------------------------------------------------------------ the rule
def hard_rows(policy, values: np.ndarray) -> np.ndarray:
    """A bool per row (axis 0 of ``values``): True where ``policy``'s rule says escalate; NaN rows always do."""
    v = np.asarray(values, dtype=np.float64)
    rows = v.shape[0] if v.ndim else 1
    v = v.reshape(rows, -1)
    if policy.rule == "range":  # comparisons with NaN are False and warn nothing: NaN rows are added explicitly
        out = np.isnan(v).any(axis=1)
        if policy.low is not None:
            out |= (v < policy.low).any(axis=1)
        if policy.high is not None:
            out |= (v > policy.high).any(axis=1)
        return out
    if v.shape[1] == 0:
        return np.ones(rows, dtype=bool)
    unknown = ~np.isfinite(v).all(axis=1)
    if policy.rule == "entropy":
        p = np.clip(v, 0.0, 1.0)
        entropy = -(p * np.log(np.where(p > 0, p, 1.0))).sum(axis=1)
        return unknown | (entropy > policy.threshold)
    k = v.shape[1]
    top = np.partition(v, [k - 2, k - 1], axis=1) if k > 1 else v
    top1 = top[:, -1]
    if policy.rule == "top1":
        return unknown | (top1 < policy.threshold)
    top2 = top[:, -2] if k > 1 else np.zeros(rows)
    with np.errstate(invalid="ignore"):  # inf - inf
        return unknown | (top1 - top2 < policy.threshold)


def check_escalation(policy, signature) -> None:
    """Load-time check of ``policy`` against the model's outputs; SignatureError naming the problem."""
    if policy is None:
        return
    spec = signature.output_by_name.get(policy.output)
    if spec is None:
        raise SignatureError(f"escalation.output {policy.output[:_MAX_TEXT]!r} is not an output of the model; "
                             f"expected one of {', '.join(map(repr, signature.output_names))}")
    if policy.rule == "range":
        if spec.datatype in ("BYTES", "BOOL") or spec.rank < 1:
            raise SignatureError(f"escalation.output {spec.name!r} is {spec.datatype}{list(spec.shape)}; rule 'range' "
                                 f"expects a numeric tensor with a batch (first) dimension")
        return
    if spec.datatype not in _FLOATS or spec.rank < 2 or spec.shape[-1] in (0, 1):
        raise SignatureError(f"escalation.output {spec.name!r} is {spec.datatype}{list(spec.shape)}; rule "
                             f"{policy.rule!r} expects class probabilities: a float tensor [batch, ..., classes] "
                             f"with at least 2 classes")


# ------------------------------------------------------------------------------------ the cap
class ShareBucket:
    """A token bucket fed ``share`` tokens per row evaluated, holding at most ``burst``: one token per escalated row.

    Over any stretch of traffic, escalated rows <= share x rows evaluated + burst, however fast the
    rows come, so a drifted edge model that finds every row hard cannot flood the target.
    """

    def __init__(self, share: float, burst: int) -> None:
        self.share = float(share)
        self.burst = float(burst)
        self.tokens = float(burst)
        self._lock = threading.Lock()

    def take(self, rows: int, wanted: int) -> int:
        """Feed ``rows`` evaluated rows, then take up to ``wanted`` tokens; returns how many were granted."""
        with self._lock:
            self.tokens = min(self.burst, self.tokens + self.share * rows)
            granted = min(int(wanted), int(self.tokens + 1e-9))
            self.tokens -= granted
            return granted


# ------------------------------------------------------------------------------------ metrics
class EscalationMetrics:
    """Per model and path (local, escalated, fallback, capped): requests, rows, and request latency."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        labels = ("model", "path")
        self.requests = Counter("edgeloop_escalation_requests", "Requests of models with an escalation policy, by "
                                "the path that answered them", labels, registry=self.registry)
        self.rows = Counter("edgeloop_escalation_rows", "Rows of models with an escalation policy, by the path that "
                            "answered them (local: not hard)", labels, registry=self.registry)
        self.seconds = Histogram("edgeloop_escalation_request_seconds", "Time from receiving a request to its "
                                 "answer, by path", labels, buckets=LATENCY_BUCKETS, registry=self.registry)

        self._children: dict[tuple[str, str], tuple] = {}  # labels() costs microseconds: look each up once

    def _child(self, model: str, path: str) -> tuple:
        key = (model, path)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = (self.requests.labels(model, path), self.rows.labels(model, path),
                                           self.seconds.labels(model, path))
        return child

    def record(self, model: str, path: str, rows: dict[str, int], seconds: float) -> None:
        requests, _rows, latency = self._child(model, path)
        requests.inc()
        for row_path, n in rows.items():
            if n:
                self._child(model, row_path)[1].inc(n)
        latency.observe(seconds)


# ------------------------------------------------------------------------------------ the hook
class Escalation:
    """The servicer's escalation hook: ``after_local(request, response, mv, context, t_start)``.

    ``send(policy, request, timeout_s)`` delivers the escalated request to the policy's target in
    one hop and returns its ModelInferResponse (any exception means the target failed).
    ``sink(HardExample)``, when set, receives every request with hard rows.
    """

    def __init__(self, send: Callable, registry: CollectorRegistry | None = None,
                 sink: Callable[[HardExample], None] | None = None, max_in_flight: int | None = None) -> None:
        self.send = send
        self.metrics = EscalationMetrics(registry)
        self.sink = sink
        #: escalations waiting on a target at once (each holds a handler thread up to its budget); None: no cap
        self.max_in_flight = max_in_flight
        self._slots = threading.BoundedSemaphore(max_in_flight) if max_in_flight else None
        self._buckets: dict[str, tuple[object, ShareBucket]] = {}
        self._lock = threading.Lock()

    def _bucket(self, model: str, policy) -> ShareBucket | None:
        if policy.max_share is None:
            return None
        entry = self._buckets.get(model)
        if entry is None or entry[0] != policy:  # a reload with another policy starts a fresh bucket
            with self._lock:
                entry = self._buckets.get(model)
                if entry is None or entry[0] != policy:
                    entry = self._buckets[model] = (policy, ShareBucket(policy.max_share, policy.max_burst))
        return entry[1]

    def after_local(self, request, response, mv, context, t_start: int):
        """The answer to ``request``: ``response`` (the local run) with the target's rows merged in where due."""
        params = request.parameters
        if ESCALATED in params and params[ESCALATED].bool_param:
            return response  # we are the target: answer as asked, never escalate again
        policy = mv.config.escalation
        try:
            return self._escalate(request, response, mv, policy, context, t_start)
        except Exception as exc:  # never fail a request that was answered locally
            log.exception("%s: escalation failed unexpectedly; answering locally", mv.what)
            _flag(response, FALLBACK, 0, (), error=f"internal: {type(exc).__name__}: {exc}")
            self.metrics.record(mv.name, FALLBACK, {}, (perf_counter_ns() - t_start) * 1e-9)
            return response

    def _escalate(self, request, response, mv, policy, context, t_start: int):
        index = next((i for i, t in enumerate(response.outputs) if t.name == policy.output), None)
        if index is None:  # the client asked for other outputs only: the rule has nothing to read
            _flag(response, LOCAL, 0, (), error=f"output {policy.output!r} was not requested; rule not evaluated")
            self.metrics.record(mv.name, LOCAL, {}, (perf_counter_ns() - t_start) * 1e-9)
            return response
        raws = response.raw_output_contents
        values = decode_output(response.outputs[index], raws[index] if raws else None)
        hard = hard_rows(policy, values)
        n_rows = len(hard)
        hard_ids = np.flatnonzero(hard)
        bucket = self._bucket(mv.name, policy)
        granted = len(hard_ids) if bucket is None else bucket.take(n_rows, len(hard_ids))
        send_ids, capped_ids = hard_ids[:granted], hard_ids[granted:]
        rows = {LOCAL: n_rows - len(hard_ids), CAPPED: len(capped_ids)}
        target_version, error = "", None
        if not len(hard_ids):
            path = LOCAL
        elif not len(send_ids):
            path = CAPPED
        elif self._slots is not None and not self._slots.acquire(blocking=False):
            path, rows[CAPPED] = CAPPED, len(hard_ids)
            error = (f"{self.max_in_flight} escalations already wait on their targets (this node's limit); "
                     f"answered locally")
        else:
            try:
                target = self._ask_target(request, mv, policy, send_ids, n_rows, context)
                response = merge_rows(response, target, send_ids)
                target_version = target.model_version
                path, rows[ESCALATED_PATH] = ESCALATED_PATH, len(send_ids)
            except Exception as exc:
                path, rows[FALLBACK] = FALLBACK, len(send_ids)
                error = _describe(exc)
                log.debug("%s: escalation of %d row(s) to %r fell back to the local answer: %s", mv.what,
                          len(send_ids), policy.target_model, error)
            finally:
                if self._slots is not None:
                    self._slots.release()
        _flag(response, path, len(hard_ids), send_ids if path == ESCALATED_PATH else (), error=error,
              target=policy.target_model if path == ESCALATED_PATH else None, target_version=target_version)
        self.metrics.record(mv.name, path, rows, (perf_counter_ns() - t_start) * 1e-9)
        if len(hard_ids) and self.sink is not None:
            try:
                self.sink(HardExample(mv.name, mv.version_str, request.id, tuple(int(i) for i in hard_ids), path,
                                      target_version))
            except Exception:
                log.exception("%s: hard-example sink failed", mv.what)
        return response

    def _ask_target(self, request, mv, policy, rows: np.ndarray, n_rows: int, context):
        """The target's answer to the hard ``rows`` of ``request`` (one hop, within the deadline and budget)."""
        timeout = policy.budget_ms / 1000.0
        remaining = context.time_remaining() if context is not None else None
        if remaining is not None:
            margin = min(DEADLINE_MARGIN_MAX_S, max(DEADLINE_MARGIN_S, remaining * DEADLINE_MARGIN_SHARE))
            timeout = min(timeout, remaining - margin)
            if timeout <= 0:
                raise TargetError(f"no time left of the request's deadline ({remaining * 1000:.1f} ms remained)")
        feeds, _batch = mv.signature.decode(request)
        subset = {}
        for spec in mv.signature.inputs:
            array = feeds[spec.name]
            if array.ndim == 0 or array.shape[0] != n_rows:
                raise TargetError(f"input {spec.name!r} has shape {list(array.shape)}; escalation needs every input "
                                  f"to have the output's {n_rows} rows first")
            subset[spec.name] = array[rows]
        escalated = build_infer_request(
            policy.target_model, subset, request_id=request.id,
            model_version="" if policy.target_version is None else str(policy.target_version),
            outputs=[o.name for o in request.outputs])
        escalated.parameters[ESCALATED].bool_param = True
        return self.send(policy, escalated, timeout)


def merge_rows(local, target, rows: np.ndarray):
    """``local`` with ``rows`` of every output replaced by the target's answer (same names, types, shapes)."""
    theirs = infer_response_to_numpy(target)
    datatypes = {t.name: t.datatype for t in target.outputs}
    merged = inference_pb2.ModelInferResponse()
    merged.CopyFrom(local)
    del merged.raw_output_contents[:]
    raws = local.raw_output_contents
    for i, tensor in enumerate(local.outputs):
        answer = theirs.get(tensor.name)
        if answer is None:
            raise TargetError(f"target model {target.model_name!r} answered without output {tensor.name!r}")
        if datatypes[tensor.name] != tensor.datatype:
            raise TargetError(f"target output {tensor.name!r} is {datatypes[tensor.name]}; expected {tensor.datatype}")
        mine = np.array(decode_output(tensor, raws[i] if raws else None))  # a writable copy
        if answer.shape != (len(rows),) + mine.shape[1:]:
            raise TargetError(f"target output {tensor.name!r} has shape {list(answer.shape)}; expected "
                              f"{[len(rows), *mine.shape[1:]]}")
        mine[rows] = answer
        merged.raw_output_contents.append(to_raw(mine, tensor.datatype))
    if not raws:  # typed contents in the local answer (never from this server, but keep the invariant)
        for tensor in merged.outputs:
            tensor.ClearField("contents")
    return merged


def _flag(response, path: str, n_hard: int, escalated_ids, error: str | None = None, target: str | None = None,
          target_version: str = "") -> None:
    params = response.parameters
    params[ANSWERED_BY].string_param = path
    params[HARD_ROWS].int64_param = int(n_hard)
    params[ESCALATED_ROWS].int64_param = len(escalated_ids)
    if len(escalated_ids):
        params[ESCALATED_ROW_IDS].string_param = ",".join(str(int(i)) for i in escalated_ids)
    if n_hard:
        params[HARD_EXAMPLE].bool_param = True
    if target is not None:
        params[TARGET_MODEL].string_param = target
        params[TARGET_VERSION].string_param = target_version
    if error:
        params[ERROR].string_param = error[:_MAX_TEXT]


def _describe(exc: Exception) -> str:
    """One line saying why the target failed: the gRPC status and details, else the exception's words."""
    code = getattr(exc, "code", None)
    if callable(code):
        try:
            details = exc.details() if callable(getattr(exc, "details", None)) else ""
            return f"{code().name}: {details}"[:_MAX_TEXT]
        except Exception:
            pass
    return f"{type(exc).__name__}: {exc}"[:_MAX_TEXT]


__all__ = ["ANSWERED_BY", "CAPPED", "ERROR", "ESCALATED", "ESCALATED_PATH", "ESCALATED_ROWS", "ESCALATED_ROW_IDS",
           "Escalation", "EscalationMetrics", "FALLBACK", "HARD_EXAMPLE", "HARD_ROWS", "HardExample", "LOCAL", "PATHS",
           "ShareBucket", "TARGET_MODEL", "TARGET_VERSION", "TargetError", "check_escalation", "hard_rows",
           "merge_rows"]
