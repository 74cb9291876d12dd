"""Streaming anomaly detectors that carry their state from one batch to the next.

Each detector is a small object holding its per-channel state in numpy arrays. ``update(values)``
takes a batch of shape ``(n_samples,)`` or ``(n_samples, n_channels)`` and returns a NamedTuple of
numpy arrays with one entry per sample (and channel). Feeding a series in one batch or split into
any number of batches gives identical results: the state after a batch is exactly what the next
sample needs. ``run(dataarray)`` does the same on an ``xarray.DataArray`` and returns an
``xarray.Dataset``.

Result fields, and what a *missing* sample (NaN, +-inf) does:

:class:`EwmaZScore` -> ``zscore``, ``alarm``
    z-score NaN, no alarm; the state is unchanged.
:class:`Cusum` -> ``upper``, ``lower``, ``alarm``
    sums NaN, the alarm of the sample before; the state is unchanged.
:class:`RollingStats` -> ``mean``, ``var``, ``alarm``
    takes its slot in the window but holds no data: the statistics are those of the valid
    samples in the window.
:class:`PersistenceThreshold` -> ``elapsed``, ``alarm``
    neither starts, extends nor ends a run: ``elapsed`` NaN, the alarm of the sample before.
:class:`NisChiSquare` -> ``statistic``, ``dof``, ``alarm``
    adds neither NIS nor degrees of freedom to the window.

Every detector runs on the compiled kernel (``twinbench.kernel._detect``) unless
``backend="numpy"`` is asked for or ``TWINBENCH_PURE_PYTHON`` is set; the NumPy reference
(``_detect_py``) gives the same results to rounding, and alarms exactly.
"""

from __future__ import annotations

import math
import numbers
from datetime import timedelta
from typing import Any, NamedTuple

import numpy as np

from twinbench.kernel._check_build import _MESSAGE, pure_python

__all__ = [
    "EwmaZScore",
    "Cusum",
    "RollingStats",
    "PersistenceThreshold",
    "NisChiSquare",
    "EwmaResult",
    "CusumResult",
    "RollingResult",
    "PersistenceResult",
    "NisResult",
]


# --- results --------------------------------------------------------------------------------------

class EwmaResult(NamedTuple):
    """Output of :meth:`EwmaZScore.update`, one entry per sample (and channel)."""

    zscore: np.ndarray  #: deviation from the EWMA mean of the previous samples, in EWMA sigmas
    alarm: np.ndarray   #: ``|zscore| > threshold`` after the warm-up


class CusumResult(NamedTuple):
    """Output of :meth:`Cusum.update`, one entry per sample (and channel)."""

    upper: np.ndarray   #: upper cumulative sum (detects increases), in sigmas; NaN in warm-up
    lower: np.ndarray   #: lower cumulative sum (detects decreases), in sigmas; NaN in warm-up
    alarm: np.ndarray   #: ``upper > h or lower > h``


class RollingResult(NamedTuple):
    """Output of :meth:`RollingStats.update`, one entry per sample (and channel)."""

    mean: np.ndarray    #: mean of the valid samples in the window
    var: np.ndarray     #: their variance (``ddof`` as given)
    alarm: np.ndarray   #: mean outside ``[low, high]`` or std above ``max_std``


class PersistenceResult(NamedTuple):
    """Output of :meth:`PersistenceThreshold.update`, one entry per sample (and channel)."""

    elapsed: np.ndarray  #: seconds the condition has held in the current run (0 outside a run)
    alarm: np.ndarray    #: the condition has held for at least ``duration`` seconds


class NisResult(NamedTuple):
    """Output of :meth:`NisChiSquare.update`, one entry per sample (and channel)."""

    statistic: np.ndarray  #: sum of the NIS over the window (NaN when it holds no data)
    dof: np.ndarray        #: sum of the degrees of freedom over the window (int64)
    alarm: np.ndarray      #: statistic outside the chi-square bounds for ``dof``


# --- validation helpers ---------------------------------------------------------------------------

def _real(name: str, value: Any) -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name}: expected a real number, got {type(value).__name__} {value!r}")
    v = float(value)
    if math.isnan(v):
        raise ValueError(f"{name}: expected a number, got NaN")
    return v


def _finite(name: str, value: Any) -> float:
    v = _real(name, value)
    if not math.isfinite(v):
        raise ValueError(f"{name}: expected a finite number, got {value!r}")
    return v


def _positive(name: str, value: Any) -> float:
    v = _finite(name, value)
    if v <= 0.0:
        raise ValueError(f"{name}: expected a positive number, got {value!r}")
    return v


def _non_negative(name: str, value: Any) -> float:
    v = _finite(name, value)
    if v < 0.0:
        raise ValueError(f"{name}: expected a number >= 0, got {value!r}")
    return v


def _integer(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name}: expected an integer, got {type(value).__name__} {value!r}")
    v = int(value)
    if v < minimum:
        raise ValueError(f"{name}: expected an integer >= {minimum}, got {v}")
    return v


def _choice(name: str, value: Any, options: tuple[str, ...]) -> str:
    if value not in options:
        raise ValueError(f"{name}: expected one of {', '.join(map(repr, options))}, got {value!r}")
    return value


def _seconds(name: str, value: Any) -> float:
    """A duration given as seconds, ``numpy.timedelta64`` or ``datetime.timedelta``."""
    if isinstance(value, np.timedelta64):
        if np.isnat(value):
            raise ValueError(f"{name}: expected a duration, got NaT")
        value = value.astype("timedelta64[ns]").astype(np.int64) / 1e9
    elif isinstance(value, timedelta):
        value = value.total_seconds()
    v = _non_negative(name, value)
    return v


def _per_channel(name: str, value: Any, positive: bool) -> np.ndarray:
    """A scalar or a 1-D array of per-channel values, finite (and > 0 if ``positive``)."""
    arr = np.asarray(value)
    if arr.dtype.kind not in "iuf" or arr.ndim > 1:
        raise TypeError(f"{name}: expected a real number or a 1-D array of them (one per channel), "
                        f"got {type(value).__name__} with dtype {arr.dtype} and shape {arr.shape}")
    arr = np.atleast_1d(arr.astype(np.float64))
    if arr.size == 0 or not np.all(np.isfinite(arr)):
        raise ValueError(f"{name}: expected finite numbers, got {value!r}")
    if positive and np.any(arr <= 0.0):
        raise ValueError(f"{name}: expected positive numbers, got {value!r}")
    return arr


def _as_batch(name: str, values: Any) -> tuple[np.ndarray, bool]:
    """``values`` as a C-contiguous float64 ``(n_samples, n_channels)`` array, and whether it
    was 1-D."""
    arr = np.asarray(values)
    if arr.dtype.kind not in "iuf":
        raise TypeError(f"{name}: expected real numbers (float64), got dtype {arr.dtype}")
    if arr.ndim not in (1, 2):
        raise ValueError(f"{name}: expected shape (n_samples,) or (n_samples, n_channels), got "
                         f"shape {arr.shape}")
    was_1d = arr.ndim == 1
    arr = np.ascontiguousarray(arr, dtype=np.float64)
    if was_1d:
        arr = arr.reshape(-1, 1)
    if arr.shape[1] == 0:
        raise ValueError(f"{name}: expected at least one channel, got shape {arr.shape}")
    return arr, was_1d


def _backend(backend: str):
    _choice("backend", backend, ("auto", "c", "numpy"))
    if backend == "numpy" or (backend == "auto" and pure_python()):
        from twinbench.kernel import _detect_py

        return _detect_py
    try:
        from twinbench.kernel import _detect
    except ImportError as exc:
        raise ImportError(_MESSAGE.format(module="twinbench.kernel._detect", error=exc)) from None
    return _detect


# --- the common part ------------------------------------------------------------------------------

class _Detector:
    """Shared machinery: channels, backend, state copy/reset, the xarray wrapper."""

    _result: type
    _long_names: dict[str, str]

    def __init__(self, n_channels: int | None, backend: str):
        self._impl = _backend(backend)
        self.backend = "numpy" if self._impl.__name__.endswith("_py") else "c"
        self._n_channels: int | None = None
        self._requested_channels = (None if n_channels is None
                                    else _integer("n_channels", n_channels, 1))
        self.reset()

    # state ------------------------------------------------------------------------------------
    @property
    def n_channels(self) -> int | None:
        """Number of channels (fixed by the constructor or by the first batch)."""
        return self._n_channels

    def reset(self) -> None:
        """Forget everything seen so far (parameters are kept)."""
        self._n_channels = None
        self._state: dict[str, np.ndarray] = {}
        if self._requested_channels is not None:
            self._allocate(self._requested_channels)

    def _allocate(self, c: int) -> None:
        self._n_channels = c
        self._state = self._initial_state(c)

    def _initial_state(self, c: int) -> dict[str, np.ndarray]:
        raise NotImplementedError

    @property
    def state(self) -> dict[str, np.ndarray]:
        """Copies of the streaming state arrays (one entry per channel, or ring buffers)."""
        return {k: v.copy() for k, v in self._state.items()}

    def copy(self):
        """An independent detector with the same parameters and state."""
        new = object.__new__(type(self))
        for k, v in self.__dict__.items():
            if isinstance(v, np.ndarray):
                v = v.copy()
            elif isinstance(v, dict):
                v = {kk: (vv.copy() if isinstance(vv, np.ndarray) else vv) for kk, vv in v.items()}
            new.__dict__[k] = v
        return new

    def _channels(self, arr: np.ndarray, name: str = "values") -> None:
        c = arr.shape[1]
        if self._n_channels is None:
            self._allocate(c)
        elif c != self._n_channels:
            raise ValueError(f"{name}: this detector has {self._n_channels} channel(s), got a "
                             f"batch with {c} (shape {arr.shape})")

    def _outputs(self, n: int, kinds: tuple[type, ...], out: Any,
                 was_1d: bool) -> list[np.ndarray]:
        """Output arrays ``(n, n_channels)`` for the kernel: new ones, or views of ``out``."""
        c = self._n_channels
        if out is None:
            return [np.empty((n, c), dtype=k) for k in kinds]
        fields = self._result._fields
        if not isinstance(out, tuple) or len(out) != len(fields):
            raise TypeError(f"out: expected a {self._result.__name__} (or a tuple of "
                            f"{len(fields)} arrays: {', '.join(fields)}), got "
                            f"{type(out).__name__}")
        shape = (n,) if was_1d else (n, c)
        views = []
        for f, k, arr in zip(fields, kinds, out, strict=True):
            if (not isinstance(arr, np.ndarray) or arr.dtype != k or arr.shape != shape
                    or not arr.flags.c_contiguous or not arr.flags.writeable):
                got = (f"{arr.dtype} array of shape {arr.shape}"
                       if isinstance(arr, np.ndarray) else type(arr).__name__)
                raise ValueError(f"out.{f}: expected a writeable C-contiguous {np.dtype(k)} "
                                 f"array of shape {shape}, got {got}")
            views.append(arr.reshape(n, c))
        return views

    def _finish(self, outs: list[np.ndarray], was_1d: bool, out: Any = None):
        if out is not None:
            return self._result(*out)
        if was_1d:
            outs = [o[:, 0] for o in outs]
        return self._result(*outs)

    @staticmethod
    def _check_times(times: Any, n: int) -> None:
        if times is not None and np.shape(times) != (n,):
            raise ValueError(f"times: expected shape ({n},) to match values, got shape "
                             f"{np.shape(times)}")

    def parameters(self) -> dict[str, Any]:
        """The detector's parameters (as given or defaulted)."""
        raise NotImplementedError

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self.parameters().items())
        return f"{type(self).__name__}({params}) [{self.backend}, channels={self._n_channels}]"

    # xarray -----------------------------------------------------------------------------------
    def _field_attrs(self, field: str, units: str | None) -> dict[str, str]:
        return {"units": "1", "long_name": self._long_names[field]}

    def run(self, data: Any, times: Any = None, **update_kwargs: Any):
        """Feed ``data`` to :meth:`update` and return the results as an ``xarray.Dataset``.

        Parameters
        ----------
        data : xarray.DataArray or array_like
            A DataArray with a ``time`` dimension and at most one other dimension (the channels),
            or an array of shape ``(n_samples,)`` or ``(n_samples, n_channels)``.
        times : array_like, optional
            Sample times for an array input (a DataArray's ``time`` coordinate is used otherwise).
        **update_kwargs
            Passed to :meth:`update` (DataArrays are aligned like ``data``).

        Returns
        -------
        xarray.Dataset
            The input (named after ``data``, or ``value``) and every result field, on the
            dimensions and coordinates of ``data``, with ``units`` and ``long_name`` attrs; the
            detector's name and parameters in the Dataset attrs.

        Examples
        --------
        >>> import numpy as np, xarray as xr
        >>> from twinbench.kernel.detect import PersistenceThreshold
        >>> time = np.datetime64("2024-01-01", "ns") + np.arange(60) * np.timedelta64(1, "s")
        >>> temp = xr.DataArray(np.r_[np.full(30, 60.0), np.full(30, 95.0)], name="temp",
        ...                     coords={"time": time}, attrs={"units": "degC"})
        >>> ds = PersistenceThreshold(level=90.0, duration=10.0).run(temp)
        >>> str(ds.time[ds.alarm].values[0])
        '2024-01-01T00:00:40.000000000'
        """
        import xarray as xr

        if isinstance(data, xr.Dataset):
            raise TypeError("data: expected an xarray.DataArray (pick one variable, ds['name']) "
                            "or an array, got an xarray.Dataset")
        if isinstance(data, xr.DataArray):
            if "time" not in data.dims:
                raise ValueError(f"data: expected a DataArray with a 'time' dimension, got dims "
                                 f"{data.dims}")
            if data.ndim > 2:
                raise ValueError(f"data: expected dims ('time',) or ('time', channel), got "
                                 f"{data.dims}")
            da = data.transpose("time", ...)
            if times is None and "time" in da.coords:
                times = da["time"].values
            kwargs = {k: (v.transpose(*[d for d in da.dims if d in v.dims]).values
                          if isinstance(v, xr.DataArray) else v)
                      for k, v in update_kwargs.items()}
            values = da.values
            dims, coords = da.dims, da.coords
            name = da.name if da.name is not None else "value"
            in_attrs = dict(da.attrs)
        else:
            values = np.asarray(data)
            kwargs = dict(update_kwargs)
            dims = ("time",) if values.ndim == 1 else ("time", "channel")
            coords = {"time": np.asarray(times)} if times is not None else {}
            name, in_attrs = "value", {}
        result = self.update(values, times=times, **kwargs)
        units = in_attrs.get("units")
        data_vars = {name: (dims, np.asarray(values), in_attrs)}
        for field, arr in zip(result._fields, result, strict=True):
            data_vars[field] = (dims, arr, self._field_attrs(field, units))
        attrs = {"detector": type(self).__name__}
        for k, v in self.parameters().items():
            attrs[k] = "None" if v is None else (v if isinstance(v, (int, float, str)) else str(v))
        return xr.Dataset(data_vars, coords=coords, attrs=attrs)


# --- EWMA z-score ---------------------------------------------------------------------------------

class EwmaZScore(_Detector):
    """Exponentially weighted moving-average z-score.

    Each sample is compared with the EWMA mean and variance of the samples *before* it, so an
    outlier does not inflate its own sigma: ``zscore = (x - mean) / max(sqrt(var), min_std)``.
    Then ``mean += alpha * (x - mean)`` and ``var = (1 - alpha) * (var + alpha * (x - mean)**2)``
    (the incremental EW variance of Finch, 2009). The first sample of a channel initialises the
    mean (its z-score is NaN).

    Parameters
    ----------
    alpha : float
        Smoothing factor in (0, 1]; the memory is about ``1 / alpha`` samples.
    threshold : float
        Alarm when ``|zscore| > threshold`` (> 0).
    warmup : int, optional
        Valid samples a channel must have seen before it may alarm. Default ``ceil(3 / alpha)``,
        by which the variance estimate has reached 95 % of its steady value.
    min_std : float
        Floor of the sigma used in the z-score (>= 0); guards against quantised, flat signals.
    n_channels : int, optional
        Fix the number of channels now instead of at the first batch.
    backend : {"auto", "c", "numpy"}
        Compiled kernel or NumPy reference.

    Notes
    -----
    A missing sample (NaN, +-inf) gets a NaN z-score and no alarm, and leaves the state as it was.
    With ``min_std = 0`` a deviation from a perfectly constant history has an infinite z-score.

    Examples
    --------
    >>> import numpy as np
    >>> from twinbench.kernel.detect import EwmaZScore
    >>> x = np.random.default_rng(0).normal(size=1000)
    >>> x[800] += 8.0
    >>> det = EwmaZScore(alpha=0.02, threshold=5.0)
    >>> r = det.update(x[:500]); r = det.update(x[500:])   # two batches, one stream
    >>> np.flatnonzero(r.alarm) + 500
    array([800])
    """

    _result = EwmaResult
    _long_names = {"zscore": "EWMA z-score", "alarm": "EWMA z-score alarm"}

    def __init__(self, alpha: float = 0.01, threshold: float = 4.0, *, warmup: int | None = None,
                 min_std: float = 0.0, n_channels: int | None = None, backend: str = "auto"):
        self.alpha = _positive("alpha", alpha)
        if self.alpha > 1.0:
            raise ValueError(f"alpha: expected a number in (0, 1], got {alpha!r}")
        self.threshold = _positive("threshold", threshold)
        self.warmup = (math.ceil(3.0 / self.alpha) if warmup is None
                       else _integer("warmup", warmup, 0))
        self.min_std = _non_negative("min_std", min_std)
        super().__init__(n_channels, backend)

    def parameters(self) -> dict[str, Any]:
        return {"alpha": self.alpha, "threshold": self.threshold, "warmup": self.warmup,
                "min_std": self.min_std}

    def _initial_state(self, c: int) -> dict[str, np.ndarray]:
        return {"mean": np.zeros(c), "var": np.zeros(c), "count": np.zeros(c, dtype=np.int64)}

    def update(self, values: Any, times: Any = None, *, out: Any = None) -> EwmaResult:
        """Process a batch.

        Parameters
        ----------
        values : array_like, shape (n_samples,) or (n_samples, n_channels)
            Samples in time order; NaN marks a missing sample.
        times : array_like, optional
            Not used by this detector (accepted so that every detector has the same call).
        out : result tuple, optional
            Arrays to write the results into (e.g. the result of an earlier batch of the same
            size); saves allocating new ones for every batch.

        Returns
        -------
        EwmaResult
            ``zscore`` (float64) and ``alarm`` (bool), shaped like ``values``.
        """
        x, was_1d = _as_batch("values", values)
        self._check_times(times, x.shape[0])
        self._channels(x)
        z, a = self._outputs(x.shape[0], (np.float64, np.bool_), out, was_1d)
        s = self._state
        self._impl.ewma_update(x, self.alpha, self.threshold, self.warmup, self.min_std,
                               s["mean"], s["var"], s["count"], z, a.view(np.uint8))
        return self._finish([z, a], was_1d, out)


# --- CUSUM ----------------------------------------------------------------------------------------

class Cusum(_Detector):
    """Two-sided tabular CUSUM (Page, 1954) on samples standardised by an in-control mean and
    sigma.

    With ``z = (x - mean) / std``: ``upper = max(0, upper + (z - k))`` and
    ``lower = max(0, lower + (-z - k))``; the alarm is ``upper > h or lower > h``. ``k`` and ``h``
    are in units of sigma: the usual ``k = 0.5, h = 5`` detects a one-sigma shift in about 10
    samples, and a process in control raises a (false) alarm every 470 samples on average
    (about 930 per side; Montgomery, *Introduction to Statistical Quality Control*, sec. 9.1).

    Parameters
    ----------
    k : float
        Reference value (allowance), >= 0: half the shift to detect, in sigmas.
    h : float
        Decision interval, > 0, in sigmas.
    mean, std : float or array of one value per channel, optional
        In-control mean and standard deviation. What is not given is estimated per channel from
        its first ``warmup`` valid samples (sample mean and ``ddof=1`` standard deviation); the
        sums are NaN and no alarm is raised during that calibration.
    warmup : int
        Calibration length, used only when ``mean`` or ``std`` is estimated (>= 2 for ``std``).
    reset_on_alarm : bool
        Restart both sums from zero after an alarm (one alarm per crossing) instead of letting
        them run on (alarm held while the shift lasts).
    n_channels : int, optional
        Fix the number of channels now instead of at the first batch.
    backend : {"auto", "c", "numpy"}
        Compiled kernel or NumPy reference.

    Notes
    -----
    A missing sample gives NaN sums, the alarm state of the previous sample and leaves the state
    unchanged. A calibration on a constant signal gives ``std = 0``: every later deviation then
    alarms.

    Examples
    --------
    >>> import numpy as np
    >>> from twinbench.kernel.detect import Cusum
    >>> x = np.random.default_rng(1).normal(size=600)
    >>> x[400:] += 1.0                       # a one-sigma step at sample 400
    >>> r = Cusum(k=0.5, h=5.0, mean=0.0, std=1.0).update(x)
    >>> first = int(np.argmax(r.alarm)); 400 <= first < 440
    True
    """

    _result = CusumResult
    _long_names = {"upper": "CUSUM upper sum", "lower": "CUSUM lower sum", "alarm": "CUSUM alarm"}

    def __init__(self, k: float = 0.5, h: float = 5.0, *, mean: Any = None, std: Any = None,
                 warmup: int = 100, reset_on_alarm: bool = False, n_channels: int | None = None,
                 backend: str = "auto"):
        self.k = _non_negative("k", k)
        self.h = _positive("h", h)
        self.mean = None if mean is None else _per_channel("mean", mean, positive=False)
        self.std = None if std is None else _per_channel("std", std, positive=True)
        if not isinstance(reset_on_alarm, (bool, np.bool_)):
            raise TypeError(f"reset_on_alarm: expected a bool, got {reset_on_alarm!r}")
        self.reset_on_alarm = bool(reset_on_alarm)
        sizes = {a.size for a in (self.mean, self.std) if a is not None and a.size > 1}
        if len(sizes) > 1:
            raise ValueError(f"mean, std: per-channel arrays must have the same length, got "
                             f"{self.mean.size} and {self.std.size}")
        if sizes:
            c = sizes.pop()
            if n_channels is not None and n_channels != c:
                raise ValueError(f"n_channels: {n_channels} does not match the {c} per-channel "
                                 "values of mean/std")
            n_channels = c
        if self.mean is not None and self.std is not None:
            self.warmup = 0
        else:
            self.warmup = _integer("warmup", warmup, 2 if self.std is None else 1)
        super().__init__(n_channels, backend)

    def parameters(self) -> dict[str, Any]:
        def show(a):
            return None if a is None else (float(a[0]) if a.size == 1 else a.tolist())
        return {"k": self.k, "h": self.h, "mean": show(self.mean), "std": show(self.std),
                "warmup": self.warmup, "reset_on_alarm": self.reset_on_alarm}

    def _initial_state(self, c: int) -> dict[str, np.ndarray]:
        for name, a in (("mean", self.mean), ("std", self.std)):
            if a is not None and a.size not in (1, c):
                raise ValueError(f"values: {name} was given for {a.size} channels, the batch "
                                 f"has {c}")
        mu = np.full(c, np.nan) if self.mean is None else np.broadcast_to(self.mean, c).copy()
        inv = (np.full(c, np.nan) if self.std is None
               else 1.0 / np.broadcast_to(self.std, c))
        return {"count": np.zeros(c, dtype=np.int64), "wmean": np.zeros(c), "wm2": np.zeros(c),
                "mu": mu, "inv_sd": inv, "upper": np.zeros(c), "lower": np.zeros(c)}

    @property
    def reference(self) -> tuple[np.ndarray, np.ndarray] | None:
        """The in-control ``(mean, std)`` per channel in use (NaN while still calibrating)."""
        if not self._state:
            return None
        s = self._state
        done = s["count"] >= self.warmup
        return (np.where(done, s["mu"], np.nan), np.where(done, 1.0 / s["inv_sd"], np.nan))

    def update(self, values: Any, times: Any = None, *, out: Any = None) -> CusumResult:
        """Process a batch.

        Parameters
        ----------
        values : array_like, shape (n_samples,) or (n_samples, n_channels)
            Samples in time order; NaN marks a missing sample.
        times : array_like, optional
            Not used by this detector (accepted so that every detector has the same call).
        out : result tuple, optional
            Arrays to write the results into (e.g. the result of an earlier batch of the same
            size); saves allocating new ones for every batch.

        Returns
        -------
        CusumResult
            ``upper``, ``lower`` (float64, in sigmas) and ``alarm`` (bool), shaped like
            ``values``.
        """
        x, was_1d = _as_batch("values", values)
        self._check_times(times, x.shape[0])
        self._channels(x)
        up, lo, a = self._outputs(x.shape[0], (np.float64, np.float64, np.bool_), out, was_1d)
        s = self._state
        self._impl.cusum_update(x, self.k, self.h, self.warmup, self.mean is None,
                                self.std is None, self.reset_on_alarm, s["count"], s["wmean"],
                                s["wm2"], s["mu"], s["inv_sd"], s["upper"], s["lower"], up, lo,
                                a.view(np.uint8))
        return self._finish([up, lo, a], was_1d, out)


# --- rolling statistics ---------------------------------------------------------------------------

class RollingStats(_Detector):
    """Mean and variance over the last ``window`` samples, updated per sample (Welford).

    Each new sample replaces the oldest in a ring buffer and the mean and sum of squared
    deviations are updated by the windowed Welford recurrences, on data shifted by a value near
    the window's mean, so they stay accurate on signals with a large offset (e.g.
    ``1e6 + noise``). Every few thousand samples (a whole number of windows) they are recomputed
    exactly from the buffer, so rounding does not build up over long streams.

    Parameters
    ----------
    window : int
        Window length in samples (>= 1).
    ddof : int
        Delta degrees of freedom of the variance (1: sample variance, as pandas; 0: population).
    min_periods : int, optional
        Valid samples the window must hold for a result (otherwise NaN, no alarm). Default:
        ``window``.
    low, high : float, optional
        Alarm when the rolling mean leaves ``[low, high]``.
    max_std : float, optional
        Alarm when the rolling standard deviation exceeds ``max_std`` (tested as
        ``var > max_std**2``).
    n_channels : int, optional
        Fix the number of channels now instead of at the first batch.
    backend : {"auto", "c", "numpy"}
        Compiled kernel or NumPy reference.

    Notes
    -----
    The window counts samples, missing ones included: a missing sample pushes the oldest out
    and adds nothing, and the statistics are those of the valid samples left in the window.

    Examples
    --------
    >>> import numpy as np
    >>> from twinbench.kernel.detect import RollingStats
    >>> x = 1e6 + np.arange(10.0)
    >>> r = RollingStats(window=4).update(x)
    >>> float(r.mean[-1]), round(float(r.var[-1]), 12)       # of 1e6 + [6, 7, 8, 9]
    (1000007.5, 1.666666666667)
    """

    _result = RollingResult
    _long_names = {"mean": "rolling mean", "var": "rolling variance",
                   "alarm": "rolling statistics alarm"}
    #: Recompute the window's mean and variance exactly from the buffer about this often
    #: (samples, rounded up to whole windows).
    _RESYNC_SAMPLES = 4096

    def __init__(self, window: int = 100, *, ddof: int = 1, min_periods: int | None = None,
                 low: float | None = None, high: float | None = None,
                 max_std: float | None = None, n_channels: int | None = None,
                 backend: str = "auto"):
        self.window = _integer("window", window, 1)
        self.ddof = _integer("ddof", ddof, 0)
        self.min_periods = (self.window if min_periods is None
                            else _integer("min_periods", min_periods, 1))
        if self.min_periods > self.window:
            raise ValueError(f"min_periods: expected at most window={self.window}, got "
                             f"{min_periods}")
        self.low = None if low is None else _finite("low", low)
        self.high = None if high is None else _finite("high", high)
        if self.low is not None and self.high is not None and self.low > self.high:
            raise ValueError(f"low: expected low <= high, got low={low!r} > high={high!r}")
        self.max_std = None if max_std is None else _positive("max_std", max_std)
        super().__init__(n_channels, backend)

    def parameters(self) -> dict[str, Any]:
        return {"window": self.window, "ddof": self.ddof, "min_periods": self.min_periods,
                "low": self.low, "high": self.high, "max_std": self.max_std}

    def _initial_state(self, c: int) -> dict[str, np.ndarray]:
        self._resync_wraps = max(1, -(-self._RESYNC_SAMPLES // self.window))
        return {"ring": np.full((self.window, c), np.nan), "pos": np.zeros(2, dtype=np.int64),
                "count": np.zeros(c, dtype=np.int64), "shift": np.zeros(c), "mean": np.zeros(c),
                "m2": np.zeros(c)}

    def _field_attrs(self, field: str, units: str | None) -> dict[str, str]:
        u = {"mean": units or "1", "var": f"({units})2" if units else "1", "alarm": "1"}[field]
        return {"units": u, "long_name": f"{self._long_names[field]} over {self.window} samples"}

    def update(self, values: Any, times: Any = None, *, out: Any = None) -> RollingResult:
        """Process a batch.

        Parameters
        ----------
        values : array_like, shape (n_samples,) or (n_samples, n_channels)
            Samples in time order; NaN marks a missing sample.
        times : array_like, optional
            Not used by this detector (accepted so that every detector has the same call).
        out : result tuple, optional
            Arrays to write the results into (e.g. the result of an earlier batch of the same
            size); saves allocating new ones for every batch.

        Returns
        -------
        RollingResult
            ``mean``, ``var`` (float64) and ``alarm`` (bool), shaped like ``values``.
        """
        x, was_1d = _as_batch("values", values)
        self._check_times(times, x.shape[0])
        self._channels(x)
        m, v, a = self._outputs(x.shape[0], (np.float64, np.float64, np.bool_), out, was_1d)
        s = self._state
        low = -np.inf if self.low is None else self.low
        high = np.inf if self.high is None else self.high
        max_var = np.inf if self.max_std is None else self.max_std * self.max_std
        self._impl.rolling_update(x, self.ddof, self.min_periods, low, high, max_var,
                                  self._resync_wraps, s["ring"], s["pos"], s["count"],
                                  s["shift"], s["mean"], s["m2"], m, v, a.view(np.uint8))
        return self._finish([m, v, a], was_1d, out)


# --- threshold with persistence -------------------------------------------------------------------

class PersistenceThreshold(_Detector):
    """Alarm when a signal has stayed above (or below) a level for a given time.

    A *run* starts at the first sample beyond ``level`` and lasts while the samples stay beyond
    it; the alarm rises once the run has lasted ``duration`` seconds (``t - t_start >=
    duration``) and falls at the first sample back on the near side of ``clear_level``. With
    ``clear_level`` inside the level (hysteresis), an alarm, and its run, hold while the signal
    sits between the two levels.

    Parameters
    ----------
    level : float
        The threshold X of "above X for T seconds".
    duration : float, numpy.timedelta64 or datetime.timedelta
        T, in seconds (>= 0; 0 alarms at the first sample beyond the level).
    clear_level : float, optional
        Level at which an alarm clears (default ``level``). Must not lie beyond ``level``.
    direction : {"above", "below"}
        Whether the condition is ``x > level`` or ``x < level``.
    sample_period : float, optional
        Seconds between samples, for streams without time stamps: ``update`` may then be called
        without ``times`` and sample ``i`` of the stream is at ``i * sample_period``.
    n_channels : int, optional
        Fix the number of channels now instead of at the first batch.
    backend : {"auto", "c", "numpy"}
        Compiled kernel or NumPy reference.

    Notes
    -----
    Times are ``datetime64`` or float seconds (one kind per stream), shared by all channels, and
    must not decrease, within a batch or from one batch to the next. A missing sample neither
    starts, extends nor ends a run: its ``elapsed`` is NaN and its alarm is that of the sample
    before.

    Examples
    --------
    >>> import numpy as np
    >>> from twinbench.kernel.detect import PersistenceThreshold
    >>> t = np.arange(20.0)                                 # one sample per second
    >>> x = np.where((t >= 5) & (t < 15), 2.0, 0.0)         # above 1.0 from t=5 s to t=14 s
    >>> r = PersistenceThreshold(level=1.0, duration=4.0).update(x, t)
    >>> t[r.alarm]
    array([ 9., 10., 11., 12., 13., 14.])
    """

    _result = PersistenceResult
    _long_names = {"elapsed": "time beyond the level in the current run",
                   "alarm": "persistence alarm"}

    def __init__(self, level: float, duration: Any, *, clear_level: float | None = None,
                 direction: str = "above", sample_period: float | None = None,
                 n_channels: int | None = None, backend: str = "auto"):
        self.level = _finite("level", level)
        self.duration = _seconds("duration", duration)
        self.direction = _choice("direction", direction, ("above", "below"))
        self.clear_level = self.level if clear_level is None else _finite("clear_level",
                                                                          clear_level)
        if direction == "above" and self.clear_level > self.level:
            raise ValueError(f"clear_level: expected <= level={self.level} for direction "
                             f"'above', got {clear_level!r}")
        if direction == "below" and self.clear_level < self.level:
            raise ValueError(f"clear_level: expected >= level={self.level} for direction "
                             f"'below', got {clear_level!r}")
        self.sample_period = (None if sample_period is None
                              else _positive("sample_period", sample_period))
        super().__init__(n_channels, backend)

    def parameters(self) -> dict[str, Any]:
        return {"level": self.level, "duration": self.duration, "clear_level": self.clear_level,
                "direction": self.direction, "sample_period": self.sample_period}

    def reset(self) -> None:
        super().reset()
        self._time_kind: str | None = None   # "datetime", "seconds" or "index"
        self._origin_ns = 0                  # datetime streams: time 0 (ns since the epoch)
        self._last_time = -np.inf            # seconds since the origin
        self._n_seen = 0

    def _initial_state(self, c: int) -> dict[str, np.ndarray]:
        return {"run_start": np.full(c, np.nan), "alarm": np.zeros(c, dtype=np.uint8)}

    def _field_attrs(self, field: str, units: str | None) -> dict[str, str]:
        return {"units": "s" if field == "elapsed" else "1", "long_name": self._long_names[field]}

    def _times(self, times: Any, n: int) -> np.ndarray:
        """Float seconds since the stream's origin, validated (non-decreasing, no NaN/NaT)."""
        if times is None:
            if self.sample_period is None:
                raise ValueError("times: required (or construct the detector with "
                                 "sample_period=... for streams without time stamps)")
            kind = "index"
            t = np.arange(self._n_seen, self._n_seen + n, dtype=np.float64) * self.sample_period
        else:
            arr = np.asarray(times)
            if arr.shape != (n,):
                raise ValueError(f"times: expected shape ({n},) to match values, got shape "
                                 f"{arr.shape}")
            if arr.dtype.kind == "M":
                kind = "datetime"
                ns = arr.astype("datetime64[ns]").view(np.int64)
                if n and np.any(np.isnat(arr)):
                    raise ValueError("times: expected timestamps, got NaT")
                if self._time_kind is None and n:
                    self._origin_ns = int(ns[0])
                # Relative to the stream's first time stamp: float seconds since 1970 would keep
                # only ~0.2 us resolution.
                t = (ns - self._origin_ns).astype(np.float64) / 1e9
            elif arr.dtype.kind in "iuf":
                kind = "seconds"
                t = np.ascontiguousarray(arr, dtype=np.float64)
            else:
                raise TypeError(f"times: expected datetime64 or float seconds, got dtype "
                                f"{arr.dtype}")
        if self._time_kind is not None and kind != self._time_kind:
            raise TypeError(f"times: this stream has used {self._time_kind} times so far, got "
                            f"{kind} times")
        if not self._impl.times_ok(t, self._last_time):
            if not np.all(np.isfinite(t)):
                raise ValueError("times: expected finite seconds, got NaN or inf")
            raise ValueError("times: expected non-decreasing times (also across batches)")
        return t

    def update(self, values: Any, times: Any = None, *, out: Any = None) -> PersistenceResult:
        """Process a batch.

        Parameters
        ----------
        values : array_like, shape (n_samples,) or (n_samples, n_channels)
            Samples in time order; NaN marks a missing sample.
        times : array_like of datetime64 or float seconds, shape (n_samples,)
            Sample times, shared by all channels. Optional if ``sample_period`` was given.
        out : PersistenceResult, optional
            Arrays to write the results into (e.g. the result of an earlier batch of the same
            size); saves allocating new ones for every batch.

        Returns
        -------
        PersistenceResult
            ``elapsed`` (float64 seconds) and ``alarm`` (bool), shaped like ``values``.
        """
        x, was_1d = _as_batch("values", values)
        n = x.shape[0]
        t = self._times(times, n)
        self._channels(x)
        el, a = self._outputs(n, (np.float64, np.bool_), out, was_1d)
        s = self._state
        sign = 1.0 if self.direction == "above" else -1.0
        self._impl.persistence_update(x, t, sign, sign * self.level, sign * self.clear_level,
                                      self.duration, s["run_start"], s["alarm"], el,
                                      a.view(np.uint8))
        if self._time_kind is None and n:
            self._time_kind = "index" if times is None else (
                "datetime" if np.asarray(times).dtype.kind == "M" else "seconds")
        if n:
            self._last_time = float(t[-1])
        self._n_seen += n
        return self._finish([el, a], was_1d, out)


# --- chi-square test of the NIS -------------------------------------------------------------------

class NisChiSquare(_Detector):
    """Chi-square consistency test of an estimator's normalised innovation squared (NIS).

    For a consistent filter the NIS of a sample with ``m`` measured components is chi-square
    distributed with ``m`` degrees of freedom, and the sum over a window of ``W`` samples with
    ``D`` components in all is chi-square with ``D`` (Bar-Shalom, Li & Kirubarajan, 2001,
    sec. 5.4). The detector keeps that moving-window sum and alarms when it leaves the
    ``significance``-level acceptance region for the window's ``D``. ``D`` varies from sample to
    sample when measurements are missing, so the bounds come from a table indexed by ``D``
    (built with ``scipy.stats.chi2`` and extended when larger ``dof`` arrive).

    Parameters
    ----------
    window : int
        Samples in the moving window (>= 1).
    significance : float
        False-alarm probability per sample for a consistent filter, in (0, 1).
    alternative : {"two-sided", "greater", "less"}
        ``"greater"`` alarms only on too-large innovations (a fault, an overconfident filter),
        ``"less"`` only on too-small ones (an overly cautious filter); ``"two-sided"`` on both,
        with ``significance / 2`` in each tail.
    dof : int, optional
        Default number of measured components per sample, for ``update`` calls without ``dof``.
    n_channels : int, optional
        Fix the number of channels (independent estimators) now instead of at the first batch.
    backend : {"auto", "c", "numpy"}
        Compiled kernel or NumPy reference.

    Notes
    -----
    A sample whose NIS is missing (NaN, +-inf) or whose ``dof`` is 0 adds nothing to the window.
    While the window holds no data the statistic is NaN and there is no alarm.

    Examples
    --------
    >>> import numpy as np
    >>> from twinbench.kernel.detect import NisChiSquare
    >>> rng = np.random.default_rng(2)
    >>> nis = rng.chisquare(2, size=2000)            # a consistent filter, 2 components
    >>> nis[1500:] *= 4.0                            # innovations 2x too large from here on
    >>> r = NisChiSquare(window=20, significance=0.01, alternative="greater").update(nis, dof=2)
    >>> bool(r.alarm[:1500].mean() < 0.05), bool(r.alarm[1520:].mean() > 0.9)
    (True, True)
    """

    _result = NisResult
    _long_names = {"statistic": "windowed NIS sum", "dof": "windowed degrees of freedom",
                   "alarm": "NIS chi-square test alarm"}
    #: Re-sum the window from the buffer about this often (samples, rounded up to whole windows).
    _RESYNC_SAMPLES = 4096

    def __init__(self, window: int = 20, significance: float = 0.05, *,
                 alternative: str = "two-sided", dof: int | None = None,
                 n_channels: int | None = None, backend: str = "auto"):
        self.window = _integer("window", window, 1)
        self.significance = _positive("significance", significance)
        if self.significance >= 1.0:
            raise ValueError(f"significance: expected a probability in (0, 1), got "
                             f"{significance!r}")
        self.alternative = _choice("alternative", alternative, ("two-sided", "greater", "less"))
        self.dof = None if dof is None else _integer("dof", dof, 1)
        self._lower = np.array([-np.inf])
        self._upper = np.array([np.inf])
        super().__init__(n_channels, backend)

    def parameters(self) -> dict[str, Any]:
        return {"window": self.window, "significance": self.significance,
                "alternative": self.alternative, "dof": self.dof}

    def _initial_state(self, c: int) -> dict[str, np.ndarray]:
        self._resync_wraps = max(1, -(-self._RESYNC_SAMPLES // self.window))
        return {"ring_nis": np.zeros((self.window, c)),
                "ring_dof": np.zeros((self.window, c), dtype=np.int64),
                "pos": np.zeros(2, dtype=np.int64), "nis_sum": np.zeros(c),
                "dof_sum": np.zeros(c, dtype=np.int64)}

    def bounds(self, dof: Any) -> tuple[np.ndarray, np.ndarray]:
        """Lower and upper acceptance bounds of the windowed NIS sum for ``dof`` degrees of
        freedom (``-inf`` / ``+inf`` where a side is not tested or ``dof`` is 0)."""
        d = np.asarray(dof)
        if d.dtype.kind not in "iu" or np.any(d < 0):
            raise ValueError(f"dof: expected non-negative integers, got {dof!r}")
        self._ensure_tables(int(d.max()) if d.size else 0)
        return self._lower[d], self._upper[d]

    def _ensure_tables(self, d_max: int) -> None:
        if d_max < self._lower.size:
            return
        from scipy.stats import chi2

        # Grow geometrically so that a slowly rising dof does not rebuild the table every batch.
        size = max(d_max + 1, 2 * self._lower.size, self.window * (self.dof or 1) + 1)
        d = np.arange(1, size, dtype=np.float64)
        lower = np.full(size, -np.inf)
        upper = np.full(size, np.inf)
        a = self.significance
        if self.alternative == "two-sided":
            lower[1:] = chi2.ppf(a / 2.0, d)
            upper[1:] = chi2.isf(a / 2.0, d)
        elif self.alternative == "greater":
            upper[1:] = chi2.isf(a, d)
        else:
            lower[1:] = chi2.ppf(a, d)
        self._lower, self._upper = lower, upper

    def _field_attrs(self, field: str, units: str | None) -> dict[str, str]:
        return {"units": "1", "long_name": f"{self._long_names[field]} over {self.window} samples"}

    def _as_dof(self, dof: Any, shape: tuple[int, int]) -> tuple[np.ndarray, int]:
        if dof is None:
            if self.dof is None:
                raise ValueError("dof: required (the number of measured components of each "
                                 "sample), or construct the detector with dof=...")
            dof = self.dof
        arr = np.asarray(dof)
        if arr.dtype.kind == "f":
            if not np.all(np.isfinite(arr)) or np.any(arr != np.round(arr)):
                raise ValueError("dof: expected whole numbers of measured components, got "
                                 "non-integer or NaN values")
        elif arr.dtype.kind not in "iu":
            raise TypeError(f"dof: expected integers, got dtype {arr.dtype}")
        n, c = shape
        if arr.ndim == 1 and arr.shape[0] == n:
            arr = arr[:, None]                 # one dof per sample, shared by the channels
        try:
            arr = np.broadcast_to(arr.astype(np.int64, copy=False), shape)
        except ValueError:
            raise ValueError(f"dof: expected a scalar, shape ({n},) or shape {shape}, got "
                             f"shape {np.shape(dof)}") from None
        d_max = int(arr.max()) if arr.size else 0
        if arr.size and int(arr.min()) < 0:
            raise ValueError("dof: expected non-negative numbers of measured components")
        return arr, d_max

    def update(self, nis: Any, dof: Any = None, times: Any = None, *,
               out: Any = None) -> NisResult:
        """Process a batch.

        Parameters
        ----------
        nis : array_like, shape (n_samples,) or (n_samples, n_channels)
            Normalised innovation squared of each sample (>= 0; NaN for a sample without
            measurements).
        dof : int or array_like of int, optional
            Measured components of each sample: a scalar, ``(n_samples,)`` (shared by the
            channels) or ``(n_samples, n_channels)``. Default: the constructor's ``dof``.
        times : array_like, optional
            Not used by this detector (accepted so that every detector has the same call).
        out : result tuple, optional
            Arrays to write the results into (e.g. the result of an earlier batch of the same
            size); saves allocating new ones for every batch.

        Returns
        -------
        NisResult
            ``statistic`` (float64), ``dof`` (int64) and ``alarm`` (bool), shaped like ``nis``.
        """
        x, was_1d = _as_batch("nis", nis)
        self._check_times(times, x.shape[0])
        if self._impl.any_negative(x):
            raise ValueError("nis: expected non-negative values (an NIS is a squared norm)")
        d, d_max = self._as_dof(dof, x.shape)
        self._channels(x, "nis")
        self._ensure_tables(self.window * d_max)
        st, od, a = self._outputs(x.shape[0], (np.float64, np.int64, np.bool_), out, was_1d)
        s = self._state
        self._impl.nis_update(x, d, self._lower, self._upper, self._resync_wraps,
                              s["ring_nis"], s["ring_dof"], s["pos"], s["nis_sum"],
                              s["dof_sum"], st, od, a.view(np.uint8))
        return self._finish([st, od, a], was_1d, out)

    def run(self, data: Any, times: Any = None, **update_kwargs: Any):
        """Like :meth:`_Detector.run`, plus ``lower`` and ``upper`` bounds of the statistic.

        Examples
        --------
        >>> import numpy as np, xarray as xr
        >>> from twinbench.kernel.detect import NisChiSquare
        >>> nis = xr.DataArray(np.random.default_rng(3).chisquare(1, 50), dims="time",
        ...                    name="nis")
        >>> ds = NisChiSquare(window=10, dof=1).run(nis)
        >>> sorted(ds.data_vars)
        ['alarm', 'dof', 'lower', 'nis', 'statistic', 'upper']
        """
        ds = super().run(data, times=times, **update_kwargs)
        lower, upper = self.bounds(ds["dof"].values)
        ds["lower"] = (ds["dof"].dims, lower, {"units": "1", "long_name": "lower acceptance "
                                               "bound of the windowed NIS sum"})
        ds["upper"] = (ds["dof"].dims, upper, {"units": "1", "long_name": "upper acceptance "
                                               "bound of the windowed NIS sum"})
        return ds
