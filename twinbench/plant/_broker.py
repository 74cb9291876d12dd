"""A broker for the plant when none is given: mosquitto if installed, else embedded amqtt.

``twinbench plant --secure`` needs mosquitto: one TLS listener (the plant's CA and server
certificate, :mod:`twinbench.plant._tls`) and a password file, anonymous clients refused.

mosquitto runs with ``max_queued_messages 100000``: its default (1000) drops QoS 1 messages
for a slow subscriber (measured in ../shared/STACK-NOTES.md); and with ``set_tcp_nodelay true``:
with Nagle's algorithm on, small messages meet the subscriber's delayed ACKs and wait up to
~40 ms (measured by ``twinbench bench mqtt``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from twinbench.plant._tls import BrokerCertificates, mosquitto_password_file

__all__ = ["EmbeddedBroker", "Mosquitto", "find_mosquitto", "start_broker"]

_logger = logging.getLogger("twinbench.plant")


def find_mosquitto() -> str | None:
    """The mosquitto binary: on PATH or at /usr/sbin/mosquitto; None if neither."""
    found = shutil.which("mosquitto")
    if found:
        return found
    return "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").is_file() else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def _parent_death_signal() -> Any:
    """Linux: a ``preexec_fn`` that has the kernel SIGTERM the broker when the plant dies (even
    by SIGKILL), so that none is orphaned; None elsewhere. Everything is looked up here, in the
    parent: the child between fork and exec only calls prctl (no imports, no locks)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes
        import signal

        prctl = ctypes.CDLL(None, use_errno=True).prctl
        sigterm = int(signal.SIGTERM)
    except (ImportError, OSError, AttributeError):
        return None

    def set_pdeathsig() -> None:  # pragma: no cover - runs in the child
        prctl(1, sigterm)  # PR_SET_PDEATHSIG

    return set_pdeathsig


class Mosquitto:
    """A mosquitto process on a free loopback port (``url``), config in a temporary directory.

    With `tls` (and `users`, name -> password): ``mqtts://`` with that certificate, only those
    users, no anonymous clients.
    """

    def __init__(self, binary: str, tls: BrokerCertificates | None = None,
                 users: Mapping[str, str] | None = None) -> None:
        if tls is not None and not users:
            raise ValueError("users: a TLS broker needs at least one user")
        self.binary = binary
        self.port = _free_port()
        self.tls = tls
        self.url = f"{'mqtts' if tls else 'mqtt'}://127.0.0.1:{self.port}"
        self.kind = "mosquitto"
        self._dir = tempfile.TemporaryDirectory(prefix="twinbench-plant-mosquitto-")
        self.config = Path(self._dir.name) / "mosquitto.conf"
        # as root, mosquitto would switch to its own user, which also clears the parent-death
        # signal (_parent_death_signal): stay root instead (it only reads this config)
        user = "user root\n" if hasattr(os, "geteuid") and os.geteuid() == 0 else ""
        common = "persistence false\nmax_queued_messages 100000\nset_tcp_nodelay true\n"
        if tls is None:
            self.config.write_text(f"{user}listener {self.port} 127.0.0.1\n"
                                   f"allow_anonymous true\n{common}")
        else:
            passwords = mosquitto_password_file(Path(self._dir.name) / "passwd", dict(users or {}))
            self.config.write_text(
                f"{user}per_listener_settings false\nallow_anonymous false\n"
                f"password_file {passwords}\n{common}listener {self.port} 127.0.0.1\n"
                f"cafile {tls.ca_file}\ncertfile {tls.certfile}\nkeyfile {tls.keyfile}\n"
                "require_certificate false\n")
        self.log_path = Path(self._dir.name) / "mosquitto.log"
        self.proc: subprocess.Popen[bytes] | None = None

    async def start(self, timeout: float = 10.0) -> None:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(  # noqa: ASYNC220 - returns at once
                [self.binary, "-c", str(self.config)], stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, preexec_fn=_parent_death_signal())  # noqa: PLW1509
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                log_text = self.log_path.read_text(errors="replace")[-500:]
                self._dir.cleanup()
                raise RuntimeError(f"mosquitto exited with code {self.proc.returncode}: "
                                   f"{log_text}")
            if await asyncio.to_thread(_listening, self.port):
                return
            await asyncio.sleep(0.02)
        await self.stop()
        raise RuntimeError(f"mosquitto did not listen on 127.0.0.1:{self.port} within "
                           f"{timeout:g} s")

    async def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                await asyncio.to_thread(proc.wait, 5)
            except subprocess.TimeoutExpired:
                proc.kill()
                await asyncio.to_thread(proc.wait, 5)
        self._dir.cleanup()


class EmbeddedBroker:
    """amqtt in this process, bound to 127.0.0.1 on a free port, its packet logger off."""

    def __init__(self) -> None:
        self.port = _free_port()
        self.url = f"mqtt://127.0.0.1:{self.port}"
        self.kind = "amqtt"
        self._broker: Any = None

    async def start(self) -> None:
        from amqtt.broker import Broker

        listeners = {"default": {"type": "tcp", "bind": f"127.0.0.1:{self.port}"}}
        # amqtt >= 0.12: only the plugins named load (no packet logger, no $SYS topics)
        config = {"listeners": listeners, "plugins": {
            "amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}}}
        logging.getLogger("amqtt").setLevel(logging.WARNING)
        logging.getLogger("transitions").setLevel(logging.WARNING)
        try:
            self._broker = Broker(config)
        except Exception:  # noqa: BLE001 - amqtt < 0.12 takes the older configuration form
            self._broker = Broker({"listeners": listeners, "sys_interval": 0,
                                   "auth": {"allow-anonymous": True,
                                            "plugins": ["auth_anonymous"]},
                                   "topic-check": {"enabled": False}})
        await self._broker.start()

    async def stop(self) -> None:
        broker, self._broker = self._broker, None
        if broker is not None:
            await broker.shutdown()


async def start_broker(tls: BrokerCertificates | None = None,
                       users: Mapping[str, str] | None = None
                       ) -> Mosquitto | EmbeddedBroker | None:
    """Start mosquitto if installed, else amqtt if importable; None (with a warning) if neither.

    With `tls` and `users`: mosquitto over TLS with a password file (RuntimeError without
    mosquitto: the plant never falls back to an unprotected broker).
    """
    binary = find_mosquitto()
    if tls is not None and not binary:
        raise RuntimeError("secure: MQTT over TLS needs mosquitto, which is not installed; "
                           "install it, or run the plant with --mqtt none")
    if binary:
        broker: Mosquitto | EmbeddedBroker = Mosquitto(binary, tls, users)
        await broker.start()
        return broker
    try:
        import amqtt.broker  # noqa: F401
    except ImportError:
        _logger.warning("no MQTT broker: mosquitto is not installed and amqtt is not importable; "
                        "running OPC-UA only (install mosquitto, or pip install amqtt)")
        return None
    broker = EmbeddedBroker()
    await broker.start()
    return broker
