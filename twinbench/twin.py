"""The live twin: observe → estimate → detect → predict → act, in step with its equipment.

A :class:`Twin` reads batches from a source (:func:`twinbench.connect`, :func:`twinbench.replay`),
maps its tags to the model's inputs and measured variables (converting units where they differ),
advances the model to each measurement time and fuses the measurement with the extended Kalman
filter (:class:`~twinbench.kernel.estimate.ExtendedKalmanFilter`, in the kernel), runs the
detectors on measurements, residuals and the NIS, and keeps the result in a ring buffer over a
time window: :attr:`Twin.state` is that window as an ``xarray.Dataset``.

Examples
--------
>>> import numpy as np, twinbench as tb
>>> from twinbench.io.batch import Batch
>>> model = tb.linear_model([[0.0]], C=[[1.0]], states=[("x", "1")], outputs=[("y", "1")])
>>> times = np.datetime64("2026-01-01T00:00:00") + np.arange(50) * np.timedelta64(100, "ms")
>>> batch = Batch(np.zeros(50, np.int32), times, np.ones(50), tags=["y"])
>>> twin = Twin(model, tb.replay(batch.to_dataset(), speed=None), R={"y": 0.01}, Q={"x": 0.1})
>>> twin.process(batch)
50
>>> round(float(twin.state.x[-1]), 2), sorted(twin.state.data_vars)
(1.0, ['nis', 'x', 'x_std', 'y', 'y_predicted', 'y_quality', 'y_residual'])
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import weakref
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["SystemTwin", "Twin", "convert_units", "run", "running_twins"]

_logger = logging.getLogger("twinbench.twin")

# Every twin ever started in this process, for running_twins() (the JupyterLab status bar); weak,
# so a twin the user dropped is not kept alive by being listed.
_STARTED: weakref.WeakSet[Twin] = weakref.WeakSet()

# Affine unit conversions (to = a * from + b) the twin applies between a tag and its variable.
_CONVERSIONS: dict[tuple[str, str], tuple[float, float]] = {
    ("degC", "K"): (1.0, 273.15), ("K", "degC"): (1.0, -273.15),
    ("bar", "Pa"): (1e5, 0.0), ("Pa", "bar"): (1e-5, 0.0),
    ("kPa", "Pa"): (1e3, 0.0), ("Pa", "kPa"): (1e-3, 0.0),
    ("kW", "W"): (1e3, 0.0), ("W", "kW"): (1e-3, 0.0),
    ("rpm", "rad/s"): (2 * math.pi / 60, 0.0), ("rad/s", "rpm"): (60 / (2 * math.pi), 0.0),
    ("m3/h", "m3/s"): (1 / 3600, 0.0), ("m3/s", "m3/h"): (3600.0, 0.0),
    ("%", "1"): (0.01, 0.0), ("1", "%"): (100.0, 0.0),
}


def convert_units(values: Any, from_units: str, to_units: str) -> np.ndarray:
    """`values` in `from_units` expressed in `to_units` (a small table of affine conversions).

    Examples
    --------
    >>> convert_units([0.0, 100.0], "degC", "K").tolist()
    [273.15, 373.15]
    >>> convert_units([1.0], "furlong", "m")
    Traceback (most recent call last):
    ...
    ValueError: units: no conversion from 'furlong' to 'm'
    """
    arr = np.asarray(values, dtype=np.float64)
    if from_units == to_units:
        return arr
    try:
        a, b = _CONVERSIONS[(from_units, to_units)]
    except KeyError:
        raise ValueError(f"units: no conversion from {from_units!r} to {to_units!r}") from None
    return a * arr + b


class Twin:
    """A model running in step with live data.

    Parameters
    ----------
    model : Model
        The asset model (e.g. ``twinbench.models.pump()``).
    source : source
        What :func:`twinbench.connect` or :func:`twinbench.replay` returns.
    tags : mapping of str to str, optional
        Model variable → source tag. Default: every source tag whose name is a model input,
        output or state. Inputs drive the model; outputs and states are measurements.
    name : str, optional
        The asset's name (default: the model's name).
    estimator : "ekf" or ExtendedKalmanFilter, default "ekf"
        The state estimator: an extended Kalman filter built from `R`, `Q`, `x0`, `P0`,
        `params`, `max_step`, or one you configured (its ``measured`` must be the twin's
        measured variables, in the tag map's order).
    R : mapping of measured variable to float
        Measurement noise variance per measured variable (its units squared). Required for
        every measured variable with ``estimator="ekf"``: the twin cannot guess how noisy a
        sensor is.
    Q : mapping of state to float, optional
        Process noise spectral density per state (units² per second); default 1e-6 × max(1,
        |default|)² per state.
    x0, P0, params, max_step
        Passed to the extended Kalman filter (prior state and covariance, model parameters,
        longest integration substep in seconds).
    detectors : mapping of signal to detector (or list of detectors), optional
        Signals: a measured variable (its measured value), a state (its estimate),
        ``"<measured>_residual"`` (the innovation) or ``"nis"``; detectors from
        :mod:`twinbench.kernel.detect`. Each gives an alarm variable ``alarm_<signal>`` (with
        ``_<k>`` for the k-th detector of a signal after the first).
    window : float, default 600
        Seconds of data :attr:`state` keeps (the ring buffer).
    capacity : int, optional
        Rows the ring buffer holds (default: the window at 20 samples per second, at least 1000).
    history : path, optional
        A ``.zarr`` store the twin appends to (see :mod:`twinbench.store`).
    rules : sequence of Rule, optional
        :class:`twinbench.act.Rule` s evaluated on every new row of the state (conditions name
        its columns: measured tags, states, ``<m>_residual``, ``nis``, ``alarm_*``). Their
        events collect in :attr:`events`; recommendations in :attr:`recommendations`.
    maintenance : sequence of MaintenancePolicy, optional
        RUL filters on health indicators (:class:`twinbench.maintenance.MaintenancePolicy`),
        updated with every batch; each adds a column ``rul_<indicator>`` (seconds, at the
        policy's quantile) and raises :class:`~twinbench.maintenance.WorkOrder` s into
        :attr:`work_orders`.
    writer : GuardedWriter, optional
        The guarded write path (:func:`twinbench.act.guarded_writer`). With it, the writes of
        rules with ``auto=True`` are made as they fire (limits, rate and audit still apply),
        and :meth:`act` carries out a recommendation after confirmation.
    """

    def __init__(self, model: Any, source: Any, tags: Mapping[str, str] | None = None, *,
                 name: str | None = None, estimator: Any = "ekf",
                 R: Mapping[str, float] | None = None,
                 Q: Mapping[str, float] | None = None, x0: Any = None, P0: Any = None,
                 params: Mapping[str, float] | None = None, max_step: float = 0.1,
                 detectors: Mapping[str, Any] | None = None, window: float = 600.0,
                 capacity: int | None = None, history: Any = None,
                 flush_interval: float = 5.0, rules: Sequence[Any] | None = None,
                 writer: Any = None, maintenance: Sequence[Any] | None = None) -> None:
        from twinbench.kernel.estimate import ExtendedKalmanFilter
        from twinbench.store import RingBuffer

        self.model = model
        self.source = source
        self.name = name or getattr(model, "name", None) or "twin"
        source_tags = _source_tag_names(source)
        variables = {v.name: v for v in (*model.inputs, *model.outputs, *model.states)}
        if tags is None:
            tags = {t: t for t in source_tags if t in variables}
        if not isinstance(tags, Mapping) or not tags:
            raise ValueError(f"tags: expected a mapping of model variable to source tag with at "
                             f"least one entry; the source has {list(source_tags)}")
        for var, tag in tags.items():
            if var not in variables:
                raise ValueError(f"tags: {var!r} is not a variable of the model (inputs "
                                 f"{list(model.input_names)}, outputs "
                                 f"{list(model.output_names)}, states {list(model.state_names)})")
            if tag not in source_tags:
                raise ValueError(f"tags: {tag!r} (for {var!r}) is not a tag of the source "
                                 f"{list(source_tags)}")
        self.tags = dict(tags)
        # A tag's column is named after its variable; a measured state's column gets
        # "_measured", since the state's own name holds its estimate.
        self._col = {v: (f"{v}_measured" if v in model.state_names else v) for v in tags}
        self.inputs = [v for v in tags if v in model.input_names]
        self.measured = [v for v in tags if v not in model.input_names]
        if not self.measured:
            raise ValueError("tags: the twin needs at least one measured output or state")
        if isinstance(estimator, ExtendedKalmanFilter):
            if list(estimator.measured) != self.measured:
                raise ValueError(f"estimator: its measured variables {list(estimator.measured)} "
                                 f"differ from the twin's {self.measured}")
            self.ekf = estimator
            R = {m: float(estimator.R[j, j]) for j, m in enumerate(self.measured)}
            q = [float(v) for v in np.diag(estimator.Q)]
        elif estimator == "ekf":
            R = dict(R or {})
            missing = [m for m in self.measured if m not in R]
            if missing:
                raise ValueError(f"R: expected a measurement noise variance for {missing} "
                                 f"(units squared, e.g. {{{missing[0]!r}: 0.01}})")
            Q = dict(Q or {})
            q = [float(Q.get(s.name, 1e-6 * max(1.0, abs(s.default)) ** 2))
                 for s in model.states]
            self.ekf = ExtendedKalmanFilter(model, Q=q, R=[float(R[m]) for m in self.measured],
                                            x0=x0, P0=P0, params=params,
                                            measured=self.measured, max_step=max_step)
        else:
            raise ValueError(f"estimator: expected 'ekf' or an ExtendedKalmanFilter, got "
                             f"{estimator!r}")
        # Units: a tag map may declare the tag's units; they are converted to the variable's.
        tag_units = _source_units(source)
        self._convert = {}
        for var, tag in self.tags.items():
            unit = tag_units.get(tag)
            if unit and unit != variables[var].units:
                convert_units([0.0], unit, variables[var].units)  # fails early if unknown
                self._convert[var] = (unit, variables[var].units)
        self._detectors: list[tuple[str, str, Any]] = []  # (signal, alarm name, detector)
        for signal, dets in (detectors or {}).items():
            self._check_signal(signal)
            dets = dets if isinstance(dets, Sequence) else [dets]
            for k, det in enumerate(dets):
                if not hasattr(det, "update"):
                    raise TypeError(f"detectors: {signal!r}: expected a detector with update(), "
                                    f"got {type(det).__name__}")
                alarm = f"alarm_{signal}" + (f"_{k}" if k else "")
                self._detectors.append((signal, alarm, det))
        self.maintenance = list(maintenance or [])
        self.work_orders: list[Any] = []
        for policy in self.maintenance:
            if not hasattr(policy, "update") or not hasattr(policy, "indicator"):
                raise TypeError(f"maintenance: expected MaintenancePolicy objects, got "
                                f"{type(policy).__name__}")
            self._check_signal(policy.indicator)
        if not (isinstance(window, (int, float)) and window > 0):
            raise ValueError(f"window: expected seconds > 0, got {window!r}")
        self.window = float(window)
        # Outputs nobody measures are computed from the estimated state (the model's NumPy
        # output function, vectorised over the batch).
        self._unmeasured_outputs = ([o for o in model.output_names if o not in self.measured]
                                    if getattr(model, "output", None) is not None else [])
        declared = np.array([float((params or {}).get(p.name, p.default)) for p in model.params])
        self._pk = (model.kernel_params(declared[:, None])[:, 0] if self._unmeasured_outputs
                    else None)
        self._u_default = np.array([v.default for v in model.inputs])
        columns = self._columns(variables)
        cap = capacity if capacity is not None else max(1000, int(self.window * 20))
        self._ring = RingBuffer(list(columns), cap,
                                units={k: v[0] for k, v in columns.items()},
                                long_names={k: v[1] for k, v in columns.items()})
        self._history = None
        if history is not None:
            from twinbench.store import History

            self._history = History(history, list(columns), flush_interval=flush_interval,
                                    units={k: v[0] for k, v in columns.items()},
                                    long_names={k: v[1] for k, v in columns.items()},
                                    attrs=self._provenance(model, R, q, params))
        from twinbench.act import RuleEngine

        self._engine = RuleEngine(list(rules)) if rules else None
        self.writer = writer
        self.events: list[Any] = []  # every rule event, newest last (bounded)
        self.write_results: list[Any] = []  # results of the writes the twin made
        self._pending_writes: set[asyncio.Task[Any]] = set()
        self._epoch_ns: int | None = None
        self._last_ns: int | None = None
        self._u_last = np.full(len(model.input_names), np.nan)
        self._params = dict(params or {})
        self._task: asyncio.Task[None] | None = None
        self._alarms: dict[str, bool] = {alarm: False for _, alarm, _ in self._detectors}
        from twinbench.io.decode import RateLimitedLog

        self._log = RateLimitedLog(_logger, interval_s=10.0)
        self.stats = {"batches": 0, "samples": 0, "steps": 0, "late_samples": 0,
                      "bad_samples": 0, "errors": 0, "busy_s": 0.0}
        self._started_at: float | None = None

    # -- configuration helpers -----------------------------------------------------------------

    def _provenance(self, model: Any, R: Mapping[str, float], q: Sequence[float],
                    params: Mapping[str, float] | None) -> dict[str, str]:
        """What a stored history needs to replay any past moment through the twin exactly:
        the model's declarations, the parameter values, the filter's noise settings and the
        tag map (as JSON text)."""
        import json

        values = {p.name: float((params or {}).get(p.name, p.default)) for p in model.params}
        return {"twin": self.name, "model": getattr(model, "name", type(model).__name__),
                "model_states": json.dumps(list(model.state_names)),
                "model_inputs": json.dumps(list(model.input_names)),
                "model_outputs": json.dumps(list(model.output_names)),
                "params": json.dumps(values, sort_keys=True),
                "filter": json.dumps({"R": {m: float(R[m]) for m in self.measured},
                                      "Q": dict(zip(model.state_names, map(float, q),
                                                    strict=True))}, sort_keys=True),
                "tags": json.dumps(self.tags, sort_keys=True)}

    def _check_signal(self, signal: str) -> None:
        known = {*self.measured, *self.model.state_names, "nis",
                 *(f"{m}_residual" for m in self.measured)}
        if signal not in known:
            raise ValueError(f"detectors: unknown signal {signal!r}; expected one of "
                             f"{sorted(known)}")

    def _columns(self, variables: Mapping[str, Any]) -> dict[str, tuple[str, str]]:
        """Every column of the state window: name -> (units, long_name)."""
        cols: dict[str, tuple[str, str]] = {}
        for var in self.tags:
            v = variables[var]
            cols[self._col[var]] = (v.units, f"measured {v.long_name or var}")
            cols[f"{var}_quality"] = ("1", f"quality code of {var}")
        for s in self.model.states:
            cols[s.name] = (s.units, f"estimated {s.long_name or s.name}")
            cols[f"{s.name}_std"] = (s.units, f"standard deviation of the {s.name} estimate")
        for m in self.measured:
            cols[f"{m}_residual"] = (variables[m].units, f"{m} minus its prediction")
            cols[f"{m}_predicted"] = (variables[m].units, f"{m} predicted by the twin")
        for o in self._unmeasured_outputs:
            cols[f"{o}_predicted"] = (variables[o].units,
                                      f"{variables[o].long_name or o} from the estimated state")
        cols["nis"] = ("1", "normalised innovation squared")
        for policy in self.maintenance:
            cols[f"rul_{policy.indicator}"] = (
                "s", f"remaining useful life of {policy.indicator} (quantile {policy.quantile:g})")
        for _, alarm, _ in self._detectors:
            cols[alarm] = ("1", f"detector alarm ({alarm})")
        return cols

    # -- the loop ------------------------------------------------------------------------------

    def process(self, batch: Any) -> int:
        """Feed one batch through the twin (what the running loop does); returns the number of
        measurement times processed."""
        t0 = time.process_time()
        try:
            return self._process(batch)
        except Exception:  # noqa: BLE001 - a bad batch is logged and counted, never fatal
            self.stats["errors"] += 1
            _logger.exception("twin %s: a batch failed", self.name)
            return 0
        finally:
            self.stats["busy_s"] += time.process_time() - t0

    def _process(self, batch: Any) -> int:
        n = len(batch)
        self.stats["batches"] += 1
        if n == 0:
            return 0
        self.stats["samples"] += n
        names = batch.tags
        by_tag = {tag: var for var, tag in self.tags.items()}
        t_ns = batch.time.view(np.int64)
        bad = batch.quality >= 2
        self.stats["bad_samples"] += int(np.count_nonzero(bad))
        times, inv = np.unique(t_ns, return_inverse=True)
        if self._last_ns is not None:
            fresh = times > self._last_ns
            if not fresh.all():
                late = ~fresh[inv]
                self.stats["late_samples"] += int(np.count_nonzero(late))
                keep_times = np.flatnonzero(fresh)
                remap = np.full(len(times), -1)
                remap[keep_times] = np.arange(len(keep_times))
                inv = remap[inv]
                times = times[keep_times]
        T = len(times)
        if T == 0:
            return 0
        if self._epoch_ns is None:
            self._epoch_ns = int(times[0])
        measured = {m: np.full(T, np.nan) for m in self.measured}
        inputs = {u: np.full(T, np.nan) for u in self.inputs}
        quality = {f"{var}_quality": np.full(T, 255, dtype=np.uint8) for var in self.tags}
        valid_rows = inv >= 0
        for k, tag in enumerate(names):
            var = by_tag.get(tag)
            if var is None:
                continue
            sel = (batch.tag == k) & valid_rows
            if not sel.any():
                continue
            rows = inv[sel]
            values = np.where(bad[sel], np.nan, batch.value[sel])
            if var in self._convert:
                values = convert_units(values, *self._convert[var])
            target = measured[var] if var in measured else inputs[var]
            target[rows] = values
            quality[f"{var}_quality"][rows] = batch.quality[sel]
        t = (times - self._epoch_ns) / 1e9
        z = np.column_stack([measured[m] for m in self.measured])
        u = np.full((T, self.model.nu), np.nan)
        for j, name in enumerate(self.model.input_names):
            if name in inputs:
                u[:, j] = inputs[name]
        result = self.ekf.filter_arrays(t, z, u)
        held = _hold(u, np.where(np.isfinite(self._u_last), self._u_last, self._u_default))
        if len(held):  # the last value given of every input, for what-ifs
            self._u_last = np.where(np.isfinite(u).any(axis=0), held[-1], self._u_last)
        self.stats["steps"] += T
        self._last_ns = int(times[-1])
        columns: dict[str, np.ndarray] = {self._col[v]: a for v, a in (*measured.items(),
                                                                       *inputs.items())}
        columns.update(quality)
        for j, s in enumerate(self.model.state_names):
            columns[s] = result.x[:, j]
            columns[f"{s}_std"] = result.std[:, j]
        for j, m in enumerate(self.measured):
            columns[f"{m}_residual"] = result.innovation[:, j]
            columns[f"{m}_predicted"] = z[:, j] - result.innovation[:, j]
        columns["nis"] = result.nis
        if self._unmeasured_outputs:
            y = np.asarray(self.model.output(t[None, :], result.x.T, held.T,
                                             self._pk[:, None]), dtype=np.float64)
            for o in self._unmeasured_outputs:
                columns[f"{o}_predicted"] = y[self.model.output_names.index(o)]
        for signal, alarm, det in self._detectors:
            if signal == "nis":
                out = det.update(result.nis, result.nis_dof, t)
            else:
                # a measured value, a state estimate (named after the state) or a residual
                values = measured[signal] if signal in measured else columns[signal]
                out = det.update(values, t)
            flags = np.asarray(out.alarm, dtype=bool).reshape(T, -1).any(axis=1)
            columns[alarm] = flags.astype(np.float64)
            if flags[-1] != self._alarms[alarm]:  # rate-limited: a flapping alarm is one line
                self._log.warning(alarm, "twin %s: %s %s", self.name, alarm,
                                  "raised" if flags[-1] else "cleared")
            self._alarms[alarm] = bool(flags[-1])
        stamp = times.view("datetime64[ns]")
        for policy in self.maintenance:
            signal = policy.indicator
            values = measured[signal] if signal in measured else columns[signal]
            order = policy.update(self.name, stamp, values)
            rul = np.full(T, np.nan)
            if policy.latest is not None and policy.latest.time is not None:
                rul[-1] = float(policy.latest.rul[policy._q_index])
            columns[f"rul_{signal}"] = rul
            if order is not None:
                self.work_orders.append(order)
                _logger.warning("twin %s: work order: %s; %s by %s", self.name, order.finding,
                                order.suggested_action, order.due_by)
        if self._engine is not None:
            self._on_events(self._engine.evaluate_batch(stamp, columns))
        self._ring.append(stamp, columns)
        if self._history is not None:
            self._history.append(stamp, columns)  # flushed by the running loop, or on stop()
        return T

    def _on_events(self, events: list[Any]) -> None:
        for event in events:
            self.events.append(event)
            _logger.warning("twin %s: rule %s: %s (%s)", self.name, event.rule, event.kind,
                            event.message)
            if event.kind == "action" and self.writer is not None and _loop_running():
                task = asyncio.get_running_loop().create_task(self._apply(event))
                self._pending_writes.add(task)
                task.add_done_callback(self._pending_writes.discard)
        del self.events[:-1000]

    async def _apply(self, event: Any, confirm: Any = None) -> list[Any]:
        try:
            results = await self.writer.apply(event, confirm=confirm)
        except Exception:  # noqa: BLE001 - explained in the log and the audit, never retried
            _logger.exception("twin %s: writes of rule %s failed", self.name, event.rule)
            return []
        self.write_results.extend(results)
        return results

    def whatif(self, horizon: Any, *, dt: Any = 1.0, changes: Mapping[str, Any] | None = None,
               n: int | None = None, uncertainty: bool = False, **options: Any) -> Any:
        """Project the twin forward from its current estimate (see
        :func:`twinbench.scenario.whatif`): scenario 0 is the mirror (the estimated state, the
        last inputs held), the others apply `changes`; with `uncertainty` the initial states are
        drawn from the filter's covariance. Starts at the time of the latest measurement.
        """
        from twinbench.scenario import whatif

        snap = self.snapshot()
        if snap["time"] is None:
            raise RuntimeError(f"twin {self.name}: no measurement yet; nothing to project from")
        return whatif(self.model, snap["state"], horizon=horizon, dt=dt, changes=changes, n=n,
                      uncertainty=uncertainty,
                      covariance=snap["covariance"] if uncertainty else None,
                      inputs=snap["inputs"], params=snap["params"], start=snap["time"],
                      **options)

    @property
    def recommendations(self) -> list[Any]:
        """Rule events that propose something to a person (newest last)."""
        return [e for e in self.events if e.kind == "recommendation"]

    async def act(self, event: Any, *, confirm: Any = None) -> list[Any]:
        """Carry out a recommendation's writes through the guarded path (confirmation, limits,
        read-back, audit). Returns the :class:`twinbench.act.WriteResult` s."""
        if self.writer is None:
            raise RuntimeError(f"twin {self.name}: no writer; pass writer=guarded_writer(...)")
        return await self._apply(event, confirm)

    async def _run(self) -> None:
        source = self.source
        try:
            await self._start_source()
            async for batch in source.batches():
                self.process(batch)
                if self._history is not None:  # writes on a worker thread: the loop runs on
                    await self._history.amaybe_flush()
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - the source failed: say so, keep the state
            self.stats["errors"] += 1
            _logger.exception("twin %s: the source stopped with an error", self.name)
        finally:
            if self._history is not None:
                await self._history.aflush()

    async def _start_source(self) -> None:
        """Connect, retrying with backoff (1 s doubling to 30 s) while the equipment is not
        there yet; a refused identity or a wrong tag map is not retried."""
        delay = 1.0
        while True:
            try:
                await self.source.start()
                return
            except (PermissionError, LookupError, ValueError, TypeError):
                raise
            except (ConnectionError, TimeoutError, OSError) as exc:
                self.stats["errors"] += 1
                self._log.warning("connect", "twin %s: cannot connect yet (%s); retrying in %g s",
                                  self.name, exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 30.0)

    def start(self) -> Twin:
        """Run the twin on the running event loop (JupyterLab, Voila, or your own); returns at
        once. Starting a running twin does nothing (re-running a cell starts no second loop)."""
        if self.running:
            return self
        loop = asyncio.get_running_loop() if _loop_running() else None
        if loop is None:
            raise RuntimeError("Twin.start() needs a running event loop (a notebook has one); "
                               "in a script use twinbench.run(twin)")
        self._started_at = time.monotonic()
        self._task = loop.create_task(self._run(), name=f"twin {self.name}")
        _STARTED.add(self)
        return self

    async def stop(self) -> None:
        """Stop the loop and the source; the state and history stay readable."""
        if self._pending_writes:  # let writes in flight finish (each is bounded by timeouts)
            await asyncio.gather(*self._pending_writes, return_exceptions=True)
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
        await self.source.stop()
        if self._history is not None:
            await self._history.aflush()

    def close(self) -> None:
        """Flush and close the history (the twin can no longer be started); idempotent."""
        if self._history is not None:
            self._history.close()

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    # -- what users look at --------------------------------------------------------------------

    @property
    def state(self) -> Any:
        """The live window as an ``xarray.Dataset`` (dim ``time``): measured tags and their
        quality, estimated states with standard deviations, predictions, residuals, NIS,
        alarms."""
        ds = self._ring.to_dataset()
        ds.attrs.update({"twin": self.name, "window_s": self.window})
        return ds

    def history(self, start: Any = None, end: Any = None) -> Any:
        """The state between `start` and `end`, across the stored history and the live window."""
        if self._history is None:
            return self._ring.to_dataset(start, end)
        from twinbench.store import read_window

        return read_window(self._ring, self._history, start, end)

    @property
    def alarms(self) -> dict[str, bool]:
        """Alarm name → whether it is raised at the latest sample."""
        return dict(self._alarms)

    def latest(self, skipna: bool = False) -> dict[str, float]:
        """The latest value of every column of the state.

        With ``skipna=True``, each column's last value that is not missing: what a status
        display wants, since tags arrive in different rows (a setpoint only when it changes).
        """
        return self._ring.latest(skipna=skipna)

    def live_window(self, start: Any = None, end: Any = None) -> Any:
        """The live window between `start` and `end` (inclusive; None: unbounded) as a
        Dataset, without touching the stored history: what a live view polls (it costs the
        rows asked for, not the whole window).

        Examples
        --------
        >>> import twinbench as tb
        >>> src = tb.connect("opc.tcp://127.0.0.1:4840/p", {"speed": "ns=2;s=Pump1.speed"})
        >>> twin = tb.Twin(tb.models.pump(), src, R={"speed": 4.0})
        >>> twin.live_window(start="2026-11-01").sizes.get("time", 0)
        0
        """
        return self._ring.to_dataset(start, end)

    @property
    def rules(self) -> list[Any]:
        """The twin's rules (see :class:`~twinbench.act.Rule`), in evaluation order."""
        return list(self._engine.rules) if self._engine is not None else []

    def set_rule_condition(self, name: str, condition: str, *, identity: Any = None) -> Any:
        """Give rule `name` a new condition, such as ``"vibration > 5.5"`` (parsed, never
        evaluated): an engineer's change in an app with sign-in. Audited in the writer's log
        when the twin has a writer. Returns the record (a ``WriteResult`` with result
        ``"rule-changed"`` or ``"refused"``; without a writer, an unaudited one).

        Raises nothing for a bad request: the refusal says why.
        """
        from twinbench.act import Condition, WriteResult
        from twinbench.session import auth_required, request_identity

        who = identity or request_identity()
        rule = next((r for r in self.rules if r.name == name), None)
        old = str(rule.condition) if rule is not None else None
        result, message = "refused", ""
        try:
            new = Condition.parse(condition)
        except ValueError as exc:
            new, message = None, f"rule {name!r}: {exc}; rule unchanged"
        known = {*self.state.data_vars, *(() if rule is None else (rule.condition.variable,))}
        if auth_required() and not who.may("configure"):
            message = f"rule {name!r}: {who} may not change rules (engineers may); unchanged"
        elif rule is None:
            message = (f"rule {name!r}: no such rule (rules: "
                       f"{', '.join(r.name for r in self.rules) or 'none'}); nothing changed")
        elif new is not None and new.variable not in known:
            message = (f"rule {name!r}: {new.variable!r} is not a variable of this twin; "
                       f"rule unchanged")
        elif new is not None:
            self._engine.set_condition(name, new)
            result, message = "rule-changed", f"rule {name!r}: {old} -> {new}"
        if self.writer is not None:
            return self.writer.record(f"rule:{name}", condition, result, message,
                                      reason="rule condition", identity=who)
        return WriteResult(f"rule:{name}", condition, None, None, result, message,
                           "rule condition", "user", who.user)

    @property
    def units(self) -> dict[str, str]:
        """CF units of every column of the state (a copy)."""
        return self._ring.units

    def column(self, variable: str) -> str:
        """The state column holding a tagged variable's measurements (a measured state's
        column is ``<state>_measured``, since the state's own column holds its estimate)."""
        try:
            return self._col[variable]
        except KeyError:
            raise ValueError(f"variable: {variable!r} has no tag; tagged variables are "
                             f"{sorted(self._col)}") from None

    @property
    def alarm_names(self) -> list[str]:
        """The detectors' alarm columns, in the order they were given."""
        return [alarm for _, alarm, _ in self._detectors]

    @property
    def noise(self) -> dict[str, float]:
        """Measurement noise variance of each measured variable (units squared)."""
        R = self.ekf.R
        return {m: float(R[j, j]) for j, m in enumerate(self.measured)}

    @property
    def params(self) -> dict[str, float]:
        """The model parameter values the twin runs with (declared defaults filled in)."""
        return {p.name: float(self._params.get(p.name, p.default)) for p in self.model.params}

    def snapshot(self) -> dict[str, Any]:
        """A copy of what a projection starts from, taken now: ``time`` (datetime64[ns] of the
        latest measurement, None before one), ``state`` (the estimate, by state name),
        ``covariance`` (its covariance matrix), ``inputs`` (the last known input values; inputs
        never received are left out) and ``params``. The twin keeps filtering while a worker
        projects from the copy.

        Examples
        --------
        >>> import twinbench as tb
        >>> src = tb.connect("opc.tcp://127.0.0.1:4840/p", {"speed": "ns=2;s=Pump1.speed"})
        >>> snap = tb.Twin(tb.models.pump(), src, R={"speed": 4.0}).snapshot()
        >>> snap["time"], sorted(snap["state"]), snap["inputs"]
        (None, ['flow', 'shaft_speed', 'wear', 'winding_temperature'], {})
        """
        model = self.model
        return {"time": None if self._last_ns is None else np.datetime64(self._last_ns, "ns"),
                "state": dict(zip(model.state_names, np.array(self.ekf.x, float).tolist(),
                                  strict=True)),
                "covariance": np.array(self.ekf.P, dtype=float),
                "inputs": {name: float(v) for name, v in zip(model.input_names, self._u_last,
                                                               strict=True) if np.isfinite(v)},
                "params": dict(self._params)}

    def _repr_html_(self) -> str:
        import html

        latest = self.latest()
        rows = "".join(
            f"<tr><td>{html.escape(k)}</td><td>{v:.4g}</td></tr>" for k, v in latest.items()
            if not k.endswith(("_quality", "_predicted")) and np.isfinite(v))
        alarms = ", ".join(a for a, on in self._alarms.items() if on) or "none"
        rate = ""
        if self._started_at is not None:
            rate = f"{self.stats['samples'] / max(time.monotonic() - self._started_at, 1e-9):.1f}"
        status = "running" if self.running else "stopped"
        return (f"<div><b>Twin {html.escape(self.name)}</b> — {status}; "
                f"{self.stats['samples']} samples ({rate or '–'} /s), "
                f"{self.stats['errors']} errors; alarms: <b>{html.escape(alarms)}</b>"
                f"<table>{rows}</table></div>")

    def __repr__(self) -> str:
        status = "running" if self.running else "stopped"
        return (f"<Twin {self.name} {status}: {len(self.tags)} tags, "
                f"{self.stats['samples']} samples>")


class SystemTwin:
    """Several twins seen as one system: started and stopped together, one state with an
    ``asset`` dimension.

    Parameters
    ----------
    twins : sequence of Twin
        Their names (unique) label the ``asset`` coordinate.
    name : str, default "system"
    """

    def __init__(self, twins: Sequence[Twin], name: str = "system") -> None:
        twins = list(twins)
        if not twins or not all(isinstance(t, Twin) for t in twins):
            raise TypeError("twins: expected a non-empty sequence of Twin")
        names = [t.name for t in twins]
        if len(set(names)) != len(names):
            raise ValueError(f"twins: names must be unique to label the assets, got {names}")
        self.twins = twins
        self.name = name

    def start(self) -> SystemTwin:
        """Start every twin on the running loop (idempotent, like :meth:`Twin.start`)."""
        for twin in self.twins:
            twin.start()
        return self

    async def stop(self) -> None:
        await asyncio.gather(*(twin.stop() for twin in self.twins))

    @property
    def state(self) -> Any:
        """One Dataset: dims ``asset`` × ``time`` (the union of the twins' times; NaN where an
        asset has no row at a time). Variables a twin lacks are NaN for it."""
        import xarray as xr

        states = [t.state for t in self.twins]
        ds = xr.concat(states, dim="asset", join="outer", data_vars="all", coords="minimal",
                       compat="override", combine_attrs="drop_conflicts")
        ds = ds.assign_coords(asset=[t.name for t in self.twins])
        ds.attrs.update({"system": self.name})
        return ds

    @property
    def alarms(self) -> dict[str, dict[str, bool]]:
        return {t.name: t.alarms for t in self.twins}

    def __repr__(self) -> str:
        return f"<SystemTwin {self.name}: {', '.join(repr(t) for t in self.twins)}>"


def _hold(u: np.ndarray, start: np.ndarray) -> np.ndarray:
    """Inputs per row with NaN meaning "hold the last value" (from `start` before the first)."""
    out = u.copy()
    prev = start
    for i in range(out.shape[0]):
        row = out[i]
        bad = ~np.isfinite(row)
        row[bad] = prev[bad]
        prev = row
    return out


def _loop_running() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def _source_tag_names(source: Any) -> tuple[str, ...]:
    tags = getattr(source, "tags", None)
    names = getattr(tags, "names", tags)
    if names is None:
        raise TypeError(f"source: expected a twinbench source with tags, got "
                        f"{type(source).__name__}")
    return tuple(names)


def _source_units(source: Any) -> dict[str, str]:
    return dict(getattr(getattr(source, "tags", None), "units", {}) or {})


def running_twins() -> list[dict[str, Any]]:
    """The twins running in this process, by name: ``name``, ``samples`` and ``errors`` so far,
    and the names of the ``alarms`` that are on. What the JupyterLab extension's status bar shows
    for the notebook's kernel.

    Examples
    --------
    >>> running_twins()  # none started here
    []
    """
    return sorted(({"name": t.name, "samples": int(t.stats["samples"]),
                    "errors": int(t.stats["errors"]),
                    "alarms": sorted(a for a, on in t.alarms.items() if on)}
                   for t in list(_STARTED) if t.running), key=lambda d: d["name"])


def run(*twins: Twin, duration: float | None = None) -> None:
    """Run twins from a script until `duration` seconds pass (or forever, until Ctrl-C).

    Examples
    --------
    >>> run(duration=0.0)  # nothing to run: returns at once
    """
    async def main() -> None:
        for twin in twins:
            twin.start()
        try:
            if duration is None:
                await asyncio.Event().wait()
            else:
                await asyncio.sleep(duration)
        finally:
            for twin in twins:
                await twin.stop()

    if duration is not None and (not isinstance(duration, (int, float)) or duration < 0):
        raise ValueError(f"duration: expected seconds >= 0 or None, got {duration!r}")
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
