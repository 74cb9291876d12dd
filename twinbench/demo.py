"""``twinbench demo``: the simulated plant and the dashboard app, or the kernel on its own.

:func:`serve_demo` (``twinbench demo``) starts the simulated plant (OPC-UA, and MQTT through
mosquitto when installed) and serves ``notebooks/dashboard.ipynb`` with Voila on loopback, prints
the URL and runs until Ctrl-C or SIGTERM. Nothing on the page comes from the internet.

:func:`kernel_demo` (``twinbench demo --kernel``) runs the kernel end to end on recorded-like
data: a simulated day of a pump whose bearing wears out, noisy "sensor" readings, the extended
Kalman filter estimating the unmeasured wear, detectors raising alarms, a particle filter
projecting the remaining useful life, and a what-if ensemble choosing a speed setpoint.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

__all__ = ["kernel_demo", "pump_fault_day", "serve_demo"]

#: ISO 10816-3, group 2 machines on rigid foundations: zone C/D boundary (mm/s RMS).
VIBRATION_LIMIT = 4.5


def _say(text: str = "") -> None:
    print(text, flush=True)


def pump_fault_day(hours: float = 24.0, seed: int = 7):
    """A simulated recording: the pump at its defaults with a bearing fault, sampled once a minute,
    with sensor noise. Returns ``(truth, measurements)`` Datasets."""
    from twinbench.models import pump
    from twinbench.models.pump import BEARING_FAULT_WEAR_RATE

    model = pump()
    truth = model.simulate(duration=hours * 3600.0, dt=0.5, every=120, method="ros2",
                           params={"wear_rate": BEARING_FAULT_WEAR_RATE},
                           start="2026-11-01T00:00:00")
    rng = np.random.default_rng(seed)
    noise = {"speed": 2.0, "flow_rate": 1.0, "pressure": 0.02, "motor_temperature": 0.3,
             "vibration": 0.05, "current": 0.2, "power": 0.2, "total_head": 0.2}
    meas = truth[list(noise)].copy(deep=True)
    for name, sd in noise.items():
        meas[name] = meas[name] + rng.normal(0.0, sd, size=meas[name].shape)
        meas[name].attrs["noise_std"] = sd
    return truth, meas


def kernel_demo(quick: bool = False) -> int:
    """Run the demonstration and print what each step of the twin loop found."""
    from twinbench.kernel import ExtendedKalmanFilter, ParticleFilterRUL
    from twinbench.kernel.detect import Cusum, NisChiSquare
    from twinbench.models import pump
    from twinbench.models.pump import BEARING_FAULT_WEAR_RATE

    t_start = time.perf_counter()
    hours = 12.0 if quick else 24.0
    _say("twinbench — the twin loop on a pump with a developing bearing fault")
    _say("(kernel demonstration; `twinbench plant` serves a live pump over OPC-UA and MQTT, the\n"
         " live twin and the dashboard on top of it arrive with the next issues)\n")

    # observe ---------------------------------------------------------------------------------
    t0 = time.perf_counter()
    truth, meas = pump_fault_day(hours)
    _say(f"1. observe   simulated {hours:g} h of the pump (ROS2, dt 0.5 s) in "
         f"{time.perf_counter() - t0:.2f} s; {meas.sizes['time']} noisy readings of "
         f"{len(meas.data_vars)} sensors, one a minute")

    # estimate --------------------------------------------------------------------------------
    model = pump()
    measured = ["speed", "flow_rate", "motor_temperature", "vibration", "current", "power"]
    R = [meas[m].attrs["noise_std"] ** 2 for m in measured]
    # The twin starts from a new bearing (wear 0); wear is never measured, only inferred.
    ekf = ExtendedKalmanFilter(model, Q=[1e-2, 1e-9, 1e-4, 1e-6], R=R, measured=measured,
                               x0={"wear": 0.0},
                               P0=[1.0, 1e-6, 1.0, 1e-3], max_step=0.5)
    t0 = time.perf_counter()
    est = ekf.filter(meas.time.values, np.column_stack([meas[m].values for m in measured]))
    wall = time.perf_counter() - t0
    wear_true = float(truth.wear[-1])
    wear_est = float(est.wear[-1])
    wear_sd = float(est.wear_std[-1])
    _say(f"2. estimate  EKF over {est.sizes['time']} readings in {wall * 1e3:.0f} ms: bearing wear "
         f"(not measured) {wear_est:.3f} ± {2 * wear_sd:.3f} (2σ), true {wear_true:.3f}")

    # detect ----------------------------------------------------------------------------------
    base = meas.vibration.isel(time=slice(0, 120))
    cusum = Cusum(k=0.5, h=8.0, mean=float(base.mean()), std=float(base.std()))
    cs = cusum.update(meas.vibration.values)
    nis = NisChiSquare(window=30, significance=0.001)
    nr = nis.update(est.nis.values, est.nis_dof.values)
    first = np.flatnonzero(cs.alarm)
    elapsed_h = (meas.time.values - meas.time.values[0]) / np.timedelta64(1, "h")
    if first.size:
        _say(f"3. detect    CUSUM on vibration alarms after {elapsed_h[first[0]]:.1f} h "
             f"(vibration {float(meas.vibration[first[0]]):.2f} mm/s, baseline "
             f"{float(base.mean()):.2f}); EKF innovations consistent "
             f"{100 * (1 - nr.alarm.mean()):.0f}% of the time (NIS chi-square test)")
    else:
        _say("3. detect    no CUSUM alarm on vibration")

    # predict ---------------------------------------------------------------------------------
    pf = ParticleFilterRUL("exponential", threshold=VIBRATION_LIMIT, measurement_std=0.05,
                           offset=0.0, n_particles=2000, prior={"b": (0.0, 2e-5)},
                           horizon=30 * 24 * 3600.0, seed=1)
    half = meas.sizes["time"] // 2
    rul_mid = pf.update(meas.time.values[:half], meas.vibration.values[:half])
    rul_end = pf.update(meas.time.values[half:], meas.vibration.values[half:])
    q = dict(zip(np.round(rul_end.quantile, 2), rul_end.rul / 3600.0))
    _say(f"4. predict   remaining useful life to {VIBRATION_LIMIT} mm/s (ISO 10816-3 C/D): "
         f"median {q[0.5]:.1f} h (90% interval {q[0.05]:.1f}–{q[0.95]:.1f} h); half-way through "
         f"it was {np.median(rul_mid.rul) / 3600.0:.1f} h")

    # act: what-if --------------------------------------------------------------------------
    n = 200 if quick else 1000
    setpoints = np.linspace(1800.0, 2950.0, n)
    x_now = {name: float(est[name][-1]) for name in model.state_names}
    t0 = time.perf_counter()
    whatif = model.simulate(duration=8 * 3600.0, dt=2.0, every=1800, method="ros2",
                            x0=x_now, params={"wear_rate": BEARING_FAULT_WEAR_RATE},
                            inputs={"speed_setpoint": setpoints[None, :]})
    wall = time.perf_counter() - t0
    vib_end = whatif.vibration.isel(time=-1).values
    ok = setpoints[vib_end < VIBRATION_LIMIT]
    flow = whatif.flow_rate.isel(time=-1).values
    if ok.size:
        best = ok.max()
        i = int(np.argmin(abs(setpoints - best)))
        _say(f"5. act       what-if: {n} speed setpoints × 8 h from the estimated state in "
             f"{wall:.2f} s; the highest setpoint that keeps vibration below "
             f"{VIBRATION_LIMIT} mm/s for 8 h is {best:.0f} rpm "
             f"(flow {flow[i]:.0f} m3/h) -> recommendation")
    else:
        _say(f"5. act       what-if: {n} speed setpoints × 8 h in {wall:.2f} s; no setpoint keeps "
             f"vibration below {VIBRATION_LIMIT} mm/s for 8 h -> recommend stopping for "
             "maintenance")
    _say(f"\ndone in {time.perf_counter() - t_start:.1f} s. Next: `twinbench bench kernel` for the "
         "kernel's speed figures.")
    return 0


def _port_or_free(port: int | None, default: int) -> int:
    """`port` if given (0: any free one); else `default` when it is free, else any free one."""
    from twinbench.app import free_port

    if port is not None:
        return free_port() if port == 0 else port
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", default))
            return default
        except OSError:
            return free_port()


def serve_demo(*, port: int | None = None, opcua_port: int | None = None,
               writable: Sequence[str] | str = ("speed_setpoint",),
               audit: str | os.PathLike[str] | None = None, mqtt: str = "auto",
               speedup: float = 1.0, faults: str | Iterable[str] = (),
               verbose: bool = False, sign_in: bool = True, read_only: bool = False,
               users: str | os.PathLike[str] | None = None, host: str = "127.0.0.1") -> int:
    """Run the plant and the dashboard app until Ctrl-C or SIGTERM; the exit code.

    Parameters
    ----------
    port : int, optional
        Voila's port (default 8866 if free, else a free one; 0: a free one).
    opcua_port : int, optional
        The plant's OPC-UA port (default 4840 if free, else a free one; 0: a free one).
    writable : sequence of str or comma-separated str
        Tags the dashboard may write (guarded, audited); empty for a read-only app.
    audit : path, optional
        The audit log (default ``~/.local/share/twinbench/demo/audit.jsonl``).
    mqtt : str
        The plant's MQTT option: ``"auto"`` (mosquitto if installed), ``"none"`` or a broker URL.
    speedup, faults
        Passed to :class:`twinbench.plant.Plant`.
    verbose : bool
        Show Voila's log on stderr.
    sign_in : bool, default True
        Visitors sign in (see :mod:`twinbench.auth`). Without `users`, a users file is made for
        this run with one operator, ``operator``, whose generated password is printed once.
    read_only : bool, default False
        A public showcase: no write path at all (no tags writable, no writer in the kernel),
        and no sign-in unless `sign_in` is also given as True by `users`.
    users : path, optional
        An existing users file (``twinbench users add``) instead of the generated operator.
    host : str, default "127.0.0.1"
        The address Voila listens on. Another address serves other machines: a writable app
        is then refused without sign-in.

    Prints the endpoints, the app's URL, the sign-in (the generated password only here) and
    then ``twinbench demo ready``.
    """
    from twinbench.app import VoilaServer, dashboard_env, dashboard_path
    from twinbench.auth import users_file as open_users
    from twinbench.plant import Plant

    if read_only:
        writable = ()
        sign_in = users is not None
    if users is not None:
        sign_in = True
    loopback = host in ("127.0.0.1", "localhost", "::1")
    if not sign_in and not loopback and (writable if isinstance(writable, str) else
                                         list(writable)):
        raise ValueError(f"host: a writable app on {host} needs sign-in (drop --no-sign-in, "
                         f"or serve it --read-only)")
    notebook = dashboard_path()
    if audit is None:
        audit = Path.home() / ".local" / "share" / "twinbench" / "demo" / "audit.jsonl"
    audit = Path(audit)
    audit.parent.mkdir(parents=True, exist_ok=True)
    plant = Plant(opcua_port=_port_or_free(opcua_port, 4840), mqtt=mqtt, speedup=speedup,
                  faults=faults)
    password = None
    if sign_in and users is None:
        # A users file for this run only, with a fresh operator password: a credential that
        # outlives the demo would be one more secret lying around.
        state = Path(tempfile.mkdtemp(prefix="twinbench-demo-"))
        users = state / "users.json"
        password = secrets.token_urlsafe(12)
        open_users(users).add("operator", password, "operator")
    try:
        server = VoilaServer(notebook, port=_port_or_free(port, 8866), host=host,
                             quiet=not verbose, env={}, auth="users" if sign_in else None,
                             users_file=users if sign_in else None)
    except BaseException:
        if password is not None:  # the run's users file goes with the run
            shutil.rmtree(Path(users).parent, ignore_errors=True)
        raise

    async def main() -> int:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            await plant.start()
            for kind, url in plant.endpoints.items():
                _say(f"plant {kind:<6} {url}")
            server.env.update(dashboard_env(plant.opcua_url, writable, audit))
            await loop.run_in_executor(None, server.start)
            _say(f"writable    {server.env['TWINBENCH_WRITABLE'] or 'none (read-only)'}"
                 f"; audit log {audit}")
            _say(f"dashboard   {server.url}")
            if password is not None:
                _say(f"sign in     operator / {password}  (shown only now; valid for this run)")
            elif sign_in:
                _say(f"sign in     with an account of {users}")
            else:
                _say("sign in     off" + (" (read-only showcase)" if read_only else ""))
            _say("twinbench demo ready  (Ctrl-C stops it)")
            code = 0
            while not stop.is_set():
                # Voila dying (killed, port stolen) ends the demo instead of serving a dead URL
                if not server.running:
                    print(f"twinbench demo: voila exited{server._log_tail()}", file=sys.stderr)
                    code = 1
                    break
                try:
                    await asyncio.wait_for(stop.wait(), 0.5)
                except TimeoutError:
                    pass
            return code
        finally:
            await loop.run_in_executor(None, server.stop)
            await plant.stop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
            if password is not None:
                shutil.rmtree(Path(users).parent, ignore_errors=True)
            _say("twinbench demo stopped")

    return asyncio.run(main())
