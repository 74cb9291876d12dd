"""Fixtures for io tests: a real mosquitto broker on a free loopback port."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_for_port(port: int, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"mosquitto exited with code {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            # Not listening yet: wait for the process a moment (returns early if it dies).
            try:
                proc.wait(0.02)
            except subprocess.TimeoutExpired:
                pass
    raise RuntimeError(f"mosquitto did not listen on 127.0.0.1:{port} within {timeout} s")


class Broker:
    """A mosquitto process on a fixed loopback port that a test can stop and start again."""

    def __init__(self, tmp_path: Path) -> None:
        self.port = free_port()
        self.url = f"mqtt://127.0.0.1:{self.port}"
        self.config = tmp_path / "mosquitto.conf"
        # max_queued_messages: the default 1000 drops QoS 1 messages for a slow subscriber.
        self.config.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\n"
                               f"persistence false\nmax_queued_messages 100000\n")
        self.log_path = tmp_path / "mosquitto.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.config)], stdout=log,
                                         stderr=subprocess.STDOUT)
        _wait_for_port(self.port, self.proc, timeout=10.0)

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@pytest.fixture
def mosquitto_broker(tmp_path: Path) -> Iterator[Broker]:
    """A running mosquitto broker (a :class:`Broker`: ``url``, ``stop()``, ``start()``)."""
    if not Path(MOSQUITTO).exists():
        pytest.skip(f"mosquitto broker binary not found ({MOSQUITTO}); install mosquitto")
    broker = Broker(tmp_path)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def mosquitto(mosquitto_broker: Broker) -> str:
    """A mosquitto broker for this test; its URL ``mqtt://127.0.0.1:<port>``."""
    return mosquitto_broker.url
