"""Dense layers and the BLAS plumbing of the randomized SVD.

Modelled on scikit-learn's ``sklearn/utils/_cython_blas.pyx``: fused float32/float64
kernels, the GIL released around every BLAS call and loop; the BLAS wrappers are the
shared ones of ``native/_blas.pxd``.

Every ``def`` here checks the shapes it relies on before touching memory: sizes handed to
BLAS must fit its 32-bit ``int`` (ValueError otherwise) and scratch buffers are sized in
``size_t`` with an overflow check, so no shape, however extreme, reaches C unchecked.

BLAS is column-major.  A C-ordered (n, k) array is, to BLAS, the column-major (k, n)
matrix of its transpose, so the C-order product ``out = x @ w`` is computed as the
column-major product ``out^T = w^T x^T`` with no copies.

Which BLAS does the product.  One row goes through SciPy's ``gemv`` from here, with no
Python-level call in between.  More rows go through ``np.matmul`` (NumPy's bundled BLAS
``gemm``, which releases the GIL) writing straight into the output, then the fused
epilogue.  NumPy and SciPy wheels each bundle their own OpenBLAS. With NumPy 2.4
(OpenBLAS 0.3.31) and SciPy 1.17 (0.3.30), SciPy's sgemm took 1.2-1.6x as long as
NumPy's for 2 to 64 rows of a 512x512 layer (measured with 1 thread on the project's
2-core machine: ``benchmarks/kernels.py --only dense``). The baseline a user compares
with is ``x @ w``, so the product goes to the same library.

The dense entry points do their own argument checks: at batch 1 a 512x512 layer costs
about 10 us, so every microsecond of wrapper overhead shows.  They read the arrays
through the NumPy C API rather than typed memoryviews for the same reason (acquiring a
memoryview costs a few hundred nanoseconds per argument); the arithmetic itself is in
fused-type ``nogil`` functions.
"""
import numpy as np

cimport numpy as cnp
from cython cimport floating
from cython.parallel cimport prange
from libc.math cimport exp, expf, tanh, tanhf, fabs
from libc.stdlib cimport malloc, free

from _blas cimport gemm as _gemm, gemv as _gemv, blas_int, checked_size

cnp.import_array()

_np_matmul = np.matmul

cdef enum:
    ACT_IDENTITY = 0
    ACT_RELU = 1
    ACT_SIGMOID = 2
    ACT_TANH = 3

ACTIVATIONS = ("identity", "relu", "sigmoid", "tanh")

# Transcendental epilogues (sigmoid, tanh) cost ~10 ns per value; above this many values
# they are split over OpenMP threads (serial when built without OpenMP).
cdef Py_ssize_t PARALLEL_EPILOGUE_MIN = 1 << 16


# --------------------------------------------------------------------------- BLAS core

cdef inline int _imax(int a, int b) noexcept nogil:
    return a if a > b else b


cdef void _matmul(const floating* x, bint x_fortran, const floating* w, bint w_fortran,
                  floating* out, int n, int k, int m) noexcept nogil:
    """C-order out (n, m) = x (n, k) @ w (k, m); x and w each C- or F-ordered.

    In column-major terms out^T (m, n) = w^T (m, k) . x^T (k, n).  A C-ordered w *is* the
    column-major w^T ('N', ld = m); an F-ordered w is the column-major w ('T', ld = k).
    A single row goes through gemv, which streams w once.
    """
    cdef char tw = c'T' if w_fortran else c'N'
    cdef char tx = c'T' if x_fortran else c'N'
    cdef int ldw = _imax(1, k) if w_fortran else _imax(1, m)
    cdef int ldx = _imax(1, n) if x_fortran else _imax(1, k)
    cdef Py_ssize_t i
    if k == 0:
        for i in range(<Py_ssize_t>n * <Py_ssize_t>m):
            out[i] = 0
        return
    if n == 1:
        if w_fortran:
            _gemv(c'T', k, m, <floating>1, w, ldw, x, <floating>0, out)
        else:
            _gemv(c'N', m, k, <floating>1, w, ldw, x, <floating>0, out)
    else:
        _gemm(tw, tx, m, n, k, <floating>1, w, ldw, x, ldx, <floating>0, out, _imax(1, m))


# ------------------------------------------------------------------------ epilogue

cdef inline floating _sigmoid(floating v) noexcept nogil:
    if floating is float:
        return 1.0 / (1.0 + expf(-v))
    else:
        return 1.0 / (1.0 + exp(-v))


cdef inline floating _tanh(floating v) noexcept nogil:
    if floating is float:
        return tanhf(v)
    else:
        return tanh(v)


cdef void _epilogue_row(floating* o, const floating* bias, Py_ssize_t m, int act) noexcept nogil:
    """Bias and activation of one output row, in place (NaN propagates as in NumPy)."""
    cdef Py_ssize_t j
    cdef floating v
    if act == ACT_IDENTITY:
        if bias != NULL:
            for j in range(m):
                o[j] = o[j] + bias[j]
    elif act == ACT_RELU:
        # `v < 0` is false for NaN, so NaN passes through like np.maximum(v, 0).
        if bias != NULL:
            for j in range(m):
                v = o[j] + bias[j]
                o[j] = 0 if v < 0 else v
        else:
            for j in range(m):
                v = o[j]
                o[j] = 0 if v < 0 else v
    elif act == ACT_SIGMOID:
        if bias != NULL:
            for j in range(m):
                o[j] = _sigmoid(o[j] + bias[j])
        else:
            for j in range(m):
                o[j] = _sigmoid(o[j])
    elif act == ACT_TANH:
        if bias != NULL:
            for j in range(m):
                o[j] = _tanh(o[j] + bias[j])
        else:
            for j in range(m):
                o[j] = _tanh(o[j])


cdef void _epilogue(floating* out, const floating* bias, Py_ssize_t n, Py_ssize_t m,
                    int act) noexcept nogil:
    """One pass over out (n, m): out = act(out + bias).  Skipped when there is nothing to do."""
    cdef Py_ssize_t i
    if act == ACT_IDENTITY and bias == NULL:
        return
    if (act == ACT_SIGMOID or act == ACT_TANH) and n > 1:
        for i in prange(n, schedule="static", nogil=True,
                        use_threads_if=n * m >= PARALLEL_EPILOGUE_MIN):
            _epilogue_row(out + i * m, bias, m, act)
    else:
        for i in range(n):
            _epilogue_row(out + i * m, bias, m, act)


# ------------------------------------------------------------------ argument checks

cdef int _activation_code(object activation) except -1:
    if activation is None or activation == "identity":
        return ACT_IDENTITY
    if activation == "relu":
        return ACT_RELU
    if activation == "sigmoid":
        return ACT_SIGMOID
    if activation == "tanh":
        return ACT_TANH
    raise ValueError(
        f"activation must be one of {', '.join(repr(a) for a in ACTIVATIONS)}; got {activation!r}"
    )


cdef cnp.ndarray _as_float_array(object a, str fn, str name, int ndim, str shape_doc):
    """``a`` as an ndarray of float32/float64 with ``ndim`` dimensions, or a clear error."""
    cdef cnp.ndarray arr
    if cnp.PyArray_Check(a):
        arr = <cnp.ndarray>a
    else:
        if a is None:
            raise TypeError(f"{fn}: {name} must be an array of shape {shape_doc}; got None")
        arr = np.asarray(a)
    cdef int t = cnp.PyArray_TYPE(arr)
    if t != cnp.NPY_FLOAT32 and t != cnp.NPY_FLOAT64:
        raise TypeError(
            f"{fn}: {name} must have dtype float32 or float64; got {arr.dtype} "
            f"(cast it explicitly, e.g. {name}.astype(np.float32))"
        )
    if cnp.PyArray_NDIM(arr) != ndim:
        raise ValueError(
            f"{fn}: {name} must be {ndim}-D with shape {shape_doc}; got shape {(<object>arr).shape}"
        )
    return arr


cdef inline bint _is_c(cnp.ndarray a) noexcept:
    return cnp.PyArray_IS_C_CONTIGUOUS(a)


cdef inline bint _is_f(cnp.ndarray a) noexcept:
    return cnp.PyArray_IS_F_CONTIGUOUS(a)


cdef cnp.ndarray _c_or_f(cnp.ndarray a):
    """``a`` itself when C- or F-contiguous (BLAS reads both), else one C-ordered copy."""
    if _is_c(a) or _is_f(a):
        return a
    return np.ascontiguousarray(a)


cdef void _check_same_dtype(str fn, str name, cnp.ndarray a, cnp.ndarray x) except *:
    if cnp.PyArray_TYPE(a) != cnp.PyArray_TYPE(x):
        raise TypeError(
            f"{fn}: {name} has dtype {a.dtype} but x has dtype {x.dtype}; all arrays must "
            f"share one dtype (float32 or float64): cast one of them explicitly"
        )


cdef cnp.ndarray _bias(object b, cnp.ndarray x, Py_ssize_t m, str fn):
    if b is None:
        return None
    cdef cnp.ndarray arr = _as_float_array(b, fn, "b", 1, f"(m,) = ({m},)")
    _check_same_dtype(fn, "b", arr, x)
    if cnp.PyArray_DIM(arr, 0) != m:
        raise ValueError(f"{fn}: b must have shape (m,) = ({m},); got shape {(<object>arr).shape}")
    if not _is_c(arr):
        arr = np.ascontiguousarray(arr)
    return arr


cdef bint _overlaps(cnp.ndarray a, cnp.ndarray b) noexcept:
    """Whether the memory extents of two contiguous arrays intersect."""
    cdef char* a0 = <char*>cnp.PyArray_DATA(a)
    cdef char* b0 = <char*>cnp.PyArray_DATA(b)
    cdef char* a1 = a0 + cnp.PyArray_NBYTES(a)
    cdef char* b1 = b0 + cnp.PyArray_NBYTES(b)
    return a0 < b1 and b0 < a1 and a1 != a0 and b1 != b0


cdef cnp.ndarray _output(object out, cnp.ndarray x, Py_ssize_t n, Py_ssize_t m, str fn,
                         tuple inputs):
    cdef cnp.npy_intp dims[2]
    cdef cnp.ndarray o
    if out is None:
        dims[0] = n
        dims[1] = m
        return cnp.PyArray_EMPTY(2, dims, cnp.PyArray_TYPE(x), 0)
    if not cnp.PyArray_Check(out):
        raise TypeError(f"{fn}: out must be a numpy.ndarray of shape ({n}, {m}); got {type(out).__name__}")
    o = <cnp.ndarray>out
    if cnp.PyArray_TYPE(o) != cnp.PyArray_TYPE(x):
        raise TypeError(f"{fn}: out must have dtype {x.dtype} like x; got {o.dtype}")
    if cnp.PyArray_NDIM(o) != 2 or cnp.PyArray_DIM(o, 0) != n or cnp.PyArray_DIM(o, 1) != m:
        raise ValueError(f"{fn}: out must have shape ({n}, {m}); got shape {(<object>o).shape}")
    if not _is_c(o):
        raise ValueError(f"{fn}: out must be C-contiguous (it is written in place); got strides {(<object>o).strides}")
    if not cnp.PyArray_ISWRITEABLE(o):
        raise ValueError(f"{fn}: out must be writeable")
    for a in inputs:
        if a is not None and _overlaps(o, <cnp.ndarray>a):
            raise ValueError(f"{fn}: out must not share memory with the inputs")
    return o


# ------------------------------------------------------------------------ dense layers

def dense(x, w, b=None, activation="identity", out=None):
    """act(x @ w + b) with one BLAS call and one fused epilogue; see edgeloop.kernels.dense."""
    cdef str fn = "dense"
    cdef cnp.ndarray xa = _as_float_array(x, fn, "x", 2, "(n, k)")
    cdef cnp.ndarray wa = _as_float_array(w, fn, "w", 2, "(k, m)")
    _check_same_dtype(fn, "w", wa, xa)
    cdef Py_ssize_t n = cnp.PyArray_DIM(xa, 0), k = cnp.PyArray_DIM(xa, 1)
    cdef Py_ssize_t m = cnp.PyArray_DIM(wa, 1)
    if cnp.PyArray_DIM(wa, 0) != k:
        raise ValueError(
            f"{fn}: w must have shape (k, m) with k = x.shape[1] = {k}; got w.shape = {(<object>wa).shape}"
        )
    # BLAS takes int sizes: refuse what does not fit before anything is copied or allocated
    cdef int ni = blas_int(n, fn, "x.shape[0]"), ki = blas_int(k, fn, "x.shape[1]")
    cdef int mi = blas_int(m, fn, "w.shape[1]")
    cdef int act = _activation_code(activation)
    cdef cnp.ndarray ba = _bias(b, xa, m, fn)
    xa = _c_or_f(xa)
    wa = _c_or_f(wa)
    cdef cnp.ndarray oa = _output(out, xa, n, m, fn, (xa, wa, ba))
    if n == 0 or m == 0:
        return oa
    cdef bint xf = not _is_c(xa), wf = not _is_c(wa)
    cdef void* bp = NULL if ba is None else cnp.PyArray_DATA(ba)
    cdef void* xp = cnp.PyArray_DATA(xa)
    cdef void* wp = cnp.PyArray_DATA(wa)
    cdef void* op = cnp.PyArray_DATA(oa)
    if n > 1 and k > 0:
        _np_matmul(xa, wa, out=oa)  # NumPy's gemm, GIL released inside (see the module docstring)
        _epilogue_any(oa, bp, n, m, act)
        return oa
    if cnp.PyArray_TYPE(xa) == cnp.NPY_FLOAT32:
        with nogil:
            _matmul(<float*>xp, xf, <float*>wp, wf, <float*>op, ni, ki, mi)
            _epilogue(<float*>op, <float*>bp, n, m, act)
    else:
        with nogil:
            _matmul(<double*>xp, xf, <double*>wp, wf, <double*>op, ni, ki, mi)
            _epilogue(<double*>op, <double*>bp, n, m, act)
    return oa


cdef void _epilogue_any(cnp.ndarray oa, void* bp, Py_ssize_t n, Py_ssize_t m, int act) except *:
    """The fused bias + activation pass over a C-ordered output of either dtype, GIL released."""
    cdef void* op = cnp.PyArray_DATA(oa)
    if cnp.PyArray_TYPE(oa) == cnp.NPY_FLOAT32:
        with nogil:
            _epilogue(<float*>op, <float*>bp, n, m, act)
    else:
        with nogil:
            _epilogue(<double*>op, <double*>bp, n, m, act)


cdef void _lowrank(const floating* x, bint xf, const floating* u, bint uf,
                   const floating* v, bint vf, const floating* bias, floating* tmp,
                   floating* out, int n, int k, int r, int m, int act) noexcept nogil:
    _matmul(x, xf, u, uf, tmp, n, k, r)          # tmp (n, r) = x @ u, C-ordered
    _matmul(tmp, False, v, vf, out, n, r, m)     # out (n, m) = tmp @ v
    _epilogue(out, bias, n, m, act)


def lowrank_dense(x, u, v, b=None, activation="identity", out=None):
    """act((x @ u) @ v + b) with a rank-r intermediate; see edgeloop.kernels.lowrank_dense."""
    cdef str fn = "lowrank_dense"
    cdef cnp.ndarray xa = _as_float_array(x, fn, "x", 2, "(n, k)")
    cdef cnp.ndarray ua = _as_float_array(u, fn, "u", 2, "(k, r)")
    cdef cnp.ndarray va = _as_float_array(v, fn, "v", 2, "(r, m)")
    _check_same_dtype(fn, "u", ua, xa)
    _check_same_dtype(fn, "v", va, xa)
    cdef Py_ssize_t n = cnp.PyArray_DIM(xa, 0), k = cnp.PyArray_DIM(xa, 1)
    cdef Py_ssize_t r = cnp.PyArray_DIM(ua, 1), m = cnp.PyArray_DIM(va, 1)
    if cnp.PyArray_DIM(ua, 0) != k:
        raise ValueError(
            f"{fn}: u must have shape (k, r) with k = x.shape[1] = {k}; got u.shape = {(<object>ua).shape}"
        )
    if cnp.PyArray_DIM(va, 0) != r:
        raise ValueError(
            f"{fn}: v must have shape (r, m) with r = u.shape[1] = {r}; got v.shape = {(<object>va).shape}"
        )
    cdef int ni = blas_int(n, fn, "x.shape[0]"), ki = blas_int(k, fn, "x.shape[1]")
    cdef int ri = blas_int(r, fn, "u.shape[1]"), mi = blas_int(m, fn, "v.shape[1]")
    cdef int act = _activation_code(activation)
    cdef cnp.ndarray ba = _bias(b, xa, m, fn)
    xa = _c_or_f(xa)
    ua = _c_or_f(ua)
    va = _c_or_f(va)
    cdef cnp.ndarray oa = _output(out, xa, n, m, fn, (xa, ua, va, ba))
    if n == 0 or m == 0:
        return oa
    cdef bint xf = not _is_c(xa), uf = not _is_c(ua), vf = not _is_c(va)
    cdef void* bp = NULL if ba is None else cnp.PyArray_DATA(ba)
    cdef void* xp = cnp.PyArray_DATA(xa)
    cdef void* up = cnp.PyArray_DATA(ua)
    cdef void* vp = cnp.PyArray_DATA(va)
    cdef void* op = cnp.PyArray_DATA(oa)
    if n > 1 and k > 0 and r > 0:
        # the two products through NumPy's gemm, like dense (see the module docstring)
        _np_matmul(_np_matmul(xa, ua), va, out=oa)
        _epilogue_any(oa, bp, n, m, act)
        return oa
    if k == 0 or r == 0:
        # x @ u is the empty sum: out = act(0 + b), no intermediate (its n * r may be huge)
        oa.fill(0)
        _epilogue_any(oa, bp, n, m, act)
        return oa
    # here n == 1: the intermediate is one row of r values
    cdef size_t nbytes = checked_size(checked_size(<size_t>n, <size_t>r, fn, "the (n, r) intermediate"),
                                      cnp.PyArray_ITEMSIZE(xa), fn, "the (n, r) intermediate")
    cdef void* tmp = malloc(nbytes)
    if tmp == NULL:
        raise MemoryError(f"{fn}: cannot allocate the ({n}, {r}) intermediate ({nbytes} bytes)")
    try:
        if cnp.PyArray_TYPE(xa) == cnp.NPY_FLOAT32:
            with nogil:
                _lowrank(<float*>xp, xf, <float*>up, uf, <float*>vp, vf, <float*>bp,
                         <float*>tmp, <float*>op, ni, ki, ri, mi, act)
        else:
            with nogil:
                _lowrank(<double*>xp, xf, <double*>up, uf, <double*>vp, vf, <double*>bp,
                         <double*>tmp, <double*>op, ni, ki, ri, mi, act)
    finally:
        free(tmp)
    return oa


# ------------------------------------------------------- helpers of the randomized SVD

cdef int _ld(const floating[:, :] a, str name) except -1:
    """Leading dimension of a column-major view (unit stride down each column)."""
    if a.shape[0] > 1 and a.strides[0] != sizeof(floating):
        raise ValueError(f"gemm: {name} must have unit stride down its columns; got strides "
                         f"({a.strides[0]}, {a.strides[1]})")
    blas_int(a.shape[0], "gemm", f"{name}.shape[0]")
    blas_int(a.shape[1], "gemm", f"{name}.shape[1]")
    if a.shape[1] <= 1:
        return _imax(1, <int>a.shape[0])
    if a.strides[1] % sizeof(floating) or a.strides[1] < a.shape[0] * <Py_ssize_t>sizeof(floating):
        raise ValueError(f"gemm: {name} columns overlap or are misaligned: strides "
                         f"({a.strides[0]}, {a.strides[1]})")
    return _imax(1, blas_int(a.strides[1] // <Py_ssize_t>sizeof(floating), "gemm",
                             f"the leading dimension of {name}"))


def gemm(bint trans_a, bint trans_b, double alpha, const floating[:, :] a,
         const floating[:, :] b, double beta, floating[:, :] c):
    """Column-major C = alpha op(A) op(B) + beta C, in place on column-major views.

    a, b, c: 2-D views with unit stride down the columns (Fortran-ordered arrays and
    column blocks of them).  The randomized SVD keeps its bases as column blocks of
    Fortran-ordered buffers; this writes products straight into those blocks (no
    temporaries; accumulation through ``beta``).  Shapes are checked because a
    mismatch would make BLAS read out of bounds.
    """
    cdef Py_ssize_t m = c.shape[0], n = c.shape[1]
    cdef Py_ssize_t k = a.shape[0] if trans_a else a.shape[1]
    cdef Py_ssize_t am = a.shape[1] if trans_a else a.shape[0]
    cdef Py_ssize_t bk = b.shape[1] if trans_b else b.shape[0]
    cdef Py_ssize_t bn = b.shape[0] if trans_b else b.shape[1]
    if am != m or bn != n or bk != k:
        raise ValueError(
            f"gemm: op(a) is ({am}, {k}), op(b) is ({bk}, {bn}), c is ({m}, {n}); they do not chain"
        )
    # _ld checks every dimension and leading dimension against BLAS's int
    cdef int lda = _ld(a, "a"), ldb = _ld(b, "b"), ldc = _ld(c, "c")
    if m == 0 or n == 0:
        return
    cdef char ta = c'T' if trans_a else c'N'
    cdef char tb = c'T' if trans_b else c'N'
    cdef Py_ssize_t i, j
    with nogil:
        if k == 0:
            for j in range(n):
                for i in range(m):
                    c[i, j] = <floating>(beta * c[i, j]) if beta != 0 else 0
        else:
            _gemm(ta, tb, <int>m, <int>n, <int>k, <floating>alpha, &a[0, 0], lda, &b[0, 0], ldb,
                  <floating>beta, &c[0, 0], ldc)


def flip_signs(floating[:, ::1] u, floating[:, ::1] vt):
    """Make the largest-|.| entry of every column of u positive (first one on ties),
    flipping the matching row of vt, in place.  A deterministic sign convention, so the
    same input and seed always give the same factors."""
    cdef Py_ssize_t m = u.shape[0], r = u.shape[1], n = vt.shape[1]
    if vt.shape[0] != r:
        raise ValueError(f"flip_signs: vt must have {r} rows like u has columns; got {vt.shape[0]}")
    cdef Py_ssize_t i, j, best
    cdef floating top, a
    with nogil:
        for j in range(r):
            best = 0
            top = -1
            for i in range(m):
                a = fabs(u[i, j])
                if a > top:
                    top = a
                    best = i
            if m > 0 and u[best, j] < 0:
                for i in range(m):
                    u[i, j] = -u[i, j]
                for i in range(n):
                    vt[j, i] = -vt[j, i]


def scale_columns_to_rows(floating[:, ::1] v, floating[::1] s, floating[:, ::1] out):
    """out (r, n) = (v / s)^T for v (n, r): the right singular vectors from A^T Q Ub, one
    pass.  Zero singular values give zero rows (the direction is arbitrary then)."""
    cdef Py_ssize_t n = v.shape[0], r = v.shape[1], i, j
    cdef floating inv
    if s.shape[0] != r or out.shape[0] != r or out.shape[1] != n:
        raise ValueError("scale_columns_to_rows: shapes do not agree")
    with nogil:
        for j in range(r):
            inv = 1 / s[j] if s[j] > 0 else 0
            for i in range(n):
                out[j, i] = v[i, j] * inv


def sum_squares(const floating[:, ::1] a):
    """||a||_F^2 accumulated in float64 (exact enough to subtract captured energy from).

    Eight independent partial sums per row let the compiler keep the FMA pipes busy;
    one dependent chain would cost four cycles per value.
    """
    cdef Py_ssize_t m = a.shape[0], n = a.shape[1], i, j, n8 = n - n % 8
    cdef double acc = 0, v, p0, p1, p2, p3, p4, p5, p6, p7
    cdef const floating* row
    with nogil:
        for i in range(m):
            row = &a[i, 0] if n > 0 else NULL
            p0 = p1 = p2 = p3 = p4 = p5 = p6 = p7 = 0
            for j in range(0, n8, 8):
                p0 += <double>row[j] * row[j]
                p1 += <double>row[j + 1] * row[j + 1]
                p2 += <double>row[j + 2] * row[j + 2]
                p3 += <double>row[j + 3] * row[j + 3]
                p4 += <double>row[j + 4] * row[j + 4]
                p5 += <double>row[j + 5] * row[j + 5]
                p6 += <double>row[j + 6] * row[j + 6]
                p7 += <double>row[j + 7] * row[j + 7]
            for j in range(n8, n):
                v = row[j]
                p0 += v * v
            acc += ((p0 + p1) + (p2 + p3)) + ((p4 + p5) + (p6 + p7))
    return acc
