"""What-if ensembles and calibration on the kernel.

:func:`whatif` forks a model's current state into an ensemble: scenario 0 is the *mirror* (the
estimated state with the current inputs held over the horizon), the others are *projections* with
changed inputs or parameters (grids or random samples) and, optionally, initial states sampled
from the estimator's covariance. The whole ensemble is one kernel call (or one per chunk of
scenarios on ``dask.distributed``); the result is an ``xarray.Dataset`` with quantile summaries
over the projections and, per declared limit, which scenarios break it and when.

:func:`calibrate` fits named parameters to a recorded window with
``scipy.optimize.least_squares`` over kernel simulations (the finite-difference Jacobian is one
ensemble run per iteration) and reports the parameters with their standard deviations.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import xarray as xr

    from twinbench.kernel import Model

__all__ = ["CalibrationResult", "calibrate", "whatif"]

_METHODS = ("ros2", "rk4")
_BACKENDS = ("auto", "c", "numpy")
_RANDOM_KINDS = ("uniform", "normal")


# ------------------------------------------------------------------------------------------------
# argument checks shared by whatif and calibrate
# ------------------------------------------------------------------------------------------------
def _check_model(model: Any) -> None:
    from twinbench.kernel import Model

    if not isinstance(model, Model):
        raise TypeError(f"model: expected a twinbench.kernel.Model (e.g. twinbench.models.pump()), "
                        f"got {type(model).__name__}")


def _seconds(value: Any, name: str) -> float:
    """Seconds from a number, ``datetime.timedelta``, ``numpy.timedelta64`` or pandas string."""
    import datetime as _dt

    if isinstance(value, bool):
        raise TypeError(f"{name}: expected seconds (number or timedelta), got {value!r}")
    if isinstance(value, _dt.timedelta):
        v = value.total_seconds()
    elif isinstance(value, np.timedelta64):
        v = value / np.timedelta64(1, "ns") * 1e-9
    elif isinstance(value, str):
        import pandas as pd

        try:
            v = pd.Timedelta(value).total_seconds()
        except ValueError:
            raise ValueError(f"{name}: cannot read {value!r} as a duration") from None
    else:
        try:
            v = float(value)
        except (TypeError, ValueError):
            raise TypeError(f"{name}: expected seconds (number or timedelta), got "
                            f"{value!r}") from None
    if not math.isfinite(v) or v <= 0:
        raise ValueError(f"{name}: expected a positive, finite duration, got {value!r}")
    return v


def _scalar(value: Any, name: str) -> float:
    try:
        arr = np.asarray(value, dtype=float)
    except (TypeError, ValueError):
        raise TypeError(f"{name}: expected a number, got {value!r}") from None
    if arr.size != 1:
        raise ValueError(f"{name}: expected one number, got an array of shape {arr.shape}")
    v = float(arr.reshape(-1)[0])
    if not math.isfinite(v):
        raise ValueError(f"{name}: expected a finite number, got {v}")
    return v


def _named_scalars(given: Any, known: Sequence[str], arg: str, what: str) -> dict[str, float]:
    if given is None:
        return {}
    if not isinstance(given, Mapping):
        raise TypeError(f"{arg}: expected a mapping of {what} name to value, got "
                        f"{type(given).__name__}")
    unknown = [k for k in given if k not in known]
    if unknown:
        raise KeyError(f"{arg}: unknown {what}(s) {unknown}; expected some of {list(known)}")
    return {k: _scalar(v, f"{arg}[{k!r}]") for k, v in given.items()}


def _start(start: Any) -> np.datetime64:
    """``start`` as UTC datetime64[ns]; now (UTC) when None."""
    if start is None:
        import datetime as _dt

        now = _dt.datetime.now(_dt.UTC).replace(tzinfo=None)
        return np.datetime64(now, "ns")
    import pandas as pd

    try:
        ts = pd.Timestamp(start)
    except (TypeError, ValueError):
        raise ValueError(f"start: expected a datetime-like value (UTC), got {start!r}") from None
    if ts is pd.NaT:
        raise ValueError("start: expected a datetime, got NaT")
    if ts.tzinfo is not None:
        ts = ts.tz_convert("UTC").tz_localize(None)
    return np.datetime64(ts.value, "ns")


def _choice(value: Any, allowed: Sequence[str], name: str) -> str:
    if value not in allowed:
        raise ValueError(f"{name}: expected one of {list(allowed)}, got {value!r}")
    return value


# ------------------------------------------------------------------------------------------------
# what-if
# ------------------------------------------------------------------------------------------------
def _cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


@dataclass
class _Plan:
    """The ensemble to run, as arrays over scenarios (scenario 0 is the mirror)."""

    x0: dict[str, np.ndarray]
    inputs: dict[str, np.ndarray]
    params: dict[str, np.ndarray]
    coords: dict[str, np.ndarray]
    sample: np.ndarray
    steps: int
    nscen: int
    changed: list[str] = field(default_factory=list)


def _parse_changes(model: Model, changes: Any) -> tuple[dict[str, np.ndarray], dict[str, tuple]]:
    """Split ``changes`` into grids (name -> values) and random specs (name -> (kind, a, b))."""
    if changes is None:
        return {}, {}
    if not isinstance(changes, Mapping):
        raise TypeError(f"changes: expected a mapping of input or parameter name to values or a "
                        f"('uniform', low, high) / ('normal', mean, sd) spec, got "
                        f"{type(changes).__name__}")
    known = model.input_names + model.param_names
    grids: dict[str, np.ndarray] = {}
    randoms: dict[str, tuple] = {}
    for name, spec in changes.items():
        arg = f"changes[{name!r}]"
        if name not in known:
            raise KeyError(f"{arg}: model {model.name!r} has no input or parameter {name!r}; "
                           f"expected one of {list(known)}")
        if isinstance(spec, tuple) and spec and isinstance(spec[0], str):
            if len(spec) != 3 or spec[0] not in _RANDOM_KINDS:
                raise ValueError(f"{arg}: expected ('uniform', low, high) or ('normal', mean, sd), "
                                 f"got {spec!r}")
            kind = spec[0]
            a = _scalar(spec[1], f"{arg}[1]")
            b = _scalar(spec[2], f"{arg}[2]")
            if kind == "uniform" and not a < b:
                raise ValueError(f"{arg}: expected low < high, got {a} and {b}")
            if kind == "normal" and not b > 0:
                raise ValueError(f"{arg}: expected a positive standard deviation, got {b}")
            randoms[name] = (kind, a, b)
            continue
        if isinstance(spec, str):
            raise TypeError(f"{arg}: expected values or a ('uniform', low, high) / ('normal', "
                            f"mean, sd) tuple, got {spec!r}")
        try:
            values = np.asarray(spec, dtype=float)
        except (TypeError, ValueError):
            raise TypeError(f"{arg}: expected a list or array of numbers, got {spec!r}") from None
        if values.ndim == 0:
            values = values.reshape(1)
        if values.ndim != 1 or values.size == 0:
            raise ValueError(f"{arg}: expected a non-empty 1-D list of values, got shape "
                             f"{values.shape}")
        if not np.isfinite(values).all():
            raise ValueError(f"{arg}: expected finite values, found NaN or Inf")
        grids[name] = values
    return grids, randoms


def _covariance(covariance: Any, nx: int) -> np.ndarray:
    if covariance is None:
        raise ValueError("covariance: uncertainty=True needs the state covariance (an nx x nx "
                         "array, e.g. the estimator's P)")
    if type(covariance).__name__ == "DataArray":
        covariance = covariance.values
    try:
        cov = np.asarray(covariance, dtype=float)
    except (TypeError, ValueError):
        raise TypeError(f"covariance: expected an array of numbers, got "
                        f"{type(covariance).__name__}") from None
    if cov.ndim == 1 and cov.shape == (nx,):
        cov = np.diag(cov)  # a vector of variances is the common case of an uncorrelated estimate
    if cov.shape != (nx, nx):
        raise ValueError(f"covariance: expected shape ({nx}, {nx}) (one row and column per "
                         f"state) or ({nx},) variances, got {cov.shape}")
    if not np.isfinite(cov).all():
        raise ValueError("covariance: expected finite values, found NaN or Inf")
    if not np.allclose(cov, cov.T, rtol=1e-8, atol=1e-12 * max(1.0, np.abs(cov).max())):
        raise ValueError("covariance: expected a symmetric matrix")
    w = np.linalg.eigvalsh(cov)
    if w.min() < -1e-9 * max(1.0, abs(w).max()):
        raise ValueError(f"covariance: expected a positive semi-definite matrix, smallest "
                         f"eigenvalue {w.min():g}")
    return (cov + cov.T) / 2.0  # a filter's P is symmetric only to rounding


def _state_bounds(model: Model) -> dict[str, tuple[float, float]]:
    """Bounds a model declares for its states: a ``bounds`` mapping on the model, or
    ``bounds``/``lower``/``upper`` on the state Variables (none of the built-ins has any yet)."""
    out = {}
    declared = getattr(model, "bounds", None)
    for v in model.states:
        lo, hi = -np.inf, np.inf
        b = declared.get(v.name) if isinstance(declared, Mapping) else getattr(v, "bounds", None)
        if b is not None:
            lo, hi = b
        lo = getattr(v, "lower", lo)
        hi = getattr(v, "upper", hi)
        lo = -np.inf if lo is None else float(lo)
        hi = np.inf if hi is None else float(hi)
        if np.isfinite(lo) or np.isfinite(hi):
            out[v.name] = (lo, hi)
    return out


def _plan(model: Model, state, inputs, params, changes, n, uncertainty, covariance, seed,
          steps) -> _Plan:
    x_now = {v.name: v.default for v in model.states}
    x_now.update(_named_scalars(state, model.state_names, "state", "state"))
    u_now = {v.name: v.default for v in model.inputs}
    u_now.update(_named_scalars(inputs, model.input_names, "inputs", "input"))
    p_now = {v.name: v.default for v in model.params}
    p_now.update(_named_scalars(params, model.param_names, "params", "parameter"))
    grids, randoms = _parse_changes(model, changes)
    if not isinstance(uncertainty, bool):
        raise TypeError(f"uncertainty: expected True or False, got {uncertainty!r}")
    random = bool(randoms) or uncertainty
    if n is None:
        if random:
            raise ValueError("n: expected the number of random samples (a positive integer), "
                             "needed for " + ("random changes" if randoms else "uncertainty=True"))
        n = 1
    else:
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
            raise ValueError(f"n: expected a positive integer, got {n!r}")
        n = int(n)
        if not random:
            raise ValueError("n: random samples need a ('uniform', ...) / ('normal', ...) change "
                             "or uncertainty=True; grids run every combination without n")
    if covariance is not None and not uncertainty:
        raise ValueError("covariance: given, but uncertainty is False (set uncertainty=True to "
                         "sample initial states from it)")

    # Projections: every grid combination times n random draws; the draws are shared by the
    # grid points (common random numbers), so that differences between them are the grid's.
    grid_names = list(grids)
    mesh = np.meshgrid(*grids.values(), indexing="ij") if grids else []
    ngrid = int(mesh[0].size) if grids else 1
    nproj = ngrid * n if (grids or random) else 0
    nscen = 1 + nproj
    rng = np.random.default_rng(seed)
    state_draws = None
    if uncertainty:
        cov = _covariance(covariance, model.nx)
        mean = np.array([x_now[s] for s in model.state_names])
        state_draws = rng.multivariate_normal(mean, cov, size=n, method="eigh")  # (n, nx)
        for j, (name, (lo, hi)) in enumerate(_bounds_by_index(model)):
            state_draws[:, j] = np.clip(state_draws[:, j], lo, hi)
    random_draws = {}
    for name, (kind, a, b) in randoms.items():
        random_draws[name] = (rng.uniform(a, b, size=n) if kind == "uniform"
                              else rng.normal(a, b, size=n))

    def column(base: float, proj: np.ndarray) -> np.ndarray:
        return np.concatenate(([base], proj))

    x0 = {}
    for j, s in enumerate(model.state_names):
        proj = (np.tile(state_draws[:, j], ngrid) if state_draws is not None
                else np.full(nproj, x_now[s]))
        x0[s] = column(x_now[s], proj)
    changed_values = {}
    for k, name in enumerate(grid_names):
        changed_values[name] = np.repeat(mesh[k].reshape(-1), n)
    for name, draws in random_draws.items():
        changed_values[name] = np.tile(draws, ngrid)
    u = {}
    for s in model.input_names:
        u[s] = column(u_now[s], changed_values[s]) if s in changed_values \
            else np.full(nscen, u_now[s])
    p = {}
    for s in model.param_names:
        p[s] = column(p_now[s], changed_values[s]) if s in changed_values \
            else np.full(nscen, p_now[s])
    coords = {name: (u if name in u else p)[name] for name in changed_values}
    sample = np.concatenate(([-1], np.tile(np.arange(n), ngrid) if nproj else []))
    sample = sample.astype(np.int64)
    return _Plan(x0=x0, inputs=u, params=p, coords=coords, sample=sample, steps=steps,
                 nscen=nscen, changed=list(changed_values))


def _bounds_by_index(model: Model):
    bounds = _state_bounds(model)
    for j, s in enumerate(model.state_names):
        if s in bounds:
            yield j, bounds[s]


def _limits(model: Model, limits: Any) -> dict[str, tuple[float, float]]:
    if limits is None:
        return {}
    if not isinstance(limits, Mapping):
        raise TypeError(f"limits: expected a mapping of output name to (low, high), got "
                        f"{type(limits).__name__}")
    known = model.output_names + model.state_names
    out = {}
    for name, lim in limits.items():
        arg = f"limits[{name!r}]"
        if name not in known:
            raise KeyError(f"{arg}: model {model.name!r} has no output or state {name!r}; "
                           f"expected one of {list(known)}")
        if not isinstance(lim, (tuple, list)) or len(lim) != 2:
            raise TypeError(f"{arg}: expected (low, high) with None for an open side, got {lim!r}")
        lo = -np.inf if lim[0] is None else _scalar(lim[0], f"{arg}[0]")
        hi = np.inf if lim[1] is None else _scalar(lim[1], f"{arg}[1]")
        if not lo < hi:
            raise ValueError(f"{arg}: expected low < high, got {lim!r}")
        out[name] = (lo, hi)
    return out


def _quantiles(quantiles: Any) -> np.ndarray:
    try:
        q = np.atleast_1d(np.asarray(quantiles, dtype=float))
    except (TypeError, ValueError):
        raise TypeError(f"quantiles: expected numbers in [0, 1], got {quantiles!r}") from None
    if q.ndim != 1 or q.size == 0 or not ((q >= 0) & (q <= 1)).all():
        raise ValueError(f"quantiles: expected a non-empty list of numbers in [0, 1], got "
                         f"{quantiles!r}")
    return q


def _simulate_slice(model: Model, plan_arrays: dict, sl: slice, run: dict) -> xr.Dataset:
    """Run scenarios ``sl`` of the plan in one kernel call."""
    x0 = {k: v[sl] for k, v in plan_arrays["x0"].items()}
    params = {k: v[sl] for k, v in plan_arrays["params"].items()}
    inputs = {k: v[sl][None, :] for k, v in plan_arrays["inputs"].items()}
    return model.simulate(steps=run["steps"], dt=run["dt"], every=run["every"], x0=x0,
                          inputs=inputs, params=params, method=run["method"],
                          backend=run["backend"], threads=run["threads"], start=run["start"],
                          on_nonfinite="warn")


def _worker_chunk(model_ref: tuple, plan_arrays: dict, start: int, stop: int,
                  run: dict) -> xr.Dataset:
    """A dask task: rebuild the model in the worker and run one chunk of scenarios."""
    model = _model_from_ref(model_ref)
    return _simulate_slice(model, plan_arrays, slice(start, stop), run)


def _model_ref(model: Model) -> tuple:
    """A picklable reference to ``model`` for dask workers. A compiled model holds C function
    pointers that cannot be pickled, so a built-in model travels as its registry name (every
    value the run needs is passed explicitly, so the factory's defaults do not matter)."""
    from twinbench.models import MODELS

    factory = MODELS.get(model.name)
    if factory is not None:
        ref = factory()
        if (ref.rhs is model.rhs and ref.state_names == model.state_names
                and ref.param_names == model.param_names
                and ref.has_compiled == model.has_compiled):
            return ("registry", model.name)
    import pickle

    try:
        payload = pickle.dumps(model)
    except Exception:  # noqa: BLE001 - any pickling failure means the same thing here
        try:
            import cloudpickle

            payload = cloudpickle.dumps(model)
        except Exception as exc:  # noqa: BLE001
            raise TypeError(f"model: {model.name!r} cannot be sent to dask workers ({exc}); "
                            "register its factory in twinbench.models.MODELS or run without "
                            "dask") from None
        return ("cloudpickle", payload)
    return ("pickle", payload)


def _model_from_ref(ref: tuple) -> Model:
    kind, value = ref
    if kind == "registry":
        from twinbench.models import MODELS

        return MODELS[value]()
    if kind == "cloudpickle":
        import cloudpickle

        return cloudpickle.loads(value)
    import pickle

    return pickle.loads(value)


def _progress_reporter(progress: Any, total: int) -> tuple[Callable[[int], None], Callable]:
    """``(update(done), close())`` for the chosen progress display."""
    if progress is False:
        return (lambda done: None), (lambda: None)
    if callable(progress):
        return (lambda done: progress(done, total)), (lambda: None)
    if progress not in (None, True):
        raise TypeError(f"progress: expected None, True, False or a callable(done, total), got "
                        f"{progress!r}")
    try:
        from tqdm.auto import tqdm
    except ImportError:
        def update(done: int) -> None:
            print(f"\rwhat-if: {done}/{total} chunks", end="\n" if done == total else "",
                  file=sys.stderr, flush=True)

        return update, (lambda: None)
    bar = tqdm(total=total, desc="what-if", unit="chunk")

    def update_bar(done: int) -> None:
        bar.update(done - bar.n)

    return update_bar, bar.close


def _run_dask(model: Model, plan_arrays: dict, nscen: int, run: dict, dask: Any, chunk: int | None,
              progress: Any) -> xr.Dataset:
    try:
        import distributed
    except ImportError:
        raise ImportError("dask: running what-if ensembles on dask needs dask.distributed; "
                          "pip install dask distributed") from None
    import xarray as xr

    own = None
    if dask is True:
        cluster = distributed.LocalCluster(processes=True, threads_per_worker=1,
                                           dashboard_address=":0")
        own = client = distributed.Client(cluster)
    elif isinstance(dask, distributed.Client):
        client = dask
    else:
        raise TypeError(f"dask: expected None, False, True (a LocalCluster) or a "
                        f"distributed.Client, got {type(dask).__name__}")
    try:
        workers = max(1, len(client.scheduler_info().get("workers", {})))
        if chunk is None:
            chunk = max(1, math.ceil(nscen / (4 * workers)))
        bounds = [(a, min(a + chunk, nscen)) for a in range(0, nscen, chunk)]
        ref = _model_ref(model)
        [arrays_future] = client.scatter([plan_arrays], broadcast=True)
        futures = [client.submit(_worker_chunk, ref, arrays_future, a, b, run, pure=False)
                   for a, b in bounds]
        update, close = _progress_reporter(progress, len(futures))
        try:
            for done, _ in enumerate(distributed.as_completed(futures), start=1):
                update(done)
        finally:
            close()
        parts = client.gather(futures)
    finally:
        if own is not None:
            cluster = own.cluster
            own.close()
            cluster.close()
    ds = xr.concat(parts, dim="scenario", data_vars="all", coords="minimal", compat="override",
                   join="override", combine_attrs="override")
    return ds.assign_coords(scenario=("scenario", np.arange(nscen), ds.scenario.attrs))


def whatif(
    model: Model,
    state: Mapping[str, float] | None,
    *,
    horizon: Any,
    dt: Any,
    start: Any = None,
    inputs: Mapping[str, float] | None = None,
    params: Mapping[str, float] | None = None,
    changes: Mapping[str, Any] | None = None,
    n: int | None = None,
    uncertainty: bool = False,
    covariance: Any = None,
    limits: Mapping[str, tuple] | None = None,
    quantiles: Sequence[float] = (0.05, 0.5, 0.95),
    every: int = 1,
    method: str = "ros2",
    seed: int | None = None,
    dask: Any = None,
    chunk: int | None = None,
    progress: Any = None,
    backend: str = "auto",
    threads: int | None = None,
) -> xr.Dataset:
    """Project the model forward from its current state: the mirror and changed futures.

    Scenario 0 is the *mirror*: the current (mean) state with the current inputs and parameters
    held over the horizon. The other scenarios are *projections*: every combination of the grid
    changes, times ``n`` random draws (of the random changes and, with ``uncertainty``, of the
    initial state); the draws are shared by the grid points, so grid points differ only by the
    grid. The whole ensemble is one kernel call.

    Parameters
    ----------
    model : Model
        The twin's model.
    state : mapping of state name to float
        The estimated state now; states not given take the model's declared defaults.
    horizon, dt : float or timedelta
        Projection length and integration step (seconds, ``datetime.timedelta``,
        ``numpy.timedelta64`` or a pandas duration string such as ``"1h"``); the horizon must
        be a whole number of steps.
    start : datetime-like, optional
        UTC time of the current state (default: now).
    inputs, params : mapping of name to float, optional
        Current inputs (held over the horizon) and parameters; missing names take the declared
        defaults.
    changes : mapping, optional
        Input or parameter name to a list of values (a grid; several grids combine as a full
        factorial), or ``("uniform", low, high)`` / ``("normal", mean, sd)`` sampled ``n`` times.
    n : int, optional
        Random draws per grid point; required with random changes or ``uncertainty``.
    uncertainty : bool
        Sample the projections' initial states from ``N(state, covariance)`` (clipped to bounds
        the model declares for its states, if any).
    covariance : array (nx, nx) or (nx,)
        State covariance (e.g. the estimator's P), or a vector of variances.
    limits : mapping of output (or state) name to (low, high), optional
        Either side may be None. Adds ``<name>_violates`` (scenario, bool) and
        ``<name>_first_violation`` (scenario, datetime64; NaT when never), checked at the
        sampled times.
    quantiles : sequence of float
        Quantiles of every state and output over the projections (over the mirror when there
        are none): ``<name>_quantiles`` with dims ``(quantile, time)``.
    every : int
        Sample every ``every`` steps.
    method : {"ros2", "rk4"}
        Integration method.
    seed : int, optional
        Seed of the random draws (the same seed gives the same ensemble).
    dask : None, False, True or distributed.Client
        Run chunks of scenarios as dask tasks: ``True`` starts (and closes) a ``LocalCluster``
        of processes, a ``Client`` uses its cluster. Results are identical to the local run.
    chunk : int, optional
        Scenarios per dask task (default: about four tasks per worker).
    progress : None, bool or callable(done, total)
        Progress of dask chunks: a tqdm bar if tqdm is installed, else a line on stderr
        (``None``/``True``); ``False`` for none; or a callback.
    backend : {"auto", "c", "numpy"}
        Kernel backend (``"numpy"``: the NumPy reference).
    threads : int, optional
        OpenMP threads of the compiled kernel (default: its own choice).

    Returns
    -------
    xarray.Dataset
        Dims ``scenario`` x ``time``: every state and output; the inputs and parameters per
        scenario (changed names as coordinates); a ``sample`` coordinate (-1 for the mirror,
        else the random draw index); the quantile summaries and limit variables.

    Examples
    --------
    >>> from twinbench.models import pump
    >>> from twinbench.scenario import whatif
    >>> ds = whatif(pump(), {"wear": 0.5}, horizon=60.0, dt=1.0, start="2026-01-01",
    ...             changes={"speed_setpoint": [2400.0, 2950.0]}, limits={"vibration": (None, 3.0)})
    >>> ds.sizes["scenario"], ds.speed_setpoint.values.tolist()
    (3, [2950.0, 2400.0, 2950.0])
    >>> ds.vibration_violates.values.tolist()
    [False, False, False]
    """
    _check_model(model)
    dt_s = _seconds(dt, "dt")
    horizon_s = _seconds(horizon, "horizon")
    steps = round(horizon_s / dt_s)
    if steps < 1 or abs(steps * dt_s - horizon_s) > 1e-9 * max(1.0, horizon_s):
        raise ValueError(f"horizon: expected a whole number of steps of dt={dt_s} s, got "
                         f"{horizon_s} s ({horizon_s / dt_s:.6g} steps)")
    if isinstance(every, bool) or not isinstance(every, (int, np.integer)) or every < 1:
        raise ValueError(f"every: expected a positive integer, got {every!r}")
    if steps % every:
        raise ValueError(f"every: the horizon's {steps} steps must be a multiple of every "
                         f"({every})")
    _choice(method, _METHODS, "method")
    _choice(backend, _BACKENDS, "backend")
    if dask not in (None, False, True) and type(dask).__name__ != "Client":
        raise TypeError(f"dask: expected None, False, True (a LocalCluster) or a "
                        f"distributed.Client, got {type(dask).__name__}")
    if chunk is not None and (isinstance(chunk, bool) or not isinstance(chunk, (int, np.integer))
                              or chunk < 1):
        raise ValueError(f"chunk: expected a positive integer, got {chunk!r}")
    q = _quantiles(quantiles)
    lims = _limits(model, limits)
    t0 = _start(start)
    plan = _plan(model, state, inputs, params, changes, n, uncertainty, covariance, seed, steps)
    run = {"steps": steps, "dt": dt_s, "every": int(every), "method": method,
           "backend": backend, "threads": threads, "start": t0}
    return _whatif(model, plan, q, lims, run, dask, chunk, progress)


def _whatif(model: Model, plan: _Plan, q: np.ndarray, lims: dict, run: dict, dask: Any,
            chunk: int | None, progress: Any) -> xr.Dataset:

    arrays = {"x0": plan.x0, "inputs": plan.inputs, "params": plan.params}
    if dask is None or dask is False:
        ds = _simulate_slice(model, arrays, slice(None), run)
    else:
        ds = _run_dask(model, arrays, plan.nscen, run, dask, chunk, progress)

    # Inputs are held over the horizon: one value per scenario, not a (time, scenario) array.
    new: dict[str, tuple] = {name: ("scenario", plan.inputs[name], ds[name].attrs)
                             for name in model.input_names}
    times = ds.time.values
    proj = slice(1, None) if plan.nscen > 1 else slice(None)
    declared = model.states + model.outputs

    def summarise(v) -> tuple:
        values = ds[v.name].values[:, proj]
        fn = np.nanquantile if np.isnan(values.sum()) else np.quantile
        return fn(values, q, axis=1)

    # np.quantile's partition releases the GIL: on a large ensemble the summaries are a good
    # part of the whole run, so they go to a thread per core.
    if ds[declared[0].name].size * len(declared) > 2_000_000 and _cores() > 1:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(min(_cores(), len(declared))) as pool:
            summaries = list(pool.map(summarise, declared))
    else:
        summaries = [summarise(v) for v in declared]
    for v, qv in zip(declared, summaries):
        new[f"{v.name}_quantiles"] = (("quantile", "time"), qv,
                                      {"units": v.units,
                                       "long_name": f"quantiles of {v.long_name or v.name} over "
                                                    "the projections"})
    for name, (lo, hi) in lims.items():
        values = ds[name].values
        with np.errstate(invalid="ignore"):
            bad = (values < lo) | (values > hi)
        violates = bad.any(axis=0)
        first = np.where(violates, times[bad.argmax(axis=0)], np.datetime64("NaT", "ns"))
        units = model.variable(name).units
        new[f"{name}_violates"] = ("scenario", violates,
                                   {"long_name": f"{name} leaves [{lo:g}, {hi:g}] {units}",
                                    "limit_low": lo, "limit_high": hi})
        new[f"{name}_first_violation"] = ("scenario", first,
                                          {"long_name": f"first sampled time {name} leaves "
                                                        f"[{lo:g}, {hi:g}] {units} (NaT: never)"})
    ds = ds.assign(new)
    ds = ds.assign_coords(sample=("scenario", plan.sample,
                                  {"long_name": "random draw (-1: the mirror)", "units": "1"}))
    ds = ds.set_coords(plan.changed)
    ds = ds.assign_coords(quantile=("quantile", q, {"long_name": "quantile over the projections"}))
    ds.attrs.update({"title": f"what-if of {model.name}", "mirror_scenario": 0,
                     "projections": plan.nscen - 1,
                     "changes": ", ".join(plan.changed) or "(none)"})
    return ds


# ------------------------------------------------------------------------------------------------
# calibration
# ------------------------------------------------------------------------------------------------
@dataclass
class CalibrationResult:
    """What :func:`calibrate` found.

    Attributes
    ----------
    params : dict
        Fitted value of each parameter.
    std : dict
        Standard deviation of each (from the Jacobian at the optimum, scaled by the residual
        variance).
    covariance : ndarray
        Covariance of the fitted parameters, in the order of ``names``.
    names : list of str
        Parameter order of ``covariance``.
    initial : dict
        Starting values.
    residuals_before, residuals_after : dict
        RMS residual of each measured variable (its units) at the start and at the optimum.
    noise : dict
        Noise scale used to normalise each measured variable's residuals.
    success : bool
    message : str
    nfev : int
        Simulations run for residuals (each Jacobian is one more ensemble run).
    """

    params: dict[str, float]
    std: dict[str, float]
    covariance: np.ndarray
    names: list[str]
    initial: dict[str, float]
    residuals_before: dict[str, float]
    residuals_after: dict[str, float]
    noise: dict[str, float]
    success: bool
    message: str
    nfev: int = 0

    def to_dataset(self) -> xr.Dataset:
        """The result as a Dataset: ``value``, ``std``, ``initial`` over ``param``, the
        covariance over ``(param, param_)``, residual RMS over ``measured``."""
        import xarray as xr

        measured = list(self.residuals_before)
        return xr.Dataset(
            {"value": ("param", [self.params[p] for p in self.names]),
             "std": ("param", [self.std[p] for p in self.names]),
             "initial": ("param", [self.initial[p] for p in self.names]),
             "covariance": (("param", "param_"), self.covariance),
             "rms_before": ("measured", [self.residuals_before[m] for m in measured]),
             "rms_after": ("measured", [self.residuals_after[m] for m in measured]),
             "noise": ("measured", [self.noise[m] for m in measured])},
            coords={"param": self.names, "param_": self.names, "measured": measured},
            attrs={"success": int(self.success), "message": self.message, "nfev": self.nfev})

    def _repr_html_(self) -> str:
        from html import escape

        rows = "".join(
            f"<tr><td>{escape(p)}</td><td>{self.initial[p]:.6g}</td><td>{self.params[p]:.6g}</td>"
            f"<td>{self.std[p]:.3g}</td></tr>" for p in self.names)
        res = "".join(
            f"<tr><td>{escape(m)}</td><td>{self.residuals_before[m]:.4g}</td>"
            f"<td>{self.residuals_after[m]:.4g}</td><td>{self.noise[m]:.4g}</td></tr>"
            for m in self.residuals_before)
        status = "converged" if self.success else "did not converge"
        return (f"<div><b>Calibration</b> ({status}: {escape(self.message)})"
                "<table><tr><th>parameter</th><th>initial</th><th>fitted</th><th>std</th></tr>"
                f"{rows}</table><table><tr><th>measured</th><th>RMS before</th>"
                f"<th>RMS after</th><th>noise</th></tr>{res}</table></div>")


def _data_seconds(data: xr.Dataset) -> tuple[np.ndarray, float]:
    if "time" not in data.dims:
        raise ValueError("data: expected a Dataset with a 'time' dimension")
    t = data.time.values
    if not np.issubdtype(t.dtype, np.datetime64):
        raise TypeError(f"data: expected 'time' of datetime64 values, got {t.dtype}")
    if t.size < 3:
        raise ValueError(f"data: expected at least 3 samples, got {t.size}")
    elapsed = (t - t[0]) / np.timedelta64(1, "ns") * 1e-9
    d = np.diff(elapsed)
    interval = float(np.median(d))
    if interval <= 0 or np.abs(d - interval).max() > 1e-6 * interval:
        raise ValueError("data: expected regularly sampled times (resample the window first, "
                         "e.g. data.resample(time='1s').mean())")
    return elapsed, interval


def calibrate(
    model: Model,
    data: xr.Dataset,
    *,
    params: Sequence[str] | Mapping[str, float],
    inputs: Sequence[str] | None = None,
    measured: Sequence[str] | None = None,
    noise: Mapping[str, float] | None = None,
    bounds: Mapping[str, tuple] | None = None,
    x0: Mapping[str, float] | None = None,
    dt: float | None = None,
    method: str = "ros2",
    backend: str = "auto",
    max_nfev: int = 100,
) -> CalibrationResult:
    """Fit model parameters to a recorded window by least squares over kernel simulations.

    Parameters
    ----------
    model : Model
    data : xarray.Dataset
        The window: regularly sampled ``time``, measured variables (outputs or states) and
        input variables named as the model names them.
    params : sequence of str or mapping of name to initial guess
        Parameters to fit (initial guesses default to the model's declared values).
    inputs : sequence of str, optional
        Input variables to take from ``data`` (default: every model input present); each
        sample holds until the next one. Others take the declared defaults.
    measured : sequence of str, optional
        Variables to fit (default: every model output and state present in ``data`` that is
        not an input).
    noise : mapping of name to float, optional
        Noise scale of each measured variable; default its ``noise_std`` attribute, else an
        estimate from first differences.
    bounds : mapping of name to (low, high), optional
        Bounds of fitted parameters (None: open).
    x0 : mapping of state name to float, optional
        Initial state at the first sample (default: the declared defaults).
    dt : float, optional
        Integration step (s); must divide the sample interval (default: the interval).
    method : {"ros2", "rk4"}
    backend : {"auto", "c", "numpy"}
    max_nfev : int
        Maximum residual evaluations.

    Returns
    -------
    CalibrationResult

    Examples
    --------
    >>> from twinbench.models import pump
    >>> from twinbench.scenario import calibrate
    >>> truth = pump().simulate(duration=60.0, dt=1.0, params={"bep_efficiency": 0.74},
    ...                         inputs={"speed_setpoint": 2500.0}, method="ros2")
    >>> fit = calibrate(pump(), truth[["power", "speed_setpoint"]], params=["bep_efficiency"],
    ...                 noise={"power": 0.05})
    >>> round(fit.params["bep_efficiency"], 3)
    0.74
    """
    _check_model(model)
    if type(data).__name__ != "Dataset":
        raise TypeError(f"data: expected an xarray.Dataset, got {type(data).__name__}")
    _choice(method, _METHODS, "method")
    _choice(backend, _BACKENDS, "backend")
    if isinstance(params, str):
        params = [params]
    if isinstance(params, Mapping):
        guess = _named_scalars(params, model.param_names, "params", "parameter")
    else:
        try:
            names = list(params)
        except TypeError:
            raise TypeError(f"params: expected parameter names or a mapping of name to initial "
                            f"guess, got {params!r}") from None
        unknown = [p for p in names if p not in model.param_names]
        if unknown:
            raise KeyError(f"params: unknown parameter(s) {unknown}; expected some of "
                           f"{list(model.param_names)}")
        guess = {p: model.variable(p).default for p in names}
    if not guess:
        raise ValueError("params: expected at least one parameter to fit")

    elapsed, interval = _data_seconds(data)
    if inputs is None:
        inputs = [u for u in model.input_names if u in data]
    else:
        inputs = [inputs] if isinstance(inputs, str) else list(inputs)
        bad = [u for u in inputs if u not in model.input_names or u not in data]
        if bad:
            raise KeyError(f"inputs: {bad} are not both model inputs and variables of data")
    if measured is None:
        measured = [m for m in model.output_names + model.state_names
                    if m in data and m not in inputs]
    else:
        measured = [measured] if isinstance(measured, str) else list(measured)
        bad = [m for m in measured
               if m not in model.output_names + model.state_names or m not in data]
        if bad:
            raise KeyError(f"measured: {bad} are not both model outputs/states and variables of "
                           "data")
    if not measured:
        raise ValueError("measured: no model output or state found in data to fit")
    y = {}
    for m in measured:
        if data[m].dims != ("time",):
            raise ValueError(f"data[{m!r}]: expected dims ('time',), got {data[m].dims}")
        y[m] = np.asarray(data[m].values, dtype=float)
    u_series = {}
    for u in inputs:
        values = np.asarray(data[u].values, dtype=float)
        if data[u].dims != ("time",) or not np.isfinite(values).all():
            raise ValueError(f"data[{u!r}]: expected a finite series over time")
        u_series[u] = values
    sd = {}
    given_noise = _named_scalars(noise, measured, "noise", "measured variable")
    for m in measured:
        s = given_noise.get(m, data[m].attrs.get("noise_std"))
        if s is None:
            d = np.diff(y[m][np.isfinite(y[m])])
            s = 1.4826 * np.median(np.abs(d - np.median(d))) / math.sqrt(2.0) if d.size else 0.0
        s = float(s)
        if not s > 0:
            raise ValueError(f"noise[{m!r}]: expected a positive noise scale, got {s}")
        sd[m] = s
    lower, upper = [], []
    bounds = {} if bounds is None else bounds
    if not isinstance(bounds, Mapping):
        raise TypeError(f"bounds: expected a mapping of parameter to (low, high), got "
                        f"{type(bounds).__name__}")
    extra = [b for b in bounds if b not in guess]
    if extra:
        raise KeyError(f"bounds: {extra} are not among the fitted parameters {list(guess)}")
    for p in guess:
        lo, hi = bounds.get(p, (None, None))
        lo = -np.inf if lo is None else _scalar(lo, f"bounds[{p!r}][0]")
        hi = np.inf if hi is None else _scalar(hi, f"bounds[{p!r}][1]")
        if not lo < hi or not lo <= guess[p] <= hi:
            raise ValueError(f"bounds[{p!r}]: expected low < high around the initial guess "
                             f"{guess[p]}, got ({lo}, {hi})")
        lower.append(lo)
        upper.append(hi)
    x0 = _named_scalars(x0, model.state_names, "x0", "state")
    dt = interval if dt is None else _seconds(dt, "dt")
    every = round(interval / dt)
    if every < 1 or abs(every * dt - interval) > 1e-9 * interval:
        raise ValueError(f"dt: expected a step that divides the sample interval {interval} s, "
                         f"got {dt}")
    return _calibrate(model, guess, np.array(lower), np.array(upper), y, sd, u_series, x0, dt,
                      every, len(elapsed), method, backend, int(max_nfev))


def _calibrate(model, guess, lower, upper, y, sd, u_series, x0, dt, every, nsamp, method, backend,
               max_nfev) -> CalibrationResult:
    from scipy.optimize import least_squares

    names = list(guess)
    p0 = np.array([guess[p] for p in names])
    # Optimise in units of the initial guess so that all parameters are of order one.
    scale = np.where(p0 != 0, np.abs(p0), 1.0)
    steps = (nsamp - 1) * every
    # Input sample k holds over [t_k, t_k+1): every integration step in it gets its value.
    inputs = {u: np.repeat(v[:-1], every) for u, v in u_series.items()}
    measured = list(y)
    mask = {m: np.isfinite(y[m]) for m in measured}
    counts = {"nfev": 0}

    def simulate(theta: np.ndarray) -> dict[str, np.ndarray]:
        """Outputs for each column of ``theta`` (n_params, n), in one kernel call."""
        n = theta.shape[1]
        pv = {p: theta[j] * scale[j] for j, p in enumerate(names)}
        ds = model.simulate(steps=steps, dt=dt, every=every, x0=x0,
                            inputs=inputs, params=pv,
                            scenarios=n, method=method, backend=backend, on_nonfinite="warn")
        return {m: ds[m].values for m in measured}

    def residuals(out: dict[str, np.ndarray], i: int) -> np.ndarray:
        r = [(out[m][:, i] - y[m])[mask[m]] / sd[m] for m in measured]
        r = np.concatenate(r)
        return np.where(np.isfinite(r), r, 1e6)  # a diverged simulation is a very bad fit

    def fun(theta: np.ndarray) -> np.ndarray:
        counts["nfev"] += 1
        return residuals(simulate(theta[:, None]), 0)

    def jac(theta: np.ndarray) -> np.ndarray:
        # forward differences, the base point and every perturbation as one ensemble
        h = 1e-6 * np.maximum(np.abs(theta), 1e-3)
        hi = theta + h > upper / scale
        h = np.where(hi, -h, h)
        cols = np.tile(theta[:, None], (1, len(names) + 1))
        cols[np.arange(len(names)), np.arange(1, len(names) + 1)] += h
        out = simulate(cols)
        base = residuals(out, 0)
        return np.column_stack([(residuals(out, j + 1) - base) / h[j]
                                for j in range(len(names))])

    def rms(r_norm: np.ndarray) -> dict[str, float]:
        res, k = {}, 0
        for m in measured:
            cnt = int(mask[m].sum())
            seg = r_norm[k:k + cnt] * sd[m]
            res[m] = float(np.sqrt(np.mean(seg ** 2))) if cnt else float("nan")
            k += cnt
        return res

    theta0 = p0 / scale
    r0 = fun(theta0)
    sol = least_squares(fun, theta0, jac=jac, bounds=(lower / scale, upper / scale),
                        x_scale=1.0, max_nfev=max_nfev)
    J = jac(sol.x)
    dof = max(1, sol.fun.size - len(names))
    s2 = float(sol.fun @ sol.fun) / dof
    try:
        cov_theta = np.linalg.inv(J.T @ J) * s2
    except np.linalg.LinAlgError:
        cov_theta = np.full((len(names), len(names)), np.nan)
    cov = cov_theta * np.outer(scale, scale)
    fitted = {p: float(sol.x[j] * scale[j]) for j, p in enumerate(names)}
    std = {p: float(math.sqrt(cov[j, j])) if cov[j, j] >= 0 else float("nan")
           for j, p in enumerate(names)}
    return CalibrationResult(params=fitted, std=std, covariance=cov, names=names,
                             initial={p: float(v) for p, v in zip(names, p0)},
                             residuals_before=rms(r0), residuals_after=rms(sol.fun), noise=sd,
                             success=bool(sol.success), message=str(sol.message),
                             nfev=counts["nfev"])
