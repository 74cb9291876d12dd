"""Plant: the assets ticking in real time, served over OPC-UA and MQTT."""

from __future__ import annotations

import asyncio
import logging
import math
import signal
import sys
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from twinbench.plant._faults import parse_faults
from twinbench.plant._opcua import SECURITY_MODES, PlantServer, free_port
from twinbench.plant._sim import AssetSim, make_asset

__all__ = ["Plant", "run_plant"]

_logger = logging.getLogger("twinbench.plant")


def _positive(value: Any, name: str) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: expected a positive number, got {value!r}") from None
    if not math.isfinite(v) or v <= 0:
        raise ValueError(f"{name}: expected a positive number, got {value!r}")
    return v


class Plant:
    """A simulated plant: the pump (and optionally a wind turbine) in real time, served over
    OPC-UA and MQTT, with fault injection.

    Parameters
    ----------
    host : str
        Interface of the OPC-UA server (and host in its URL).
    opcua_port : int
        OPC-UA port; 0 picks a free one. Endpoint ``opc.tcp://HOST:PORT/twinbench/plant``,
        namespace ``urn:twinbench:plant`` (index 2).
    mqtt : None, "auto", "none" or str
        ``"auto"``: start mosquitto (if installed; else the embedded amqtt broker if importable;
        else OPC-UA only, with a warning) on a free loopback port and publish there;
        ``"mqtt://host:port"`` (user:password@ allowed): publish to that broker; None or
        ``"none"``: no MQTT.
    wind : bool
        Also run the wind turbine (``Wind1``).
    faults : str or iterable of str
        Initial fault specs of the pump (see :mod:`twinbench.plant._faults`).
    seed : int
        Seeds the sensor noise: equal seeds, equal noise.
    speedup : float
        Simulated seconds per wall-clock second.
    rate : float
        Ticks per wall-clock second (each publishes every measurement).
    bench_tags : int
        Number of benchmark variables ``ns=2;s=Bench.Tag0000``... updated at `bench_rate`.
    bench_rate : float
        Updates per second of the benchmark variables.
    security : iterable of {"none", "sign", "encrypt"}
        OPC-UA security policies offered: NoSecurity, Basic256Sha256 Sign, SignAndEncrypt. Sign
        and encrypt use a self-signed server certificate made on first use in `state_dir`. Any
        client certificate is accepted: the plant is a simulator, not a secured device.
    users : mapping of str to str, optional
        Username to password; when given, only these users may log in (no anonymous sessions).
        Passwords are never logged.
    state_dir : path, optional
        Where the certificate is kept (default ``~/.local/share/twinbench/plant``).
    mqtt_qos : int
        QoS of the telemetry (0 default: at 10 Hz a lost sample is replaced 0.1 s later);
        commands and acknowledgements always use QoS 1.
    topic_prefix : str
        First levels of the MQTT topics (``"plant"``: ``plant/pump1/telemetry``); plants sharing
        a broker need different ones (a classroom uses ``plant/student03``).
    secure : bool
        Serve both protocols with authentication: OPC-UA SignAndEncrypt only (no unsecured
        endpoint; `security` must be left at its default or be ``("encrypt",)``), and with
        ``mqtt="auto"`` a mosquitto over TLS (``mqtts://``) with a password file, its CA and
        server certificate generated in `state_dir` (``mqtt-ca.pem`` is what clients trust,
        :attr:`mqtt_ca_file`). Needs `users` (the same accounts on both); the publisher logs in
        with the first. ``mqtt`` must be ``"auto"`` or ``"none"``.

    Examples
    --------
    >>> plant = Plant(opcua_port=0, mqtt="none")
    >>> plant.mqtt_url is None
    True
    """

    def __init__(self, *, host: str = "127.0.0.1", opcua_port: int = 4840,
                 mqtt: str | None = None, wind: bool = False,
                 faults: str | Iterable[str] = (), seed: int = 0, speedup: float = 1.0,
                 rate: float = 10.0, bench_tags: int = 0, bench_rate: float = 10.0,
                 security: Iterable[str] = ("none",), users: Mapping[str, str] | None = None,
                 state_dir: str | Path | None = None, mqtt_qos: int = 0,
                 topic_prefix: str = "plant", secure: bool = False) -> None:
        self.host = str(host)
        if isinstance(opcua_port, bool) or not isinstance(opcua_port, int) \
                or not 0 <= opcua_port <= 65535:
            raise ValueError(f"opcua_port: expected 0..65535, got {opcua_port!r}")
        self._opcua_port = opcua_port
        if mqtt is not None and not isinstance(mqtt, str):
            raise TypeError(f"mqtt: expected None, 'auto', 'none' or a URL, got {mqtt!r}")
        self._mqtt_option = None if mqtt in (None, "none") else mqtt
        if self._mqtt_option not in (None, "auto") and not self._mqtt_option.startswith("mqtt://"):
            # not the URL itself: it may carry a user's password
            raise ValueError(f"mqtt: expected None, 'auto', 'none' or mqtt://host:port, got "
                             f"a {mqtt.split(':', 1)[0]!r} value")
        self.wind = bool(wind)
        self.seed = int(seed)
        self.speedup = _positive(speedup, "speedup")
        self.rate = _positive(rate, "rate")
        self.bench_rate = _positive(bench_rate, "bench_rate")
        if isinstance(bench_tags, bool) or not isinstance(bench_tags, int) or bench_tags < 0:
            raise ValueError(f"bench_tags: expected a count >= 0, got {bench_tags!r}")
        self.bench_tags = bench_tags
        if not isinstance(secure, bool):
            raise TypeError(f"secure: expected True or False, got {secure!r}")
        self.secure = secure
        if secure:
            if tuple(security if not isinstance(security, str) else security.split(",")) \
                    not in (("none",), ("encrypt",)):
                raise ValueError(f"security: secure=True serves SignAndEncrypt only; leave "
                                 f"security out, got {security!r}")
            security = ("encrypt",)
            if not users:
                raise ValueError("users: secure=True needs at least one user (name -> password)")
            if self._mqtt_option not in (None, "auto"):
                raise ValueError("mqtt: secure=True starts its own TLS broker: expected 'auto' or "
                                 "'none'")
        if isinstance(security, str):
            security = security.split(",")
        self.security = tuple(dict.fromkeys(s.strip().lower() for s in security if s.strip()))
        bad = [s for s in self.security if s not in SECURITY_MODES]
        if bad or not self.security:
            raise ValueError(f"security: expected some of {', '.join(SECURITY_MODES)}, got "
                             f"{list(security)}")
        if users is not None:
            users = dict(users)
            if not users or not all(isinstance(k, str) and k and isinstance(v, str)
                                    for k, v in users.items()):
                raise ValueError("users: expected a non-empty mapping of username to password")
        self.users = users
        self.state_dir = Path(state_dir) if state_dir is not None else None
        if mqtt_qos not in (0, 1, 2):
            raise ValueError(f"mqtt_qos: expected 0, 1 or 2, got {mqtt_qos!r}")
        self.mqtt_qos = mqtt_qos
        if not isinstance(topic_prefix, str) or not topic_prefix.strip("/") \
                or any(c in topic_prefix for c in "+#"):
            raise ValueError(f"topic_prefix: expected MQTT topic levels such as 'plant', without "
                             f"wildcards, got {topic_prefix!r}")
        self.topic_prefix = topic_prefix.strip("/")
        self.assets: list[AssetSim] = [make_asset("pump", self.seed)]
        if self.wind:
            self.assets.append(make_asset("wind", self.seed))
        # validate the fault specs now (ValueError before anything starts)
        parse_faults(list(faults) if not isinstance(faults, str) else faults,
                     self.assets[0].output_names)
        self.assets[0].set_faults(faults)
        self._server: PlantServer | None = None
        self._mqtt: Any = None
        self._broker: Any = None
        self._tasks: list[asyncio.Task] = []
        self._port: int | None = None
        self.sim_start: float | None = None
        self.ticks = 0
        self.overruns = 0  # ticks skipped because the plant fell behind
        self.bench_skipped = 0  # bench updates skipped likewise

    # -- public properties -------------------------------------------------------------------
    @property
    def opcua_url(self) -> str:
        """``opc.tcp://HOST:PORT/twinbench/plant`` (the port is known once started when 0)."""
        from twinbench.plant._opcua import ENDPOINT_PATH

        port = self._port if self._port is not None else self._opcua_port
        return f"opc.tcp://{self.host}:{port}{ENDPOINT_PATH}"

    @property
    def mqtt_url(self) -> str | None:
        """The broker the telemetry goes to (no credentials), or None without MQTT."""
        return self._mqtt.public_url if self._mqtt is not None else None

    @property
    def mqtt_ca_file(self) -> Path | None:
        """With ``secure=True`` and MQTT: the CA file that signed the broker's certificate (what
        an ``mqtts://`` client trusts); else None."""
        tls = getattr(self._broker, "tls", None)
        return tls.ca_file if tls is not None else None

    @property
    def topics(self) -> dict[str, dict[str, str]]:
        """MQTT topics by asset key: ``{"pump1": {"telemetry": ..., "command": ..., "ack":
        ...}}`` (empty without MQTT)."""
        from twinbench.plant._mqtt import topics

        return ({a.key: topics(a.key, self.topic_prefix) for a in self.assets}
                if self._mqtt is not None else {})

    @property
    def endpoints(self) -> dict[str, str]:
        """``{"opcua": url}`` plus ``"mqtt": url`` when MQTT runs."""
        out = {"opcua": self.opcua_url}
        if self.mqtt_url is not None:
            out["mqtt"] = self.mqtt_url
        return out

    @property
    def running(self) -> bool:
        return self._server is not None

    # -- life cycle --------------------------------------------------------------------------
    async def start(self) -> None:
        """Start the OPC-UA server, the broker (``mqtt="auto"``), the publisher and the ticks."""
        if self._server is not None:
            return
        try:
            self._port = self._opcua_port or free_port(self.host)
            server = PlantServer(self.assets, host=self.host, port=self._port,
                                 security=self.security, users=self.users,
                                 state_dir=self.state_dir, bench_tags=self.bench_tags,
                                 on_write=self._on_opcua_write)
            await server.start()
            self._server = server
            mqtt_url = self._mqtt_option
            login: dict[str, Any] = {}
            if mqtt_url == "auto":
                from twinbench.plant._broker import start_broker

                tls = None
                if self.secure:
                    from twinbench.plant._opcua import default_state_dir
                    from twinbench.plant._tls import broker_certificates

                    assert self.users is not None
                    tls = broker_certificates(self.state_dir or default_state_dir())
                    user, password = next(iter(self.users.items()))
                    login = {"ca_file": tls.ca_file, "username": user, "password": password}
                self._broker = await start_broker(tls, self.users if self.secure else None)
                mqtt_url = self._broker.url if self._broker is not None else None
            if mqtt_url is not None:
                from twinbench.plant._mqtt import PlantMqtt

                mqtt = PlantMqtt(mqtt_url, self.assets, qos=self.mqtt_qos,
                                 on_command=self._on_mqtt_command, prefix=self.topic_prefix,
                                 **login)
                await mqtt.start()
                self._mqtt = mqtt
            loop = asyncio.get_running_loop()
            self.sim_start = time.time()
            await self._tick(0.0)  # values in place before anyone reads
            self._tasks.append(loop.create_task(self._run_ticks(), name="plant-ticks"))
            if self.bench_tags:
                await self._server.publish_bench(time.time())
                self._tasks.append(loop.create_task(self._run_bench(), name="plant-bench"))
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        """Stop the ticks, the publisher, the server and any broker it started; idempotent."""
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        for task in tasks:
            try:
                await task
            except (asyncio.CancelledError, Exception):  # noqa: BLE001, S110 - stopping anyway
                pass
        mqtt, self._mqtt = self._mqtt, None
        if mqtt is not None:
            await mqtt.stop()
        server, self._server = self._server, None
        if server is not None:
            await server.stop()
        broker, self._broker = self._broker, None
        if broker is not None:
            await broker.stop()

    async def __aenter__(self) -> Plant:  # noqa: PYI034
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- the real-time loop -------------------------------------------------------------------
    async def _run_ticks(self) -> None:
        loop = asyncio.get_running_loop()
        period = 1.0 / self.rate
        t0 = loop.time()
        done = 0  # ticks whose simulated time has been integrated
        due = 1  # the next tick, due at t0 + due * period
        while True:
            # absolute deadlines: the clock never drifts by the work of a tick; always yield
            await asyncio.sleep(max(t0 + due * period - loop.time(), 0.0))
            try:
                await self._tick((due - done) * period * self.speedup, due * period * self.speedup)
            except Exception:
                _logger.exception("plant: tick failed")
            done = due
            # behind (a slow tick, a busy machine): skip to the next deadline still ahead; the
            # next tick integrates the skipped simulated time, so the clocks stay in step
            late = int((loop.time() - t0) / period) + 1
            if late > due + 1:
                self.overruns += late - due - 1
            due = max(due + 1, late)

    async def _tick(self, sim_dt: float, elapsed: float | None = None) -> None:
        if elapsed is None:
            elapsed = 0.0
        sim_time = self.sim_start + elapsed
        for asset in self.assets:
            reading = asset.step(sim_dt, sim_time) if sim_dt > 0 else asset.step(1e-3, sim_time)
            if self._server is not None:
                await self._server.publish(asset, reading)
                if asset.faults_changed:
                    asset.faults_changed = False
                    await self._server.set_value(asset, "fault", asset.fault_string)
            if self._mqtt is not None:
                self._mqtt.publish(asset, reading)
        self.ticks += 1

    async def _run_bench(self) -> None:
        loop = asyncio.get_running_loop()
        period = 1.0 / self.bench_rate
        t0 = loop.time()
        due = 1
        while True:
            await asyncio.sleep(max(t0 + due * period - loop.time(), 0.0))
            await self._server.publish_bench(time.time())
            late = int((loop.time() - t0) / period) + 1
            if late > due + 1:  # behind: skip updates, never queue them
                self.bench_skipped += late - due - 1
            due = max(due + 1, late)

    # -- writes ------------------------------------------------------------------------------
    async def _on_opcua_write(self, asset: AssetSim, tag: str, value: Any) -> None:
        applied = asset.write(tag, value)
        if tag == "fault":
            asset.faults_changed = False
            await self._server.set_value(asset, "fault", applied)

    async def _on_mqtt_command(self, asset: AssetSim, tag: str, value: Any) -> None:
        applied = asset.write(tag, value)  # ValueError -> ok false
        if self._server is not None:
            if tag == "fault":
                asset.faults_changed = False
            await self._server.set_value(asset, tag, applied)

    def describe(self) -> list[str]:
        """One line per endpoint (what the CLI prints when ready)."""
        sec = ",".join(self.security)
        lines = [f"opcua {self.opcua_url} (security {sec}"
                 + (f"; users {', '.join(sorted(self.users))}" if self.users else "")
                 + "; namespace urn:twinbench:plant)"]
        if self._mqtt is not None:
            broker = f"; broker {self._broker.kind} started by the plant" if self._broker else ""
            topics = ", ".join(t["telemetry"] for t in self.topics.values())
            tls = (f"; TLS, CA file {self.mqtt_ca_file}; users {', '.join(sorted(self.users))}"
                   if self.mqtt_ca_file is not None and self.users else "")
            lines.append(f"mqtt {self.mqtt_url} (telemetry {topics}; commands "
                         f"{self.topic_prefix}/<asset>/command, acks "
                         f"{self.topic_prefix}/<asset>/ack{broker}{tls})")
        return lines


def run_plant(classroom: int | None = None, announce: Iterable[str] = (),
              **options: Any) -> int:
    """Run a :class:`Plant` (or, with `classroom`, a
    :class:`~twinbench.plant._classroom.Classroom` of that many plants) until SIGINT or SIGTERM;
    print the endpoints, the lines of `announce` and ``twinbench plant ready`` when ready.
    Returns 0 after a clean stop.

    Takes the keyword arguments of :class:`Plant`.
    """
    if classroom is not None:
        from twinbench.plant._classroom import Classroom

        served: Any = Classroom(classroom, **options)
    else:
        served = Plant(**options)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(sig, stop.set)
            except (NotImplementedError, RuntimeError):  # not the main thread / Windows
                pass
        try:
            await served.start()
            for line in [*served.describe(), *announce]:
                print(line, flush=True)
            print("twinbench plant ready", flush=True)
            await stop.wait()
        finally:
            await served.stop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                try:
                    loop.remove_signal_handler(sig)
                except (NotImplementedError, RuntimeError):
                    pass

    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
    sys.stdout.flush()
    return 0
