"""Streaming statistics for drift monitoring: histograms, moments, PSI, JS, PCA residuals.

The edge updates these on every batch, so each kernel makes one pass over the batch with
the GIL released.  Arguments arrive validated and C-contiguous from
``edgeloop.kernels.stats``; floats are float32 or float64 (fused), accumulators float64.
"""
from cython cimport floating
from cython.parallel cimport prange
from libc.math cimport log, sqrt, isfinite, isnan, NAN
from libc.stdint cimport int64_t
from scipy.linalg.cython_blas cimport dgemm, sgemm

# Above this many values per batch the histogram splits its features across threads.
cdef Py_ssize_t PARALLEL_MIN_VALUES = 1 << 17


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


cdef void _hist_feature(const floating[:, ::1] x, Py_ssize_t f, const double[:, ::1] edges,
                        int64_t[:, ::1] counts, int64_t[::1] nan_counts) noexcept nogil:
    cdef Py_ssize_t i, n_edges = edges.shape[1]
    cdef const double* e = &edges[f, 0]
    cdef double v
    for i in range(x.shape[0]):
        v = x[i, f]
        if isnan(v):
            nan_counts[f] += 1
        else:
            counts[f, _bin_of(v, e, n_edges)] += 1


def hist_update(const floating[:, ::1] x, const double[:, ::1] edges, int64_t[:, ::1] counts,
                int64_t[::1] nan_counts):
    """Add every value of x (n, F) to its feature's histogram, one pass over the batch."""
    cdef Py_ssize_t i, f, n = x.shape[0], F = x.shape[1], n_edges = edges.shape[1]
    cdef double v
    with nogil:
        if n * F >= PARALLEL_MIN_VALUES and F > 1:
            for f in prange(F, schedule="static"):
                _hist_feature(x, f, edges, counts, nan_counts)
        else:
            for i in range(n):  # row-major: read the batch once, in memory order
                for f in range(F):
                    v = x[i, f]
                    if isnan(v):
                        nan_counts[f] += 1
                    else:
                        counts[f, _bin_of(v, &edges[f, 0], n_edges)] += 1


def moments_update(const floating[:, ::1] x, int64_t[::1] count, double[::1] mean, double[::1] m2,
                   int64_t[::1] b_count, double[::1] b_mean, double[::1] b_m2):
    """Welford over the batch (one pass, finite values only), then Chan's merge into the state.

    ``b_*`` are zeroed scratch arrays of length F supplied by the caller.
    """
    cdef Py_ssize_t i, f, n = x.shape[0], F = x.shape[1]
    cdef double v, d
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


def moments_merge(int64_t[::1] count, double[::1] mean, double[::1] m2,
                  const int64_t[::1] o_count, const double[::1] o_mean, const double[::1] o_m2):
    """Chan et al.'s parallel formula: fold another state into this one."""
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


cdef void _gemm(char* ta, char* tb, int m, int n, int k, floating alpha, floating* a, int lda,
                floating* b, int ldb, floating beta, floating* c, int ldc) noexcept nogil:
    if floating is double:
        dgemm(ta, tb, &m, &n, &k, &alpha, a, &lda, b, &ldb, &beta, c, &ldc)
    else:
        sgemm(ta, tb, &m, &n, &k, &alpha, a, &lda, b, &ldb, &beta, c, &ldc)


def reconstruction_error(const floating[:, ::1] x, const floating[::1] mean, const floating[::1] scale,
                         const floating[:, ::1] components, floating[:, ::1] z, floating[:, ::1] proj,
                         double[::1] out):
    """err_i = ||z_i - z_i C^T C||^2 with z = (x - mean) / scale.

    One pass standardises x into ``z``; BLAS forms P = Z C^T and then Z -= P C in place; a
    last pass sums squares per row in double.  ``z`` (n, F) and ``proj`` (n, k) are scratch.
    """
    cdef Py_ssize_t i, f, n = x.shape[0], F = x.shape[1]
    cdef int k = components.shape[0]
    cdef int ni = <int>n, Fi = <int>F
    cdef double acc, v
    with nogil:
        for i in range(n):
            for f in range(F):
                z[i, f] = (x[i, f] - mean[f]) / scale[f]
        if n > 0 and F > 0 and k > 0:
            # Row-major (n, F) is column-major (F, n): in BLAS terms P^T = C Z^T and Z^T -= C^T P^T.
            _gemm(b"T", b"N", k, ni, Fi, <floating>1.0, <floating*>&components[0, 0], Fi, &z[0, 0], Fi,
                  <floating>0.0, &proj[0, 0], k)
            _gemm(b"N", b"N", Fi, ni, k, <floating>-1.0, <floating*>&components[0, 0], Fi, &proj[0, 0], k,
                  <floating>1.0, &z[0, 0], Fi)
        for i in range(n):
            acc = 0.0
            for f in range(F):
                v = z[i, f]
                acc += v * v
            out[i] = acc
