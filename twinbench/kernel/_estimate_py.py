"""NumPy reference of the compiled state estimators in ``_estimate.pyx``.

Both modules expose the same two functions, :func:`kf_run` and :func:`ekf_run`, with the same
arguments and the same in-place semantics; the tests run both on the same data and compare them.
They are private: :mod:`twinbench.kernel.estimate` validates every argument before calling them.

Conventions shared with the compiled module
-------------------------------------------
* One call processes a batch of ``T`` measurement times. The filter state (``x``, ``P``, the held
  inputs ``u_hold`` and, for the EKF, the time of the last estimate ``clock[0]``) is read from and
  written back to the arrays passed in, so that a batch split into several calls gives the same
  results as one call.
* A non-finite measurement component means "not measured": its row is dropped from the update.
  A row of NaN is a predict-only step. A non-finite input component means "unchanged": the last
  finite value (``u_hold``) is used.
* Update in Joseph form ``P = (I - K H) P (I - K H)^T + K R K^T``; ``P`` is symmetrised,
  ``P = (P + P^T) / 2``, after every prediction and every update.
* Each call returns -1, or the index of the first step whose estimate became non-finite or whose
  innovation covariance was not positive definite (the caller restores the state it saved).
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["kf_run", "ekf_run", "SQRT_EPS"]

#: Relative step of the forward differences, as in the compiled kernel.
SQRT_EPS = 1.4901161193847656e-08


def _update(x, P, z, zhat, H, R, k, out_innov, out_svar, out_nis, out_dof):
    """Joseph-form update of ``x``, ``P`` (in place) with the finite components of ``z``.

    ``zhat`` and ``H`` may be None when nothing is measured. Returns False when the innovation
    covariance is not positive definite.
    """
    measured = np.isfinite(z)
    m = int(measured.sum())
    out_innov[k] = np.nan
    out_svar[k] = np.nan
    out_dof[k] = m
    if m == 0:
        out_nis[k] = np.nan
        return True
    idx = np.flatnonzero(measured)
    Hr = H[idx]
    Rr = R[np.ix_(idx, idx)]
    y = z[idx] - zhat[idx]
    PHt = P @ Hr.T
    S = Hr @ PHt + Rr
    out_innov[k, idx] = y
    out_svar[k, idx] = np.diag(S)
    try:
        L = np.linalg.cholesky(S)
    except np.linalg.LinAlgError:
        return False
    # K = P H^T S^-1, solved with the Cholesky factor rather than an explicit inverse.
    K = np.linalg.solve(L.T, np.linalg.solve(L, PHt.T)).T
    w = np.linalg.solve(L, y)
    out_nis[k] = float(w @ w)
    x += K @ y
    A = np.eye(x.shape[0]) - K @ Hr
    Pn = A @ P @ A.T + K @ Rr @ K.T
    P[...] = 0.5 * (Pn + Pn.T)
    return True


def _hold(u_row, u_hold):
    """Replace the non-finite components of ``u_row`` by the held values; update the hold."""
    ok = np.isfinite(u_row)
    u_hold[ok] = u_row[ok]
    return u_hold.copy()


def _finite(x, P):
    return bool(np.isfinite(x).all() and np.isfinite(np.diag(P)).all())


def _record(k, x, P, out_x, out_std, out_P):
    out_x[k] = x
    # max(., 0): a rounding-level negative diagonal must not turn into a NaN std.
    out_std[k] = np.sqrt(np.maximum(np.diag(P), 0.0))
    if out_P is not None:
        out_P[k] = P


def kf_run(F, B, H, Q, R, x, P, u_hold, z, u, out_x, out_std, out_innov, out_svar, out_nis,
           out_dof, out_P=None):
    """Linear Kalman filter over a batch: for each step predict, then update.

    Model ``x_k = F x_{k-1} + B u_k + w_k``, ``z_k = H x_k + v_k``, ``w ~ N(0, Q)``,
    ``v ~ N(0, R)``.

    Shapes: F, Q ``(nx, nx)``; B ``(nx, nu)``; H ``(nz, nx)``; R ``(nz, nz)``; x ``(nx,)`` and P
    ``(nx, nx)`` updated in place; u_hold ``(nu,)`` updated in place; z ``(T, nz)``; u ``(T, nu)``;
    out_x, out_std ``(T, nx)``; out_innov, out_svar ``(T, nz)``; out_nis ``(T,)`` float;
    out_dof ``(T,)`` int64; out_P ``(T, nx, nx)`` or None.

    Returns -1, or the index of the first step that failed (state left as after that step).
    """
    T = z.shape[0]
    nu = u_hold.shape[0]
    for k in range(T):
        x[...] = F @ x
        if nu:
            x += B @ _hold(u[k], u_hold)
        Pn = F @ P @ F.T + Q
        P[...] = 0.5 * (Pn + Pn.T)
        ok = _update(x, P, z[k], H @ x, H, R, k, out_innov, out_svar, out_nis, out_dof)
        _record(k, x, P, out_x, out_std, out_P)
        if not ok or not _finite(x, P):
            return k
    return -1


# -- the continuous-discrete EKF ------------------------------------------------------------------

def _rk4(rhs, t, h, x, u, p):
    """One classical RK4 step of the single twin ``x`` (nx,); the same sums as the C kernel."""
    xc, uc, pc = x[:, None], u[:, None], p[:, None]
    k1 = rhs(t, xc, uc, pc)
    k2 = rhs(t + 0.5 * h, xc + (0.5 * h) * k1, uc, pc)
    k3 = rhs(t + 0.5 * h, xc + (0.5 * h) * k2, uc, pc)
    k4 = rhs(t + h, xc + h * k3, uc, pc)
    return (xc + (h / 6.0) * (k1 + 2.0 * k2 + 2.0 * k3 + k4))[:, 0]


def _fd_columns(fn, x, n_out):
    """Forward-difference Jacobian of ``fn(x[:, None]) -> (n_out, 1)`` at ``x``, step as in C."""
    nx = x.shape[0]
    f0 = np.asarray(fn(x[:, None]), dtype=float)[:, 0]
    J = np.empty((n_out, nx))
    for c in range(nx):
        xp = x.copy()
        xp[c] = x[c] + SQRT_EPS * max(abs(x[c]), 1.0)
        # divide by the step actually taken, to cancel the rounding in x + d (as the C kernel)
        J[:, c] = (np.asarray(fn(xp[:, None]), dtype=float)[:, 0] - f0) / (xp[c] - x[c])
    return f0, J


def _state_jacobian(model, t, x, u, p):
    if model.jacobian is not None:
        J = model.jacobian(t, x[:, None], u[:, None], p[:, None])
        return np.asarray(J, dtype=float)[:, :, 0]
    return _fd_columns(lambda xc: model.rhs(t, xc, u[:, None], p[:, None]), x, x.shape[0])[1]


def _measurement(model, t, x, u, p, meas, outputs):
    """Predicted measurement ``zhat`` and its Jacobian ``H`` for the measured variables ``meas``
    (index >= 0: output; < 0: state ``-(index + 1)``). Outputs are evaluated and differenced
    only if ``outputs`` (some output was measured at this time)."""
    nx = x.shape[0]
    nz = meas.shape[0]
    zhat = np.empty(nz)
    H = np.zeros((nz, nx))
    outs = meas >= 0
    if outputs:
        g, G = _fd_columns(lambda xc: model.output(t, xc, u[:, None], p[:, None]), x,
                           len(model.outputs))
        zhat[outs] = g[meas[outs]]
        H[outs] = G[meas[outs]]
    for a in np.flatnonzero(~outs):
        s = -int(meas[a]) - 1
        zhat[a] = x[s]
        H[a, s] = 1.0
    return zhat, H


def _propagate(model, t0, dt, x, P, u, p, Q, max_step):
    """Integrate ``x`` over ``dt`` in RK4 substeps of at most ``max_step`` and propagate ``P``
    with ``F = I + J h + (J h)^2 / 2`` and ``Q h`` per substep (``Q`` a spectral density)."""
    nx = x.shape[0]
    nsub = max(1, math.ceil(dt / max_step - 1e-9))
    h = dt / nsub
    eye = np.eye(nx)
    for j in range(nsub):
        t = t0 + j * h
        Jh = _state_jacobian(model, t, x, u, p) * h
        F = eye + Jh + 0.5 * (Jh @ Jh)
        x[...] = _rk4(model.rhs, t, h, x, u, p)
        Pn = F @ P @ F.T + Q * h
        P[...] = 0.5 * (Pn + Pn.T)


def ekf_run(model, p, meas, Q, R, max_step, x, P, u_hold, clock, t, z, u, out_x, out_std,
            out_innov, out_svar, out_nis, out_dof, out_P=None):
    """Continuous-discrete extended Kalman filter over a batch of measurement times.

    Between ``clock[0]`` (the time of the current estimate; NaN before the first measurement, in
    which case the first step is an update only) and each ``t[k]`` the state is integrated with
    the inputs held from the previous time (zero-order hold), then updated with ``z[k]``, whose
    prediction uses the inputs at ``t[k]``.

    Shapes: p ``(np,)``; meas ``(nz,)`` int64; Q, P ``(nx, nx)``; R ``(nz, nz)``; x ``(nx,)``;
    u_hold ``(nu,)``; clock ``(1,)``; t ``(T,)``; z ``(T, nz)``; u ``(T, nu)``; outputs as in
    :func:`kf_run`. ``model`` is a :class:`~twinbench.kernel.model.Model` (its NumPy form here,
    its compiled form in ``_estimate.pyx``).

    Returns -1, or the index of the first step that failed.
    """
    T = z.shape[0]
    for k in range(T):
        tk = float(t[k])
        if not math.isnan(clock[0]) and tk > clock[0]:
            # the previous step's inputs are held over the interval (u_hold is still theirs)
            _propagate(model, float(clock[0]), tk - float(clock[0]), x, P, u_hold.copy(), p, Q,
                       max_step)
        clock[0] = tk
        uk = _hold(u[k], u_hold)
        zk = z[k]
        finite = np.isfinite(zk)
        if finite.any():
            zhat, H = _measurement(model, tk, x, uk, p, meas, bool((finite & (meas >= 0)).any()))
        else:
            zhat = H = None
        ok = _update(x, P, zk, zhat, H, R, k, out_innov, out_svar, out_nis, out_dof)
        _record(k, x, P, out_x, out_std, out_P)
        if not ok or not _finite(x, P):
            return k
    return -1
