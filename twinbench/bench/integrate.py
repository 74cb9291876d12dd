"""Benchmark: ensemble integration of the pump model (compiled kernel vs NumPy vs solve_ivp).

Figures, all measured in the same run:

* compiled kernel (portable build, 1 thread) vs the vectorised NumPy reference, per scenario-step;
* compiled kernel vs ``scipy.integrate.solve_ivp`` (RK45) run per scenario on a sample;
* the same compiled kernel built with ``-march=native`` (built on the fly into a temporary
  directory from the source tree, then run in a subprocess) vs the portable build;
* 2 OpenMP threads vs 1;
* peak resident memory of a fresh process running the ensemble, vs the size of its output.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from twinbench.bench._common import best_time, figure

__all__ = ["run", "ensemble_case"]

DT = 0.01
EVERY = 60
#: solve_ivp's tolerance: RK4 at DT reaches ~1e-10 relative error on the pump (the benchmark
#: measures and reports both errors against a DOP853 reference at 1e-13).
IVP_RTOL = 1e-10


def ensemble_case(scenarios: int, steps: int, seed: int = 0):
    """The benchmark's ensemble: the pump under random speed setpoints (60-100 % of the default)
    and valve openings (30-100 %), one pair per scenario."""
    from twinbench.models import pump

    model = pump()
    rng = np.random.default_rng(seed)
    speed = model.variable("speed_setpoint").default
    inputs = {"speed_setpoint": rng.uniform(0.6 * speed, speed, size=(1, scenarios)),
              "valve_opening": rng.uniform(0.3, 1.0, size=(1, scenarios))}
    kwargs = dict(steps=steps, dt=DT, every=EVERY if steps % EVERY == 0 else 1, inputs=inputs)
    return model, kwargs


@contextmanager
def _dispatch(choice: str):
    """Run with TWINBENCH_DISPATCH=choice (models bind their variant at construction and the
    integrator at each simulate call, so both happen inside)."""
    old = os.environ.get("TWINBENCH_DISPATCH")
    os.environ["TWINBENCH_DISPATCH"] = choice
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("TWINBENCH_DISPATCH", None)
        else:
            os.environ["TWINBENCH_DISPATCH"] = old


def _time_compiled(scenarios: int, steps: int, threads: int, repeat: int,
                   dispatch: str = "auto") -> float:
    with _dispatch(dispatch):
        model, kw = ensemble_case(scenarios, steps)
        model.simulate(backend="c", threads=threads, **{**kw, "steps": kw["every"]})  # warm up
        return best_time(lambda: model.simulate(backend="c", threads=threads, **kw),
                         repeat=repeat)


def _last_line(text: str) -> str:
    lines = text.strip().splitlines()
    return lines[-1] if lines else "(no output)"


def _isa() -> str:
    """Which compiled variant runs the pump here: "avx2" or "baseline"."""
    from twinbench.kernel._dispatch import VARIANT_SUFFIX, compiled_module

    name = compiled_module("twinbench.models._pump").__name__
    return "avx2" if name.endswith(VARIANT_SUFFIX) else "baseline"


def _native_figure(scenarios: int, steps: int, repeat: int, portable_s: float):
    """Build the kernel with TWINBENCH_NATIVE=1 into a temporary tree and time it there."""
    import twinbench

    root = Path(twinbench.__file__).resolve().parent.parent
    if not (root / "setup.py").exists():
        return None, "no source tree next to the installed package"
    tmp = Path(tempfile.mkdtemp(prefix="twinbench-native-"))
    try:
        shutil.copytree(root / "twinbench", tmp / "twinbench",
                        ignore=shutil.ignore_patterns("*.so", "*.c", "__pycache__"))
        env = {**os.environ, "TWINBENCH_NATIVE": "1"}
        env.pop("TWINBENCH_BUILD_ONLY", None)
        build = subprocess.run(
            [sys.executable, str(root / "setup.py"), "build_ext", "--build-lib", str(tmp),
             "--build-temp", str(tmp / "build")],
            cwd=root, env=env, capture_output=True, text=True)
        if build.returncode != 0:
            return None, "native build failed: " + _last_line(build.stderr)
        code = (
            "import json, twinbench.kernel._integrate as k\n"
            "from twinbench.bench.integrate import _time_compiled\n"
            f"t = _time_compiled({scenarios}, {steps}, 1, {repeat})\n"
            "print(json.dumps({'seconds': t, 'module': k.__file__}))\n"
        )
        env = {**os.environ, "PYTHONPATH": str(tmp)}
        proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                              text=True, cwd=tmp)
        if proc.returncode != 0:
            return None, "native run failed: " + _last_line(proc.stderr)
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        if not result["module"].startswith(str(tmp)):
            return None, "the native build was not the one imported"
        return result["seconds"], None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _peak_rss(scenarios: int, steps: int) -> dict:
    """Peak RSS of a fresh process running the ensemble, and how much it grew during the run
    (Linux: the peak is reset through /proc/self/clear_refs just before the run)."""
    code = (
        "import json\n"
        "from twinbench.bench.integrate import ensemble_case\n"
        "def status(key):\n"
        "    for line in open('/proc/self/status'):\n"
        "        if line.startswith(key + ':'):\n"
        "            return int(line.split()[1]) * 1024\n"
        f"model, kw = ensemble_case({scenarios}, {steps})\n"
        "model.simulate(backend='c', threads=1, **{**kw, 'steps': kw['every']})\n"
        "open('/proc/self/clear_refs', 'w').write('5')\n"
        "before = status('VmRSS')\n"
        "ds = model.simulate(backend='c', threads=1, **kw)\n"
        "peak = status('VmHWM')\n"
        "out = sum(ds[v].nbytes for v in model.state_names + model.output_names)\n"
        "print(json.dumps({'before': before, 'after': peak, 'output': out}))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(_last_line(proc.stderr))
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run(quick: bool = False) -> list[dict]:
    from scipy.integrate import solve_ivp

    scenarios, steps = (500, 360) if quick else (10_000, 3_600)
    repeat = 1 if quick else 3
    scen_steps = scenarios * steps
    figs = []

    from twinbench.kernel._simulate import resolve_threads

    # What `simulate` does by default for this ensemble (OpenMP over scenario blocks for large
    # ensembles), and the same on one thread.
    n_default = resolve_threads(None, scenarios)
    c1 = _time_compiled(scenarios, steps, 1, repeat)
    ns_c = c1 / scen_steps * 1e9
    c2 = c1 if n_default == 1 else _time_compiled(scenarios, steps, n_default, repeat)
    ns_d = c2 / scen_steps * 1e9

    # NumPy reference on the same ensemble over a tenth of the steps, scaled per scenario-step.
    model, kw = ensemble_case(scenarios, steps)
    ref_steps = max(EVERY, steps // 10)
    kw_ref = {**kw, "steps": ref_steps}
    t_np = best_time(lambda: model.simulate(backend="numpy", **kw_ref), repeat=1 if quick else 2)
    ns_np = t_np / (scenarios * ref_steps) * 1e9
    figs.append(figure(f"pump ensemble {scenarios}x{steps} RK4, compiled, portable build, "
                       f"default threads ({n_default})", ns_d, "ns/scenario-step",
                       "vectorised NumPy reference", ns_np / ns_d, 10, baseline_value=ns_np,
                       seconds=c2, isa=_isa(), threads=n_default))
    figs.append(figure("same, 1 thread", ns_c, "ns/scenario-step", "vectorised NumPy reference",
                       ns_np / ns_c, None, baseline_value=ns_np, seconds=c1))
    if _isa() != "baseline":
        cb = _time_compiled(scenarios, steps, 1, repeat, dispatch="baseline")
        ns_b = cb / scen_steps * 1e9
        figs.append(figure("same, baseline x86-64 code only (TWINBENCH_DISPATCH=baseline)", ns_b,
                           "ns/scenario-step", "vectorised NumPy reference", ns_np / ns_b, None,
                           baseline_value=ns_np))

    # solve_ivp per scenario on a small sample, on the same horizon and output grid, asked for
    # the accuracy the kernel's RK4 reaches at this step (both checked against DOP853 at 1e-13).
    sample = 2 if quick else 5
    ds = model.simulate(backend="c", **{**kw, "x0": None})
    x0 = np.array([v.default for v in model.states])
    u_all = np.array([kw["inputs"].get(v.name, np.full((1, scenarios), v.default))[0, :sample]
                      for v in model.inputs])
    pk = model.kernel_params(np.array([[v.default] for v in model.params]).reshape(model.np, 1))
    t_eval = ds.elapsed.values
    t_ivp = 0.0
    err_rk4 = err_ivp = 0.0
    for i in range(sample):
        ui = u_all[:, i:i + 1]

        def f(t, x, ui=ui):
            return model.rhs(t, x[:, None], ui, pk)[:, 0]

        ref = solve_ivp(f, (0.0, t_eval[-1]), x0, method="DOP853", rtol=1e-13, atol=1e-13,
                        t_eval=t_eval)
        scale = np.abs(ref.y).max(axis=1, keepdims=True) + 1e-300
        ours = np.stack([ds[v.name].values[:, i] for v in model.states])
        err_rk4 = max(err_rk4, float((np.abs(ours - ref.y) / scale).max()))
        t0 = time.perf_counter()
        sol = solve_ivp(f, (0.0, t_eval[-1]), x0, method="RK45", rtol=IVP_RTOL,
                        atol=IVP_RTOL * 1e-3, t_eval=t_eval)
        t_ivp += time.perf_counter() - t0
        if not sol.success:
            raise RuntimeError(f"solve_ivp failed on scenario {i}: {sol.message}")
        err_ivp = max(err_ivp, float((np.abs(sol.y - ref.y) / scale).max()))
    ns_ivp = t_ivp / (sample * steps) * 1e9
    figs.append(figure(f"pump ensemble RK4 compiled, default threads ({n_default}), vs "
                       "solve_ivp per scenario", ns_d, "ns/scenario-step",
                       f"scipy solve_ivp RK45 rtol={IVP_RTOL:g} (same accuracy), {sample} scenarios",
                       ns_ivp / ns_d, 1000, baseline_value=ns_ivp, ratio_one_thread=ns_ivp / ns_c,
                       rk4_max_rel_error=err_rk4,
                       ivp_max_rel_error=err_ivp))

    two = c2 if n_default == 2 else _time_compiled(scenarios, steps, 2, repeat)
    figs.append(figure("pump ensemble RK4 compiled, 2 threads", two / scen_steps * 1e9,
                       "ns/scenario-step", "same, 1 thread", c1 / two, None, baseline_value=ns_c))

    model_r, kw_r = ensemble_case(scenarios, steps)
    kw_r = {**kw_r, "steps": ref_steps, "method": "ros2"}
    t_ros = best_time(lambda: model_r.simulate(backend="c", threads=1, **kw_r), repeat=repeat)
    t_ros_np = best_time(lambda: model_r.simulate(backend="numpy", **{**kw_r, "steps": EVERY}),
                         repeat=1)
    ns_ros = t_ros / (scenarios * ref_steps) * 1e9
    ns_ros_np = t_ros_np / (scenarios * EVERY) * 1e9
    figs.append(figure("pump ensemble ROS2 (implicit) compiled, 1 thread", ns_ros,
                       "ns/scenario-step", "vectorised NumPy reference (ROS2)", ns_ros_np / ns_ros,
                       None, baseline_value=ns_ros_np))

    if not quick:
        native, why = _native_figure(scenarios, steps, repeat, c1)
        if native is not None:
            figs.append(figure("pump ensemble RK4 compiled, native build (-march=native)",
                               native / scen_steps * 1e9, "ns/scenario-step",
                               "portable build, 1 thread", c1 / native, None,
                               baseline_value=ns_c, vs_numpy=ns_np / (native / scen_steps * 1e9)))
        else:
            figs.append(figure("pump ensemble RK4 compiled, native build (-march=native)",
                               None, "ns/scenario-step", "portable build", None, None,
                               note=why))
        mem = _peak_rss(scenarios, steps)
        grown = mem["after"] - mem["before"]
        figs.append(figure(f"pump ensemble {scenarios}x{steps} peak RSS", mem["after"] / 2**20,
                           "MiB", "ratio: size of the output arrays / RSS growth during the run",
                           mem["output"] / max(grown, 1), None,
                           output_mib=mem["output"] / 2**20, growth_mib=grown / 2**20))
    return figs
