"""``twinbench plant`` in a subprocess: its own interpreter (and GIL), so whatever runs beside it
(a benchmark, a test, a browser) never slows the simulation down, and it can be killed and
restarted like real equipment.
"""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Self

from twinbench.app import free_port

__all__ = ["PlantProcess"]

READY_LINE = "twinbench plant ready"
# `twinbench plant --secure` prints a generated password once; error messages must not repeat it
_PASSWORD_LINE = re.compile(r"(generated password[^:]*: ).*")


class PlantProcess:
    """``twinbench plant`` in a subprocess on a fixed OPC-UA port (MQTT off unless `args` say).

    ``start()`` waits for the ready line (``start(wait=False)`` + :meth:`wait_ready` to do
    something else meanwhile); ``stop()`` sends SIGTERM and returns the exit code; ``kill()``
    sends SIGKILL; ``start()`` again reuses the port. ``lines`` holds what the plant printed on
    stdout up to its ready line; stdout is drained for the process's whole life, so the plant
    never blocks on a full pipe. Also a context manager (started on entry, stopped on exit).

    Parameters
    ----------
    args : sequence of str
        More ``twinbench plant`` options (``--speedup 60``, ``--fault bearing_wear``...).
    port : int, optional
        The OPC-UA port (default: a free one).
    env : mapping, optional
        Extra environment variables.
    stderr : path, optional
        Append the plant's stderr (its warnings and errors) to this file; default: discarded.

    Examples
    --------
    >>> plant = PlantProcess(["--speedup", "60"], port=4850)
    >>> plant.opcua_url, plant.running
    ('opc.tcp://127.0.0.1:4850/twinbench/plant', False)
    """

    def __init__(self, args: Sequence[str] = (), *, port: int | None = None,
                 env: Mapping[str, str] | None = None,
                 stderr: str | os.PathLike[str] | None = None) -> None:
        if isinstance(args, str):
            raise TypeError("args: expected a sequence of options, got a str")
        self.port = port or free_port()
        self.args = list(args)
        self.env = dict(env or {})
        self.stderr = None if stderr is None else Path(stderr)
        self.opcua_url = f"opc.tcp://127.0.0.1:{self.port}/twinbench/plant"
        self.proc: subprocess.Popen[str] | None = None
        self.lines: list[str] = []
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._ready = False

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def mqtt_url(self) -> str | None:
        """The broker URL the plant printed (``mqtt://`` or, with ``--secure``, ``mqtts://``);
        None before it is ready or without MQTT."""
        for line in self.lines:
            if line.startswith("mqtt "):
                return line.split()[1]
        return None

    @property
    def mqtt_ca_file(self) -> Path | None:
        """With ``--secure``: the CA file the plant printed for its MQTT broker."""
        for line in self.lines:
            found = re.search(r"CA file (\S+?);", line)
            if line.startswith("mqtt ") and found:
                return Path(found.group(1))
        return None

    def _shown_lines(self) -> list[str]:
        return [_PASSWORD_LINE.sub(r"\1<hidden>", line) for line in self.lines]

    def start(self, timeout: float = 30.0, *, wait: bool = True) -> PlantProcess:
        """Start the plant; with `wait`, return once it printed its ready line."""
        env = dict(os.environ)
        # the plant imports twinbench from this tree even where it is not installed
        repo = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [repo, env.get("PYTHONPATH")]))
        env.setdefault("OMP_WAIT_POLICY", "passive")
        env.update(self.env)
        cmd = [sys.executable, "-m", "twinbench.cli", "plant", "--opcua-port", str(self.port),
               "--mqtt", "none", *self.args]
        self.lines, self._ready = [], False
        self._lines = q = queue.Queue()
        if self.stderr is None:
            self.proc = proc = subprocess.Popen(cmd, stdout=subprocess.PIPE,
                                                stderr=subprocess.DEVNULL,
                                                stdin=subprocess.DEVNULL, text=True, env=env)
        else:
            with self.stderr.open("ab") as err:  # the child keeps its own copy of the fd
                self.proc = proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err,
                                                    stdin=subprocess.DEVNULL, text=True,
                                                    env=env)

        def read() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                q.put(line.rstrip("\n"))
            q.put(None)

        threading.Thread(target=read, daemon=True, name="plant-stdout").start()
        if wait:
            self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Wait for the ready line (RuntimeError, with what the plant printed, if it exits or
        does not get there within `timeout` seconds: the plant is then killed)."""
        if self.proc is None:
            raise RuntimeError("the plant was not started")
        deadline = time.monotonic() + timeout
        while not self._ready:
            try:
                line = self._lines.get(timeout=max(deadline - time.monotonic(), 0.01))
            except queue.Empty:
                self.kill()
                raise RuntimeError(f"the plant did not print its ready line within {timeout} s; "
                                   f"printed {self._shown_lines()}") from None
            if line is None:
                code = self.proc.wait(10)
                raise RuntimeError(f"the plant exited with code {code} before it was ready; "
                                   f"printed {self._shown_lines()}")
            self.lines.append(line)
            self._ready = line == READY_LINE

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM; the exit code (the process is killed, and RuntimeError raised, if it does
        not exit within `timeout`)."""
        proc = self.proc
        if proc is None:
            return 0
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
                raise RuntimeError(f"the plant did not exit within {timeout} s of SIGTERM")
        self.proc = None
        return proc.returncode

    def kill(self) -> None:
        """SIGKILL (what a power cut does to equipment)."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(10)

    def __enter__(self) -> Self:
        return self.start() if not self.running else self

    def __exit__(self, *exc: object) -> None:
        try:
            self.stop()
        finally:
            self.kill()

    def __repr__(self) -> str:
        return f"<PlantProcess {self.opcua_url} {'running' if self.running else 'stopped'}>"

