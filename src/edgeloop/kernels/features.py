"""Derived features over one entity's history: the Python face of ``native/_features.pyx``.

The feature store (``edgeloop.features``) keeps each entity's state as one flat float64
*record* and describes its definition as an int64 *plan*; the layout of both is documented in
the ``.pyx``.  These functions are the per-request hot path, so they take ndarrays as they are
(raw data pointers, no memoryview set-up): ``rec`` and ``defaults`` float64, ``plan`` int64,
``out`` float32, all 1-D and C-contiguous; ``row`` float32 or float64, 1-D or a batch of one row.
Anything else raises ``ValueError``/``TypeError`` in the native entry checks, which also keep
every index inside the arrays.  ``as_row`` turns other values (lists, other dtypes) into a row.
"""
from __future__ import annotations

import numpy as np

from edgeloop._native import load

_ft = load("_features")

__all__ = [
    "RECORD_VERSION", "HEADER_SLOTS", "SLOT_VERSION", "SLOT_ROWS", "SLOT_HEAD", "SLOT_LAST_T", "SLOT_LABELS",
    "SLOT_SEEN", "SLOT_LABELS_SEEN", "OP_LAG", "OP_DELTA", "OP_MEAN", "OP_STD", "OP_DEV", "OP_SINCE_LAST",
    "OP_LABEL_LAG", "OP_LABEL_MEAN", "FLAG_COLD", "FLAG_PARTIAL", "LABEL_DROPPED", "LABEL_INSERTED",
    "LABEL_REPLACED", "record_length", "compute", "push_row", "serve", "push_label", "as_row", "Kernel",
    "read_one_row",
]

RECORD_VERSION: float = _ft.RECORD_VERSION
HEADER_SLOTS: int = _ft.HEADER_SLOTS
SLOT_VERSION: int = _ft.SLOT_VERSION
SLOT_ROWS: int = _ft.SLOT_ROWS
SLOT_HEAD: int = _ft.SLOT_HEAD
SLOT_LAST_T: int = _ft.SLOT_LAST_T
SLOT_LABELS: int = _ft.SLOT_LABELS
SLOT_SEEN: int = _ft.SLOT_SEEN
SLOT_LABELS_SEEN: int = _ft.SLOT_LABELS_SEEN

OP_LAG: int = _ft.OP_LAG
OP_DELTA: int = _ft.OP_DELTA
OP_MEAN: int = _ft.OP_MEAN
OP_STD: int = _ft.OP_STD
OP_DEV: int = _ft.OP_DEV
OP_SINCE_LAST: int = _ft.OP_SINCE_LAST
OP_LABEL_LAG: int = _ft.OP_LABEL_LAG
OP_LABEL_MEAN: int = _ft.OP_LABEL_MEAN

FLAG_COLD: int = _ft.FLAG_COLD
FLAG_PARTIAL: int = _ft.FLAG_PARTIAL
LABEL_DROPPED: int = _ft.LABEL_DROPPED
LABEL_INSERTED: int = _ft.LABEL_INSERTED
LABEL_REPLACED: int = _ft.LABEL_REPLACED

#: record_length(H, C, L): float64 slots of a record (ring of H rows x C columns, L labels).
record_length = _ft.record_length
#: compute(rec, plan, defaults, row, t, out) -> flags: raw row then derived features into out.
compute = _ft.compute
#: push_row(rec, plan, row, t): the row enters the entity's history.
push_row = _ft.push_row
#: serve(rec, plan, defaults, row, t, out) -> flags: compute then push_row, in one call.
serve = _ft.serve
#: push_label(rec, plan, ts, label) -> LABEL_*: a label for the entity's event at ts.
push_label = _ft.push_label
#: Kernel(plan, defaults): the plan checked once; .serve_out(rec, t, out, push=True) -> flags, the raw row
#: being out's first n_in values (the per-request path of a node).
Kernel = _ft.Kernel
#: read_one_row(wire, tensors, out) -> (entity, key bytes, timestamp_ms) or None: a one-row request of
#: raw FP32 inputs read from its serialized ModelInferRequest into out (see the .pyx for what falls back).
read_one_row = _ft.read_one_row


def as_row(values, n_inputs: int) -> np.ndarray:
    """A request's raw inputs as a C-contiguous float64 vector of ``n_inputs`` values.

    Accepts a 1-D vector or a (1, n) batch of one row, of any real dtype; raises ``ValueError``
    naming the shape otherwise.
    """
    arr = np.asarray(values)
    if arr.dtype != np.float64:
        if arr.dtype.kind not in "biuf":
            raise TypeError(f"row must hold real numbers, got dtype {arr.dtype}")
        arr = arr.astype(np.float64)
    if arr.ndim == 2 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 1 or arr.shape[0] != n_inputs:
        raise ValueError(f"row must be {n_inputs} values (1-D, or one row of a batch), got shape {arr.shape}")
    return arr if arr.flags.c_contiguous else np.ascontiguousarray(arr)
