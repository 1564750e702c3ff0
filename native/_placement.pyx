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
from libc.math cimport INFINITY

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

    /* The per-pair loops, written so the compiler vectorises them.  On x86-64 Linux with
       GCC >= 12 they are also compiled for AVX2 and AVX-512 (64-bit multiplies in SIMD)
       and picked at load time; every variant does the same integer and IEEE operations
       (no FMA: -ffp-contract=off), so results are bit-identical across variants. */
    #if defined(__x86_64__) && defined(__linux__) && defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 12 \
        && !defined(EDGELOOP_NO_CLONES)
    #define EDGELOOP_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
    #else
    #define EDGELOOP_CLONES
    #endif

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


cdef void _mix_all(const uint64_t[::1] src, uint64_t salt, uint64_t[::1] dst) noexcept nogil:
    """pre30(mix64(id ^ salt)) of every id: a node's half of every pair hash."""
    cdef Py_ssize_t i
    for i in range(src.shape[0]):
        dst[i] = pre30(mix64(src[i] ^ salt))


def assign(const uint64_t[::1] keys, const uint64_t[::1] nodes, const double[::1] weights,
           bint weighted, int64_t[::1] out, int n_threads=0):
    """First choice of every key (parallel over keys; n_threads <= 0: the OpenMP default).

    Fewer than PARALLEL_MIN_KEYS keys run serially: a thread team costs more than it saves.
    """
    cdef Py_ssize_t k, K = keys.shape[0], N = nodes.shape[0]
    cdef int nt = n_threads if n_threads > 0 else edgeloop_omp_max_threads()
    if K < PARALLEL_MIN_KEYS or nt < 1:
        nt = 1
    cdef uint64_t[::1] nb = _alloc_u64(N)
    cdef uint64_t[:, ::1] scratch = np.empty((nt, N), dtype=np.uint64)  # one row per thread
    cdef double[::1] inv_w = np.empty(N, dtype=np.float64)
    cdef const uint64_t* pb = &nb[0]
    cdef const uint64_t* ids = &nodes[0]
    cdef const double* w = &weights[0]
    cdef double w_max = 0.0
    for k in range(N):
        w_max = weights[k] if weights[k] > w_max else w_max
        inv_w[k] = 1.0 / weights[k] if weights[k] > 0.0 else INFINITY
    with nogil:
        _mix_all(nodes, _NODE_SALT, nb)
        if nt == 1:
            if weighted:
                for k in range(K):
                    out[k] = best_weighted(pre30(mix64(keys[k] ^ _KEY_SALT)), N, pb, ids, w, &inv_w[0], w_max,
                                           &scratch[0, 0])
            else:
                for k in range(K):
                    out[k] = best_equal(pre30(mix64(keys[k] ^ _KEY_SALT)), N, pb, ids, &scratch[0, 0])
        elif weighted:
            for k in prange(K, schedule="static", num_threads=nt):
                out[k] = best_weighted(pre30(mix64(keys[k] ^ _KEY_SALT)), N, pb, ids, w, &inv_w[0], w_max,
                                       &scratch[threadid(), 0])
        else:
            for k in prange(K, schedule="static", num_threads=nt):
                out[k] = best_equal(pre30(mix64(keys[k] ^ _KEY_SALT)), N, pb, ids, &scratch[threadid(), 0])


def assign_capped(const uint64_t[::1] keys, const uint64_t[::1] nodes, const double[::1] weights,
                  bint weighted, const int64_t[::1] caps, int64_t[::1] out):
    """Bounded-load assignment, keys in index order; ``out`` must hold the first choices.

    A key whose first choice is full takes the best-scoring node that still has room, which is
    exactly the first node with room on its own preference list.
    """
    cdef Py_ssize_t k, c, K = keys.shape[0], N = nodes.shape[0]
    cdef uint64_t[::1] nb = _alloc_u64(N)
    cdef int64_t[::1] load = _alloc_i64(N)
    cdef unsigned char[::1] full = _alloc_u8(N)
    cdef uint64_t a
    with nogil:
        _mix_all(nodes, _NODE_SALT, nb)
        for c in range(N):
            full[c] = caps[c] <= 0
        for k in range(K):
            c = out[k]
            if full[c]:
                a = pre30(mix64(keys[k] ^ _KEY_SALT))
                c = best_masked(a, N, &nb[0], &nodes[0], &weights[0], weighted, &full[0])
                out[k] = c
            if c < 0:  # unreachable when sum(caps) >= K, which the caller checks
                break
            load[c] += 1
            if load[c] >= caps[c]:
                full[c] = 1


def scores(uint64_t key, const uint64_t[::1] nodes, const double[::1] weights, bint weighted,
           uint64_t[::1] raw, double[::1] score):
    """Raw pair hashes and (when weighted) scores of one key against every node."""
    cdef Py_ssize_t i
    cdef uint64_t a = mix64(key ^ _KEY_SALT)
    with nogil:
        for i in range(nodes.shape[0]):
            raw[i] = mix64(a ^ mix64(nodes[i] ^ _NODE_SALT))
            if weighted:
                score[i] = weights[i] / neg_log_u(raw[i])


def capacities(const double[::1] weights_by_id, double capacity_factor, Py_ssize_t n_keys,
               int64_t[::1] caps_by_id):
    """cap_i = ceil(((c * K) * w_i) / sum(w)), sum taken left to right in node-id order."""
    cdef Py_ssize_t i, N = weights_by_id.shape[0]
    cdef double total = 0.0, q, ck = capacity_factor * <double>n_keys
    cdef int64_t cap
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


cdef uint64_t[::1] _alloc_u64(Py_ssize_t n):
    return np.empty(n, dtype=np.uint64)


cdef int64_t[::1] _alloc_i64(Py_ssize_t n):
    return np.zeros(n, dtype=np.int64)


cdef unsigned char[::1] _alloc_u8(Py_ssize_t n):
    return np.zeros(n, dtype=np.uint8)
