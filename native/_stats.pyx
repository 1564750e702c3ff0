"""Streaming statistics for drift monitoring: histograms, moments, PSI, JS, PCA residuals.

The edge updates these on every batch, so each kernel makes one pass over the batch with
the GIL released.  Floats are float32 or float64, accumulators float64/int64.
``edgeloop.kernels.stats`` validates values (finite, sorted edges, ...); every ``def`` here
still checks the shapes it relies on, since the loops run with bounds checks off.

The histogram of a batch with up to 129 bins per feature (the common case is 10 to 20
quantile bins) is counted without a search: for every interior edge e_j of every feature it counts
the values >= e_j (``x >= e`` compares, eight features per SIMD vector), and the bin
counts are differences of those.  Wider histograms use a binary search per value.
"""
cimport numpy as cnp
from cython cimport floating
from cython.parallel cimport prange
from libc.math cimport log, sqrt, isfinite, isnan, NAN
from libc.stdint cimport int64_t
from libc.stdlib cimport malloc, free

from _blas cimport gemm as _gemm, blas_int, checked_size

cnp.import_array()

cdef extern from *:
    """
    #include <stdint.h>
    #include <stddef.h>
    #include "edgeloop_clones.h"

    /* For the 8 features f0..f0+7: cge[j*F + f] = number of rows i with x[i*F + f] >= et[j*F + f],
       nan[f] = number of NaN values.  Written with GCC/Clang vector types, so one row of the
       block is one vector (AVX-512: one register; AVX2: two; SSE2: four) and a compare gives
       0 / -1 per lane, subtracted from the counters; four edges share each load of a row. */
    #include <string.h>
    typedef double edgeloop_v8d __attribute__((vector_size(64), aligned(8), may_alias));
    typedef float edgeloop_v8f __attribute__((vector_size(32), aligned(4), may_alias));
    typedef long long edgeloop_v8i __attribute__((vector_size(64)));
    #define EDGELOOP_LOAD_f64(p) (*(const edgeloop_v8d *)(p))
    #define EDGELOOP_LOAD_f32(p) __builtin_convertvector(*(const edgeloop_v8f *)(p), edgeloop_v8d)
    #define EDGELOOP_HIST_BLOCK(NAME, T, LOAD)                                                    \\
    EDGELOOP_CLONES static void NAME(const T *restrict x, ptrdiff_t n, ptrdiff_t F, ptrdiff_t f0,  \\
                                     const double *restrict et, ptrdiff_t J,                      \\
                                     int64_t *restrict cge, int64_t *restrict nan) {              \\
        const edgeloop_v8i zero = {0};                                                            \\
        ptrdiff_t j = 0;                                                                          \\
        for (; j + 4 <= J; j += 4) {                                                              \\
            edgeloop_v8d e0 = EDGELOOP_LOAD_f64(et + j * F + f0);                                 \\
            edgeloop_v8d e1 = EDGELOOP_LOAD_f64(et + (j + 1) * F + f0);                           \\
            edgeloop_v8d e2 = EDGELOOP_LOAD_f64(et + (j + 2) * F + f0);                           \\
            edgeloop_v8d e3 = EDGELOOP_LOAD_f64(et + (j + 3) * F + f0);                           \\
            edgeloop_v8i a0 = zero, a1 = zero, a2 = zero, a3 = zero;                              \\
            for (ptrdiff_t i = 0; i < n; i++) {                                                   \\
                edgeloop_v8d v = LOAD(x + i * F + f0);                                            \\
                a0 -= (edgeloop_v8i)(v >= e0); a1 -= (edgeloop_v8i)(v >= e1);                     \\
                a2 -= (edgeloop_v8i)(v >= e2); a3 -= (edgeloop_v8i)(v >= e3);                     \\
            }                                                                                     \\
            memcpy(cge + j * F + f0, &a0, 64); memcpy(cge + (j + 1) * F + f0, &a1, 64);           \\
            memcpy(cge + (j + 2) * F + f0, &a2, 64); memcpy(cge + (j + 3) * F + f0, &a3, 64);     \\
        }                                                                                         \\
        for (; j < J; j++) {                                                                      \\
            edgeloop_v8d e0 = EDGELOOP_LOAD_f64(et + j * F + f0);                                 \\
            edgeloop_v8i a0 = zero;                                                               \\
            for (ptrdiff_t i = 0; i < n; i++) a0 -= (edgeloop_v8i)(LOAD(x + i * F + f0) >= e0);   \\
            memcpy(cge + j * F + f0, &a0, 64);                                                    \\
        }                                                                                         \\
        edgeloop_v8i nn = zero;                                                                   \\
        for (ptrdiff_t i = 0; i < n; i++) {                                                       \\
            edgeloop_v8d v = LOAD(x + i * F + f0);                                                \\
            nn -= (edgeloop_v8i)(v != v);                                                         \\
        }                                                                                         \\
        memcpy(nan + f0, &nn, 64);                                                                \\
    }
    EDGELOOP_HIST_BLOCK(edgeloop_hist_block_f64, double, EDGELOOP_LOAD_f64)
    EDGELOOP_HIST_BLOCK(edgeloop_hist_block_f32, float, EDGELOOP_LOAD_f32)

    /* The same for the last w < 8 features (scalar). */
    #define EDGELOOP_HIST_TAIL(NAME, T)                                                           \\
    static void NAME(const T *restrict x, ptrdiff_t n, ptrdiff_t F, ptrdiff_t f0, ptrdiff_t w,    \\
                     const double *restrict et, ptrdiff_t J,                                      \\
                     int64_t *restrict cge, int64_t *restrict nan) {                              \\
        for (ptrdiff_t k = 0; k < w; k++) {                                                       \\
            int64_t nn = 0;                                                                       \\
            for (ptrdiff_t j = 0; j < J; j++) cge[j * F + f0 + k] = 0;                            \\
            for (ptrdiff_t i = 0; i < n; i++) {                                                   \\
                double v = (double)x[i * F + f0 + k];                                             \\
                nn += v != v;                                                                     \\
                for (ptrdiff_t j = 0; j < J; j++) cge[j * F + f0 + k] += v >= et[j * F + f0 + k]; \\
            }                                                                                     \\
            nan[f0 + k] = nn;                                                                     \\
        }                                                                                         \\
    }
    EDGELOOP_HIST_TAIL(edgeloop_hist_tail_f64, double)
    EDGELOOP_HIST_TAIL(edgeloop_hist_tail_f32, float)
    """
    void edgeloop_hist_block_f64(const double* x, Py_ssize_t n, Py_ssize_t F, Py_ssize_t f0,
                                 const double* et, Py_ssize_t J, int64_t* cge, int64_t* nan) nogil
    void edgeloop_hist_block_f32(const float* x, Py_ssize_t n, Py_ssize_t F, Py_ssize_t f0,
                                 const double* et, Py_ssize_t J, int64_t* cge, int64_t* nan) nogil
    void edgeloop_hist_tail_f64(const double* x, Py_ssize_t n, Py_ssize_t F, Py_ssize_t f0, Py_ssize_t w,
                                const double* et, Py_ssize_t J, int64_t* cge, int64_t* nan) nogil
    void edgeloop_hist_tail_f32(const float* x, Py_ssize_t n, Py_ssize_t F, Py_ssize_t f0, Py_ssize_t w,
                                const double* et, Py_ssize_t J, int64_t* cge, int64_t* nan) nogil

# Above this many values per batch the histogram splits its features across threads.
cdef Py_ssize_t PARALLEL_MIN_VALUES = 1 << 17
# Up to this many interior edges per feature the histogram counts by compares, not search.
cdef Py_ssize_t LINEAR_MAX_EDGES = 128


cdef inline Py_ssize_t _bin_of(double v, const double* e, Py_ssize_t n_edges) noexcept nogil:
    """Bin of a non-NaN ``v``: (number of edges <= v) - 1, clamped to [0, n_edges - 2].

    The same bins as ``np.histogram`` (half-open, the last one closed); values below the
    first edge land in bin 0 and values above the last edge (and +-inf) in the end bins.
    """
    cdef Py_ssize_t lo = 0, hi = n_edges, mid
    while lo < hi:  # first index with e[idx] > v
        mid = (lo + hi) >> 1
        if e[mid] <= v:
            lo = mid + 1
        else:
            hi = mid
    lo -= 1
    if lo < 0:
        return 0
    if lo > n_edges - 2:
        return n_edges - 2
    return lo


cdef void _hist_feature(const floating* x, Py_ssize_t n, Py_ssize_t F, Py_ssize_t f,
                        const double* e, Py_ssize_t n_edges, int64_t* counts, int64_t* nan_count) noexcept nogil:
    cdef Py_ssize_t i
    cdef double v
    for i in range(n):
        v = x[i * F + f]
        if isnan(v):
            nan_count[0] += 1
        else:
            counts[_bin_of(v, e, n_edges)] += 1


cdef cnp.ndarray _array(object a, str name, int ndim, str expected):
    """``a`` as an ndarray with ``ndim`` dimensions, C-contiguous and aligned, or ValueError/TypeError."""
    if not cnp.PyArray_Check(a):
        raise TypeError(f"hist_update: {name} must be a numpy.ndarray {expected}; got {type(a).__name__}")
    cdef cnp.ndarray arr = <cnp.ndarray>a
    if cnp.PyArray_NDIM(arr) != ndim:
        raise ValueError(f"hist_update: {name} must be {ndim}-D {expected}; got shape {(<object>arr).shape}")
    if not cnp.PyArray_IS_C_CONTIGUOUS(arr) or not cnp.PyArray_ISALIGNED(arr):
        raise ValueError(f"hist_update: {name} must be C-contiguous and aligned {expected}")
    return arr


cdef void _need_dtype(cnp.ndarray arr, int t, str name, str expected) except *:
    if cnp.PyArray_TYPE(arr) != t:
        raise TypeError(f"hist_update: {name} must have dtype {expected}; got {arr.dtype}")


cdef void _need_writeable(cnp.ndarray arr, str name) except *:
    if not cnp.PyArray_ISWRITEABLE(arr):
        raise ValueError(f"hist_update: {name} must be writeable (it is updated in place)")


def hist_update(x, edges, counts, nan_counts):
    """Add every value of x (n, F) to its feature's histogram, one pass over the batch.

    x: float32/float64 (n, F); edges: float64 (F, B+1), B >= 1, non-decreasing per row;
    counts: int64 (F, B) and nan_counts: int64 (F,), both updated in place.  All
    C-contiguous.  Read through the NumPy C API (typed memoryviews cost ~1 us per call
    here, on a kernel that takes a few).
    """
    cdef cnp.ndarray xa = _array(x, "x", 2, "(n, F)")
    cdef int xt = cnp.PyArray_TYPE(xa)
    if xt != cnp.NPY_FLOAT32 and xt != cnp.NPY_FLOAT64:
        raise TypeError(f"hist_update: x must have dtype float32 or float64; got {xa.dtype}")
    cdef cnp.ndarray ea = _array(edges, "edges", 2, "(F, B + 1)")
    _need_dtype(ea, cnp.NPY_FLOAT64, "edges", "float64")
    cdef cnp.ndarray ca = _array(counts, "counts", 2, "(F, B)")
    _need_dtype(ca, cnp.NPY_INT64, "counts", "int64")
    _need_writeable(ca, "counts")
    cdef cnp.ndarray na = _array(nan_counts, "nan_counts", 1, "(F,)")
    _need_dtype(na, cnp.NPY_INT64, "nan_counts", "int64")
    _need_writeable(na, "nan_counts")
    cdef Py_ssize_t n = cnp.PyArray_DIM(xa, 0), F = cnp.PyArray_DIM(xa, 1)
    cdef Py_ssize_t n_edges = cnp.PyArray_DIM(ea, 1)
    if cnp.PyArray_DIM(ea, 0) != F or n_edges < 2:
        raise ValueError(f"hist_update: edges must have shape (F, B + 1) = ({F}, >= 2) for x of shape "
                         f"({n}, {F}); got {(<object>ea).shape}")
    if cnp.PyArray_DIM(ca, 0) != F or cnp.PyArray_DIM(ca, 1) != n_edges - 1:
        raise ValueError(f"hist_update: counts must have shape (F, B) = ({F}, {n_edges - 1}); "
                         f"got {(<object>ca).shape}")
    if cnp.PyArray_DIM(na, 0) != F:
        raise ValueError(f"hist_update: nan_counts must have shape (F,) = ({F},); got {(<object>na).shape}")
    cdef const double* e = <const double*>cnp.PyArray_DATA(ea)
    cdef int64_t* c = <int64_t*>cnp.PyArray_DATA(ca)
    cdef int64_t* nc = <int64_t*>cnp.PyArray_DATA(na)
    cdef Py_ssize_t J = n_edges - 2
    if n == 0 or F == 0:
        return
    if J <= LINEAR_MAX_EDGES:
        _hist_by_compares(xa, n, F, e, n_edges, c, nc)
        return
    with nogil:
        if xt == cnp.NPY_FLOAT32:
            _hist_by_search(<const float*>cnp.PyArray_DATA(xa), n, F, e, n_edges, c, nc)
        else:
            _hist_by_search(<const double*>cnp.PyArray_DATA(xa), n, F, e, n_edges, c, nc)


cdef void _hist_by_compares(cnp.ndarray xa, Py_ssize_t n, Py_ssize_t F, const double* e,
                            Py_ssize_t n_edges, int64_t* counts, int64_t* nan_counts) except *:
    """Counts by ``x >= e_j`` per interior edge (see the module docstring); edges must be sorted."""
    cdef Py_ssize_t J = n_edges - 2, B = n_edges - 1
    cdef Py_ssize_t f, j, i, blocks = F // 8
    # scratch: interior edges transposed (J, F), counts >= each edge (J, F), NaNs (F)
    cdef size_t slots = checked_size(<size_t>J, <size_t>F, "hist_update", "the edge table")
    cdef size_t nbytes = checked_size(2 * slots + <size_t>F, 8, "hist_update", "the scratch")
    cdef char* scratch = <char*>malloc(nbytes)
    if scratch == NULL:
        raise MemoryError(f"hist_update: cannot allocate {nbytes} bytes of scratch")
    cdef double* et = <double*>scratch
    cdef int64_t* cge = <int64_t*>(scratch + slots * 8)
    cdef int64_t* nanb = <int64_t*>(scratch + slots * 16)
    cdef void* xp = cnp.PyArray_DATA(xa)
    cdef bint f32 = cnp.PyArray_TYPE(xa) == cnp.NPY_FLOAT32
    cdef Py_ssize_t bad = -1
    cdef const double* row
    cdef int64_t prev, ge
    try:
        with nogil:
            for f in range(F):
                row = e + f * n_edges
                for j in range(B):
                    if not (row[j] <= row[j + 1]):
                        bad = f
                for j in range(J):
                    et[j * F + f] = row[j + 1]
        if bad >= 0:
            raise ValueError(f"hist_update: edges must be non-decreasing (and not NaN) in every row; "
                             f"row {bad} is {repr(_edges_row(e, bad, n_edges))[:200]}")
        with nogil:
            if n * F >= PARALLEL_MIN_VALUES and blocks > 1:
                for i in prange(blocks, schedule="static"):
                    _hist_block(xp, f32, n, F, i * 8, et, J, cge, nanb)
            else:
                for i in range(blocks):
                    _hist_block(xp, f32, n, F, i * 8, et, J, cge, nanb)
            if F > blocks * 8:
                if f32:
                    edgeloop_hist_tail_f32(<const float*>xp, n, F, blocks * 8, F - blocks * 8, et, J, cge, nanb)
                else:
                    edgeloop_hist_tail_f64(<const double*>xp, n, F, blocks * 8, F - blocks * 8, et, J, cge, nanb)
            for f in range(F):
                nan_counts[f] += nanb[f]
                prev = n - nanb[f]  # values >= -inf: every non-NaN value
                for j in range(J):
                    ge = cge[j * F + f]
                    counts[f * B + j] += prev - ge
                    prev = ge
                counts[f * B + J] += prev
    finally:
        free(scratch)


cdef list _edges_row(const double* e, Py_ssize_t f, Py_ssize_t n_edges):
    return [e[f * n_edges + j] for j in range(n_edges)]


cdef inline void _hist_block(void* xp, bint f32, Py_ssize_t n, Py_ssize_t F, Py_ssize_t f0,
                             const double* et, Py_ssize_t J, int64_t* cge, int64_t* nanb) noexcept nogil:
    if f32:
        edgeloop_hist_block_f32(<const float*>xp, n, F, f0, et, J, cge, nanb)
    else:
        edgeloop_hist_block_f64(<const double*>xp, n, F, f0, et, J, cge, nanb)


cdef void _hist_by_search(const floating* x, Py_ssize_t n, Py_ssize_t F, const double* edges,
                          Py_ssize_t n_edges, int64_t* counts, int64_t* nan_counts) noexcept nogil:
    """A binary search per value (many bins); features split across threads for big batches."""
    cdef Py_ssize_t i, f, B = n_edges - 1
    cdef double v
    if n * F >= PARALLEL_MIN_VALUES and F > 1:
        for f in prange(F, schedule="static"):
            _hist_feature(x, n, F, f, edges + f * n_edges, n_edges, counts + f * B, nan_counts + f)
    else:
        for i in range(n):  # row-major: read the batch once, in memory order
            for f in range(F):
                v = x[i * F + f]
                if isnan(v):
                    nan_counts[f] += 1
                else:
                    counts[f * B + _bin_of(v, edges + f * n_edges, n_edges)] += 1


def moments_update(const floating[:, ::1] x, int64_t[::1] count, double[::1] mean, double[::1] m2,
                   int64_t[::1] b_count, double[::1] b_mean, double[::1] b_m2):
    """Welford over the batch (one pass, finite values only), then Chan's merge into the state.

    ``b_*`` are zeroed scratch arrays of length F supplied by the caller.
    """
    cdef Py_ssize_t i, f, n = x.shape[0], F = x.shape[1]
    cdef double v, d
    _same_length("moments_update", F, "x.shape[1]", {
        "count": count.shape[0], "mean": mean.shape[0], "m2": m2.shape[0],
        "b_count": b_count.shape[0], "b_mean": b_mean.shape[0], "b_m2": b_m2.shape[0]})
    with nogil:
        for i in range(n):
            for f in range(F):
                v = x[i, f]
                if not isfinite(v):
                    continue
                b_count[f] += 1
                d = v - b_mean[f]
                b_mean[f] += d / <double>b_count[f]
                b_m2[f] += d * (v - b_mean[f])
        _chan_merge(count, mean, m2, b_count, b_mean, b_m2)


cdef int _same_length(str fn, Py_ssize_t F, str source, dict lengths) except -1:
    """ValueError unless every 1-D array has length F (the loops index them all by feature)."""
    for name, length in lengths.items():
        if length != F:
            raise ValueError(f"{fn}: {name} must have shape ({F},) like {source}; got ({length},)")
    return 0


cdef int _same_tables(str fn, const double[:, ::1] ref, const double[:, ::1] cur,
                      double[::1] out) except -1:
    if cur.shape[0] != ref.shape[0] or cur.shape[1] != ref.shape[1]:
        raise ValueError(f"{fn}: cur must have the shape of ref ({ref.shape[0]}, {ref.shape[1]}); "
                         f"got ({cur.shape[0]}, {cur.shape[1]})")
    if out.shape[0] != ref.shape[0]:
        raise ValueError(f"{fn}: out must have shape ({ref.shape[0]},), one value per row of ref; "
                         f"got ({out.shape[0]},)")
    return 0


def moments_merge(int64_t[::1] count, double[::1] mean, double[::1] m2,
                  const int64_t[::1] o_count, const double[::1] o_mean, const double[::1] o_m2):
    """Chan et al.'s parallel formula: fold another state into this one."""
    _same_length("moments_merge", count.shape[0], "count.shape[0]", {
        "mean": mean.shape[0], "m2": m2.shape[0],
        "o_count": o_count.shape[0], "o_mean": o_mean.shape[0], "o_m2": o_m2.shape[0]})
    with nogil:
        _chan_merge(count, mean, m2, o_count, o_mean, o_m2)


cdef void _chan_merge(int64_t[::1] count, double[::1] mean, double[::1] m2,
                      const int64_t[::1] o_count, const double[::1] o_mean, const double[::1] o_m2) noexcept nogil:
    cdef Py_ssize_t f
    cdef double na, nb, n, delta
    for f in range(count.shape[0]):
        if o_count[f] == 0:
            continue
        if count[f] == 0:
            count[f] = o_count[f]
            mean[f] = o_mean[f]
            m2[f] = o_m2[f]
            continue
        na = <double>count[f]
        nb = <double>o_count[f]
        n = na + nb
        delta = o_mean[f] - mean[f]
        mean[f] = mean[f] + delta * (nb / n)
        m2[f] = m2[f] + o_m2[f] + delta * delta * (na * nb / n)
        count[f] = count[f] + o_count[f]


cdef inline bint _row_totals(const double[:, ::1] ref, const double[:, ::1] cur, Py_ssize_t f,
                             double* tr, double* tc) noexcept nogil:
    """Totals of row f of both count tables; False when either is empty (the distance is then NaN)."""
    cdef Py_ssize_t b
    tr[0] = 0.0
    tc[0] = 0.0
    for b in range(ref.shape[1]):
        tr[0] += ref[f, b]
        tc[0] += cur[f, b]
    return tr[0] > 0.0 and tc[0] > 0.0


def psi(const double[:, ::1] ref, const double[:, ::1] cur, double eps, double[::1] out):
    """PSI per row: sum_b (q_b - p_b) ln(q_b / p_b), p/q proportions floored at eps."""
    cdef Py_ssize_t f, b, B = ref.shape[1]
    cdef double tr, tc, p, q, acc
    _same_tables("psi", ref, cur, out)
    with nogil:
        for f in range(ref.shape[0]):
            if not _row_totals(ref, cur, f, &tr, &tc):
                out[f] = NAN
                continue
            acc = 0.0
            for b in range(B):
                p = ref[f, b] / tr
                q = cur[f, b] / tc
                if p < eps:
                    p = eps
                if q < eps:
                    q = eps
                if p != q:
                    acc += (q - p) * log(q / p)
            out[f] = acc


def js_distance(const double[:, ::1] ref, const double[:, ::1] cur, double[::1] out):
    """Jensen-Shannon distance per row, base 2: sqrt of the divergence, in [0, 1]."""
    cdef Py_ssize_t f, b, B = ref.shape[1]
    cdef double tr, tc, p, q, m, acc
    cdef double inv_ln2 = 1.0 / log(2.0)
    _same_tables("js_distance", ref, cur, out)
    with nogil:
        for f in range(ref.shape[0]):
            if not _row_totals(ref, cur, f, &tr, &tc):
                out[f] = NAN
                continue
            acc = 0.0
            for b in range(B):
                p = ref[f, b] / tr
                q = cur[f, b] / tc
                m = 0.5 * (p + q)
                if p > 0.0:
                    acc += p * log(p / m)
                if q > 0.0:
                    acc += q * log(q / m)
            acc = 0.5 * acc * inv_ln2
            out[f] = sqrt(acc) if acc > 0.0 else 0.0


def reconstruction_error(const floating[:, ::1] x, const floating[::1] mean, const floating[::1] scale,
                         const floating[:, ::1] components, floating[:, ::1] z, floating[:, ::1] proj,
                         double[::1] out):
    """err_i = ||z_i - z_i C^T C||^2 with z = (x - mean) / scale.

    One pass standardises x into ``z``; BLAS forms P = Z C^T and then Z -= P C in place; a
    last pass sums squares per row in double.  ``z`` (n, F) and ``proj`` (n, >= max(k, 1))
    are scratch.
    """
    cdef str fn = "reconstruction_error"
    cdef Py_ssize_t i, f, n = x.shape[0], F = x.shape[1]
    _same_length(fn, F, "x.shape[1]", {"mean": mean.shape[0], "scale": scale.shape[0]})
    if components.shape[1] != F:
        raise ValueError(f"{fn}: components must have shape (k, {F}) like x's {F} features; "
                         f"got ({components.shape[0]}, {components.shape[1]})")
    if z.shape[0] != n or z.shape[1] != F:
        raise ValueError(f"{fn}: z must have shape ({n}, {F}) like x; got ({z.shape[0]}, {z.shape[1]})")
    if proj.shape[0] != n or proj.shape[1] < max(components.shape[0], 1):
        raise ValueError(f"{fn}: proj must have shape ({n}, >= {max(components.shape[0], 1)}); "
                         f"got ({proj.shape[0]}, {proj.shape[1]})")
    if out.shape[0] != n:
        raise ValueError(f"{fn}: out must have shape ({n},), one value per row of x; got ({out.shape[0]},)")
    cdef int k = blas_int(components.shape[0], fn, "components.shape[0]")
    cdef int ni = blas_int(n, fn, "x.shape[0]"), Fi = blas_int(F, fn, "x.shape[1]")
    cdef int ldp = blas_int(proj.shape[1], fn, "proj.shape[1]")
    cdef double acc, v
    with nogil:
        for i in range(n):
            for f in range(F):
                z[i, f] = (x[i, f] - mean[f]) / scale[f]
        if n > 0 and F > 0 and k > 0:
            # Row-major (n, F) is column-major (F, n): in BLAS terms P^T = C Z^T and Z^T -= C^T P^T.
            _gemm(c'T', c'N', k, ni, Fi, <floating>1.0, &components[0, 0], Fi, &z[0, 0], Fi,
                  <floating>0.0, &proj[0, 0], ldp)
            _gemm(c'N', c'N', Fi, ni, k, <floating>-1.0, &components[0, 0], Fi, &proj[0, 0], ldp,
                  <floating>1.0, &z[0, 0], Fi)
        for i in range(n):
            acc = 0.0
            for f in range(F):
                v = z[i, f]
                acc += v * v
            out[i] = acc
