"""Cell physics a battery engineer would check: Coulomb counting, RC time constants, voltage
under load, Joule heating and the thermal time constant, Arrhenius behaviour, capacity fade,
and that the stiff model runs with ROS2 at large steps."""

from __future__ import annotations

import numpy as np
import pytest

from twinbench.kernel import IntegrationError
from twinbench.models import battery_cell
from twinbench.models._battery_py import ocv

# Reference temperature, no ageing, temperature-independent resistances: the plain ECM.
PLAIN = dict(resistance_activation_energy=0.0, calendar_fade_rate=0.0, cycle_fade=0.0,
             entropic_coefficient=0.0)


def test_coulomb_counting_discharge_and_charge():
    cell = battery_cell(soc=0.9, **PLAIN)
    ds = cell.simulate(duration=1800.0, dt=1.0, method="ros2", every=1800,
                       inputs={"current": 3.0})
    # 3 A for half an hour out of 3 A h: exactly half the charge
    assert float(ds.soc[-1]) == pytest.approx(0.9 - 0.5, abs=1e-9)
    ds = cell.simulate(duration=1800.0, dt=1.0, method="ros2", every=1800,
                       inputs={"current": -1.5}, x0={"soc": 0.2})
    assert float(ds.soc[-1]) == pytest.approx(0.2 + 0.25, abs=1e-9)


def test_fade_shrinks_the_capacity_that_soc_counts():
    cell = battery_cell(soc=0.9, capacity_fade=0.2, **PLAIN)
    ds = cell.simulate(duration=1800.0, dt=1.0, method="ros2", every=1800,
                       inputs={"current": 3.0})
    assert float(ds.soc[-1]) == pytest.approx(0.9 - 1.5 / 2.4, abs=1e-9)
    assert float(ds.capacity[-1]) == pytest.approx(2.4)


def test_rc_branches_charge_with_their_time_constants():
    cell = battery_cell(**PLAIN)
    ds = cell.simulate(duration=600.0, dt=0.01, every=10, inputs={"current": 2.0})
    t = ds.elapsed.values
    for state, R, C in (("charge_transfer_voltage", 0.010, 100.0),
                        ("diffusion_voltage", 0.015, 4000.0)):
        v = ds[state].values
        np.testing.assert_allclose(v, 2.0 * R * (1 - np.exp(-t / (R * C))), rtol=1e-6,
                                   atol=1e-9)


def test_terminal_voltage_under_load_and_relaxation():
    cell = battery_cell(soc=0.8, **PLAIN)
    I = np.r_[np.full(6000, 3.0), np.zeros(6000)]  # noqa: E741
    ds = cell.simulate(steps=12000, dt=0.1, every=10, inputs={"current": I})
    soc = ds.soc.values
    V = ds.voltage.values
    # after 10 RC time constants of the slow branch: V = OCV - I (R0 + R1 + R2)
    assert V[599] == pytest.approx(ocv(soc[599]) - 3.0 * 0.050, abs=2e-4)
    # the instant the current stops (sample 600 already sees the new input), V jumps by I R0,
    # then relaxes to the OCV
    assert V[600] - V[599] == pytest.approx(3.0 * 0.025, abs=3e-4)  # OCV moved over 1 s
    assert V[-1] == pytest.approx(ocv(soc[-1]), abs=1e-4)
    assert np.all(V[:600] < ds.open_circuit_voltage.values[:600] + 1e-12)
    # charging lifts the terminal voltage above the OCV
    ch = cell.simulate(duration=60.0, dt=0.1, every=600, inputs={"current": -3.0})
    assert float(ch.voltage[-1]) > float(ch.open_circuit_voltage[-1])


def test_ocv_spans_the_li_ion_window_and_rises_with_soc():
    z = np.linspace(0.0, 1.0, 501)
    u = ocv(z)
    assert np.all(np.diff(u) > 0)
    assert u[0] == pytest.approx(2.654, abs=0.01) and u[-1] == pytest.approx(4.10, abs=0.01)


def test_joule_heating_and_thermal_time_constant():
    # 3 A through 50 mOhm: 0.45 W into 0.05 W/K -> 9 K rise with tau = 45 / 0.05 = 900 s, the
    # heat itself building up as the RC branches charge (1 s and 60 s). With constant
    # resistances the rise is a sum of exponentials, known exactly.
    cell = battery_cell(soc=1.0, **PLAIN)
    ds = cell.simulate(duration=2700.0, dt=0.5, method="ros2", every=20,
                       inputs={"current": 3.0})
    t = ds.elapsed.values
    rise = ds.temperature.values - 298.15
    tau, gain = 900.0, 1.0 / 0.05
    expected = gain * 9.0 * 0.025 * (1 - np.exp(-t / tau))
    for R, tau_k in ((0.010, 1.0), (0.015, 60.0)):
        expected += gain * 9.0 * R * ((1 - np.exp(-t / tau))
                                      - (np.exp(-t / tau_k) - np.exp(-t / tau)) / (1 - tau / tau_k))
    np.testing.assert_allclose(rise, expected, rtol=1e-4, atol=1e-6)
    assert rise[-1] == pytest.approx(9.0 * (1 - np.exp(-3.0)), rel=0.01)
    heat = ds.heat.values
    assert np.all(heat >= 0)
    assert heat[-1] == pytest.approx(0.45, rel=1e-3)
    # energy: electrical power delivered + heat = I * OCV (what the chemistry gives up)
    np.testing.assert_allclose(ds.power.values + heat, 3.0 * ds.open_circuit_voltage.values,
                               rtol=1e-12)


def test_heat_is_positive_when_charging_too_and_entropic_sign():
    cell = battery_cell(**PLAIN)
    ds = cell.simulate(duration=60.0, dt=0.1, every=600, inputs={"current": -3.0})
    assert float(ds.heat[-1]) > 0  # Joule heat does not change sign with current
    x = np.array([[0.5], [0.0], [0.0], [298.15], [0.0]])
    p = np.array([[v.default] for v in cell.params])
    p[cell.param_names.index("entropic_coefficient")] = -2e-4
    q_dis = cell.output(0.0, x, np.array([[3.0], [298.15]]), p)[3, 0]
    q_chg = cell.output(0.0, x, np.array([[-3.0], [298.15]]), p)[3, 0]
    # dU/dT < 0: reversible heat adds on discharge, subtracts on charge (Bernardi)
    assert q_dis == pytest.approx(9 * 0.025 + 3 * 298.15 * 2e-4, rel=1e-12)
    assert q_chg == pytest.approx(9 * 0.025 - 3 * 298.15 * 2e-4, rel=1e-12)


def test_cold_cell_sags_more():
    cell = battery_cell()
    x = np.array([[0.7, 0.7], [0.0, 0.0], [0.0, 0.0], [273.15, 298.15], [0.0, 0.0]])
    u = np.array([[5.0, 5.0], [273.15, 298.15]])
    p = np.array([[v.default] * 2 for v in cell.params])
    y = cell.output(0.0, x, u, p)
    sag = y[1] - y[0]
    # 20 kJ/mol: R0 about doubles from 25 to 0 degC
    assert sag[0] / sag[1] == pytest.approx(np.exp(2e4 / 8.314462618 * (1 / 273.15 - 1 / 298.15)),
                                            rel=1e-9)
    assert sag[0] / sag[1] > 1.8


def test_capacity_fade_calendar_cycling_and_arrhenius():
    cell = battery_cell()
    p = np.array([[v.default] * 3 for v in cell.params])
    x = np.array([[0.5] * 3, [0.0] * 3, [0.0] * 3, [298.15, 298.15, 318.15], [0.0] * 3])
    u = np.array([[0.0, 3.0, 0.0], [298.15] * 3])
    dq = cell.rhs(0.0, x, u, p)[4]
    year = 365.25 * 86400.0
    assert dq[0] * 10 * year == pytest.approx(0.2, rel=0.01)     # 20 % in ten years' storage
    # 1C cycling: one full cycle per 2 h -> 1000 cycles in 2000 h lose 20 % (plus calendar)
    assert (dq[1] - dq[0]) * 2000 * 3600 == pytest.approx(0.2, rel=0.01)
    assert dq[2] / dq[0] == pytest.approx(np.exp(3.17e4 / 8.314462618 * (1 / 298.15 - 1 / 318.15)),
                                          rel=1e-9)
    assert dq[2] > 2 * dq[0]                                      # 20 K hotter: > 2x faster
    # resistance grows with fade
    x2 = x[:, :1].repeat(2, axis=1)
    x2[4] = [0.0, 0.2]
    y = cell.output(0.0, x2, np.array([[3.0, 3.0], [298.15, 298.15]]), p[:, :2])
    assert (y[1, 1] - y[0, 1]) == pytest.approx(1.2 * (y[1, 0] - y[0, 0]), rel=1e-9)


def test_stiff_model_runs_with_ros2_at_large_steps():
    # 1 s charge-transfer branch, 15 min thermal: RK4 at 10 s steps is unstable, ROS2 is not,
    # and matches a fine RK4 reference.
    cell = battery_cell(soc=1.0)
    I = np.repeat([3.0, 0.0, -1.5, 6.0, 0.0], 72)  # noqa: E741  # 5 phases of 12 min
    with pytest.raises(IntegrationError):
        cell.simulate(steps=I.size, dt=10.0, method="rk4", inputs={"current": I})
    coarse = cell.simulate(steps=I.size, dt=10.0, method="ros2", inputs={"current": I})
    fine = cell.simulate(steps=I.size * 100, dt=0.1, method="rk4", every=100,
                         inputs={"current": np.repeat(I, 100)})
    np.testing.assert_allclose(coarse.soc.values, fine.soc.values, atol=1e-9)
    np.testing.assert_allclose(coarse.temperature.values, fine.temperature.values, atol=0.02)
    # voltage: compare away from the current steps, where 10 s steps cannot resolve the 1 s
    # branch (ROS2 is L-stable: it damps it instead)
    settled = np.ones(I.size + 1, bool)
    for k in range(0, I.size + 1, 72):
        settled[k:k + 12] = False
    np.testing.assert_allclose(coarse.voltage.values[settled], fine.voltage.values[settled],
                               atol=2e-3)
