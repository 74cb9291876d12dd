"""Pump physics a pump engineer would check: operating point, affinity laws, drive ramp, slip,
efficiencies, motor thermal time constant, check valve, bearing wear and vibration."""

from __future__ import annotations

import numpy as np
import pytest

from twinbench.models import pump
from twinbench.models.pump import BEARING_FAULT_WEAR_RATE

RPM = np.pi / 30.0
G = 9.80665


def settle(model, duration=60.0, dt=0.05, **kw):
    """State and outputs at the end of a run (last sample), as a dict of floats. ROS2: a shut
    valve makes the pipe equation stiff (as water hammer is, for a rigid-column model)."""
    ds = model.simulate(duration=duration, dt=dt, every=int(round(duration / dt)), method="ros2",
                        **kw)
    return {k: float(ds[k][-1]) for k in model.state_names + model.output_names}


def test_default_state_is_the_steady_operating_point(tools):
    m = pump()
    x, u, p = tools.defaults(m)
    p = m.kernel_params(p)
    f = m.rhs(0.0, x, u, p)[:, 0]
    # speed, flow and temperature derivatives vanish on their own scales (wear always grows)
    assert abs(f[0]) < 1e-3 * 300 / 0.5
    assert abs(f[1]) < 1e-4 * 0.03
    assert abs(f[2]) < 1e-3 * 60 / 1800
    y = dict(zip(m.output_names, m.output(0.0, x, u, p)[:, 0]))
    # near the best-efficiency point: 108 m3/h at 32 m
    assert 100 < y["flow_rate"] < 115 and 29 < y["total_head"] < 33
    assert 1.0 < y["vibration"] < 1.4             # ISO 10816-3 group 2 zone A
    assert 60 < y["motor_temperature"] < 110      # a loaded motor, within class F
    assert 10 < y["power"] < 15                   # below the 15 kW rating
    assert 15 < y["current"] < 27


def test_affinity_laws_on_a_system_without_static_head(tools):
    # Without static head (and without the check valve) the system curve H ~ Q^2 passes through
    # the origin, so operating points at different speeds are similar: Q ~ n, H ~ n^2 and
    # hydraulic power ~ n^3 (Gülich §3.4).
    m = pump()
    assert m.variable("static_head").default == 0.0   # a closed circulation loop
    pts = []
    for sp in (1500.0, 2950.0):
        x, u, p = tools.steady(m, inputs={"speed_setpoint": sp}, settle=(60.0, 0.1))
        y = dict(zip(m.output_names, m.output(0.0, x, u, p)[:, 0]))
        pts.append((x[0, 0], x[1, 0], y["total_head"]))
    (n1, q1, h1), (n2, q2, h2) = pts
    k = n2 / n1
    assert k == pytest.approx(2950 / 1500, rel=0.02)   # slip makes it not exactly the setpoints
    # exact but for the smoothing of Q|Q| at zero flow (relative effect ~1e-5)
    assert q2 / q1 == pytest.approx(k, rel=1e-4)
    assert h2 / h1 == pytest.approx(k**2, rel=1e-4)
    assert (q2 * h2) / (q1 * h1) == pytest.approx(k**3, rel=1e-4)


def test_speed_reaches_setpoint_less_slip_proportional_to_load():
    m = pump()
    open_ = settle(m, inputs={"speed_setpoint": 2950.0, "valve_opening": 1.0})
    shut = settle(m, inputs={"speed_setpoint": 2950.0, "valve_opening": 0.0})
    slip_open = 2950.0 - open_["speed"]
    slip_shut = 2950.0 - shut["speed"]
    # below synchronous speed by at most the rated slip (50 rpm) ...
    assert 0 < slip_shut < slip_open < 50.0
    # ... and in proportion to shaft power / speed (torque): V/f linear torque-slip region
    torque_open = open_["power"] / open_["speed"]
    torque_shut = shut["power"] / shut["speed"]
    assert slip_open / slip_shut == pytest.approx(torque_open / torque_shut, rel=0.1)
    assert shut["flow_rate"] < 0.1 * open_["flow_rate"]
    assert shut["total_head"] > open_["total_head"]


def test_drive_ramps_at_rated_speed_per_ramp_time():
    m = pump()
    ds = m.simulate(duration=20.0, dt=0.01, every=10,
                    x0={"shaft_speed": 0.0, "flow": 0.0, "winding_temperature": 298.15})
    t = ds.elapsed.values
    w = ds.shaft_speed.values
    mid = (t > 2.0) & (t < 7.0)
    slope = np.polyfit(t[mid], w[mid], 1)[0]
    w_n = 2950.0 * RPM
    assert slope == pytest.approx(w_n / 10.0, rel=0.05)   # ramp_time = 10 s
    # no more overshoot on start than the small slip transient while the flow builds up
    assert w.max() < w[-1] * 1.001
    assert float(ds.speed[-1]) == pytest.approx(2910, abs=5)


def test_efficiency_chain_and_pressure():
    m = pump()
    y = settle(m)
    x = {k: y[k] for k in m.state_names}
    rho = m.variable("density").default
    p_hyd = rho * G * x["flow"] * y["total_head"]
    # shaft power from the pump's torque: electrical power minus motor losses is below P_el
    assert y["pressure"] == pytest.approx(rho * G * y["total_head"] * 1e-5, rel=1e-12)
    eta_total = p_hyd / (y["power"] * 1e3)
    # pump ~0.78 at BEP, IE3 motor ~0.92: wire-to-water 0.6-0.75
    assert 0.6 < eta_total < 0.75


def test_motor_cools_with_the_standstill_time_constant(tools):
    # Drive off, shaft at rest: the winding cools toward ambient with tau = C / G(0), where a
    # self-ventilated motor keeps only standstill_cooling_ratio of its cooling.
    m = pump()
    C = m.variable("thermal_capacitance").default
    G0 = m.variable("thermal_conductance").default * (
        0.3 + 0.7 * np.sqrt(1e-4))  # |r|_eps at r = 0
    tau = C / G0
    ds = m.simulate(duration=5.0 * round(3 * tau / 5.0), dt=5.0, method="ros2", every=1,
                    x0={"shaft_speed": 0.0, "flow": 0.0, "winding_temperature": 373.15},
                    inputs={"speed_setpoint": 0.0})
    T = ds.winding_temperature.values
    t = ds.elapsed.values
    T_inf = T[-1] + (T[-1] - T[-2]) / (1 - np.exp(-5.0 / tau))  # extrapolated end value
    assert T_inf == pytest.approx(298.15, abs=0.5)              # only iron-loss heating left
    frac = (T - T_inf) / (T[0] - T_inf)
    t63 = np.interp(np.exp(-1.0), frac[::-1], t[::-1])
    assert t63 == pytest.approx(tau, rel=0.01)


def test_with_static_head_low_speed_closes_the_check_valve():
    m = pump(static_head=15.0)
    y = settle(m, duration=120.0, inputs={"speed_setpoint": 800.0})
    # shut-off head at 800 rpm (40 m x 0.07) is below the 15 m static head: no forward flow,
    # only the check valve's small leak
    assert -6.0 < y["flow_rate"] < 0.0
    without = settle(pump(static_head=15.0, check_valve_loss_coefficient=0.0), duration=120.0,
                     inputs={"speed_setpoint": 800.0})
    assert without["flow_rate"] < -50.0   # no check valve: the line drains back
    # the closed loop never reverses, even at standstill
    y0 = settle(pump(), duration=120.0, inputs={"speed_setpoint": 0.0})
    assert y0["flow"] >= 0.0 and y0["speed"] < 1.0


def test_wear_grows_with_load_and_accelerates(tools):
    m = pump(wear_rate=1e-6)
    x, u, p = tools.steady(m)
    f_bep = m.rhs(0.0, x, u, p)[3, 0]
    assert f_bep == pytest.approx(1e-6, rel=0.1)      # ~rated duty near the BEP
    x_worn = x.copy()
    x_worn[3] = 0.5
    assert m.rhs(0.0, x_worn, u, p)[3, 0] == pytest.approx(f_bep * (1 + 5 * 0.5), rel=1e-9)
    # off the BEP (valve shut: zero flow at high head) the radial load is higher
    xs, us, ps = tools.steady(m, inputs={"valve_opening": 0.0}, settle=(30.0, 0.05))
    assert m.rhs(0.0, xs, us, ps)[3, 0] > f_bep
    # at half speed the bearing wears far slower (n * P^3)
    xh, uh, ph = tools.steady(m, inputs={"speed_setpoint": 1500.0}, settle=(60.0, 0.1))
    assert m.rhs(0.0, xh, uh, ph)[3, 0] < 0.5 * f_bep


def test_bearing_fault_is_visible_within_a_day_healthy_bearing_is_not():
    day = 86400.0
    fault = pump(wear_rate=BEARING_FAULT_WEAR_RATE).simulate(
        duration=2 * day, dt=60.0, method="ros2", every=60)
    healthy = pump().simulate(duration=2 * day, dt=60.0, method="ros2", every=60)
    v = fault.vibration.values
    h = healthy.vibration.values
    t = fault.elapsed.values
    assert np.all(np.diff(fault.wear.values) > 0) and np.all(np.diff(v) > 0)
    assert h.max() - h.min() < 0.01                 # healthy: unchanged over two days
    t_alarm = t[np.argmax(v > 2.8)]                  # ISO 10816-3 zone B/C boundary
    t_trip = t[np.argmax(v > 4.5)]                   # zone C/D
    assert 0.3 * day < t_alarm < t_trip < 1.5 * day
    # accelerating: the second half of the way to the trip takes less time than the first
    w = fault.wear.values
    t_half = t[np.argmax(w > 0.5)]
    t_one = t[np.argmax(w > 1.0)]
    assert t_one - t_half < t_half
    # worn bearings add friction: more power, hotter motor
    assert fault.power.values[-1] > healthy.power.values[-1]


def test_vibration_grows_with_speed_and_wear(tools):
    m = pump()
    x, u, p = tools.steady(m)
    idx = m.output_names.index("vibration")
    xs = np.repeat(x, 4, axis=1)
    xs[3] = [0.0, 0.25, 0.5, 1.0]
    v = m.output(0.0, xs, np.repeat(u, 4, axis=1), np.repeat(p, 4, axis=1))[idx]
    assert np.all(np.diff(v) > 0)
    assert v[-1] == pytest.approx(4.5, abs=0.15)  # w = 1 is the zone C/D boundary
    x2, u2, p2 = tools.steady(m, inputs={"speed_setpoint": 2000.0}, settle=(60.0, 0.1))
    assert m.output(0.0, x2, u2, p2)[idx, 0] < v[0]


@pytest.mark.parametrize("static_head, dt", [(0.0, 1.0), (15.0, 0.25)])
def test_ros2_at_large_steps_matches_fine_rk4(static_head, dt):
    m = pump(static_head=static_head)
    k = int(round(1.0 / dt))
    sp = np.r_[np.full(60, 2950.0), np.full(60, 1000.0), np.full(60, 2500.0)]
    coarse = m.simulate(steps=180 * k, dt=dt, method="ros2", every=k,
                        inputs={"speed_setpoint": np.repeat(sp, k)})
    fine = m.simulate(steps=18000, dt=0.01, every=100,
                      inputs={"speed_setpoint": np.repeat(sp, 100)})
    np.testing.assert_allclose(coarse.speed.values, fine.speed.values, atol=15.0)
    np.testing.assert_allclose(coarse.flow_rate.values[[59, 119, 179]],
                               fine.flow_rate.values[[59, 119, 179]], atol=0.5)


# -- the kernel form against the documented equations ---------------------------------------------

def documented_pump(x, u, p):
    """The equations of the module docstring, straight from the declared parameters (no derived
    quantities): dx/dt and the outputs. An independent check of ``derive`` and of the rewritten
    right-hand side."""
    w, Q, Tw, wear = x
    w_set, valve, Ta = u[0] * RPM, u[1], u[2]
    w_n = p[1] * RPM
    T_n = p[0] / w_n
    w_slip_n = w_n * p[2] / (1 - p[2])
    Q_b, H_b = p[15], p[16]
    P_bep = p[20] * G * Q_b * H_b / p[17]
    k0 = p[19] * P_bep / w_n**3
    k1 = (1 - p[19]) * P_bep / (w_n**2 * Q_b)
    H0 = p[18] * H_b
    h2 = (H0 - H_b) / Q_b**2
    inertance = p[22] / (G * np.pi * p[23] ** 2 / 4)
    r = w / w_n
    sr = np.sqrt(r**2 + 1e-4)
    QQ = Q * np.sqrt(Q**2 + 1e-8)
    H = H0 * r**2 - h2 * QQ
    T_L = k0 * w**2 + k1 * w * Q + p[12] * (1 + wear) * w
    a = w_n / p[13]
    zz = (w_set - w_slip_n * T_L / T_n - w) / (a * p[14])
    f0 = a * zz / np.sqrt(1 + zz**2)
    k_sys = p[24] + p[25] / (valve**2 + p[26] ** -2)
    f1 = (H - p[21] - k_sys * QQ - p[34] / 2 * Q * (np.sqrt(Q**2 + 1e-10) - Q)) / inertance
    T_e = T_L + p[11] * f0
    s = w_set / w_n
    i02 = p[4] ** 2 * s**2 / (s**2 + 0.02**2)
    i2 = i02 + (1 - i02) * (T_e / T_n) ** 2
    P_cu = p[5] * i2 * (1 + p[7] * (Tw - 293.15))
    P_rot = w_slip_n * T_e**2 / T_n
    P_fe = p[6] * (sr + r**2) / 2
    f2 = (P_cu + P_rot + P_fe - p[9] * (p[10] + (1 - p[10]) * sr) * (Tw - Ta)) / p[8]
    dq = Q / Q_b - r
    ell = p[29] + (1 - p[29]) * (r**2 + p[30] * dq**2)
    f3 = p[27] * sr * ell**3 * (1 + p[28] * wear)
    wear_pos = (wear + np.sqrt(wear**2 + 0.1**2)) / 2
    vib = np.sqrt(0.05**2 + (p[31] * r**2) ** 2 + (p[32] * dq) ** 2
                  + (p[33] * wear_pos * r * ell) ** 2)
    y = [w / RPM, Q * 3600, H, p[20] * G * H * 1e-5, Tw - 273.15, vib, p[3] * np.sqrt(i2),
         (T_e * w + P_rot + P_cu + P_fe) * 1e-3]
    # scale of the terms each derivative is a difference of, for the comparison's tolerance
    scale = [a + 0 * w, (np.abs(H) + p[21] + k_sys * np.abs(QQ)) / inertance,
             (P_cu + P_rot + P_fe + np.abs(p[9] * (Tw - Ta))) / p[8], np.abs(f3)]
    return np.array([f0, f1, f2, f3]), np.array(y), np.array(scale)


def operating_points(m, rng, n=64):
    """Random states, inputs and parameters around the defaults, with the corners that matter:
    standstill, drive off, shut and open valve, reverse flow, static head, worn bearing."""
    x = np.array([rng.uniform(0, 330, n), rng.uniform(-0.01, 0.05, n), rng.uniform(280, 400, n),
                  rng.uniform(-0.2, 1.5, n)])
    u = np.array([rng.uniform(0, 3200, n), rng.uniform(0, 1, n), rng.uniform(260, 320, n)])
    p = np.array([v.default * rng.uniform(0.7, 1.3, n) for v in m.params])
    p[m.param_names.index("static_head")] = rng.uniform(0, 20, n)
    x[0, :4] = 0.0
    u[0, 4:8] = 0.0
    u[1, 8:10] = [0.0, 1.0]
    x[1, 10:12] = [-0.02, 0.0]
    return x, u, p


def test_rhs_and_outputs_follow_the_documented_equations(rng, tools):
    m = pump()
    x, u, p = operating_points(m, rng)
    f_doc, y_doc, scale = documented_pump(x, u, p)
    pk = m.kernel_params(p)
    forms = [("numpy", m.rhs(0.0, x, u, pk), m.output(0.0, x, u, pk))]
    if m.has_compiled:
        from twinbench.kernel._dispatch import compiled_module

        caps = compiled_module("twinbench.models._pump").capsules()
        forms.append(("c", tools.call_capsule(caps["rhs"], m.nx, 0.0, x, u, pk),
                      tools.call_capsule(caps["output"], m.ny, 0.0, x, u, pk)))
    for name, f, y in forms:
        # derivatives: relative to the terms they are the difference of (rounding of a
        # rearranged sum); outputs: relative
        assert np.all(np.abs(f - f_doc) <= 1e-12 * scale), name
        np.testing.assert_allclose(y, y_doc, rtol=1e-12, atol=1e-12, err_msg=name)


def test_kernel_parameters():
    from twinbench.models import _pump_py

    m = pump()
    p = np.array([[v.default] for v in m.params]) * np.ones((1, 3))
    pk = m.kernel_params(p)
    assert pk.shape == (_pump_py.NK, 3) == (len(_pump_py.KERNEL_PARAMS), 3)
    if m.has_compiled:
        from twinbench.models import _pump

        assert _pump.NK == _pump_py.NK
    # the functions take kernel parameters; declared ones are refused, not misread
    x, u = np.array([[v.default] for v in m.states]), np.array([[v.default] for v in m.inputs])
    for fn in (m.rhs, m.output, m.jacobian):
        with pytest.raises(ValueError, match="kernel parameters"):
            fn(0.0, x, u, p[:, :1])
    # a zero time constant is caught when the run derives its parameters
    with pytest.raises(ValueError, match="derived"):
        m.simulate(steps=2, dt=0.01, params={"speed_time_constant": 0.0})


# -- vibration as evidence of wear -------------------------------------------------------------

def test_vibration_rises_strictly_with_wear_from_zero(tools):
    # The defect part grows with a smooth positive part of the damage, so vibration is not an
    # even function of the wear and already rises at w = 0: an estimator can tell the sign.
    m = pump()
    x, u, p = tools.steady(m)
    idx = m.output_names.index("vibration")
    wear = np.linspace(-1.0, 1.5, 251)
    n = wear.size
    xs = np.repeat(x, n, axis=1)
    xs[3] = wear
    us, ps = np.repeat(u, n, axis=1), np.repeat(p, n, axis=1)
    v = m.output(0.0, xs, us, ps)[idx]
    assert np.all(np.diff(v) > 0)
    zero = np.flatnonzero(wear == 0.0)[0]
    assert v[zero] == pytest.approx(1.19, abs=0.03)       # a new bearing: zone A
    mirror = np.flatnonzero(np.isclose(wear, -0.5))[0], np.flatnonzero(np.isclose(wear, 0.5))[0]
    assert v[mirror[0]] < v[zero] - 0.01 < v[mirror[1]] - 1.0
    h = 1e-6
    xh = np.repeat(x, 2, axis=1)
    xh[3] = [-h, h]
    uh, ph = np.repeat(u, 2, axis=1), np.repeat(p, 2, axis=1)
    slope = np.diff(m.output(0.0, xh, uh, ph)[idx])[0] / (2 * h)
    assert slope > 0.2  # mm/s per unit damage at w = 0
    if m.has_compiled:
        from twinbench.kernel._dispatch import compiled_module

        caps = compiled_module("twinbench.models._pump").capsules()
        vc = tools.call_capsule(caps["output"], m.ny, 0.0, xh, uh, ph)[idx]
        assert (vc[1] - vc[0]) / (2 * h) == pytest.approx(slope, rel=1e-6)


@pytest.mark.skipif(not pump().has_compiled,
                    reason="minutes in NumPy; the NumPy and C forms agree (test_common)")
def test_ekf_estimates_the_unmeasured_wear_from_a_new_bearing_start():
    # The demo's day of a bearing fault, filtered from wear = 0 (a new bearing): the estimate
    # must stay on the physical side and end near the truth (vibration symmetric in the wear
    # sent it to -0.78 for a true 0.80).
    from twinbench.demo import pump_fault_day
    from twinbench.kernel import ExtendedKalmanFilter

    truth, meas = pump_fault_day()
    measured = ["speed", "flow_rate", "motor_temperature", "vibration", "current", "power"]
    R = [meas[k].attrs["noise_std"] ** 2 for k in measured]
    ekf = ExtendedKalmanFilter(pump(), Q=[1e-2, 1e-9, 1e-4, 1e-8], R=R, measured=measured,
                               x0={"wear": 0.0}, P0=[1, 1e-6, 1, 1e-3], max_step=0.5)
    est = ekf.filter(meas.time.values, np.column_stack([meas[k].values for k in measured]))
    true_end = float(truth.wear[-1])
    assert true_end > 0.5
    assert float(est.wear[-1]) == pytest.approx(true_end, abs=0.05)
    assert float(est.wear.min()) > -0.05
    late = slice(est.sizes["time"] // 4, None)   # once the fault shows (after ~6 h)
    assert np.abs(est.wear.values[late] - truth.wear.values[late]).max() < 0.05


# -- the compiled functions with overlapping buffers ----------------------------------------------

@pytest.mark.skipif(not pump().has_compiled, reason="TWINBENCH_PURE_PYTHON: no compiled kernel")
@pytest.mark.parametrize("fn, rows", [("rhs", 4), ("output", 8), ("jacobian", 16)])
def test_compiled_functions_write_correctly_over_their_inputs(fn, rows, rng, tools):
    # The compiled bodies assume out overlaps no input (the kernel's case, which lets them
    # vectorise without alias checks); other callers get the same answer through a scratch
    # block. Here out is the state block itself, with rows further apart than n.
    import ctypes

    from twinbench.kernel._dispatch import compiled_module

    m = pump()
    caps = compiled_module("twinbench.models._pump").capsules()
    n, ld = 13, 16
    x, u, p = operating_points(m, rng, n)
    pk = m.kernel_params(p)
    expected = tools.call_capsule(caps[fn], rows, 0.0, x, u, pk)
    buf = np.full((max(rows, 4), ld), np.nan)
    buf[:4, :n] = x
    ub = np.zeros((3, ld))
    ub[:, :n] = u
    pb = np.zeros((pk.shape[0], ld))
    pb[:, :n] = pk
    fn_t = ctypes.CFUNCTYPE(None, ctypes.c_double, *[ctypes.c_void_p] * 4, ctypes.c_ssize_t,
                            ctypes.c_ssize_t, ctypes.c_void_p)
    get = ctypes.pythonapi.PyCapsule_GetPointer
    get.restype, get.argtypes = ctypes.c_void_p, [ctypes.py_object, ctypes.c_char_p]
    f = fn_t(get(caps[fn], b"twinbench.model_fn"))
    ptr = buf.ctypes.data_as(ctypes.c_void_p)
    f(0.0, ptr, ub.ctypes.data_as(ctypes.c_void_p), pb.ctypes.data_as(ctypes.c_void_p), ptr, n,
      ld, None)
    np.testing.assert_array_equal(buf[:rows, :n], expected)
