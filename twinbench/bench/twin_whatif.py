"""Benchmark: a what-if of the pump twin, end to end, compiled kernel vs NumPy reference.

From an estimated state with its covariance (a bearing near the end of its life, uncertain wear
and temperature):
fork the mirror and 999 projections (random speed setpoints and valve openings, initial states
sampled from the covariance), run 1 h at dt = 1 s with ROS2, sample every step, and summarise
(quantiles of every state and output over the projections; vibration and temperature limits
with their first violations). The same :func:`twinbench.scenario.whatif` call is timed with the
compiled kernel and with the NumPy reference kernel (``backend="numpy"``); everything but the
kernel is the same code on both sides. The headline figure runs the compiled kernel on every core
(the default a user gets; the NumPy reference uses one); the 1-thread figures show what one core
does, which the ROS2 kernel's own ratio (about 7-8x) bounds.
"""

from __future__ import annotations

import numpy as np

from twinbench.bench._common import best_time, figure

__all__ = ["run", "whatif_case"]

#: ISO 10816-3 zone C/D boundary (mm/s) and a class F winding's hot-spot margin (degC).
LIMITS = {"vibration": (None, 4.5), "motor_temperature": (None, 120.0)}


def whatif_case(scenarios: int, horizon: float) -> tuple:
    """The benchmark's what-if: ``(model, state, kwargs)`` for :func:`twinbench.scenario.whatif`
    with ``scenarios`` scenarios in all (the mirror and ``scenarios - 1`` projections)."""
    from twinbench.models import pump
    from twinbench.models.pump import BEARING_FAULT_WEAR_RATE

    model = pump()
    state = {"shaft_speed": 303.9, "flow": 0.0301, "winding_temperature": 361.0, "wear": 0.85}
    covariance = np.diag([0.5, 1e-8, 1.0, 4e-3])
    kwargs = {
        "horizon": horizon, "dt": 1.0, "start": "2026-11-01T12:00:00", "method": "ros2",
        "params": {"wear_rate": BEARING_FAULT_WEAR_RATE},
        "changes": {"speed_setpoint": ("uniform", 1800.0, 2950.0),
                    "valve_opening": ("uniform", 0.3, 1.0)},
        "n": scenarios - 1, "uncertainty": True, "covariance": covariance, "seed": 1,
        "limits": LIMITS,
    }
    return model, state, kwargs


def run(quick: bool = False) -> list[dict]:
    from twinbench.scenario import whatif

    scenarios, horizon = (100, 600.0) if quick else (1000, 3600.0)
    model, state, kw = whatif_case(scenarios, horizon)
    whatif(model, state, **{**kw, "horizon": 10.0})  # warm up: imports, first kernel call
    repeat = 1 if quick else 3
    from twinbench.kernel._simulate import resolve_threads

    cores = resolve_threads(None, 1 << 30)  # what a user gets by default: every core
    t_c = best_time(lambda: whatif(model, state, backend="c", threads=cores, **kw),
                    repeat=repeat)
    t_1 = best_time(lambda: whatif(model, state, backend="c", threads=1, **kw), repeat=repeat)
    t_np = best_time(lambda: whatif(model, state, backend="numpy", **kw), repeat=1)
    ds = whatif(model, state, backend="c", threads=1, **kw)
    checked = whatif(model, state, backend="numpy", **{**kw, "horizon": 60.0})
    small = ds.isel(time=slice(0, 61))
    agree = float(np.nanmax(np.abs(small.vibration.values - checked.vibration.values)))
    steps = int(horizon)
    name = "whatif_100x10min" if quick else "whatif_1000x1h"
    figs = [figure(name, t_c, "s", "same what-if with the NumPy reference kernel", t_np / t_c, 10.0,
                   baseline_value=t_np, scenarios=scenarios, steps=steps, dt=1.0, method="ros2",
                   threads=cores, violating_vibration=int(ds.vibration_violates.sum()),
                   violating_temperature=int(ds.motor_temperature_violates.sum()),
                   max_vibration_difference_first_minute=agree),
            figure(f"{name}, 1 thread", t_1, "s", "same what-if with the NumPy reference kernel",
                   t_np / t_1, None, baseline_value=t_np, threads=1)]
    # The kernel alone on the same ensemble (what the end-to-end ratio is bounded by).
    from twinbench.scenario import _plan

    plan = _plan(model, state, None, kw["params"], kw["changes"], kw["n"], True,
                 kw["covariance"], kw["seed"], steps)
    sim = {"steps": steps, "dt": 1.0, "method": "ros2", "on_nonfinite": "warn", "x0": plan.x0,
           "params": plan.params, "inputs": {k: v[None, :] for k, v in plan.inputs.items()}}
    k_c = best_time(lambda: model.simulate(backend="c", threads=1, **sim), repeat=repeat)
    k_np = best_time(lambda: model.simulate(backend="numpy", **sim), repeat=1)
    figs.append(figure(f"{name}: the kernel alone (simulate, no summaries), 1 thread", k_c, "s",
                       "NumPy reference kernel", k_np / k_c, None, baseline_value=k_np,
                       share_of_end_to_end=k_c / t_1))
    return figs
