"""What-if ensembles and calibration (twinbench.scenario) on the kernel."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from twinbench.kernel import Model
from twinbench.models import pump
from twinbench.scenario import CalibrationResult, calibrate, whatif

START = "2026-11-01T12:00:00"


def ramp_model() -> Model:
    """x' = rate: with x(0) = 0 the state is rate * t, so limit crossings are known exactly."""
    return Model("ramp", states=[("level", "m", 0.0)], inputs=[("rate", "m/s", 1.0)],
                 params=[("gain", "1", 1.0)], outputs=[("level_out", "m", 0.0)],
                 rhs=lambda t, x, u, p: p[0] * u[0:1],
                 output=lambda t, x, u, p: x.copy())


# -- shapes, coordinates, the mirror -------------------------------------------------------------
def test_mirror_only_is_a_plain_simulation_from_the_state():
    m = pump()
    state = {"wear": 0.3, "winding_temperature": 350.0}
    ds = whatif(m, state, horizon=120.0, dt=1.0, start=START, every=10,
                inputs={"speed_setpoint": 2600.0})
    assert dict(ds.sizes) == {"time": 13, "scenario": 1, "quantile": 3}
    assert ds.time.values[0] == np.datetime64(START, "ns")
    assert ds.time.dtype == "datetime64[ns]"
    ref = m.simulate(duration=120.0, dt=1.0, every=10, method="ros2", start=START,
                     x0=state, inputs={"speed_setpoint": 2600.0})
    for name in m.state_names + m.output_names:
        np.testing.assert_array_equal(ds[name].values[:, 0], ref[name].values)
        assert ds[name].attrs["units"] == m.variable(name).units
    # the inputs are held: one value per scenario
    assert ds.speed_setpoint.dims == ("scenario",) and float(ds.speed_setpoint[0]) == 2600.0
    # with no projections the quantiles summarise the mirror
    np.testing.assert_array_equal(ds.vibration_quantiles.sel(quantile=0.5), ds.vibration[:, 0])
    assert ds.sample.values.tolist() == [-1]


def test_default_start_is_now_utc():
    import datetime as dt

    def now():
        return np.datetime64(dt.datetime.now(dt.UTC).replace(tzinfo=None), "ns")

    before = now()
    ds = whatif(ramp_model(), {"level": 0.0}, horizon=2.0, dt=1.0)
    after = now()
    assert before <= ds.time.values[0] <= after


def test_horizon_and_dt_as_durations():
    import datetime as dt

    a = whatif(ramp_model(), {}, horizon=dt.timedelta(minutes=2), dt="1s", start=START)
    b = whatif(ramp_model(), {}, horizon=np.timedelta64(120, "s"), dt=1.0, start=START)
    xr.testing.assert_identical(a, b)
    assert a.sizes["time"] == 121 and float(a.level[-1, 0]) == pytest.approx(120.0)


def test_grid_changes_are_a_full_factorial_after_the_mirror():
    m = pump()
    speeds = [2000.0, 2500.0, 2950.0]
    valves = [0.3, 0.8]
    ds = whatif(m, {"wear": 0.2}, horizon=60.0, dt=1.0, start=START, every=60,
                inputs={"speed_setpoint": 2700.0, "valve_opening": 0.6},
                changes={"speed_setpoint": speeds, "valve_opening": valves})
    assert ds.sizes["scenario"] == 1 + 3 * 2
    assert "speed_setpoint" in ds.coords and "valve_opening" in ds.coords
    assert (ds.speed_setpoint.values[0], ds.valve_opening.values[0]) == (2700.0, 0.6)
    pairs = set(zip(ds.speed_setpoint.values[1:], ds.valve_opening.values[1:]))
    assert pairs == {(s, v) for s in speeds for v in valves}
    # every projection is the plain simulation of its setting
    i = 1 + int(np.flatnonzero((ds.speed_setpoint.values[1:] == 2000.0)
                               & (ds.valve_opening.values[1:] == 0.8))[0])
    ref = m.simulate(duration=60.0, dt=1.0, every=60, method="ros2", x0={"wear": 0.2},
                     inputs={"speed_setpoint": 2000.0, "valve_opening": 0.8})
    np.testing.assert_allclose(ds.flow_rate.values[:, i], ref.flow_rate.values, rtol=1e-12)
    # the quantiles are over the projections, not the mirror
    last = ds.flow_rate.isel(time=-1).values[1:]
    np.testing.assert_allclose(ds.flow_rate_quantiles.isel(time=-1).values,
                               np.quantile(last, [0.05, 0.5, 0.95]))
    assert ds.flow_rate_quantiles.dims == ("quantile", "time")
    assert ds.flow_rate_quantiles.attrs["units"] == "m3/h"


def test_parameter_change_and_random_samples_are_reproducible():
    m = pump()
    kw = {"horizon": 30.0, "dt": 1.0, "start": START, "every": 30, "n": 50,
          "changes": {"speed_setpoint": ("uniform", 1800.0, 2950.0),
                      "pipe_loss_coefficient": ("normal", 6000.0, 300.0)}}
    a = whatif(m, {}, seed=3, **kw)
    b = whatif(m, {}, seed=3, **kw)
    c = whatif(m, {}, seed=4, **kw)
    xr.testing.assert_identical(a.drop_vars("time"), b.drop_vars("time"))
    assert not np.array_equal(a.speed_setpoint.values, c.speed_setpoint.values)
    assert a.sizes["scenario"] == 51
    s = a.speed_setpoint.values
    assert s[0] == 2950.0 and ((s[1:] >= 1800.0) & (s[1:] < 2950.0)).all()
    k = a.pipe_loss_coefficient.values
    assert k[0] == 6000.0 and abs(k[1:].mean() - 6000.0) < 4 * 300.0 / np.sqrt(50)
    assert a.pipe_loss_coefficient.dims == ("scenario",) and "pipe_loss_coefficient" in a.coords
    assert a.sample.values.tolist() == [-1] + list(range(50))


def test_grid_with_random_draws_shares_the_draws_across_grid_points():
    ds = whatif(ramp_model(), {"level": 0.0}, horizon=2.0, dt=1.0, start=START, n=4, seed=1,
                changes={"rate": [1.0, 2.0], "gain": ("uniform", 0.5, 1.5)})
    assert ds.sizes["scenario"] == 1 + 2 * 4
    g = ds.gain.values[1:]
    np.testing.assert_array_equal(g[:4], g[4:])
    assert ds.rate.values[1:].tolist() == [1.0] * 4 + [2.0] * 4


def test_uncertainty_samples_initial_states_from_the_covariance():
    m = pump()
    mean = {"shaft_speed": 300.0, "flow": 0.03, "winding_temperature": 355.0, "wear": 0.4}
    cov = np.diag([4.0, 1e-6, 1.0, 0.01])
    cov[2, 3] = cov[3, 2] = 0.05  # correlated temperature and wear
    kw = {"horizon": 1.0, "dt": 1.0, "start": START, "uncertainty": True, "covariance": cov,
          "n": 4000}
    a = whatif(m, mean, seed=11, **kw)
    b = whatif(m, mean, seed=11, **kw)
    np.testing.assert_array_equal(a.wear.values, b.wear.values)
    x0 = np.stack([a[s].isel(time=0).values for s in m.state_names])
    np.testing.assert_array_equal(x0[:, 0], [mean[s] for s in m.state_names])  # the mirror
    draws = x0[:, 1:]
    sd = np.sqrt(np.diag(cov))
    assert np.all(np.abs(draws.mean(axis=1) - list(mean.values())) < 4 * sd / np.sqrt(4000))
    # sample covariance within 0.1 of the correlation scale of each pair
    assert np.all(np.abs(np.cov(draws) - cov) < 0.1 * np.outer(sd, sd))


def test_uncertainty_is_clipped_to_declared_state_bounds():
    m = ramp_model()
    m.bounds = {"level": (0.0, None)}
    ds = whatif(m, {"level": 0.1}, horizon=1.0, dt=1.0, start=START, uncertainty=True,
                covariance=[[1.0]], n=500, seed=0)
    x0 = ds.level.isel(time=0).values
    assert x0.min() == 0.0 and (x0 == 0.0).sum() > 100


# -- limits --------------------------------------------------------------------------------------
def test_limits_flag_scenarios_and_the_first_violation_time():
    m = ramp_model()
    # level = rate * t: with rate 1, 2, 0.5 m/s it passes 10.25 m after 11, 6 and 21 s
    ds = whatif(m, {"level": 0.0}, horizon=30.0, dt=1.0, start=START, method="rk4",
                inputs={"rate": 0.0}, changes={"rate": [1.0, 2.0, 0.5, -1.0]},
                limits={"level_out": (None, 10.25), "level": (-5.5, None)})
    t0 = np.datetime64(START, "ns")
    assert ds.level_out_violates.values.tolist() == [False, True, True, True, False]
    expected = [np.datetime64("NaT", "ns"), t0 + np.timedelta64(11, "s"),
                t0 + np.timedelta64(6, "s"), t0 + np.timedelta64(21, "s"),
                np.datetime64("NaT", "ns")]
    np.testing.assert_array_equal(ds.level_out_first_violation.values, expected)
    assert ds.level_out_first_violation.dtype == "datetime64[ns]"
    # the low side: rate -1 passes -5.5 m after 6 s
    assert ds.level_violates.values.tolist() == [False, False, False, False, True]
    assert ds.level_first_violation.values[4] == t0 + np.timedelta64(6, "s")
    assert ds.level_out_violates.attrs["limit_high"] == 10.25


def test_limits_on_the_pump_agree_with_a_direct_check():
    m = pump()
    ds = whatif(m, {"wear": 0.9}, horizon=600.0, dt=1.0, start=START, every=10,
                changes={"speed_setpoint": np.linspace(1500.0, 2950.0, 8)},
                limits={"speed": (2200.0, None)})
    low = ds.speed.values < 2200.0
    np.testing.assert_array_equal(ds.speed_violates.values, low.any(axis=0))
    assert ds.speed_violates.values.sum() == 4  # the four setpoints below 2200 rpm
    for i in np.flatnonzero(low.any(axis=0)):
        assert ds.speed_first_violation.values[i] == ds.time.values[np.argmax(low[:, i])]
        assert ds.speed_first_violation.values[i] > ds.time.values[0]  # the drive ramps down


# -- dask ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def dask_client():
    distributed = pytest.importorskip("distributed")
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                       dashboard_address=":0")
    client = distributed.Client(cluster)
    yield client
    client.close()
    cluster.close()


def test_dask_ensemble_is_identical_to_the_local_run(dask_client):
    m = pump()
    kw = {"horizon": 300.0, "dt": 1.0, "start": START, "every": 10, "n": 37, "seed": 5,
          "uncertainty": True, "covariance": np.diag([1.0, 1e-8, 0.25, 1e-3]),
          "changes": {"speed_setpoint": ("uniform", 1800.0, 2950.0), "valve_opening": [0.4, 0.9]},
          "limits": {"vibration": (None, 2.0)}}
    local = whatif(m, {"wear": 0.5}, **kw)
    seen = []
    remote = whatif(m, {"wear": 0.5}, dask=dask_client, chunk=13,
                    progress=lambda done, total: seen.append((done, total)), **kw)
    xr.testing.assert_identical(local, remote)
    assert seen[-1] == (len(seen), len(seen)) and len(seen) == -(-75 // 13)
    # a model outside the registry travels pickled (here by cloudpickle: it has lambdas)
    r = ramp_model()
    kw2 = {"horizon": 5.0, "dt": 1.0, "start": START, "changes": {"rate": [1.0, 2.0, 3.0]}}
    xr.testing.assert_identical(whatif(r, {}, **kw2),
                                whatif(r, {}, dask=dask_client, chunk=2, progress=False, **kw2))


def test_dask_true_starts_and_closes_its_own_local_cluster():
    pytest.importorskip("distributed")
    import multiprocessing

    before = {p.pid for p in multiprocessing.active_children()}
    kw = {"horizon": 60.0, "dt": 1.0, "start": START, "every": 10,
          "changes": {"speed_setpoint": [2000.0, 2400.0, 2950.0]}}
    seen = []
    remote = whatif(pump(), {"wear": 0.5}, dask=True, chunk=2,
                    progress=lambda done, total: seen.append((done, total)), **kw)
    xr.testing.assert_identical(whatif(pump(), {"wear": 0.5}, **kw), remote)
    assert seen[-1] == (2, 2)
    # its worker processes are gone with it
    assert {p.pid for p in multiprocessing.active_children()} <= before


def test_dask_missing_names_the_install(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "distributed", None)
    with pytest.raises(ImportError, match="pip install dask distributed"):
        whatif(ramp_model(), {}, horizon=2.0, dt=1.0, dask=True)


# -- argument errors -----------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, exc, match", [
    ({"horizon": -1.0}, ValueError, "horizon"),
    ({"horizon": 2.5}, ValueError, "horizon"),
    ({"dt": "fast"}, ValueError, "dt"),
    ({"every": 3}, ValueError, "every"),
    ({"state": {"pressure": 1.0}}, KeyError, "state"),
    ({"inputs": {"nope": 1.0}}, KeyError, "inputs"),
    ({"params": {"gain": [1.0, 2.0]}}, ValueError, "params"),
    ({"changes": {"level": [1.0]}}, KeyError, "changes"),
    ({"changes": {"rate": ("poisson", 1, 2)}}, ValueError, "changes"),
    ({"changes": {"rate": ("uniform", 2.0, 1.0)}}, ValueError, "changes"),
    ({"changes": {"rate": []}}, ValueError, "changes"),
    ({"changes": {"rate": ("uniform", 0.0, 1.0)}}, ValueError, "n:"),
    ({"n": 5}, ValueError, "n:"),
    ({"n": 0, "uncertainty": True, "covariance": [[1.0]]}, ValueError, "n:"),
    ({"uncertainty": True, "n": 3}, ValueError, "covariance"),
    ({"uncertainty": True, "n": 3, "covariance": [[1.0, 0.0]]}, ValueError, "covariance"),
    ({"uncertainty": True, "n": 3, "covariance": [[-1.0]]}, ValueError, "covariance"),
    ({"covariance": [[1.0]]}, ValueError, "covariance"),
    ({"limits": {"flow": (0, 1)}}, KeyError, "limits"),
    ({"limits": {"level": (2.0, 1.0)}}, ValueError, "limits"),
    ({"limits": {"level": 3.0}}, TypeError, "limits"),
    ({"quantiles": [0.5, 1.5]}, ValueError, "quantiles"),
    ({"method": "euler"}, ValueError, "method"),
    ({"start": "not a date"}, ValueError, "start"),
    ({"dask": "yes"}, TypeError, "dask"),
])
def test_whatif_bad_arguments_name_the_argument(kwargs, exc, match):
    args = {"state": {"level": 0.0}, "horizon": 4.0, "dt": 1.0}
    args.update(kwargs)
    state = args.pop("state")
    with pytest.raises(exc, match=match):
        whatif(ramp_model(), state, **args)


def test_whatif_model_must_be_a_model():
    with pytest.raises(TypeError, match="model"):
        whatif("pump", {}, horizon=1.0, dt=1.0)


# -- calibration ---------------------------------------------------------------------------------
def _recording(seed: int = 2):
    """Ten minutes of the pump at 1 Hz with setpoint and valve steps, noisy sensors."""
    m = pump()
    steps = 600
    speed = np.repeat([2950.0, 2400.0, 2700.0, 2100.0, 2950.0, 2600.0], steps // 6)
    valve = np.repeat([0.5, 0.8, 0.3, 0.6, 0.9], steps // 5)
    truth = m.simulate(steps=steps, dt=1.0, method="ros2", start=START,
                       params={"pipe_loss_coefficient": 7200.0, "bep_efficiency": 0.74},
                       inputs={"speed_setpoint": speed, "valve_opening": valve})
    rng = np.random.default_rng(seed)
    noise = {"flow_rate": 1.0, "pressure": 0.02, "power": 0.2, "speed": 2.0}
    data = truth[["speed_setpoint", "valve_opening"]].copy()
    for name, sd in noise.items():
        data[name] = truth[name] + rng.normal(0.0, sd, truth[name].shape)
        data[name].attrs["noise_std"] = sd
    return data


def test_calibration_recovers_known_pump_parameters():
    data = _recording()
    fit = calibrate(pump(), data, params=["pipe_loss_coefficient", "bep_efficiency"],
                    bounds={"bep_efficiency": (0.3, 0.95)})
    assert isinstance(fit, CalibrationResult) and fit.success, fit.message
    true = {"pipe_loss_coefficient": 7200.0, "bep_efficiency": 0.74}
    for p, v in true.items():
        assert fit.std[p] > 0
        assert abs(fit.params[p] - v) < 4 * fit.std[p], (p, fit.params[p], fit.std[p])
        assert fit.std[p] < 0.02 * v  # the window does determine them
    assert fit.initial == {"pipe_loss_coefficient": 6000.0, "bep_efficiency": 0.78}
    # the residuals shrink to the sensor noise
    for m, sd in {"flow_rate": 1.0, "pressure": 0.02, "power": 0.2}.items():
        assert fit.residuals_after[m] < fit.residuals_before[m]
        assert fit.residuals_after[m] < 1.3 * sd
    assert fit.covariance.shape == (2, 2)
    ds = fit.to_dataset()
    assert ds.value.sel(param="bep_efficiency") == fit.params["bep_efficiency"]
    assert "bep_efficiency" in fit._repr_html_()


@pytest.mark.parametrize("kwargs, exc, match", [
    ({"params": ["nope"]}, KeyError, "params"),
    ({"params": []}, ValueError, "params"),
    ({"measured": ["vibration"]}, KeyError, "measured"),
    ({"inputs": ["ambient_temperature"]}, KeyError, "inputs"),
    ({"bounds": {"bep_efficiency": (0.9, 0.95)}}, ValueError, "bounds"),
    ({"bounds": {"inertia": (0.0, 1.0)}}, KeyError, "bounds"),
    ({"dt": 0.7}, ValueError, "dt"),
    ({"noise": {"power": 0.0}}, ValueError, "noise"),
    ({"method": "bdf"}, ValueError, "method"),
])
def test_calibrate_bad_arguments_name_the_argument(kwargs, exc, match):
    data = _recording().isel(time=slice(0, 20))
    args = {"params": ["bep_efficiency"]}
    args.update(kwargs)
    with pytest.raises(exc, match=match):
        calibrate(pump(), data, **args)


def test_calibrate_needs_a_regular_dataset():
    data = _recording().isel(time=[0, 1, 2, 5, 6])
    with pytest.raises(ValueError, match="data"):
        calibrate(pump(), data, params=["bep_efficiency"])
    with pytest.raises(TypeError, match="data"):
        calibrate(pump(), {"power": [1, 2, 3]}, params=["bep_efficiency"])
