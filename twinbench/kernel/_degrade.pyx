"""Particle-filter kernel for degradation tracking and remaining useful life (compiled).

The NumPy reference ``_degrade_py.py`` documents every function; this module has the same
functions, signatures and semantics, with the loops in C and released from the GIL. The arithmetic
follows the reference operation for operation (sequential sums, the same association) so the two
agree to rounding. Random numbers come from the caller (NumPy Generators), never from here: that
keeps both implementations, and any split of the data into batches, on the same random stream.

Layout: ``theta[j, i]`` is parameter ``j`` of particle ``i`` (C-contiguous), so each inner loop
runs over contiguous memory.
"""

from libc.math cimport exp, log, INFINITY
from libc.stdint cimport uint64_t
from libc.stdlib cimport malloc, free
from libc.string cimport memcpy, memset

import numpy as np


cdef inline uint64_t _sort_key(double v) noexcept nogil:
    # An unsigned key whose order is the numeric order of doubles, NaN last and -0.0 == 0.0, as
    # NumPy sorts them.
    cdef uint64_t bits
    if v != v:
        return 0xFFFFFFFFFFFFFFFFULL
    v = v + 0.0
    memcpy(&bits, &v, sizeof(double))
    if bits >> 63:
        return ~bits
    return bits | (<uint64_t>1 << 63)


cdef void _argsort_stable(const double* values, Py_ssize_t n, Py_ssize_t* order,
                          Py_ssize_t* order2, uint64_t* keys, uint64_t* keys2) noexcept nogil:
    # LSD radix sort, one byte per pass. Stable, so ties keep index order: the same permutation
    # as np.argsort(kind="stable"), hence cumulative weights summed in the reference's order.
    cdef Py_ssize_t count[256]
    cdef Py_ssize_t i, d, c, total, pos
    cdef int shift
    cdef Py_ssize_t* src_o = order
    cdef Py_ssize_t* dst_o = order2
    cdef uint64_t* src_k = keys
    cdef uint64_t* dst_k = keys2
    cdef Py_ssize_t* to
    cdef uint64_t* tk
    for i in range(n):
        keys[i] = _sort_key(values[i])
        order[i] = i
    for shift in range(0, 64, 8):
        memset(count, 0, sizeof(count))
        for i in range(n):
            count[(src_k[i] >> shift) & 255] += 1
        if count[(src_k[0] >> shift) & 255] == n:
            continue                  # every key has this byte: the pass would change nothing
        total = 0
        for d in range(256):
            c = count[d]
            count[d] = total
            total += c
        for i in range(n):
            d = (src_k[i] >> shift) & 255
            pos = count[d]
            count[d] = pos + 1
            dst_k[pos] = src_k[i]
            dst_o[pos] = src_o[i]
        to = src_o
        src_o = dst_o
        dst_o = to
        tk = src_k
        src_k = dst_k
        dst_k = tk
    if src_o != order:
        memcpy(order, src_o, n * sizeof(Py_ssize_t))


cdef inline void _jitter(double* theta, const double* std, const double* noise, Py_ssize_t p,
                         Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t j, i
    cdef double s
    cdef double* row
    cdef const double* nrow
    for j in range(p):
        s = std[j]
        row = theta + j * n
        nrow = noise + j * n
        for i in range(n):
            row[i] = row[i] + s * nrow[i]


cdef double _normalise_from_max(double* logw, double* w, Py_ssize_t n, double m) noexcept nogil:
    # ``m``: the largest log-weight, NaNs already replaced by -inf. The sums run sequentially in
    # index order, as np.cumsum does in the reference.
    cdef Py_ssize_t i
    cdef double s = 0.0
    cdef double s2 = 0.0
    cdef double lse, inv, lw, wi
    if not (m > -INFINITY):
        lw = -log(<double>n)
        inv = 1.0 / <double>n
        for i in range(n):
            logw[i] = lw
            w[i] = inv
        return 0.0
    for i in range(n):
        wi = exp(logw[i] - m)
        w[i] = wi
        s = s + wi
    lse = m + log(s)
    inv = 1.0 / s
    for i in range(n):
        logw[i] = logw[i] - lse
        wi = w[i] * inv
        w[i] = wi
        s2 = s2 + wi * wi
    return 1.0 / s2


cdef double _normalise(double* logw, double* w, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t i
    cdef double m = -INFINITY
    cdef double lw
    for i in range(n):
        lw = logw[i]
        if lw != lw:
            lw = -INFINITY
            logw[i] = lw
        if lw > m:
            m = lw
    return _normalise_from_max(logw, w, n, m)


cdef void _systematic(const double* w, Py_ssize_t n, double u, Py_ssize_t* idx) noexcept nogil:
    cdef Py_ssize_t i
    cdef Py_ssize_t j = 0
    cdef double c = w[0]
    cdef double pos
    cdef double dn = <double>n
    for i in range(n):
        pos = (u + <double>i) / dn
        while j < n - 1 and c <= pos:
            j += 1
            c = c + w[j]
        idx[i] = j


cdef bint _resample_if_needed(double* theta, double* logw, const double* w, double ess, double u,
                              double frac, double* work, Py_ssize_t* idx, Py_ssize_t p,
                              Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t i, j
    cdef double lw
    cdef double* row
    cdef double* wrow
    if not (0.0 < ess < frac * <double>n):
        return False
    _systematic(w, n, u, idx)
    for j in range(p):
        row = theta + j * n
        wrow = work + j * n
        for i in range(n):
            wrow[i] = row[idx[i]]
    memcpy(theta, work, p * n * sizeof(double))
    lw = -log(<double>n)
    for i in range(n):
        logw[i] = lw
    return True


cdef int _check(bint ok, str what) except -1:
    # Shapes are checked once per call (the public module builds them right), so that a wrong
    # call from elsewhere raises instead of reading out of bounds.
    if not ok:
        raise ValueError(f"_degrade: inconsistent array shapes ({what})")
    return 0


def jitter(double[:, ::1] theta, const double[::1] process_std, const double[:, ::1] noise):
    """Random-walk step in place: ``theta[j] += process_std[j] * noise[j]``."""
    cdef Py_ssize_t p = theta.shape[0], n = theta.shape[1]
    _check(process_std.shape[0] == p and noise.shape[0] == p and noise.shape[1] == n, "jitter")
    if n == 0:
        return
    with nogil:
        _jitter(&theta[0, 0], &process_std[0], &noise[0, 0], p, n)


def normalise(double[::1] logw, double[::1] w):
    """Normalise log-weights in place; normalised weights into ``w``; return the ESS."""
    cdef double ess
    _check(logw.shape[0] == w.shape[0] and logw.shape[0] > 0, "normalise")
    with nogil:
        ess = _normalise(&logw[0], &w[0], logw.shape[0])
    return ess


def systematic_resample(const double[::1] w, double u, Py_ssize_t[::1] idx):
    """Systematic resampling indices into ``idx`` (see the NumPy reference)."""
    _check(w.shape[0] == idx.shape[0] and w.shape[0] > 0, "systematic_resample")
    with nogil:
        _systematic(&w[0], w.shape[0], u, &idx[0])


def assimilate(double[:, ::1] theta, double[::1] logw, const double[::1] pred, double value,
               double meas_std, double uniform, double resample_frac, double[::1] w,
               double[:, ::1] work, Py_ssize_t[::1] idx):
    """Weight by one measurement given per-particle predictions; normalise; maybe resample."""
    cdef Py_ssize_t p = theta.shape[0], n = theta.shape[1], i
    cdef double inv_sigma = 1.0 / meas_std
    cdef double r, ess
    cdef bint resampled
    _check(n > 0 and logw.shape[0] == n and pred.shape[0] == n and w.shape[0] == n
           and work.shape[0] == p and work.shape[1] == n and idx.shape[0] == n, "assimilate")
    with nogil:
        for i in range(n):
            r = (value - pred[i]) * inv_sigma
            logw[i] = logw[i] - 0.5 * r * r
        ess = _normalise(&logw[0], &w[0], n)
        resampled = _resample_if_needed(&theta[0, 0], &logw[0], &w[0], ess, uniform,
                                        resample_frac, &work[0, 0], &idx[0], p, n)
    return ess, bool(resampled)


def exp_filter(double[:, ::1] theta, double[::1] logw, const double[::1] times,
               const double[::1] values, const double[:, :, ::1] noise,
               const double[::1] uniforms, double t_prev, const double[::1] process_std,
               double meas_std, double offset, double sign, double resample_frac,
               double[::1] ess_out, unsigned char[::1] resampled_out, double[::1] w,
               double[:, ::1] work, Py_ssize_t[::1] idx):
    """Run the exponential-model filter over ``m`` measurements (see the NumPy reference)."""
    cdef Py_ssize_t m = times.shape[0], p = theta.shape[0], n = theta.shape[1]
    cdef Py_ssize_t k, i
    cdef double inv_sigma = 1.0 / meas_std
    cdef double t, dt, y, h, r, ess, lwi, mx
    cdef double* z
    cdef double* b
    cdef double* lw
    cdef int collapsed = 0
    _check(p == 2 and n > 0 and logw.shape[0] == n and values.shape[0] == m
           and noise.shape[0] == m and noise.shape[1] == p and noise.shape[2] == n
           and uniforms.shape[0] == m and process_std.shape[0] == p and ess_out.shape[0] == m
           and resampled_out.shape[0] == m and w.shape[0] == n and work.shape[0] == p
           and work.shape[1] == n and idx.shape[0] == n, "exp_filter")
    if m == 0:
        return 0
    with nogil:
        z = &theta[0, 0]
        b = z + n
        lw = &logw[0]
        for k in range(m):
            t = times[k]
            dt = t - t_prev
            t_prev = t
            y = values[k]
            _jitter(z, &process_std[0], &noise[k, 0, 0], p, n)
            mx = -INFINITY
            for i in range(n):
                z[i] = z[i] + b[i] * dt
                h = offset + sign * exp(z[i])
                r = (y - h) * inv_sigma
                lwi = lw[i] - 0.5 * r * r
                if lwi != lwi:
                    lwi = -INFINITY
                lw[i] = lwi
                if lwi > mx:
                    mx = lwi
            ess = _normalise_from_max(lw, &w[0], n, mx)
            if ess == 0.0:
                collapsed += 1
            ess_out[k] = ess
            resampled_out[k] = _resample_if_needed(z, lw, &w[0], ess, uniforms[k],
                                                   resample_frac, &work[0, 0], &idx[0], p, n)
    return collapsed


def exp_rul(const double[:, ::1] theta, double offset, double sign, double threshold,
            double horizon, double[::1] out):
    """Analytic remaining useful life per particle of the exponential model (s), into ``out``."""
    cdef Py_ssize_t n = theta.shape[1], i
    cdef double level = log(sign * (threshold - offset))
    cdef double zi, bi, r
    _check(theta.shape[0] == 2 and out.shape[0] == n, "exp_rul")
    with nogil:
        for i in range(n):
            zi = theta[0, i]
            bi = theta[1, i]
            if zi >= level:
                r = 0.0
            elif bi > 0.0:
                r = (level - zi) / bi
                if r > horizon:
                    r = INFINITY
            else:
                r = INFINITY
            if r != r:
                r = INFINITY
            out[i] = r


def weighted_summary(const double[::1] values, const double[::1] logw,
                     const double[::1] quantiles, double within, double cap,
                     double[::1] q_out):
    """Weighted quantiles, capped mean and P(value <= within) (see the NumPy reference)."""
    cdef Py_ssize_t n = values.shape[0], nq = quantiles.shape[0], i, j, k
    cdef double total = 0.0, mean = 0.0, p = 0.0, target, wi, v
    cdef double* w
    cdef Py_ssize_t* order
    cdef uint64_t* keys
    cdef double* cum
    _check(n > 0 and logw.shape[0] == n and q_out.shape[0] == nq, "weighted_summary")
    w = <double*>malloc(2 * n * sizeof(double))
    order = <Py_ssize_t*>malloc(2 * n * sizeof(Py_ssize_t))
    keys = <uint64_t*>malloc(2 * n * sizeof(uint64_t))
    if w == NULL or order == NULL or keys == NULL:
        free(w)
        free(order)
        free(keys)
        raise MemoryError()
    cum = w + n
    try:
        with nogil:
            for i in range(n):
                wi = exp(logw[i])
                w[i] = wi
                if wi > 0.0:
                    v = values[i]
                    if v > cap:
                        v = cap
                    mean = mean + wi * v
                if values[i] <= within:
                    p = p + wi
            _argsort_stable(&values[0], n, order, order + n, keys, keys + n)
            for i in range(n):
                total = total + w[order[i]]
                cum[i] = total
            for k in range(nq):
                target = quantiles[k] * total
                j = 0
                while j < n - 1 and cum[j] < target:
                    j += 1
                q_out[k] = values[order[j]]
    finally:
        free(w)
        free(order)
        free(keys)
    return mean / total, p / total
