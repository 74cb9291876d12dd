"""OPC-UA source: subscribe to the nodes of a tag map and hand out columnar batches.

asyncua decodes every notification into Python objects; this source takes them straight from the
subscription's publish callback into four numpy columns per publish response (tag index, time,
value, quality), without the task per value that asyncua's handler interface creates. The columns
wait in a bounded buffer (counted in samples) until :meth:`OpcUaSource.read` takes them; when it is
full the ``overflow`` policy decides what is dropped, and every drop is counted.

Values
------
- Time: the SourceTimestamp the server sends (``timestamps="source"``), else its ServerTimestamp,
  else the receive time. A missing timestamp, or one more than ``max_clock_skew`` seconds ahead of
  the receive time, is replaced by the receive time and the sample is marked UNCERTAIN.
- Quality: the OPC-UA StatusCode's severity (:meth:`~twinbench.io.batch.Quality.from_opcua_status`);
  a Bad value is kept with its quality, not dropped.
- Value: numbers and booleans become float64. Anything else (a string, an array, a null variant) is
  a NaN sample marked ``BAD_DECODE`` and counted (``status["decode"]["flags"]["wrong_type"]``).

Subscriptions
-------------
Tags are split across subscriptions of at most ``max_items_per_subscription`` monitored items, also
respecting the server's own limits (``MaxMonitoredItemsPerCall``), with the given sampling and
publishing intervals, server-side queue size and deadband.

Connection loss
---------------
asyncua's supervisor reconnects with exponential backoff (1 s doubling up to
``reconnect_max_delay``) and restores the subscriptions (transferring them when the server kept the
session, recreating them otherwise). The outage shows in the data: when the first publish response
arrives after a loss, a gap marker (:meth:`~twinbench.io.batch.Batch.gap`, one NaN sample per tag,
quality ``GAP``, at the time the connection was lost) is queued before it. ``status`` shows
``connected``, ``disconnected_since``, ``disconnects`` and ``reconnects``. Every request (connect,
read, write, browse) is bounded by a timeout, during an outage too.

Security
--------
``security="sign"`` or ``"encrypt"`` uses Basic256Sha256 (Sign / SignAndEncrypt) with a client
certificate: ``certificate`` and ``private_key`` files, or a self-signed pair generated on first use
in ``cert_dir`` (default ``$XDG_DATA_HOME/twinbench/opcua``, that is
``~/.local/share/twinbench/opcua``)
and reused afterwards; servers must trust it.

The server's certificate is checked before anything is sent under it. ``server_certificate`` pins
one certificate. Otherwise the certificate the server presents must be in the trust list, a folder
of certificate files (``trust_dir``, default ``<cert_dir>/trusted``): ``trust="list"`` (the
default) refuses any other with :class:`UntrustedCertificate`, which names the certificate's
subject and SHA-256 fingerprint and how to trust it; ``trust="first-use"`` stores the certificate
a server presents the first time (logging a WARNING with its fingerprint) and refuses a different
one from that server later. :func:`trust_certificate` (or ``twinbench trust URL``) trusts a
server's certificate, or a certificate file, explicitly.

``username`` and ``password`` come from the arguments, else the environment variables
``TWINBENCH_OPCUA_USERNAME`` and ``TWINBENCH_OPCUA_PASSWORD``, else (password only, when the
optional ``keyring`` package is installed) the keyring entry ``service="twinbench-opcua"``,
``username="<user>@<host>:<port>"``. The password never appears in ``status``, ``repr``, exception
messages or log lines.

Examples
--------
>>> src = opcua_source("opc.tcp://127.0.0.1:4840/twinbench/plant",
...                    {"speed": "ns=2;s=Pump1.speed", "flow": "ns=2;s=Pump1.flow_rate"})
>>> src.status["connected"], src.tags.names, src.publishing_interval
(False, ('speed', 'flow'), 100.0)
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import hashlib
import logging
import math
import os
import re
import time
import urllib.parse
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from twinbench.io._common import (
    LatestValues,
    LiveSource,
    WriteRejected,
    check_timeout,
    credentials,
    write_items,
)
from twinbench.io._sync import LoopThread, run_to_completion
from twinbench.io.batch import Batch, Quality, quality_from_opcua_status
from twinbench.io.browse import BrowseNode
from twinbench.io.decode import DecodeStats, RateLimitedLog, Reject
from twinbench.io.tags import OpcUaAddress, TagMap, tag_map

__all__ = ["ENV_PASSWORD", "ENV_USERNAME", "KEYRING_SERVICE", "OVERFLOW_POLICIES", "SECURITY_MODES",
           "TRUST_MODES", "CertificateInfo", "OpcUaSource", "UntrustedCertificate",
           "certificate_fingerprint", "certificate_info", "fetch_server_certificate",
           "opcua_source", "trust_certificate"]

OVERFLOW_POLICIES = ("drop_oldest", "drop_newest")
SECURITY_MODES = ("none", "sign", "encrypt")
TIMESTAMPS = ("source", "server", "receive")
TRUST_MODES = ("list", "first-use")
ENV_USERNAME = "TWINBENCH_OPCUA_USERNAME"
ENV_PASSWORD = "TWINBENCH_OPCUA_PASSWORD"
KEYRING_SERVICE = "twinbench-opcua"
APPLICATION_URI = "urn:twinbench:client"

_logger = logging.getLogger("twinbench.io.opcua")
_GOOD = int(Quality.GOOD)
_UNCERTAIN = int(Quality.UNCERTAIN)
_BAD_DECODE = int(Quality.BAD_DECODE)
_NAN = float("nan")
# Earliest trusted timestamp: inside datetime64[ns] (from 1677-09-21), which also excludes
# OPC-UA's "no time", 1601-01-01 (DateTime 0).
_MIN_VALID_TIME_S = -9.2e9


def opcua_source(url: str, tags: Any, *, publishing_interval: float = 100.0,
                 sampling_interval: float | None = None, queue_size: int = 10,
                 deadband: float | tuple[str, float] | None = None, timestamps: str = "source",
                 security: str = "none", certificate: str | os.PathLike[str] | None = None,
                 private_key: str | os.PathLike[str] | None = None,
                 cert_dir: str | os.PathLike[str] | None = None,
                 server_certificate: str | os.PathLike[str] | None = None,
                 trust: str = "list", trust_dir: str | os.PathLike[str] | None = None,
                 username: str | None = None, password: str | None = None,
                 connect_timeout: float = 5.0, request_timeout: float = 5.0,
                 write_timeout: float = 5.0, buffer_size: int = 1_000_000,
                 overflow: str = "drop_oldest", max_batch: int = 100_000,
                 max_items_per_subscription: int = 1000, reconnect_max_delay: float = 30.0,
                 max_clock_skew: float = 3600.0, missing: str = "raise") -> OpcUaSource:
    """Create an OPC-UA source (not yet connected: call ``await source.start()``).

    Parameters
    ----------
    url : str
        ``opc.tcp://host:port[/path]`` of the server's endpoint. Credentials in the URL are
        refused: use `username` and `password`.
    tags : TagMap or anything :func:`~twinbench.io.tags.tag_map` accepts
        OPC-UA NodeIds (``ns=2;s=Pump1.speed``) or browse paths (``0:Objects/2:Pump1/2:speed``);
        their order is the tag index of the batches.
    publishing_interval : float, default 100
        Milliseconds between the server's publish responses (the server may revise it; the
        revised value is in ``status``).
    sampling_interval : float, optional
        Milliseconds between the server's samples of each node; default the publishing interval.
        0 asks for the fastest the server can do.
    queue_size : int, default 10
        Samples the server keeps per node between two publish responses (oldest discarded).
    deadband : float or ("absolute" | "percent", float), optional
        Report a change only when it exceeds this (absolute units by default, or percent of
        the node's EURange).
    timestamps : {"source", "server", "receive"}, default "source"
        Which time a sample carries (falling back to the next when the server omits one).
    security : {"none", "sign", "encrypt"}, default "none"
        Basic256Sha256 Sign or SignAndEncrypt for ``"sign"``/``"encrypt"``.
    certificate, private_key : path, optional
        The client's certificate (DER or PEM) and private key (PEM). Default: generated on first
        use in `cert_dir`.
    cert_dir : path, optional
        Where the generated client certificate lives (default ``~/.local/share/twinbench/opcua``).
    server_certificate : path, optional
        Pin the server's certificate (DER or PEM): only this one is accepted, whatever the
        trust list holds.
    trust : {"list", "first-use"}, default "list"
        How the server's certificate is checked when none is pinned. ``"list"``: it must be in
        the trust list, else ``start()`` raises :class:`UntrustedCertificate`. ``"first-use"``:
        trust on first use, an explicit choice: the certificate a server presents the first
        time is stored in the trust list (with a WARNING naming its fingerprint), and later a
        different certificate from that server is refused.
    trust_dir : path, optional
        The trust list: a folder of server certificates (DER or PEM files). Default
        ``<cert_dir>/trusted``.
    username, password : str, optional
        User identity; default from ``TWINBENCH_OPCUA_USERNAME`` / ``TWINBENCH_OPCUA_PASSWORD``
        or the keyring, else anonymous. Use with ``security="encrypt"`` so that the password is
        not sent in the clear.
    connect_timeout : float, default 5.0
        Seconds for connecting and creating the subscriptions.
    request_timeout : float, default 5.0
        Seconds for each request (browse, read) and for waiting on a reconnect in progress.
    write_timeout : float, default 5.0
        Default seconds for a write with its read-back.
    buffer_size : int, default 1000000
        Samples buffered between the subscription and the consumer.
    overflow : {"drop_oldest", "drop_newest"}, default "drop_oldest"
        What a full buffer drops (publish responses cannot wait for a slow consumer). Counted in
        ``status["dropped_overflow"]``.
    max_batch : int, default 100000
        Most samples per batch (a batch holds whole publish responses, so it may exceed this
        when one response alone is larger).
    max_items_per_subscription : int, default 1000
        Tags per subscription; more tags make more subscriptions.
    reconnect_max_delay : float, default 30
        Longest wait between two reconnect attempts (the wait doubles from 1 s).
    max_clock_skew : float, default 3600
        Seconds a timestamp may lie ahead of the receive time before it is distrusted.
    missing : {"raise", "warn"}, default "raise"
        A tag whose node does not exist (or cannot be monitored): ``start()`` raises LookupError
        naming the tags and their status codes, or logs a warning and goes on without them.

    Examples
    --------
    >>> src = opcua_source("opc.tcp://localhost:4840", {"speed": "ns=2;s=Pump1.speed"},
    ...                    security="encrypt", username="operator", password="s3cret")
    >>> src.port, src.security, src.status["username"], "s3cret" in repr(src) + str(src.status)
    (4840, 'encrypt', 'operator', False)
    >>> src.trust, src.trust_dir.name
    ('list', 'trusted')
    >>> opcua_source("mqtt://localhost", {"speed": "ns=2;s=Pump1.speed"})
    Traceback (most recent call last):
    ...
    ValueError: url: expected 'opc.tcp://host:port[/path]', got 'mqtt://localhost'
    """
    host, port = _parse_url(url)
    tm = tag_map(tags, scheme="opc.tcp")
    if len(tm) == 0:
        raise ValueError("tags: expected at least one OPC-UA tag")
    publishing_interval = _check_ms(publishing_interval, "publishing_interval", low=0.0)
    sampling_interval = publishing_interval if sampling_interval is None else \
        _check_ms(sampling_interval, "sampling_interval", low=0.0, allow_zero=True)
    for name, value, low in (("queue_size", queue_size, 1), ("buffer_size", buffer_size, 1),
                             ("max_batch", max_batch, 1),
                             ("max_items_per_subscription", max_items_per_subscription, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name}: expected an int >= {low}, got {value!r}")
    deadband = _check_deadband(deadband)
    if timestamps not in TIMESTAMPS:
        raise ValueError(f"timestamps: expected one of {TIMESTAMPS}, got {timestamps!r}")
    if security not in SECURITY_MODES:
        raise ValueError(f"security: expected one of {SECURITY_MODES}, got {security!r}")
    if overflow not in OVERFLOW_POLICIES:
        raise ValueError(f"overflow: expected one of {OVERFLOW_POLICIES}, got {overflow!r}")
    if missing not in ("raise", "warn"):
        raise ValueError(f"missing: expected 'raise' or 'warn', got {missing!r}")
    files = {"certificate": certificate, "private_key": private_key,
             "server_certificate": server_certificate}
    for name, value in files.items():
        if value is not None:
            if not isinstance(value, (str, os.PathLike)):
                raise TypeError(f"{name}: expected a path or None, got {type(value).__name__}")
            if not os.path.isfile(value):
                raise FileNotFoundError(f"{name}: no such file {os.fspath(value)!r}")
    if (certificate is None) != (private_key is None):
        raise ValueError("certificate, private_key: give both or neither")
    if security == "none" and (certificate is not None or server_certificate is not None):
        raise ValueError("certificate, server_certificate: need security='sign' or 'encrypt'")
    for name, value in (("cert_dir", cert_dir), ("trust_dir", trust_dir)):
        if value is not None and not isinstance(value, (str, os.PathLike)):
            raise TypeError(f"{name}: expected a path or None, got {type(value).__name__}")
    if trust not in TRUST_MODES:
        raise ValueError(f"trust: expected one of {TRUST_MODES}, got {trust!r}")
    if security == "none" and (trust != "list" or trust_dir is not None):
        raise ValueError("trust, trust_dir: need security='sign' or 'encrypt' (without security "
                         "the server presents no certificate)")
    cert_path = Path(cert_dir) if cert_dir is not None else _default_cert_dir()
    username, password = credentials(username, password, env_username=ENV_USERNAME,
                                     env_password=ENV_PASSWORD, keyring_service=KEYRING_SERVICE,
                                     account=f"{host}:{port}")
    return OpcUaSource(
        url, host, port, tm, publishing_interval=publishing_interval,
        sampling_interval=sampling_interval, queue_size=queue_size, deadband=deadband,
        timestamps=timestamps, security=security,
        certificate=None if certificate is None else os.fspath(certificate),
        private_key=None if private_key is None else os.fspath(private_key),
        cert_dir=cert_path,
        server_certificate=None if server_certificate is None else os.fspath(server_certificate),
        trust=trust, trust_dir=Path(trust_dir) if trust_dir is not None else cert_path / "trusted",
        username=username, password=password,
        connect_timeout=check_timeout(connect_timeout, "connect_timeout"),
        request_timeout=check_timeout(request_timeout, "request_timeout"),
        write_timeout=check_timeout(write_timeout, "write_timeout"), buffer_size=buffer_size,
        overflow=overflow, max_batch=max_batch,
        max_items_per_subscription=max_items_per_subscription,
        reconnect_max_delay=check_timeout(reconnect_max_delay, "reconnect_max_delay"),
        max_clock_skew=check_timeout(max_clock_skew, "max_clock_skew"), missing=missing)


def _parse_url(url: Any) -> tuple[str, int]:
    if not isinstance(url, str):
        raise TypeError(f"url: expected a str 'opc.tcp://host:port', got {type(url).__name__}")
    parts = urllib.parse.urlsplit(url)
    if "@" in parts.netloc:
        # Not echoed: the URL holds a secret.
        raise ValueError("url: credentials in the URL are not accepted; pass username= and "
                         "password= (or set the TWINBENCH_OPCUA_* environment variables)")
    try:
        port = parts.port
    except ValueError:
        port = -1
    if parts.scheme != "opc.tcp" or not parts.hostname or port == -1:
        raise ValueError(f"url: expected 'opc.tcp://host:port[/path]', got {url!r}")
    return parts.hostname, 4840 if port is None else port


def _check_ms(value: Any, name: str, low: float, allow_zero: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or value < low or (value == 0 and not allow_zero):
        more = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name}: expected finite milliseconds {more}, got {value!r}")
    return float(value)


def _check_deadband(deadband: Any) -> tuple[int, float] | None:
    if deadband is None:
        return None
    kind = "absolute"
    if isinstance(deadband, tuple) and len(deadband) == 2:
        kind, deadband = deadband
    if kind not in ("absolute", "percent") or isinstance(deadband, bool) \
            or not isinstance(deadband, (int, float)) or not math.isfinite(deadband) \
            or deadband < 0 or (kind == "percent" and deadband > 100):
        raise ValueError(f"deadband: expected a number >= 0 or ('absolute'|'percent', number), "
                         f"got {deadband!r}")
    return (1 if kind == "absolute" else 2), float(deadband)


def _default_cert_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local",
                                                           "share")
    return Path(base) / "twinbench" / "opcua"


# asyncua's socket protocol logs every request it sends at DEBUG, ActivateSessionRequest with its
# identity token too: the password in clear where the token policy does not encrypt it (the
# channel does). Its records are redacted before any handler sees them.
_ASYNCUA_REQUEST_LOGGER = "asyncua.client.ua_client.UASocketProtocol"


class _RedactIdentityTokens(logging.Filter):
    """Replace the identity token of any logged request (ActivateSessionRequest) by a mark."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and any(_holds_identity(a) for a in args):
            record.args = tuple(_without_identity(a) for a in args)
        return True


def _holds_identity(value: Any) -> bool:
    # ActivateSessionRequest.Parameters.UserIdentityToken (or the parameters logged alone)
    return hasattr(value, "UserIdentityToken") or hasattr(getattr(value, "Parameters", None),
                                                           "UserIdentityToken")


def _without_identity(value: Any) -> Any:
    if not _holds_identity(value):
        return value
    try:
        if hasattr(value, "UserIdentityToken"):
            return dataclasses.replace(value, UserIdentityToken="<hidden by twinbench>")
        return dataclasses.replace(value, Parameters=_without_identity(value.Parameters))
    except TypeError:  # not a dataclass: its type is all that may be shown
        return f"{type(value).__name__}(<hidden by twinbench>)"


_REDACTION = _RedactIdentityTokens()


def _redact_asyncua_logs() -> None:
    logger = logging.getLogger(_ASYNCUA_REQUEST_LOGGER)
    if _REDACTION not in logger.filters:
        logger.addFilter(_REDACTION)


# -- the trust list ------------------------------------------------------------------------------

_CERT_SUFFIXES = (".der", ".pem", ".crt", ".cer")


@dataclasses.dataclass(frozen=True)
class CertificateInfo:
    """A certificate as the trust list sees it.

    Attributes
    ----------
    subject : str
        The subject, RFC 4514 (``"O=twinbench,CN=twinbench plant"``).
    fingerprint : str
        SHA-256 of the DER bytes, colon-separated hex (what ``openssl x509 -fingerprint
        -sha256`` prints).
    not_valid_after : str
        End of validity, ISO 8601 UTC.
    der : bytes
        The certificate (DER).
    path : Path or None
        Where it is stored in the trust list, once stored.
    """

    subject: str
    fingerprint: str
    not_valid_after: str
    der: bytes = dataclasses.field(repr=False)
    path: Path | None = None


class UntrustedCertificate(ConnectionError):
    """The server presented a certificate that is not trusted: not in the trust list, not the
    pinned one, or not the one first trusted for that server.

    Attributes
    ----------
    url : str
        The server.
    certificate : CertificateInfo
        What it presented (``subject``, ``fingerprint``, ``der``).

    Examples
    --------
    >>> info = CertificateInfo("CN=plant", "AB:CD", "2030-01-01T00:00:00+00:00", b"")
    >>> str(UntrustedCertificate("opc.tcp://h:4840", info, "it is not in the trust list", ""))
    "OpcUaSource opc.tcp://h:4840: the server's certificate (subject 'CN=plant', SHA-256 fingerprint AB:CD) is refused: it is not in the trust list."
    """

    def __init__(self, url: str, certificate: CertificateInfo, reason: str, advice: str) -> None:
        self.url = url
        self.certificate = certificate
        text = (f"OpcUaSource {url}: the server's certificate (subject {certificate.subject!r}, "
                f"SHA-256 fingerprint {certificate.fingerprint}) is refused: {reason}.")
        super().__init__(f"{text} {advice}" if advice else text)


def certificate_fingerprint(der: bytes) -> str:
    """SHA-256 of a DER certificate as colon-separated upper-case hex.

    Examples
    --------
    >>> certificate_fingerprint(b"")[:11]
    'E3:B0:C4:42'
    """
    digest = hashlib.sha256(der).hexdigest().upper()
    return ":".join(digest[i:i + 2] for i in range(0, len(digest), 2))


def certificate_info(certificate: bytes | str | os.PathLike[str]) -> CertificateInfo:
    """Subject, SHA-256 fingerprint and validity of a certificate (DER bytes, or a DER or PEM
    file).

    Examples
    --------
    >>> certificate_info(b"not a certificate")
    Traceback (most recent call last):
    ...
    ValueError: certificate: expected an X.509 certificate (DER or PEM), got 17 bytes that are not one
    """
    if isinstance(certificate, (bytes, bytearray)):
        der, path = _first_certificate(bytes(certificate), "certificate"), None
    elif isinstance(certificate, (str, os.PathLike)):
        path = Path(certificate)
        der = _read_certificate(path)
    else:
        raise TypeError(f"certificate: expected DER bytes or a path, got "
                        f"{type(certificate).__name__}")
    from cryptography import x509

    cert = x509.load_der_x509_certificate(der)
    return CertificateInfo(cert.subject.rfc4514_string(), certificate_fingerprint(der),
                           cert.not_valid_after_utc.isoformat(), der, path)


def _first_certificate(data: bytes, what: str) -> bytes:
    """The first certificate of DER `data` (servers may send a chain) as DER bytes."""
    from asyncua.crypto.uacrypto import x509_from_der
    from cryptography.hazmat.primitives.serialization import Encoding

    try:
        cert = x509_from_der(data)
    except (ValueError, IndexError):
        cert = None
    if cert is None:
        raise ValueError(f"{what}: expected an X.509 certificate (DER or PEM), got "
                         f"{len(data)} bytes that are not one")
    return cert.public_bytes(Encoding.DER)


def _read_certificate(path: Path) -> bytes:
    """The certificate in a DER or PEM file, as DER."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise FileNotFoundError(f"certificate: cannot read {os.fspath(path)!r} "
                                f"({exc.strerror or exc})") from None
    if data.lstrip().startswith(b"-----BEGIN"):
        from cryptography import x509
        from cryptography.hazmat.primitives.serialization import Encoding

        try:
            return x509.load_pem_x509_certificate(data).public_bytes(Encoding.DER)
        except ValueError:
            raise ValueError(f"certificate: {os.fspath(path)!r} is not a PEM certificate") \
                from None
    return _first_certificate(data, f"certificate {os.fspath(path)!r}")


def _trust_list(trust_dir: Path) -> dict[str, Path]:
    """Fingerprint -> file of every certificate in `trust_dir` (a file that is not one is
    skipped with a warning: one bad file must not stop every connection)."""
    found: dict[str, Path] = {}
    try:
        files = sorted(p for p in trust_dir.iterdir()
                       if p.suffix.lower() in _CERT_SUFFIXES and p.is_file())
    except FileNotFoundError:
        return found
    for path in files:
        try:
            found.setdefault(certificate_fingerprint(_read_certificate(path)), path)
        except (OSError, ValueError) as exc:
            _logger.warning("opcua trust list: skipping %s (%s)", path, exc)
    return found


def _server_record(trust_dir: Path, host: str, port: int) -> Path:
    """The file that holds the certificate trusted for ``host:port`` (on first use, or by
    :func:`trust_certificate` with a URL)."""
    return trust_dir / f"{re.sub(r'[^A-Za-z0-9.-]', '_', host)}_{port}.der"


def _store(path: Path, der: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    # Written aside and renamed: a reader never sees half a certificate.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(der)
    os.replace(tmp, path)
    return path


def _trust_advice(url: str, trust_dir: Path) -> str:
    return (f"If this fingerprint is the one the server's administrator gives you, trust the "
            f"certificate: `twinbench trust {url} --trust-dir {trust_dir} --yes`, or "
            f"twinbench.io.opcua.trust_certificate({url!r}, trust_dir={os.fspath(trust_dir)!r}), "
            f"or copy the certificate file into {trust_dir}; or connect with trust='first-use' "
            f"to trust whatever this server presents the first time")


def _check_server_certificate(presented: bytes, *, url: str, host: str, port: int, trust: str,
                              trust_dir: Path, pinned: str | None) -> bytes:
    """`presented` if the pin, the trust list or (first use) this server's record accepts it;
    else UntrustedCertificate."""
    if pinned is not None:
        wanted = _read_certificate(Path(pinned))
        if presented != wanted:
            raise UntrustedCertificate(
                url, certificate_info(presented),
                f"it is not the pinned server_certificate {pinned!r} (SHA-256 fingerprint "
                f"{certificate_fingerprint(wanted)})",
                "Pin the server's current certificate, or leave server_certificate out to use "
                "the trust list")
        return presented
    fingerprint = certificate_fingerprint(presented)
    record = _server_record(trust_dir, host, port)
    if trust == "first-use" and record.is_file():
        first = _read_certificate(record)
        if first != presented:
            raise UntrustedCertificate(
                url, certificate_info(presented),
                f"it differs from the certificate first trusted for {host}:{port} (SHA-256 "
                f"fingerprint {certificate_fingerprint(first)}, in {record})",
                f"If the server's certificate was replaced on purpose, check the new fingerprint "
                f"with its administrator and trust it with `twinbench trust {url} --trust-dir "
                f"{trust_dir} --yes` (which replaces {record.name}); otherwise something else may "
                f"be answering in the server's place")
        return presented
    if fingerprint in _trust_list(trust_dir):
        if trust == "first-use":
            _store(record, presented)  # from now on this server must present this certificate
        return presented
    if trust == "first-use":
        info = certificate_info(presented)
        _store(record, presented)
        _logger.warning("opcua %s: trusting the server's certificate on first use (subject %r, "
                        "SHA-256 fingerprint %s), stored in %s; a different certificate from "
                        "this server will be refused", url, info.subject, fingerprint, record)
        return presented
    raise UntrustedCertificate(url, certificate_info(presented),
                               f"it is not in the trust list {trust_dir}",
                               _trust_advice(url, trust_dir))


def _endpoint_certificate(endpoints: list[Any], mode: Any, policy_uri: str) -> bytes | None:
    """The certificate of the endpoint with `mode` and `policy_uri` (None if none offers it)."""
    for ep in endpoints:
        if ep.SecurityMode == mode and ep.SecurityPolicyUri == policy_uri and ep.ServerCertificate:
            return _first_certificate(ep.ServerCertificate, "the server's certificate")
    return None


def _offered(endpoints: list[Any]) -> str:
    offered = {f"{ep.SecurityPolicyUri.rsplit('#', 1)[-1]}/{ep.SecurityMode.name}"
               for ep in endpoints}
    return ", ".join(sorted(offered)) or "no endpoints"


async def fetch_server_certificate(url: str, *, timeout: float = 5.0) -> CertificateInfo:
    """The certificate an OPC-UA server presents (asked over an unsecured discovery channel,
    which servers offer for this: check the fingerprint before trusting it).

    Parameters
    ----------
    url : str
        ``opc.tcp://host:port[/path]``.
    timeout : float, default 5.0
        Seconds for the whole exchange.

    Returns
    -------
    CertificateInfo
        The certificate of the server's Basic256Sha256 endpoints (else of any endpoint).

    Examples
    --------
    >>> import asyncio
    >>> asyncio.run(fetch_server_certificate("opc.tcp://127.0.0.1:1", timeout=2))
    Traceback (most recent call last):
    ...
    ConnectionError: opc.tcp://127.0.0.1:1: cannot connect to ask for the server's certificate (Connect call failed ('127.0.0.1', 1))
    """
    _parse_url(url)
    timeout = check_timeout(timeout, "timeout")
    from asyncua import Client
    from asyncua.crypto import security_policies

    client = Client(url, timeout=timeout)
    try:
        endpoints = await asyncio.wait_for(client.connect_and_get_server_endpoints(), timeout)
    except TimeoutError:
        raise TimeoutError(f"{url}: no endpoint list within {timeout:g} s") from None
    except OSError as exc:
        raise ConnectionError(f"{url}: cannot connect to ask for the server's certificate "
                              f"({exc.strerror or exc})") from None
    except Exception as exc:  # noqa: BLE001 - a protocol error: say which
        raise ConnectionError(f"{url}: cannot get the endpoint list ({type(exc).__name__}: "
                              f"{exc})") from None
    uri = security_policies.SecurityPolicyBasic256Sha256.URI
    ordered = sorted(endpoints, key=lambda ep: ep.SecurityPolicyUri != uri)
    for ep in ordered:
        if ep.ServerCertificate:
            return certificate_info(_first_certificate(ep.ServerCertificate,
                                                       "the server's certificate"))
    raise ConnectionError(f"{url}: the server presents no certificate (it offers "
                          f"{_offered(endpoints)})")


def trust_certificate(certificate: str | os.PathLike[str] | bytes, *,
                      trust_dir: str | os.PathLike[str] | None = None,
                      cert_dir: str | os.PathLike[str] | None = None,
                      server: str | None = None, timeout: float = 5.0) -> CertificateInfo:
    """Put a server's certificate in the trust list, explicitly.

    Check the printed fingerprint against the one the server's administrator gives you: what a
    server presents over the network is only as trustworthy as the network.

    Parameters
    ----------
    certificate : str, path or bytes
        An ``opc.tcp://`` URL (the certificate is fetched from the server, and stored as the one
        trusted for that host and port, replacing an earlier one), a certificate file (DER or
        PEM), or DER bytes.
    trust_dir : path, optional
        The trust list; default ``<cert_dir>/trusted``, as for :func:`opcua_source`.
    cert_dir : path, optional
        Default ``~/.local/share/twinbench/opcua``.
    server : str, optional
        With a file or bytes: the ``opc.tcp://`` URL of the server this certificate belongs to;
        it is stored as the one trusted for that host and port (as a URL `certificate` is), so
        that ``trust="first-use"`` accepts it too.
    timeout : float, default 5.0
        Seconds for fetching from a URL.

    Returns
    -------
    CertificateInfo
        Subject, fingerprint and where it was stored (``path``).

    Examples
    --------
    >>> import tempfile
    >>> trust_certificate(b"junk", trust_dir=tempfile.mkdtemp())
    Traceback (most recent call last):
    ...
    ValueError: certificate: expected an X.509 certificate (DER or PEM), got 4 bytes that are not one
    """
    for name, value in (("trust_dir", trust_dir), ("cert_dir", cert_dir)):
        if value is not None and not isinstance(value, (str, os.PathLike)):
            raise TypeError(f"{name}: expected a path or None, got {type(value).__name__}")
    folder = (Path(trust_dir) if trust_dir is not None
              else (Path(cert_dir) if cert_dir is not None else _default_cert_dir()) / "trusted")
    if isinstance(certificate, str) and certificate.startswith("opc.tcp://"):
        if server is not None:
            raise ValueError("server: give it with a certificate file or bytes, not with a URL")
        server = certificate
        info = run_to_completion(lambda: fetch_server_certificate(certificate, timeout=timeout),
                                 "twinbench-opcua-trust")
    else:
        info = certificate_info(certificate)
    if server is not None:
        host, port = _parse_url(server)
        path = _store(_server_record(folder, host, port), info.der)
    else:
        path = _store(folder / f"sha256-{info.fingerprint.replace(':', '')[:16].lower()}.der",
                      info.der)
    _logger.info("opcua trust list: trusted %r (SHA-256 fingerprint %s), stored in %s",
                 info.subject, info.fingerprint, path)
    return dataclasses.replace(info, path=path)


def _status_name(code: Any) -> str:
    from asyncua import ua

    if not isinstance(code, ua.StatusCode):
        code = ua.StatusCode(int(code))
    name = code.name
    # asyncua names codes it does not know "Good": show those by number.
    return name if name != "Good" or code.value == 0 else f"0x{code.value:08X}"


class OpcUaSource(LiveSource):
    """A subscription to the nodes of a tag map, delivering :class:`~twinbench.io.batch.Batch`.

    Build one with :func:`opcua_source`. Async API: :meth:`start`, :meth:`stop`, :meth:`read`,
    :meth:`batches`, :meth:`write`, :meth:`browse`, :meth:`read_values`. For notebook cells
    without ``await``: :meth:`start_sync`, :meth:`read_sync`, :meth:`write_sync`,
    :meth:`browse_sync`, :meth:`stop_sync` (they run on a private event-loop thread).
    """

    def __init__(self, url: str, host: str, port: int, tags: TagMap, *,
                 publishing_interval: float, sampling_interval: float, queue_size: int,
                 deadband: tuple[int, float] | None, timestamps: str, security: str,
                 certificate: str | None, private_key: str | None, cert_dir: Path,
                 server_certificate: str | None, trust: str, trust_dir: Path,
                 username: str | None, password: str | None, connect_timeout: float, request_timeout: float, write_timeout: float,
                 buffer_size: int, overflow: str, max_batch: int,
                 max_items_per_subscription: int, reconnect_max_delay: float,
                 max_clock_skew: float, missing: str) -> None:
        self.url = url
        self.host = host
        self.port = port
        self.tags = tags
        self.publishing_interval = publishing_interval
        self.sampling_interval = sampling_interval
        self.queue_size = queue_size
        self.deadband = deadband
        self.timestamps = timestamps
        self.security = security
        self.certificate = certificate
        self.private_key = private_key
        self.cert_dir = cert_dir
        self.server_certificate = server_certificate
        self.trust = trust
        self.trust_dir = trust_dir
        self.server_fingerprint: str | None = None  # of the certificate checked at connect
        self.username = username
        self.__password = password  # name-mangled and never in status/repr/messages
        self.connect_timeout = connect_timeout
        self.request_timeout = request_timeout
        self.write_timeout = write_timeout
        self.buffer_size = buffer_size
        self.overflow = overflow
        self.max_batch = max_batch
        self.max_items_per_subscription = max_items_per_subscription
        self.reconnect_max_delay = reconnect_max_delay
        self.max_clock_skew = max_clock_skew
        self.missing = missing
        self.stats = DecodeStats()
        self._log = RateLimitedLog(_logger)

        self._client: Any = None
        self._subscriptions: list[Any] = []
        self._node_ids: list[Any] = []  # ua.NodeId per tag (None when not found)
        self._failed: dict[str, str] = {}
        self._variant_types: dict[int, Any] = {}  # tag index -> ua.VariantType, for writes
        self._revised_interval: float | None = None
        # Chunks of (tag, time_ns, value, quality) columns; a chunk with tag None is a gap marker.
        self._buffer: collections.deque[tuple[Any, ...]] = collections.deque()
        self._buffered = 0
        self._ready: asyncio.Event | None = None
        self._running = False
        self._connected = False
        self._publishes = 0
        self._dropped = 0
        self._handler_errors = 0
        self._status_changes = 0
        self._batches = 0
        self._disconnects = 0
        self._reconnects = 0
        self._gaps = 0
        self._writes = 0
        self._write_errors = 0
        self._gap_since_ns: int | None = None
        self._latest = LatestValues(tags.names)
        self._sync = LoopThread(f"twinbench-opcua-{url}", f"OpcUaSource {url}")

    # -- status --------------------------------------------------------------------------------

    @property
    def status(self) -> dict[str, Any]:
        """Connection state and counters, JSON-serialisable.

        ``publishes``: publish responses with data; ``values``: samples taken from them;
        ``queued``: samples waiting to be read; ``dropped_overflow``: samples lost to the
        overflow policy; ``handler_errors``: exceptions caught in the publish callback;
        ``failed``: tags that could not be monitored, with their status code; ``disconnects``,
        ``reconnects``, ``gaps``, ``disconnected_since`` (ISO UTC, None while connected);
        ``writes`` and ``write_errors``: tags written and refused; ``decode``: value problems by
        reason (wrong_type, non_finite, bad_timestamp, future_timestamp);
        ``server_fingerprint``: SHA-256 of the server certificate accepted at connect.
        """
        since = self._gap_since_ns
        down = None if since is None else str(np.datetime64(since, "ns")) + "Z"
        return {"connected": self._connected, "disconnected_since": down, "url": self.url,
                "security": self.security, "trust": self.trust,
                "server_fingerprint": self.server_fingerprint, "username": self.username,
                "password_set": self.__password is not None,
                "subscriptions": len(self._subscriptions),
                "items": len(self.tags) - len(self._failed), "failed": dict(self._failed),
                "publishing_interval": self._revised_interval or self.publishing_interval,
                "publishes": self._publishes, "values": self.stats.values,
                "queued": self._buffered, "buffer_size": self.buffer_size,
                "overflow": self.overflow, "dropped_overflow": self._dropped,
                "handler_errors": self._handler_errors, "status_changes": self._status_changes,
                "disconnects": self._disconnects, "reconnects": self._reconnects,
                "gaps": self._gaps, "writes": self._writes, "write_errors": self._write_errors,
                "batches": self._batches, "decode": self.stats.as_dict()}

    # -- connecting ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect, resolve the tags, create the subscriptions; idempotent.

        Raises
        ------
        TimeoutError
            No connection within ``connect_timeout`` (names the URL).
        UntrustedCertificate
            The server's certificate is not in the trust list (or not the pinned one, or not
            the one first trusted for this server); a subclass of ConnectionError.
        ConnectionError
            The server refused the connection or the security settings.
        PermissionError
            The server refused the user identity (wrong user name or password).
        LookupError
            ``missing="raise"`` and some tags name nodes that do not exist.
        """
        if self._running:
            return
        self._ready = asyncio.Event()
        client = await self._make_client()
        try:
            await asyncio.wait_for(client.connect(), self.connect_timeout)
        except TimeoutError:
            await self._abandon(client)
            raise TimeoutError(f"OpcUaSource {self.url}: no connection within "
                               f"{self.connect_timeout:g} s") from None
        except Exception as exc:  # noqa: BLE001 - sorted into clear errors below
            await self._abandon(client)
            raise _connect_error(self.url, self.username, exc) from None
        self._client = client
        self._running = True
        self._connected = True
        try:
            await asyncio.wait_for(self._subscribe(), self.connect_timeout)
        except BaseException as exc:
            await self._shutdown()
            if isinstance(exc, asyncio.TimeoutError):
                raise TimeoutError(f"OpcUaSource {self.url}: subscribing {len(self.tags)} tags "
                                   f"took longer than {self.connect_timeout:g} s") from None
            raise

    async def _make_client(self) -> Any:
        from asyncua import Client, ua
        from asyncua.crypto import security_policies

        # The watchdog's liveness probe times out after its interval: a busy server must not
        # count as lost after 1 s (a closed socket is noticed at once regardless).
        client = Client(self.url, timeout=self.request_timeout,
                        watchdog_intervall=self.request_timeout,
                        auto_reconnect=True, reconnect_max_delay=self.reconnect_max_delay,
                        reconnect_request_timeout=self.request_timeout)
        client.application_uri = APPLICATION_URI
        client.session_timeout = 600_000  # what asyncua servers grant; asking more only warns
        client.name = client.description = "twinbench"
        client.connection_lost_callback = self._on_connection_lost
        _redact_asyncua_logs()
        if self.security != "none":
            certificate, private_key = self.certificate, self.private_key
            if certificate is None:
                certificate, private_key = await self._own_certificate(client)
            mode = (ua.MessageSecurityMode.Sign if self.security == "sign"
                    else ua.MessageSecurityMode.SignAndEncrypt)
            policy = security_policies.SecurityPolicyBasic256Sha256
            try:
                endpoints = await asyncio.wait_for(client.connect_and_get_server_endpoints(),
                                                   self.connect_timeout)
            except TimeoutError:
                raise TimeoutError(f"OpcUaSource {self.url}: no endpoint list within "
                                   f"{self.connect_timeout:g} s") from None
            except Exception as exc:  # noqa: BLE001 - sorted into clear errors
                raise _connect_error(self.url, self.username, exc) from None
            presented = _endpoint_certificate(endpoints, mode, policy.URI)
            if presented is None:
                raise ConnectionError(f"OpcUaSource {self.url}: security {self.security!r} "
                                      f"(Basic256Sha256) is not available: the server offers "
                                      f"{_offered(endpoints)}")
            # asyncua then encrypts to this certificate's key and, when the session is created,
            # refuses a server whose certificate differs: the checked certificate is the one used.
            trusted = _check_server_certificate(
                presented, url=self.url, host=self.host, port=self.port, trust=self.trust,
                trust_dir=self.trust_dir, pinned=self.server_certificate)
            self.server_fingerprint = certificate_fingerprint(trusted)
            try:
                await client.set_security(policy, str(certificate), str(private_key),
                                          server_certificate=trusted, mode=mode)
            except Exception as exc:  # noqa: BLE001 - e.g. an unreadable client certificate
                raise ConnectionError(f"OpcUaSource {self.url}: cannot set up security "
                                      f"{self.security!r} (Basic256Sha256): {exc}") from None
        if self.username is not None:
            client.set_user(self.username)
            if self.__password is not None:
                client.set_password(self.__password)
        return client

    async def _own_certificate(self, client: Any) -> tuple[Path, Path]:
        """The generated client certificate and key in ``cert_dir`` (made on first use)."""
        from cryptography.x509.oid import ExtendedKeyUsageOID

        key_file = self.cert_dir / "client-key.pem"
        cert_file = self.cert_dir / "client-cert.der"
        if not (key_file.exists() and cert_file.exists()):
            _logger.info("opcua: generating a client certificate in %s", self.cert_dir)
        await client.setup_self_signed_certificate(
            key_file, cert_file, subject_attrs={"organizationName": "twinbench"},
            extended=[ExtendedKeyUsageOID.CLIENT_AUTH])
        return cert_file, key_file

    @staticmethod
    async def _abandon(client: Any) -> None:
        try:
            await asyncio.wait_for(client.disconnect(), 2.0)
        except BaseException:  # noqa: BLE001 - half-open; nothing more to do
            pass

    async def _resolve(self) -> list[Any]:
        """A ua.NodeId per tag (None for browse paths that do not resolve)."""
        from asyncua import ua

        node_ids: list[Any] = []
        paths: list[tuple[int, OpcUaAddress]] = []
        for i, name in enumerate(self.tags.names):
            address = self.tags[name]
            if address.node_id is not None:
                node_ids.append(ua.NodeId.from_string(address.node_id))
            else:
                node_ids.append(None)
                paths.append((i, address))
        if paths:
            requests = []
            for _, address in paths:
                elements = [ua.RelativePathElement(
                    ReferenceTypeId=ua.NodeId(ua.ObjectIds.HierarchicalReferences),
                    IsInverse=False, IncludeSubtypes=True,
                    TargetName=ua.QualifiedName(name, ns)) for ns, name in address.browse_path]
                requests.append(ua.BrowsePath(
                    StartingNode=ua.NodeId(ua.ObjectIds.RootFolder),
                    RelativePath=ua.RelativePath(Elements=elements)))
            results = await self._client.uaclient.translate_browsepaths_to_nodeids(requests)
            for (i, _), result in zip(paths, results, strict=True):
                if result.StatusCode.is_good() and result.Targets:
                    node_ids[i] = result.Targets[0].TargetId
                else:
                    self._failed[self.tags.names[i]] = _status_name(result.StatusCode)
        return node_ids

    async def _server_limit(self, path: list[str]) -> int:
        try:
            node = await self._client.nodes.server.get_child(path)
            value = await node.read_value()
        except Exception:  # noqa: BLE001 - optional node: no limit advertised
            return 0
        return int(value or 0)

    async def _subscribe(self) -> None:
        from asyncua import ua

        self._failed.clear()
        self._node_ids = await self._resolve()
        per_call = await self._server_limit(["0:ServerCapabilities", "0:OperationLimits",
                                             "0:MaxMonitoredItemsPerCall"]) or 1000
        per_sub = self.max_items_per_subscription
        server_per_sub = await self._server_limit(["0:ServerCapabilities",
                                                   "0:MaxMonitoredItemsPerSubscription"])
        if server_per_sub:
            per_sub = min(per_sub, server_per_sub)
        wanted = [i for i, node_id in enumerate(self._node_ids) if node_id is not None]
        mfilter = None
        if self.deadband is not None:
            mfilter = ua.DataChangeFilter(Trigger=ua.DataChangeTrigger.StatusValue,
                                          DeadbandType=self.deadband[0],
                                          DeadbandValue=self.deadband[1])
        for start in range(0, len(wanted), per_sub):
            sub = await self._new_subscription()
            chunk = wanted[start:start + per_sub]
            for first in range(0, len(chunk), per_call):
                requests = [self._item_request(i, mfilter) for i in chunk[first:first + per_call]]
                results = await sub.create_monitored_items(requests)
                for request, result in zip(requests, results):
                    if isinstance(result, ua.StatusCode):
                        tag = self.tags.names[request.RequestedParameters.ClientHandle - 1]
                        self._failed[tag] = _status_name(result)
        if self._failed:
            detail = ", ".join(f"{tag} ({code})" for tag, code in self._failed.items())
            if self.missing == "raise":
                raise LookupError(f"OpcUaSource {self.url}: cannot monitor {detail}")
            _logger.warning("opcua %s: cannot monitor %s", self.url, detail)

    def _item_request(self, index: int, mfilter: Any) -> Any:
        from asyncua import ua

        params = ua.MonitoringParameters()
        # The client handle is the tag index + 1: the publish callback needs no lookup table.
        params.ClientHandle = index + 1
        params.SamplingInterval = self.sampling_interval
        params.QueueSize = self.queue_size
        params.DiscardOldest = True
        if mfilter is not None:
            params.Filter = mfilter
        return ua.MonitoredItemCreateRequest(
            ItemToMonitor=ua.ReadValueId(NodeId=self._node_ids[index],
                                         AttributeId=ua.AttributeIds.Value),
            MonitoringMode=ua.MonitoringMode.Reporting, RequestedParameters=params)

    async def _new_subscription(self) -> Any:
        from asyncua import ua

        client = self._client
        params = ua.CreateSubscriptionParameters(
            RequestedPublishingInterval=self.publishing_interval, RequestedLifetimeCount=10000,
            RequestedMaxKeepAliveCount=client.get_keepalive_count(self.publishing_interval),
            MaxNotificationsPerPublish=0, PublishingEnabled=True, Priority=0)
        sub = _columnar_subscription_class()(client.uaclient.session, params, self)
        result = await sub.init()
        self._revised_interval = float(result.RevisedPublishingInterval)
        # asyncua's reconnect supervisor restores the subscriptions it tracks in this list
        # (Client.create_subscription does the same); asyncua is pinned to the 2.x API.
        client._subscriptions.append(sub)
        self._subscriptions.append(sub)
        return sub

    async def _on_connection_lost(self, exc: Exception) -> None:
        if self._gap_since_ns is None and self._running:
            self._gap_since_ns = time.time_ns()
            self._disconnects += 1
        self._connected = False
        _logger.warning("opcua %s: connection lost (%s); reconnecting", self.url,
                        type(exc).__name__)

    # -- the publish callback (runs on the client's loop) --------------------------------------

    def _on_publish(self, sub: Any, result: Any) -> None:
        from asyncua import ua

        try:
            if self._gap_since_ns is not None:
                self._queue_gap()
            self._connected = True
            data = result.NotificationMessage.NotificationData
            if not data:
                return
            for notification in data:
                if isinstance(notification, ua.DataChangeNotification):
                    self._publishes += 1
                    self._take_items(notification.MonitoredItems, time.time_ns())
                elif isinstance(notification, ua.StatusChangeNotification):
                    self._status_changes += 1
                    self._log.warning("status", "opcua %s: subscription status %s", self.url,
                                      _status_name(notification.Status))
        except Exception:  # noqa: BLE001 - never raise into asyncua's publish loop
            self._handler_errors += 1
            self._log.warning("handler", "opcua %s: publish callback failed", self.url,
                              exc_info=True)

    def _queue_gap(self) -> None:
        since, self._gap_since_ns = self._gap_since_ns, None
        self._reconnects += 1
        self._gaps += 1
        self._buffer.append((None, since))
        self._buffered += len(self.tags)
        _logger.warning("opcua %s: reconnected; data between %s and now are missing", self.url,
                        np.datetime64(since, "ns"))
        if self._ready is not None:
            self._ready.set()

    def _take_items(self, items: list[Any], receive_ns: int) -> None:
        columns = item_columns(items, len(self.tags), receive_ns, self.timestamps,
                               self.max_clock_skew, self.stats)
        n = len(columns[0])
        if n == 0:
            return
        if self._buffered + n > self.buffer_size:
            if self.overflow == "drop_newest":
                self._dropped += n
                self._log.warning("overflow", "opcua %s: buffer full (%d samples); dropping new "
                                  "samples", self.url, self.buffer_size)
                return
            while self._buffer and self._buffered + n > self.buffer_size:
                old = self._buffer.popleft()
                lost = len(self.tags) if old[0] is None else len(old[0])
                self._buffered -= lost
                if old[0] is not None:
                    self._dropped += lost
            self._log.warning("overflow", "opcua %s: buffer full (%d samples); dropping the "
                              "oldest", self.url, self.buffer_size)
        self._buffer.append(columns)
        self._buffered += n
        if self._ready is not None:
            self._ready.set()

    # -- reading -------------------------------------------------------------------------------

    def _take(self) -> Batch | None:
        buf = self._buffer
        if not buf:
            return None
        if buf[0][0] is None:  # a gap marker is a batch of its own
            _, since = buf.popleft()
            self._buffered -= len(self.tags)
            return Batch.gap(self.tags.names, np.datetime64(since, "ns"))
        chunks = []
        n = 0
        while buf and buf[0][0] is not None \
                and (not chunks or n + len(buf[0][0]) <= self.max_batch):
            chunk = buf.popleft()
            chunks.append(chunk)
            n += len(chunk[0])
        self._buffered -= n
        if len(chunks) == 1:
            tag, t, value, quality = chunks[0]
        else:
            tag, t, value, quality = (np.concatenate(col) for col in zip(*chunks))
        return Batch._trusted(tag, t.view("datetime64[ns]"), value, quality, self.tags.names)

    def _note(self, batch: Batch) -> Batch:
        self._latest.update(batch)
        self._batches += 1
        return batch

    async def read(self, timeout: float | None = None) -> Batch | None:
        """The next batch of buffered samples, waiting up to `timeout` s for one to arrive.

        Returns an empty batch on timeout and None once the source is stopped and its buffer
        drained.
        """
        if self._ready is None:
            raise RuntimeError(f"OpcUaSource {self.url}: call start() before reading")
        if not self._buffer:
            if not self._running:
                return None
            self._ready.clear()
            try:
                await asyncio.wait_for(self._ready.wait(), timeout)
            except TimeoutError:
                pass
        batch = self._take()
        if batch is None:
            if not self._running:
                return None
            return self._note(Batch.empty(self.tags.names))
        return self._note(batch)

    async def read_values(self, names: list[str] | None = None) -> Batch:
        """Read the current value of tags (all by default) directly, outside the subscription.

        Returns a batch with one sample per tag (its SourceTimestamp, else the receive time).
        """
        from asyncua import ua

        self._require_running()
        names = list(self.tags.names) if names is None else list(names)
        index = [self._tag_index(name) for name in names]
        params = ua.ReadParameters(NodesToRead=[
            ua.ReadValueId(NodeId=self._node_ids[i], AttributeId=ua.AttributeIds.Value)
            for i in index])
        values = await self._request(self._client.uaclient.read(params), "read")
        items = [ua.MonitoredItemNotification(ClientHandle=i + 1, Value=dv)
                 for i, dv in zip(index, values)]
        tag, t, value, quality = item_columns(items, len(self.tags), time.time_ns(),
                                              self.timestamps, self.max_clock_skew, DecodeStats())
        return Batch._trusted(tag, t.view("datetime64[ns]"), value, quality, self.tags.names)

    # -- writing -------------------------------------------------------------------------------

    def _require_running(self) -> None:
        if self._client is None or not self._running:
            raise RuntimeError(f"OpcUaSource {self.url}: call start() first")

    def _tag_index(self, name: str) -> int:
        try:
            index = self.tags.index(name)
        except (KeyError, ValueError):
            raise KeyError(f"tag: {name!r} is not in this source's tags "
                           f"{list(self.tags.names)}") from None
        if self._node_ids[index] is None:
            raise KeyError(f"tag: {name!r} has no node on the server ({self._failed.get(name)})")
        return index

    async def _request(self, coro: Any, what: str, timeout: float | None = None) -> Any:
        timeout = self.request_timeout if timeout is None else timeout
        try:
            return await asyncio.wait_for(coro, timeout)
        except TimeoutError:
            raise TimeoutError(f"OpcUaSource {self.url}: no answer to {what} within "
                               f"{timeout:g} s") from None
        except (ConnectionError, OSError) as exc:  # e.g. during an outage: fail at once
            raise ConnectionError(f"OpcUaSource {self.url}: {what} failed, not connected "
                                  f"({exc})") from None

    async def _variant_type(self, index: int) -> Any:
        vtype = self._variant_types.get(index)
        if vtype is None:
            node = self._client.get_node(self._node_ids[index])
            vtype = await node.read_data_type_as_variant_type()
            self._variant_types[index] = vtype
        return vtype

    async def write(self, tag_or_mapping: str | Mapping[str, Any], value: Any = None, *,
                    timeout: float | None = None) -> dict[str, Any]:
        """Write tags, converting each value to its node's data type, and read them back.

        Parameters
        ----------
        tag_or_mapping : str or mapping of str to value
            One tag name (with `value`) or ``{tag: value}`` for several (one write request).
        value : bool, int, float or str
            The value for a single tag.
        timeout : float, optional
            Seconds for the write and its read-back; default ``write_timeout``.

        Returns
        -------
        dict of str to object
            Tag name to the value read back after the write.

        Raises
        ------
        WriteRejected
            The server refused some tags (``rejected`` names each with its status code, e.g.
            ``BadOutOfRange``, ``BadUserAccessDenied``, ``BadNotWritable``), or a value cannot
            be converted to its node's type (``BadTypeMismatch``, not sent). ``written`` holds
            the tags of the same request that were written.
        TimeoutError
            No answer within `timeout`.
        KeyError
            A tag that is not in the tag map.
        """
        items = write_items(tag_or_mapping, value)
        timeout = self.write_timeout if timeout is None else check_timeout(timeout, "timeout")
        self._require_running()
        index = {tag: self._tag_index(tag) for tag, _ in items}
        return await self._request(self._write(items, index), "a write", timeout)

    async def _write(self, items: list[tuple[str, Any]], index: dict[str, int]) -> dict[str, Any]:
        from asyncua import ua

        rejected: dict[str, str] = {}
        to_write: list[tuple[str, Any]] = []
        for tag, val in items:
            vtype = await self._variant_type(index[tag])
            try:
                variant = ua.Variant(convert_for_write(val, vtype), vtype)
            except (TypeError, ValueError) as exc:
                rejected[tag] = f"BadTypeMismatch: {exc}"
                continue
            to_write.append((tag, variant))
        written: dict[str, Any] = {}
        if to_write:
            params = ua.WriteParameters(NodesToWrite=[
                ua.WriteValue(NodeId=self._node_ids[index[tag]],
                              AttributeId=ua.AttributeIds.Value, Value=ua.DataValue(variant))
                for tag, variant in to_write])
            codes = await self._client.uaclient.write(params)
            good = []
            for (tag, _), code in zip(to_write, codes):
                if code.is_good():
                    good.append(tag)
                else:
                    rejected[tag] = _status_name(code)
            if good:
                read = ua.ReadParameters(NodesToRead=[
                    ua.ReadValueId(NodeId=self._node_ids[index[tag]],
                                   AttributeId=ua.AttributeIds.Value) for tag in good])
                values = await self._client.uaclient.read(read)
                written = {tag: (dv.Value.Value if dv.Value is not None else None)
                           for tag, dv in zip(good, values)}
        self._writes += len(written)
        self._write_errors += len(rejected)
        if rejected:
            raise WriteRejected(rejected, written)
        return written

    # -- browsing ------------------------------------------------------------------------------

    async def browse(self, root: str = "i=85", depth: int = 4, max_nodes: int = 5000
                     ) -> BrowseNode:
        """The address space below `root` as a tree (default: the Objects folder).

        Parameters
        ----------
        root : str, default "i=85"
            NodeId of the top node.
        depth : int, default 4
            Levels below `root` to follow.
        max_nodes : int, default 5000
            Stop after this many nodes (a node cut short has ``info["truncated"] = True``).

        Returns
        -------
        BrowseNode
            ``tree.variables()`` is a tag map of every variable found.
        """
        from asyncua import ua

        self._require_running()
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 0:
            raise ValueError(f"depth: expected an int >= 0, got {depth!r}")
        node = self._client.get_node(ua.NodeId.from_string(root))
        name = await self._request(node.read_browse_name(), "browse")
        top = BrowseNode(name.to_string(), root, "Object")
        count = [1]

        async def expand(tree: BrowseNode, level: int) -> None:
            if level >= depth:
                return
            children = await self._request(
                self._client.get_node(ua.NodeId.from_string(tree.address)).get_children_descriptions(),
                "browse")
            for desc in children:
                if count[0] >= max_nodes:
                    tree.info["truncated"] = True
                    return
                count[0] += 1
                child = BrowseNode(desc.BrowseName.to_string(), desc.NodeId.to_string(),
                                   desc.NodeClass.name)
                if desc.ReferenceTypeId == ua.NodeId(ua.ObjectIds.HasProperty):
                    child.info["property"] = True  # EngineeringUnits, EURange...: not a tag
                tree.children.append(child)
                if desc.NodeClass in (ua.NodeClass.Object, ua.NodeClass.Variable):
                    await expand(child, level + 1)

        await expand(top, 0)
        return top

    # -- stopping ------------------------------------------------------------------------------

    async def _shutdown(self) -> None:
        self._running = False
        client, self._client = self._client, None
        self._subscriptions = []
        if client is not None:
            try:
                await asyncio.wait_for(client.disconnect(), self.connect_timeout)
            except BaseException:  # noqa: BLE001 - gone already, or a dead connection
                _logger.info("opcua %s: disconnect did not complete cleanly", self.url)
        self._connected = False
        self._gap_since_ns = None
        if self._ready is not None:
            self._ready.set()

    # -- sync facade ---------------------------------------------------------------------------

    def read_values_sync(self, names: list[str] | None = None) -> Batch:
        """:meth:`read_values` from synchronous code."""
        return self._sync.run(self.read_values(names), 2 * self.request_timeout)

    def write_sync(self, tag_or_mapping: str | Mapping[str, Any], value: Any = None, *,
                   timeout: float | None = None) -> dict[str, Any]:
        """:meth:`write` from synchronous code (after :meth:`start_sync`)."""
        wait = self.write_timeout if timeout is None else check_timeout(timeout, "timeout")
        return self._sync.run(self.write(tag_or_mapping, value, timeout=timeout), wait + 1.0)

    def browse_sync(self, root: str = "i=85", depth: int = 4, max_nodes: int = 5000
                    ) -> BrowseNode:
        """:meth:`browse` from synchronous code."""
        return self._sync.run(self.browse(root, depth, max_nodes), 60.0)


def _connect_error(url: str, username: str | None, exc: Exception) -> Exception:
    name = type(exc).__name__
    if name in ("BadUserAccessDenied", "BadIdentityTokenRejected", "BadIdentityTokenInvalid",
                "BadUserSignatureInvalid"):
        who = f"user {username!r}" if username else "anonymous access"
        return PermissionError(f"OpcUaSource {url}: the server refused {who} ({name})")
    if isinstance(exc, OSError):
        return ConnectionError(f"OpcUaSource {url}: cannot connect ({exc.strerror or exc})")
    return ConnectionError(f"OpcUaSource {url}: connection failed ({name}: {exc})")


_SUBSCRIPTION_CLASS: Any = None


def _columnar_subscription_class() -> Any:
    """asyncua's Subscription with its publish callback replaced by :meth:`OpcUaSource._on_publish`.

    Built on first use so that importing twinbench.io.opcua does not import asyncua.
    """
    global _SUBSCRIPTION_CLASS
    if _SUBSCRIPTION_CLASS is None:
        import time as _time

        from asyncua.common.subscription import Subscription

        class ColumnarSubscription(Subscription):
            def __init__(self, server: Any, params: Any, owner: OpcUaSource) -> None:
                # A handler object keeps asyncua off its iterator-queue path; it is never called.
                super().__init__(server, params, handler=owner)
                self._owner = owner

            async def publish_callback(self, publish_result: Any) -> None:
                # The bookkeeping asyncua's own callback does (the stale-subscription watchdog
                # and republish-after-reconnect read these), then columns instead of events.
                self.last_publish_at = _time.monotonic()
                message = publish_result.NotificationMessage
                if message.NotificationData is not None:
                    self.last_sequence_number = int(message.SequenceNumber)
                self._owner._on_publish(self, publish_result)

        _SUBSCRIPTION_CLASS = ColumnarSubscription
    return _SUBSCRIPTION_CLASS


def item_columns(items: list[Any], n_tags: int, receive_ns: int, timestamps: str,
                 max_clock_skew: float, stats: DecodeStats) -> tuple[np.ndarray, ...]:
    """MonitoredItemNotifications (client handle = tag index + 1) as four numpy columns.

    Returns ``(tag int32, time int64 ns, value float64, quality uint8)``. Never raises on bad
    values: a non-numeric variant is a NaN sample with ``BAD_DECODE`` quality, a missing or
    far-future timestamp becomes the receive time with ``UNCERTAIN`` quality, an unknown client
    handle is skipped; each is counted in `stats`.
    """
    tags: list[int] = []
    secs: list[float] = []
    values: list[float] = []
    codes: list[int] = []
    marks: list[int] = []
    receive_s = receive_ns / 1e9
    limit = receive_s + max_clock_skew
    use_source = timestamps == "source"
    use_server = timestamps != "receive"
    flags = stats.flags
    for item in items:
        stats.messages += 1
        index = item.ClientHandle - 1
        if not 0 <= index < n_tags:
            stats.rejects[Reject.UNKNOWN_TOPIC] += 1
            continue
        dv = item.Value
        status = dv.StatusCode
        mark = _GOOD
        variant = dv.Value
        v = None if variant is None else variant.Value
        kind = type(v)
        if kind is float:
            if not math.isfinite(v):
                flags[Reject.NON_FINITE] += 1
                v = _NAN
                mark = _BAD_DECODE
        elif kind is int or kind is bool:
            v = float(v)
        elif v is None and status is not None and status.value >> 31:
            v = _NAN  # a Bad status without a value: the status says it all
        else:
            flags[Reject.WRONG_TYPE] += 1
            v = _NAN
            mark = _BAD_DECODE
        ts = None
        if use_source:
            ts = dv.SourceTimestamp
        if ts is None and use_server:
            ts = dv.ServerTimestamp
        if ts is None:
            t = receive_s
            if use_server:
                flags[Reject.BAD_TIMESTAMP] += 1
                mark = mark or _UNCERTAIN
        else:
            try:
                t = ts.timestamp()
            except (AttributeError, OverflowError, ValueError, OSError):
                t = _MIN_VALID_TIME_S - 1.0
            if t < _MIN_VALID_TIME_S:
                flags[Reject.BAD_TIMESTAMP] += 1
                t = receive_s
                mark = mark or _UNCERTAIN
            elif t > limit:
                flags[Reject.FUTURE_TIMESTAMP] += 1
                t = receive_s
                mark = mark or _UNCERTAIN
        tags.append(index)
        secs.append(t)
        values.append(v)
        codes.append(0 if status is None else status.value)
        marks.append(mark)
    n = len(tags)
    stats.accepted += n
    stats.values += n
    tag = np.array(tags, dtype=np.int32)
    # Microseconds are all a Python datetime holds; float64 seconds resolve them exactly today.
    t_ns = (np.rint(np.array(secs, dtype=np.float64) * 1e6).astype(np.int64) * 1000
            if n else np.empty(0, np.int64))
    value = np.array(values, dtype=np.float64)
    quality = np.maximum(quality_from_opcua_status(np.array(codes, dtype=np.uint32)),
                         np.array(marks, dtype=np.uint8))
    return tag, t_ns, value, quality


# Python value -> ua.VariantType conversion rules for writes.
_INT_RANGES = {"SByte": (-2**7, 2**7 - 1), "Byte": (0, 2**8 - 1), "Int16": (-2**15, 2**15 - 1),
               "UInt16": (0, 2**16 - 1), "Int32": (-2**31, 2**31 - 1), "UInt32": (0, 2**32 - 1),
               "Int64": (-2**63, 2**63 - 1), "UInt64": (0, 2**64 - 1)}


def convert_for_write(value: Any, vtype: Any) -> Any:
    """`value` as the Python value asyncua encodes for a node of VariantType `vtype`.

    Numbers convert between int and float only without loss (``2.0`` to an Int32 node is 2;
    ``2.5`` is refused); booleans go only to Boolean nodes and vice versa (``0``/``1`` are
    accepted for a Boolean); strings only to String nodes.

    Examples
    --------
    >>> from asyncua import ua
    >>> convert_for_write(3, ua.VariantType.Double), convert_for_write(2.0, ua.VariantType.Int32)
    (3.0, 2)
    >>> convert_for_write(2.5, ua.VariantType.Int16)
    Traceback (most recent call last):
    ...
    ValueError: 2.5 is not a whole number for an Int16 node
    """
    name = vtype.name
    if name == "Boolean":
        if isinstance(value, bool):
            return value
        if isinstance(value, (int, float)) and value in (0, 1):
            return bool(value)
        raise TypeError(f"{value!r} is not a boolean for a Boolean node")
    if name in ("Double", "Float"):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out = float(value)
            if name == "Float" and math.isfinite(out) and abs(out) > 3.4028234663852886e38:
                raise ValueError(f"{value!r} is out of range for a Float node")
            return out
        raise TypeError(f"{value!r} is not a number for a {name} node")
    if name in _INT_RANGES:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"{value!r} is not a number for an {name} node")
        if isinstance(value, float):
            if not value.is_integer():
                raise ValueError(f"{value!r} is not a whole number for an {name} node")
            value = int(value)
        low, high = _INT_RANGES[name]
        if not low <= value <= high:
            raise ValueError(f"{value!r} is out of range for an {name} node")
        return value
    if name in ("String", "LocalizedText"):
        if isinstance(value, str):
            return value
        raise TypeError(f"{value!r} is not a string for a {name} node")
    raise TypeError(f"nodes of type {name} are not writable from twinbench")
