"""State estimation: KF and EKF against filterpy, C == NumPy, NaN semantics, streaming, SPD, NIS."""

from __future__ import annotations

import ctypes

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import linalg, stats

from twinbench.kernel import Model
from twinbench.kernel._check_build import pure_python
from twinbench.kernel.estimate import (
    EstimateResult,
    ExtendedKalmanFilter,
    FilterDivergedError,
    KalmanFilter,
)
from twinbench.kernel.linear import linear_model

filterpy_kalman = pytest.importorskip("filterpy.kalman")

BACKENDS = ["numpy"] if pure_python() else ["c", "numpy"]
needs_c = pytest.mark.skipif(pure_python(), reason="TWINBENCH_PURE_PYTHON: no compiled kernel")


# -- test models -----------------------------------------------------------------------------------

_MODEL_FN = ctypes.CFUNCTYPE(None, ctypes.c_double, ctypes.POINTER(ctypes.c_double),
                             ctypes.POINTER(ctypes.c_double), ctypes.POINTER(ctypes.c_double),
                             ctypes.POINTER(ctypes.c_double), ctypes.c_ssize_t, ctypes.c_ssize_t,
                             ctypes.c_void_p)
_CAPSULE_NAME = b"twinbench.model_fn"
_capsule_new = ctypes.pythonapi.PyCapsule_New
_capsule_new.restype = ctypes.py_object
_capsule_new.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p]


def _capsule(fn, sizes, rows_out):
    """A model_fn capsule calling the NumPy function ``fn`` (through ctypes, which takes the GIL).

    Gives the C kernel a nonlinear model whose function values are bit-identical to the NumPy
    form's, so C and NumPy filters can be compared to rounding even with finite differences."""

    def call(t, x, u, p, out, n, ld, ctx):
        def view(ptr, rows):
            if rows == 0:
                return np.zeros((0, n))
            return np.ctypeslib.as_array(ptr, shape=(rows, ld))[:, :n]

        nx, nu, npar = sizes
        res = np.asarray(fn(t, view(x, nx), view(u, nu), view(p, npar)), dtype=float)
        view(out, rows_out)[...] = res.reshape(rows_out, n)

    cb = _MODEL_FN(call)
    return _capsule_new(ctypes.cast(cb, ctypes.c_void_p), _CAPSULE_NAME, None), cb


def with_ctypes_c_form(model: Model, analytic_jacobian: bool = True) -> Model:
    """``model`` plus a C form built from its own NumPy functions."""
    sizes = (model.nx, model.nu, model.np)
    rhs, k1 = _capsule(model.rhs, sizes, model.nx)
    caps = {"rhs": rhs, "keepalive": [k1]}
    if model.output is not None:
        caps["output"], k2 = _capsule(model.output, sizes, model.ny)
        caps["keepalive"].append(k2)
    if analytic_jacobian and model.jacobian is not None:
        caps["jacobian"], k3 = _capsule(model.jacobian, sizes, model.nx * model.nx)
        caps["keepalive"].append(k3)
    return Model(model.name, states=model.states, inputs=model.inputs, params=model.params,
                 outputs=model.outputs, rhs=model.rhs, output=model.output,
                 jacobian=model.jacobian if analytic_jacobian else None, compiled=caps)


def c_form_unless_pure(model: Model) -> Model:
    return model if pure_python() else with_ctypes_c_form(model)


def van_der_pol(analytic_jacobian: bool = True) -> Model:
    """Forced Van der Pol oscillator with a nonlinear output."""

    def rhs(t, x, u, p):
        mu = p[0]
        return np.stack([x[1], mu * (1.0 - x[0] ** 2) * x[1] - x[0] + u[0]])

    def output(t, x, u, p):
        return np.stack([np.sin(x[0]) + 0.5 * x[1], x[0] * x[1] + 0.1 * u[0]])

    def jacobian(t, x, u, p):
        mu = p[0]
        return np.array([[np.zeros_like(x[0]), np.ones_like(x[0])],
                         [-2.0 * mu * x[0] * x[1] - 1.0, mu * (1.0 - x[0] ** 2)]])

    return Model("van_der_pol", states=[("pos", "m", 2.0, "position"), ("vel", "m/s", 0.0)],
                 inputs=[("force", "m/s2", 0.0)], params=[("mu", "1", 1.0)],
                 outputs=[("sensor_a", "m"), ("sensor_b", "m2/s")], rhs=rhs, output=output,
                 jacobian=jacobian if analytic_jacobian else None)


def simulate_vdp(T, dt, seed=0, noise=0.05):
    """Truth and noisy measurements of the Van der Pol model (fine RK4), inputs per time."""
    m = van_der_pol()
    rng = np.random.default_rng(seed)
    u = np.repeat(rng.normal(0.0, 0.5, size=(T // 10 + 1, 1)), 10, axis=0)[:T]
    x = np.array([2.0, 0.0])
    p = np.array([1.0])
    xs, zs = [], []
    for k in range(T):
        if k:
            for _ in range(10):  # ten fine steps per interval, input held from the previous time
                x = _rk4(m.rhs, 0.0, dt / 10, x, u[k - 1], p)
        y = m.output(0.0, x[:, None], u[k][:, None], p[:, None])[:, 0]
        xs.append(x.copy())
        zs.append(y + rng.normal(0.0, noise, size=2))
    return np.arange(T) * dt, np.array(xs), np.array(zs), u


def _rk4(rhs, t, h, x, u, p):
    """Independent RK4 on 1-D vectors (the test's own, not the kernel's)."""
    def f(tt, xx):
        return rhs(tt, xx[:, None], u[:, None], p[:, None])[:, 0]
    k1 = f(t, x)
    k2 = f(t + h / 2, x + h / 2 * k1)
    k3 = f(t + h / 2, x + h / 2 * k2)
    k4 = f(t + h, x + h * k3)
    return x + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)


def cv_system():
    """Constant-velocity 2-D tracking with an acceleration input: F, B, H, Q, R."""
    dt = 0.1
    F = np.array([[1, dt, 0, 0], [0, 1, 0, 0], [0, 0, 1, dt], [0, 0, 0, 1]], dtype=float)
    B = np.array([[0.5 * dt**2, 0], [dt, 0], [0, 0.5 * dt**2], [0, dt]])
    H = np.array([[1.0, 0, 0, 0], [0, 0, 1.0, 0]])
    q = np.array([[dt**3 / 3, dt**2 / 2], [dt**2 / 2, dt]]) * 0.05
    Q = linalg.block_diag(q, q)
    R = np.array([[0.04, 0.01], [0.01, 0.09]])
    return F, B, H, Q, R


def simulate_linear(F, B, H, Q, R, T, seed):
    rng = np.random.default_rng(seed)
    nx, nu = B.shape
    x = np.zeros(nx)
    u = rng.normal(size=(T, nu))
    zs, xs = [], []
    for k in range(T):
        x = F @ x + B @ u[k] + rng.multivariate_normal(np.zeros(nx), Q)
        xs.append(x)
        zs.append(H @ x + rng.multivariate_normal(np.zeros(H.shape[0]), R))
    return np.array(xs), np.array(zs), u


# -- linear KF -------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
def test_kf_matches_filterpy(backend):
    F, B, H, Q, R = cv_system()
    _, z, u = simulate_linear(F, B, H, Q, R, 300, seed=1)
    x0 = np.array([0.5, 0.0, -0.3, 0.1])
    P0 = np.diag([1.0, 2.0, 1.0, 2.0])

    ref = filterpy_kalman.KalmanFilter(dim_x=4, dim_z=2, dim_u=2)
    ref.F, ref.B, ref.H, ref.Q, ref.R = F, B, H, Q, R
    ref.x, ref.P = x0[:, None].copy(), P0.copy()
    xs, Ps, ys, Ss, nis = [], [], [], [], []
    for k in range(len(z)):
        ref.predict(u=u[k][:, None])
        ref.update(z[k][:, None])
        xs.append(ref.x[:, 0].copy())
        Ps.append(ref.P.copy())
        ys.append(ref.y[:, 0].copy())
        Ss.append(np.diag(ref.S).copy())
        nis.append(float(ref.y[:, 0] @ ref.SI @ ref.y[:, 0]))

    kf = KalmanFilter(F, H, Q, R, B=B, x0=x0, P0=P0, backend=backend)
    assert kf.backend == backend
    res = kf.filter_arrays(z, u, covariance=True)
    np.testing.assert_allclose(res.x, xs, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(res.P, Ps, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(res.std, np.sqrt(np.diagonal(Ps, axis1=1, axis2=2)), rtol=1e-9)
    np.testing.assert_allclose(res.innovation, ys, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(res.innovation_var, Ss, rtol=1e-9)
    np.testing.assert_allclose(res.nis, nis, rtol=1e-9)
    assert (res.nis_dof == 2).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_kf_nan_row_is_predict_only_and_partial_nan_drops_the_row(backend):
    F, B, H, Q, R = cv_system()
    _, z, u = simulate_linear(F, B, H, Q, R, 40, seed=2)
    z[10] = np.nan        # nothing measured
    z[20, 1] = np.nan     # only the first component measured
    kf = KalmanFilter(F, H, Q, R, B=B, backend=backend)
    res = kf.filter_arrays(z, u, covariance=True)

    ref = filterpy_kalman.KalmanFilter(dim_x=4, dim_z=2, dim_u=2)
    ref.F, ref.B, ref.H, ref.Q, ref.R = F, B, H, Q, R
    ref.x, ref.P = np.zeros((4, 1)), np.eye(4)
    for k in range(len(z)):
        ref.predict(u=u[k][:, None])
        if k == 10:
            pass
        elif k == 20:
            ref.update(z[k, :1][:, None], R=R[:1, :1], H=H[:1])
            np.testing.assert_allclose(res.innovation[k, 0], ref.y[0, 0], rtol=1e-9)
        else:
            ref.update(z[k][:, None])
        np.testing.assert_allclose(res.x[k], ref.x[:, 0], rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(res.P[k], ref.P, rtol=1e-9, atol=1e-12)
    assert res.nis_dof[10] == 0 and np.isnan(res.nis[10]) and np.isnan(res.innovation[10]).all()
    assert res.nis_dof[20] == 1 and np.isnan(res.innovation[20, 1])
    assert np.isnan(res.innovation_var[20, 1]) and np.isfinite(res.innovation_var[20, 0])
    assert (np.delete(res.nis_dof, [10, 20]) == 2).all()


@needs_c
def test_kf_c_equals_numpy_and_streaming_is_invariant():
    F, B, H, Q, R = cv_system()
    _, z, u = simulate_linear(F, B, H, Q, R, 500, seed=3)
    rng = np.random.default_rng(3)
    z[rng.random(z.shape) < 0.2] = np.nan
    u[rng.random(u.shape) < 0.1] = np.nan   # held inputs
    out = {}
    for backend in BACKENDS:
        kf = KalmanFilter(F, H, Q, R, B=B, backend=backend)
        out[backend] = kf.filter_arrays(z, u, covariance=True)
        split = KalmanFilter(F, H, Q, R, B=B, backend=backend)
        parts = [split.filter_arrays(z[a:b], u[a:b], covariance=True)
                 for a, b in [(0, 1), (1, 177), (177, 178), (178, 500)]]
        for name in EstimateResult._fields:
            np.testing.assert_array_equal(np.concatenate([getattr(p, name) for p in parts]),
                                          getattr(out[backend], name))
        np.testing.assert_array_equal(split.P, kf.P)
        assert split.steps == kf.steps == 500
    for name in EstimateResult._fields:
        np.testing.assert_allclose(getattr(out["c"], name), getattr(out["numpy"], name),
                                   rtol=1e-10, atol=1e-13)


def test_kf_nan_inputs_hold_the_last_value():
    F, B, H, Q, R = cv_system()
    _, z, u = simulate_linear(F, B, H, Q, R, 50, seed=4)
    held = u.copy()
    u[5:9, 0] = np.nan
    held[5:9, 0] = held[4, 0]
    a = KalmanFilter(F, H, Q, R, B=B).filter_arrays(z, u)
    b = KalmanFilter(F, H, Q, R, B=B).filter_arrays(z, held)
    np.testing.assert_array_equal(a.x, b.x)


@needs_c
@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), nx=st.integers(1, 7), nz=st.integers(1, 4),
       frac_nan=st.sampled_from([0.0, 0.3, 0.9]))
def test_kf_c_equals_numpy_on_random_systems(seed, nx, nz, frac_nan):
    rng = np.random.default_rng(seed)
    # a stable system: with an unstable one P grows without bound in unobserved directions and
    # any two implementations drift apart at the rate of its conditioning
    F = np.eye(nx) + 0.1 * rng.normal(size=(nx, nx))
    F *= 0.97 / max(1.0, np.abs(np.linalg.eigvals(F)).max())
    H = rng.normal(size=(nz, nx))
    a = rng.normal(size=(nx, nx))
    Q = 0.01 * a @ a.T
    b = rng.normal(size=(nz, nz))
    R = b @ b.T + 0.1 * np.eye(nz)
    z = rng.normal(size=(60, nz))
    z[rng.random(z.shape) < frac_nan] = np.nan
    c = KalmanFilter(F, H, Q, R, backend="c").filter_arrays(z, covariance=True)
    n = KalmanFilter(F, H, Q, R, backend="numpy").filter_arrays(z, covariance=True)
    scale = 1.0 + np.abs(n.P).max()
    np.testing.assert_allclose(c.P, n.P, atol=1e-10 * scale)
    np.testing.assert_allclose(c.x, n.x, atol=1e-10 * (1.0 + np.abs(n.x).max()))
    np.testing.assert_allclose(c.nis, n.nis, rtol=1e-8, atol=1e-10)
    np.testing.assert_array_equal(c.nis_dof, n.nis_dof)


def test_kf_nis_is_chi_square_on_a_consistent_filter():
    F, B, H, Q, R = cv_system()
    T = 6000
    _, z, u = simulate_linear(F, B, H, Q, R, T, seed=5)
    res = KalmanFilter(F, H, Q, R, B=B, P0=np.diag([1e-6] * 4)).filter_arrays(z, u)
    nis = res.nis[100:]  # past the initial transient
    # mean of chi2(2) is 2 with standard error sqrt(4 / n) ~ 0.026: 0.15 is > 5 standard errors
    assert abs(nis.mean() - 2.0) < 0.15, nis.mean()
    exceed = np.mean(nis > stats.chi2.ppf(0.95, 2))
    assert 0.035 < exceed < 0.065, exceed


def test_kf_dataset():
    F, B, H, Q, R = cv_system()
    _, z, u = simulate_linear(F, B, H, Q, R, 20, seed=6)
    kf = KalmanFilter(F, H, Q, R, B=B, state_names=[("px", "m"), ("vx", "m/s"), ("py", "m"),
                                                     ("vy", "m/s")],
                      measurement_names=[("gps_x", "m"), ("gps_y", "m")],
                      input_names=["ax", "ay"])
    times = np.datetime64("2024-01-01T00:00:00", "ns") + np.arange(20) * np.timedelta64(100, "ms")
    ds = kf.filter(times, {"gps_x": z[:, 0], "gps_y": z[:, 1]}, {"ax": u[:, 0], "ay": u[:, 1]})
    assert ds.time.dtype == np.dtype("datetime64[ns]")
    assert ds.px.attrs["units"] == "m" and ds.vx_std.attrs["units"] == "m/s"
    assert ds.gps_y_innovation.attrs["units"] == "m"
    ref = KalmanFilter(F, H, Q, R, B=B).filter_arrays(z, u)
    np.testing.assert_array_equal(ds.vy.values, ref.x[:, 3])
    np.testing.assert_array_equal(ds.nis.values, ref.nis)
    np.testing.assert_allclose(ds.gps_x_innovation_std.values ** 2, ref.innovation_var[:, 0])
    # without times the steps are numbered and keep counting across calls
    ds2 = kf.filter(None, {"gps_x": z[:3, 0]})
    np.testing.assert_array_equal(ds2.time.values, [21, 22, 23])
    assert (ds2.nis_dof.values == 1).all()


# -- EKF -------------------------------------------------------------------------------------------

class _FilterpyCD(filterpy_kalman.ExtendedKalmanFilter):
    """filterpy's EKF with our continuous-discrete prediction: RK4 for x, the given F for P."""

    def predict_x(self, u=0):
        self.x = _rk4(self.model.rhs, self.t, self.h, self.x[:, 0], self.u, self.p)[:, None]


def filterpy_ekf(model, t, z, u, Q, R, x0, P0, max_step, measured):
    """Run filterpy's ExtendedKalmanFilter on the same algorithm as ours, step by step."""
    nx, nz = model.nx, len(measured)
    ref = _FilterpyCD(dim_x=nx, dim_z=nz)
    ref.model = model
    ref.p = model.kernel_params(np.array([[v.default] for v in model.params]).reshape(model.np, 1))[:, 0]
    ref.x, ref.P, ref.R = x0[:, None].copy(), P0.copy(), R
    eye = np.eye(nx)
    xs, Ps, ys, nis = [], [], [], []
    for k in range(len(t)):
        if k:
            dt = t[k] - t[k - 1]
            nsub = max(1, int(np.ceil(dt / max_step - 1e-9)))
            h = dt / nsub
            for j in range(nsub):
                ref.t, ref.h, ref.u = t[k - 1] + j * h, h, u[k - 1]
                J = model.jacobian(ref.t, ref.x, u[k - 1][:, None], ref.p[:, None])[:, :, 0]
                ref.F = eye + J * h + 0.5 * (J * h) @ (J * h)
                ref.Q = Q * h
                ref.predict()

        def hx(x, uk=u[k]):
            return x[measured, :]

        def hjac(x):
            return eye[measured]

        ref.update(z[k][:, None], hjac, hx)
        xs.append(ref.x[:, 0].copy())
        Ps.append(ref.P.copy())
        ys.append(ref.y[:, 0].copy())
        nis.append(float(ref.y[:, 0] @ ref.SI @ ref.y[:, 0]))
    return np.array(xs), np.array(Ps), np.array(ys), np.array(nis)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("max_step", [1.0, 0.03])  # one RK4 step per interval, or four
def test_ekf_matches_filterpy(backend, max_step):
    t, truth_x, _, u = simulate_vdp(400, 0.1, seed=7)
    rng = np.random.default_rng(7)
    model = van_der_pol()
    z = truth_x + rng.normal(0.0, 0.05, size=truth_x.shape)   # both states measured
    Q = np.array([[1e-4, 0.0], [0.0, 1e-3]])
    R = np.diag([0.05**2, 0.08**2])
    x0, P0 = np.array([1.5, 0.3]), np.diag([0.5, 0.5])
    if backend == "c":
        model = with_ctypes_c_form(model)
    ekf = ExtendedKalmanFilter(model, Q=Q, R=R, x0=x0, P0=P0, measured=["pos", "vel"],
                               max_step=max_step, backend=backend)
    res = ekf.filter_arrays(t, z, u, covariance=True)
    xs, Ps, ys, nis = filterpy_ekf(van_der_pol(), t, z, u, Q, R, x0, P0, max_step, [0, 1])
    np.testing.assert_allclose(res.x, xs, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(res.P, Ps, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(res.innovation, ys, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(res.nis, nis, rtol=1e-9)
    # and the filter tracks the truth
    assert np.sqrt(np.mean((res.x[50:] - truth_x[50:]) ** 2)) < 0.05


def test_ekf_output_measurements_match_filterpy_with_analytic_h():
    # Outputs are differenced forward (relative step 1.5e-8): close to the analytic H, not equal.
    t, x_true, z, u = simulate_vdp(300, 0.1, seed=8)
    model = van_der_pol()
    Q, R = np.diag([1e-4, 1e-3]), np.diag([0.05**2, 0.05**2])
    x0, P0 = np.array([1.8, 0.1]), np.eye(2) * 0.3
    res = ExtendedKalmanFilter(model, Q=Q, R=R, x0=x0, P0=P0, max_step=0.05).filter_arrays(t, z, u)

    ref = _FilterpyCD(dim_x=2, dim_z=2)
    ref.model, ref.p = model, np.array([1.0])
    ref.x, ref.P, ref.R = x0[:, None].copy(), P0.copy(), R
    xs = []
    for k in range(len(t)):
        if k:
            for j in range(2):
                ref.t, ref.h, ref.u = t[k - 1] + j * 0.05, 0.05, u[k - 1]
                J = model.jacobian(ref.t, ref.x, u[k - 1][:, None], ref.p[:, None])[:, :, 0]
                ref.F = np.eye(2) + J * 0.05 + 0.5 * (J * 0.05) @ (J * 0.05)
                ref.Q = Q * 0.05
                ref.predict()

        def hx(x, uk=u[k]):
            return np.array([[np.sin(x[0, 0]) + 0.5 * x[1, 0]], [x[0, 0] * x[1, 0] + 0.1 * uk[0]]])

        def hjac(x):
            return np.array([[np.cos(x[0, 0]), 0.5], [x[1, 0], x[0, 0]]])

        ref.update(z[k][:, None], hjac, hx)
        xs.append(ref.x[:, 0].copy())
    np.testing.assert_allclose(res.x, xs, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("analytic,measured,tol", [
    (True, ["vel", "pos"], 1e-12),
    # Forward differences divide rounding-level differences between the two implementations by a
    # step of ~1.5e-8, so wherever H or J is differenced C and NumPy agree to ~1e-9, not 1e-12.
    (True, ["sensor_b", "pos", "sensor_a"], 1e-7),
    (False, ["vel", "pos"], 1e-7),
])
@needs_c
def test_ekf_c_equals_numpy_on_a_nonlinear_model(analytic, measured, tol):
    t, x_true, z, u = simulate_vdp(300, 0.1, seed=9)
    t = t + 0.013 * np.sin(np.arange(len(t)))  # irregular sampling
    rng = np.random.default_rng(9)
    columns = {"sensor_a": z[:, 0], "sensor_b": z[:, 1],
               "pos": x_true[:, 0] + 0.05 * rng.normal(size=len(t)),
               "vel": x_true[:, 1] + 0.05 * rng.normal(size=len(t))}
    zm = np.column_stack([columns[n] for n in measured])
    zm[rng.random(zm.shape) < 0.25] = np.nan
    zm[40:45] = np.nan
    u[rng.random(u.shape) < 0.2] = np.nan
    numpy_model = van_der_pol(analytic)
    c_model = with_ctypes_c_form(numpy_model, analytic)
    kw = dict(Q=np.diag([1e-4, 1e-3]), R=np.full(len(measured), 0.05**2), P0=0.3, max_step=0.04,
              measured=measured, params={"mu": 1.3})
    res = {}
    for backend, model in [("c", c_model), ("numpy", numpy_model)]:
        res[backend] = ExtendedKalmanFilter(model, backend=backend, **kw).filter_arrays(
            t, zm, u, covariance=True)
    for name in EstimateResult._fields:
        np.testing.assert_allclose(getattr(res["c"], name), getattr(res["numpy"], name),
                                   rtol=tol, atol=tol, err_msg=name)
    np.testing.assert_array_equal(res["c"].nis_dof, np.isfinite(zm).sum(axis=1))


@pytest.mark.parametrize("backend", BACKENDS)
def test_ekf_linear_model_native_c_form(backend):
    # linear_model has a genuine compiled form (not ctypes): C must equal NumPy and filterpy's KF
    # with the same F (I + A h + (A h)^2 / 2) and Q h.
    A = np.array([[0.0, 1.0], [-4.0, -0.4]])
    m = linear_model(A, [[0.0], [1.0]], [[1.0, 0.0]])
    rng = np.random.default_rng(10)
    T, dt = 500, 0.05
    t = np.arange(T) * dt
    z = rng.normal(size=(T, 1))
    u = rng.normal(size=(T, 1))
    Q, R = np.diag([1e-3, 1e-2]), np.array([[0.1]])
    ekf = ExtendedKalmanFilter(m, Q=Q, R=R, P0=np.eye(2), max_step=dt, backend=backend)
    res = ekf.filter_arrays(t, z, u)
    Ah = A * dt
    F = np.eye(2) + Ah + 0.5 * Ah @ Ah
    ref = filterpy_kalman.KalmanFilter(dim_x=2, dim_z=1)
    ref.H, ref.R, ref.Q = np.array([[1.0, 0.0]]), R, Q * dt
    ref.x, ref.P = np.zeros((2, 1)), np.eye(2)
    xs = []
    for k in range(T):
        if k:
            # RK4 of a linear system is x + (Ah + (Ah)^2/2 + (Ah)^3/6 + (Ah)^4/24) x + ... B u
            x_rk4 = _rk4(m.rhs, 0.0, dt, ref.x[:, 0], u[k - 1], np.zeros(0))
            ref.F = F
            ref.predict()
            ref.x = x_rk4[:, None]
        ref.update(z[k][:, None])
        xs.append(ref.x[:, 0].copy())
    np.testing.assert_allclose(res.x, xs, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_ekf_streaming_is_invariant(backend):
    t, _, z, u = simulate_vdp(200, 0.1, seed=11)
    z[::7, 1] = np.nan
    model = van_der_pol() if backend == "numpy" else with_ctypes_c_form(van_der_pol())
    kw = dict(Q=np.diag([1e-4, 1e-3]), R=np.diag([0.05**2, 0.05**2]), max_step=0.03,
              backend=backend)
    whole = ExtendedKalmanFilter(model, **kw).filter_arrays(t, z, u, covariance=True)
    ekf = ExtendedKalmanFilter(model, **kw)
    parts = [ekf.filter_arrays(t[a:b], z[a:b], u[a:b], covariance=True)
             for a, b in [(0, 1), (1, 2), (2, 2), (2, 90), (90, 200)]]
    for name in EstimateResult._fields:
        np.testing.assert_array_equal(np.concatenate([getattr(p, name) for p in parts]),
                                      getattr(whole, name), err_msg=name)
    assert ekf.time == t[-1]


def test_ekf_dataset_with_timestamps_streams_and_keeps_units():
    t, _, z, u = simulate_vdp(100, 0.1, seed=12)
    times = np.datetime64("2024-03-01T12:00:00", "ns") + (t * 1e9).astype("timedelta64[ns]")
    model = c_form_unless_pure(van_der_pol())
    kw = dict(Q=np.diag([1e-4, 1e-3]), R=np.diag([0.05**2, 0.05**2]), max_step=0.05)
    whole = ExtendedKalmanFilter(model, **kw).filter(times, z, {"force": u[:, 0]})
    ekf = ExtendedKalmanFilter(model, **kw)
    a = ekf.filter(times[:37], {"sensor_a": z[:37, 0], "sensor_b": z[:37, 1]}, u[:37])
    b = ekf.filter(times[37:], z[37:], u[37:])
    import xarray as xr

    xr.testing.assert_identical(xr.concat([a, b], "time"), whole)
    assert whole.time.dtype == np.dtype("datetime64[ns]")
    np.testing.assert_allclose(whole.elapsed.values, t, atol=1e-9)
    assert whole.pos.attrs["units"] == "m" and "position" in whole.pos.attrs["long_name"]
    assert whole.vel_std.attrs["units"] == "m/s"
    assert whole.sensor_b_innovation.attrs["units"] == "m2/s"
    assert set(whole.data_vars) == {"pos", "pos_std", "vel", "vel_std", "sensor_a_innovation",
                                    "sensor_a_innovation_std", "sensor_b_innovation",
                                    "sensor_b_innovation_std", "nis", "nis_dof"}
    with pytest.raises(TypeError, match="times"):
        ekf.filter(t[-1:] + 1.0, z[-1:])  # float times after timestamps
    with pytest.raises(ValueError, match="times"):
        ekf.filter(times[:1], z[:1])      # before the filter's current time


def test_ekf_nan_row_is_predict_only():
    # A NaN row at t1 between t0 and t2 gives the same estimate at t2 as no row at all, when the
    # substeps line up (0.1 = 2 x 0.05) and the inputs are constant.
    # (states measured: a differenced output H would amplify the rounding differences of the
    # two substep sequences to ~1e-9)
    t, x_true, _, _ = simulate_vdp(30, 0.1, seed=13)
    z = x_true + np.random.default_rng(13).normal(0.0, 0.05, size=x_true.shape)
    kw = dict(Q=np.diag([1e-4, 1e-3]), R=np.diag([0.05**2, 0.05**2]), max_step=0.05,
              measured=["pos", "vel"])
    model = c_form_unless_pure(van_der_pol())
    for backend in BACKENDS:
        zn = z.copy()
        zn[10] = np.nan
        a = ExtendedKalmanFilter(model, backend=backend, **kw).filter_arrays(t, zn, [0.3])
        keep = np.arange(30) != 10
        b = ExtendedKalmanFilter(model, backend=backend, **kw).filter_arrays(t[keep], z[keep],
                                                                            [0.3])
        np.testing.assert_allclose(a.x[keep], b.x, rtol=1e-12, atol=1e-14)
        assert a.nis_dof[10] == 0 and np.isnan(a.nis[10]) and np.isnan(a.innovation[10]).all()
        assert a.std[10, 0] > a.std[9, 0]  # uncertainty grows without a measurement


def test_ekf_missing_component_equals_a_filter_without_that_sensor():
    t, _, z, u = simulate_vdp(80, 0.1, seed=14)
    model = c_form_unless_pure(van_der_pol())
    z2 = z.copy()
    z2[:, 1] = np.nan
    Q = np.diag([1e-4, 1e-3])
    a = ExtendedKalmanFilter(model, Q=Q, R=np.diag([0.05**2, 0.07**2]), max_step=0.05
                             ).filter_arrays(t, z2, u)
    b = ExtendedKalmanFilter(model, Q=Q, R=0.05**2, measured=["sensor_a"], max_step=0.05
                             ).filter_arrays(t, z[:, :1], u)
    np.testing.assert_allclose(a.x, b.x, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(a.nis, b.nis, rtol=1e-12)
    assert (a.nis_dof == 1).all() and np.isnan(a.innovation[:, 1]).all()


def test_ekf_covariance_stays_symmetric_positive_definite_on_long_runs():
    # A stiff-ish, poorly observed setup: tiny R, no process noise on one state, 20,000 updates.
    A = np.array([[0.0, 1.0, 0.0], [-25.0, -0.1, 1.0], [0.0, 0.0, -0.01]])
    m = linear_model(A, C=[[1.0, 0.0, 0.0]])
    rng = np.random.default_rng(15)
    T = 20_000
    t = np.arange(T) * 0.01
    z = np.sin(5 * t)[:, None] + 1e-4 * rng.normal(size=(T, 1))
    z[rng.random(T) < 0.3] = np.nan
    ekf = ExtendedKalmanFilter(m, Q=[0.0, 1e-6, 1e-9], R=1e-8, P0=[1.0, 1e3, 1e-6], max_step=0.01)
    res = ekf.filter_arrays(t, z, covariance=True)
    np.testing.assert_array_equal(res.P, np.swapaxes(res.P, 1, 2))
    assert np.linalg.eigvalsh(res.P).min() > 0.0
    assert np.isfinite(res.x).all()


def test_ekf_nis_mean_matches_dof_on_a_consistent_filter():
    # Truth from the exact discretisation of a linear model with process noise; the EKF's own
    # discretisation is accurate at this step, so NIS ~ chi2(2).
    A = np.array([[0.0, 1.0], [-1.0, -0.5]])
    Qc = np.diag([0.0, 0.04])
    dt = 0.05
    Fd = linalg.expm(A * dt)
    # Van Loan: the exact discrete process noise covariance
    M = linalg.expm(np.block([[-A, Qc], [np.zeros((2, 2)), A.T]]) * dt)
    Qd = M[2:, 2:].T @ M[:2, 2:]
    Qd = 0.5 * (Qd + Qd.T)
    R = np.diag([0.01, 0.02])
    rng = np.random.default_rng(16)
    T = 5000
    x = np.zeros(2)
    z = np.empty((T, 2))
    for k in range(T):
        if k:
            x = Fd @ x + rng.multivariate_normal(np.zeros(2), Qd)
        z[k] = x + rng.multivariate_normal(np.zeros(2), R)
    m = linear_model(A)
    res = ExtendedKalmanFilter(m, Q=Qc, R=R, P0=1e-6, max_step=dt).filter_arrays(
        np.arange(T) * dt, z)
    assert abs(res.nis[50:].mean() - 2.0) < 0.15, res.nis[50:].mean()


def test_ekf_divergence_raises_and_restores_the_state():
    # dx/dt = x^2 blows up in finite time (x0 = 1: at t = 1)
    m = Model("blowup", states=[("x", "1", 1.0)], rhs=lambda t, x, u, p: x * x,
              jacobian=lambda t, x, u, p: (2 * x)[None])
    cases = [(m, "numpy")] + ([] if pure_python() else [(with_ctypes_c_form(m), "c")])
    for backend_model, backend in cases:
        ekf = ExtendedKalmanFilter(backend_model, Q=0.0, R=1.0, max_step=0.01, backend=backend)
        ekf.filter_arrays([0.0, 0.5], [np.nan, np.nan])
        x, P = ekf.x, ekf.P
        with pytest.raises(FilterDivergedError) as info, np.errstate(over="ignore",
                                                                     invalid="ignore"):
            ekf.filter_arrays([0.9, 1.5, 2.0], [np.nan, np.nan, np.nan])
        assert info.value.index == 1 and info.value.time == 1.5
        np.testing.assert_array_equal(ekf.x, x)
        np.testing.assert_array_equal(ekf.P, P)
        assert ekf.time == 0.5


def test_ekf_nan_inputs_hold_the_last_value_and_defaults_apply_first():
    t, _, z, u = simulate_vdp(40, 0.1, seed=17)
    model = van_der_pol()
    kw = dict(Q=np.diag([1e-4, 1e-3]), R=np.diag([0.05**2, 0.05**2]), max_step=0.05)
    un = u.copy()
    un[:3] = np.nan             # before any value: the declared default (0.0)
    un[10:15] = np.nan
    held = u.copy()
    held[:3] = 0.0
    held[10:15] = held[9]
    a = ExtendedKalmanFilter(model, **kw).filter_arrays(t, z, un)
    b = ExtendedKalmanFilter(model, **kw).filter_arrays(t, z, held)
    np.testing.assert_array_equal(a.x, b.x)


@needs_c
def test_ekf_on_pump_model_c_equals_numpy():
    models = pytest.importorskip("twinbench.models")
    if not hasattr(models, "pump"):
        pytest.skip("twinbench.models.pump is not available yet")
    pump = models.pump()
    if not (pump.has_compiled and pump.has_numpy):
        pytest.skip("the pump model needs both forms for this test")
    ds = pump.simulate(duration=20.0, dt=0.01, every=10)
    measured = list(pump.output_names or pump.state_names)
    rng = np.random.default_rng(18)
    z = np.column_stack([ds[n].values for n in measured])
    z = z + 0.01 * np.abs(z).mean(axis=0) * rng.normal(size=z.shape)
    t = ds.elapsed.values
    R = (0.01 * np.abs(z).mean(axis=0) + 1e-6) ** 2
    Q = 1e-4 * (np.abs([v.default for v in pump.states]) + 1.0) ** 2
    res = {}
    for backend in BACKENDS:
        ekf = ExtendedKalmanFilter(pump, Q=Q, R=R, measured=measured, max_step=0.05,
                                   backend=backend)
        res[backend] = ekf.filter_arrays(t, z, covariance=True)
    # H is differenced (outputs), which amplifies rounding differences to ~1e-9 relative; a
    # poorly observed state (wear) turns that into ~1e-7 of its range.
    scale = np.abs(res["numpy"].x).max(axis=0) + 1e-12
    np.testing.assert_allclose(res["c"].x / scale, res["numpy"].x / scale, atol=1e-6)
    np.testing.assert_allclose(res["c"].nis, res["numpy"].nis, rtol=1e-5, atol=1e-9)


# -- bad input -------------------------------------------------------------------------------------

def test_bad_input_names_the_argument():
    F, B, H, Q, R = cv_system()
    with pytest.raises(ValueError, match="^F: "):
        KalmanFilter(np.ones((2, 3)), H, Q, R)
    with pytest.raises(ValueError, match="^H: "):
        KalmanFilter(F, np.ones((2, 3)), Q, R)
    with pytest.raises(ValueError, match="^Q: .*shape"):
        KalmanFilter(F, H, np.eye(3), R)
    with pytest.raises(ValueError, match="^Q: .*semidefinite"):
        KalmanFilter(F, H, -np.eye(4), R)
    with pytest.raises(ValueError, match="^R: .*positive definite"):
        KalmanFilter(F, H, Q, np.zeros((2, 2)))
    with pytest.raises(ValueError, match="^R: .*symmetric"):
        KalmanFilter(F, H, Q, [[1.0, 0.5], [0.0, 1.0]])
    with pytest.raises(ValueError, match="^P0: "):
        KalmanFilter(F, H, Q, R, P0=[1.0, np.nan, 1.0, 1.0])
    with pytest.raises(ValueError, match="^x0: "):
        KalmanFilter(F, H, Q, R, x0=[1.0, 2.0])
    with pytest.raises(ValueError, match="^backend: "):
        KalmanFilter(F, H, Q, R, backend="fortran")
    kf = KalmanFilter(F, H, Q, R, B=B)
    with pytest.raises(ValueError, match="^measurements: "):
        kf.filter_arrays(np.zeros((5, 3)))
    with pytest.raises(ValueError, match="^inputs: "):
        kf.filter_arrays(np.zeros((5, 2)), np.zeros((4, 2)))
    with pytest.raises(KeyError, match="measurements"):
        kf.filter(None, {"gps": np.zeros(3)})
    with pytest.raises(ValueError, match="^times: "):
        kf.filter(np.arange(4.0), np.zeros((5, 2)))

    model = van_der_pol()
    with pytest.raises(TypeError, match="^model: "):
        ExtendedKalmanFilter("pump", Q=1.0, R=1.0)
    with pytest.raises(KeyError, match="measured"):
        ExtendedKalmanFilter(model, Q=1.0, R=1.0, measured=["pressure"])
    with pytest.raises(ValueError, match="^R: "):
        ExtendedKalmanFilter(model, Q=1.0, R=np.eye(3))
    with pytest.raises(ValueError, match="^params: .*mu"):
        ExtendedKalmanFilter(model, Q=1.0, R=1.0, params={"mu": np.nan})
    with pytest.raises(KeyError, match="params"):
        ExtendedKalmanFilter(model, Q=1.0, R=1.0, params={"nu": 1.0})
    with pytest.raises(KeyError, match="x0"):
        ExtendedKalmanFilter(model, Q=1.0, R=1.0, x0={"speed": 1.0})
    with pytest.raises(ValueError, match="^max_step: "):
        ExtendedKalmanFilter(model, Q=1.0, R=1.0, max_step=0.0)
    with pytest.raises(ValueError, match="^backend: "):
        ExtendedKalmanFilter(model, Q=1.0, R=1.0, backend="c")  # no compiled form
    ekf = ExtendedKalmanFilter(model, Q=1.0, R=1.0)
    with pytest.raises(ValueError, match="^t: .*non-decreasing"):
        ekf.filter_arrays([0.0, 0.2, 0.1], np.zeros((3, 2)))
    with pytest.raises(ValueError, match="^t: .*finite"):
        ekf.filter_arrays([0.0, np.nan], np.zeros((2, 2)))
    with pytest.raises(ValueError, match="^measurements: "):
        ekf.filter_arrays([0.0, 0.1], np.zeros((2, 3)))
    with pytest.raises(KeyError, match="inputs"):
        ekf.filter([0.0, 0.1], np.zeros((2, 2)), {"torque": 1.0})
    with pytest.raises(TypeError, match="^times: "):
        ekf.filter(["a", "b"], np.zeros((2, 2)))
    ekf.filter_arrays([1.0], [[0.1, 0.2]])
    with pytest.raises(ValueError, match="^t: .*before"):
        ekf.filter_arrays([0.5], [[0.1, 0.2]])


def test_ekf_low_level_entry_refuses_timestamps_and_huge_gaps():
    from twinbench.kernel import ExtendedKalmanFilter
    from twinbench.kernel.linear import linear_model

    m = linear_model([[-1.0]], states=[("x", "1", 0.0)])
    ekf = ExtendedKalmanFilter(m, Q=1e-3, R=1e-2, measured=["x"], max_step=0.01)
    times = np.array(["2026-01-01T00:00:00", "2026-01-01T00:00:01"], dtype="datetime64[ns]")
    with pytest.raises(TypeError, match="filter\\(times"):
        ekf.filter_arrays(times, np.zeros(2))
    with pytest.raises(ValueError, match="substeps"):
        ekf.filter_arrays(np.array([0.0, 1e12]), np.zeros(2))
    ekf.filter_arrays(np.array([0.0, 1.0]), np.zeros(2))  # an ordinary call still works
