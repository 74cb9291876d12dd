"""NumPy reference of ``_detect.pyx``: the same recurrences, a Python loop over time that is
vectorised over channels.

Each function has the signature of its compiled twin: it updates the state arrays in place and
fills the output arrays. The arithmetic is written in the same order as the compiled kernel so
that the two agree to rounding; where the kernel branches per channel, this code computes both
sides and selects with ``np.where``. A sample is missing when it is not finite.
"""

from __future__ import annotations

import numpy as np

__all__ = ["ewma_update", "cusum_update", "rolling_update", "persistence_update", "nis_update",
           "times_ok", "any_negative"]


def ewma_update(x: np.ndarray, alpha: float, threshold: float, warmup: int, min_std: float,
                mean: np.ndarray, var: np.ndarray, count: np.ndarray, zscore: np.ndarray,
                alarm: np.ndarray) -> None:
    """EWMA z-score of each sample against the mean and variance of the samples before it."""
    oma = 1.0 - alpha
    m, v, k = mean.copy(), var.copy(), count.copy()
    with np.errstate(all="ignore"):
        for i in range(x.shape[0]):
            xi = x[i]
            valid = np.isfinite(xi)
            first = valid & (k == 0)
            rest = valid & (k > 0)
            d = xi - m
            s = np.sqrt(v)
            s = np.where(s < min_std, min_std, s)
            zi = d / s
            zscore[i] = np.where(rest, zi, np.nan)
            alarm[i] = rest & (k >= warmup) & (np.abs(zi) > threshold)
            m = np.where(first, xi, np.where(rest, m + alpha * d, m))
            v = np.where(first, 0.0, np.where(rest, oma * (v + alpha * d * d), v))
            k = k + valid
    mean[:] = m
    var[:] = v
    count[:] = k


def cusum_update(x: np.ndarray, k: float, h: float, warmup: int, estimate_mean: bool,
                 estimate_std: bool, reset_on_alarm: bool, count: np.ndarray, wmean: np.ndarray,
                 wm2: np.ndarray, mu: np.ndarray, inv_sd: np.ndarray, s_hi: np.ndarray,
                 s_lo: np.ndarray, upper: np.ndarray, lower: np.ndarray,
                 alarm: np.ndarray) -> None:
    """Two-sided tabular CUSUM of standardised samples (in units of sigma)."""
    cnt, wm, w2 = count.copy(), wmean.copy(), wm2.copy()
    m, inv, hi, lo = mu.copy(), inv_sd.copy(), s_hi.copy(), s_lo.copy()
    with np.errstate(all="ignore"):
        for i in range(x.shape[0]):
            xi = x[i]
            valid = np.isfinite(xi)
            calibrating = valid & (cnt < warmup)
            running = valid & (cnt >= warmup)
            # calibration (Welford)
            cnt_new = cnt + 1
            d = xi - wm
            wm_new = wm + d / cnt_new
            w2_new = w2 + d * (xi - wm_new)
            done = calibrating & (cnt_new == warmup)
            if estimate_mean:
                m = np.where(done, wm_new, m)
            if estimate_std:
                inv = np.where(done, 1.0 / np.sqrt(w2_new / (warmup - 1)), inv)
            cnt = np.where(calibrating, cnt_new, cnt)
            wm = np.where(calibrating, wm_new, wm)
            w2 = np.where(calibrating, w2_new, w2)
            # CUSUM
            zi = (xi - m) * inv
            hi_new = hi + (zi - k)
            hi_new = np.where(hi_new > 0.0, hi_new, 0.0)
            lo_new = lo + (-zi - k)
            lo_new = np.where(lo_new > 0.0, lo_new, 0.0)
            a_new = (hi_new > h) | (lo_new > h)
            upper[i] = np.where(running, hi_new, np.nan)
            lower[i] = np.where(running, lo_new, np.nan)
            carried = ~valid & (cnt >= warmup) & ((hi > h) | (lo > h))
            alarm[i] = np.where(running, a_new, carried)
            if reset_on_alarm:
                hi_new = np.where(a_new, 0.0, hi_new)
                lo_new = np.where(a_new, 0.0, lo_new)
            hi = np.where(running, hi_new, hi)
            lo = np.where(running, lo_new, lo)
    count[:] = cnt
    wmean[:] = wm
    wm2[:] = w2
    mu[:] = m
    inv_sd[:] = inv
    s_hi[:] = hi
    s_lo[:] = lo


def _rolling_resync(ring: np.ndarray, shift: np.ndarray):
    # Same order as the kernel: a sequential sum over the window (not numpy's pairwise sum).
    w, c = ring.shape
    s = np.zeros(c)
    cnt = np.zeros(c, dtype=np.int64)
    for q in range(w):
        b = ring[q]
        ok = np.isfinite(b)
        s = np.where(ok, s + (b - shift), s)
        cnt = cnt + ok
    mr = np.where(cnt > 0, s / np.maximum(cnt, 1), 0.0)
    acc = np.zeros(c)
    for q in range(w):
        b = ring[q]
        d = (b - shift) - mr
        acc = np.where(np.isfinite(b), acc + d * d, acc)
    new_shift = shift + mr
    return cnt, new_shift, mr - (new_shift - shift), acc


def _recip(k: np.ndarray) -> np.ndarray:
    return np.where(k > 0, 1.0 / np.maximum(k, 1), 0.0)


def _recip_dof(k: np.ndarray, ddof: int) -> np.ndarray:
    return np.where(k > ddof, 1.0 / np.maximum(k - ddof, 1), np.nan)


def rolling_update(x: np.ndarray, ddof: int, min_periods: int, low: float, high: float,
                   max_var: float, resync_wraps: int, ring: np.ndarray, pos: np.ndarray,
                   nvalid: np.ndarray, shift: np.ndarray, mean: np.ndarray, m2: np.ndarray,
                   out_mean: np.ndarray, out_var: np.ndarray, alarm: np.ndarray) -> None:
    """Mean and variance over the last ``window`` samples (ring: ``(window, n_channels)``).
    ``pos`` is ``[ring position, wraps since the last exact recomputation]``; ``mean`` is
    relative to ``shift``."""
    w = ring.shape[0]
    p, wr = int(pos[0]), int(pos[1])
    k, m, s2, nv = shift.copy(), mean.copy(), m2.copy(), nvalid.copy()
    with np.errstate(all="ignore"):
        for i in range(x.shape[0]):
            xi = x[i]
            xv = np.isfinite(xi)
            xi = np.where(xv, xi, np.nan)
            y = ring[p].copy()
            yv = np.isfinite(y)
            both = xv & yv
            add = xv & ~yv
            rem = ~xv & yv
            # replace: n unchanged
            xs = xi - k
            ys = y - k
            d_r = xs - ys
            mn_r = m + d_r * _recip(nv)
            s2_r = s2 + d_r * (xs - mn_r + ys - m)
            # add: n + 1; the first sample into an empty window becomes the shift
            k_a = np.where(nv == 0, xi, k)
            nv_a = nv + 1
            xs_a = xi - k_a
            d_a = xs_a - m
            m_a = m + d_a * _recip(nv_a)
            s2_a = s2 + d_a * (xs_a - m_a)
            # remove: n - 1
            nv_d = nv - 1
            d_d = ys - m
            mn_d = m - d_d * _recip(nv_d)
            s2_d = s2 - d_d * (ys - mn_d)
            empty = nv_d == 0
            mn_d = np.where(empty, 0.0, mn_d)
            s2_d = np.where(empty, 0.0, s2_d)
            k = np.where(add, k_a, k)
            m = np.where(both, mn_r, np.where(add, m_a, np.where(rem, mn_d, m)))
            s2 = np.where(both, s2_r, np.where(add, s2_a, np.where(rem, s2_d, s2)))
            nv = np.where(add, nv_a, np.where(rem, nv_d, nv))
            ring[p] = xi
            p += 1
            if p == w:
                p = 0
                wr += 1
                if wr == resync_wraps:
                    wr = 0
                    nv, k, m, s2 = _rolling_resync(ring, k)
            ok = nv >= min_periods
            ma = k + m
            vr = np.where(s2 > 0.0, s2, 0.0) * _recip_dof(nv, ddof)
            out_mean[i] = np.where(ok, ma, np.nan)
            out_var[i] = np.where(ok, vr, np.nan)
            alarm[i] = ok & ((ma < low) | (ma > high) | (vr > max_var))
    pos[0] = p
    pos[1] = wr
    nvalid[:] = nv
    shift[:] = k
    mean[:] = m
    m2[:] = s2


def persistence_update(x: np.ndarray, t: np.ndarray, sign: float, level: float,
                       clear_level: float, duration: float, run_start: np.ndarray,
                       state: np.ndarray, elapsed: np.ndarray, alarm: np.ndarray) -> None:
    """Alarm when ``sign * x > level`` has held for ``duration`` seconds (times ``t`` in s)."""
    r = run_start.copy()
    a = state.astype(bool)
    for i in range(x.shape[0]):
        xi = x[i]
        valid = np.isfinite(xi)
        xs = sign * xi
        ti = t[i]
        above = xs > level
        hold = ~above & a & (xs > clear_level)
        end = ~above & ~hold
        r_new = np.where(above & np.isnan(r), ti, np.where(end, np.nan, r))
        a_new = a & ~end
        in_run = ~np.isnan(r_new)
        el = np.where(in_run, ti - r_new, 0.0)
        a_new = a_new | (in_run & (el >= duration))
        elapsed[i] = np.where(valid, el, np.nan)
        a = np.where(valid, a_new, a)
        r = np.where(valid, r_new, r)
        alarm[i] = a
    run_start[:] = r
    state[:] = a


def nis_update(nis: np.ndarray, dof: np.ndarray, lower_tab: np.ndarray, upper_tab: np.ndarray,
               resync_wraps: int, ring_nis: np.ndarray, ring_dof: np.ndarray, pos: np.ndarray,
               nsum: np.ndarray, dsum: np.ndarray, stat: np.ndarray, out_dof: np.ndarray,
               alarm: np.ndarray) -> None:
    """Windowed NIS sum and its chi-square test; ``dof`` has the shape of ``nis`` (it may be a
    broadcast view). ``pos`` is ``[ring position, wraps since the last re-sum]``."""
    w, c = ring_nis.shape
    p, wr = int(pos[0]), int(pos[1])
    s, dd = nsum.copy(), dsum.copy()
    for i in range(nis.shape[0]):
        v = nis[i]
        d = dof[i]
        ok = np.isfinite(v) & (d > 0)
        v = np.where(ok, v, 0.0)
        d = np.where(ok, d, 0)
        s = s + (v - ring_nis[p])
        dd = dd + (d - ring_dof[p])
        ring_nis[p] = v
        ring_dof[p] = d
        p += 1
        if p == w:
            p = 0
            wr += 1
            if wr == resync_wraps:
                wr = 0
                s = np.zeros(c)
                dd = np.zeros(c, dtype=np.int64)
                for q in range(w):
                    s = s + ring_nis[q]
                    dd = dd + ring_dof[q]
        stat[i] = np.where(dd > 0, s, np.nan)
        out_dof[i] = dd
        alarm[i] = (s > upper_tab[dd]) | (s < lower_tab[dd])
    pos[0] = p
    pos[1] = wr
    nsum[:] = s
    dsum[:] = dd


def times_ok(t: np.ndarray, last: float) -> bool:
    """True when every time is finite and none is earlier than the one before (``last`` before
    the first)."""
    if t.size == 0:
        return True
    return bool(np.all(np.isfinite(t)) and t[0] >= last and np.all(t[1:] >= t[:-1]))


def any_negative(x: np.ndarray) -> bool:
    """True when some element is < 0 (NaN is not)."""
    return bool(np.any(x < 0.0))
