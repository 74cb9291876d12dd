"""Predictive maintenance and performance KPIs on a twin's state.

- :class:`MaintenancePolicy`: a remaining-useful-life filter
  (:class:`~twinbench.kernel.rul.ParticleFilterRUL`) on a health indicator, updated with every
  batch; when the chosen RUL quantile falls below a threshold it raises a :class:`WorkOrder`
  (asset, finding, evidence, suggested action, due by), once until the work order is closed.
- :func:`kpis`: availability, performance, quality and OEE, throughput and energy per unit of
  output over a window of a state Dataset.

Examples
--------
>>> import numpy as np, xarray as xr
>>> t = np.datetime64("2026-01-01T00:00") + np.arange(5) * np.timedelta64(1, "h")
>>> ds = xr.Dataset({"flow": ("time", [100.0, 100, 0, 80, 80]), "power": ("time", [20.0] * 5)},
...                 coords={"time": t})
>>> k = kpis(ds, output="flow", ideal_rate=100.0, running=("flow", 1.0), power="power")
>>> round(float(k.availability), 2), round(float(k.performance), 2), round(float(k.oee), 2)
(0.8, 0.9, 0.72)
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

__all__ = ["MaintenancePolicy", "WorkOrder", "kpis"]


@dataclasses.dataclass
class WorkOrder:
    """A maintenance recommendation.

    Attributes
    ----------
    asset : str
    finding : str
        What the twin found (e.g. "vibration will reach 4.5 mm/s").
    evidence : dict
        The numbers behind it: RUL quantiles (hours), the indicator's latest value, the time.
    suggested_action : str
    due_by : numpy.datetime64
        When the chosen RUL quantile says the threshold may be reached.
    created : numpy.datetime64
    status : str
        ``"open"`` until :meth:`MaintenancePolicy.close`.
    """

    asset: str
    finding: str
    evidence: dict[str, Any]
    suggested_action: str
    due_by: np.datetime64
    created: np.datetime64
    status: str = "open"

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form (times as ISO strings, UTC)."""
        out = dataclasses.asdict(self)
        out["due_by"] = str(self.due_by) + "Z"
        out["created"] = str(self.created) + "Z"
        return out


class MaintenancePolicy:
    """RUL of a health indicator → a work order when a quantile falls below `below` seconds.

    Parameters
    ----------
    indicator : str
        The state variable the RUL filter follows (a measured tag or an estimated state).
    rul : ParticleFilterRUL
        The filter (its threshold defines "failure").
    below : float
        Seconds: a work order is raised when the RUL at `quantile` is shorter than this.
    quantile : float, default 0.1
        A pessimistic quantile by default (10 %: "1 chance in 10 that it fails sooner").
    action : str
        The suggested action on the work order.
    finding : str, optional
        Default: "<indicator> will reach <threshold>".
    """

    def __init__(self, indicator: str, rul: Any, *, below: float, quantile: float = 0.1,
                 action: str = "inspect and plan the repair", finding: str | None = None
                 ) -> None:
        if not isinstance(indicator, str) or not indicator:
            raise TypeError(f"indicator: expected a variable name, got {indicator!r}")
        if not hasattr(rul, "update") or not hasattr(rul, "threshold"):
            raise TypeError(f"rul: expected a ParticleFilterRUL, got {type(rul).__name__}")
        if not (isinstance(below, (int, float)) and below > 0 and math.isfinite(below)):
            raise ValueError(f"below: expected seconds > 0, got {below!r}")
        if not (isinstance(quantile, float) and 0 < quantile < 1):
            raise ValueError(f"quantile: expected a level in (0, 1), got {quantile!r}")
        levels = [float(q) for q in rul.quantiles]
        if not any(abs(q - quantile) < 1e-12 for q in levels):
            raise ValueError(f"quantile: {quantile} is not one of the filter's quantiles "
                             f"{levels}; pass quantiles=(..., {quantile}, ...) to it")
        self.indicator = indicator
        self.rul = rul
        self.below = float(below)
        self.quantile = quantile
        self._q_index = min(range(len(levels)), key=lambda i: abs(levels[i] - quantile))
        self.action = action
        self.finding = finding or f"{indicator} will reach {rul.threshold:g}"
        self.open: WorkOrder | None = None
        self.latest: Any = None

    def update(self, asset: str, times: np.ndarray, values: np.ndarray) -> WorkOrder | None:
        """Feed a batch of the indicator; a new :class:`WorkOrder` when one is due, else None."""
        est = self.rul.update(times, values)
        self.latest = est
        if est.time is None or self.open is not None:
            return None
        rul_q = float(est.rul[self._q_index])
        if not rul_q < self.below:
            return None
        now = np.datetime64(est.time, "ns")
        finite = [v for v in values if np.isfinite(v)]
        self.open = WorkOrder(
            asset=asset, finding=self.finding,
            evidence={"rul_hours": {f"q{q:g}": float(r) / 3600.0
                                    for q, r in zip(est.quantile, est.rul, strict=True)},
                      "indicator": self.indicator,
                      "latest_value": float(finite[-1]) if finite else math.nan,
                      "threshold": float(self.rul.threshold),
                      "failure_probability": float(est.failure_probability)},
            suggested_action=self.action,
            due_by=now + np.timedelta64(int(max(rul_q, 0.0) * 1e9), "ns"), created=now)
        return self.open

    def close(self) -> None:
        """The work is done: the next finding raises a new work order."""
        if self.open is not None:
            self.open.status = "closed"
        self.open = None


def _hold_durations(time: np.ndarray) -> np.ndarray:
    """Seconds each sample stands for (zero-order hold up to the next one; the last gets the
    median step)."""
    t = time.astype("datetime64[ns]").astype(np.int64) / 1e9
    if len(t) < 2:
        return np.zeros(len(t))
    dt = np.diff(t)
    return np.append(dt, np.median(dt))


def kpis(ds: Any, *, output: str, ideal_rate: float, running: tuple[str, float] | str,
         good: tuple[str, float, float] | None = None, power: str | None = None,
         start: Any = None, end: Any = None) -> Any:
    """Performance KPIs over a window of a state Dataset (time-weighted, zero-order hold).

    Parameters
    ----------
    ds : xarray.Dataset
        A twin's state or history (dim ``time``).
    output : str
        The production-rate variable (e.g. ``flow_rate`` in m3/h).
    ideal_rate : float
        The rate at full performance, in the units of `output` (e.g. the pump's best-efficiency
        flow).
    running : (variable, level) or str
        Running when ``variable > level`` (e.g. ``("speed", 100.0)``), or a 0/1 variable.
    good : (variable, low, high), optional
        Output counts as good while the variable lies in ``[low, high]`` (e.g. discharge
        pressure in spec); default all output is good.
    power : str, optional
        Power variable (kW or W): gives ``energy_per_unit`` (power units × h per output unit ×
        h, i.e. kWh per m3 for kW and m3/h).
    start, end : datetime-like, optional
        The window (default the whole dataset).

    Returns
    -------
    xarray.Dataset
        Scalars ``availability``, ``performance``, ``quality``, ``oee`` (fractions),
        ``throughput`` (output units × h), ``run_hours``, ``planned_hours`` and
        ``energy_per_unit`` when `power` is given; CF attrs.
    """
    import xarray as xr

    if "time" not in getattr(ds, "dims", {}):
        raise TypeError("ds: expected an xarray.Dataset with a time dimension")
    if start is not None or end is not None:
        ds = ds.sel(time=slice(start, end))
    for name in (output, *([power] if power else []),
                 running if isinstance(running, str) else running[0],
                 *([good[0]] if good else [])):
        if name not in ds:
            raise KeyError(f"ds: no variable {name!r}; it has {sorted(ds.data_vars)}")
    if not (isinstance(ideal_rate, (int, float)) and ideal_rate > 0):
        raise ValueError(f"ideal_rate: expected a positive rate, got {ideal_rate!r}")
    w = _hold_durations(ds.time.values) / 3600.0  # hours per sample
    rate = np.nan_to_num(ds[output].values.astype(float), nan=0.0)
    if isinstance(running, str):
        run = ds[running].values > 0.5
    else:
        run = ds[running[0]].values > running[1]
    planned = float(w.sum())
    run_h = float(w[run].sum())
    produced = float((rate * w)[run].sum())
    if good is not None:
        var = ds[good[0]].values
        ok = (var >= good[1]) & (var <= good[2])
        good_out = float((rate * w)[run & ok].sum())
    else:
        good_out = produced
    availability = run_h / planned if planned > 0 else math.nan
    performance = produced / (ideal_rate * run_h) if run_h > 0 else math.nan
    quality = good_out / produced if produced > 0 else math.nan
    data = {
        "availability": (availability, "1", "run time / planned time"),
        "performance": (performance, "1", "output / (ideal rate x run time)"),
        "quality": (quality, "1", "good output / output"),
        "oee": (availability * performance * quality, "1", "overall equipment effectiveness"),
        "throughput": (produced, f"{ds[output].attrs.get('units', '1')} h",
                       f"{output} integrated over the window"),
        "run_hours": (run_h, "h", "hours running"),
        "planned_hours": (planned, "h", "hours in the window"),
    }
    if power is not None:
        energy = float((np.nan_to_num(ds[power].values.astype(float)) * w).sum())
        data["energy_per_unit"] = (energy / produced if produced > 0 else math.nan,
                                   f"{ds[power].attrs.get('units', '1')} h per "
                                   f"{ds[output].attrs.get('units', '1')} h",
                                   "energy per unit of output")
    return xr.Dataset({k: ((), v, {"units": u, "long_name": ln})
                       for k, (v, u, ln) in data.items()})
