"""Compiled streaming detectors: per-sample recurrences run without the GIL.

Every function here updates a detector's state arrays in place and writes one output row per
input sample. Inputs are ``(n_samples, n_channels)`` C-contiguous float64; state vectors have one
element per channel; ring buffers are ``(window, n_channels)`` like the input. Time is processed
in blocks of rows: within a block each channel runs its recurrence with the state in local
variables (registers), and a block (of input, outputs and ring rows) is small enough to stay in
cache while the channels take their turns, however many channels there are. The arithmetic per
sample does not depend on the blocking or on how the caller split the stream into batches, so
results are identical either way.

A sample is *missing* when it is not finite (NaN or +-inf). ``fabs(v) <= DBL_MAX`` tests that
with one comparison; the build does not use -ffast-math, so the compiler keeps NaN semantics.

The NumPy reference of every function is in ``_detect_py.py``; it performs the same operations in
the same order, so the two agree to rounding (bit for bit unless the compiler contracts a
multiply-add into an FMA, which it does only when built with -march=native).
"""

from libc.float cimport DBL_MAX
from libc.math cimport NAN, fabs, sqrt
from libc.stdint cimport int64_t, uint8_t


cdef extern from *:
    """
    /* max(t, 0) without a branch: gcc keeps ``t > 0 ? t : 0`` as a jump (it must preserve NaN and
       signed-zero semantics), and on in-control data that jump is taken at random. MAXSD computes
       exactly ``t > 0 ? t : 0`` (NaN -> 0), the expression the NumPy reference evaluates. */
    #if defined(__SSE2__)
    #include <emmintrin.h>
    static inline double twinbench_max0(double t) {
        return _mm_cvtsd_f64(_mm_max_sd(_mm_set_sd(t), _mm_setzero_pd()));
    }
    #else
    static inline double twinbench_max0(double t) { return t > 0.0 ? t : 0.0; }
    #endif
    """
    double twinbench_max0(double t) noexcept nogil


cdef inline bint _finite(double v) noexcept nogil:
    return fabs(v) <= DBL_MAX


cdef inline Py_ssize_t _block(Py_ssize_t n, Py_ssize_t c) noexcept nogil:
    # About 16 KiB of each array per block, so that while one channel walks down its column the
    # rows stay in L1 for the next channel. One channel needs no blocking at all.
    cdef Py_ssize_t b
    if c == 1:
        return n if n > 0 else 1
    b = 2048 // c
    return b if b > 8 else 8


# --- EWMA z-score ---------------------------------------------------------------------------------

cdef inline void _ewma_channel(const double* x, Py_ssize_t n, Py_ssize_t c, double alpha,
                               double one_minus_alpha, double threshold, int64_t warmup,
                               double min_std, double* mean, double* var, int64_t* count,
                               double* z, uint8_t* alarm) noexcept nogil:
    cdef double m = mean[0], v = var[0], xi, d, s, zi
    cdef int64_t k = count[0]
    cdef Py_ssize_t i, o
    for i in range(n):
        o = i * c
        xi = x[o]
        if not _finite(xi):
            z[o] = NAN
            alarm[o] = 0
            continue
        if k == 0:
            m = xi
            v = 0.0
            k = 1
            z[o] = NAN
            alarm[o] = 0
            continue
        d = xi - m
        # sqrt and the division are off the recurrence's dependency chain (m, v): they overlap.
        s = sqrt(v)
        if s < min_std:
            s = min_std
        zi = d / s
        z[o] = zi
        alarm[o] = (k >= warmup) & (fabs(zi) > threshold)
        m = m + alpha * d
        v = one_minus_alpha * (v + alpha * d * d)
        k += 1
    mean[0] = m
    var[0] = v
    count[0] = k


def ewma_update(const double[:, ::1] x, double alpha, double threshold, int64_t warmup,
                double min_std, double[::1] mean, double[::1] var, int64_t[::1] count,
                double[:, ::1] zscore, uint8_t[:, ::1] alarm):
    """EWMA z-score of each sample against the mean and variance of the samples before it."""
    cdef Py_ssize_t n = x.shape[0], c = x.shape[1], b, j, i0, nb
    if n == 0:
        return
    cdef const double* xp = &x[0, 0]
    cdef double* zp = &zscore[0, 0]
    cdef uint8_t* ap = &alarm[0, 0]
    cdef double oma = 1.0 - alpha
    with nogil:
        b = _block(n, c)
        i0 = 0
        while i0 < n:
            nb = n - i0 if n - i0 < b else b
            for j in range(c):
                _ewma_channel(xp + i0 * c + j, nb, c, alpha, oma, threshold, warmup, min_std,
                              &mean[j], &var[j], &count[j], zp + i0 * c + j, ap + i0 * c + j)
            i0 += nb


# --- two-sided CUSUM ------------------------------------------------------------------------------

cdef inline void _cusum_channel(const double* x, Py_ssize_t n, Py_ssize_t c, double k, double h,
                                int64_t warmup, bint estimate_mean, bint estimate_std,
                                bint reset_on_alarm, int64_t* count, double* wmean, double* wm2,
                                double* mu, double* inv_sd, double* s_hi, double* s_lo,
                                double* upper, double* lower, uint8_t* alarm) noexcept nogil:
    cdef double hi = s_hi[0], lo = s_lo[0], m = mu[0], inv = inv_sd[0], xi, zi, d
    cdef double wm = wmean[0], w2 = wm2[0]
    cdef int64_t cnt = count[0]
    cdef bint a
    cdef Py_ssize_t i, o
    for i in range(n):
        o = i * c
        xi = x[o]
        if not _finite(xi):
            upper[o] = NAN
            lower[o] = NAN
            alarm[o] = (cnt >= warmup) & ((hi > h) | (lo > h))
            continue
        if cnt < warmup:
            # Calibration (Welford): these samples estimate the in-control mean and sigma.
            cnt += 1
            d = xi - wm
            wm = wm + d / cnt
            w2 = w2 + d * (xi - wm)
            if cnt == warmup:
                if estimate_mean:
                    m = wm
                if estimate_std:
                    inv = 1.0 / sqrt(w2 / (warmup - 1))
            upper[o] = NAN
            lower[o] = NAN
            alarm[o] = 0
            continue
        zi = (xi - m) * inv
        # One add and one max per side on the recurrence's dependency chain.
        hi = twinbench_max0(hi + (zi - k))
        lo = twinbench_max0(lo + (-zi - k))
        a = (hi > h) | (lo > h)
        upper[o] = hi
        lower[o] = lo
        alarm[o] = a
        if reset_on_alarm and a:
            hi = 0.0
            lo = 0.0
    s_hi[0] = hi
    s_lo[0] = lo
    mu[0] = m
    inv_sd[0] = inv
    wmean[0] = wm
    wm2[0] = w2
    count[0] = cnt


def cusum_update(const double[:, ::1] x, double k, double h, int64_t warmup, bint estimate_mean,
                 bint estimate_std, bint reset_on_alarm, int64_t[::1] count, double[::1] wmean,
                 double[::1] wm2, double[::1] mu, double[::1] inv_sd, double[::1] s_hi,
                 double[::1] s_lo, double[:, ::1] upper, double[:, ::1] lower,
                 uint8_t[:, ::1] alarm):
    """Two-sided tabular CUSUM of standardised samples (in units of sigma)."""
    cdef Py_ssize_t n = x.shape[0], c = x.shape[1], b, j, i0, nb, o
    if n == 0:
        return
    cdef const double* xp = &x[0, 0]
    cdef double* up = &upper[0, 0]
    cdef double* lp = &lower[0, 0]
    cdef uint8_t* ap = &alarm[0, 0]
    with nogil:
        b = _block(n, c)
        i0 = 0
        while i0 < n:
            nb = n - i0 if n - i0 < b else b
            for j in range(c):
                o = i0 * c + j
                _cusum_channel(xp + o, nb, c, k, h, warmup, estimate_mean, estimate_std,
                               reset_on_alarm, &count[j], &wmean[j], &wm2[j], &mu[j], &inv_sd[j],
                               &s_hi[j], &s_lo[j], up + o, lp + o, ap + o)
            i0 += nb


# --- rolling mean and variance (windowed Welford) -------------------------------------------------
#
# The recurrences run on shifted data ``x - shift``, with ``shift`` a value near the window's mean
# (the first sample into an empty window, then the mean at each exact recomputation): the running
# mean is then of the order of the spread, not of the offset, and its rounding does not grow with
# the offset (1e6 + noise keeps ~14 significant digits of the variance instead of ~8).

cdef inline void _rolling_resync(const double* ring, Py_ssize_t w, Py_ssize_t c, int64_t* nv,
                                 double* shift, double* m, double* m2) noexcept nogil:
    # Exact two-pass recomputation from the buffer, so that the rounding of the add/remove
    # updates does not accumulate over long streams; the shift moves to the new mean.
    cdef double s = 0.0, d, mr, acc = 0.0, k = shift[0]
    cdef int64_t cnt = 0
    cdef Py_ssize_t q
    for q in range(w):
        if _finite(ring[q * c]):
            s = s + (ring[q * c] - k)
            cnt += 1
    mr = s / cnt if cnt > 0 else 0.0
    for q in range(w):
        if _finite(ring[q * c]):
            d = (ring[q * c] - k) - mr
            acc = acc + d * d
    nv[0] = cnt
    # The new shift is the mean rounded to a double; the mean relative to it keeps the residue
    # (``(k + mr) - k`` is exact: the two are close).
    shift[0] = k + mr
    m[0] = mr - (shift[0] - k)
    m2[0] = acc


cdef inline double _recip(int64_t k) noexcept nogil:
    return 1.0 / k if k > 0 else 0.0


cdef inline double _recip_dof(int64_t k, int64_t ddof) noexcept nogil:
    return 1.0 / (k - ddof) if k > ddof else NAN


cdef inline Py_ssize_t _rolling_channel(const double* x, Py_ssize_t n, Py_ssize_t c,
                                        Py_ssize_t w, Py_ssize_t pos, int64_t* wraps,
                                        int64_t resync_wraps, int64_t ddof, int64_t min_periods,
                                        double low, double high, double max_var, double* ring,
                                        int64_t* nvalid, double* shift, double* mean,
                                        double* m2, double* out_mean, double* out_var,
                                        uint8_t* alarm) noexcept nogil:
    cdef double k = shift[0], m = mean[0], s2 = m2[0], xi, y, xs, ys, d, mn, vr, ma
    cdef int64_t nv = nvalid[0], wr = wraps[0]
    # Reciprocals of the counts change only when a missing sample enters or leaves the window:
    # the steady state multiplies instead of dividing.
    cdef double inv_n = _recip(nv), inv_dof = _recip_dof(nv, ddof)
    cdef Py_ssize_t i, o, p = pos
    cdef bint xv, yv
    for i in range(n):
        o = i * c
        xi = x[o]
        xv = _finite(xi)
        if not xv:
            xi = NAN
        y = ring[p * c]
        yv = _finite(y)
        if xv and yv:
            xs = xi - k
            ys = y - k
            d = xs - ys
            mn = m + d * inv_n
            s2 = s2 + d * (xs - mn + ys - m)
            m = mn
        elif xv:
            if nv == 0:
                k = xi
            nv += 1
            inv_n = _recip(nv)
            inv_dof = _recip_dof(nv, ddof)
            xs = xi - k
            d = xs - m
            m = m + d * inv_n
            s2 = s2 + d * (xs - m)
        elif yv:
            nv -= 1
            inv_n = _recip(nv)
            inv_dof = _recip_dof(nv, ddof)
            if nv == 0:
                m = 0.0
                s2 = 0.0
            else:
                ys = y - k
                d = ys - m
                mn = m - d * inv_n
                s2 = s2 - d * (ys - mn)
                m = mn
        ring[p * c] = xi
        p += 1
        if p == w:
            p = 0
            wr += 1
            if wr == resync_wraps:
                wr = 0
                _rolling_resync(ring, w, c, &nv, &k, &m, &s2)
                inv_n = _recip(nv)
                inv_dof = _recip_dof(nv, ddof)
        if nv >= min_periods:
            ma = k + m
            vr = twinbench_max0(s2) * inv_dof
            out_mean[o] = ma
            out_var[o] = vr
            alarm[o] = (ma < low) | (ma > high) | (vr > max_var)
        else:
            out_mean[o] = NAN
            out_var[o] = NAN
            alarm[o] = 0
    shift[0] = k
    mean[0] = m
    m2[0] = s2
    nvalid[0] = nv
    wraps[0] = wr
    return p


def rolling_update(const double[:, ::1] x, int64_t ddof, int64_t min_periods, double low,
                   double high, double max_var, int64_t resync_wraps, double[:, ::1] ring,
                   int64_t[::1] pos, int64_t[::1] nvalid, double[::1] shift, double[::1] mean,
                   double[::1] m2,
                   double[:, ::1] out_mean, double[:, ::1] out_var, uint8_t[:, ::1] alarm):
    """Mean and variance over the last ``window`` samples (ring: ``(window, n_channels)``).
    ``pos`` is ``[ring position, wraps since the last exact recomputation]``, shared by the
    channels; the recomputation happens every ``resync_wraps`` wraps of the ring. ``mean`` is
    relative to ``shift``."""
    cdef Py_ssize_t n = x.shape[0], c = x.shape[1], w = ring.shape[0], b, j, i0, nb, o
    cdef Py_ssize_t p0 = pos[0], p1 = pos[0]
    cdef int64_t wr0 = pos[1], wr1 = pos[1]
    if n == 0:
        return
    cdef const double* xp = &x[0, 0]
    cdef double* mp = &out_mean[0, 0]
    cdef double* vp = &out_var[0, 0]
    cdef uint8_t* ap = &alarm[0, 0]
    cdef double* rp = &ring[0, 0]
    with nogil:
        b = _block(n, c)
        i0 = 0
        while i0 < n:
            nb = n - i0 if n - i0 < b else b
            for j in range(c):
                o = i0 * c + j
                # Every channel starts the block at the same ring position and ends at the same.
                wr1 = wr0
                p1 = _rolling_channel(xp + o, nb, c, w, p0, &wr1, resync_wraps, ddof,
                                      min_periods, low, high, max_var, rp + j, &nvalid[j],
                                      &shift[j], &mean[j], &m2[j], mp + o, vp + o, ap + o)
            p0 = p1
            wr0 = wr1
            i0 += nb
    pos[0] = p0
    pos[1] = wr0


# --- threshold with persistence -------------------------------------------------------------------

cdef inline void _persist_channel(const double* x, const double* t, Py_ssize_t n, Py_ssize_t c,
                                  double sign, double level, double clear_level, double duration,
                                  double* run_start, uint8_t* state, double* elapsed,
                                  uint8_t* alarm) noexcept nogil:
    cdef double r = run_start[0], xs, ti, el
    cdef uint8_t a = state[0]
    cdef Py_ssize_t i, o
    for i in range(n):
        o = i * c
        xs = x[o]
        if not _finite(xs):
            elapsed[o] = NAN
            alarm[o] = a
            continue
        # ``sign`` is +1 or -1: "below" is "above" on the negated signal, exactly.
        xs = sign * xs
        ti = t[i]
        if xs > level:
            if r != r:
                r = ti
        elif a and xs > clear_level:
            pass  # inside the hysteresis band the alarm, and the run, hold
        else:
            r = NAN
            a = 0
        if r == r:
            el = ti - r
            if el >= duration:
                a = 1
        else:
            el = 0.0
        elapsed[o] = el
        alarm[o] = a
    run_start[0] = r
    state[0] = a


def persistence_update(const double[:, ::1] x, const double[::1] t, double sign, double level,
                       double clear_level, double duration, double[::1] run_start,
                       uint8_t[::1] state, double[:, ::1] elapsed, uint8_t[:, ::1] alarm):
    """Alarm when ``sign * x > level`` has held for ``duration`` seconds (times ``t`` in s)."""
    cdef Py_ssize_t n = x.shape[0], c = x.shape[1], b, j, i0, nb, o
    if n == 0:
        return
    cdef const double* xp = &x[0, 0]
    cdef const double* tp = &t[0]
    cdef double* ep = &elapsed[0, 0]
    cdef uint8_t* ap = &alarm[0, 0]
    with nogil:
        b = _block(n, c)
        i0 = 0
        while i0 < n:
            nb = n - i0 if n - i0 < b else b
            for j in range(c):
                o = i0 * c + j
                _persist_channel(xp + o, tp + i0, nb, c, sign, level, clear_level, duration,
                                 &run_start[j], &state[j], ep + o, ap + o)
            i0 += nb


# --- chi-square test of the windowed NIS ----------------------------------------------------------

cdef inline Py_ssize_t _nis_channel(const double* nis, const int64_t* dof, Py_ssize_t n,
                                    Py_ssize_t c, Py_ssize_t dof_si, Py_ssize_t w, Py_ssize_t pos,
                                    int64_t* wraps, int64_t resync_wraps,
                                    const double* lower_tab, const double* upper_tab,
                                    double* ring_nis, int64_t* ring_dof, double* nsum,
                                    int64_t* dsum, double* stat, int64_t* out_dof,
                                    uint8_t* alarm) noexcept nogil:
    cdef double s = nsum[0], v
    cdef int64_t dd = dsum[0], d, wr = wraps[0]
    cdef Py_ssize_t i, o, p = pos, q
    for i in range(n):
        o = i * c
        v = nis[o]
        d = dof[i * dof_si]
        if not _finite(v) or d <= 0:
            # A missing sample adds nothing to the window: no NIS, no degrees of freedom.
            v = 0.0
            d = 0
        # One add on the sum's dependency chain; the difference does not depend on it.
        s = s + (v - ring_nis[p * c])
        dd = dd + (d - ring_dof[p * c])
        ring_nis[p * c] = v
        ring_dof[p * c] = d
        p += 1
        if p == w:
            p = 0
            wr += 1
            if wr == resync_wraps:
                # Re-sum now and then so that the sliding sum's rounding does not accumulate.
                wr = 0
                s = 0.0
                dd = 0
                for q in range(w):
                    s = s + ring_nis[q * c]
                    dd = dd + ring_dof[q * c]
        stat[o] = s if dd > 0 else NAN
        out_dof[o] = dd
        # Entry 0 of both tables is -inf / +inf: an empty window never alarms.
        alarm[o] = (s > upper_tab[dd]) | (s < lower_tab[dd])
    nsum[0] = s
    dsum[0] = dd
    wraps[0] = wr
    return p


def nis_update(const double[:, ::1] nis, const int64_t[:, :] dof, const double[::1] lower_tab,
               const double[::1] upper_tab, int64_t resync_wraps, double[:, ::1] ring_nis,
               int64_t[:, ::1] ring_dof, int64_t[::1] pos, double[::1] nsum, int64_t[::1] dsum,
               double[:, ::1] stat, int64_t[:, ::1] out_dof, uint8_t[:, ::1] alarm):
    """Windowed NIS sum and its chi-square test. ``dof`` may be a broadcast (zero-stride) view
    of shape ``(n_samples, n_channels)``; the tables must cover ``window * max(dof)``. ``pos`` is
    ``[ring position, wraps since the last re-sum]``."""
    cdef Py_ssize_t n = nis.shape[0], c = nis.shape[1], w = ring_nis.shape[0], b, j, i0, nb, o
    cdef Py_ssize_t p0 = pos[0], p1 = pos[0]
    cdef int64_t wr0 = pos[1], wr1 = pos[1]
    if n == 0:
        return
    cdef Py_ssize_t dsi = dof.strides[0] // sizeof(int64_t)
    cdef Py_ssize_t dsj = dof.strides[1] // sizeof(int64_t)
    cdef const double* xp = &nis[0, 0]
    cdef const int64_t* dp = &dof[0, 0]
    cdef const double* lt = &lower_tab[0]
    cdef const double* ut = &upper_tab[0]
    cdef double* sp = &stat[0, 0]
    cdef int64_t* odp = &out_dof[0, 0]
    cdef uint8_t* ap = &alarm[0, 0]
    cdef double* rn = &ring_nis[0, 0]
    cdef int64_t* rd = &ring_dof[0, 0]
    with nogil:
        b = _block(n, c)
        i0 = 0
        while i0 < n:
            nb = n - i0 if n - i0 < b else b
            for j in range(c):
                o = i0 * c + j
                wr1 = wr0
                p1 = _nis_channel(xp + o, dp + i0 * dsi + j * dsj, nb, c, dsi, w, p0, &wr1,
                                  resync_wraps, lt, ut, rn + j, rd + j, &nsum[j],
                                  &dsum[j], sp + o, odp + o, ap + o)
            p0 = p1
            wr0 = wr1
            i0 += nb
    pos[0] = p0
    pos[1] = wr0


# --- input checks ---------------------------------------------------------------------------------

def times_ok(const double[::1] t, double last):
    """True when every time is finite and none is earlier than the one before (``last`` before
    the first). One pass, no temporaries."""
    cdef Py_ssize_t n = t.shape[0], i
    cdef double prev = last
    cdef bint bad = 0
    with nogil:
        for i in range(n):
            bad = bad | (not _finite(t[i])) | (t[i] < prev)
            prev = t[i]
    return not bad


def any_negative(const double[:, ::1] x):
    """True when some element is < 0 (NaN is not)."""
    cdef Py_ssize_t n = x.shape[0] * x.shape[1], i
    cdef const double* xp
    cdef bint neg = 0
    if n == 0:
        return False
    xp = &x[0, 0]
    with nogil:
        for i in range(n):
            neg = neg | (xp[i] < 0.0)
    return bool(neg)
