"""State estimation: a linear Kalman filter and a continuous-discrete extended Kalman filter.

Both filters take a whole batch of measurements per call, run it in the compiled kernel without the
GIL, and carry their state to the next call: filtering a record in one batch or in several gives
the same estimates (the live twin feeds them batch by batch).

Shared semantics
----------------
* **NaN means "not measured".** A non-finite measurement component is left out of that step's
  update (the update uses the rows of ``H`` and the rows/columns of ``R`` of the measured
  components); a row of NaN is a predict-only step. A non-finite *input* component means "no new
  value": the last finite value is held (initially the declared default, or 0 for the linear KF).
* **Joseph-form update** ``P = (I - K H) P (I - K H)^T + K R K^T``, symmetrised after every step,
  so ``P`` stays symmetric positive definite over long runs.
* **Innovations** ``y = z - h(x_prior)`` (NaN where not measured), the diagonal of the innovation
  covariance ``S = H P H^T + R``, the **normalised innovation squared** ``NIS = y^T S^-1 y`` and its
  degrees of freedom (the number of measured components) are returned with the estimates. On a
  consistent filter NIS is chi-square distributed with ``nis_dof`` degrees of freedom, which is what
  the detectors test.
* ``filter()`` returns an ``xarray.Dataset``; ``filter_arrays()`` is the low-level entry (NumPy
  arrays in, an :class:`EstimateResult` of NumPy arrays out) for hot paths.
* If a step produces a non-finite estimate (or a non-positive-definite innovation covariance) the
  call raises :class:`FilterDivergedError` and the filter keeps the state it had before the call.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from twinbench.kernel._check_build import pure_python
from twinbench.kernel.model import Model, Variable, _as_variables

if TYPE_CHECKING:
    import xarray as xr

__all__ = [
    "KalmanFilter",
    "ExtendedKalmanFilter",
    "EstimateResult",
    "FilterDivergedError",
]

_BACKENDS = ("auto", "c", "numpy")


#: Most RK4 substeps the EKF takes to bridge one gap between measurements.
MAX_SUBSTEPS = 1e7


class FilterDivergedError(FloatingPointError):
    """A filter step produced a non-finite estimate or a singular innovation covariance.

    The filter is left in the state it had before the call that raised.

    Attributes
    ----------
    index : int
        Index, within the batch, of the step that failed.
    time : object
        Time (or step label) of that step.
    """

    def __init__(self, message: str, index: int, time: Any):
        super().__init__(message)
        self.index = index
        self.time = time


class EstimateResult(NamedTuple):
    """Filter output for a batch of ``T`` steps (NumPy arrays).

    Attributes
    ----------
    x : ndarray, shape (T, nx)
        Posterior state estimates.
    std : ndarray, shape (T, nx)
        Their standard deviations (square root of the diagonal of ``P``).
    innovation : ndarray, shape (T, nz)
        Measurement minus predicted measurement; NaN where not measured.
    innovation_var : ndarray, shape (T, nz)
        Diagonal of the innovation covariance ``S``; NaN where not measured.
    nis : ndarray, shape (T,)
        Normalised innovation squared ``y^T S^-1 y``; NaN when nothing was measured.
    nis_dof : ndarray of int64, shape (T,)
        Number of measured components (degrees of freedom of ``nis``).
    P : ndarray, shape (T, nx, nx), or None
        Posterior covariances, when asked for with ``covariance=True``.
    """

    x: np.ndarray
    std: np.ndarray
    innovation: np.ndarray
    innovation_var: np.ndarray
    nis: np.ndarray
    nis_dof: np.ndarray
    P: np.ndarray | None = None


# -- validation helpers ---------------------------------------------------------------------------

def _implementation(backend: str, compiled_available: bool, numpy_available: bool = True):
    if backend not in _BACKENDS:
        raise ValueError(f"backend: expected one of {_BACKENDS}, got {backend!r}")
    if backend == "numpy" or (backend == "auto" and (pure_python() or not compiled_available)):
        if not numpy_available:
            raise ValueError("backend: the NumPy reference needs the model's NumPy form "
                             "(rhs=...), and this model has only a C form")
        from twinbench.kernel import _estimate_py

        return _estimate_py
    if not compiled_available:
        raise ValueError("backend: 'c' needs the model's compiled form, and this model has none")
    try:
        from twinbench.kernel import _estimate
    except ImportError as exc:  # a source tree whose extensions were not rebuilt
        raise ImportError(f"twinbench.kernel._estimate is not built ({exc}); rebuild the kernel "
                          "(make setup) or pass backend='numpy'") from None
    return _estimate


def _array(value: Any, name: str, ndim: int | tuple[int, ...]) -> np.ndarray:
    try:
        a = np.asarray(value, dtype=float)
    except (TypeError, ValueError):
        raise TypeError(f"{name}: expected a numeric array, got {type(value).__name__}") from None
    ndims = (ndim,) if isinstance(ndim, int) else ndim
    if a.ndim not in ndims:
        raise ValueError(f"{name}: expected a {' or '.join(f'{d}-D' for d in ndims)} array, got "
                         f"shape {a.shape}")
    return a


def _matrix(value: Any, name: str, shape: tuple[int, int]) -> np.ndarray:
    m = _array(value, name, (1, 2)) if shape[0] == 1 or shape[1] == 1 else _array(value, name, 2)
    if m.ndim == 1 and m.size == shape[0] * shape[1]:
        m = m.reshape(shape)  # a row or column given as 1-D
    if m.shape != shape:
        raise ValueError(f"{name}: expected shape {shape}, got {m.shape}")
    if not np.isfinite(m).all():
        raise ValueError(f"{name}: expected finite entries, found NaN or Inf")
    return np.ascontiguousarray(m)


def _covariance(value: Any, name: str, n: int, definite: bool) -> np.ndarray:
    """A covariance from a scalar (times I), a 1-D diagonal or a full ``(n, n)`` matrix, checked
    symmetric and positive (semi)definite."""
    a = _array(value, name, (0, 1, 2))
    if a.ndim == 0:
        a = np.eye(n) * float(a)
    elif a.ndim == 1:
        if a.shape != (n,):
            raise ValueError(f"{name}: expected a scalar, a diagonal of length {n} or an "
                             f"({n}, {n}) matrix, got shape {a.shape}")
        a = np.diag(a)
    elif a.shape != (n, n):
        raise ValueError(f"{name}: expected a scalar, a diagonal of length {n} or an ({n}, {n}) "
                         f"matrix, got shape {a.shape}")
    if not np.isfinite(a).all():
        raise ValueError(f"{name}: expected finite entries, found NaN or Inf")
    scale = max(1.0, float(np.abs(a).max(initial=0.0)))
    if np.abs(a - a.T).max(initial=0.0) > 1e-10 * scale:
        raise ValueError(f"{name}: expected a symmetric matrix")
    a = 0.5 * (a + a.T)
    smallest = float(np.linalg.eigvalsh(a).min())
    if definite and not smallest > 0.0:
        raise ValueError(f"{name}: expected a symmetric positive definite matrix; its smallest "
                         f"eigenvalue is {smallest:.3g}")
    if not definite and smallest < -1e-12 * scale:
        raise ValueError(f"{name}: expected a symmetric positive semidefinite matrix; its "
                         f"smallest eigenvalue is {smallest:.3g}")
    return np.ascontiguousarray(a)


def _times(times: Any, name: str = "times") -> tuple[np.ndarray, bool]:
    """Times as datetime64[ns] (naive UTC) or float seconds; returns (values, is_datetime)."""
    try:
        tz = getattr(times, "tz", None) or getattr(getattr(times, "dt", None), "tz", None)
    except (TypeError, ValueError):  # xarray's .dt refuses non-datetime arrays
        tz = None
    if tz is not None:  # a tz-aware pandas index/series: convert to naive UTC
        import pandas as pd

        times = pd.DatetimeIndex(times).tz_convert("UTC").tz_localize(None)
    a = np.asarray(times)
    if a.ndim == 0:
        a = a.reshape(1)
    if a.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D array of times, got shape {a.shape}")
    if a.dtype.kind == "O":
        try:
            a = a.astype("datetime64[ns]")
        except (TypeError, ValueError):
            try:
                a = a.astype(float)
            except (TypeError, ValueError):
                raise TypeError(f"{name}: expected datetime64 or float seconds") from None
    if a.dtype.kind == "M":
        a = a.astype("datetime64[ns]")
        if np.isnat(a).any():
            raise ValueError(f"{name}: expected valid timestamps, found NaT")
        return a, True
    if a.dtype.kind not in "iuf":
        raise TypeError(f"{name}: expected datetime64 or float seconds, got dtype {a.dtype}")
    a = a.astype(float)
    if not np.isfinite(a).all():
        raise ValueError(f"{name}: expected finite times, found NaN or Inf")
    return a, False


def _check_increasing(t: np.ndarray, after: Any, name: str) -> None:
    """``t`` non-decreasing and not before ``after`` (the filter's current time: a float, NaN or
    None when there is none yet, or a datetime64)."""
    if not t.size:
        return
    back = np.flatnonzero(t[1:] < t[:-1])
    if back.size:
        raise ValueError(f"{name}: expected non-decreasing times; element {int(back[0]) + 1} goes "
                         "back in time")
    if after is None or (isinstance(after, float) and math.isnan(after)):
        return
    if t[0] < after:
        raise ValueError(f"{name}: the batch starts at {t[0]!r}, before the filter's current time "
                         f"{after!r}; batches must follow each other in time")


def _columns(value: Any, name: str, T: int, names: tuple[str, ...],
             fill: float | None) -> np.ndarray:
    """A ``(T, len(names))`` float array from a ``(T, k)`` array, a ``(T,)`` array when ``k == 1``,
    or a mapping of name to ``(T,)`` array (missing names NaN). With ``fill`` given (inputs), also
    a constant: a ``(k,)`` array, a scalar when ``k == 1``, or scalars in the mapping."""
    k = len(names)
    if isinstance(value, Mapping):
        unknown = sorted(set(value) - set(names))
        if unknown:
            raise KeyError(f"{name}: unknown variables {unknown}; expected some of {list(names)}")
        out = np.full((T, k), np.nan if fill is None else fill)
        for j, var in enumerate(names):
            if var in value:
                col = _array(value[var], f"{name}[{var!r}]", (0, 1))
                if col.ndim == 1 and col.shape != (T,):
                    raise ValueError(f"{name}[{var!r}]: expected {T} values (one per time), got "
                                     f"{col.shape[0]}")
                out[:, j] = col
        return out
    a = _array(value, name, (0, 1, 2))
    if a.ndim == 2:
        if a.shape != (T, k):
            raise ValueError(f"{name}: expected shape ({T}, {k}) (times x {list(names)}), got "
                             f"{a.shape}")
        return np.ascontiguousarray(a)
    if a.ndim == 1 and k == 1 and a.shape == (T,):
        return np.ascontiguousarray(a[:, None])
    if a.ndim == 1 and a.shape == (k,) and fill is not None:
        return np.ascontiguousarray(np.broadcast_to(a, (T, k)))  # constant inputs
    if a.ndim == 0 and k == 1 and fill is not None:
        return np.full((T, 1), float(a))
    raise ValueError(f"{name}: expected shape ({T}, {k}) (times x {list(names)}), got {a.shape}")


def _outputs(T: int, nx: int, nz: int, covariance: bool) -> list:
    return [np.empty((T, nx)), np.empty((T, nx)), np.empty((T, nz)), np.empty((T, nz)),
            np.empty(T), np.empty(T, dtype=np.int64),
            np.empty((T, nx, nx)) if covariance else None]


def _decls(decls: Any, prefix: str, count: int, arg: str) -> tuple[Variable, ...]:
    if decls is None:
        return tuple(Variable(f"{prefix}{i}") for i in range(count))
    out = _as_variables(decls, arg)
    if len(out) != count:
        raise ValueError(f"{arg}: expected {count} names to match the matrices, got {len(out)}")
    return out


def _dataset(result: EstimateResult, time: np.ndarray, time_attrs: dict, elapsed: np.ndarray | None,
             states: Sequence[Variable], measured: Sequence[Variable], attrs: dict) -> xr.Dataset:
    import xarray as xr

    coords: dict[str, Any] = {"time": ("time", time, time_attrs)}
    if elapsed is not None:
        coords["elapsed"] = ("time", elapsed, {"units": "s",
                                               "long_name": "time since the filter's first step"})
    data: dict[str, Any] = {}
    for j, v in enumerate(states):
        label = v.long_name or v.name
        data[v.name] = ("time", result.x[:, j], {"units": v.units,
                                                 "long_name": f"estimated {label}"})
        data[f"{v.name}_std"] = ("time", result.std[:, j], {
            "units": v.units, "long_name": f"standard deviation of the estimated {label}"})
    for j, v in enumerate(measured):
        label = v.long_name or v.name
        data[f"{v.name}_innovation"] = ("time", result.innovation[:, j], {
            "units": v.units, "long_name": f"innovation of {label} (measured minus predicted)"})
        data[f"{v.name}_innovation_std"] = ("time", np.sqrt(result.innovation_var[:, j]), {
            "units": v.units,
            "long_name": f"predicted standard deviation of the innovation of {label}"})
    data["nis"] = ("time", result.nis, {
        "units": "1", "long_name": "normalised innovation squared (y' S^-1 y)"})
    data["nis_dof"] = ("time", result.nis_dof, {
        "units": "1", "long_name": "number of measured components (degrees of freedom of nis)"})
    return xr.Dataset(data, coords=coords, attrs=attrs)


# -- the filters ----------------------------------------------------------------------------------

class _Filter:
    """State handling shared by both filters: snapshot before a call, restore if it fails."""

    _state_names = ("x", "P", "u_hold")

    def _snapshot(self) -> dict:
        return {k: getattr(self, "_" + k).copy() for k in self._state_names}

    def _restore(self, snap: dict) -> None:
        for k, v in snap.items():
            getattr(self, "_" + k)[...] = v

    @property
    def x(self) -> np.ndarray:
        """Current state estimate (a copy), shape ``(nx,)``."""
        return self._x.copy()

    @property
    def P(self) -> np.ndarray:
        """Current state covariance (a copy), shape ``(nx, nx)``."""
        return self._P.copy()

    @property
    def backend(self) -> str:
        """``"c"`` or ``"numpy"``: the implementation this filter runs."""
        return "numpy" if self._impl.__name__.endswith("_py") else "c"

    def _diverged(self, bad: int, label: Any, snap: dict) -> None:
        self._restore(snap)
        raise FilterDivergedError(
            f"{type(self).__name__}: step {bad} (time {label!r}) produced a non-finite estimate or "
            "an innovation covariance that is not positive definite; the filter state was left "
            "as before this call. Check the model, Q, R and the measurements near that time.",
            bad, label)


class KalmanFilter(_Filter):
    """Linear discrete-time Kalman filter, processing batches of measurements in the kernel.

    Model: ``x_k = F x_{k-1} + B u_k + w_k``, ``z_k = H x_k + v_k`` with ``w_k ~ N(0, Q)`` and
    ``v_k ~ N(0, R)``. Each step predicts, then updates with the finite components of ``z_k``.

    Parameters
    ----------
    F : array_like, shape (nx, nx)
        State transition.
    H : array_like, shape (nz, nx)
        Measurement matrix (a 1-D array is one measured row).
    Q : float, array_like (nx,) or (nx, nx)
        Process noise covariance per step (scalar: times I; 1-D: diagonal). Positive semidefinite.
    R : float, array_like (nz,) or (nz, nz)
        Measurement noise covariance. Positive definite.
    B : array_like, shape (nx, nu), optional
        Input matrix (default: no inputs).
    x0 : array_like, shape (nx,), optional
        Initial estimate ``x_{0|0}`` (default zeros).
    P0 : float, array_like (nx,) or (nx, nx), optional
        Initial covariance (default identity).
    state_names, measurement_names, input_names : sequence, optional
        Names (or :class:`~twinbench.kernel.Variable` declarations with units) used in the
        Dataset; default ``x0, x1, ...``, ``z0, ...``, ``u0, ...``.
    backend : {"auto", "c", "numpy"}
        ``"auto"`` runs the compiled kernel unless ``TWINBENCH_PURE_PYTHON`` is set.

    Examples
    --------
    >>> import numpy as np
    >>> from twinbench.kernel.estimate import KalmanFilter
    >>> kf = KalmanFilter(F=[[1, 0.1], [0, 1]], H=[[1, 0]], Q=1e-4, R=0.01,
    ...                   state_names=["position", "velocity"],
    ...                   measurement_names=["position_measured"])
    >>> z = 0.5 * np.arange(1, 51) * 0.1              # a target moving at 0.5 per second
    >>> ds = kf.filter(None, z)
    >>> round(float(ds.velocity[-1]), 1)
    0.5
    >>> int(ds.nis_dof[-1])
    1
    """

    def __init__(self, F, H, Q, R, B=None, x0=None, P0=None, *, state_names=None,
                 measurement_names=None, input_names=None, backend: str = "auto"):
        F = _array(F, "F", 2)
        nx = F.shape[0]
        self._F = _matrix(F, "F", (nx, nx))
        Harr = _array(H, "H", (1, 2))
        nz = 1 if Harr.ndim == 1 else Harr.shape[0]
        self._H = _matrix(Harr, "H", (nz, nx))
        if B is None:
            self._B = np.zeros((nx, 0))
        else:
            Barr = _array(B, "B", (1, 2))
            nu = 1 if Barr.ndim == 1 else Barr.shape[1]
            self._B = _matrix(Barr.reshape(nx, 1) if Barr.ndim == 1 and Barr.size == nx else Barr,
                              "B", (nx, nu))
        nu = self._B.shape[1]
        self._Q = _covariance(Q, "Q", nx, definite=False)
        self._R = _covariance(R, "R", nz, definite=True)
        self.states = _decls(state_names, "x", nx, "state_names")
        self.measurements = _decls(measurement_names, "z", nz, "measurement_names")
        self.inputs = _decls(input_names, "u", nu, "input_names")
        self._impl = _implementation(backend, True)
        self._x = np.zeros(nx)
        self._P = np.eye(nx)
        self._u_hold = np.zeros(nu)
        self._steps = 0
        self.reset(x0, P0)

    @property
    def nx(self) -> int:
        return self._F.shape[0]

    @property
    def nz(self) -> int:
        return self._H.shape[0]

    @property
    def nu(self) -> int:
        return self._B.shape[1]

    @property
    def steps(self) -> int:
        """Number of steps processed since construction or :meth:`reset`."""
        return self._steps

    def reset(self, x0=None, P0=None) -> None:
        """Restart from ``x0`` (default zeros) and ``P0`` (default identity); held inputs to 0."""
        self._x[...] = 0.0 if x0 is None else _matrix(x0, "x0", (self.nx, 1)).ravel()
        self._P[...] = np.eye(self.nx) if P0 is None else _covariance(P0, "P0", self.nx, False)
        self._u_hold[...] = 0.0
        self._steps = 0

    def filter_arrays(self, measurements, inputs=None, *,
                      covariance: bool = False) -> EstimateResult:
        """Run the filter over ``T`` steps; the low-level entry, returning NumPy arrays.

        Parameters
        ----------
        measurements : array_like, shape (T, nz) (or (T,) when nz == 1)
            NaN components are not measured.
        inputs : array_like, shape (T, nu) or (nu,), optional
            ``u_k`` per step (NaN: hold the last value); a 1-D array of length nu is constant.
        covariance : bool
            Also return the posterior covariance of every step.

        Returns
        -------
        EstimateResult
        """
        z = _array(measurements, "measurements", (1, 2))
        T = z.shape[0]
        names = tuple(v.name for v in self.measurements)
        z = _columns(z, "measurements", T, names, None)
        u = (np.full((T, self.nu), np.nan) if inputs is None
             else _columns(inputs, "inputs", T, tuple(v.name for v in self.inputs), np.nan))
        out = _outputs(T, self.nx, self.nz, covariance)
        snap = self._snapshot()
        bad = self._impl.kf_run(self._F, self._B, self._H, self._Q, self._R, self._x, self._P,
                                self._u_hold, z, u, *out)
        if bad >= 0:
            self._diverged(bad, self._steps + bad + 1, snap)
        self._steps += T
        return EstimateResult(*out)

    def filter(self, times, measurements, inputs=None) -> xr.Dataset:
        """Run the filter over a batch and return the estimates as an ``xarray.Dataset``.

        Parameters
        ----------
        times : array_like of datetime64 or float, shape (T,), or None
            Labels of the steps (the filter itself is discrete-time). None numbers the steps
            1, 2, ... counting from the last :meth:`reset`.
        measurements : array_like (T, nz) or mapping of measurement name to (T,) array
            NaN components (and names missing from a mapping) are not measured.
        inputs : array_like (T, nu) or (nu,), or mapping of input name to scalar or (T,) array
            NaN: hold the last value.

        Returns
        -------
        xarray.Dataset
            Per state: the estimate and ``<state>_std``; per measurement: ``<z>_innovation`` and
            ``<z>_innovation_std``; ``nis`` and ``nis_dof``. Dimension ``time``.
        """
        z, T = self._measurement_table(measurements)
        start = self._steps
        if times is None:
            time, time_attrs = np.arange(start + 1, start + T + 1), {"long_name": "step number"}
        else:
            time, is_dt = _times(times)
            if time.shape != (T,):
                raise ValueError(f"times: expected {T} times (one per measurement row), got "
                                 f"{time.shape[0]}")
            time_attrs = {} if is_dt else {"units": "s", "long_name": "time"}
        u = None
        if inputs is not None:
            u = _columns(inputs, "inputs", T, tuple(v.name for v in self.inputs), np.nan)
        result = self.filter_arrays(z, u)
        return _dataset(result, time, time_attrs, None, self.states, self.measurements,
                        {"filter": "linear Kalman filter (Joseph-form update)",
                         "backend": self.backend})

    def _measurement_table(self, measurements) -> tuple[np.ndarray, int]:
        names = tuple(v.name for v in self.measurements)
        if isinstance(measurements, Mapping):
            lengths = {np.size(v) for v in measurements.values()}
            if len(lengths) != 1:
                raise ValueError("measurements: expected arrays of one common length")
            T = lengths.pop()
        else:
            z = _array(measurements, "measurements", (1, 2))
            T = z.shape[0]
        return _columns(measurements, "measurements", T, names, None), T


class ExtendedKalmanFilter(_Filter):
    """Continuous-discrete extended Kalman filter for any :class:`~twinbench.kernel.Model`.

    Between measurement times the state is integrated with RK4 substeps of at most ``max_step``
    seconds, the inputs held at their values of the previous measurement time (zero-order hold).
    The covariance is propagated per substep of length ``h`` as ``P = F P F^T + Q h`` with
    ``F = I + J h + (J h)^2 / 2`` and ``J = df/dx`` at the start of the substep (the model's
    analytic Jacobian when it has one, else forward differences). The measurement prediction is
    the model's outputs (``H`` by forward differences) or states (``H`` exact) named in
    ``measured``, at the inputs of the measurement time. The first measurement after construction
    or :meth:`reset` is an update of the prior ``x0``, ``P0`` with no prediction before it.

    Parameters
    ----------
    model : Model
        Runs on its compiled form when it has one, else on its NumPy form.
    Q : float, array_like (nx,) or (nx, nx)
        Process noise **spectral density** (continuous time, units state^2 per second): over a
        step of ``h`` seconds the covariance grows by ``Q h``. Positive semidefinite.
    R : float, array_like (nz,) or (nz, nz)
        Measurement noise covariance, in the order of ``measured``. Positive definite.
    x0 : mapping of state name to value, or array_like (nx,), optional
        Prior estimate (default: the model's declared state defaults).
    P0 : float, array_like (nx,) or (nx, nx), optional
        Prior covariance (default identity).
    params : mapping of parameter name to value, optional
        Parameter values (default: the declared defaults).
    measured : sequence of str, optional
        Output or state names, one per measurement column (default: all outputs, or all states
        when the model has no outputs).
    max_step : float
        Longest RK4 substep, seconds. Choose it below the model's fastest time constant.
    backend : {"auto", "c", "numpy"}
        ``"auto"`` runs the compiled kernel when the model has a C form.

    Examples
    --------
    >>> import numpy as np
    >>> from twinbench.kernel.linear import linear_model
    >>> from twinbench.kernel.estimate import ExtendedKalmanFilter
    >>> m = linear_model([[0, 1], [-4, -0.4]], C=[[1, 0]], states=[("pos", "m"), ("vel", "m/s")],
    ...                  outputs=[("pos_sensor", "m")])
    >>> truth = m.simulate(duration=5.0, dt=0.01, x0={"pos": 1.0}, every=10)
    >>> ekf = ExtendedKalmanFilter(m, Q=1e-6, R=1e-4, x0={"pos": 0.8}, max_step=0.01)
    >>> ds = ekf.filter(truth.time.values, truth.pos_sensor.values)
    >>> abs(float(ds.vel[-1] - truth.vel[-1])) < 0.05
    True
    """

    _state_names = ("x", "P", "u_hold", "clock")

    def __init__(self, model: Model, Q, R, *, x0=None, P0=None, params=None,
                 measured: Sequence[str] | None = None, max_step: float = 0.1,
                 backend: str = "auto"):
        if not isinstance(model, Model):
            raise TypeError(f"model: expected a twinbench Model, got {type(model).__name__}")
        self.model = model
        nx = model.nx
        self._impl = _implementation(backend, model.has_compiled, model.has_numpy)
        if measured is None:
            measured = model.output_names or model.state_names
        if isinstance(measured, str):
            measured = [measured]
        measured = list(measured)
        if not measured:
            raise ValueError("measured: expected at least one output or state name")
        dup = sorted({m for m in measured if measured.count(m) > 1})
        if dup:
            raise ValueError(f"measured: names repeated: {dup}")
        index = []
        for name in measured:
            if name in model.output_names:
                index.append(model.output_names.index(name))
            elif name in model.state_names:
                index.append(-model.state_names.index(name) - 1)
            else:
                raise KeyError(f"measured: {name!r} is neither an output nor a state of model "
                               f"{model.name!r}; outputs {list(model.output_names)}, states "
                               f"{list(model.state_names)}")
        self.measured = tuple(measured)
        self._meas = np.array(index, dtype=np.int64)
        nz = len(index)
        self._Q = _covariance(Q, "Q", nx, definite=False)
        self._R = _covariance(R, "R", nz, definite=True)
        try:
            self.max_step = float(max_step)
        except (TypeError, ValueError):
            raise TypeError(f"max_step: expected a positive number of seconds, got "
                            f"{max_step!r}") from None
        if not (math.isfinite(self.max_step) and self.max_step > 0):
            raise ValueError(f"max_step: expected a positive, finite number of seconds, got "
                             f"{max_step!r}")
        self._params = self._named_values(params, model.params, "params")
        # what the model functions receive: derived once here, not at every step
        self._pk = np.ascontiguousarray(model.kernel_params(self._params[:, None])[:, 0])
        self._x = np.empty(nx)
        self._P = np.empty((nx, nx))
        self._u_hold = np.empty(model.nu)
        self._clock = np.empty(1)
        self.reset(x0, P0)

    @staticmethod
    def _named_values(values, decls: Sequence[Variable], name: str) -> np.ndarray:
        out = np.array([v.default for v in decls], dtype=float)
        if values is None:
            return out
        names = [v.name for v in decls]
        if isinstance(values, Mapping):
            unknown = sorted(set(values) - set(names))
            if unknown:
                raise KeyError(f"{name}: unknown names {unknown}; expected some of {names}")
            for k, v in values.items():
                try:
                    out[names.index(k)] = float(v)
                except (TypeError, ValueError):
                    raise TypeError(f"{name}[{k!r}]: expected a number, got {v!r}") from None
        else:
            out = _array(values, name, 1)
            if out.shape != (len(names),):
                raise ValueError(f"{name}: expected {len(names)} values ({names}), got {out.shape}")
            out = out.copy()
        if not np.isfinite(out).all():
            bad = [names[i] for i in np.flatnonzero(~np.isfinite(out))]
            raise ValueError(f"{name}: expected finite values, got NaN/Inf for {bad}")
        return np.ascontiguousarray(out)

    @property
    def nx(self) -> int:
        return self.model.nx

    @property
    def nz(self) -> int:
        return len(self.measured)

    @property
    def Q(self) -> np.ndarray:
        """Process noise covariance (a copy)."""
        return self._Q.copy()

    @property
    def R(self) -> np.ndarray:
        """Measurement noise covariance, in the order of ``measured`` (a copy)."""
        return self._R.copy()

    @property
    def time(self) -> float:
        """Model-clock time (s) of the current estimate; NaN before the first measurement."""
        return float(self._clock[0])

    def _clock_in_caller_units(self, is_datetime: bool) -> Any:
        """The current time in the units of ``filter``'s ``times`` (None: none yet)."""
        if math.isnan(self.time):
            return None
        if not is_datetime:
            return self.time
        if self._epoch is None:
            return None  # the time was set by filter_arrays; checked there in model seconds
        return self._epoch + np.timedelta64(round(self.time * 1e9), "ns")

    def reset(self, x0=None, P0=None) -> None:
        """Restart from the prior ``x0``/``P0`` (defaults as in the constructor); the next
        measurement is an update with no prediction before it."""
        self._x[...] = self._named_values(x0, self.model.states, "x0")
        self._P[...] = np.eye(self.nx) if P0 is None else _covariance(P0, "P0", self.nx, False)
        self._u_hold[...] = [v.default for v in self.model.inputs]
        self._clock[0] = np.nan
        self._epoch: np.datetime64 | None = None
        self._time_kind: str | None = None

    def filter_arrays(self, t, measurements, inputs=None, *,
                      covariance: bool = False) -> EstimateResult:
        """Run the filter over ``T`` measurement times; the low-level entry.

        Parameters
        ----------
        t : array_like of float, shape (T,)
            Model-clock times in seconds, non-decreasing and not before :attr:`time`.
        measurements : array_like, shape (T, nz) (or (T,) when nz == 1)
            Columns in the order of :attr:`measured`; NaN components are not measured.
        inputs : array_like, shape (T, nu) or (nu,), optional
            Inputs at each time (NaN: hold the last value); a 1-D array of length nu is constant.
        covariance : bool
            Also return the posterior covariance of every step.

        Returns
        -------
        EstimateResult
        """
        kind = getattr(np.asarray(t), "dtype", np.dtype(float)).kind
        if kind not in "iuf":
            raise TypeError(f"t: expected model-clock seconds (float), got dtype "
                            f"{np.asarray(t).dtype}; for timestamps use filter(times, ...)")
        t = np.ascontiguousarray(_array(t, "t", 1))
        if not np.isfinite(t).all():
            raise ValueError("t: expected finite times, found NaN or Inf")
        _check_increasing(t, self.time, "t")
        return self._run(t, measurements, inputs, covariance)

    def _run(self, t: np.ndarray, measurements, inputs, covariance: bool) -> EstimateResult:
        T = t.shape[0]
        # The kernel integrates each gap in substeps of at most max_step without the GIL: refuse
        # a gap that would take minutes rather than hang the notebook.
        start = self.time if math.isfinite(self.time) else (t[0] if T else 0.0)
        longest = float(np.max(np.diff(t, prepend=start), initial=0.0))
        if longest / self.max_step > MAX_SUBSTEPS:
            raise ValueError(f"t: a gap of {longest:g} s between measurements would take "
                             f"{longest / self.max_step:.3g} integration substeps of max_step="
                             f"{self.max_step:g} s (limit {MAX_SUBSTEPS:g}); raise max_step, "
                             "reset() the filter, or check the time units")
        z = _columns(measurements, "measurements", T, self.measured, None)
        u = (np.full((T, self.model.nu), np.nan) if inputs is None
             else _columns(inputs, "inputs", T, self.model.input_names, np.nan))
        out = _outputs(T, self.nx, self.nz, covariance)
        snap = self._snapshot()
        bad = self._impl.ekf_run(self.model, self._pk, self._meas, self._Q, self._R, self.max_step,
                                 self._x, self._P, self._u_hold, self._clock, t, z, u, *out)
        if bad >= 0:
            self._diverged(bad, float(t[bad]), snap)
        return EstimateResult(*out)

    def filter(self, times, measurements, inputs=None) -> xr.Dataset:
        """Run the filter over a batch of measurement times; return an ``xarray.Dataset``.

        Parameters
        ----------
        times : array_like of datetime64 (UTC) or float seconds, shape (T,)
            Non-decreasing; a batch must not start before the previous one ended. Timestamps are
            turned into model-clock seconds since the first timestamp the filter saw (the
            ``elapsed`` coordinate); float times are used as the model clock directly.
        measurements : array_like (T, nz) or mapping of measured name to (T,) array
            Columns in the order of :attr:`measured`. NaN components (and names missing from a
            mapping) are not measured.
        inputs : array_like (T, nu) or (nu,), or mapping of input name to scalar or (T,) array
            Inputs at the measurement times; NaN (and names missing from a mapping) hold the
            last value, initially the declared default.

        Returns
        -------
        xarray.Dataset
            Dimension ``time`` (datetime64[ns] when ``times`` are timestamps, else seconds) with
            an ``elapsed`` coordinate (model-clock seconds). Per state: the estimate and
            ``<state>_std``; per measured variable: ``<name>_innovation`` and
            ``<name>_innovation_std``; ``nis`` and ``nis_dof``. CF ``units``/``long_name`` attrs
            from the model's declarations.
        """
        time, is_dt = _times(times)
        T = time.shape[0]
        kind = "datetime" if is_dt else "float"
        if self._time_kind is not None and kind != self._time_kind:
            raise TypeError(f"times: this filter was fed {self._time_kind} times since its last "
                            f"reset; got {kind} times")
        if is_dt and T:
            epoch = self._epoch if self._epoch is not None else time[0]
            t = ((time - epoch) / np.timedelta64(1, "ns")).astype(float) * 1e-9
        elif is_dt:
            epoch, t = self._epoch, np.zeros(0)
        else:
            epoch, t = None, time
        z = _columns(measurements, "measurements", T, self.measured, None)
        u = None
        if inputs is not None:
            u = _columns(inputs, "inputs", T, self.model.input_names, np.nan)
        _check_increasing(time, self._clock_in_caller_units(is_dt), "times")
        result = self._run(np.ascontiguousarray(t, dtype=float), z, u, False)
        if T:
            self._time_kind = kind
            self._epoch = epoch
        variables = {v.name: v for v in self.model.states + self.model.outputs}
        attrs = {"filter": "continuous-discrete extended Kalman filter (Joseph-form update)",
                 "model": self.model.name, "backend": self.backend, "max_step": self.max_step}
        time_attrs = {} if is_dt else {"units": "s", "long_name": "time"}
        return _dataset(result, time, time_attrs, t, self.model.states,
                        [variables[n] for n in self.measured], attrs)
