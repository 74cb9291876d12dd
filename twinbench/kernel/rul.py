"""Degradation tracking and remaining useful life (RUL) with a particle filter.

A health indicator ``h`` (bearing vibration RMS, a crack length, a battery's lost capacity, ...)
drifts towards a failure threshold. :class:`ParticleFilterRUL` tracks the parameters of a
degradation model of ``h`` with a particle filter, batch by batch as measurements stream in, and
returns the distribution of the time left until ``h`` crosses the threshold.

Models
------
``"exponential"`` (compiled)
    ``h(t) = offset + sign * a * exp(b * t) + e``, ``e ~ N(0, measurement_std)``, with
    ``sign = +1`` for a rising indicator and ``-1`` for a falling one. Each particle carries
    ``log_a`` — the log of ``sign * (h - offset)`` at the time of the latest measurement (so it
    moves forward as ``log_a += b * dt``) — and the growth rate ``b`` (1/s). Between measurements
    both take a small random-walk step (``process_std``, per measurement), which keeps the particle
    cloud from collapsing and lets the filter follow a slowly changing rate. The RUL of a particle
    is analytic: ``(ln(sign * (threshold - offset)) - log_a) / b``, infinite when ``b <= 0``.
user-supplied (NumPy only)
    ``model=hi`` with ``hi(t, theta) -> h``: ``t`` a float in seconds since ``origin``, ``theta``
    an array ``(n_params, n_particles)``, returning ``(n_particles,)``; ``prior(rng, n)`` returns
    ``(n_params, n)`` samples. The parameters are fixed in time apart from the random-walk jitter.
    The weight update, normalisation and resampling still run in the compiled kernel, but the
    model itself is Python, so each measurement costs one call of ``hi`` and the RUL is found by
    evaluating ``hi`` forward on a grid of ``grid_points`` steps up to ``horizon`` (linear
    interpolation between grid points).

The filter is the sequential importance resampling (bootstrap) filter with systematic resampling
when the effective sample size falls below ``resample_threshold * n_particles``. All random numbers
are drawn in Python from three independent streams spawned from ``seed`` (prior, process noise,
resampling offsets), one set per measurement, so the filter is reproducible and gives the same
particles whether a series arrives in one batch or many, and the compiled and NumPy kernels agree
to rounding.

References
----------
M. S. Arulampalam, S. Maskell, N. Gordon, T. Clapp, "A tutorial on particle filters for online
nonlinear/non-Gaussian Bayesian tracking", IEEE Trans. Signal Process. 50(2), 2002.
D. An, J.-H. Choi, N. H. Kim, "Prognostics 101: a tutorial for particle filter-based prognostics
algorithm using Matlab", Reliab. Eng. Syst. Saf. 115, 2013.
N. Gebraeel et al., "Residual-life distributions from component degradation signals: a Bayesian
approach", IIE Trans. 37(6), 2005 (the exponential degradation model).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

from twinbench.kernel import _degrade_py
from twinbench.kernel._check_build import pure_python

__all__ = ["ParticleFilterRUL", "RULEstimate"]

_EXP_PARAMS = ("log_a", "b")
# Largest block of process noise drawn at once (doubles): bounds the memory a filter keeps for it.
_NOISE_BLOCK = 1 << 18


class RULEstimate(NamedTuple):
    """RUL summary after an update (light, for the streaming path; see ``ParticleFilterRUL.rul``).

    Attributes
    ----------
    time : numpy.datetime64, float or None
        Time of the latest assimilated measurement (None before the first); the RUL counts from it.
    quantile : ndarray
        Quantile levels.
    rul : ndarray
        RUL at those levels, seconds (``inf``: not reached / beyond the horizon).
    expected : float
        Expected RUL, seconds (of ``min(RUL, horizon)`` when there is a horizon).
    failure_probability : float
        Probability that the threshold is crossed within ``failure_within`` seconds (NaN if none).
    ess : float
        Effective sample size at the latest measurement, before any resampling.
    """

    time: Any
    quantile: np.ndarray
    rul: np.ndarray
    expected: float
    failure_probability: float
    ess: float


def _kernel(backend: str):
    if backend not in ("auto", "c", "numpy"):
        raise ValueError(f"backend: expected 'auto', 'c' or 'numpy', got {backend!r}")
    if backend == "numpy" or (backend == "auto" and pure_python()):
        return _degrade_py
    from twinbench.kernel import _degrade

    return _degrade


def _finite(value: Any, name: str, *, positive: bool = False, nonneg: bool = False) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name}: expected a number, got {value!r}") from None
    if not math.isfinite(v):
        raise ValueError(f"{name}: expected a finite number, got {value!r}")
    if positive and not v > 0:
        raise ValueError(f"{name}: expected a number > 0, got {value!r}")
    if nonneg and v < 0:
        raise ValueError(f"{name}: expected a number >= 0, got {value!r}")
    return v


def _generators(seed: Any) -> list[np.random.Generator]:
    if isinstance(seed, np.random.Generator):
        return seed.spawn(3)
    if not isinstance(seed, np.random.SeedSequence):
        if seed is not None and not isinstance(seed, (int, np.integer)):
            raise TypeError(f"seed: expected None, an int, a SeedSequence or a Generator, got "
                            f"{type(seed).__name__}")
        try:
            seed = np.random.SeedSequence(seed)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"seed: {exc}") from None
    return [np.random.default_rng(s) for s in seed.spawn(3)]


def _prior_pair(prior: Mapping, key: str) -> tuple[float, float]:
    val = prior[key]
    if not (isinstance(val, Sequence) and len(val) == 2):
        raise ValueError(f"prior: {key!r} must be a (mean, std) pair, got {val!r}")
    mean = _finite(val[0], f"prior[{key!r}] mean")
    std = _finite(val[1], f"prior[{key!r}] std", nonneg=True)
    return mean, std


class ParticleFilterRUL:
    """Particle filter on a degradation model of a health indicator; RUL as quantiles.

    Parameters
    ----------
    model : "exponential" or callable
        ``"exponential"`` (compiled), or a NumPy-vectorised ``hi(t, theta) -> h`` (see the module
        docstring; ``t`` in seconds since ``origin``, ``theta`` of shape ``(n_params, n)``).
    threshold : float
        Failure threshold of the health indicator.
    measurement_std : float
        Standard deviation of the Gaussian measurement noise, in units of the indicator (> 0).
    n_particles : int
        Number of particles (>= 2).
    process_std : float or sequence of float, optional
        Standard deviation of the random-walk jitter added to each parameter at every measurement
        (``log_a`` and ``b`` for the exponential model). Default: 1 % of the prior's standard
        deviation of each parameter.
    prior : mapping or callable
        Exponential model: ``{"b": (mean, std), "log_a": (mean, std)}`` — normal priors on the
        growth rate (1/s, required) and on ``ln(sign * (h - offset))`` at ``origin``; without
        ``"log_a"`` it is centred on the first finite measurement with std 1. Either model:
        a callable ``prior(rng, n) -> (n_params, n)`` array of samples (rows ``log_a``, ``b`` for
        the exponential model). Required for a user-supplied model.
    direction : {"rising", "falling"}
        Whether the indicator rises to the threshold (vibration, wear) or falls to it (capacity).
    offset : float
        Exponential model: the indicator's asymptote for ``t -> -inf`` (its healthy baseline); the
        threshold must lie above it when rising, below it when falling.
    horizon : float, optional
        Seconds; a RUL beyond it counts as ``inf`` (never reached), and the expected RUL is that of
        ``min(RUL, horizon)``. Required for a user-supplied model (its RUL is searched on a grid up
        to the horizon); default none for the exponential model.
    quantiles : sequence of float
        Quantile levels reported by :meth:`update` and kept in :attr:`history`.
    failure_within : float, optional
        Seconds; :meth:`update` and :meth:`rul` report the probability of failure within it.
        Default: ``horizon``.
    resample_threshold : float
        Resample when the effective sample size falls below this fraction of ``n_particles``.
    param_names : sequence of str, optional
        Names of a user-supplied model's parameters (default ``theta0``, ``theta1``, ...).
    grid_points : int
        User-supplied model: number of grid steps over ``horizon`` in the RUL search.
    origin : datetime-like or float, optional
        The time at which the prior applies and, for a user-supplied model, ``t = 0``. Default:
        the time of the first measurement.
    history_size : int
        Number of updates kept in :attr:`history`.
    seed : int, SeedSequence or Generator, optional
        Seed of the filter's random streams.
    backend : {"auto", "c", "numpy"}
        Kernel implementation; ``"auto"`` is the compiled one unless ``TWINBENCH_PURE_PYTHON``.

    Examples
    --------
    >>> import numpy as np
    >>> from twinbench.kernel.rul import ParticleFilterRUL
    >>> t = np.arange(0.0, 100.0, 1.0) * 3600          # hourly for 100 h
    >>> b = np.log(10.0) / (150 * 3600)                # reaches 10x its level at 150 h
    >>> y = 0.5 * np.exp(b * t) + np.random.default_rng(0).normal(0, 0.05, t.size)
    >>> pf = ParticleFilterRUL(threshold=5.0, measurement_std=0.05,
    ...                        prior={"b": (0.0, 2e-5)}, seed=1)
    >>> est = pf.update(t, y)
    >>> bool(30 < est.rul[1] / 3600 < 70)              # median RUL in hours; the truth is 50 h
    True
    >>> ds = pf.rul()
    >>> ds.rul.attrs["units"]
    's'
    """

    def __init__(
        self,
        model: str | Callable = "exponential",
        *,
        threshold: float,
        measurement_std: float,
        n_particles: int = 2000,
        process_std: float | Sequence[float] | None = None,
        prior: Mapping | Callable | None = None,
        direction: str = "rising",
        offset: float = 0.0,
        horizon: float | None = None,
        quantiles: Sequence[float] = (0.05, 0.5, 0.95),
        failure_within: float | None = None,
        resample_threshold: float = 0.5,
        param_names: Sequence[str] | None = None,
        grid_points: int = 1000,
        origin: Any = None,
        history_size: int = 10_000,
        seed: Any = None,
        backend: str = "auto",
    ):
        self._k = _kernel(backend)
        self.backend = "numpy" if self._k is _degrade_py else "c"
        if isinstance(model, str):
            if model != "exponential":
                raise ValueError(f"model: expected 'exponential' or a callable hi(t, theta), got "
                                 f"{model!r}")
            self._hi = None
        elif callable(model):
            self._hi = model
        else:
            raise TypeError(f"model: expected 'exponential' or a callable hi(t, theta), got "
                            f"{type(model).__name__}")
        self.model = "exponential" if self._hi is None else getattr(model, "__name__", "custom")
        self.threshold = _finite(threshold, "threshold")
        self.measurement_std = _finite(measurement_std, "measurement_std", positive=True)
        if direction not in ("rising", "falling"):
            raise ValueError(f"direction: expected 'rising' or 'falling', got {direction!r}")
        self.direction = direction
        self._sign = 1.0 if direction == "rising" else -1.0
        self.offset = _finite(offset, "offset")
        if self._hi is None and not self._sign * (self.threshold - self.offset) > 0:
            side = "above" if self._sign > 0 else "below"
            raise ValueError(f"threshold: a {direction} indicator fails when it crosses the "
                             f"threshold, which must lie {side} offset={self.offset}; got "
                             f"threshold={self.threshold}")
        if isinstance(n_particles, bool) or not isinstance(n_particles, (int, np.integer)):
            raise TypeError(f"n_particles: expected an int, got {type(n_particles).__name__}")
        if n_particles < 2:
            raise ValueError(f"n_particles: expected at least 2, got {n_particles}")
        self.n_particles = n = int(n_particles)
        if horizon is None:
            if self._hi is not None:
                raise ValueError("horizon: a user-supplied model needs a horizon (seconds) over "
                                 "which to search for the threshold crossing")
            self.horizon = math.inf
        else:
            self.horizon = _finite(horizon, "horizon", positive=True)
        if failure_within is None:
            self.failure_within = self.horizon if math.isfinite(self.horizon) else math.nan
        else:
            self.failure_within = _finite(failure_within, "failure_within", nonneg=True)
        self.quantiles = self._check_quantiles(quantiles)
        self.resample_threshold = _finite(resample_threshold, "resample_threshold")
        if not 0 < self.resample_threshold <= 1:
            raise ValueError(f"resample_threshold: expected a fraction in (0, 1], got "
                             f"{resample_threshold!r}")
        if isinstance(grid_points, bool) or not isinstance(grid_points, (int, np.integer)) \
                or grid_points < 1:
            raise ValueError(f"grid_points: expected a positive int, got {grid_points!r}")
        self.grid_points = int(grid_points)
        if isinstance(history_size, bool) or not isinstance(history_size, (int, np.integer)) \
                or history_size < 1:
            raise ValueError(f"history_size: expected a positive int, got {history_size!r}")

        prior_rng, self._noise_rng, self._resample_rng = _generators(seed)
        self._pending_log_a: tuple[float, np.ndarray] | None = None
        theta = self._draw_prior(prior, prior_rng, n)
        self.n_params = theta.shape[0]
        self.param_names = self._check_param_names(param_names)
        self._theta = np.ascontiguousarray(theta, dtype=np.float64)
        self._process_std = self._check_process_std(process_std, theta)
        self._logw = np.full(n, -math.log(n))
        self._w = np.full(n, 1.0 / n)
        self._work = np.empty_like(self._theta)
        self._idx = np.empty(n, dtype=np.intp)
        self._noise_buf: np.ndarray | None = None
        if self._hi is not None:
            # One trial call, so that a model of the wrong shape fails here and not mid-batch.
            view = self._theta.view()
            view.flags.writeable = False
            self._predict(0.0, view)

        self._origin_spec = origin
        self._time_kind: str | None = None   # "datetime" or "float", fixed by the first update
        self._origin: Any = None             # int64 ns or float s
        self._t_prev = 0.0                   # seconds since origin of the latest measurement
        self._t_last_abs: Any = None
        self._started = False
        self.n_measurements = 0
        self.n_skipped = 0
        self.n_resampled = 0
        self.n_collapsed = 0
        self.ess = math.nan
        self._version = 0
        self._rul_cache: tuple[int, np.ndarray] | None = None
        self._history: deque = deque(maxlen=int(history_size))

    # -- set-up --------------------------------------------------------------------------------
    @staticmethod
    def _check_quantiles(quantiles: Any) -> np.ndarray:
        try:
            q = np.array(quantiles, dtype=np.float64, ndmin=1)
        except (TypeError, ValueError):
            raise TypeError(f"quantiles: expected a sequence of numbers, got {quantiles!r}") \
                from None
        if q.ndim != 1 or q.size == 0:
            raise ValueError(f"quantiles: expected a non-empty 1-D sequence, got shape {q.shape}")
        if not np.all((q >= 0) & (q <= 1)):
            raise ValueError(f"quantiles: expected levels in [0, 1], got {q.tolist()}")
        return q

    def _draw_prior(self, prior: Any, rng: np.random.Generator, n: int) -> np.ndarray:
        if callable(prior):
            theta = np.asarray(prior(rng, n), dtype=np.float64)
            if theta.ndim != 2 or theta.shape[1] != n or theta.shape[0] < 1:
                raise ValueError(f"prior: prior(rng, n) must return an array of shape (n_params, "
                                 f"{n}), got {theta.shape}")
            if self._hi is None and theta.shape[0] != 2:
                raise ValueError(f"prior: the exponential model has 2 parameters (log_a, b); "
                                 f"prior returned {theta.shape[0]} rows")
            if not np.all(np.isfinite(theta)):
                raise ValueError("prior: prior(rng, n) returned NaN or infinite samples")
            return theta
        if self._hi is not None:
            raise TypeError("prior: a user-supplied model needs a callable prior(rng, n) returning "
                            f"(n_params, n) samples, got {type(prior).__name__}")
        if not isinstance(prior, Mapping):
            raise TypeError("prior: the exponential model needs a prior on its growth rate, e.g. "
                            "prior={'b': (mean, std)} in 1/s, or a callable prior(rng, n); got "
                            f"{type(prior).__name__}")
        unknown = set(prior) - set(_EXP_PARAMS)
        if unknown:
            raise KeyError(f"prior: unknown parameters {sorted(unknown)}; the exponential model "
                           f"has {list(_EXP_PARAMS)}")
        if "b" not in prior:
            raise KeyError("prior: the exponential model needs a prior on 'b' (growth rate, 1/s), "
                           "e.g. prior={'b': (1e-6, 1e-6)}")
        b_mean, b_std = _prior_pair(prior, "b")
        # Draw log_a's normals first, whether or not its mean is known yet, so that the stream
        # does not depend on where the prior came from.
        z = rng.standard_normal(n)
        b = b_mean + b_std * rng.standard_normal(n)
        if "log_a" in prior:
            a_mean, a_std = _prior_pair(prior, "log_a")
            z = a_mean + a_std * z
        else:
            self._pending_log_a = (1.0, z)
            z = np.zeros(n)
        return np.stack([z, b])

    def _check_param_names(self, names: Any) -> tuple[str, ...]:
        if self._hi is None:
            if names is not None and tuple(names) != _EXP_PARAMS:
                raise ValueError(f"param_names: the exponential model's parameters are "
                                 f"{_EXP_PARAMS}, got {names!r}")
            return _EXP_PARAMS
        if names is None:
            return tuple(f"theta{j}" for j in range(self.n_params))
        names = tuple(str(s) for s in names)
        if len(names) != self.n_params or len(set(names)) != len(names) \
                or not all(s.isidentifier() for s in names):
            raise ValueError(f"param_names: expected {self.n_params} distinct identifiers, got "
                             f"{names!r}")
        return names

    def _check_process_std(self, process_std: Any, theta: np.ndarray) -> np.ndarray:
        p = self.n_params
        if process_std is None:
            if self._pending_log_a is not None:
                spread = np.array([self._pending_log_a[0], float(np.std(theta[1]))])
            else:
                spread = np.std(theta, axis=1)
            return np.ascontiguousarray(0.01 * spread, dtype=np.float64)
        try:
            std = np.array(process_std, dtype=np.float64, ndmin=1)
        except (TypeError, ValueError):
            raise TypeError(f"process_std: expected a number or a sequence of {p} numbers, got "
                            f"{process_std!r}") from None
        if std.size == 1:
            std = np.full(p, std[0])
        if std.shape != (p,):
            raise ValueError(f"process_std: expected a number or {p} numbers (one per parameter "
                             f"{self.param_names}), got shape {std.shape}")
        if not np.all(np.isfinite(std) & (std >= 0)):
            raise ValueError(f"process_std: expected finite values >= 0, got {std.tolist()}")
        return np.ascontiguousarray(std)

    # -- time ----------------------------------------------------------------------------------
    def _relative_times(self, times: Any, n: int) -> tuple[np.ndarray, np.ndarray, str, Any]:
        """Validate ``times``; return seconds since origin, the absolute times (datetime64[ns] or
        float s), the kind of time and the origin (int ns or float s)."""
        t = np.asarray(times)
        if t.ndim != 1 or t.shape[0] != n:
            raise ValueError(f"times: expected a 1-D array of the same length as values ({n}), got "
                             f"shape {t.shape}")
        if np.issubdtype(t.dtype, np.datetime64):
            kind = "datetime"
            t = t.astype("datetime64[ns]")
            if np.any(np.isnat(t)):
                raise ValueError("times: contains NaT")
        elif np.issubdtype(t.dtype, np.number) and not np.issubdtype(t.dtype, np.complexfloating):
            kind = "float"
            t = t.astype(np.float64)
            if not np.all(np.isfinite(t)):
                raise ValueError("times: contains NaN or infinite values")
        else:
            raise TypeError(f"times: expected datetime64 or float seconds, got dtype {t.dtype}")
        if self._time_kind is not None and kind != self._time_kind:
            raise TypeError(f"times: this filter was started with {self._time_kind} times, got "
                            f"{kind} times")
        if n == 0:
            return np.empty(0), t, kind, self._origin
        origin = self._origin if self._time_kind is not None else self._make_origin(kind, t[0])
        if kind == "datetime":
            rel = (t.view(np.int64) - origin).astype(np.float64) / 1e9
        else:
            rel = t - origin
        bad = np.diff(rel) < 0
        if np.any(bad):
            k = int(np.argmax(bad))
            raise ValueError(f"times: must be non-decreasing; times[{k + 1}] < times[{k}]")
        if rel[0] < 0:
            raise ValueError(f"times: the first measurement {t[0]} precedes origin "
                             f"{self._origin_spec}")
        if self._started and rel[0] < self._t_prev:
            raise ValueError(f"times: the batch starts at {t[0]}, before the latest assimilated "
                             f"measurement {self._t_last_abs}")
        return rel, t, kind, origin

    def _make_origin(self, kind: str, first: Any) -> int | float:
        spec = self._origin_spec
        if kind == "datetime":
            if spec is None:
                return int(first.view(np.int64))
            if isinstance(spec, (float, int, np.number)) and not isinstance(spec, np.datetime64):
                raise TypeError(f"origin: expected a datetime-like value for datetime64 times, "
                                f"got {spec!r}")
            try:
                origin = np.datetime64(spec, "ns")
            except (TypeError, ValueError):
                raise TypeError(f"origin: expected a datetime-like value for datetime64 times, "
                                f"got {spec!r}") from None
            if np.isnat(origin):
                raise ValueError("origin: got NaT")
            return int(origin.view(np.int64))
        if spec is None:
            return float(first)
        if isinstance(spec, (np.datetime64, str)):
            raise TypeError(f"origin: expected float seconds for float times, got {spec!r}")
        return _finite(spec, "origin")

    # -- filtering -----------------------------------------------------------------------------
    def update(self, times: Any, values: Any) -> RULEstimate:
        """Assimilate a batch of measurements; return the RUL summary at the latest one.

        Parameters
        ----------
        times : array of datetime64 or of float seconds, shape (m,)
            Non-decreasing, and not before the latest measurement of earlier batches. A filter
            keeps the kind of time (datetime64 or float) of its first batch.
        values : array of float, shape (m,)
            Health indicator. NaN and infinite values are skipped (counted in ``n_skipped``).

        Returns
        -------
        RULEstimate
            Quantiles (``self.quantiles``) of the RUL, in seconds from the latest measurement.
        """
        try:
            y = np.asarray(values, dtype=np.float64)
        except (TypeError, ValueError):
            raise TypeError(f"values: expected an array of numbers, got {type(values).__name__}") \
                from None
        if y.ndim != 1:
            raise ValueError(f"values: expected a 1-D array, got shape {y.shape}")
        rel, t_abs, kind, origin = self._relative_times(times, y.shape[0])
        ok = np.isfinite(y)
        if not np.any(ok):
            self.n_skipped += y.shape[0]
            return self.estimate()
        rel = np.ascontiguousarray(rel[ok])
        t_last = t_abs[ok][-1]
        if self._pending_log_a is not None:
            self._init_log_a(y[ok][0])
            # log_a is now the level at the first finite measurement, so the filter's clock
            # starts there (not at a skipped sample or an earlier origin).
            self._t_prev = float(rel[0])
        # The batch is valid: only now does it fix the kind of time and the origin.
        self._time_kind = kind
        self._origin = origin
        self.n_skipped += int(y.shape[0] - np.count_nonzero(ok))
        y = np.ascontiguousarray(y[ok])
        t_last = t_last if kind == "datetime" else float(t_last)
        m = y.shape[0]
        p, n = self._theta.shape
        block = max(1, _NOISE_BLOCK // (p * n))
        ess = np.empty(m)
        resampled = np.zeros(m, dtype=np.uint8)
        if self._noise_buf is None or self._noise_buf.shape[0] < min(m, block):
            # Reused between batches: fresh pages for every batch cost as much as filling them.
            self._noise_buf = np.empty((min(m, block), p, n))
        for s in range(0, m, block):
            e = min(m, s + block)
            noise = self._noise_buf[:e - s]
            self._noise_rng.standard_normal(out=noise)
            uniforms = self._resample_rng.random(e - s)
            if self._hi is None:
                self.n_collapsed += self._k.exp_filter(
                    self._theta, self._logw, rel[s:e], y[s:e], noise, uniforms, self._t_prev,
                    self._process_std, self.measurement_std, self.offset, self._sign,
                    self.resample_threshold, ess[s:e], resampled[s:e], self._w, self._work,
                    self._idx)
            else:
                self._custom_filter(rel[s:e], y[s:e], noise, uniforms, ess[s:e], resampled[s:e])
            self._t_prev = float(rel[e - 1])
        self.n_measurements += m
        self.n_resampled += int(resampled.sum())
        self.ess = float(ess[-1])
        self._t_last_abs = t_last
        self._started = True
        self._version += 1
        est = self.estimate()
        self._history.append(est)
        return est

    def _init_log_a(self, first: float) -> None:
        dist = self._sign * (first - self.offset)
        if not dist > 0:
            side = "above" if self._sign > 0 else "below"
            raise ValueError(f"values: the first measurement {first} is not {side} offset="
                             f"{self.offset}, so log_a's prior cannot be centred on it; pass "
                             f"prior['log_a'] or a suitable offset")
        std, z = self._pending_log_a
        self._theta[0] = math.log(dist) + std * z
        self._pending_log_a = None

    def _custom_filter(self, rel, y, noise, uniforms, ess_out, resampled_out) -> None:
        theta = self._theta
        view = theta.view()
        view.flags.writeable = False
        for k in range(y.shape[0]):
            self._k.jitter(theta, self._process_std, noise[k])
            pred = self._predict(float(rel[k]), view)
            ess, res = self._k.assimilate(theta, self._logw, pred, float(y[k]),
                                          self.measurement_std, float(uniforms[k]),
                                          self.resample_threshold, self._w, self._work, self._idx)
            if ess == 0.0:
                self.n_collapsed += 1
            ess_out[k] = ess
            resampled_out[k] = res

    def _predict(self, t: float, theta: np.ndarray) -> np.ndarray:
        with np.errstate(all="ignore"):
            h = np.asarray(self._hi(t, theta), dtype=np.float64)
        if h.shape != (self.n_particles,):
            raise ValueError(f"model: hi(t, theta) must return shape ({self.n_particles},) for "
                             f"theta of shape {theta.shape}, got {h.shape}")
        return np.ascontiguousarray(h)

    # -- RUL -----------------------------------------------------------------------------------
    def _rul_particles(self) -> np.ndarray:
        if self._rul_cache is not None and self._rul_cache[0] == self._version:
            return self._rul_cache[1]
        out = np.empty(self.n_particles)
        if self._hi is None:
            self._k.exp_rul(self._theta, self.offset, self._sign, self.threshold, self.horizon, out)
        else:
            self._grid_rul(out)
        self._rul_cache = (self._version, out)
        return out

    def _grid_rul(self, out: np.ndarray) -> None:
        view = self._theta.view()
        view.flags.writeable = False
        step = self.horizon / self.grid_points
        t0 = self._t_prev
        s, thr = self._sign, self.threshold
        h_prev = self._predict(t0, view)
        crossed = s * (h_prev - thr) >= 0
        out.fill(np.inf)
        out[crossed] = 0.0
        alive = ~crossed
        for k in range(1, self.grid_points + 1):
            if not alive.any():
                break
            h = self._predict(t0 + k * step, view)
            new = alive & (s * (h - thr) >= 0)
            if new.any():
                hp, hk = h_prev[new], h[new]
                with np.errstate(all="ignore"):
                    frac = (thr - hp) / (hk - hp)
                frac = np.where(np.isfinite(frac), np.clip(frac, 0.0, 1.0), 1.0)
                out[new] = (k - 1 + frac) * step
                alive &= ~new
            h_prev = h

    def estimate(self, quantiles: Sequence[float] | None = None,
                 within: float | None = None) -> RULEstimate:
        """RUL summary now, as a light :class:`RULEstimate` (NaN before the first measurement)."""
        q = self.quantiles if quantiles is None else self._check_quantiles(quantiles)
        within = self.failure_within if within is None else _finite(within, "within", nonneg=True)
        if not self._started:
            nan = np.full(q.shape, np.nan)
            return RULEstimate(None, q, nan, math.nan, math.nan, math.nan)
        rul = self._rul_particles()
        out = np.empty(q.shape)
        # NaN ``within`` (no horizon to ask about): compute with -inf, report NaN.
        mean, p = self._k.weighted_summary(rul, self._logw, q,
                                           -math.inf if math.isnan(within) else within,
                                           self.horizon, out)
        if math.isnan(within):
            p = math.nan
        return RULEstimate(self._t_last_abs, q, out, float(mean), float(p), self.ess)

    def rul(self, quantiles: Sequence[float] | None = None, within: float | None = None):
        """The RUL distribution now, as an ``xarray.Dataset``.

        Parameters
        ----------
        quantiles : sequence of float, optional
            Quantile levels (default ``self.quantiles``).
        within : float, optional
            Seconds; horizon of ``failure_probability`` (default ``self.failure_within``).

        Returns
        -------
        xarray.Dataset
            ``rul`` (dim ``quantile``, seconds from the latest measurement, ``inf`` = not
            reached), ``expected``, ``failure_probability``, ``ess``, a scalar ``time``
            coordinate (the latest measurement) and, for datetime64 times, ``failure_time``
            (dim ``quantile``, NaT when not reached). Before any measurement, all NaN.
        """
        import xarray as xr

        est = self.estimate(quantiles, within)
        within_s = self.failure_within if within is None else float(within)
        coords: dict[str, Any] = {"quantile": ("quantile", est.quantile,
                                               {"units": "1", "long_name": "quantile level"})}
        if est.time is not None:
            coords["time"] = ((), est.time, {"long_name": "time of the latest measurement"}
                              | ({"units": "s"} if self._time_kind == "float" else {}))
        data: dict[str, Any] = {
            "rul": ("quantile", est.rul, {"units": "s", "long_name": "remaining useful life"}),
            "expected": ((), est.expected, {
                "units": "s",
                "long_name": "expected remaining useful life"
                + (" (capped at the horizon)" if math.isfinite(self.horizon) else "")}),
            "failure_probability": ((), est.failure_probability, {
                "units": "1", "within_s": within_s,
                "long_name": f"probability of failure within {within_s:g} s"}),
            "ess": ((), est.ess, {"units": "1", "long_name": "effective sample size"}),
        }
        if self._time_kind == "datetime" and est.time is not None:
            finite = np.isfinite(est.rul)
            ft = np.full(est.rul.shape, np.datetime64("NaT", "ns"))
            ft[finite] = est.time + np.round(est.rul[finite] * 1e9).astype("timedelta64[ns]")
            data["failure_time"] = ("quantile", ft, {"long_name": "predicted failure time (UTC)"})
        return xr.Dataset(data, coords=coords, attrs=self._attrs())

    def _attrs(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "threshold": self.threshold,
            "direction": self.direction,
            "offset": self.offset,
            "measurement_std": self.measurement_std,
            "horizon_s": self.horizon,
            "n_particles": self.n_particles,
            "n_measurements": self.n_measurements,
            "n_skipped": self.n_skipped,
            "n_resampled": self.n_resampled,
            "n_collapsed": self.n_collapsed,
            "backend": self.backend,
        }

    @property
    def history(self):
        """RUL quantiles after each update (the last ``history_size``), as an ``xarray.Dataset``
        with dims ``time`` and ``quantile`` — for plotting the RUL trend."""
        import xarray as xr

        h = list(self._history)
        if h:
            times = np.array([e.time for e in h])
            rul = np.stack([e.rul for e in h])
        else:
            times = np.array([], dtype="datetime64[ns]" if self._time_kind != "float" else float)
            rul = np.empty((0, self.quantiles.size))
        time_attrs = {"long_name": "time of the latest measurement of the update"}
        if self._time_kind == "float":
            time_attrs["units"] = "s"
        return xr.Dataset(
            {
                "rul": (("time", "quantile"), rul,
                        {"units": "s", "long_name": "remaining useful life"}),
                "expected": ("time", np.array([e.expected for e in h]),
                             {"units": "s", "long_name": "expected remaining useful life"}),
                "failure_probability": ("time", np.array([e.failure_probability for e in h]),
                                        {"units": "1", "within_s": self.failure_within,
                                         "long_name": "probability of failure within "
                                                      f"{self.failure_within:g} s"}),
                "ess": ("time", np.array([e.ess for e in h]),
                        {"units": "1", "long_name": "effective sample size"}),
            },
            coords={"time": ("time", times, time_attrs),
                    "quantile": ("quantile", self.quantiles,
                                 {"units": "1", "long_name": "quantile level"})},
            attrs=self._attrs(),
        )

    @property
    def particles(self):
        """The particle cloud now: one variable per parameter and ``weight``, dim ``particle``."""
        import xarray as xr

        attrs = [{"long_name": name} for name in self.param_names]
        if self._hi is None:
            attrs = [{"units": "1",
                      "long_name": "log of |indicator - offset| at the latest measurement"},
                     {"units": "1/s", "long_name": "growth rate"}]
        data = {name: ("particle", self._theta[j].copy(), attrs[j])
                for j, name in enumerate(self.param_names)}
        data["weight"] = ("particle", np.exp(self._logw), {"units": "1",
                                                          "long_name": "normalised weight"})
        return xr.Dataset(data, attrs=self._attrs())

    @property
    def time(self) -> Any:
        """Time of the latest assimilated measurement (None before the first)."""
        return self._t_last_abs

    def __repr__(self) -> str:
        return (f"<ParticleFilterRUL model={self.model!r} threshold={self.threshold} "
                f"n_particles={self.n_particles} n_measurements={self.n_measurements} "
                f"backend={self.backend!r}>")
