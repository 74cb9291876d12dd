"""NumPy reference of the particle-filter kernel for degradation tracking (see ``_degrade.pyx``).

Every function here has a compiled twin of the same name, signature and semantics in
``_degrade.pyx``; the tests run both and compare them to ~1e-12. The arithmetic is written in the
same order as the C loops (sequential sums through ``np.cumsum``, the same association of every
product and sum) so that the two agree to rounding, not just statistically.

Layout (as everywhere in the kernel): particle quantities are variable-major, particle-minor,
``theta[j, i]`` is parameter ``j`` of particle ``i``, C-contiguous. Random numbers are never drawn
here: the caller passes standard normals (``noise``, shape ``(m, n_params, n)``) and uniforms in
[0, 1) (``uniforms``, shape ``(m,)``), one set per measurement.

The exponential model keeps, per particle, ``theta[0] = z`` (the log of the distance of the health
indicator from its offset at the time of the last measurement) and ``theta[1] = b`` (growth rate,
1/s), so that ``h(t) = offset + sign * exp(z + b * (t - t_last))``.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = [
    "jitter",
    "normalise",
    "systematic_resample",
    "assimilate",
    "exp_filter",
    "exp_rul",
    "weighted_summary",
]


def jitter(theta: np.ndarray, process_std: np.ndarray, noise: np.ndarray) -> None:
    """Random-walk step in place: ``theta[j] += process_std[j] * noise[j]``."""
    theta += process_std[:, None] * noise


def normalise(logw: np.ndarray, w: np.ndarray) -> float:
    """Normalise log-weights in place (log-sum-exp); normalised weights into ``w``; return the ESS.

    NaN log-weights count as ``-inf``. If no particle has a finite log-weight (the filter
    collapsed: every particle is incompatible with the data) the weights are reset to uniform and
    0.0 is returned.
    """
    n = logw.shape[0]
    np.copyto(logw, -np.inf, where=np.isnan(logw))
    m = float(logw.max()) if n else -math.inf
    if not m > -math.inf:
        logw.fill(-math.log(n))
        w.fill(1.0 / n)
        return 0.0
    np.exp(logw - m, out=w)
    # Sequential sums (cumsum) rather than np.sum's pairwise sum: the order of the C loop.
    s = float(np.cumsum(w)[-1])
    lse = m + math.log(s)
    logw -= lse
    w *= 1.0 / s
    return 1.0 / float(np.cumsum(w * w)[-1])


def systematic_resample(w: np.ndarray, u: float, idx: np.ndarray) -> None:
    """Systematic resampling: ``idx[i]`` = first ``j`` with ``cumsum(w)[j] > (u + i) / n``.

    The same rule as ``filterpy.monte_carlo.systematic_resample`` given the same offset ``u``,
    clipped to the last particle when rounding leaves the cumulative sum just below 1.
    """
    n = w.shape[0]
    positions = (u + np.arange(n, dtype=np.float64)) / n
    j = np.searchsorted(np.cumsum(w), positions, side="right")
    np.minimum(j, n - 1, out=j)
    idx[:] = j


def _resample_if_needed(theta, logw, w, ess, uniform, resample_frac, work, idx) -> bool:
    n = logw.shape[0]
    if not (0.0 < ess < resample_frac * n):
        return False
    systematic_resample(w, uniform, idx)
    np.take(theta, idx, axis=1, out=work)
    theta[...] = work
    logw.fill(-math.log(n))
    return True


def assimilate(theta: np.ndarray, logw: np.ndarray, pred: np.ndarray, value: float,
               meas_std: float, uniform: float, resample_frac: float, w: np.ndarray,
               work: np.ndarray, idx: np.ndarray) -> tuple[float, bool]:
    """Weight the particles by one measurement given their predictions; normalise; resample.

    Gaussian likelihood ``N(value; pred, meas_std)``; non-finite predictions get zero weight.
    Resamples (systematic, offset ``uniform``) when the effective sample size falls below
    ``resample_frac * n``. Returns ``(ess, resampled)``, the ESS before resampling.
    """
    r = (value - pred) * (1.0 / meas_std)
    logw -= 0.5 * r * r
    ess = normalise(logw, w)
    return ess, _resample_if_needed(theta, logw, w, ess, uniform, resample_frac, work, idx)


def exp_filter(theta: np.ndarray, logw: np.ndarray, times: np.ndarray, values: np.ndarray,
               noise: np.ndarray, uniforms: np.ndarray, t_prev: float, process_std: np.ndarray,
               meas_std: float, offset: float, sign: float, resample_frac: float,
               ess_out: np.ndarray, resampled_out: np.ndarray, w: np.ndarray, work: np.ndarray,
               idx: np.ndarray) -> int:
    """Run the exponential-model filter over ``m`` measurements, in place on ``theta``/``logw``.

    Per measurement ``k``: jitter ``theta`` with ``noise[k]``; advance ``z += b * (times[k] -
    t_prev)``; weight by ``N(values[k]; offset + sign * exp(z), meas_std)``; normalise; resample
    with ``uniforms[k]`` when the ESS is below ``resample_frac * n``. ``ess_out[k]`` and
    ``resampled_out[k]`` record the ESS (before resampling) and whether it resampled. Returns the
    number of measurements at which the filter collapsed (see :func:`normalise`).
    """
    inv_sigma = 1.0 / meas_std
    collapsed = 0
    z = theta[0]
    b = theta[1]
    for k in range(times.shape[0]):
        t = times[k]
        dt = t - t_prev
        t_prev = t
        jitter(theta, process_std, noise[k])
        z += b * dt
        h = offset + sign * np.exp(z)
        r = (values[k] - h) * inv_sigma
        logw -= 0.5 * r * r
        ess = normalise(logw, w)
        if ess == 0.0:
            collapsed += 1
        ess_out[k] = ess
        resampled_out[k] = _resample_if_needed(theta, logw, w, ess, uniforms[k], resample_frac,
                                               work, idx)
    return collapsed


def exp_rul(theta: np.ndarray, offset: float, sign: float, threshold: float, horizon: float,
            out: np.ndarray) -> None:
    """Remaining useful life per particle of the exponential model, analytic, into ``out`` (s).

    ``0`` when the indicator is already at or past the threshold; ``inf`` when it never gets
    there (``b <= 0``), when that is beyond ``horizon`` (pass ``inf`` for no horizon), or when
    the particle's state is not finite.
    """
    level = math.log(sign * (threshold - offset))
    z = theta[0]
    b = theta[1]
    with np.errstate(divide="ignore", invalid="ignore"):
        rul = (level - z) / b
    rul = np.where(b > 0.0, rul, np.inf)
    rul = np.where(z >= level, 0.0, rul)
    rul = np.where(rul > horizon, np.inf, rul)
    out[:] = np.where(np.isnan(rul), np.inf, rul)


def weighted_summary(values: np.ndarray, logw: np.ndarray, quantiles: np.ndarray, within: float,
                     cap: float, q_out: np.ndarray) -> tuple[float, float]:
    """Weighted quantiles, capped mean and exceedance probability of ``values`` (e.g. RUL).

    Weights are ``exp(logw)`` (normalised log-weights). ``q_out[k]`` is the smallest value whose
    cumulative weight (values sorted ascending, ties by index) reaches ``quantiles[k]`` times the
    total. Returns ``(mean of min(values, cap), total weight of values <= within)``; particles of
    zero weight do not count (so an infinite value of zero weight does not make the mean inf).
    """
    n = values.shape[0]
    w = np.exp(logw)
    order = np.argsort(values, kind="stable")
    cum = np.cumsum(w[order])
    total = float(cum[-1])
    for k in range(quantiles.shape[0]):
        j = int(np.searchsorted(cum, quantiles[k] * total, side="left"))
        q_out[k] = values[order[min(j, n - 1)]]
    capped = np.minimum(values, cap)
    keep = w > 0.0
    contrib = np.where(keep, w * np.where(keep, capped, 0.0), 0.0)
    mean = float(np.cumsum(contrib)[-1]) / total
    p = float(np.cumsum(np.where(values <= within, w, 0.0))[-1]) / total
    return mean, p
