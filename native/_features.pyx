"""Derived features over one entity's recent history: the per-request hot path of the feature store.

One entity's state is a flat float64 *record* (so it can be snapshotted, exported and checked as
plain numbers, with no pickle):

    [0, HEADER)                    header: version, retained rows, ring head, last event time,
                                   kept labels, rows seen, labels seen, reserved
    [HEADER, +H*C)                 ring of the last H rows, C stored columns each (row-major)
    [.., +L)                       timestamps of the kept labels, ascending
    [.., +L)                       the kept labels, in the same order

A *plan* (int64) describes the definition: ``[H, C, L, F, n_in, cols[C], (op, slot, k)[F]]``;
``defaults`` (float64, F) holds each feature's declared default, NaN where none was declared.
Both are built and checked by ``edgeloop.features``; the checks here guard memory safety
(lengths and ranges) so that a wrong argument raises instead of reading out of bounds.

Semantics (``x`` = the current row's value, ``prev(j)`` = the j-th previous row, newest first):
lag = prev(k); delta = x - prev(k); mean/std = over prev(1..k) (population std); dev = x - mean;
since_last = t - last event time (>= 0); label_lag = k-th newest label with timestamp < t;
label_mean = mean of the k newest such labels.  With fewer than k values, the window shrinks to
what is there (lag takes the oldest one) and the vector is *partial*; with none, the declared
default is used, else x for lag/mean and 0 for the others.
"""
cimport numpy as cnp
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from cpython.tuple cimport PyTuple_GET_ITEM, PyTuple_GET_SIZE
from cpython.unicode cimport PyUnicode_DecodeUTF8
from libc.math cimport sqrt, isfinite, isnan
from libc.stdint cimport int64_t, uint32_t, uint64_t
from libc.string cimport memcmp, memcpy

cnp.import_array()

# Header slots of a record; P_FIXED = the fixed part of a plan (H, C, L, F, n_in).
cdef enum:
    HEADER = 8
    V_VERSION = 0
    V_ROWS = 1
    V_HEAD = 2
    V_LAST_T = 3
    V_LABELS = 4
    V_SEEN = 5
    V_LABELS_SEEN = 6
    P_FIXED = 5

RECORD_VERSION = 1.0
HEADER_SLOTS = HEADER
SLOT_VERSION = V_VERSION
SLOT_ROWS = V_ROWS
SLOT_HEAD = V_HEAD
SLOT_LAST_T = V_LAST_T
SLOT_LABELS = V_LABELS
SLOT_SEEN = V_SEEN
SLOT_LABELS_SEEN = V_LABELS_SEEN

# Feature operations (plan codes), flags returned with a vector, push_label results.
cdef enum:
    K_LAG = 1
    K_DELTA = 2
    K_MEAN = 3
    K_STD = 4
    K_DEV = 5
    K_SINCE_LAST = 6
    K_LABEL_LAG = 7
    K_LABEL_MEAN = 8
    K_COLD = 1
    K_PARTIAL = 2
    K_DROPPED = 0
    K_INSERTED = 1
    K_REPLACED = 2

OP_LAG = K_LAG
OP_DELTA = K_DELTA
OP_MEAN = K_MEAN
OP_STD = K_STD
OP_DEV = K_DEV
OP_SINCE_LAST = K_SINCE_LAST
OP_LABEL_LAG = K_LABEL_LAG
OP_LABEL_MEAN = K_LABEL_MEAN
FLAG_COLD = K_COLD
FLAG_PARTIAL = K_PARTIAL
LABEL_DROPPED = K_DROPPED
LABEL_INSERTED = K_INSERTED
LABEL_REPLACED = K_REPLACED


cdef inline Py_ssize_t _record_len(Py_ssize_t H, Py_ssize_t C, Py_ssize_t L) noexcept nogil:
    return HEADER + H * C + 2 * L


def record_length(Py_ssize_t H, Py_ssize_t C, Py_ssize_t L):
    """Number of float64 slots in a record for ring size H, C stored columns, L kept labels."""
    if H < 0 or C < 0 or L < 0:
        raise ValueError(f"H, C and L must be >= 0, got {H}, {C}, {L}")
    return _record_len(H, C, L)


cdef enum:
    MAX_IN = 256  # raw inputs per row (the definition's bound); rows are copied to the stack


cdef void* _data(object a, int typenum, int ndim, str name, bint writable) except NULL:
    """Data pointer of a C-contiguous ndarray of the given type and rank (cheaper than a memoryview)."""
    if not cnp.PyArray_Check(a):
        raise TypeError(f"{name} must be a numpy array, got {type(a).__name__}")
    cdef cnp.ndarray arr = <cnp.ndarray>a
    if cnp.PyArray_TYPE(arr) != typenum or cnp.PyArray_NDIM(arr) != ndim or not cnp.PyArray_IS_C_CONTIGUOUS(arr):
        raise ValueError(f"{name} must be a C-contiguous {ndim}-D array of {cnp.PyArray_DescrFromType(typenum)}, "
                         f"got {a.dtype} with shape {a.shape}")
    if writable and not cnp.PyArray_ISWRITEABLE(arr):
        raise ValueError(f"{name} must be writeable")
    return cnp.PyArray_DATA(arr)


cdef struct Plan:
    Py_ssize_t H, C, L, F, n_in, rec_len
    const int64_t* cols    # C raw-input indexes
    const int64_t* spec    # F x (op, slot, k)


cdef int _plan(object plan, Plan* p) except -1:
    """Read and check a plan: every index it holds must stay inside the record and the row."""
    cdef const int64_t* q = <const int64_t*>_data(plan, cnp.NPY_INT64, 1, "plan", False)
    cdef Py_ssize_t n = cnp.PyArray_DIM(<cnp.ndarray>plan, 0), c, f, op, slot, k
    if n < P_FIXED:
        raise ValueError(f"plan must hold at least {P_FIXED} values, got {n}")
    p.H = q[0]
    p.C = q[1]
    p.L = q[2]
    p.F = q[3]
    p.n_in = q[4]
    if p.H < 0 or p.C < 0 or p.L < 0 or p.F < 0 or p.n_in < 0 or p.n_in > MAX_IN or p.H > 1 << 20 or p.L > 1 << 20 \
            or p.C > MAX_IN or p.F > 1 << 20:
        raise ValueError(f"plan sizes out of range: H={p.H} C={p.C} L={p.L} F={p.F} n_in={p.n_in}")
    if n != P_FIXED + p.C + 3 * p.F:
        raise ValueError(f"plan length {n} does not match C={p.C}, F={p.F} (expected {P_FIXED + p.C + 3 * p.F})")
    p.cols = q + P_FIXED
    p.spec = q + P_FIXED + p.C
    p.rec_len = _record_len(p.H, p.C, p.L)
    for c in range(p.C):
        if p.cols[c] < 0 or p.cols[c] >= p.n_in:
            raise ValueError(f"plan column {c} maps to input {p.cols[c]}, outside 0..{p.n_in - 1}")
    for f in range(p.F):
        op = p.spec[3 * f]
        slot = p.spec[3 * f + 1]
        k = p.spec[3 * f + 2]
        if op < K_LAG or op > K_LABEL_MEAN:
            raise ValueError(f"plan feature {f}: unknown op {op}")
        if op <= K_DEV and (slot < 0 or slot >= p.C or k < 1 or k > p.H):
            raise ValueError(f"plan feature {f}: column slot {slot} / k {k} outside the record (C={p.C}, H={p.H})")
        if op >= K_LABEL_LAG and (k < 1 or k > p.L):
            raise ValueError(f"plan feature {f}: k {k} outside 1..{p.L}")
    return 0


cdef double* _record(object rec, const Plan* p, bint writable) except NULL:
    """The record's data, after checking its length and the header fields used as indexes."""
    cdef double* r = <double*>_data(rec, cnp.NPY_FLOAT64, 1, "record", writable)
    if cnp.PyArray_DIM(<cnp.ndarray>rec, 0) != p.rec_len:
        raise ValueError(f"record length {cnp.PyArray_DIM(<cnp.ndarray>rec, 0)} does not match the plan "
                         f"(expected {p.rec_len})")
    if not (r[V_ROWS] >= 0 and r[V_ROWS] <= p.H and r[V_HEAD] >= 0 and (r[V_HEAD] < p.H or r[V_HEAD] == 0)
            and r[V_LABELS] >= 0 and r[V_LABELS] <= p.L):
        raise ValueError("record header is out of range for this plan (rows, head or labels)")
    return r


cdef int _row(object row, const Plan* p, double t, double* buf) except -1:
    """Copy a float64/float32 row (1-D, or a batch of one row) into ``buf``; t and kept columns must be finite."""
    if not cnp.PyArray_Check(row):
        raise TypeError(f"row must be a numpy array, got {type(row).__name__}")
    cdef cnp.ndarray arr = <cnp.ndarray>row
    cdef int nd = cnp.PyArray_NDIM(arr), typ = cnp.PyArray_TYPE(arr)
    cdef Py_ssize_t i, c
    if not ((nd == 1 and cnp.PyArray_DIM(arr, 0) == p.n_in)
            or (nd == 2 and cnp.PyArray_DIM(arr, 0) == 1 and cnp.PyArray_DIM(arr, 1) == p.n_in)) \
            or not cnp.PyArray_IS_C_CONTIGUOUS(arr) or (typ != cnp.NPY_FLOAT64 and typ != cnp.NPY_FLOAT32):
        raise ValueError(f"row must be {p.n_in} float32/float64 values (1-D, or one row of a batch), "
                         f"got {row.dtype} with shape {row.shape}")
    cdef const double* d64
    cdef const float* d32
    if typ == cnp.NPY_FLOAT64:
        d64 = <const double*>cnp.PyArray_DATA(arr)
        for i in range(p.n_in):
            buf[i] = d64[i]
    else:
        d32 = <const float*>cnp.PyArray_DATA(arr)
        for i in range(p.n_in):
            buf[i] = d32[i]
    if not isfinite(t):
        raise ValueError(f"timestamp must be finite, got {t}")
    for c in range(p.C):
        if not isfinite(buf[p.cols[c]]):
            raise ValueError(f"input {p.cols[c]} must be finite (it enters the history), got {buf[p.cols[c]]}")
    return 0


cdef inline double _prev(const double* rec, Py_ssize_t head, Py_ssize_t H, Py_ssize_t C,
                         Py_ssize_t slot, Py_ssize_t j) noexcept nogil:
    """Value of kept column ``slot`` in the j-th previous row (j >= 1)."""
    cdef Py_ssize_t pos = head - j
    if pos < 0:
        pos += H
    return rec[HEADER + pos * C + slot]


cdef int _compute(const double* rec, const Plan* p, const double* defaults, const double* row, double t,
                  float* out) noexcept nogil:
    cdef Py_ssize_t H = p.H, C = p.C, L = p.L
    cdef Py_ssize_t n = <Py_ssize_t>rec[V_ROWS], head = <Py_ssize_t>rec[V_HEAD]
    cdef Py_ssize_t v = <Py_ssize_t>rec[V_LABELS]
    cdef Py_ssize_t lts = HEADER + H * C, lval = lts + L
    cdef Py_ssize_t i, f, j, m, op, slot, k
    cdef double x, acc, mu, d, val, dflt
    cdef int flags = 0
    if rec[V_SEEN] == 0:
        flags |= K_COLD
    for i in range(p.n_in):
        out[i] = <float>row[i]
    # labels visible to a request at t: those labelling an event strictly before t (a prefix)
    while v > 0 and not (rec[lts + v - 1] < t):
        v -= 1
    for f in range(p.F):
        op = p.spec[3 * f]
        slot = p.spec[3 * f + 1]
        k = p.spec[3 * f + 2]
        dflt = defaults[f]
        if op <= K_DEV:
            x = row[p.cols[slot]]
            m = n if n < k else k
            if m < k:
                flags |= K_PARTIAL
            if op == K_LAG or op == K_DELTA:
                if m == 0:
                    val = (x if op == K_LAG else 0.0) if isnan(dflt) else dflt
                else:
                    val = _prev(rec, head, H, C, slot, m)
                    if op == K_DELTA:
                        val = x - val
            elif m == 0:
                val = (x if op == K_MEAN else 0.0) if isnan(dflt) else dflt
            else:
                acc = 0.0
                for j in range(1, m + 1):
                    acc += _prev(rec, head, H, C, slot, j)
                mu = acc / m
                if op == K_MEAN:
                    val = mu
                elif op == K_DEV:
                    val = x - mu
                else:
                    acc = 0.0
                    for j in range(1, m + 1):
                        d = _prev(rec, head, H, C, slot, j) - mu
                        acc += d * d
                    val = sqrt(acc / m)
        elif op == K_SINCE_LAST:
            if rec[V_SEEN] == 0:
                flags |= K_PARTIAL
                val = 0.0 if isnan(dflt) else dflt
            else:
                val = t - rec[V_LAST_T]
                if val < 0.0:
                    val = 0.0
        else:
            m = v if v < k else k
            if m < k:
                flags |= K_PARTIAL
            if m == 0:
                val = 0.0 if isnan(dflt) else dflt
            elif op == K_LABEL_LAG:
                val = rec[lval + v - m]
            else:
                acc = 0.0
                for j in range(v - m, v):
                    acc += rec[lval + j]
                val = acc / m
        out[p.n_in + f] = <float>val
    return flags


cdef void _push_row(double* rec, const Plan* p, const double* row, double t) noexcept nogil:
    cdef Py_ssize_t c, head = <Py_ssize_t>rec[V_HEAD]
    if p.H > 0:
        for c in range(p.C):
            rec[HEADER + head * p.C + c] = row[p.cols[c]]
        head += 1
        if head == p.H:
            head = 0
        rec[V_HEAD] = head
        if rec[V_ROWS] < p.H:
            rec[V_ROWS] += 1
    rec[V_LAST_T] = t
    rec[V_SEEN] += 1


cdef int _run(object rec, object plan, object defaults, object row, double t, object out, bint push) except -1:
    cdef Plan p
    cdef double buf[MAX_IN]
    _plan(plan, &p)
    cdef double* r = _record(rec, &p, push)
    cdef const double* dflt = <const double*>_data(defaults, cnp.NPY_FLOAT64, 1, "defaults", False)
    cdef float* o = <float*>_data(out, cnp.NPY_FLOAT32, 1, "out", True)
    if cnp.PyArray_DIM(<cnp.ndarray>defaults, 0) != p.F or cnp.PyArray_DIM(<cnp.ndarray>out, 0) != p.n_in + p.F:
        raise ValueError(f"defaults/out lengths {cnp.PyArray_DIM(<cnp.ndarray>defaults, 0)}/"
                         f"{cnp.PyArray_DIM(<cnp.ndarray>out, 0)} do not match F={p.F}, n_in={p.n_in}")
    _row(row, &p, t, buf)
    cdef int flags
    with nogil:
        flags = _compute(r, &p, dflt, buf, t, o)
        if push:
            _push_row(r, &p, buf, t)
    return flags


def compute(rec, plan, defaults, row, double t, out):
    """Write the raw row then the derived features into ``out``; return the flags (cold, partial)."""
    return _run(rec, plan, defaults, row, t, out, False)


def serve(rec, plan, defaults, row, double t, out):
    """``compute`` then ``push_row`` in one call (the per-request path); returns the flags."""
    return _run(rec, plan, defaults, row, t, out, True)


def push_row(rec, plan, row, double t):
    """Append the row's kept columns to the ring and record t as the last event time."""
    cdef Plan p
    cdef double buf[MAX_IN]
    _plan(plan, &p)
    cdef double* r = _record(rec, &p, True)
    _row(row, &p, t, buf)
    with nogil:
        _push_row(r, &p, buf, t)


def push_label(rec, plan, double ts, double label):
    """Keep ``label`` for the event at ``ts``: the L newest by timestamp, ascending; a repeat replaces.

    Returns LABEL_INSERTED, LABEL_REPLACED, or LABEL_DROPPED (no label features, or older
    than every kept label of a full buffer).
    """
    cdef Plan p
    cdef Py_ssize_t m, lo, hi, mid, i, lts, lval
    _plan(plan, &p)
    cdef double* r = _record(rec, &p, True)
    if not isfinite(ts) or not isfinite(label):
        raise ValueError(f"label and its timestamp must be finite, got label={label}, timestamp={ts}")
    r[V_LABELS_SEEN] += 1
    if p.L == 0:
        return K_DROPPED
    lts = HEADER + p.H * p.C
    lval = lts + p.L
    m = <Py_ssize_t>r[V_LABELS]
    lo = 0
    hi = m
    while lo < hi:  # first kept label with timestamp >= ts
        mid = (lo + hi) >> 1
        if r[lts + mid] < ts:
            lo = mid + 1
        else:
            hi = mid
    if lo < m and r[lts + lo] == ts:
        r[lval + lo] = label
        return K_REPLACED
    if m < p.L:
        i = m
        while i > lo:
            r[lts + i] = r[lts + i - 1]
            r[lval + i] = r[lval + i - 1]
            i -= 1
        r[lts + lo] = ts
        r[lval + lo] = label
        r[V_LABELS] = m + 1
        return K_INSERTED
    if lo == 0:
        return K_DROPPED
    for i in range(0, lo - 1):
        r[lts + i] = r[lts + i + 1]
        r[lval + i] = r[lval + i + 1]
    r[lts + lo - 1] = ts
    r[lval + lo - 1] = label
    return K_INSERTED


# -- the per-request path of a served model: a plan checked once, a one-row request read from its wire form ----

cdef class Kernel:
    """A plan and its defaults checked once, for the per-request path (``serve_out``).

    ``serve``/``compute`` above read and check the plan on every call; a node serving one definition
    keeps this instead.  It holds references to both arrays (read-only), so its pointers stay valid.
    """
    cdef Plan p
    cdef const double* dflt
    cdef readonly object codes, defaults

    def __cinit__(self, codes, defaults):
        _plan(codes, &self.p)
        self.dflt = <const double*>_data(defaults, cnp.NPY_FLOAT64, 1, "defaults", False)
        if cnp.PyArray_DIM(<cnp.ndarray>defaults, 0) != self.p.F:
            raise ValueError(f"defaults length {cnp.PyArray_DIM(<cnp.ndarray>defaults, 0)} does not match F={self.p.F}")
        self.codes = codes
        self.defaults = defaults

    @property
    def width(self):
        return self.p.n_in + self.p.F

    def serve_out(self, rec, double t, out, bint push=True):
        """``out`` (float32, C-contiguous, ``width`` values, e.g. ``[1, width]``) holds the raw row in its
        first n_in values: write the derived features after it and, with ``push``, push the row into
        ``rec``; returns the flags.  ``rec`` is only read without ``push``.
        """
        cdef double buf[MAX_IN]
        cdef double* r = _record(rec, &self.p, push)
        if not cnp.PyArray_Check(out):
            raise TypeError(f"out must be a numpy array, got {type(out).__name__}")
        cdef cnp.ndarray o = <cnp.ndarray>out
        cdef Py_ssize_t i, c, n_in = self.p.n_in
        if cnp.PyArray_TYPE(o) != cnp.NPY_FLOAT32 or not cnp.PyArray_IS_C_CONTIGUOUS(o) \
                or cnp.PyArray_SIZE(o) != n_in + self.p.F or not cnp.PyArray_ISWRITEABLE(o):
            raise ValueError(f"out must be {n_in + self.p.F} writeable C-contiguous float32 values, "
                             f"got {out.dtype} with shape {out.shape}")
        cdef float* d = <float*>cnp.PyArray_DATA(o)
        for i in range(n_in):
            buf[i] = d[i]
        if not isfinite(t):
            raise ValueError(f"timestamp must be finite, got {t}")
        for c in range(self.p.C):
            if not isfinite(buf[self.p.cols[c]]):
                raise ValueError(f"input {self.p.cols[c]} must be finite (it enters the history), "
                                 f"got {buf[self.p.cols[c]]}")
        # nogil code run with the GIL held: dropping it for a sub-microsecond kernel costs more than it
        # gives (a thread that takes it meanwhile is waited for, up to the switch interval), and the
        # entity's record is already guarded by its stripe's lock
        cdef int flags = _compute(r, &self.p, self.dflt, buf, t, d)
        if push:
            _push_row(r, &self.p, buf, t)
        return flags


cdef inline Py_ssize_t _varint(const unsigned char* s, Py_ssize_t i, Py_ssize_t n, uint64_t* v) noexcept nogil:
    """The varint at s[i] into v; the index after it, or -1 when truncated or longer than 10 bytes."""
    cdef uint64_t x = 0
    cdef int shift = 0
    cdef unsigned char b
    while i < n and shift < 64:
        b = s[i]
        i += 1
        x |= (<uint64_t>(b & 0x7F)) << shift
        if not (b & 0x80):
            v[0] = x
            return i
        shift += 7
    return -1


cdef inline Py_ssize_t _skip(const unsigned char* s, Py_ssize_t i, Py_ssize_t n, int wt) noexcept nogil:
    """The index after a field's value of wire type ``wt`` at s[i], or -1 (truncated, groups)."""
    cdef uint64_t v
    if wt == 0:
        return _varint(s, i, n, &v)
    if wt == 1:
        return i + 8 if i + 8 <= n else -1
    if wt == 5:
        return i + 4 if i + 4 <= n else -1
    if wt == 2:
        i = _varint(s, i, n, &v)
        if i < 0 or v > <uint64_t>(n - i):
            return -1
        return i + <Py_ssize_t>v
    return -1


cdef enum:
    PARAM_NONE = 0
    PARAM_STRING = 1  # InferParameter.string_param (3)
    PARAM_UINT = 2    # int64_param (2) or uint64_param (5), as the unsigned varint
    PARAM_OTHER = 3   # anything else: the checked Python path answers it
    MAX_KEY = 256     # longest routing key (UTF-8 bytes), as serving.features.MAX_KEY_BYTES

cdef uint64_t MAX_MS = (<uint64_t>1) << 53  # timestamps are Unix ms in 0..2^53


cdef int _param(const unsigned char* s, Py_ssize_t i, Py_ssize_t end, Py_ssize_t* a, Py_ssize_t* b,
                uint64_t* u) noexcept nogil:
    """The kind of the InferParameter in s[i:end] (exactly one field of its oneof); a string's bounds in a, b."""
    cdef int kind = PARAM_NONE
    cdef uint64_t tag, n
    cdef Py_ssize_t f, wt
    while i < end:
        i = _varint(s, i, end, &tag)
        if i < 0 or kind != PARAM_NONE:
            return PARAM_OTHER
        f = <Py_ssize_t>(tag >> 3)
        wt = <Py_ssize_t>(tag & 7)
        if f == 3 and wt == 2:
            i = _varint(s, i, end, &n)
            if i < 0 or n > <uint64_t>(end - i):
                return PARAM_OTHER
            a[0] = i
            b[0] = i + <Py_ssize_t>n
            i = b[0]
            kind = PARAM_STRING
        elif (f == 2 or f == 5) and wt == 0:
            i = _varint(s, i, end, u)
            if i < 0:
                return PARAM_OTHER
            kind = PARAM_UINT
        else:
            return PARAM_OTHER
    return kind


def read_one_row(bytes wire, tuple tensors, out):
    """A one-row feature request read from its wire form (a serialized ModelInferRequest), or None.

    ``tensors``: the k expected serialized input tensors (``{name, "FP32", [1]}`` in the definition's
    order).  When the request's inputs are exactly those, each with a 4-byte raw content, the k
    little-endian FP32 values go into ``out``'s first k slots (float32, C-contiguous) and the result is
    ``(entity, key, timestamp_ms)``: the ``routing_key`` parameter (str, and its UTF-8 bytes; both None
    without one) and the ``timestamp_ms`` parameter (-1 without one).  Model name, version, id, other
    parameters and requested outputs are skipped.  Anything else (typed contents, another tensor form,
    a parameter of another kind, an empty or too long key, a timestamp outside 0..2^53, a malformed
    message) returns None, for the checked path to serve or refuse with its messages.
    """
    cdef const unsigned char* s = <const unsigned char*>PyBytes_AS_STRING(wire)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(wire), i = 0, end, f, wt, j
    cdef Py_ssize_t k = PyTuple_GET_SIZE(tensors), n_inputs = 0, n_raw = 0
    cdef Py_ssize_t ka, kb, va, vb, sa = 0, sb = 0, ea = -1, eb = -1
    cdef uint64_t tag, length, u = 0, ms = <uint64_t>-1
    cdef bint has_key, has_value, seen_key = False, seen_ms = False
    cdef int kind
    cdef uint32_t bits
    cdef float value
    cdef object expected
    if not cnp.PyArray_Check(out):
        raise TypeError(f"out must be a numpy array, got {type(out).__name__}")
    cdef cnp.ndarray o = <cnp.ndarray>out
    if cnp.PyArray_TYPE(o) != cnp.NPY_FLOAT32 or not cnp.PyArray_IS_C_CONTIGUOUS(o) or cnp.PyArray_SIZE(o) < k \
            or not cnp.PyArray_ISWRITEABLE(o):
        raise ValueError(f"out must hold at least {k} writeable C-contiguous float32 values")
    cdef float* d = <float*>cnp.PyArray_DATA(o)
    while i < n:
        i = _varint(s, i, n, &tag)
        if i < 0:
            return None
        f = <Py_ssize_t>(tag >> 3)
        wt = <Py_ssize_t>(tag & 7)
        if wt != 2 or f < 4 or f == 6 or f > 7:  # name, version, id, requested outputs, unknown fields
            i = _skip(s, i, n, <int>wt)
            if i < 0:
                return None
            continue
        i = _varint(s, i, n, &length)
        if i < 0 or length > <uint64_t>(n - i):
            return None
        end = i + <Py_ssize_t>length
        if f == 5:  # an input tensor: byte for byte the expected one
            if n_inputs >= k:
                return None
            expected = <object>PyTuple_GET_ITEM(tensors, n_inputs)
            if type(expected) is not bytes or PyBytes_GET_SIZE(expected) != end - i \
                    or memcmp(PyBytes_AS_STRING(expected), s + i, end - i) != 0:
                return None
            n_inputs += 1
        elif f == 7:  # a raw content: one FP32, little-endian
            if n_raw >= k or end - i != 4:
                return None
            bits = <uint32_t>s[i] | (<uint32_t>s[i + 1] << 8) | (<uint32_t>s[i + 2] << 16) | (<uint32_t>s[i + 3] << 24)
            memcpy(&value, &bits, 4)
            d[n_raw] = value
            n_raw += 1
        else:  # f == 4: a parameters map entry {1: key, 2: InferParameter}
            has_key = has_value = False
            ka = kb = va = vb = i
            j = i
            while j < end:
                j = _varint(s, j, end, &tag)
                if j < 0:
                    return None
                if (tag >> 3) in (1, 2) and (tag & 7) == 2:
                    j = _varint(s, j, end, &length)
                    if j < 0 or length > <uint64_t>(end - j):
                        return None
                    if (tag >> 3) == 1:
                        ka, kb, has_key = j, j + <Py_ssize_t>length, True
                    else:
                        va, vb, has_value = j, j + <Py_ssize_t>length, True
                    j += <Py_ssize_t>length
                else:
                    j = _skip(s, j, end, <int>(tag & 7))
                    if j < 0:
                        return None
            if has_key and kb - ka == 11 and memcmp(s + ka, b"routing_key", 11) == 0:
                if seen_key or not has_value or _param(s, va, vb, &sa, &sb, &u) != PARAM_STRING \
                        or not 0 < sb - sa <= MAX_KEY:
                    return None
                ea, eb, seen_key = sa, sb, True
            elif has_key and kb - ka == 12 and memcmp(s + ka, b"timestamp_ms", 12) == 0:
                if seen_ms or not has_value or _param(s, va, vb, &sa, &sb, &u) != PARAM_UINT or u >= MAX_MS:
                    return None
                ms, seen_ms = u, True
        i = end
    if n_inputs != k or n_raw != k:
        return None
    if not seen_key:
        return None, None, <long long>ms if seen_ms else -1
    try:
        entity = PyUnicode_DecodeUTF8(<const char*>(s + ea), eb - ea, NULL)
    except UnicodeDecodeError:
        return None
    return entity, wire[ea:eb], <long long>ms if seen_ms else -1
