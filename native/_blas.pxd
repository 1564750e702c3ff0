# The BLAS wrappers every module of the numeric core cimports (one copy, not one per module).
#
# Modelled on scikit-learn's ``sklearn/utils/_cython_blas.pxd``: fused float32/float64
# functions, ``nogil``, BLAS taken from ``scipy.linalg.cython_blas`` so that no BLAS headers
# are needed at build time.  Header-only (``inline``): there is no ``_blas`` module to import
# at run time, and a batch-1 ``gemv`` pays no indirect call.
#
# BLAS is column-major and takes 32-bit ``int`` sizes.  Callers convert every size with
# ``blas_int`` at their ``def`` entry, so a dimension above INT_MAX is a ValueError there
# instead of a silently truncated size here.
from cython cimport floating
from libc.limits cimport INT_MAX
from libc.stdint cimport SIZE_MAX
from scipy.linalg.cython_blas cimport sgemm, dgemm, sgemv, dgemv


cdef inline void gemm(char transa, char transb, int m, int n, int k, floating alpha,
                      const floating* a, int lda, const floating* b, int ldb,
                      floating beta, floating* c, int ldc) noexcept nogil:
    """Column-major C (m, n) = alpha op(A) op(B) + beta C for either float type."""
    if floating is float:
        sgemm(&transa, &transb, &m, &n, &k, &alpha, <float*>a, &lda, <float*>b, &ldb,
              &beta, c, &ldc)
    else:
        dgemm(&transa, &transb, &m, &n, &k, &alpha, <double*>a, &lda, <double*>b, &ldb,
              &beta, c, &ldc)


cdef inline void gemv(char trans, int m, int n, floating alpha, const floating* a, int lda,
                      const floating* x, floating beta, floating* y) noexcept nogil:
    """Column-major y = alpha op(A) x + beta y, A (m, n), unit strides."""
    cdef int one = 1
    if floating is float:
        sgemv(&trans, &m, &n, &alpha, <float*>a, &lda, <float*>x, &one, &beta, y, &one)
    else:
        dgemv(&trans, &m, &n, &alpha, <double*>a, &lda, <double*>x, &one, &beta, y, &one)


cdef inline int blas_int(Py_ssize_t value, str fn, str what) except -1:
    """``value`` as a BLAS ``int``, or ValueError naming ``what`` when it does not fit."""
    if value < 0 or value > INT_MAX:
        raise ValueError(f"{fn}: {what} = {value} is outside what 32-bit BLAS can address; "
                         f"expected 0 <= {what} <= {INT_MAX}")
    return <int>value


cdef inline size_t checked_size(size_t count, size_t item, str fn, str what) except? 0:
    """``count * item`` in ``size_t``, or ValueError when the product overflows."""
    if item != 0 and count > SIZE_MAX // item:
        raise ValueError(f"{fn}: {what} of {count} items of {item} bytes overflows size_t")
    return count * item
