"""Helpers shared by the model tests (as the ``tools`` fixture: the tests are imported in
``importlib`` mode, so they cannot import this module): call a model's C functions directly,
finite-difference Jacobians, steady states."""

from __future__ import annotations

import ctypes
from types import SimpleNamespace

import numpy as np
import pytest

_FN = ctypes.CFUNCTYPE(None, ctypes.c_double, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,
                       ctypes.c_void_p, ctypes.c_ssize_t, ctypes.c_ssize_t, ctypes.c_void_p)
_get_pointer = ctypes.pythonapi.PyCapsule_GetPointer
_get_pointer.restype = ctypes.c_void_p
_get_pointer.argtypes = [ctypes.py_object, ctypes.c_char_p]


def call_capsule(capsule, rows: int, t: float, x, u, p, pad: int = 3) -> np.ndarray:
    """Call a ``twinbench.model_fn`` capsule on ``(rows_in, n)`` arrays; return ``(rows, n)``.

    The arrays are copied into blocks with a leading dimension ``ld = n + pad`` so that a C
    function that confuses ``n`` and ``ld`` gives wrong answers rather than passing by luck.
    """
    fn = _FN(_get_pointer(capsule, b"twinbench.model_fn"))
    n = np.shape(x)[1]
    ld = n + pad

    def block(a, nrows):
        b = np.full((max(nrows, 1), ld), np.nan)
        b[:nrows, :n] = np.asarray(a, dtype=float).reshape(nrows, n)
        return b

    xb, ub, pb = block(x, len(x)), block(u, len(u)), block(p, len(p))
    out = np.full((rows, ld), np.nan)
    ptr = lambda a: a.ctypes.data_as(ctypes.c_void_p)  # noqa: E731
    fn(t, ptr(xb), ptr(ub), ptr(pb), ptr(out), n, ld, None)
    return out[:, :n]


def defaults(model, n: int = 1):
    """Declared defaults as ``(nx, n)``, ``(nu, n)``, ``(np, n)`` arrays (the model functions take
    ``model.kernel_params(p)``, which is ``p`` itself unless the model has a ``derive``)."""
    col = lambda vs: np.tile(np.array([[v.default] for v in vs], dtype=float), (1, n))  # noqa
    return col(model.states), col(model.inputs), col(model.params)


def fd_jacobian(rhs, x, u, p, rel: float = 1e-6) -> np.ndarray:
    """Central-difference Jacobian ``(nx, nx, n)`` of a NumPy right-hand side."""
    nx, n = x.shape
    J = np.empty((nx, nx, n))
    for c in range(nx):
        h = rel * np.maximum(np.abs(x[c]), 1e-3)
        xp, xm = x.copy(), x.copy()
        xp[c] += h
        xm[c] -= h
        J[:, c, :] = (rhs(0.0, xp, u, p) - rhs(0.0, xm, u, p)) / (2 * h)
    return J


def newton_steady_state(rhs, jac, x, u, p, free, iters: int = 50) -> np.ndarray:
    """Solve ``rhs[free] = 0`` for the states ``free`` (others held), one scenario ``(nx, 1)``."""
    x = np.array(x, dtype=float)
    free = list(free)
    for _ in range(iters):
        f = rhs(0.0, x, u, p)[free, 0]
        J = jac(0.0, x, u, p)[np.ix_(free, free, [0])][..., 0]
        dx = np.linalg.solve(J, -f)
        x[free, 0] += dx
        if np.all(np.abs(dx) <= 1e-13 * np.maximum(np.abs(x[free, 0]), 1.0)):
            break
    return x


def steady(model, inputs=None, params=None, free=None, x0=None, settle=None):
    """Steady state of ``model`` (one scenario) for constant inputs; returns ``(x, u, pk)`` with
    ``pk`` the kernel parameters (``model.kernel_params``: what the model functions take).

    Runs the model for ``settle = (duration, dt)`` seconds with ROS2 to get close, then polishes
    with Newton on the states ``free`` (default: all but those whose name contains "wear" or
    "fade", which never settle and are held at their initial value)."""
    x, u, p = defaults(model)
    for k, v in (inputs or {}).items():
        u[model.input_names.index(k)] = v
    for k, v in (params or {}).items():
        p[model.param_names.index(k)] = v
    for k, v in (x0 or {}).items():
        x[model.state_names.index(k)] = v
    if free is None:
        free = [i for i, s in enumerate(model.state_names) if "wear" not in s and "fade" not in s]
    if settle is not None:
        duration, dt = settle
        ds = model.simulate(duration=duration, dt=dt, method="ros2",
                            every=int(round(duration / dt)),
                            x0={k: x[i, 0] for i, k in enumerate(model.state_names)},
                            inputs={k: u[i, 0] for i, k in enumerate(model.input_names)},
                            params={k: p[i, 0] for i, k in enumerate(model.param_names)})
        for i in free:
            x[i, 0] = float(ds[model.state_names[i]][-1])
    pk = model.kernel_params(p)
    return newton_steady_state(model.rhs, model.jacobian, x, u, pk, free), u, pk


@pytest.fixture
def tools():
    return SimpleNamespace(call_capsule=call_capsule, defaults=defaults, fd_jacobian=fd_jacobian,
                           newton_steady_state=newton_steady_state, steady=steady)


@pytest.fixture
def rng():
    return np.random.default_rng(20240611)
