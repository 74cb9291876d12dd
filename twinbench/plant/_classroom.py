"""A classroom: N independent plants in one process, one per student, on consecutive ports.

``twinbench plant --classroom N`` serves student 1 at ``--opcua-port``, student 2 at the next port
and so on. Each plant has its own simulation and its own noise seed (``seed + i`` for the i-th
student, counting from 0, so student01 sees what a single plant with that seed shows), so a
setpoint one student writes or a fault one student injects never reaches another. With MQTT on,
the plants share one broker and each publishes under its own prefix
(``plant/student03/pump1/telemetry``).

All plants tick on one asyncio loop, in one process. Measured on the 2-core development machine
while other jobs kept it busy (load average 5 to 10), N plants at 10 Hz with MQTT off, over 10 s
after start-up:

==========  ==============  =====================  ==================================
plants      CPU of the      ticks per plant and s  start-up (each plant builds its own
            process                                 OPC-UA address space)
==========  ==============  =====================  ==================================
3           2 %             10.0                   14 s
10          5 %             10.0                   32 s
20          7 %             9.5                    102 s
30          13 %            9.6                    154 s
==========  ==============  =====================  ==================================

So the steady state is cheap (a tick is a few model steps and a few OPC-UA value updates); what
a class notices is the start-up, about 5 s per plant on a busy machine (less on an idle one):
start the classroom before the session. A plant that falls behind skips ticks and integrates the
skipped simulated time in the next one, so its clock stays in step with the wall clock. Each
student's twin subscribing adds work on the server side; for a class beyond about 30 run a second
``twinbench plant --classroom`` on the next block of ports (or another machine).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import urllib.parse
from typing import Any

from twinbench.plant._plant import Plant

__all__ = ["MAX_STUDENTS", "Classroom", "find_port_block", "student_name"]

_logger = logging.getLogger("twinbench.plant")

#: the most plants one classroom process serves (they share one process; see the module doc)
MAX_STUDENTS = 64


def student_name(index: int) -> str:
    """The name of the `index`-th student's plant (from 0): ``student01``, ``student02``...

    Examples
    --------
    >>> student_name(2)
    'student03'
    """
    return f"student{index + 1:02d}"


def find_port_block(count: int, host: str = "127.0.0.1", start: int = 20000,
                    stop: int = 60000) -> int:
    """The first port of `count` consecutive TCP ports that are free on `host` now.

    Examples
    --------
    >>> first = find_port_block(3)
    >>> 20000 <= first < 60000
    True
    """
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValueError(f"count: expected a number of ports >= 1, got {count!r}")
    port = start
    while port + count <= stop:
        for offset in range(count):
            try:
                with socket.socket() as sock:
                    sock.bind((host, port + offset))
            except OSError:
                port += offset + 1  # restart the block after the port in use
                break
        else:
            return port
    raise OSError(f"no {count} consecutive free ports on {host} in {start}..{stop}")


class Classroom:
    """`students` independent :class:`Plant` s on consecutive OPC-UA ports, one per student.

    Parameters
    ----------
    students : int
        Number of plants, 1 to :data:`MAX_STUDENTS`.
    opcua_port : int
        Port of the first student's plant; the others follow (``opcua_port + i``). 0 picks a block
        of free ports.
    mqtt : None, "auto", "none" or str
        As for :class:`Plant`, but one broker serves every plant (``"auto"`` starts it once);
        each student's topics start with ``plant/studentNN``.
    seed : int
        Noise seed of the first plant; the i-th (from 0) gets ``seed + i``.
    **plant_options
        Any other keyword argument of :class:`Plant` (``host``, ``wind``, ``faults``,
        ``speedup``, ``rate``, ``security``, ``users``, ...), the same for every plant.

    Examples
    --------
    >>> room = Classroom(3, opcua_port=4840, mqtt="none")
    >>> [p.opcua_url for p in room.plants][-1]
    'opc.tcp://127.0.0.1:4842/twinbench/plant'
    >>> Classroom(0)
    Traceback (most recent call last):
    ...
    ValueError: classroom: expected 1..64 students, got 0
    """

    def __init__(self, students: int, *, opcua_port: int = 4840, mqtt: str | None = None,
                 seed: int = 0, host: str = "127.0.0.1", **plant_options: Any) -> None:
        if isinstance(students, bool) or not isinstance(students, int) \
                or not 1 <= students <= MAX_STUDENTS:
            raise ValueError(f"classroom: expected 1..{MAX_STUDENTS} students, got {students!r}")
        if isinstance(opcua_port, bool) or not isinstance(opcua_port, int) \
                or not 0 <= opcua_port <= 65536 - students:
            raise ValueError(f"opcua_port: expected 0..{65536 - students} (the {students} plants "
                             f"take consecutive ports), got {opcua_port!r}")
        if mqtt is not None and not isinstance(mqtt, str):
            raise TypeError(f"mqtt: expected None, 'auto', 'none' or a URL, got {mqtt!r}")
        self.host = str(host)
        self.students = students
        self._opcua_port = opcua_port
        self._mqtt_option = None if mqtt in (None, "none") else mqtt
        # the plants validate every other option now, before anything starts; each gets the
        # broker's URL at start (a placeholder URL passes their check)
        plant_mqtt = None if self._mqtt_option is None else "mqtt://127.0.0.1:1883" \
            if self._mqtt_option == "auto" else self._mqtt_option
        self.plants = [Plant(host=self.host, opcua_port=opcua_port + i if opcua_port else 0,
                             mqtt=plant_mqtt, seed=int(seed) + i,
                             topic_prefix=f"plant/{student_name(i)}", **plant_options)
                       for i in range(students)]
        self._broker: Any = None
        self._started = False

    @property
    def names(self) -> list[str]:
        """``["student01", "student02", ...]``, in the order of :attr:`plants`."""
        return [student_name(i) for i in range(self.students)]

    @property
    def mqtt_url(self) -> str | None:
        """The broker every plant publishes to (no credentials), or None without MQTT."""
        return self.plants[0].mqtt_url

    async def start(self) -> None:
        """Start the broker (``mqtt="auto"``) and every plant; on any failure stop all again."""
        if self._started:
            return
        self._started = True
        try:
            if self._opcua_port == 0:
                first = find_port_block(self.students, self.host)
                for i, plant in enumerate(self.plants):
                    plant._opcua_port = first + i  # known only now: they were built with 0
            mqtt_url = self._mqtt_option
            if mqtt_url == "auto":
                from twinbench.plant._broker import start_broker

                self._broker = await start_broker()
                mqtt_url = self._broker.url if self._broker is not None else None
            for plant in self.plants:
                plant._mqtt_option = mqtt_url  # the shared broker, known only now
            # the first plant alone: it may make the server certificate the others then load
            await self._start_plant(0)
            results = await asyncio.gather(*(self._start_plant(i)
                                              for i in range(1, self.students)),
                                           return_exceptions=True)
            errors = [r for r in results if isinstance(r, BaseException)]
            if errors:
                raise errors[0]
        except BaseException:
            await self.stop()
            raise

    async def _start_plant(self, index: int) -> None:
        plant = self.plants[index]
        try:
            await plant.start()
        except OSError as exc:
            # name the student and the port: "address in use" alone does not say which
            raise OSError(f"{student_name(index)}: cannot serve OPC-UA on port "
                          f"{plant._opcua_port}: {exc}") from exc

    async def stop(self) -> None:
        """Stop every plant, then the broker; idempotent."""
        await asyncio.gather(*(p.stop() for p in self.plants), return_exceptions=True)
        broker, self._broker = self._broker, None
        if broker is not None:
            await broker.stop()
        self._started = False

    async def __aenter__(self) -> Classroom:  # noqa: PYI034
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def describe(self) -> list[str]:
        """What the CLI prints when ready: one line per student, then the broker."""
        lines = []
        for name, plant in zip(self.names, self.plants, strict=True):
            line = f"{name} {plant.opcua_url} (seed {plant.seed}"
            if plant.mqtt_url is not None:
                line += f"; mqtt {plant.topic_prefix}/<asset>/telemetry"
            lines.append(line + ")")
        sec = ",".join(self.plants[0].security)
        first, last = (urllib.parse.urlsplit(p.opcua_url).port for p in
                       (self.plants[0], self.plants[-1]))
        lines.append(f"classroom of {self.students} plants: opcua ports {first}..{last} "
                     f"(security {sec}; namespace urn:twinbench:plant)")
        if self.mqtt_url is not None:
            kind = f"; broker {self._broker.kind} started by the plant" if self._broker else ""
            lines.append(f"mqtt {self.mqtt_url} (telemetry plant/studentNN/<asset>/telemetry; "
                         f"commands plant/studentNN/<asset>/command{kind})")
        return lines
