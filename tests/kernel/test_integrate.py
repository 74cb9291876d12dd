"""Ensemble integration: analytic solutions, order of convergence, C == NumPy, NaN reporting."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from twinbench.kernel import IntegrationError, Model, NonFiniteStateWarning, Variable
from twinbench.kernel.linear import linear_model

BACKENDS = ["c", "numpy"]
METHODS = ["rk4", "ros2"]


def decay_numpy() -> Model:
    return Model("decay", states=[("x", "1", 1.0)], params=[("k", "1/s", 0.5)],
                 rhs=lambda t, x, u, p: -p[0] * x)


def oscillator(omega: float = 2.0) -> Model:
    """Undamped harmonic oscillator as a linear model (C form and NumPy form)."""
    return linear_model([[0.0, 1.0], [-omega**2, 0.0]], states=[("pos", "m", 1.0), ("vel", "m/s")])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("method", METHODS)
def test_decay_matches_exponential(backend, method):
    m = linear_model([[-0.5]], states=[("x", "1", 1.0)])
    ds = m.simulate(duration=4.0, dt=0.01, method=method, backend=backend)
    expected = np.exp(-0.5 * ds.elapsed.values)
    tol = 1e-9 if method == "rk4" else 1e-4
    np.testing.assert_allclose(ds.x.values, expected, rtol=tol)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("method", METHODS)
def test_harmonic_oscillator_matches_cosine(backend, method):
    omega = 2.0
    ds = oscillator(omega).simulate(duration=5.0, dt=0.005, method=method, backend=backend)
    t = ds.elapsed.values
    tol = 1e-8 if method == "rk4" else 2e-3
    np.testing.assert_allclose(ds.pos.values, np.cos(omega * t), atol=tol)
    np.testing.assert_allclose(ds.vel.values, -omega * np.sin(omega * t), atol=2 * tol)


@pytest.mark.parametrize("method,order", [("rk4", 4), ("ros2", 2)])
def test_order_of_convergence(method, order):
    m = oscillator(2.0)
    errors = []
    dts = [0.04, 0.02, 0.01]
    for dt in dts:
        ds = m.simulate(duration=2.0, dt=dt, method=method, backend="c")
        errors.append(abs(float(ds.pos[-1]) - np.cos(4.0)))
    observed = np.log2(np.array(errors[:-1]) / np.array(errors[1:]))
    assert np.all(np.abs(observed - order) < 0.25), observed


def test_ros2_is_l_stable_on_a_stiff_decay():
    # lambda * dt = -1e5: RK4 explodes, ROS2 damps to ~0 as an L-stable method must.
    m = linear_model([[-1e6]], states=[("x", "1", 1.0)])
    ds = m.simulate(duration=1.0, dt=0.1, method="ros2")
    assert abs(float(ds.x[1])) < 1e-4
    assert abs(float(ds.x[-1])) < 1e-12
    with pytest.raises(IntegrationError):
        m.simulate(duration=10.0, dt=0.1, method="rk4")


@pytest.mark.parametrize("method", METHODS)
def test_compiled_equals_numpy_reference_for_an_ensemble(method):
    m = linear_model([[-0.3, 1.0], [-2.0, -0.1]], [[0.0], [1.0]], [[1.0, 0.5]],
                     states=[("a", "1"), ("b", "1")], inputs=[("drive", "1")],
                     outputs=[("y", "1")])
    rng = np.random.default_rng(1)
    steps, n = 400, 37  # n not a multiple of the block size
    drive = rng.normal(size=(steps, n))
    kw = dict(steps=steps, dt=0.01, every=4, method=method, inputs={"drive": drive},
              x0={"a": rng.normal(size=n)})
    c = m.simulate(backend="c", **kw)
    ref = m.simulate(backend="numpy", **kw)
    for v in ("a", "b", "y", "drive"):
        np.testing.assert_allclose(c[v].values, ref[v].values, rtol=1e-12, atol=1e-14)
    assert c.a.dims == ("time", "scenario")
    assert c.sizes == {"time": steps // 4 + 1, "scenario": n}


def test_threads_give_identical_results():
    m = oscillator()
    x0 = {"pos": np.linspace(-1, 1, 1000)}
    one = m.simulate(steps=200, dt=0.01, x0=x0, threads=1)
    two = m.simulate(steps=200, dt=0.01, x0=x0, threads=2)
    np.testing.assert_array_equal(one.pos.values, two.pos.values)


def test_per_scenario_parameters_and_time_series_inputs():
    def rhs(t, x, u, p):
        return -p[0] * (x - u[0])

    m = Model("lag", states=[("x", "K", 0.0)], inputs=[("target", "K", 0.0)],
              params=[("rate", "1/s", 1.0)], rhs=rhs)
    steps = 1000
    target = np.where(np.arange(steps) < 500, 1.0, 3.0)
    ds = m.simulate(steps=steps, dt=0.01, params={"rate": [0.5, 2.0, 8.0]},
                    inputs={"target": target})
    assert ds.x.dims == ("time", "scenario")
    # faster rate -> closer to the target just before the step at t = 5 s
    before = ds.x.sel(time=ds.time[500]).values
    assert before[0] < before[1] < before[2] < 1.0
    np.testing.assert_allclose(before, 1 - np.exp(-np.array([0.5, 2.0, 8.0]) * 5.0), rtol=1e-6)
    assert float(ds.target[-1, 0]) == 3.0
    assert ds.rate.dims == ("scenario",)


def test_dataset_carries_units_time_and_declarations():
    m = oscillator()
    ds = m.simulate(duration=1.0, dt=0.1, start="2026-03-01T12:00:00Z")
    assert isinstance(ds, xr.Dataset)
    assert ds.time.dtype == np.dtype("datetime64[ns]")
    assert ds.time.values[0] == np.datetime64("2026-03-01T12:00:00", "ns")
    assert ds.time.values[-1] == np.datetime64("2026-03-01T12:00:01", "ns")
    assert ds.pos.attrs["units"] == "m"
    assert ds.vel.attrs["long_name"] == "vel"
    assert ds.elapsed.attrs["units"] == "s"
    assert "scenario" not in ds.dims


def test_nonfinite_state_is_reported_with_scenario_and_time():
    def rhs(t, x, u, p):
        return p[0] * x * x  # blows up in finite time 1/(p x0)

    m = Model("blowup", states=[("x", "1", 1.0)], params=[("k", "1/s", 0.0)], rhs=rhs)
    k = np.zeros(8)
    k[5] = 2.0  # x = 1/(1 - 2t): infinite at t = 0.5 s
    with pytest.raises(IntegrationError) as info:
        m.simulate(duration=2.0, dt=0.01, params={"k": k})
    assert info.value.scenario == 5
    assert 0.45 <= info.value.time <= 0.7
    assert "scenario 5" in str(info.value)

    with pytest.warns(NonFiniteStateWarning):
        ds = m.simulate(duration=2.0, dt=0.01, params={"k": k}, on_nonfinite="warn")
    assert int(ds.nonfinite_step[5]) > 0
    assert (ds.nonfinite_step.values[np.arange(8) != 5] == -1).all()
    assert np.isfinite(ds.x.values[:, 0]).all()


def test_nonfinite_in_compiled_kernel_names_the_scenario():
    m = linear_model([[1e3]], states=[("x", "1", 1.0)])  # grows like exp(1000 t)
    x0 = np.zeros(300)
    x0[201] = 1.0
    with pytest.raises(IntegrationError) as info:
        m.simulate(duration=2.0, dt=0.001, x0={"x": x0})
    assert info.value.scenario == 201


@pytest.mark.parametrize(
    "kwargs,exc,words",
    [
        (dict(duration=1.0, dt=0.0), ValueError, "dt"),
        (dict(duration=1.0, dt=-0.1), ValueError, "dt"),
        (dict(duration=1.0, dt="fast"), TypeError, "dt"),
        (dict(dt=0.1), TypeError, "duration"),
        (dict(duration=1.0, dt=0.3), ValueError, "whole number of steps"),
        (dict(duration=1.0, dt=0.1, every=3), ValueError, "every"),
        (dict(duration=1.0, dt=0.1, method="euler"), ValueError, "method"),
        (dict(duration=1.0, dt=0.1, x0={"nope": 1.0}), KeyError, "x0"),
        (dict(duration=1.0, dt=0.1, params={"k": np.nan}), ValueError, "params['k']"),
        (dict(duration=1.0, dt=0.1, params={"k": [1.0, 2.0]}, x0={"x": [1.0, 2.0, 3.0]}),
         ValueError, "ensemble sizes"),
        (dict(duration=1.0, dt=0.1, params={"k": np.ones((2, 2))}), ValueError, "params['k']"),
        (dict(duration=1.0, dt=0.1, steps=10), TypeError, "duration"),
        (dict(duration=1.0, dt=0.1, backend="gpu"), ValueError, "backend"),
        (dict(duration=1.0, dt=0.1, backend="c"), ValueError, "no compiled"),
        (dict(duration=1.0, dt=0.1, threads=0), ValueError, "threads"),
    ],
)
def test_bad_input_names_the_argument(kwargs, exc, words):
    with pytest.raises(exc, match=words.replace("[", r"\[").replace("]", r"\]")):
        decay_numpy().simulate(**kwargs)


def test_bad_inputs_shape_is_explained():
    m = linear_model([[-1.0]], [[1.0]], states=[("x", "1")], inputs=[("u", "1")])
    with pytest.raises(ValueError, match=r"inputs\['u'\].*one value per step"):
        m.simulate(steps=10, dt=0.1, inputs={"u": np.ones(7)})
    with pytest.raises(KeyError, match="inputs"):
        m.simulate(steps=10, dt=0.1, inputs={"v": 1.0})


def test_model_declarations_are_validated():
    with pytest.raises(ValueError, match="states"):
        Model("empty", states=[], rhs=lambda t, x, u, p: x)
    with pytest.raises(ValueError, match="unique"):
        Model("dup", states=["a"], params=["a"], rhs=lambda t, x, u, p: x)
    with pytest.raises(ValueError, match="identifier"):
        Model("bad", states=["not a name"], rhs=lambda t, x, u, p: x)
    with pytest.raises(TypeError, match="rhs"):
        Model("c", states=["a"], compiled={"rhs": object()})
    v = Variable("speed", "rad/s", 3.0, "shaft speed")
    assert v.attrs() == {"units": "rad/s", "long_name": "shaft speed"}


def test_with_defaults_changes_declared_values():
    m = decay_numpy().with_defaults(k=2.0, x=3.0)
    ds = m.simulate(duration=1.0, dt=0.001)
    np.testing.assert_allclose(float(ds.x[-1]), 3.0 * np.exp(-2.0), rtol=1e-9)
    with pytest.raises(KeyError, match="unknown"):
        decay_numpy().with_defaults(q=1.0)


@pytest.mark.parametrize("method", METHODS)
def test_same_model_written_two_ways_gives_the_same_results(method):
    """A linear state-space model (run in C) and the same equations as a NumPy function."""
    A = np.array([[0.0, 1.0], [-4.0, -0.4]])
    B = np.array([[0.0], [2.0]])
    decl = dict(states=[("pos", "m"), ("vel", "m/s")], inputs=[("force", "N")])
    lin = linear_model(A, B, **decl)
    fn = Model("numpy-oscillator", rhs=lambda t, x, u, p: A @ x + B @ u, **decl)
    force = np.sin(np.linspace(0, 6, 500))
    a = lin.simulate(steps=500, dt=0.01, inputs={"force": force}, method=method)
    b = fn.simulate(steps=500, dt=0.01, inputs={"force": force}, method=method)
    assert a.attrs["backend"] == "compiled kernel" and b.attrs["backend"] == "NumPy reference"
    np.testing.assert_allclose(a.pos.values, b.pos.values, rtol=1e-11, atol=1e-12)
    assert list(a.data_vars) == list(b.data_vars)


def test_compiled_form_of_the_wrong_size_is_refused():
    big = linear_model(np.diag(-np.ones(8)))
    with pytest.raises(ValueError, match="sizes"):
        Model("small", states=["x"], compiled=big._compiled)


def test_explicit_single_scenario_conflicts_with_longer_arrays():
    with pytest.raises(ValueError, match="ensemble sizes"):
        decay_numpy().simulate(duration=1.0, dt=0.1, scenarios=1, x0={"x": np.ones(5)})
    ds = decay_numpy().simulate(duration=1.0, dt=0.1, scenarios=1)
    assert ds.sizes["scenario"] == 1


def test_singular_rosenbrock_matrix_agrees_between_backends():
    # W = I - gamma*h*J is well conditioned but its determinant underflows for many states
    nx = 120
    h = 0.01
    lam = (1 - 1e-3) / (1.7071067811865475 * h)  # W = 1e-3 * I
    m = linear_model(np.eye(nx) * lam, states=[(f"s{i}", "1", 1.0) for i in range(nx)])
    c = m.simulate(steps=2, dt=h, method="ros2", backend="c")
    ref = m.simulate(steps=2, dt=h, method="ros2", backend="numpy")
    np.testing.assert_allclose(c.s0.values, ref.s0.values, rtol=1e-10)
