"""The plant's assets in real time: one model step per tick, sensor noise, faults, setpoints.

Each tick calls the kernel's integrator directly on a one-scenario state (a few microseconds),
not ``Model.simulate`` (which builds a Dataset: milliseconds).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from twinbench.plant._faults import Fault, format_faults, parse_faults

__all__ = ["ASSET_KINDS", "AssetSim", "Reading", "Setpoint", "make_asset"]

#: Longest integration step (simulated seconds) inside one tick; longer ticks take substeps.
MAX_SUBSTEP = 0.1
_ROS2 = 1  # the kernel's method code for ROS2 (twinbench.kernel._simulate._METHODS)

#: Sensor noise standard deviations (the units of each output), as in twinbench.demo.
PUMP_NOISE = {"speed": 2.0, "flow_rate": 1.0, "total_head": 0.2, "pressure": 0.02,
              "motor_temperature": 0.3, "vibration": 0.05, "current": 0.2, "power": 0.2}
WIND_NOISE = {"generator_speed": 2.0, "generator_torque": 200.0, "power": 10.0, "pitch": 0.05,
              "tip_speed_ratio": 0.02, "power_coefficient": 0.002, "vibration": 0.05}


@dataclass(frozen=True)
class Setpoint:
    """A writable tag: ``kind`` ``"double"``, ``"bool"`` or ``"string"``; doubles are checked
    against ``low..high``."""

    name: str
    kind: str
    default: Any
    units: str = ""
    description: str = ""
    low: float = -math.inf
    high: float = math.inf


@dataclass
class Reading:
    """What one tick produced: ``seq``, simulated time ``time`` (UTC epoch seconds), measured
    ``values`` (one per output, the last value kept for a dropped-out or stuck tag), ``status``
    per output (None good, ``"dropout"`` or ``"comm_loss"``), the hidden ``true_wear`` and
    whether communication is lost."""

    seq: int
    time: float
    values: dict[str, float]
    status: dict[str, str | None]
    true_wear: float
    comm_loss: bool


@dataclass
class _FaultState:
    faults: tuple[Fault, ...] = ()
    drift_start: dict[str, tuple[Fault, float]] = field(default_factory=dict)
    stuck_values: dict[str, float | None] = field(default_factory=dict)
    comm_loss_until: float | None = None  # time.monotonic() deadline, inf until cleared


class AssetSim:
    """One simulated asset (the pump or the wind turbine).

    Parameters
    ----------
    kind : {"pump", "wind"}
    seed : int
        Seeds this asset's sensor noise (``numpy.random.default_rng``).
    faults : str or iterable of str
        Initial fault specs (see :mod:`twinbench.plant._faults`).

    Examples
    --------
    >>> a = make_asset("pump", seed=1)
    >>> r = a.step(0.1, 1.7e9)
    >>> sorted(r.values) == sorted(a.output_names)
    True
    >>> a.write("speed_setpoint", 5000.0)
    Traceback (most recent call last):
    ...
    ValueError: speed_setpoint: 5000 is outside 0..3600
    """

    def __init__(self, kind: str, name: str, key: str, model: Any, noise: dict[str, float],
                 setpoints: Iterable[Setpoint], fault_rate: float, seed: Any = 0,
                 faults: Any = None) -> None:
        self.kind = kind
        self.name = name  # OPC-UA object name, e.g. "Pump1"
        self.key = key  # MQTT topic level, e.g. "pump1"
        self.model = model
        self.outputs = model.outputs
        self.output_names = model.output_names
        self.setpoints = {s.name: s for s in setpoints}
        self.setpoints["fault"] = Setpoint("fault", "string", "", "",
                                           "active fault specs, comma-separated")
        self.values: dict[str, Any] = {s.name: s.default for s in self.setpoints.values()}
        self._noise = np.array([noise.get(n, 0.0) for n in self.output_names])
        self._rng = np.random.default_rng(seed)
        self._x = np.array([[v.default] for v in model.states], dtype=float)
        self._p = np.array([[v.default] for v in model.params], dtype=float)
        self._default_wear_rate = float(self._p[model.param_names.index("wear_rate"), 0])
        self._fault_rate = fault_rate
        self._pk = model.kernel_params(self._p)
        self._u = np.array([[v.default] for v in model.inputs], dtype=float)[None]
        self._wear_index = model.state_names.index("wear")
        self._out = np.empty((model.nx + model.ny, 2, 1))
        self._bad = np.full(1, -1, dtype=np.int64)
        self._integrate = _integrator(model)
        self._elapsed = 0.0
        self.seq = 0
        self._last = np.zeros(model.ny)
        self._fs = _FaultState()
        self.faults_changed = False
        self._apply_inputs()
        if faults:
            self.set_faults(faults)

    # -- writes ------------------------------------------------------------------------------
    def check(self, name: str, value: Any) -> Any:
        """`value` converted for the writable tag `name`; ValueError if out of range or unknown."""
        sp = self.setpoints.get(name)
        if sp is None:
            raise ValueError(f"{name}: not a writable tag of {self.name}; writable: "
                             f"{', '.join(self.setpoints)}")
        if sp.kind == "bool":
            if not isinstance(value, (bool, np.bool_)):
                raise ValueError(f"{name}: expected true or false, got {value!r}")
            return bool(value)
        if sp.kind == "string":
            if not isinstance(value, str):
                raise ValueError(f"{name}: expected a string of fault specs, got {value!r}")
            return format_faults(parse_faults(value, self.output_names))
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.number)):
            raise ValueError(f"{name}: expected a number, got {value!r}")  # noqa: TRY004
        v = float(value)
        if not (sp.low <= v <= sp.high):  # also rejects NaN
            raise ValueError(f"{name}: {value:g} is outside {sp.low:g}..{sp.high:g}")
        return v

    def write(self, name: str, value: Any) -> Any:
        """Check and apply a write; returns the value applied (a fault string canonical)."""
        v = self.check(name, value)
        if name == "fault":
            self.set_faults(v)
            return self.fault_string
        self.values[name] = v
        self._apply_inputs()
        return v

    def _apply_inputs(self) -> None:
        for j, inp in enumerate(self.model.input_names):
            if inp in self.values:
                self._u[0, j, 0] = self.values[inp]
        if "run" in self.values and not self.values["run"]:
            self._u[0, self.model.input_names.index("speed_setpoint"), 0] = 0.0

    # -- faults ------------------------------------------------------------------------------
    @property
    def fault_string(self) -> str:
        return format_faults(self._fs.faults)

    def set_faults(self, specs: Any) -> None:
        """Replace the active faults (``""`` clears them); ValueError for a bad spec."""
        faults = parse_faults(specs, self.output_names)
        old = self._fs
        new = _FaultState(faults=faults)
        wear = self._default_wear_rate
        for f in faults:
            if f.kind == "bearing_wear":
                wear = self._fault_rate * (1.0 if f.value is None else f.value)
            elif f.kind == "drift":
                prev = old.drift_start.get(f.tag)
                new.drift_start[f.tag] = prev if prev and prev[0] == f else (f, self._elapsed)
            elif f.kind == "stuck":
                new.stuck_values[f.tag] = old.stuck_values.get(f.tag)
            elif f.kind == "comm_loss":
                if old.comm_loss_until is not None and f in old.faults:
                    new.comm_loss_until = old.comm_loss_until
                else:
                    new.comm_loss_until = (math.inf if f.value is None
                                           else time.monotonic() + f.value)
        self._fs = new
        self._p[self.model.param_names.index("wear_rate"), 0] = wear
        self._pk = self.model.kernel_params(self._p)
        self.values["fault"] = self.fault_string
        self.faults_changed = True

    # -- simulation --------------------------------------------------------------------------
    @property
    def true_wear(self) -> float:
        return float(self._x[self._wear_index, 0])

    def step(self, sim_dt: float, sim_time: float) -> Reading:
        """Advance the model by `sim_dt` simulated seconds; measure at `sim_time` (epoch s)."""
        n = max(1, math.ceil(sim_dt / MAX_SUBSTEP - 1e-9))
        h = sim_dt / n
        self._bad[0] = -1
        u = np.broadcast_to(self._u, (n, self._u.shape[1], 1))
        self._integrate(self._elapsed, h, n, self._x, u, self._pk, self._out, self._bad)
        nx = self.model.nx
        if self._bad[0] >= 0 or not np.isfinite(self._out[:nx, -1, 0]).all():
            # never expected at these steps; restart from the declared initial state
            self._x[:, 0] = [v.default for v in self.model.states]
        else:
            self._x[:, 0] = self._out[:nx, -1, 0]
        self._elapsed += sim_dt
        self.seq += 1
        y = self._out[nx:, -1, 0] + self._rng.normal(0.0, 1.0, self.model.ny) * self._noise
        fs = self._fs
        status: dict[str, str | None] = dict.fromkeys(self.output_names)
        names = self.output_names
        for tag, (fault, start) in fs.drift_start.items():
            y[names.index(tag)] += fault.value * (self._elapsed - start) / 3600.0
        for tag, frozen in fs.stuck_values.items():
            i = names.index(tag)
            if frozen is None:
                fs.stuck_values[tag] = frozen = float(y[i])
            y[i] = frozen
        for f in fs.faults:
            if f.kind == "dropout":
                i = names.index(f.tag)
                y[i] = self._last[i]  # the last value is kept with a bad status
                status[f.tag] = "dropout"
        comm_loss = False
        if fs.comm_loss_until is not None:
            if time.monotonic() >= fs.comm_loss_until:
                self.set_faults([str(f) for f in fs.faults if f.kind != "comm_loss"])
            else:
                comm_loss = True
                status = dict.fromkeys(names, "comm_loss")
        self._last = y
        return Reading(self.seq, sim_time, dict(zip(names, y.tolist())), status, self.true_wear,
                       comm_loss)


def _integrator(model: Any):
    """``f(t0, dt, steps, x, u, pk, out, bad)``: ROS2 over `steps` steps, sampling the end."""
    from twinbench.kernel._check_build import pure_python

    if model.has_compiled and not pure_python():
        from twinbench.kernel._dispatch import compiled_module
        from twinbench.kernel._simulate import block_size

        kernel = compiled_module("twinbench.kernel._integrate")
        fns = model._compiled
        block = block_size(model, model.kernel_params(
            np.array([[v.default] for v in model.params])).shape[0], "ros2")

        def run(t0, dt, steps, x, u, pk, out, bad):
            kernel.integrate(fns, _ROS2, t0, dt, steps, steps, x, u, pk, out, bad, threads=1,
                             block=block)
        return run
    from twinbench.kernel import _integrate_py

    def run_py(t0, dt, steps, x, u, pk, out, bad):
        _integrate_py.integrate(model.rhs, model.output, model.jacobian, _ROS2, t0, dt, steps,
                                steps, x, u[:, : model.nu, :], pk, out, bad)
    return run_py


#: Asset kinds the plant can run.
ASSET_KINDS = ("pump", "wind")


def make_asset(kind: str, seed: int = 0, faults: Any = None) -> AssetSim:
    """The plant's pump (``Pump1``) or wind turbine (``Wind1``) with its setpoints."""
    if kind == "pump":
        from twinbench.models import pump
        from twinbench.models.pump import BEARING_FAULT_WEAR_RATE

        setpoints = [
            Setpoint("speed_setpoint", "double", 2950.0, "rpm", "drive speed setpoint", 0.0,
                     3600.0),
            Setpoint("valve_opening", "double", 0.5, "1", "discharge valve opening", 0.0, 1.0),
            Setpoint("run", "bool", True, "", "drive running (false: speed setpoint 0)"),
        ]
        return AssetSim("pump", "Pump1", "pump1", pump(), PUMP_NOISE, setpoints,
                        BEARING_FAULT_WEAR_RATE, np.random.SeedSequence([seed, 0]), faults)
    if kind == "wind":
        from twinbench.models import wind_turbine
        from twinbench.models.wind import BEARING_FAULT_WEAR_RATE

        setpoints = [
            Setpoint("rotor_speed_setpoint", "double", 12.1, "rpm", "rotor speed setpoint", 0.0,
                     14.0),
            Setpoint("wind_speed", "double", 8.0, "m/s", "hub-height wind speed (input)", 0.0,
                     30.0),
        ]
        return AssetSim("wind", "Wind1", "wind1", wind_turbine(), WIND_NOISE, setpoints,
                        BEARING_FAULT_WEAR_RATE, np.random.SeedSequence([seed, 1]), faults)
    raise ValueError(f"kind: expected one of {ASSET_KINDS}, got {kind!r}")
