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


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[str]:
    """A mosquitto broker for this test; yields its URL ``mqtt://127.0.0.1:<port>``."""
    if not Path(MOSQUITTO).exists():
        pytest.skip(f"mosquitto broker binary not found ({MOSQUITTO}); install mosquitto")
    port = free_port()
    config = tmp_path / "mosquitto.conf"
    # max_queued_messages: the default 1000 drops QoS 1 messages for a slow subscriber.
    config.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
                      f"max_queued_messages 100000\n")
    log = (tmp_path / "mosquitto.log").open("wb")
    proc = subprocess.Popen([MOSQUITTO, "-c", str(config)], stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait_for_port(port, proc, timeout=10.0)
        yield f"mqtt://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        log.close()
