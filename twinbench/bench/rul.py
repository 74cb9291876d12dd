"""Benchmark: particle-filter degradation tracking / RUL (compiled kernel vs NumPy reference).

Figures, each measured side by side in the same run (ratio = compiled speed / NumPy speed; the
issue sets no target):

* the filter kernel alone (exponential model, 5,000 particles, random numbers drawn beforehand):
  measurements assimilated per second, and particle-updates per second;
* ``ParticleFilterRUL.update`` end to end (random draws, chunking, RUL summary per batch) for
  5,000 and 500 particles — the random draws cost the same on both sides and bound the ratio;
* the RUL summary (per-particle RUL, weighted quantiles, expected RUL, failure probability);
* the user-supplied-model path (NumPy model, kernel weight update and resampling).
"""

from __future__ import annotations

import math

import numpy as np

from twinbench.bench._common import best_time, figure

__all__ = ["run", "degradation_case"]

HOUR = 3600.0


def degradation_case(measurements: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Half-hourly vibration RMS of a bearing degrading as ``0.5 exp(b t)`` (10x in 150 h)."""
    t = np.arange(measurements) * 0.5 * HOUR
    b = math.log(10.0) / (150 * HOUR)
    y = 0.5 * np.exp(b * t) + np.random.default_rng(seed).normal(0.0, 0.05, measurements)
    return t, y


def _filter(backend: str, n: int, model: str = "exponential"):
    from twinbench.kernel.rul import ParticleFilterRUL

    if model == "exponential":
        return ParticleFilterRUL(threshold=5.0, measurement_std=0.05, n_particles=n,
                                 prior={"b": (0.0, 2e-5)}, seed=1, backend=backend)

    def hi(t, theta):
        return np.exp(theta[0] + theta[1] * t)

    def prior(rng, size):
        return np.stack([math.log(0.5) + rng.normal(0, 0.3, size), rng.normal(0, 2e-5, size)])

    return ParticleFilterRUL(hi, threshold=5.0, measurement_std=0.05, n_particles=n, prior=prior,
                             horizon=400 * HOUR, grid_points=400, seed=1, backend=backend)


def _kernel_rates(n: int, m: int, repeat: int) -> tuple[float, float, int]:
    from twinbench.kernel import _degrade, _degrade_py

    t, y = degradation_case(m)
    rng = np.random.default_rng(0)
    theta0 = np.stack([math.log(0.5) + rng.normal(0, 0.5, n), rng.normal(0, 2e-5, n)])
    noise = rng.standard_normal((m, 2, n))
    uniforms = rng.random(m)
    std = np.array([0.01, 2e-7])
    resamples = {}

    def runner(kernel):
        def go():
            theta = theta0.copy()
            logw = np.full(n, -math.log(n))
            res = np.zeros(m, dtype=np.uint8)
            kernel.exp_filter(theta, logw, t, y, noise, uniforms, 0.0, std, 0.05, 0.0, 1.0, 0.5,
                              np.empty(m), res, np.empty(n), np.empty((2, n)),
                              np.empty(n, dtype=np.intp))
            resamples[kernel.__name__] = int(res.sum())
        return go

    t_c = best_time(runner(_degrade), repeat=repeat)
    t_np = best_time(runner(_degrade_py), repeat=repeat)
    return m / t_c, m / t_np, resamples[_degrade.__name__]


def _update_rates(n: int, m: int, batch: int, repeat: int, model: str = "exponential"):
    t, y = degradation_case(m)

    def runner(backend):
        def go():
            pf = _filter(backend, n, model)
            for s in range(0, m, batch):
                pf.update(t[s:s + batch], y[s:s + batch])
        return go

    t_c = best_time(runner("c"), repeat=repeat)
    t_np = best_time(runner("numpy"), repeat=repeat)
    return m / t_c, m / t_np


def run(quick: bool = False) -> list[dict]:
    n = 5000
    m = 40 if quick else 400
    repeat = 2 if quick else 5
    figs = []

    c, p, resamples = _kernel_rates(n, m, repeat)
    figs.append(figure(f"particle filter kernel, exponential model, {n} particles", c,
                       "updates/s", "NumPy reference kernel (same random numbers)", c / p, None,
                       baseline_value=p, particle_updates_per_s=c * n,
                       baseline_particle_updates_per_s=p * n, measurements=m,
                       resampled=resamples))

    for n_i, batch in ((n, 20), (500, 20)):
        c, p = _update_rates(n_i, m, batch, repeat)
        figs.append(figure(f"ParticleFilterRUL.update end to end, {n_i} particles, batches of "
                           f"{batch}", c, "updates/s", "same with backend='numpy'", c / p, None,
                           baseline_value=p, particle_updates_per_s=c * n_i))

    from twinbench.kernel import _degrade, _degrade_py

    t, y = degradation_case(200)
    pf = _filter("c", n)
    pf.update(t, y)
    parts = pf.particles
    theta = np.ascontiguousarray(np.stack([parts.log_a.values, parts.b.values]))
    logw = np.log(parts.weight.values)
    q = pf.quantiles

    def summary(kernel):
        rul = np.empty(n)
        out = np.empty(q.size)

        def go():
            kernel.exp_rul(theta, 0.0, 1.0, 5.0, math.inf, rul)
            kernel.weighted_summary(rul, logw, q, 24 * HOUR, math.inf, out)
        return go

    t_c = best_time(summary(_degrade), repeat=5 if quick else 50)
    t_np = best_time(summary(_degrade_py), repeat=5 if quick else 50)
    figs.append(figure(f"RUL summary (quantiles, expected, failure probability), {n} particles",
                       1.0 / t_c, "summaries/s", "NumPy reference kernel", t_np / t_c, None,
                       baseline_value=1.0 / t_np))

    m_user = 20 if quick else 100
    c, p = _update_rates(n, m_user, 20, 1 if quick else 3, model="user")
    figs.append(figure(f"user-supplied model (NumPy hi), update incl. grid RUL, {n} particles", c,
                       "updates/s", "same with backend='numpy'", c / p, None, baseline_value=p))
    return figs


if __name__ == "__main__":
    for f in run(quick=False):
        print(f)
