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
