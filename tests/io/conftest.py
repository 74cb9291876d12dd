"""Fixtures for io tests: a real mosquitto broker on a free loopback port."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

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
                               f"persistence false\nmax_queued_messages 100000\n"
                               f"set_tcp_nodelay true\n")
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


OPENSSL = shutil.which("openssl")
MOSQUITTO_PASSWD = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"


def _openssl(*args: str, cwd: Path) -> None:
    assert OPENSSL is not None
    result = subprocess.run([OPENSSL, *args], cwd=cwd, capture_output=True, timeout=60,
                            check=False)
    if result.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args[:2])} failed: {result.stderr.decode()}")


def make_ca(directory: Path, name: str) -> tuple[Path, Path]:
    """A self-signed CA in `directory`: (certificate, key) PEM files named after `name`."""
    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2",
             "-subj", f"/CN={name}", "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=directory)
    return cert, key


def make_server_cert(directory: Path, ca: tuple[Path, Path], name: str = "server",
                     san: str = "IP:127.0.0.1,DNS:localhost",
                     usage: str = "serverAuth") -> tuple[Path, Path]:
    """A certificate for `san` (default 127.0.0.1 and localhost) signed by `ca`: (cert, key)."""
    cert, key, csr = (directory / f"{name}.crt", directory / f"{name}.key",
                      directory / f"{name}.csr")
    ext = directory / f"{name}.ext"
    ext.write_text(f"subjectAltName={san}\nbasicConstraints=CA:FALSE\n"
                   f"keyUsage=critical,digitalSignature\nextendedKeyUsage={usage}\n"
                   "authorityKeyIdentifier=keyid\nsubjectKeyIdentifier=hash\n")
    _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", str(key), "-out", str(csr), "-subj", "/CN=localhost", cwd=directory)
    _openssl("x509", "-req", "-in", str(csr), "-CA", str(ca[0]), "-CAkey", str(ca[1]),
             "-CAcreateserial", "-out", str(cert), "-days", "2", "-extfile", str(ext),
             cwd=directory)
    return cert, key


class TlsBroker(Broker):
    """A mosquitto with one TLS listener and a password file, anonymous clients refused.

    ``url`` is ``mqtts://127.0.0.1:<port>``; ``ca_file`` the CA that signed the server
    certificate; ``username``/``password`` the one account.
    """

    username = "twin"
    password = "Pw-for-tls-test-7f3a9c"

    def __init__(self, tmp_path: Path, san: str = "IP:127.0.0.1,DNS:localhost",
                 require_certificate: bool = False) -> None:
        super().__init__(tmp_path)
        self.url = f"mqtts://127.0.0.1:{self.port}"
        self.certs = certs = tmp_path / "certs"
        certs.mkdir()
        self.ca = ca = make_ca(certs, "twinbench-test-ca")
        self.ca_file = ca[0]
        server_cert, server_key = make_server_cert(certs, ca, san=san)
        passwords = tmp_path / "passwd"
        result = subprocess.run([MOSQUITTO_PASSWD, "-b", "-c", str(passwords), self.username,
                                 self.password], capture_output=True, timeout=30,
                                check=False)
        if result.returncode != 0:
            raise RuntimeError(f"mosquitto_passwd failed: {result.stderr.decode()}")
        # Run as root when started as root: the dropped-to user could not read tmp_path.
        self.config.write_text(
            f"user root\nper_listener_settings false\nallow_anonymous false\n"
            f"password_file {passwords}\npersistence false\n"
            f"listener {self.port} 127.0.0.1\ncafile {self.ca_file}\n"
            f"certfile {server_cert}\nkeyfile {server_key}\n"
            f"require_certificate {'true' if require_certificate else 'false'}\n")


@pytest.fixture
def tls_broker_factory(tmp_path: Path) -> Iterator[Callable[..., TlsBroker]]:
    """Start a :class:`TlsBroker` with the given options (``san``, ``require_certificate``)."""
    if not Path(MOSQUITTO).exists():
        pytest.skip(f"mosquitto broker binary not found ({MOSQUITTO}); install mosquitto")
    if OPENSSL is None:
        pytest.skip("openssl command not found; needed to make test certificates")
    if not Path(MOSQUITTO_PASSWD).exists():
        pytest.skip(f"mosquitto_passwd not found ({MOSQUITTO_PASSWD}); install mosquitto")
    started: list[TlsBroker] = []

    def start(**options: Any) -> TlsBroker:
        directory = tmp_path / f"broker{len(started)}"
        directory.mkdir()
        broker = TlsBroker(directory, **options)
        started.append(broker)
        broker.start()
        return broker

    try:
        yield start
    finally:
        for broker in started:
            broker.stop()


@pytest.fixture
def tls_broker(tmp_path: Path) -> Iterator[TlsBroker]:
    """A running mosquitto with TLS and a password file (a :class:`TlsBroker`)."""
    if not Path(MOSQUITTO).exists():
        pytest.skip(f"mosquitto broker binary not found ({MOSQUITTO}); install mosquitto")
    if OPENSSL is None:
        pytest.skip("openssl command not found; needed to make test certificates")
    if not Path(MOSQUITTO_PASSWD).exists():
        pytest.skip(f"mosquitto_passwd not found ({MOSQUITTO_PASSWD}); install mosquitto")
    broker = TlsBroker(tmp_path)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()
