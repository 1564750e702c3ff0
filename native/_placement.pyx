# distutils: extra_compile_args = -ffp-contract=off -funroll-loops
"""Placement hashing for the mesh: XXH64 and weighted rendezvous (HRW) hashing.

Part of the mesh's wire contract: every node must compute the same placement, so
everything here is integer arithmetic or plain IEEE-754 double arithmetic with no
libm call and no fused multiply-add (this module is built with -ffp-contract=off).

Definitions (all arithmetic modulo 2**64 on unsigned 64-bit integers):

* ``stable_hash(data)`` = XXH64(data, seed=0) of the bytes (str is UTF-8 encoded).
* ``mix64(z)`` (the SplitMix64 finaliser):
  ``z ^= z >> 30; z *= 0xBF58476D1CE4E5B9; z ^= z >> 27; z *= 0x94D049BB133111EB; z ^= z >> 31``.
* pair hash ``h(key, node) = mix64(mix64(key ^ KEY_SALT) ^ mix64(node ^ NODE_SALT))`` with
  ``KEY_SALT = 0x243F6A8885A308D3`` and ``NODE_SALT = 0x13198A2E03707344``.
* ``u = (2 * (h >> 12) + 1) / 2**53``, exactly representable, strictly inside (0, 1).
* score ``= w / (-ln u)`` (== ``-w / ln u``); highest score wins, ties go to the smaller node id.
  When every weight is equal (or weights are None) the raw ``h`` is compared as an integer
  instead (bigger wins): the same order as the score except that ``h`` keeps all 64 bits.
* ``ln`` is fdlibm's ``__ieee754_log`` algorithm, specialised to ``u = t / 2**53`` with an
  odd integer ``t``: the exponent comes from integer bit counting, the mantissa scaling is
  exact, and the rest is a fixed sequence of IEEE double +, -, *, / (<1 ulp error).  Its
  result is bit-identical on any IEEE-754 machine that evaluates doubles in double
  precision (FLT_EVAL_METHOD == 0: x86-64 SSE2, aarch64, ...).  The only place a
  difference could arise is a build that evaluates in extended precision (32-bit x87)
  or that contracts a*b+c into an FMA despite -ffp-contract=off.
* bounded load (``capacity_factor`` c, K keys): ``cap_i = ceil(((c * K) * w_i) / total)``
  (capped at K) with ``total`` summed left to right in ascending node-id order, all in IEEE
  double; keys are placed in index order, each on the best-scoring node that still has room.

The weighted kernel skips the exact score of nodes that provably cannot win or tie (see
``best_weighted`` and ``_prune_params``); the bounds carry margins far above rounding
error, so the answer is always the one the definitions above give (the tests compare it
with a brute-force NumPy transcription, bit for bit).
"""
from cython.parallel cimport prange, threadid
from libc.stdint cimport uint64_t, int64_t
from libc.string cimport memcpy
from libc.stdlib cimport malloc, free, qsort
from libc.math cimport INFINITY
from cpython.number cimport PyNumber_Index

from _blas cimport checked_size

import numpy as np

cdef extern from *:
    """
    #include <stdint.h>
    #include <stddef.h>
    #include <string.h>
    #ifdef _OPENMP
    #include <omp.h>
    static int edgeloop_omp_max_threads(void) { return omp_get_max_threads(); }
    #else
    static int edgeloop_omp_max_threads(void) { return 1; }
    #endif

    /* The per-pair loops, written so the compiler vectorises them.  EDGELOOP_CLONES also
       compiles them for AVX2 and AVX-512 (64-bit multiplies in SIMD), picked at load time;
       every variant does the same integer and IEEE operations (no FMA: -ffp-contract=off),
       so results are bit-identical across variants. */
    #include "edgeloop_clones.h"

    /* mix64 without its first step; x is pre30(key side) ^ pre30(node side). */
    #define EDGELOOP_MIX_TAIL(z) do { (z) *= 0xBF58476D1CE4E5B9ULL; (z) ^= (z) >> 27; \
                                      (z) *= 0x94D049BB133111EBULL; (z) ^= (z) >> 31; } while (0)

    /* h[i] = pair hash of a with node i; returns max h. */
    EDGELOOP_CLONES static uint64_t edgeloop_pair_hashes(uint64_t a, const uint64_t *restrict nb,
                                                         uint64_t *restrict h, ptrdiff_t n) {
        uint64_t m = 0;
        for (ptrdiff_t i = 0; i < n; i++) {
            uint64_t z = a ^ nb[i];
            EDGELOOP_MIX_TAIL(z);
            h[i] = z;
            m = z > m ? z : m;
        }
        return m;
    }

    /* r[i] = bits of the double (~h >> 12) * inv_w[i], the surrogate (1 - u) / w up to a
       constant factor; returns the smallest.  Non-negative doubles (and +inf) order like
       their bit patterns; a NaN (zero x times infinite 1/w) sorts above them all. */
    EDGELOOP_CLONES static uint64_t edgeloop_surrogates(uint64_t a, const uint64_t *restrict nb,
                                                        const double *restrict inv_w,
                                                        uint64_t *restrict r, ptrdiff_t n) {
        uint64_t m = ~(uint64_t)0;
        for (ptrdiff_t i = 0; i < n; i++) {
            uint64_t z = a ^ nb[i], bits, rbits;
            double v;
            EDGELOOP_MIX_TAIL(z);
            bits = (z >> 12) ^ 0x433FFFFFFFFFFFFFULL; /* the double 2**52 + (~z >> 12) */
            memcpy(&v, &bits, 8);
            v = (v - 4503599627370496.0) * inv_w[i];
            memcpy(&rbits, &v, 8);
            r[i] = rbits;
            m = rbits < m ? rbits : m;
        }
        return m;
    }

    EDGELOOP_CLONES static ptrdiff_t edgeloop_count_le(const uint64_t *restrict r, uint64_t bound,
                                                       ptrdiff_t n) {
        ptrdiff_t c = 0;
        for (ptrdiff_t i = 0; i < n; i++) c += r[i] <= bound;
        return c;
    }
    """
    int __builtin_clzll(unsigned long long) nogil
    int edgeloop_omp_max_threads() nogil
    uint64_t edgeloop_pair_hashes(uint64_t a, const uint64_t* nb, uint64_t* h, Py_ssize_t n) nogil
    uint64_t edgeloop_surrogates(uint64_t a, const uint64_t* nb, const double* inv_w, uint64_t* r,
                                 Py_ssize_t n) nogil
    Py_ssize_t edgeloop_count_le(const uint64_t* r, uint64_t bound, Py_ssize_t n) nogil

cdef uint64_t P1 = 0x9E3779B185EBCA87ULL
cdef uint64_t P2 = 0xC2B2AE3D27D4EB4FULL
cdef uint64_t P3 = 0x165667B19E3779F9ULL
cdef uint64_t P4 = 0x85EBCA77C2B2AE63ULL
cdef uint64_t P5 = 0x27D4EB2F165667C5ULL

KEY_SALT = 0x243F6A8885A308D3
NODE_SALT = 0x13198A2E03707344
cdef uint64_t _KEY_SALT = 0x243F6A8885A308D3ULL
cdef uint64_t _NODE_SALT = 0x13198A2E03707344ULL

# fdlibm e_log.c constants
cdef double LN2_HI = 6.93147180369123816490e-01
cdef double LN2_LO = 1.90821492927058770002e-10
cdef double LG1 = 6.666666666666735130e-01
cdef double LG2 = 3.999999999940941908e-01
cdef double LG3 = 2.857142874366239149e-01
cdef double LG4 = 2.222219843214978396e-01
cdef double LG5 = 1.818357216161805012e-01
cdef double LG6 = 1.531383769920937332e-01
cdef double LG7 = 1.479819860511658591e-01
cdef double SQRT2 = 1.41421356237309514547  # the double nearest sqrt(2), below it
cdef double TWO_M53 = 1.0 / 9007199254740992.0  # 2**-53, exact
cdef double PRUNE_MARGIN = 1.0 - 1.0 / 1073741824.0  # 1 - 2**-30
cdef double PRUNE_MIN = 2.2250738585072014e-308 * 1152921504606846976.0  # DBL_MIN * 2**60
cdef double COARSE_MARGIN = 1.0 + 1.0 / 1099511627776.0  # 1 + 2**-40
cdef uint64_t TWO_P53 = (<uint64_t>1) << 53
cdef Py_ssize_t PARALLEL_MIN_KEYS = 2048
cdef double CAND_FACTOR = 1.125  # exact in binary
# below 2**53 * (1 - (1 + 2**-18) / CAND_FACTOR) = 2**53 / 9 - 2**35 / 1.125: see best_weighted
cdef uint64_t D_LIMIT = ((<uint64_t>1) << 53) // 9 - ((<uint64_t>1) << 35)
cdef uint64_t D_MIN = (<uint64_t>1) << 20
cdef enum:
    FIRST_STACK_NODES = 512  # PreparedNodes.first keeps its scratch on the stack up to this many nodes


# ---------------------------------------------------------------- XXH64

cdef inline uint64_t _rotl(uint64_t x, int r) noexcept nogil:
    return (x << r) | (x >> (64 - r))


cdef inline uint64_t _read64(const unsigned char* p) noexcept nogil:
    # little-endian by construction, whatever the host byte order
    return (<uint64_t>p[0] | (<uint64_t>p[1] << 8) | (<uint64_t>p[2] << 16) | (<uint64_t>p[3] << 24)
            | (<uint64_t>p[4] << 32) | (<uint64_t>p[5] << 40) | (<uint64_t>p[6] << 48)
            | (<uint64_t>p[7] << 56))


cdef inline uint64_t _read32(const unsigned char* p) noexcept nogil:
    return (<uint64_t>p[0] | (<uint64_t>p[1] << 8) | (<uint64_t>p[2] << 16) | (<uint64_t>p[3] << 24))


cdef inline uint64_t _xxh_round(uint64_t acc, uint64_t lane) noexcept nogil:
    acc = acc + lane * P2
    acc = _rotl(acc, 31)
    return acc * P1


cdef inline uint64_t _xxh_merge(uint64_t h, uint64_t v) noexcept nogil:
    h = h ^ _xxh_round(0, v)
    return h * P1 + P4


cdef uint64_t xxh64(const unsigned char* p, size_t n, uint64_t seed) noexcept nogil:
    """XXH64 as specified in xxHash's doc/xxhash_spec.md."""
    cdef const unsigned char* end = p + n
    cdef uint64_t h, v1, v2, v3, v4
    if n >= 32:
        v1 = seed + P1 + P2
        v2 = seed + P2
        v3 = seed
        v4 = seed - P1
        while p + 32 <= end:
            v1 = _xxh_round(v1, _read64(p))
            v2 = _xxh_round(v2, _read64(p + 8))
            v3 = _xxh_round(v3, _read64(p + 16))
            v4 = _xxh_round(v4, _read64(p + 24))
            p += 32
        h = _rotl(v1, 1) + _rotl(v2, 7) + _rotl(v3, 12) + _rotl(v4, 18)
        h = _xxh_merge(h, v1)
        h = _xxh_merge(h, v2)
        h = _xxh_merge(h, v3)
        h = _xxh_merge(h, v4)
    else:
        h = seed + P5
    h = h + <uint64_t>n
    while p + 8 <= end:
        h = h ^ _xxh_round(0, _read64(p))
        h = _rotl(h, 27) * P1 + P4
        p += 8
    if p + 4 <= end:
        h = h ^ (_read32(p) * P1)
        h = _rotl(h, 23) * P2 + P3
        p += 4
    while p < end:
        h = h ^ (<uint64_t>p[0] * P5)
        h = _rotl(h, 11) * P1
        p += 1
    h = h ^ (h >> 33)
    h = h * P2
    h = h ^ (h >> 29)
    h = h * P3
    h = h ^ (h >> 32)
    return h


cdef bytes _as_bytes(object data, str name):
    if isinstance(data, bytes):
        return <bytes>data
    if isinstance(data, str):
        return (<str>data).encode("utf-8")
    if isinstance(data, (bytearray, memoryview)):
        return bytes(data)
    raise TypeError(f"{name} must be str or bytes, got {type(data).__name__}: {data!r:.80}")


def stable_hash(data):
    """XXH64 (seed 0) of ``data`` (str is UTF-8 encoded) as a Python int in [0, 2**64)."""
    cdef bytes b = _as_bytes(data, "data")
    cdef const char* p = b
    return xxh64(<const unsigned char*>p, len(b), 0)


def stable_hash_many(items, uint64_t[::1] out):
    """Hash every element of the sequence ``items`` into ``out`` (same length)."""
    cdef Py_ssize_t i
    if len(items) != out.shape[0]:
        raise ValueError(f"stable_hash_many: out must have shape ({len(items)},), one slot per item; "
                         f"got ({out.shape[0]},)")
    cdef bytes b
    cdef const char* p
    for i in range(len(items)):
        b = _as_bytes(items[i], f"items[{i}]")
        p = b
        out[i] = xxh64(<const unsigned char*>p, len(b), 0)


# ---------------------------------------------------------------- rendezvous hashing

cdef inline uint64_t mix64(uint64_t z) noexcept nogil:
    z = z ^ (z >> 30)
    z = z * 0xBF58476D1CE4E5B9ULL
    z = z ^ (z >> 27)
    z = z * 0x94D049BB133111EBULL
    return z ^ (z >> 31)


cdef inline uint64_t pre30(uint64_t z) noexcept nogil:
    """First step of mix64.  It distributes over xor, so the pair hash
    mix64(a ^ b) == mix64_tail(pre30(a) ^ pre30(b)): each side is done once, not per pair."""
    return z ^ (z >> 30)


cdef inline uint64_t mix64_tail(uint64_t z) noexcept nogil:
    """mix64 without its first step (see pre30)."""
    z = z * 0xBF58476D1CE4E5B9ULL
    z = z ^ (z >> 27)
    z = z * 0x94D049BB133111EBULL
    return z ^ (z >> 31)


cdef inline double neg_log_u(uint64_t h) noexcept nogil:
    """-ln(u) for u = t / 2**53, t = 2*(h >> 12) + 1; pure IEEE arithmetic (fdlibm log)."""
    cdef uint64_t t = ((h >> 12) << 1) | 1  # odd, in [1, 2**53 - 1]
    cdef int e = 63 - __builtin_clzll(t)  # t in [2**e, 2**(e+1))
    cdef uint64_t bits = (<uint64_t>(1023 - e)) << 52  # the double 2**-e (e <= 52: normal)
    cdef double scale
    memcpy(&scale, &bits, 8)
    cdef double x = (<double>t) * scale  # exact: in [1, 2)
    cdef int k = e - 53  # u = x * 2**k
    if x > SQRT2:
        x = x * 0.5  # exact
        k = k + 1
    cdef double f = x - 1.0  # exact (Sterbenz)
    cdef double hfsq = 0.5 * f * f
    cdef double s = f / (2.0 + f)
    cdef double z = s * s
    cdef double w = z * z
    cdef double t1 = w * (LG2 + w * (LG4 + w * LG6))
    cdef double t2 = z * (LG1 + w * (LG3 + w * (LG5 + w * LG7)))
    cdef double r = t2 + t1
    cdef double dk = <double>k
    cdef double ln_u = dk * LN2_HI - ((hfsq - (s * (hfsq + r) + dk * LN2_LO)) - f)
    return -ln_u


def _neg_log_u(uint64_t h):
    """Test hook: the deterministic -ln(u) used for one pair hash."""
    return neg_log_u(h)


def _pair_hash(uint64_t key, uint64_t node):
    """Test hook: h(key, node) as defined in the module docstring."""
    return mix64(mix64(key ^ _KEY_SALT) ^ mix64(node ^ _NODE_SALT))


cdef inline Py_ssize_t best_equal(uint64_t a, Py_ssize_t n, const uint64_t* nb,
                                  const uint64_t* ids, uint64_t* hb) noexcept nogil:
    """Index of the best node by raw hash: bigger wins, ties to the smaller id (n >= 1).

    ``a`` and ``nb`` are pre30 of the mixed key and of the mixed node ids; ``hb`` is scratch.
    """
    cdef Py_ssize_t i, best = -1
    cdef uint64_t m = edgeloop_pair_hashes(a, nb, hb, n)
    for i in range(n):
        if hb[i] == m and (best < 0 or ids[i] < ids[best]):
            best = i
    return best


cdef inline void _prune_params(double best_s, double w_max, double* c_best, uint64_t* d_max) noexcept nogil:
    """Thresholds for skipping nodes that cannot beat (or tie) the best exact score ``best_s``.

    Let t = 2*(h >> 12) + 1 and d = 2**53 - t = 2*(~h >> 12) + 1, so 1 - u = d / 2**53, and
    d_lo = ~h >> 11 <= d.  Since -ln u >= 1 - u, a node's score is at most w / (1 - u).
    c = best_s * 2**-53 * (1 - 2**-30); a node is skipped when w < c * d_lo (fine test) or
    d_lo >= d_max with d_max > w_max / c (coarse test, one integer compare).  Either way
    w / (1 - u) < best_s * (1 - 2**-31), a margin far above the few-ulp error of the exact
    score, so the skipped node's computed score is strictly below best_s: pruning never
    changes the result.  Tiny best_s (c not a normal number) disables pruning.
    """
    cdef double c = best_s * TWO_M53 * PRUNE_MARGIN
    cdef double q
    if not (c > PRUNE_MIN):
        c_best[0] = 0.0
        d_max[0] = TWO_P53
        return
    c_best[0] = c
    q = (w_max / c) * COARSE_MARGIN
    if q >= 9007199254740992.0:
        d_max[0] = TWO_P53
    else:
        d_max[0] = (<uint64_t>q) + 1


cdef inline double _bits_to_double(uint64_t bits) noexcept nogil:
    cdef double v
    memcpy(&v, &bits, 8)
    return v


cdef inline uint64_t _double_to_bits(double v) noexcept nogil:
    cdef uint64_t bits
    memcpy(&bits, &v, 8)
    return bits


cdef inline Py_ssize_t best_weighted(uint64_t a, Py_ssize_t n, const uint64_t* nb, const uint64_t* ids,
                                     const double* w, const double* inv_w, double w_max,
                                     uint64_t* rb) noexcept nogil:
    """Index of the best node by w / (-ln u), ties to the smaller id (n >= 1).

    ``a`` and ``nb`` are pre30 of the mixed key and of the mixed node ids; ``rb`` is scratch.
    Pass 1 (SIMD) hashes every node once and computes the cheap surrogate r = x / w with
    x = ~h >> 12 = (d - 1) / 2, d = 2**53 (1 - u) (smaller r is better).  The candidates are
    the nodes with r <= CAND_FACTOR * min(r); the surrogate's best node j gets the exact
    score S_j and only the other candidates are checked exactly (usually there are none).
    That is exact, not a heuristic: with 1 - u <= -ln u <= (1 - u) / u, a non-candidate i
    has score_i <= S_j (1 + 2**-19) / (CAND_FACTOR * u_j) when d_j >= 2**20, which is below
    S_j by far more than any rounding error whenever u_j >= (1 + 2**-18) / CAND_FACTOR, i.e.
    d_j <= D_LIMIT.  Outside [2**20, D_LIMIT] (rare unless there are very few nodes) every
    node is checked.  Either way only nodes that pass ``_prune_params`` get the logarithm.
    """
    cdef Py_ssize_t i, j = 0, best
    cdef uint64_t h, d_j, d_lo, d_max, thr
    cdef double s, c_best, best_s
    cdef uint64_t m = edgeloop_surrogates(a, nb, inv_w, rb, n)
    cdef bint scan_all
    thr = _double_to_bits(_bits_to_double(m) * CAND_FACTOR)
    while rb[j] != m:  # m is one of the values: the first node holding it is the guess
        j += 1
    best = j
    h = mix64_tail(a ^ nb[j])
    d_j = (((~h) >> 12) << 1) | 1
    scan_all = d_j > D_LIMIT or d_j < D_MIN  # the candidate bound does not hold
    if not scan_all and edgeloop_count_le(rb, thr, n) == 1:
        return j  # j is the only candidate: no logarithm needed at all
    best_s = w[j] / neg_log_u(h)
    _prune_params(best_s, w_max, &c_best, &d_max)
    for i in range(n):
        if i == j or not (scan_all or rb[i] <= thr):
            continue
        h = mix64_tail(a ^ nb[i])
        d_lo = (~h) >> 11
        if d_lo >= d_max:
            continue
        if w[i] < c_best * <double>(<int64_t>d_lo):
            continue
        s = w[i] / neg_log_u(h)
        if s > best_s or (s == best_s and ids[i] < ids[best]):
            best = i
            best_s = s
            _prune_params(best_s, w_max, &c_best, &d_max)
    return best


cdef inline Py_ssize_t best_masked(uint64_t a, Py_ssize_t n, const uint64_t* nb, const uint64_t* ids,
                                   const double* w, bint weighted, const unsigned char* full) noexcept nogil:
    """Best node among those not ``full`` (exact scores, no pruning); -1 if every node is full.

    ``a`` and ``nb`` are pre30 of the mixed key and of the mixed node ids.
    """
    cdef Py_ssize_t i, best = -1
    cdef uint64_t h, best_h = 0
    cdef double s, best_s = 0.0
    for i in range(n):
        if full[i]:
            continue
        h = mix64_tail(a ^ nb[i])
        if weighted:
            s = w[i] / neg_log_u(h)
            if best < 0 or s > best_s or (s == best_s and ids[i] < ids[best]):
                best = i
                best_s = s
        elif best < 0 or h > best_h or (h == best_h and ids[i] < ids[best]):
            best = i
            best_h = h
    return best


cdef struct RankItem:
    double score
    uint64_t h
    uint64_t node_id
    int64_t index


cdef int _cmp_by_hash(const void* pa, const void* pb) noexcept nogil:
    """Bigger raw pair hash first; ties (impossible for unique ids) to the smaller id."""
    cdef const RankItem* a = <const RankItem*>pa
    cdef const RankItem* b = <const RankItem*>pb
    if a.h != b.h:
        return -1 if a.h > b.h else 1
    if a.node_id != b.node_id:
        return -1 if a.node_id < b.node_id else 1
    return 0


cdef int _cmp_by_score(const void* pa, const void* pb) noexcept nogil:
    """Higher score first; equal scores to the smaller id (the hrw_assign rule)."""
    cdef const RankItem* a = <const RankItem*>pa
    cdef const RankItem* b = <const RankItem*>pb
    if a.score != b.score:
        return -1 if a.score > b.score else 1
    if a.node_id != b.node_id:
        return -1 if a.node_id < b.node_id else 1
    return 0


cdef class PreparedNodes:
    """A node set with its half of every pair hash computed once (the base of ``HrwNodes``).

    Every decision - one key's winner (``first``), its preference order (``rank``) and a
    batch with or without a cap (``_assign_first`` / ``_assign_capped``) - goes through the
    same ``best_equal`` / ``best_weighted`` / ``best_masked`` as before, so they cannot
    disagree.  Arrays must be validated by the caller (``kernels.placement.HrwNodes``);
    once prepared the object is immutable and safe to share between threads.
    """

    cdef object _ids_arr, _w_arr, _nb_arr, _inv_w_arr
    cdef const uint64_t* _ids
    cdef const uint64_t* _nb
    cdef const double* _w
    cdef const double* _inv_w
    cdef double _w_max
    cdef bint _weighted
    cdef Py_ssize_t _n

    def _prepare(self, ids, weights, bint weighted):
        """Take validated ``ids`` (unique uint64[N], N >= 1) and ``weights`` (float64[N]) once."""
        if self._n:
            raise RuntimeError("HrwNodes is immutable: it is already prepared")
        cdef Py_ssize_t i, n = len(ids)
        if n < 1 or len(weights) != n:
            raise ValueError(f"nodes: expected N >= 1 ids and N weights, got {n} and {len(weights)}")
        ids_arr = np.array(ids, dtype=np.uint64, copy=True, order="C")
        w_arr = np.array(weights, dtype=np.float64, copy=True, order="C")
        nb_arr = np.empty(n, dtype=np.uint64)
        inv_w_arr = np.empty(n, dtype=np.float64)
        cdef uint64_t[::1] ids_v = ids_arr, nb_v = nb_arr
        cdef double[::1] w_v = w_arr, inv_v = inv_w_arr
        cdef double w_max = 0.0
        for i in range(n):
            nb_v[i] = pre30(mix64(ids_v[i] ^ _NODE_SALT))
            w_max = w_v[i] if w_v[i] > w_max else w_max
            inv_v[i] = 1.0 / w_v[i] if w_v[i] > 0.0 else INFINITY
        for arr in (ids_arr, w_arr, nb_arr, inv_w_arr):
            arr.flags.writeable = False
        self._ids_arr, self._w_arr, self._nb_arr, self._inv_w_arr = ids_arr, w_arr, nb_arr, inv_w_arr
        self._ids, self._nb, self._w, self._inv_w = &ids_v[0], &nb_v[0], &w_v[0], &inv_v[0]
        self._w_max = w_max
        self._weighted = weighted
        self._n = n

    @property
    def ids(self):
        """The node ids (read-only uint64[N]), in the caller's order: indices refer to it."""
        return self._ids_arr

    @property
    def weights(self):
        """The weights (read-only float64[N]; all ones when none were given)."""
        return self._w_arr

    @property
    def weighted(self):
        """False when every weight is equal: raw pair hashes are then compared as integers."""
        return bool(self._weighted)

    def __len__(self):
        return self._n

    def __reduce__(self):
        return (type(self), (self._ids_arr, self._w_arr))

    cdef Py_ssize_t _first(self, uint64_t key) noexcept nogil:
        """Winner index for one hashed key; -1 if unprepared or out of memory.  Reentrant."""
        cdef uint64_t stack_buf[FIRST_STACK_NODES]
        cdef uint64_t* buf = stack_buf
        cdef Py_ssize_t best
        cdef uint64_t a
        if self._n == 0:
            return -1
        if self._n > FIRST_STACK_NODES:  # no overflow: _n * 8 bytes already exist as _nb
            buf = <uint64_t*>malloc(self._n * sizeof(uint64_t))
            if buf == NULL:
                return -1
        a = pre30(mix64(key ^ _KEY_SALT))
        if self._weighted:
            best = best_weighted(a, self._n, self._nb, self._ids, self._w, self._inv_w, self._w_max, buf)
        else:
            best = best_equal(a, self._n, self._nb, self._ids, buf)
        if buf != stack_buf:
            free(buf)
        return best

    def first(self, key):
        """Index of ``key``'s winner (``key``: an int in [0, 2**64), e.g. ``stable_hash(...)``).

        Exactly ``hrw_assign([key], ...)[0]`` (same code, ties included) but with nothing
        allocated or validated per call beyond the key, serial, so it costs ~1 us at 100
        nodes.  It keeps the GIL: releasing it for a microsecond of work would hand it to
        another thread and could wait a whole switch interval (5 ms) to get it back.
        """
        cdef Py_ssize_t best = self._first(_key_u64(key))
        if best < 0:
            _unusable(self._n)
        return best

    def rank(self, key):
        """``key``'s full preference order (node indices, best first), as ``hrw_rank``."""
        cdef uint64_t k = _key_u64(key)
        if self._n == 0:
            _unusable(0)
        cdef Py_ssize_t i, n = self._n
        out = np.empty(n, dtype=np.int64)
        cdef int64_t[::1] out_v = out
        cdef RankItem* items = <RankItem*>malloc(checked_size(<size_t>n, sizeof(RankItem), "rank", "the ranking"))
        if items == NULL:
            raise MemoryError(f"rank: cannot allocate {n} entries")
        cdef uint64_t a = pre30(mix64(k ^ _KEY_SALT))
        cdef int (*cmp)(const void*, const void*) noexcept nogil
        cmp = _cmp_by_score if self._weighted else _cmp_by_hash
        with nogil:
            for i in range(n):
                items[i].h = mix64_tail(a ^ self._nb[i])
                items[i].score = self._w[i] / neg_log_u(items[i].h) if self._weighted else 0.0
                items[i].node_id = self._ids[i]
                items[i].index = i
            qsort(items, n, sizeof(RankItem), cmp)
            for i in range(n):
                out_v[i] = items[i].index
        free(items)
        return out

    def _assign_first(self, const uint64_t[::1] keys, int64_t[::1] out, int n_threads=0):
        """First choice of every key (parallel over keys; n_threads <= 0: the OpenMP default).

        Fewer than PARALLEL_MIN_KEYS keys run serially: a thread team costs more than it saves.
        """
        cdef Py_ssize_t k, K = keys.shape[0], N = self._n
        if N == 0:
            _unusable(0)
        if out.shape[0] != K:
            raise ValueError(f"out must have shape ({K},), got ({out.shape[0]},)")
        cdef int nt = n_threads if n_threads > 0 else edgeloop_omp_max_threads()
        if K < PARALLEL_MIN_KEYS or nt < 1:
            nt = 1
        cdef uint64_t[:, ::1] scratch = np.empty((nt, N), dtype=np.uint64)  # one row per thread
        cdef const uint64_t* pb = self._nb
        cdef const uint64_t* ids = self._ids
        cdef const double* w = self._w
        cdef const double* inv_w = self._inv_w
        cdef double w_max = self._w_max
        if K == 0:
            return
        with nogil:
            if nt == 1:
                if self._weighted:
                    for k in range(K):
                        out[k] = best_weighted(pre30(mix64(keys[k] ^ _KEY_SALT)), N, pb, ids, w, inv_w, w_max,
                                               &scratch[0, 0])
                else:
                    for k in range(K):
                        out[k] = best_equal(pre30(mix64(keys[k] ^ _KEY_SALT)), N, pb, ids, &scratch[0, 0])
            elif self._weighted:
                for k in prange(K, schedule="static", num_threads=nt):
                    out[k] = best_weighted(pre30(mix64(keys[k] ^ _KEY_SALT)), N, pb, ids, w, inv_w, w_max,
                                           &scratch[threadid(), 0])
            else:
                for k in prange(K, schedule="static", num_threads=nt):
                    out[k] = best_equal(pre30(mix64(keys[k] ^ _KEY_SALT)), N, pb, ids, &scratch[threadid(), 0])

    def _assign_capped(self, const uint64_t[::1] keys, const int64_t[::1] caps, int64_t[::1] out):
        """Bounded-load assignment, keys in index order; ``out`` must hold the first choices.

        A key whose first choice is full takes the best-scoring node that still has room, which is
        exactly the first node with room on its own preference list.
        """
        cdef Py_ssize_t k, c, K = keys.shape[0], N = self._n
        if N == 0:
            _unusable(0)
        if caps.shape[0] != N or out.shape[0] != K:
            raise ValueError(f"caps/out must have shapes ({N},)/({K},), got ({caps.shape[0]},)/({out.shape[0]},)")
        cdef int64_t room = 0
        for c in range(N):  # saturating: huge caps must not overflow the sum
            if caps[c] > 0:
                if caps[c] >= K - room:
                    room = K
                    break
                room += caps[c]
        if room < K:
            raise ValueError(f"caps must leave room for all {K} keys; they sum to {room}")
        for k in range(K):  # out indexes the per-node tables below: it must hold node indices
            if out[k] < 0 or out[k] >= N:
                raise ValueError(f"out must hold the first choices (node indices in [0, {N})); "
                                 f"out[{k}] = {out[k]}")
        cdef int64_t[::1] load = _alloc_i64(N)
        cdef unsigned char[::1] full = _alloc_u8(N)
        cdef uint64_t a
        with nogil:
            for c in range(N):
                full[c] = caps[c] <= 0
            for k in range(K):
                c = out[k]
                if full[c]:
                    a = pre30(mix64(keys[k] ^ _KEY_SALT))
                    c = best_masked(a, N, self._nb, self._ids, self._w, self._weighted, &full[0])
                    out[k] = c
                if c < 0:  # unreachable when sum(caps) >= K, which the caller checks
                    break
                load[c] += 1
                if load[c] >= caps[c]:
                    full[c] = 1


cdef inline uint64_t _key_u64(object key) except? 0:
    """A hashed key as uint64: exact ints only (``__index__``; a float is an error, not truncated)."""
    cdef uint64_t k
    if type(key) is not int:
        try:
            key = PyNumber_Index(key)
        except TypeError:
            raise _bad_key(key) from None
    try:
        k = key
    except OverflowError:
        raise _bad_key(key) from None
    return k


cdef object _bad_key(object key):
    if isinstance(key, int) and not isinstance(key, bool):
        return ValueError(f"key must be in [0, 2**64), got {key}")
    return TypeError(f"key must be an int in [0, 2**64) (e.g. stable_hash(...)), got {type(key).__name__}: {key!r:.80}")


cdef int _unusable(Py_ssize_t n) except -1:
    if n == 0:
        raise RuntimeError("HrwNodes is not prepared: build it with HrwNodes(nodes, weights)")
    raise MemoryError(f"cannot allocate scratch for {n} nodes")


def capacities(const double[::1] weights_by_id, double capacity_factor, Py_ssize_t n_keys,
               int64_t[::1] caps_by_id):
    """cap_i = ceil(((c * K) * w_i) / sum(w)), sum taken left to right in node-id order."""
    cdef Py_ssize_t i, N = weights_by_id.shape[0]
    cdef double total = 0.0, q, ck = capacity_factor * <double>n_keys
    cdef int64_t cap
    if caps_by_id.shape[0] != N:
        raise ValueError(f"capacities: caps_by_id must have shape ({N},) like weights_by_id; "
                         f"got ({caps_by_id.shape[0]},)")
    if n_keys < 0:
        raise ValueError(f"capacities: n_keys must be >= 0; got {n_keys}")
    for i in range(N):
        total = total + weights_by_id[i]
    for i in range(N):
        q = (ck * weights_by_id[i]) / total
        if q >= <double>n_keys:
            caps_by_id[i] = n_keys
            continue
        cap = <int64_t>q
        if <double>cap < q:
            cap += 1
        caps_by_id[i] = cap


cdef int64_t[::1] _alloc_i64(Py_ssize_t n):
    return np.zeros(n, dtype=np.int64)


cdef unsigned char[::1] _alloc_u8(Py_ssize_t n):
    return np.zeros(n, dtype=np.uint8)
