"""Automatic checks for the exercises in the tutorials.

Each check takes what the student built (a twin, its state, a detector, a projection) and returns
a :class:`CheckResult`: ``PASS`` or ``FAIL`` with the numbers it judged and, on a failure, a hint
at what to change. A check never raises on a wrong answer (only on input it cannot judge), so a
notebook with a wrong answer still runs to the end; ``bool(result)`` says whether it passed.

- :func:`check_nis` — notebook 5: tune the EKF's measurement noise ``R`` until the NIS test
  passes (the filter is as sure of itself as its residuals justify).
- :func:`check_earlier_detection` — notebook 5: a detector that sees the bearing fault earlier
  than the tutorial's CUSUM, without a false alarm before the fault.
- :func:`check_setpoint` — notebooks 6 and 7: a speed setpoint whose what-if projection keeps
  every limit (flow, motor temperature, vibration of a worn bearing) until the horizon.

The instructor notes (``docs/teaching/instructor-notes.md``) give the solutions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["CheckResult", "check_earlier_detection", "check_nis", "check_setpoint"]


@dataclass(frozen=True)
class CheckResult:
    """The verdict of an exercise check.

    Attributes
    ----------
    passed : bool
        Whether the answer is right.
    message : str
        ``PASS: ...`` or ``FAIL: ...`` with the numbers judged and, on a failure, a hint.
    details : dict
        The numbers behind the verdict (for tests and for curious students).

    Examples
    --------
    >>> r = CheckResult(False, "FAIL: mean NIS 51.1 is above 7.33")
    >>> bool(r), r
    (False, FAIL: mean NIS 51.1 is above 7.33)
    """

    passed: bool
    message: str
    details: dict[str, Any] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return self.passed

    def __repr__(self) -> str:  # what a notebook cell shows
        return self.message

    __str__ = __repr__


def _state_of(twin_or_state: Any) -> Any:
    import xarray as xr

    if isinstance(twin_or_state, xr.Dataset):
        return twin_or_state
    state = getattr(twin_or_state, "state", None)
    if isinstance(state, xr.Dataset):
        return state
    raise TypeError(f"twin_or_state: expected a Twin or its state (an xarray.Dataset), got "
                    f"{type(twin_or_state).__name__}")


def nis_bounds(n_measured: int, window: int = 30, alpha: float = 0.05) -> tuple[float, float]:
    """Two-sided ``1 - alpha`` bounds of the mean NIS over `window` samples of `n_measured`
    sensors, for a consistent filter (the window's sum is chi-square with
    ``window * n_measured`` degrees of freedom).

    Examples
    --------
    >>> [round(b, 2) for b in nis_bounds(6)]
    [4.82, 7.3]
    """
    from scipy.stats import chi2

    if isinstance(n_measured, bool) or not isinstance(n_measured, int) or n_measured < 1:
        raise ValueError(f"n_measured: expected a count >= 1, got {n_measured!r}")
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise ValueError(f"window: expected a sample count >= 1, got {window!r}")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha: expected a probability in (0, 1), got {alpha!r}")
    dof = window * n_measured
    return float(chi2.ppf(alpha / 2, dof) / window), float(chi2.ppf(1 - alpha / 2, dof) / window)


def check_nis(twin_or_state: Any, *, skip: int = 10, window: int = 30, alpha: float = 0.05,
              noise: dict[str, float] | None = None) -> CheckResult:
    """Is the filter consistent: does the mean NIS lie where the chi-square test expects it?

    The normalised innovation squared (NIS) of a well-tuned Kalman filter averages the number of
    sensors. Much larger: the filter is overconfident (``R`` or ``Q`` too small), and it will
    raise false NIS alarms and follow noise. Much smaller: it is underconfident (``R`` too
    large) and reacts late. The check compares the mean NIS after the first `skip` samples
    with :func:`nis_bounds` for averaging windows of `window` samples.

    Parameters
    ----------
    twin_or_state : Twin or xarray.Dataset
        A twin with an estimator, or its state: the ``nis`` variable and one
        ``<sensor>_residual`` per sensor.
    skip : int
        Samples left out at the start (the filter settling from its initial guess).
    window : int
        Samples the NIS test averages (``NisChiSquare(window=...)``); at least this many are
        needed after `skip`.
    alpha : float
        Two-sided significance: 0.05 gives the 95 % band.
    noise : dict of str to float, optional
        ``R`` per sensor (variances), for the hint; a twin's own ``noise`` when a twin is given.

    Returns
    -------
    CheckResult
        ``details``: ``mean_nis``, ``bounds``, ``samples`` and, with ``R`` known,
        ``residual_ratio`` (residual std / sqrt(R) per sensor: about 1 when R is right).

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> rng = np.random.default_rng(0)
    >>> residuals = rng.normal(0, 1, (200, 2))
    >>> state = xr.Dataset({"nis": ("time", (residuals ** 2).sum(axis=1)),
    ...                     "a_residual": ("time", residuals[:, 0]),
    ...                     "b_residual": ("time", residuals[:, 1])})
    >>> check_nis(state).passed
    True
    >>> check_nis(state.assign(nis=state.nis * 10))
    FAIL: mean NIS 20.08 is above the 95 % band 1.35..2.78 for 2 sensors: the filter is overconfident. Raise R (measurement noise) of the sensors whose residuals are large; if every residual is, raise Q.
    """
    state = _state_of(twin_or_state)
    if "nis" not in state:
        raise ValueError("twin_or_state: no 'nis' variable: give a twin with an estimator (R, Q)")
    sensors = [str(v)[: -len("_residual")] for v in state.data_vars
               if str(v).endswith("_residual")]
    if not sensors:
        raise ValueError("twin_or_state: no '<sensor>_residual' variables")
    if noise is None and not hasattr(twin_or_state, "data_vars"):
        noise = getattr(twin_or_state, "noise", None)
    nis = np.asarray(state["nis"].values, dtype=float)[skip:]
    nis = nis[np.isfinite(nis)]
    lo, hi = nis_bounds(len(sensors), window, alpha)
    details: dict[str, Any] = {"samples": int(nis.size), "bounds": (lo, hi)}
    if nis.size < window:
        return CheckResult(False, f"FAIL: only {nis.size} NIS values after the first {skip}; the "
                                  f"test needs {window}. Let the twin run longer.", details)
    mean = float(nis.mean())
    details["mean_nis"] = mean
    ratios: dict[str, float] = {}
    if noise:
        for s in sensors:
            r = np.asarray(state[f"{s}_residual"].values, dtype=float)[skip:]
            r = r[np.isfinite(r)]
            if s in noise and noise[s] > 0 and r.size > 1:
                ratios[s] = float(r.std() / math.sqrt(noise[s]))
        details["residual_ratio"] = ratios
    band = f"the {100 * (1 - alpha):g} % band {lo:.2f}..{hi:.2f} for {len(sensors)} sensors"
    if lo <= mean <= hi:
        return CheckResult(True, f"PASS: mean NIS {mean:.2f} is inside {band}: the filter is as "
                                 "sure of itself as its residuals justify.", details)
    if mean > hi:
        worst = sorted((s for s in ratios if ratios[s] > 1.5), key=ratios.get, reverse=True)
        hint = ("Raise R (measurement noise) of "
                + (", ".join(f"{s} (residual {ratios[s]:.1f}x sqrt(R))" for s in worst)
                   if worst else "the sensors whose residuals are large; if every residual is, "
                                 "raise Q") + ".")
        return CheckResult(False, f"FAIL: mean NIS {mean:.2f} is above {band}: the filter is "
                                  f"overconfident. {hint}", details)
    low = sorted((s for s in ratios if ratios[s] < 0.7), key=ratios.get)
    hint = ("Lower R of " + (", ".join(f"{s} (residual {ratios[s]:.2f}x sqrt(R))" for s in low)
                             if low else "the sensors, or Q") + ".")
    return CheckResult(False, f"FAIL: mean NIS {mean:.2f} is below {band}: the filter is "
                              f"underconfident (it distrusts good data and reacts late). {hint}",
                       details)


def _first_alarm(detector: Any, values: np.ndarray) -> int | None:
    """Index of the first alarm of a fresh copy of `detector` run over `values` (None: none)."""
    fresh = detector.copy()
    fresh.reset()
    alarm = np.asarray(fresh.update(values).alarm, dtype=bool)
    if alarm.ndim > 1:
        alarm = alarm.any(axis=tuple(range(1, alarm.ndim)))
    hits = np.flatnonzero(alarm)
    return int(hits[0]) if hits.size else None


def check_earlier_detection(signal: Any, fault_time: Any, detector: Any,
                            default: Any = None) -> CheckResult:
    """Does `detector` see the fault earlier than `default`, with no alarm before the fault?

    Both detectors run afresh (copies, reset) over the recorded `signal`, so the check does not
    depend on when the student's detector was created or what it saw before.

    Parameters
    ----------
    signal : xarray.DataArray
        The monitored signal over ``time`` (e.g. ``twin.state.vibration``); NaNs are dropped.
    fault_time : datetime64 or str
        When the fault was injected (plant time). An alarm before it is a false alarm.
    detector : a twinbench.kernel.detect detector
        The student's (``Cusum``, ``EwmaZScore``, ``PersistenceThreshold``, ...).
    default : detector, optional
        The rule to beat; the tutorial's ``Cusum(k=0.5, h=8.0, warmup=30)`` by default.

    Returns
    -------
    CheckResult
        ``details``: ``fault_time``, ``alarm_time`` and ``default_alarm_time`` (None: no alarm),
        ``delay_s`` and ``default_delay_s`` (seconds of plant time after the fault).

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> from twinbench.kernel.detect import Cusum
    >>> rng = np.random.default_rng(1)
    >>> t = np.datetime64("2026-01-01") + np.arange(400) * np.timedelta64(1, "s")
    >>> x = 1.0 + 0.05 * rng.normal(size=400) + np.where(np.arange(400) >= 200, 0.002, 0.0) * np.arange(-200, 200)
    >>> vib = xr.DataArray(x, coords={"time": t}, dims="time")
    >>> check_earlier_detection(vib, t[200], Cusum(k=0.25, h=6.0, warmup=30)).passed
    True
    >>> check_earlier_detection(vib, t[200], Cusum(k=0.5, h=8.0, warmup=30)).passed
    False
    """
    if default is None:
        from twinbench.kernel.detect import Cusum

        default = Cusum(k=0.5, h=8.0, warmup=30)
    for name, d in (("detector", detector), ("default", default)):
        if not (hasattr(d, "update") and hasattr(d, "copy")):
            raise TypeError(f"{name}: expected a twinbench.kernel.detect detector, got "
                            f"{type(d).__name__}")
    if "time" not in getattr(signal, "dims", ()):
        raise TypeError("signal: expected an xarray.DataArray over 'time', such as "
                        "twin.state.vibration")
    signal = signal.dropna("time")
    times = signal.time.values
    values = np.asarray(signal.values, dtype=float)
    fault = np.datetime64(fault_time, "ns")
    if not times.size or fault <= times[0] or fault >= times[-1]:
        raise ValueError(f"fault_time: expected a time inside the signal "
                         f"({times[0] if times.size else '-'}..{times[-1] if times.size else '-'}), "
                         f"got {fault}")
    mine, theirs = _first_alarm(detector, values), _first_alarm(default, values)

    def when(i: int | None) -> tuple[Any, float | None]:
        if i is None:
            return None, None
        return times[i], float((times[i] - fault) / np.timedelta64(1, "s"))

    (t_mine, d_mine), (t_theirs, d_theirs) = when(mine), when(theirs)
    details = {"fault_time": fault, "alarm_time": t_mine, "delay_s": d_mine,
               "default_alarm_time": t_theirs, "default_delay_s": d_theirs}
    rule = f"the default rule's {d_theirs:.0f} s" if d_theirs is not None else \
        "the default rule (no alarm)"
    if d_mine is None:
        return CheckResult(False, f"FAIL: your detector raised no alarm at all (vs {rule}). "
                                  "Make it more sensitive: a smaller h (decision interval) or k "
                                  "(allowance).", details)
    if d_mine < 0:
        return CheckResult(False, f"FAIL: false alarm {-d_mine:.0f} s before the fault. Too "
                                  "sensitive: noise alone crosses your threshold; raise h (or k) "
                                  "a little.", details)
    if d_theirs is not None and d_mine >= d_theirs:
        return CheckResult(False, f"FAIL: your detector alarmed {d_mine:.0f} s after the fault, "
                                  f"not earlier than {rule}. Lower h (fewer sigmas of evidence "
                                  "needed) or k (reacts to smaller shifts).", details)
    return CheckResult(True, f"PASS: your detector alarmed {d_mine:.0f} s after the fault "
                             f"(plant time), earlier than {rule}, with no false alarm before "
                             "it.", details)


def check_setpoint(projection: Any, speed_setpoint_rpm: float,
                   limits: dict[str, tuple[float | None, float | None]], *,
                   confidence: float = 0.9, best: str | None = None,
                   step_rpm: float = 100.0) -> CheckResult:
    """Does the projection at `speed_setpoint_rpm` keep every limit until the horizon?

    Judge a what-if projection (``twin.whatif(..., changes={"speed_setpoint": [...]})``): the
    scenarios at the answer's setpoint pass when at least `confidence` of them keep every limit
    over the whole horizon. With ``best="lowest"`` the answer must also be the cheapest such
    setpoint to within `step_rpm`: the projection must hold ``speed_setpoint_rpm - step_rpm``
    too, and that one must fail (``best="highest"``: the most productive, ``+ step_rpm``
    fails).

    Parameters
    ----------
    projection : xarray.Dataset
        A projection with a ``scenario`` dimension and a ``speed_setpoint`` per scenario
        (scenario 0, the mirror, is left out).
    speed_setpoint_rpm : float
        The answer.
    limits : dict of str to (low, high)
        Per variable, the lowest and highest allowed values (None: no bound), e.g.
        ``{"flow_rate": (80.0, None), "vibration": (None, 4.5)}``.
    confidence : float
        Share of the answer's scenarios that must keep the limits (0.9: nine in ten).
    best : {None, "lowest", "highest"}
        Also require the answer to be the lowest (highest) setpoint, within `step_rpm`, that
        passes.
    step_rpm : float
        The resolution asked for with `best`.

    Returns
    -------
    CheckResult
        ``details``: ``ok_share`` per setpoint in the projection, ``violations`` per limited
        variable at the answer.

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> sp = np.array([2400.0, 2000.0, 2200.0, 2400.0])   # scenario 0 is the mirror
    >>> flow = np.outer(sp / 26.0, np.ones(5))           # m3/h over 5 times
    >>> proj = xr.Dataset({"flow_rate": (("scenario", "time"), flow),
    ...                    "speed_setpoint": ("scenario", sp)})
    >>> check_setpoint(proj, 2200.0, {"flow_rate": (80.0, None)}, best="lowest", step_rpm=200.0)
    PASS: at 2200 rpm 100 % of the projections keep every limit to the end of the horizon (needed 90 %); 2000 rpm breaks them: 2200 rpm is the lowest to within 200 rpm.
    >>> check_setpoint(proj, 2000.0, {"flow_rate": (80.0, None)}).passed
    False
    """
    if "scenario" not in getattr(projection, "dims", {}) or "speed_setpoint" not in projection:
        raise TypeError("projection: expected a twin.whatif(...) result with a 'scenario' "
                        "dimension and 'speed_setpoint'")
    if not limits:
        raise ValueError("limits: expected at least one {variable: (low, high)}")
    for name in limits:
        if name not in projection:
            raise ValueError(f"limits: {name!r} is not in the projection (it has "
                             f"{', '.join(map(str, projection.data_vars))})")
    if not 0.0 < confidence <= 1.0:
        raise ValueError(f"confidence: expected a share in (0, 1], got {confidence!r}")
    if best not in (None, "lowest", "highest"):
        raise ValueError(f"best: expected None, 'lowest' or 'highest', got {best!r}")
    answer = float(speed_setpoint_rpm)
    body = projection.isel(scenario=slice(1, None))  # scenario 0 mirrors "nothing changes"
    setpoints = np.asarray(body["speed_setpoint"].values, dtype=float)
    if setpoints.ndim > 1:  # a setpoint over time: its first value names the scenario
        setpoints = setpoints.reshape(setpoints.shape[0], -1)[:, 0]

    def ok_of(value: float) -> tuple[np.ndarray, dict[str, int]]:
        group = body.isel(scenario=np.flatnonzero(np.isclose(setpoints, value)))
        ok = np.ones(group.sizes["scenario"], dtype=bool)
        broken: dict[str, int] = {}
        for name, (low, high) in limits.items():
            v = np.asarray(group[name].values, dtype=float).reshape(group.sizes["scenario"], -1)
            bad = np.zeros(v.shape[0], dtype=bool)
            if low is not None:
                bad |= (v < low).any(axis=1)
            if high is not None:
                bad |= (v > high).any(axis=1)
            bad |= ~np.isfinite(v).all(axis=1)  # a diverged projection keeps nothing
            broken[name] = int(bad.sum())
            ok &= ~bad
        return ok, broken

    shares = {float(s): float(ok_of(s)[0].mean()) for s in np.unique(setpoints)}
    if not np.isclose(setpoints, answer).any():
        raise ValueError(f"speed_setpoint_rpm: {answer:g} rpm is not among the projection's "
                         f"setpoints {sorted(shares)}: run twin.whatif with it")
    ok, broken = ok_of(answer)
    share = float(ok.mean())
    details = {"ok_share": shares, "violations": broken}
    need = f"needed {100 * confidence:g} %"
    if share < confidence:
        which = ", ".join(f"{n} in {k}" for n, k in broken.items() if k)
        return CheckResult(False, f"FAIL: at {answer:.0f} rpm only {100 * share:.0f} % of the "
                                  f"projections keep every limit ({need}); broken: {which}. "
                                  "Try another setpoint: a limit on a minimum (flow) needs a "
                                  "higher speed, a limit on a maximum (temperature, vibration) a "
                                  "lower one.", details)
    msg = (f"at {answer:.0f} rpm {100 * share:.0f} % of the projections keep every limit to the "
           f"end of the horizon ({need})")
    if best is not None:
        lower = best == "lowest"
        other = answer - step_rpm if lower else answer + step_rpm
        if not np.isclose(setpoints, other).any():
            return CheckResult(False, f"FAIL: {msg}, but is it the {best}? Add {other:.0f} rpm "
                                      "to the projection's setpoints to show it does not do.",
                               details)
        if ok_of(other)[0].mean() >= confidence:
            return CheckResult(False, f"FAIL: {msg}, but {other:.0f} rpm keeps them too: go "
                                      + ("lower (cheaper)." if lower else
                                         "higher (more output)."), details)
        return CheckResult(True, f"PASS: {msg}; {other:.0f} rpm breaks them: {answer:.0f} rpm "
                                 f"is the {best} to within {step_rpm:.0f} rpm.", details)
    return CheckResult(True, f"PASS: {msg}.", details)
