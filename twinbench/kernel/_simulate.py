"""``Model.simulate``: validate and reshape the user's arguments, run the kernel, build a Dataset."""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from twinbench.kernel._check_build import pure_python
from twinbench.kernel.model import (
    DEFAULT_START,
    IntegrationError,
    NonFiniteStateWarning,
)

if TYPE_CHECKING:
    import xarray as xr

    from twinbench.kernel.model import Model

__all__ = ["simulate", "resolve_threads", "block_size"]

_METHODS = {"rk4": 0, "ros2": 1}
_METHOD_NAMES = {
    "rk4": "classical Runge-Kutta 4 (fixed step)",
    "ros2": "ROS2 Rosenbrock, L-stable, order 2 (fixed step)",
}
#: Bytes of per-block work buffers to aim for: about what fits in L1 next to the code.
BLOCK_BYTES = 24 * 1024
#: Fixed scenarios per block, or None to size blocks from BLOCK_BYTES.
BLOCK: int | None = None


def block_size(model: Model, nk: int, method: str = "rk4") -> int:
    """Scenarios per block so that a block's working set stays in the L1 cache (16 to 256,
    a multiple of 8 so that vector loops have no remainder)."""
    if BLOCK is not None:
        return BLOCK
    nx = model.nx
    rows = (nx + max(model.nu, 1) + max(nk, 1) + max(model.ny, 1) + 1
            + (5 * nx if method == "rk4" else nx * nx + 7 * nx))
    ld = BLOCK_BYTES // (8 * rows)
    return int(min(256, max(16, ld // 8 * 8)))
#: Ensembles at least this large use all cores by default.
PARALLEL_MIN_SCENARIOS = 4096


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("twinbench")
    except PackageNotFoundError:
        return "(source tree)"


def resolve_threads(threads: int | None, scenarios: int) -> int:
    """Threads to use: ``threads`` if given, else all cores for large ensembles, else 1."""
    if threads is None:
        if scenarios < PARALLEL_MIN_SCENARIOS:
            return 1
        try:
            return max(1, len(os.sched_getaffinity(0)))
        except (AttributeError, OSError):
            return max(1, os.cpu_count() or 1)
    if isinstance(threads, bool) or not isinstance(threads, (int, np.integer)) or threads < 1:
        raise ValueError(f"threads: expected a positive integer or None, got {threads!r}")
    return int(threads)


def _positive_float(value: Any, name: str) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name}: expected a positive number of seconds, got {value!r}") from None
    if not math.isfinite(v) or v <= 0:
        raise ValueError(f"{name}: expected a positive, finite number of seconds, got {value!r}")
    return v


def _count(value: Any, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name}: expected an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name}: expected an integer >= {minimum}, got {value}")
    return int(value)


def _check_names(given: Mapping | None, known: tuple[str, ...], arg: str, model: Model) -> dict:
    if given is None:
        return {}
    if not isinstance(given, Mapping):
        raise TypeError(f"{arg}: expected a mapping of variable name to value, got "
                        f"{type(given).__name__}")
    unknown = [k for k in given if k not in known]
    if unknown:
        raise KeyError(f"{arg}: model {model.name!r} has no variable(s) {unknown}; "
                       f"expected some of {list(known)}")
    return dict(given)


def _as_float_array(value: Any, name: str) -> np.ndarray:
    try:
        arr = np.asarray(value, dtype=float)
    except (TypeError, ValueError):
        raise TypeError(f"{name}: expected numbers, got {type(value).__name__}") from None
    return arr


def _scenario_len(value: Any, name: str) -> int | None:
    """Number of scenarios a per-scenario value (x0/params) implies, or None for a scalar."""
    if _is_dataarray(value):
        return value.sizes.get("scenario")
    arr = _as_float_array(value, name)
    if arr.ndim == 0:
        return None
    if arr.ndim == 1:
        return arr.shape[0]
    raise ValueError(f"{name}: expected a scalar or a 1-D array over scenarios, got shape {arr.shape}")


def _is_dataarray(value: Any) -> bool:
    return type(value).__name__ == "DataArray" and hasattr(value, "dims")


def _per_scenario(value: Any, n: int, name: str) -> np.ndarray:
    if _is_dataarray(value):
        if set(value.dims) - {"scenario"}:
            raise ValueError(f"{name}: expected dims ('scenario',), got {value.dims}")
        value = value.values
    arr = _as_float_array(value, name)
    if arr.ndim == 0 or arr.shape == (1,):
        arr = np.full(n, float(arr.reshape(-1)[0]))
    elif arr.shape != (n,):
        raise ValueError(f"{name}: expected a scalar or shape ({n},) (one per scenario), got "
                         f"shape {arr.shape}")
    bad = np.flatnonzero(~np.isfinite(arr))
    if bad.size:
        raise ValueError(f"{name}: expected finite values, got {arr[bad[0]]} in scenario {bad[0]}")
    return arr


def _input_shape(value: Any, steps: int, name: str) -> tuple[np.ndarray, int | None]:
    """Normalise an input to a (time, scenario) array with either axis possibly of length 1.

    Returns the array and the number of scenarios it implies (None if it has no scenario axis).
    """
    if _is_dataarray(value):
        extra = set(value.dims) - {"time", "scenario"}
        if extra:
            raise ValueError(f"{name}: expected dims among ('time', 'scenario'), got {value.dims}")
        da = value
        for d in ("time", "scenario"):
            if d not in da.dims:
                da = da.expand_dims(d)
        arr = _as_float_array(da.transpose("time", "scenario").values, name)
        nscen = value.sizes.get("scenario")
    else:
        arr = _as_float_array(value, name)
        nscen = None
        if arr.ndim == 0:
            arr = arr.reshape(1, 1)
        elif arr.ndim == 1:
            if arr.shape[0] not in (1, steps):
                raise ValueError(f"{name}: a 1-D input is a time series and needs one value per "
                                 f"step ({steps}), got length {arr.shape[0]}; for one value per "
                                 "scenario pass shape (1, scenarios) or a DataArray with dim "
                                 "'scenario'")
            arr = arr.reshape(-1, 1)
        elif arr.ndim == 2:
            nscen = arr.shape[1]
        else:
            raise ValueError(f"{name}: expected a scalar, (steps,), (steps, scenarios) or "
                             f"(1, scenarios) array, got shape {arr.shape}")
    if arr.shape[0] not in (1, steps):
        raise ValueError(f"{name}: expected {steps} values along time (one per step) or 1, got "
                         f"{arr.shape[0]}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name}: expected finite values, found NaN or Inf")
    return arr, nscen


def _start_time(start: Any) -> np.datetime64:
    if start is None:
        return DEFAULT_START
    try:
        import pandas as pd

        ts = pd.Timestamp(start)
    except (TypeError, ValueError):
        raise ValueError(f"start: expected a datetime-like value (UTC), got {start!r}") from None
    if ts.tzinfo is not None:
        ts = ts.tz_convert("UTC").tz_localize(None)
    return np.datetime64(ts.value, "ns")


def simulate(model: Model, *, duration, dt, steps, every, x0, inputs, params, scenarios, method,
             backend, threads, start, on_nonfinite) -> xr.Dataset:
    import xarray as xr

    dt = _positive_float(dt, "dt")
    if (steps is None) == (duration is None):
        raise TypeError("duration: give either duration (seconds) or steps, not both or neither")
    if steps is None:
        try:
            duration = float(duration)
        except (TypeError, ValueError):
            raise TypeError(f"duration: expected seconds, got {duration!r}") from None
        if not math.isfinite(duration) or duration <= 0:
            raise ValueError(f"duration: expected a positive, finite number of seconds, got {duration}")
        steps = int(round(duration / dt))
        if steps < 1 or abs(steps * dt - duration) > 1e-9 * max(1.0, duration):
            raise ValueError(f"duration: expected a whole number of steps of dt={dt} s, got "
                             f"{duration} s ({duration / dt:.6g} steps)")
    steps = _count(steps, "steps", 1)
    every = _count(every, "every", 1)
    if steps % every:
        raise ValueError(f"every: steps ({steps}) must be a multiple of every ({every})")
    if method not in _METHODS:
        raise ValueError(f"method: expected one of {sorted(_METHODS)}, got {method!r}")
    if on_nonfinite not in ("raise", "warn"):
        raise ValueError(f"on_nonfinite: expected 'raise' or 'warn', got {on_nonfinite!r}")
    if backend not in ("auto", "c", "numpy"):
        raise ValueError(f"backend: expected 'auto', 'c' or 'numpy', got {backend!r}")
    if backend == "auto":
        backend = "c" if model.has_compiled and not pure_python() else "numpy"
    if backend == "c" and not model.has_compiled:
        raise ValueError(f"backend: model {model.name!r} has no compiled (C) form; use "
                         "backend='numpy' or 'auto'")
    if backend == "c" and pure_python():
        raise ValueError("backend: 'c' is unavailable because TWINBENCH_PURE_PYTHON is set")
    if backend == "numpy" and not model.has_numpy:
        raise ValueError(f"backend: model {model.name!r} has no NumPy form; use backend='c' or "
                         "'auto'")

    x0 = _check_names(x0, model.state_names, "x0", model)
    params = _check_names(params, model.param_names, "params", model)
    inputs = _check_names(inputs, model.input_names, "inputs", model)

    # The ensemble size: given, or implied by the arrays (which must then agree).
    implied: dict[str, int] = {}
    for arg, given in (("x0", x0), ("params", params)):
        for k, v in given.items():
            n = _scenario_len(v, f"{arg}[{k!r}]")
            if n is not None:
                implied[f"{arg}[{k!r}]"] = n
    input_arrays = {}
    for k, v in inputs.items():
        arr, n = _input_shape(v, steps, f"inputs[{k!r}]")
        input_arrays[k] = arr
        if n is not None:
            implied[f"inputs[{k!r}]"] = n
    sizes = set(implied.values())
    if len(sizes) > 1:
        sizes.discard(1)  # a length-1 array broadcasts over the others
    if scenarios is not None:
        scenarios = _count(scenarios, "scenarios", 1)
        sizes.add(scenarios)
    if len(sizes) > 1:
        raise ValueError(f"scenarios: the arrays imply different ensemble sizes: {implied}"
                         + (f" and scenarios={scenarios}" if scenarios is not None else ""))
    nscen = sizes.pop() if sizes else 1
    ensemble = scenarios is not None or bool(implied)

    X0 = np.empty((model.nx, nscen))
    for j, v in enumerate(model.states):
        X0[j] = _per_scenario(x0.get(v.name, v.default), nscen, f"x0[{v.name!r}]")
    P = np.empty((model.np, nscen))
    for j, v in enumerate(model.params):
        P[j] = _per_scenario(params.get(v.name, v.default), nscen, f"params[{v.name!r}]")
    PK = model.kernel_params(P)
    # Inputs live in a compact (time or 1, nu, scenarios or 1) array, broadcast without copying.
    t_len = max([a.shape[0] for a in input_arrays.values()], default=1)
    s_len = max([a.shape[1] for a in input_arrays.values()], default=1)
    if s_len not in (1, nscen):
        raise ValueError(f"inputs: expected {nscen} scenarios, got {s_len}")
    U = np.empty((t_len, max(model.nu, 1), s_len))
    for j, v in enumerate(model.inputs):
        U[:, j, :] = input_arrays.get(v.name, v.default)
    U_view = np.broadcast_to(U, (steps, U.shape[1], nscen))

    nsamp = steps // every + 1
    nvar = model.nx + model.ny
    out = np.empty((nvar, nsamp, nscen))
    bad = np.full(nscen, -1, dtype=np.int64)
    m = _METHODS[method]
    nthreads = resolve_threads(threads, nscen)
    if backend == "c":
        from twinbench.kernel._dispatch import compiled_module

        _integrate = compiled_module("twinbench.kernel._integrate")

        # the kernel wants a non-empty parameter buffer even when the model reads none
        PKc = PK if PK.shape[0] else np.zeros((1, nscen))
        _integrate.integrate(model._compiled, m, 0.0, dt, steps, every, X0, U_view, PKc, out, bad,
                             threads=nthreads, block=block_size(model, PKc.shape[0], method))
    else:
        from twinbench.kernel import _integrate_py

        _integrate_py.integrate(model.rhs, model.output, model.jacobian, m, 0.0, dt, steps, every,
                                X0, U_view[:, : model.nu, :], PK, out, bad)

    failed = np.flatnonzero(bad >= 0)
    if failed.size:
        first = failed[np.argmin(bad[failed])]
        s = int(bad[first])
        k = min(s // every + 1, nsamp - 1)
        names = [v.name for j, v in enumerate(model.states) if not np.isfinite(out[j, k, first])]
        msg = (f"{model.name}: the state became NaN/Inf in scenario {first} at t = "
               f"{(s + 1) * dt:g} s (step {s}); non-finite: {names or 'see nonfinite_step'}; "
               f"{failed.size} of {nscen} scenario(s) affected. Try a smaller dt"
               + (" or method='ros2' if the model is stiff" if method == "rk4" else "")
               + ", or check the parameters.")
        if on_nonfinite == "raise":
            raise IntegrationError(msg, scenario=int(first), time=(s + 1) * dt, step=s)
        warnings.warn(msg, NonFiniteStateWarning, stacklevel=3)

    # Build the Dataset on views of `out`: the ensemble's output is allocated once.
    elapsed = np.arange(nsamp) * (every * dt)
    t0 = _start_time(start)
    times = t0 + np.round(elapsed * 1e9).astype("int64").astype("timedelta64[ns]")
    dims = ("time", "scenario") if ensemble else ("time",)
    data_vars = {}
    for j, v in enumerate(model.states + model.outputs):
        data = out[j] if ensemble else out[j, :, 0]
        data_vars[v.name] = (dims, data, v.attrs())
    in_idx = np.minimum(np.arange(nsamp) * every, steps - 1)
    for j, v in enumerate(model.inputs):
        # inputs constant in time stay views (no copy per sample time)
        series = U[in_idx, j, :] if t_len > 1 else np.broadcast_to(U[0, j, :], (nsamp, s_len))
        data = np.broadcast_to(series, (nsamp, nscen)) if ensemble else series[:, 0]
        data_vars[v.name] = (dims, data, {**v.attrs(), "role": "input (piecewise constant)"})
    for j, v in enumerate(model.params):
        data_vars[v.name] = ((("scenario",), P[j]) if ensemble else ((), P[j, 0])) + (
            {**v.attrs(), "role": "parameter"},)
    if on_nonfinite == "warn":
        data_vars["nonfinite_step"] = (("scenario",) if ensemble else (), bad if ensemble else bad[0],
                                       {"long_name": "first step with a NaN/Inf state (-1: none)",
                                        "units": "1"})
    coords = {
        "time": ("time", times, {"standard_name": "time", "long_name": "time (UTC)"}),
        "elapsed": ("time", elapsed, {"units": "s", "long_name": "time since start"}),
    }
    if ensemble:
        coords["scenario"] = ("scenario", np.arange(nscen), {"long_name": "scenario index"})
    attrs = {
        "model": model.name,
        "method": _METHOD_NAMES[method],
        "dt": dt,
        "dt_units": "s",
        "steps": steps,
        "sample_every": every,
        "backend": "compiled kernel" if backend == "c" else "NumPy reference",
        "source": f"twinbench {_version()} simulation",
    }
    if model.description:
        attrs["description"] = model.description
    return xr.Dataset(data_vars, coords=coords, attrs=attrs)
