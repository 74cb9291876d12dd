"""Properties every asset model must have: C == NumPy, a correct Jacobian, sound declarations."""

from __future__ import annotations

import importlib

import numpy as np
import pytest
import xarray as xr

from twinbench import models
from twinbench.kernel import Model
from twinbench.kernel._check_build import pure_python

needs_c = pytest.mark.skipif(pure_python(), reason="TWINBENCH_PURE_PYTHON: no compiled kernel")

# name -> (private module, state ranges for random tests, input ranges)
CASES = {
    "pump": ("twinbench.models._pump",
             [(0, 330), (-0.01, 0.05), (280, 400), (0, 1.5)],
             [(0, 3200), (0, 1), (260, 320)]),
    "wind_turbine": ("twinbench.models._wind",
                     [(0.02, 1.6), (-25, 30), (0, 1.5)],
                     [(0, 28), (6, 13)]),
    "battery_cell": ("twinbench.models._battery",
                     [(-0.05, 1.05), (-0.1, 0.1), (-0.1, 0.1), (250, 330), (0, 0.3)],
                     [(-10, 10), (250, 320)]),
    "thermal_zone": ("twinbench.models._thermal",
                     [(250, 310), (250, 310)],
                     [(250, 310), (-5000, 5000), (0, 900), (0, 1000)]),
}


def random_point(name, rng, n=37):
    model = models.get(name)()
    _, xr_, ur_ = CASES[name]
    x = np.array([rng.uniform(lo, hi, n) for lo, hi in xr_])
    u = np.array([rng.uniform(lo, hi, n) for lo, hi in ur_])
    p = np.array([v.default * rng.uniform(0.8, 1.2, n) for v in model.params])
    return model, x, u, p


@needs_c
@pytest.mark.parametrize("name", sorted(CASES))
def test_c_equals_numpy_pointwise(name, rng, tools):
    model, x, u, p = random_point(name, rng)
    p = model.kernel_params(p)
    py = importlib.import_module(CASES[name][0] + "_py")
    caps = importlib.import_module(CASES[name][0]).capsules()
    nx, ny = model.nx, model.ny
    np.testing.assert_allclose(tools.call_capsule(caps["rhs"], nx, 0.0, x, u, p),
                               py.rhs(0.0, x, u, p), rtol=1e-12, atol=0)
    np.testing.assert_allclose(tools.call_capsule(caps["output"], ny, 0.0, x, u, p),
                               py.output(0.0, x, u, p), rtol=1e-12, atol=0)
    np.testing.assert_allclose(tools.call_capsule(caps["jacobian"], nx * nx, 0.0, x, u, p),
                               py.jacobian(0.0, x, u, p).reshape(nx * nx, -1), rtol=1e-12,
                               atol=0)


@pytest.mark.parametrize("name", sorted(CASES))
def test_jacobian_matches_finite_differences(name, rng, tools):
    model, x, u, p = random_point(name, rng)
    p = model.kernel_params(p)
    J = model.jacobian(0.0, x, u, p)
    assert J.shape == (model.nx, model.nx, x.shape[1])
    # Central differences at three step sizes: each entry must match at the best of them (a
    # large step suffers truncation, a small one cancellation). Scale: the largest entry of
    # that row of the Jacobian in that scenario.
    err = np.inf
    for rel in (1e-4, 1e-5, 1e-6):
        Jfd = tools.fd_jacobian(model.rhs, x, u, p, rel=rel)
        scale = np.abs(Jfd).max(axis=1, keepdims=True) + 1e-300
        err = np.minimum(err, np.abs(J - Jfd) / scale)
    assert np.max(err) < 1e-6


@needs_c
@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("method", ["rk4", "ros2"])
def test_simulate_c_equals_numpy(name, method, rng):
    model = models.get(name)()
    n = 5
    params = {v.name: v.default * rng.uniform(0.9, 1.1, n) for v in model.params}
    dt = {"pump": 0.02, "wind_turbine": 0.1, "battery_cell": 0.5, "thermal_zone": 60.0}[name]
    inputs = {v.name: np.full(40, v.default) for v in model.inputs}
    first = model.inputs[0].name
    inputs[first] = np.r_[np.full(20, model.inputs[0].default),
                          np.full(20, 0.7 * model.inputs[0].default + 1.0)]
    kw = dict(steps=40, dt=dt, inputs=inputs, params=params, method=method)
    a = model.simulate(backend="c", **kw)
    b = model.simulate(backend="numpy", **kw)
    for v in model.state_names + model.output_names:
        np.testing.assert_allclose(a[v].values, b[v].values, rtol=1e-9, atol=1e-12 * (
            1 + np.abs(b[v].values).max()), err_msg=v)
    # the step changed something: the comparison is not between two constants
    assert not np.allclose(a[model.state_names[0]].values[0], a[model.state_names[0]].values[-1])


@pytest.mark.parametrize("name", sorted(CASES))
def test_declarations(name, tools):
    model = models.get(name)()
    assert isinstance(model, Model) and model.name == name
    assert model.has_numpy and model.has_compiled != pure_python()
    assert model.description and len(model.references) >= 2
    py = importlib.import_module(CASES[name][0] + "_py")
    assert (model.nx, model.nu, model.np, model.ny) == (py.NX, py.NU, py.NP, py.NY)
    dataset_attrs = set(dir(xr.Dataset))
    for v in model.states + model.inputs + model.params + model.outputs:
        assert v.units and v.long_name, v
        # ds.<name> must reach the variable, not a Dataset method (e.g. "head")
        assert v.name not in dataset_attrs, v.name
    # a model's module docstring documents its equations and sources
    doc = importlib.import_module(_public_module(name)).__doc__
    assert "References" in doc and "Equations" in doc
    for v in model.states + model.inputs + model.outputs:
        assert f"``{v.name}``" in doc, f"{v.name} undocumented in {name}"
    # physical parameters are positive (but a static head and an entropic coefficient may be
    # zero or negative), initial states finite
    signed = {"static_head", "entropic_coefficient"}
    assert all(v.default > 0 for v in model.params if v.name not in signed)
    x, u, p = tools.defaults(model)
    p = model.kernel_params(p)
    assert np.isfinite(model.rhs(0.0, x, u, p)).all()
    assert np.isfinite(model.output(0.0, x, u, p)).all()


def _public_module(name):
    return {"pump": "twinbench.models.pump", "wind_turbine": "twinbench.models.wind",
            "battery_cell": "twinbench.models.battery",
            "thermal_zone": "twinbench.models.thermal"}[name]


@pytest.mark.parametrize("name", sorted(CASES))
def test_factory_overrides_defaults(name):
    factory = models.get(name)
    model = factory()
    pname = model.params[0].name
    sname = model.states[0].name
    m2 = factory(**{pname: 2.0 * model.params[0].default, sname: 1.5})
    assert m2.variable(pname).default == 2.0 * model.params[0].default
    assert m2.variable(sname).default == 1.5
    assert model.variable(pname).default != m2.variable(pname).default  # original untouched
    with pytest.raises(KeyError, match="no_such_parameter"):
        factory(no_such_parameter=1.0)
    with pytest.raises(ValueError, match=pname):
        factory(**{pname: float("nan")})


def test_registry():
    assert set(models.MODELS) == {"pump", "wind_turbine", "battery_cell", "thermal_zone"}
    assert models.get("pump") is models.pump
    assert models.li_ion_cell is models.battery_cell
    with pytest.raises(KeyError, match="pump"):  # the message lists the known models
        models.get("centrifuge")
    with pytest.raises(TypeError, match="name"):
        models.get(3)


@pytest.mark.parametrize("name", sorted(CASES))
def test_pure_python_mode_builds_numpy_only_models(name, monkeypatch):
    monkeypatch.setenv("TWINBENCH_PURE_PYTHON", "1")
    model = models.get(name)()
    assert not model.has_compiled and model.has_numpy
    ds = model.simulate(steps=3, dt=0.01)
    assert ds.attrs["backend"] != "compiled kernel"
    assert np.isfinite(ds[model.state_names[0]].values).all()
