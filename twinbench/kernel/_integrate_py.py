"""NumPy reference of ``_integrate.pyx``: the same steps, vectorised over scenarios.

Arrays are ``(nx, n)`` (variable, scenario). The arithmetic is written in the same order as the
compiled kernel so that the two agree to rounding. This is also the integrator for models that
have only a NumPy form.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

__all__ = ["rk4_step", "jacobian", "ros2_step", "integrate", "METHOD_RK4", "METHOD_ROS2"]

METHOD_RK4 = 0
METHOD_ROS2 = 1
SQRT_EPS = 1.4901161193847656e-08
ROS2_GAMMA = 1.7071067811865475  # 1 + 1/sqrt(2), Verwer et al. (1999)


def rk4_step(rhs: Callable, t: float, h: float, x: np.ndarray, u: np.ndarray,
             p: np.ndarray) -> np.ndarray:
    """One classical RK4 step; returns the new state (does not modify ``x``)."""
    hh = 0.5 * h
    h6 = h / 6.0
    k1 = np.asarray(rhs(t, x, u, p), dtype=float)
    k2 = np.asarray(rhs(t + hh, x + hh * k1, u, p), dtype=float)
    k3 = np.asarray(rhs(t + hh, x + hh * k2, u, p), dtype=float)
    k4 = np.asarray(rhs(t + h, x + h * k3, u, p), dtype=float)
    return x + h6 * (k1 + 2.0 * k2 + 2.0 * k3 + k4)


def jacobian(rhs: Callable, jac: Callable | None, t: float, x: np.ndarray, u: np.ndarray,
             p: np.ndarray) -> np.ndarray:
    """``d f / d x`` with shape ``(nx, nx, n)``: analytic if ``jac`` is given, else forward
    differences with step ``sqrt(eps) * max(|x_c|, 1)``."""
    if jac is not None:
        return np.asarray(jac(t, x, u, p), dtype=float)
    nx, n = x.shape
    f0 = np.asarray(rhs(t, x, u, p), dtype=float)
    J = np.empty((nx, nx, n))
    xp = x.copy()
    for c in range(nx):
        xp[c] = x[c] + SQRT_EPS * np.maximum(np.abs(x[c]), 1.0)
        fc = np.asarray(rhs(t, xp, u, p), dtype=float)
        J[:, c, :] = (fc - f0) / (xp[c] - x[c])
        xp[c] = x[c]
    return J


def _solve_each(W: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Solve ``W[i] z = b[:, i]`` for every scenario i; NaN where ``W[i]`` is singular
    (an exactly zero pivot, as in the compiled LU)."""
    try:
        return np.linalg.solve(W, b.T[..., None])[..., 0].T
    except np.linalg.LinAlgError:
        z = np.full(b.shape, np.nan)
        for i in range(b.shape[1]):
            try:
                z[:, i] = np.linalg.solve(W[i], b[:, i])
            except np.linalg.LinAlgError:
                pass
        return z


def ros2_step(rhs: Callable, jac: Callable | None, t: float, h: float, x: np.ndarray,
              u: np.ndarray, p: np.ndarray) -> np.ndarray:
    """One ROS2 step (L-stable, order 2). Scenarios whose matrix is singular become NaN."""
    nx, n = x.shape
    J = jacobian(rhs, jac, t, x, u, p)
    W = np.eye(nx)[:, :, None] - (ROS2_GAMMA * h) * J
    W = np.ascontiguousarray(np.moveaxis(W, 2, 0))  # (n, nx, nx)
    f0 = np.asarray(rhs(t, x, u, p), dtype=float)
    k1 = _solve_each(W, f0)
    f1 = np.asarray(rhs(t + h, x + h * k1, u, p), dtype=float)
    k2 = _solve_each(W, f1 - 2.0 * k1)
    return x + (1.5 * h) * k1 + (0.5 * h) * k2


def integrate(rhs: Callable, output: Callable | None, jac: Callable | None, method: int,
              t0: float, dt: float, steps: int, every: int, x0: np.ndarray, u: np.ndarray,
              p: np.ndarray, out: np.ndarray, bad: np.ndarray) -> None:
    """Reference of ``_integrate.integrate``: same arguments, NumPy model functions."""
    nx = x0.shape[0]
    x = np.array(x0, dtype=float)
    ny = out.shape[0] - nx

    def sample(k: int, t: float, uk: np.ndarray) -> None:
        out[:nx, k, :] = x
        if ny:
            out[nx:, k, :] = output(t, x, uk, p)

    uk = u[0]
    # NaN/Inf is reported through `bad`, as the compiled kernel does, not as NumPy warnings
    with np.errstate(all="ignore"):
        for s in range(steps):
            t = t0 + s * dt
            uk = u[s]
            if s % every == 0:
                sample(s // every, t, uk)
            if method == METHOD_RK4:
                x = rk4_step(rhs, t, dt, x, uk, p)
            else:
                x = ros2_step(rhs, jac, t, dt, x, uk, p)
            newly_bad = ~np.isfinite(x).all(axis=0) & (bad < 0)
            bad[newly_bad] = s
        sample(steps // every, t0 + steps * dt, uk)
