"""The one implementation of derived features, shared by serving (edge) and training (cloud).

A definition is compiled once into a ``Plan`` (the native kernel's int64 description and the
layout of one entity's float64 *record*).  ``compute``, ``serve``, ``update_with_row`` and
``update_with_label`` work on one entity's record; ``FeatureState`` (edge) and ``replay``
(training data, backfill) both go through them, so the two cannot drift apart.

Point in time: a vector for a request at ``t`` reads the current row (raw inputs, the newest
value of ``delta``/``dev``), rows that were pushed before it, and labels for events strictly
before ``t`` that were pushed before it; the request's own label and anything later never.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from edgeloop.kernels import features as _k

from .definition import COLUMN_OPS, FeatureDefinition
from .errors import FeatureError, StateError
from .online import OnlineLayout

_OP_CODES = {
    "lag": _k.OP_LAG, "delta": _k.OP_DELTA, "mean": _k.OP_MEAN, "std": _k.OP_STD, "dev": _k.OP_DEV,
    "since_last": _k.OP_SINCE_LAST, "label_lag": _k.OP_LABEL_LAG, "label_mean": _k.OP_LABEL_MEAN,
}
_MAX_COUNT = float(2**53)  # counters are exact in float64 below this
#: Labels kept beyond the longest label window, so that a few labels for events not yet served
#: (clock skew, a labeller ahead of the stream) cannot push out the ones a request may see.
LABEL_SLACK = 8


class Served(NamedTuple):
    """A feature vector (float32: raw inputs then derived features) and how complete its state was."""

    vector: np.ndarray
    cold: bool  # the entity had no row before this one
    partial: bool  # some window had fewer values than its k (defaults or shrunken windows used)


class Plan:
    """A definition compiled for the kernels: which columns are kept, ring sizes, record layout.

    ``H`` = longest column window (rows kept per entity), ``C`` = columns kept, ``L`` = longest
    label window (labels kept per entity).
    """

    def __init__(self, definition: FeatureDefinition) -> None:
        if not isinstance(definition, FeatureDefinition):
            raise TypeError(f"definition must be a FeatureDefinition, got {type(definition).__name__}")
        self.definition = definition
        self.digest = definition.digest
        self.n_inputs = len(definition.inputs)
        self.width = definition.width
        cols: list[str] = []
        for spec in definition.features:
            if spec.op in COLUMN_OPS and spec.col not in cols:
                cols.append(spec.col)
        self.columns = tuple(cols)
        self.H = max((s.k for s in definition.features if s.op in COLUMN_OPS), default=0)
        self.C = len(cols)
        longest = max((s.k for s in definition.features if s.op.startswith("label_")), default=0)
        self.L = longest + LABEL_SLACK if longest else 0
        codes = [self.H, self.C, self.L, len(definition.features), self.n_inputs]
        codes += [definition.inputs.index(c) for c in cols]
        for s in definition.features:
            slot = cols.index(s.col) if s.op in COLUMN_OPS else -1
            codes += [_OP_CODES[s.op], slot, s.k or 0]
        self.codes = np.array(codes, dtype=np.int64)
        self.defaults = np.array([np.nan if s.default is None else s.default for s in definition.features],
                                 dtype=np.float64)
        #: the kernel's part of an entity's record; the online head (if declared) follows it
        self.kernel_len = _k.record_length(self.H, self.C, self.L)
        self.online = OnlineLayout(definition.online, self.width) if definition.online is not None else None
        self.record_len = self.kernel_len + (self.online.length if self.online is not None else 0)
        self.codes.flags.writeable = False
        self.defaults.flags.writeable = False
        self._blank = self.new_record()
        self._blank.flags.writeable = False
        #: the plan checked once for the per-request path (``FeatureState.serve_into``)
        self.kernel = _k.Kernel(self.codes, self.defaults)

    def new_record(self) -> np.ndarray:
        """The state of an entity never seen: no rows, no labels."""
        rec = np.zeros(self.record_len, dtype=np.float64)
        rec[_k.SLOT_VERSION] = _k.RECORD_VERSION
        return rec

    def kpart(self, rec: np.ndarray) -> np.ndarray:
        """The kernel's part of a record (a view; the record itself without an online head)."""
        return rec if self.online is None else rec[: self.kernel_len]

    def head(self, rec: np.ndarray) -> np.ndarray:
        """The online head's block of a record (a view)."""
        return rec[self.kernel_len:]

    @property
    def blank(self) -> np.ndarray:
        """A shared read-only cold record (for computing without keeping state)."""
        return self._blank

    def check_record(self, rec: np.ndarray) -> None:
        """Raise ``StateError`` unless ``rec`` is a consistent record for this plan (untrusted input)."""
        if not isinstance(rec, np.ndarray) or rec.dtype != np.float64 or rec.ndim != 1:
            raise StateError("record", getattr(rec, "dtype", type(rec).__name__), "a 1-D float64 record")
        if rec.shape[0] != self.record_len:
            raise StateError("record", f"{rec.shape[0]} values", f"{self.record_len} values for this definition")
        if not np.isfinite(rec).all():
            raise StateError("record", "non-finite values", "finite values only")
        if self.online is not None:
            self.online.check(rec[self.kernel_len:])
            rec = rec[: self.kernel_len]
        h = rec[: _k.HEADER_SLOTS]
        if h[_k.SLOT_VERSION] != _k.RECORD_VERSION:
            raise StateError("record.version", h[_k.SLOT_VERSION], f"{_k.RECORD_VERSION}")
        for slot, name in ((_k.SLOT_SEEN, "seen"), (_k.SLOT_LABELS_SEEN, "labels_seen"), (_k.SLOT_ROWS, "rows"),
                           (_k.SLOT_HEAD, "head"), (_k.SLOT_LABELS, "labels")):
            if not (0 <= h[slot] <= _MAX_COUNT and h[slot] == int(h[slot])):
                raise StateError(f"record.{name}", h[slot], "a whole number >= 0")
        seen, rows, head, labels = (int(h[s]) for s in (_k.SLOT_SEEN, _k.SLOT_ROWS, _k.SLOT_HEAD, _k.SLOT_LABELS))
        if rows != min(seen, self.H):
            raise StateError("record.rows", rows, f"min(rows seen, {self.H}) = {min(seen, self.H)}")
        if head != (seen % self.H if self.H else 0):
            raise StateError("record.head", head, f"rows seen mod {self.H} = {seen % self.H if self.H else 0}")
        if seen == 0 and h[_k.SLOT_LAST_T] != 0.0:
            raise StateError("record.last_t", h[_k.SLOT_LAST_T], "0 for an entity with no rows")
        if labels > self.L or labels > h[_k.SLOT_LABELS_SEEN]:
            raise StateError("record.labels", labels, f"at most {self.L} and at most the labels seen")
        if h[_k.HEADER_SLOTS - 1] != 0.0:
            raise StateError("record.reserved", h[_k.HEADER_SLOTS - 1], "0")
        start = _k.HEADER_SLOTS + self.H * self.C
        ts = rec[start: start + labels]
        if labels > 1 and not (np.diff(ts) > 0).all():
            raise StateError("record.label_times", ts[:8].tolist(), "strictly increasing label timestamps")
        if (rec[start + labels: start + self.L] != 0).any() or (rec[start + self.L + labels:] != 0).any():
            raise StateError("record.labels", "values past the kept labels", "zeros past the kept labels")


def _row_error(plan: Plan, row, t: float, exc: ValueError) -> FeatureError:
    """The kernel refused a row: name the input (or the timestamp) that was wrong."""
    values = np.asarray(row)
    if values.size != plan.n_inputs or values.ndim not in (1, 2):
        return FeatureError("request", "row", f"shape {values.shape}",
                            f"{plan.n_inputs} values: {', '.join(plan.definition.inputs)}")
    values = values.reshape(-1)
    if not np.isfinite(t):
        return FeatureError("request", "timestamp", t, "a finite number of seconds")
    for col in plan.columns:
        value = values[plan.definition.inputs.index(col)]
        if not np.isfinite(value):
            return FeatureError("request", col, float(value), "a finite number (it enters the entity's history)")
    return FeatureError("request", "row", str(exc), "a row the feature kernel accepts")


def compute(plan: Plan, record: np.ndarray, row, t: float) -> Served:
    """The vector for a request (raw ``row`` at time ``t``) given the entity's state; state unchanged."""
    row, t = _k.as_row(row, plan.n_inputs), request_time(t)
    out = np.empty(plan.width, dtype=np.float32)
    try:
        flags = _k.compute(plan.kpart(record), plan.codes, plan.defaults, row, t, out)
    except ValueError as exc:
        raise _row_error(plan, row, t, exc) from None
    return Served(out, bool(flags & _k.FLAG_COLD), bool(flags & _k.FLAG_PARTIAL))


def serve(plan: Plan, record: np.ndarray, row, t: float) -> Served:
    """``compute`` then ``update_with_row``, in one kernel call: what the edge does per request."""
    row, t = _k.as_row(row, plan.n_inputs), request_time(t)
    out = np.empty(plan.width, dtype=np.float32)
    try:
        flags = _k.serve(plan.kpart(record), plan.codes, plan.defaults, row, t, out)
    except ValueError as exc:
        raise _row_error(plan, row, t, exc) from None
    return Served(out, bool(flags & _k.FLAG_COLD), bool(flags & _k.FLAG_PARTIAL))


def update_with_row(plan: Plan, record: np.ndarray, row, t: float) -> None:
    """The served row enters the entity's history (after the vector was computed)."""
    row, t = _k.as_row(row, plan.n_inputs), request_time(t)
    try:
        _k.push_row(plan.kpart(record), plan.codes, row, t)
    except ValueError as exc:
        raise _row_error(plan, row, t, exc) from None


def update_with_label(plan: Plan, record: np.ndarray, label: float, timestamp: float) -> bool:
    """A (late) label for the entity's event at ``timestamp``; True when kept.

    Labels are kept in timestamp order (the newest L); a second label for the same timestamp
    replaces the first (uploads may be retried), one older than a full buffer is dropped.
    """
    label, timestamp = label_args(label, timestamp)
    return _k.push_label(plan.kpart(record), plan.codes, timestamp, label) != _k.LABEL_DROPPED


def label_args(label, timestamp) -> tuple[float, float]:
    """A label and its event's timestamp as finite floats, or ``FeatureError`` naming the bad one."""
    for field, value in (("label", label), ("timestamp", timestamp)):
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise FeatureError("label", field, value, "a number") from None
        if not math.isfinite(number):
            raise FeatureError("label", field, value, "a finite number")
    return float(label), float(timestamp)


def request_time(t) -> float:
    """A request's timestamp (seconds) as a float, or ``FeatureError`` (finiteness is checked by the kernel)."""
    try:
        return float(t)
    except (TypeError, ValueError):
        raise FeatureError("request", "timestamp", t, "a finite number of seconds") from None
