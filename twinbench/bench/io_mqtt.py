"""Benchmark: the MQTT source against a bare paho subscriber, on a real mosquitto.

The benchmark starts its own mosquitto on a free loopback port (temporary directory; config
``listener PORT 127.0.0.1``, ``allow_anonymous true``, ``persistence false``,
``max_queued_messages 1000000``, ``max_queued_bytes 0``, ``max_inflight_messages 0`` — all
accepted by mosquitto 2.0.11; the default queue of 1000 would drop messages for a slow
subscriber) and stops it at the end, also on error.

Throughput (QoS 0, and QoS 1 for the "zero loss" half of the issue)
    ``N`` JSON telemetry messages of ~103 bytes
    (``{"ts": <epoch ms>, "seq": i, "speed": ..., "flow_rate": ..., "pressure": ...,
    "vibration": ...}``) are published as fast as possible by a separate publisher *process*,
    ``mosquitto_pub -l`` fed the lines from a file (a C client: the publisher is not the
    bottleneck; its own rate is kept in the figures as ``publisher_rate``). Receivers, one at a
    time, each run in this process (the same interpreter, the same number of threads: paho's
    network thread plus the consumer):

    * bare: a paho-mqtt 2.x client (``CallbackAPIVersion.VERSION2``, ``loop_start()``) whose
      ``on_message`` does ``json.loads(payload)`` (stdlib) and counts;
    * twinbench: ``mqtt_source(url, {speed, flow_rate, pressure, vibration}, qos=...,
      decoder="json", time_field="ts", time_format="epoch_ms")`` read with ``await
      src.read(0.05)`` in an asyncio loop until all 4 x N samples have arrived;
    * the C ceiling: ``mosquitto_sub -C N`` (QoS 0 only).

    Rate = N / (time the receiver holds the last message - time just before the publisher
    process is started), the same clock and rule for all three. The receiver is subscribed
    before the publisher starts. Each receiver runs ``rounds`` times, interleaved
    (bare, twinbench, C, then C, twinbench, bare, ...); the figure is the best round of each (the
    least disturbed on a shared machine), every round is kept under ``rounds_msg_s``.
    Lost = N - messages decoded (``status["decode"]["accepted"]``) once no more arrive.

Latency at 5,000 msg/s
    A Python paho publisher process publishes at a steady 5,000 msg/s (absolute deadlines) and
    writes ``time.time_ns()`` of the publish call into the payload's ``ts``. twinbench: latency
    of a message = ``time.time_ns()`` when ``read()`` returned its batch - ``ts`` (decoded with
    ``time_format="epoch_ns"``, so it is the batch's ``time`` column). Bare paho: ``time.time_ns()``
    in ``on_message`` after ``json.loads`` - ``ts``. Every message of the run counts. The full run
    measures each side twice for 1.5 s, interleaved (twinbench, bare, bare, twinbench); the
    percentiles are over all messages. When the publisher itself misses its schedule by > 1 ms
    for more than 5 % of the messages, the figures carry a ``note`` that the machine was
    overloaded.

    This part runs on a second mosquitto with ``set_tcp_nodelay true``, and the publisher sets
    ``TCP_NODELAY`` on its socket (paho does not): with Nagle's algorithm on either hop, ~100-byte
    messages now and then wait for a delayed ACK, and both receivers, bare paho included, show a
    p99 of ~40 ms that says nothing about the source. A twin's broker config should set
    ``set_tcp_nodelay true`` too. The throughput part uses mosquitto's defaults.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from twinbench.bench._common import figure

__all__ = ["LATENCY_RATE", "LATENCY_TARGET_MS", "TAGS", "run"]

TOPIC = "bench/pump1/telemetry"
#: The tag map the twinbench source reads: four fields of every message.
TAGS = {name: f"{TOPIC}#{name}" for name in ("speed", "flow_rate", "pressure", "vibration")}
LATENCY_TARGET_MS = 10.0
LATENCY_RATE = 5_000

#: Extra mosquitto.conf lines of the latency broker, and TCP_NODELAY on the paced publisher's
#: socket: see "Latency" in the module docstring.
LATENCY_BROKER_EXTRA = "set_tcp_nodelay true\n"
_PUB_NODELAY = True
_MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
_PUB = shutil.which("mosquitto_pub")
_SUB = shutil.which("mosquitto_sub")


# -- broker ------------------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def _broker(workdir: Path, extra: str = "") -> Iterator[int]:
    """A mosquitto on a free loopback port for the duration of the block; yields the port.

    Its log is ``workdir / f"mosquitto-{port}.log"``; `extra` lines are added to its config.
    """
    port = _free_port()
    conf = workdir / f"mosquitto-{port}.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
                    "max_queued_messages 1000000\nmax_queued_bytes 0\n"
                    "max_inflight_messages 0\n" + extra +
                    # "subscribe" logs each SUBSCRIBE: how the C subscriber is seen to be ready.
                    "log_type error\nlog_type warning\nlog_type notice\nlog_type information\n"
                    "log_type subscribe\n")
    log_path = workdir / f"mosquitto-{port}.log"
    log = log_path.open("ab")
    proc = subprocess.Popen([_MOSQUITTO, "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 10.0
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited with code {proc.returncode}: "
                                   f"{log_path.read_text()[-500:]}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"mosquitto did not listen on 127.0.0.1:{port}") from None
                time.sleep(0.02)
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        log.close()


def _stop(proc: subprocess.Popen[Any] | None) -> None:
    if proc is not None and proc.poll() is None:
        proc.kill()
        proc.wait(5)


# -- payloads and publishers -------------------------------------------------------------------

def _payload_file(workdir: Path, n: int) -> Path:
    """`n` telemetry lines (~103 bytes each), ``ts`` in epoch ms, one per line."""
    path = workdir / f"telemetry-{n}.jsonl"
    if path.exists():
        return path
    rng = np.random.default_rng(0)
    t0 = time.time_ns() // 1_000_000 - 3_600_000  # an hour ago: a trusted past timestamp
    speed = 2950.0 + rng.normal(0, 5, n)
    flow = 101.0 + rng.normal(0, 1, n)
    pressure = 3.4 + rng.normal(0, 0.05, n)
    vib = 2.1 + rng.normal(0, 0.1, n)
    with path.open("w") as f:
        for i in range(n):
            f.write(f'{{"ts": {t0 + i}, "seq": {i}, "speed": {speed[i]:.1f}, '
                    f'"flow_rate": {flow[i]:.1f}, "pressure": {pressure[i]:.1f}, '
                    f'"vibration": {vib[i]:.1f}}}\n')
    return path


def _start_c_publisher(port: int, lines: Path, qos: int) -> subprocess.Popen[bytes]:
    args = [_PUB, "-h", "127.0.0.1", "-p", str(port), "-t", TOPIC, "-q", str(qos), "-l"]
    if qos:
        args += ["-M", "1000"]  # in-flight window: the publisher must not wait per message
    with lines.open("rb") as stdin:
        return subprocess.Popen(args, stdin=stdin, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE)


# A paced publisher (its own process): `rate` msg/s for `seconds`, publish wall time (ns) in "ts".
_PACED_PUBLISHER = r"""
import socket, sys, time
from paho.mqtt.client import CallbackAPIVersion, Client
port, topic, rate, seconds = int(sys.argv[1]), sys.argv[2], float(sys.argv[3]), float(sys.argv[4])
nodelay = sys.argv[5] == "1"
c = Client(CallbackAPIVersion.VERSION2)
c.connect("127.0.0.1", port, 30)
if nodelay:  # paho leaves Nagle on: 100-byte publishes may wait for the broker's delayed ACK
    c.socket().setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
c.loop_start()
n = int(rate * seconds)
period = 1.0 / rate
start = time.perf_counter() + 0.05
late = 0
for i in range(n):
    d = start + i * period - time.perf_counter()
    if d > 0:
        time.sleep(d)
    elif d < -0.001:
        late += 1
    info = c.publish(topic, b'{"ts": %d, "seq": %d, "speed": 2950.1, "flow_rate": 101.2, '
                            b'"pressure": 3.4, "vibration": 2.1}' % (time.time_ns(), i), qos=0)
elapsed = time.perf_counter() - start
info.wait_for_publish(5)
c.disconnect()
c.loop_stop()
print(n, elapsed, late, flush=True)
"""


def _start_paced_publisher(port: int, seconds: float) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", _PACED_PUBLISHER, str(port), TOPIC,
                             str(LATENCY_RATE), str(seconds), "1" if _PUB_NODELAY else "0"],
                            stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _paced_result(proc: subprocess.Popen[str]) -> dict[str, Any]:
    out, err = proc.communicate(timeout=30)
    if proc.returncode != 0:
        raise RuntimeError(f"paced publisher failed ({proc.returncode}): {err[-500:]}")
    n, elapsed, late = out.split()
    return {"publisher_rate": int(n) / float(elapsed), "publisher_late": int(late)}


# -- receivers ---------------------------------------------------------------------------------

def _await_publisher(pub: subprocess.Popen[Any], t0: float) -> float | None:
    """The publisher's run time in seconds once its process has exited, else None."""
    if pub.poll() is None:
        return None
    return time.perf_counter() - t0


def _bare_paho(port: int, qos: int, n: int, start_publisher: Any,
               idle_timeout: float) -> dict[str, Any]:
    """Bare paho subscriber in this process; ``on_message`` json.loads and counts."""
    from paho.mqtt.client import CallbackAPIVersion, Client

    state = {"n": 0, "end": 0.0}
    done = threading.Event()
    subscribed = threading.Event()

    def on_message(client: Any, userdata: Any, msg: Any) -> None:
        json.loads(msg.payload)
        state["n"] += 1
        if state["n"] >= n:
            state["end"] = time.perf_counter()
            done.set()

    client = Client(CallbackAPIVersion.VERSION2)
    client.on_message = on_message
    client.on_subscribe = lambda *a: subscribed.set()
    client.connect("127.0.0.1", port, 30)
    client.loop_start()
    pub = None
    try:
        client.subscribe(TOPIC, qos)
        if not subscribed.wait(5):
            raise RuntimeError("bare paho: no SUBACK within 5 s")
        t0 = time.perf_counter()
        pub = start_publisher()
        pub_time = None
        last_n, last_change = 0, time.perf_counter()
        while not done.wait(0.05):
            now = time.perf_counter()
            if pub_time is None:
                pub_time = _await_publisher(pub, t0)
            if state["n"] != last_n:
                last_n, last_change = state["n"], now
            elif pub_time is not None and now - last_change > idle_timeout:
                break  # lost messages: nothing more is coming
        if pub_time is None:
            pub.wait(30)
            pub_time = time.perf_counter() - t0
        got = state["n"]
        end = state["end"] if got >= n else time.perf_counter()
        return {"received": got, "seconds": end - t0, "rate": got / (end - t0),
                "publisher_rate": n / pub_time}
    finally:
        _stop(pub)
        client.disconnect()
        client.loop_stop()


def _twinbench(port: int, qos: int, n: int, start_publisher: Any,
               idle_timeout: float) -> dict[str, Any]:
    """The twinbench MQTT source in this process's asyncio loop, reading until 4 x n samples."""
    from twinbench.io.mqtt import mqtt_source

    async def main() -> dict[str, Any]:
        src = mqtt_source(f"mqtt://127.0.0.1:{port}", TAGS, qos=qos, decoder="json",
                          time_field="ts", time_format="epoch_ms")
        await src.start()
        pub = None
        try:
            want = n * len(TAGS)
            rows = 0
            t0 = time.perf_counter()
            pub = start_publisher()
            pub_time = None
            last_change = last_poll = time.perf_counter()
            while rows < want:
                batch = await src.read(0.05)
                now = time.perf_counter()
                if pub_time is None and now - last_poll >= 0.05:
                    # As often as the bare side looks (every 50 ms), not once per batch.
                    last_poll = now
                    pub_time = _await_publisher(pub, t0)
                if batch is None:
                    break
                if len(batch):
                    rows += len(batch)
                    last_change = now
                elif pub_time is not None and now - last_change > idle_timeout:
                    break
            end = time.perf_counter()
            if pub_time is None:
                pub.wait(30)
                pub_time = time.perf_counter() - t0
            status = src.status
            got = status["decode"]["accepted"]
            return {"received": got, "seconds": end - t0, "rate": got / (end - t0),
                    "publisher_rate": n / pub_time, "rows": rows,
                    "broker_messages": status["messages"],
                    "dropped_overflow": status["dropped_overflow"],
                    "rejected": status["decode"]["rejected"], "batches": status["batches"]}
        finally:
            _stop(pub)
            await src.stop()

    return asyncio.run(main())


def _c_subscriber(port: int, n: int, start_publisher: Any, workdir: Path,
                  timeout: float) -> dict[str, Any]:
    """``mosquitto_sub -C n`` (QoS 0): the C client's rate, the ceiling to approach."""
    client_id = f"twinbench-bench-csub-{os.getpid()}-{time.monotonic_ns()}"
    broker_log = workdir / f"mosquitto-{port}.log"
    sub = subprocess.Popen([_SUB, "-h", "127.0.0.1", "-p", str(port), "-t", TOPIC, "-q", "0",
                            "-C", str(n), "-i", client_id], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    pub = None
    try:
        deadline = time.monotonic() + 5
        # The broker logs "<client id> <qos> <topic>" when the subscription is made.
        while f"{client_id} 0 {TOPIC}".encode() not in broker_log.read_bytes():
            if time.monotonic() > deadline or sub.poll() is not None:
                raise RuntimeError("mosquitto_sub did not subscribe within 5 s")
            time.sleep(0.005)
        t0 = time.perf_counter()
        pub = start_publisher()
        pub_time = None
        while True:
            try:
                sub.wait(0.01)
                break
            except subprocess.TimeoutExpired:
                if pub_time is None:
                    pub_time = _await_publisher(pub, t0)
                if pub_time is not None and time.perf_counter() - t0 - pub_time > timeout:
                    break
        end = time.perf_counter()
        if pub_time is None:
            pub.wait(30)
            pub_time = time.perf_counter() - t0
        ok = sub.poll() == 0
        return {"received": n if ok else None, "seconds": end - t0,
                "rate": n / (end - t0) if ok else None, "publisher_rate": n / pub_time}
    finally:
        _stop(pub)
        _stop(sub)


# -- latency -----------------------------------------------------------------------------------

def _latency_twinbench(port: int, seconds: float) -> dict[str, Any]:
    from twinbench.io.mqtt import mqtt_source

    async def main() -> dict[str, Any]:
        src = mqtt_source(f"mqtt://127.0.0.1:{port}", TAGS, qos=0, decoder="json",
                          time_field="ts", time_format="epoch_ns")
        await src.start()
        pub = _start_paced_publisher(port, seconds)
        lat: list[np.ndarray] = []
        try:
            idle_since = None
            while True:
                batch = await src.read(0.05)
                now = time.time_ns()
                if batch is None:
                    break
                if len(batch):
                    idle_since = None
                    sent = batch.time[batch.tag == 0].view(np.int64)
                    lat.append(now - sent)
                elif pub.poll() is not None:
                    idle_since = idle_since or time.monotonic()
                    if time.monotonic() - idle_since > 0.3:
                        break
            pub_info = _paced_result(pub)
        finally:
            _stop(pub)
            await src.stop()
        ns = np.concatenate(lat) if lat else np.empty(0, np.int64)
        return {"latency_ns": ns, **pub_info}

    return asyncio.run(main())


def _latency_bare(port: int, seconds: float) -> dict[str, Any]:
    from paho.mqtt.client import CallbackAPIVersion, Client

    lat: list[int] = []
    subscribed = threading.Event()

    def on_message(client: Any, userdata: Any, msg: Any) -> None:
        doc = json.loads(msg.payload)
        lat.append(time.time_ns() - doc["ts"])

    client = Client(CallbackAPIVersion.VERSION2)
    client.on_message = on_message
    client.on_subscribe = lambda *a: subscribed.set()
    client.connect("127.0.0.1", port, 30)
    client.loop_start()
    pub = None
    try:
        client.subscribe(TOPIC, 0)
        if not subscribed.wait(5):
            raise RuntimeError("bare paho: no SUBACK within 5 s")
        pub = _start_paced_publisher(port, seconds)
        pub_info = _paced_result(pub)
        time.sleep(0.3)  # the last messages in flight
    finally:
        _stop(pub)
        client.disconnect()
        client.loop_stop()
    return {"latency_ns": np.array(lat, dtype=np.int64), **pub_info}


# -- figures -----------------------------------------------------------------------------------

def _none_figures(note: str, qos1: bool = True) -> list[dict]:
    names = [("mqtt_rate_twinbench", "msg/s", "bare paho + json.loads", 1.0),
             ("mqtt_rate_bare", "msg/s", "bare paho + json.loads", None),
             ("mqtt_lost", "messages", "zero loss", 1.0),
             ("mqtt_vs_c_ceiling", "msg/s", "mosquitto_sub (C client)", None)]
    if qos1:
        names += [("mqtt_rate_twinbench_qos1", "msg/s", "bare paho + json.loads, QoS 1", 1.0),
                  ("mqtt_rate_bare_qos1", "msg/s", "bare paho + json.loads, QoS 1", None),
                  ("mqtt_lost_qos1", "messages", "zero loss", 1.0)]
    return [figure(name, None, unit, base, None, target, note=note)
            for name, unit, base, target in names]


def _latency_none(note: str) -> list[dict]:
    return [figure(name, None, "ms", base, None, target, note=note)
            for name, base, target in
            (("mqtt_latency_p50", "publish -> batch returned by read()", None),
             ("mqtt_latency_p99", f"{LATENCY_TARGET_MS:g} ms requirement", 1.0),
             ("mqtt_latency_p99_bare", "publish -> bare paho on_message + json.loads", None))]


def _throughput(port: int, workdir: Path, qos: int, n: int, rounds: int,
                with_c: bool) -> list[dict]:
    lines = _payload_file(workdir, n)

    def publisher() -> subprocess.Popen[bytes]:
        return _start_c_publisher(port, lines, qos)

    idle = 2.0
    runs: dict[str, list[dict[str, Any]]] = {"bare": [], "twinbench": [], "c": []}
    receivers = {"bare": lambda: _bare_paho(port, qos, n, publisher, idle),
                 "twinbench": lambda: _twinbench(port, qos, n, publisher, idle),
                 "c": lambda: _c_subscriber(port, n, publisher, workdir, idle + 5)}
    if not with_c:
        del receivers["c"]
    order = list(receivers)
    for i in range(rounds):
        # Interleaved, the order reversed every other round: no side always goes first.
        for key in order if i % 2 == 0 else order[::-1]:
            gc.collect()
            runs[key].append(receivers[key]())

    def best(key: str) -> dict[str, Any]:
        done = [r for r in runs[key] if r["rate"] is not None]
        return max(done, key=lambda r: r["rate"]) if done else {"rate": None}

    def rounds_of(key: str) -> list[float | None]:
        return [None if r["rate"] is None else round(r["rate"]) for r in runs[key]]

    bare, tb = best("bare"), best("twinbench")

    def ratio(a: float | None, b: float | None) -> float | None:
        return None if a is None or not b else a / b

    lost = max(n - r["received"] for r in runs["twinbench"])  # the worst round counts
    bare_lost = max(n - r["received"] for r in runs["bare"])
    pub_rate = max(r["publisher_rate"] for k in runs for r in runs[k])
    sfx = "" if qos == 0 else f"_qos{qos}"
    common = {"messages": n, "qos": qos, "publisher": "mosquitto_pub -l (C, own process)",
              "publisher_rate": round(pub_rate)}
    figs = [
        figure(f"mqtt_rate_twinbench{sfx}", tb["rate"], "msg/s", f"bare paho + json.loads"
               f"{'' if qos == 0 else f', QoS {qos}'}", ratio(tb["rate"], bare["rate"]), 1.0,
               baseline_value=bare["rate"], rounds_msg_s=rounds_of("twinbench"),
               batches=tb.get("batches"), **common),
        figure(f"mqtt_rate_bare{sfx}", bare["rate"], "msg/s", "bare paho + json.loads (itself)",
               None, None, rounds_msg_s=rounds_of("bare"), lost=bare_lost, **common),
        figure(f"mqtt_lost{sfx}", lost, "messages", "zero loss", 1.0 if lost == 0 else 0.0, 1.0,
               received=[r["received"] for r in runs["twinbench"]],
               dropped_overflow=sum(r["dropped_overflow"] for r in runs["twinbench"]),
               rejected=sum(r["rejected"] for r in runs["twinbench"]), **common),
    ]
    if with_c:
        c = best("c")
        figs.append(figure("mqtt_vs_c_ceiling", tb["rate"], "msg/s",
                           "mosquitto_sub -C N (C client), same run",
                           ratio(tb["rate"], c["rate"]), None,
                           baseline_value=c["rate"], rounds_msg_s=rounds_of("c"), **common))
    return figs


def _latency(port: int, seconds: float, rounds: int) -> list[dict]:
    tb_runs: list[dict[str, Any]] = []
    bare_runs: list[dict[str, Any]] = []
    sides = [(tb_runs, _latency_twinbench), (bare_runs, _latency_bare)]
    for _, measure in sides:  # warm-up, discarded: first-call costs are not steady state
        measure(port, 0.3)
    for i in range(rounds):
        for runs, measure in sides if i % 2 == 0 else sides[::-1]:
            gc.collect()
            runs.append(measure(port, seconds))
    tb_ns = np.concatenate([r["latency_ns"] for r in tb_runs])
    bare_ns = np.concatenate([r["latency_ns"] for r in bare_runs])
    expected = int(LATENCY_RATE * seconds) * rounds
    p50, p99 = (np.percentile(tb_ns, [50, 99]) / 1e6).tolist()
    b50, b99 = (np.percentile(bare_ns, [50, 99]) / 1e6).tolist()
    late = sum(r["publisher_late"] for r in tb_runs + bare_runs)
    common = {"rate_msg_s": LATENCY_RATE, "seconds": seconds * rounds,
              "transport": "TCP_NODELAY on the publisher, set_tcp_nodelay true in mosquitto",
              "publisher_rate": round(min(r["publisher_rate"] for r in tb_runs + bare_runs)),
              "publisher_late": late}
    if late > 0.05 * 2 * expected:
        # The paced publisher itself fell behind: the machine was overloaded during the run.
        common["note"] = (f"publisher >1 ms behind schedule for {late} of {2 * expected} "
                          f"messages: machine overloaded, latencies not representative")
    return [
        figure("mqtt_latency_p50", p50, "ms", "publish -> batch returned by read()", None, None,
               baseline_value=b50, messages=len(tb_ns), expected=expected,
               max_ms=float(tb_ns.max() / 1e6), **common),
        figure("mqtt_latency_p99", p99, "ms", f"{LATENCY_TARGET_MS:g} ms requirement",
               LATENCY_TARGET_MS / p99, 1.0, baseline_value=b99, messages=len(tb_ns),
               expected=expected, **common),
        figure("mqtt_latency_p99_bare", b99, "ms", "publish -> bare paho on_message + json.loads",
               None, None, p50=b50, messages=len(bare_ns), expected=expected, **common),
    ]


def run(quick: bool = False) -> list[dict]:
    """MQTT figures: throughput (QoS 0 and 1) against a bare paho subscriber, loss, latency."""
    if not Path(_MOSQUITTO).exists():
        note = f"mosquitto not installed ({_MOSQUITTO}): apt-get install mosquitto"
        return _none_figures(note) + _latency_none(note)
    n = 10_000 if quick else 100_000
    n_qos1 = 5_000 if quick else 10_000
    rounds = 1 if quick else 2
    seconds = 1.0 if quick else 1.5  # per round; 1 round quick, 2 rounds full
    figs: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="twinbench-bench-mqtt-") as tmp:
        workdir = Path(tmp)
        with _broker(workdir) as port:
            if _PUB is None:
                figs += _none_figures("mosquitto_pub not installed (package mosquitto-clients): "
                                      "no C publisher for the throughput figures")
            else:
                try:
                    figs += _throughput(port, workdir, 0, n, rounds, with_c=_SUB is not None)
                    if _SUB is None:
                        figs.append(figure("mqtt_vs_c_ceiling", None, "msg/s",
                                           "mosquitto_sub (C client)", None, None,
                                           note="mosquitto_sub not installed"))
                    figs += _throughput(port, workdir, 1, n_qos1, 1, with_c=False)
                except Exception as exc:  # noqa: BLE001 - a failed measurement is a figure
                    figs = _none_figures(f"throughput run failed: {exc!r}")
        with _broker(workdir, LATENCY_BROKER_EXTRA) as port:
            try:
                figs += _latency(port, seconds, rounds)
            except Exception as exc:  # noqa: BLE001
                figs += _latency_none(f"latency run failed: {exc!r}")
    return figs


if __name__ == "__main__":  # pragma: no cover - manual runs
    for fig in run(quick="--quick" in sys.argv):
        print(json.dumps(fig))
    os._exit(0)
