"""MQTT source: subscribe to the topics of a tag map and hand out columnar batches.

paho-mqtt's network I/O runs on the source's asyncio loop (its socket registered with the loop's
selector, ``loop_read``/``loop_write`` on readiness, a task for keepalive pings), not on a thread
of its own: with the GIL, a reader thread and a consumer thread both busy cost more in hand-offs
than the work itself. Each message is decoded as it arrives (the built-in decoders append to one
set of growing columns; other decoders get the raw messages in chunks), and :meth:`read` hands out
what has gathered as one :class:`~twinbench.io.batch.Batch` of numpy columns, never one Python
object per sample. A read waits up to ``min_batch_interval`` (2 ms) after the first waiting
message so that a fast stream comes in few, large batches. When the buffer is full the
``overflow`` policy decides what happens, and every dropped message is counted in
:attr:`MqttSource.status`. In a notebook, ``start_sync()`` runs all this on a private loop
thread; with ``await src.start()`` on the kernel's own loop, a cell that blocks the loop also
pauses the reading (the broker queues meanwhile).

Every network wait has a timeout: a notebook cell never hangs on an unreachable broker.

When the broker goes away, the source reconnects by itself (backing off from 1 s up to 120 s) and
subscribes again; ``status`` shows ``connected``, ``disconnected_since``, ``disconnects``
and ``reconnects``. The outage shows in the data too: on reconnect the source queues a gap marker
(:meth:`~twinbench.io.batch.Batch.gap`: one NaN sample per tag, quality ``GAP``, at the time the
connection was lost) before any message of the new connection. Messages published meanwhile are
lost, unless ``persistent=True``: then the broker keeps the session and delivers the QoS 1/2
messages it queued for the twin (after the marker).

:meth:`MqttSource.write` publishes commands to a ``command_topic`` and, with an ``ack_topic``,
waits (bounded) for the equipment's acknowledgements.

``mqtts://host:port`` (default port 8883) connects over TLS, verifying the broker's certificate
against ``ca_file`` (default: the system trust store) and its host name. ``username`` and
``password`` come from the arguments, else from the environment variables
``TWINBENCH_MQTT_USERNAME`` and ``TWINBENCH_MQTT_PASSWORD``, else (password only, when the optional
``keyring`` package is installed) from the keyring entry ``service="twinbench-mqtt"``,
``username="<user>@<host>:<port>"``. The password is kept in a private attribute and never shown
in ``status``, ``repr``, exception messages or log lines.

Examples
--------
>>> src = mqtt_source("mqtt://127.0.0.1:1883", {"temp": "plant/pump1/telemetry#temperature"})
>>> src.status["connected"], src.status["url"], src.topics
(False, 'mqtt://127.0.0.1:1883', ('plant/pump1/telemetry',))
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import ssl
import threading
import time
import urllib.parse
from collections.abc import Mapping
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
from twinbench.io._sync import LoopThread
from twinbench.io.batch import Batch
from twinbench.io.browse import BrowseNode
from twinbench.io import decode as decode_module
from twinbench.io.decode import Decoder, JsonDecoder, NumericDecoder, get_decoder
from twinbench.io.tags import MqttAddress, TagMap, tag_map, topic_filter

__all__ = ["ENV_PASSWORD", "ENV_USERNAME", "KEYRING_SERVICE", "OVERFLOW_POLICIES", "PROTOCOLS",
           "MqttSource", "WriteRejected", "mqtt_source", "stable_client_id", "topic_tree"]

OVERFLOW_POLICIES = ("drop_oldest", "drop_newest", "block")
KEEPALIVE = 30  # seconds between pings when nothing else is sent
_READS_PER_WAKE = 256  # packets read per readiness event before the loop runs others
PROTOCOLS = ("3.1.1", "5")
ENV_USERNAME = "TWINBENCH_MQTT_USERNAME"
ENV_PASSWORD = "TWINBENCH_MQTT_PASSWORD"
KEYRING_SERVICE = "twinbench-mqtt"

_logger = logging.getLogger("twinbench.io.mqtt")


def mqtt_source(url: str, tags: Any, *, qos: int = 1, client_id: str | None = None,
                decoder: str | Decoder = "json", queue_size: int = 100_000,
                overflow: str = "drop_oldest", connect_timeout: float = 5.0,
                max_batch: int = 10_000, persistent: bool = False, protocol: str = "3.1.1",
                session_expiry: float = 3600.0, command_topic: str | None = None,
                ack_topic: str | None = None, write_timeout: float = 5.0,
                username: str | None = None, password: str | None = None,
                ca_file: str | os.PathLike[str] | None = None,
                certfile: str | os.PathLike[str] | None = None,
                keyfile: str | os.PathLike[str] | None = None, tls_insecure: bool = False,
                subscribe: Any = (), min_batch_interval: float = 0.002,
                **decoder_options: Any) -> MqttSource:
    """Create an MQTT source (not yet connected: call ``await source.start()``).

    Parameters
    ----------
    url : str
        ``mqtt://host:port`` (port default 1883) or ``mqtts://host:port`` for TLS (port default
        8883). Credentials in the URL are refused: use `username` and `password`.
    tags : TagMap or anything :func:`~twinbench.io.tags.tag_map` accepts
        MQTT addresses; their order is the tag index of the batches.
    qos : {0, 1, 2}, default 1
        Subscription QoS.
    client_id : str, optional
        MQTT client id. Default: a random one from the broker, or with ``persistent=True`` the
        stable :func:`stable_client_id` of this machine, URL and topics (the broker finds a
        session by client id). Two twins on one machine subscribing to the same topics of the
        same broker would share that id and take the session from each other: give each its own.
    decoder : {"json", "numeric"} or Decoder, default "json"
        ``"json"``: every address needs a field path (``topic#field``). ``"numeric"``: every
        address is a bare topic whose payload is a number. A Decoder object is used as given.
    queue_size : int, default 100000
        Messages buffered between the network reads and the consumer.
    overflow : {"drop_oldest", "drop_newest", "block"}, default "drop_oldest"
        When the buffer is full: drop the oldest buffered message, drop the arriving one, or
        stop reading the socket until the consumer has taken some (the broker then queues).
        Drops are counted in ``status``. Under "block" a consumer that stops reading for longer
        than the keepalive (30 s) leaves the broker's ping answers unread, so the connection is
        dropped: keep consuming.
    connect_timeout : float, default 5.0
        Seconds for connecting, subscribing and disconnecting.
    max_batch : int, default 10000
        Most messages decoded into one batch.
    persistent : bool, default False
        Keep the session on the broker across disconnects (3.1.1: ``clean_session=False``;
        MQTT 5: ``clean_start=False`` plus ``session_expiry``), so QoS 1/2 messages published
        while the twin is away (network loss, a stopped source, a restarted notebook) are queued
        by the broker and delivered when a source with the same client id connects again. The
        broker itself must keep running (or persist its sessions), and it bounds the queue
        (mosquitto's ``max_queued_messages``, default 1000). QoS 0 messages are not queued.
    protocol : {"3.1.1", "5"}, default "3.1.1"
        MQTT protocol version.
    session_expiry : float, default 3600
        MQTT 5 with ``persistent=True``: seconds the broker keeps the session after a disconnect
        (a 3.1.1 persistent session lasts until the broker drops it).
    command_topic : str, optional
        Where :meth:`MqttSource.write` publishes commands (QoS 1), one JSON message per tag:
        ``{"tag": name, "value": v, "id": "<uuid hex>"}``. Without it the source cannot write.
    ack_topic : str, optional
        Where the equipment answers ``{"id": ..., "ok": true|false, "error": "..."}``; when set,
        a write waits for the acknowledgement of every command it sent. Without it a write
        waits only for the broker's PUBACK. Must not be one of the telemetry topics.
    write_timeout : float, default 5.0
        Default seconds a write waits (for the acknowledgement or the PUBACK).
    username : str, optional
        Default: the environment variable ``TWINBENCH_MQTT_USERNAME`` (none: anonymous).
    password : str, optional
        Default: ``TWINBENCH_MQTT_PASSWORD``, else the keyring entry (service ``twinbench-mqtt``,
        user ``<username>@<host>:<port>``) if the ``keyring`` package is installed. Never shown
        in ``status``, ``repr``, errors or logs. Needs a username.
    ca_file : path, optional
        ``mqtts://`` only: PEM file of the CAs trusted to sign the broker's certificate.
        Default: the system trust store. Verification cannot be switched off.
    certfile, keyfile : path, optional
        ``mqtts://`` only: client certificate (PEM) and its key (default: in `certfile`).
    tls_insecure : bool, default False
        ``mqtts://`` only: skip the check that the certificate names the host (the chain is
        still verified). For brokers reached by an address their certificate does not list.
    min_batch_interval : float, default 0.002
        Seconds a message may wait so that others arriving right after it share its batch
        (0: hand out whatever is buffered at once). Adds at most this to the latency, and
        saves most of the per-batch cost when messages stream in fast.
    subscribe : sequence of str, optional
        More subscriptions, wildcards allowed (``"plant/#"``, ``"plant/+/telemetry"``), to
        discover what equipment publishes: :meth:`MqttSource.browse` lists every topic seen.
        Messages on topics no tag maps are counted as ``unknown_topic`` and not decoded further.
    **decoder_options
        Passed to the decoder class (e.g. ``time_field="ts", time_format="epoch_ms"``).

    Examples
    --------
    >>> src = mqtt_source("mqtt://localhost", {"speed": "p1/speed"}, decoder="numeric")
    >>> src.host, src.port, src.tags.names
    ('localhost', 1883, ('speed',))
    >>> src = mqtt_source("mqtt://localhost", {"speed": "p1/speed"}, decoder="numeric",
    ...                   persistent=True)
    >>> src.client_id == stable_client_id("mqtt://localhost", ["p1/speed"]), len(src.client_id)
    (True, 23)
    >>> src = mqtt_source("mqtts://broker.example", {"speed": "p1/speed"}, decoder="numeric",
    ...                   username="twin", password="s3cret")
    >>> src.port, src.tls, src.status["username"], "s3cret" in repr(src) + str(src.status)
    (8883, True, 'twin', False)
    >>> mqtt_source("http://localhost", {"speed": "p1/speed"})
    Traceback (most recent call last):
    ...
    ValueError: url: expected 'mqtt://host:port' or 'mqtts://host:port', got 'http://localhost'
    """
    host, port, tls = _parse_url(url)
    tm = tag_map(tags, scheme="mqtt")
    if len(tm) == 0:
        raise ValueError("tags: expected at least one MQTT tag")
    if isinstance(qos, bool) or qos not in (0, 1, 2):
        raise ValueError(f"qos: expected 0, 1 or 2, got {qos!r}")
    if client_id is not None and not isinstance(client_id, str):
        raise TypeError(f"client_id: expected a str or None, got {type(client_id).__name__}")
    for name, value, low in (("queue_size", queue_size, 1), ("max_batch", max_batch, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name}: expected an int >= {low}, got {value!r}")
    if overflow not in OVERFLOW_POLICIES:
        raise ValueError(f"overflow: expected one of {OVERFLOW_POLICIES}, got {overflow!r}")
    if isinstance(connect_timeout, bool) or not isinstance(connect_timeout, (int, float)) \
            or not 0 < connect_timeout < float("inf"):
        raise ValueError(f"connect_timeout: expected finite seconds > 0, got {connect_timeout!r}")
    if not isinstance(persistent, bool):
        raise TypeError(f"persistent: expected True or False, got {persistent!r}")
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol: expected one of {PROTOCOLS}, got {protocol!r}")
    if isinstance(session_expiry, bool) or not isinstance(session_expiry, (int, float)) \
            or not 0 < session_expiry <= 0xFFFFFFFF:
        raise ValueError(f"session_expiry: expected seconds in (0, 4294967295], "
                         f"got {session_expiry!r}")
    for name, topic in (("command_topic", command_topic), ("ack_topic", ack_topic)):
        if topic is not None and (not isinstance(topic, str) or not topic
                                  or "+" in topic or "#" in topic):
            raise ValueError(f"{name}: expected a topic without wildcards, got {topic!r}")
    if isinstance(min_batch_interval, bool) or not isinstance(min_batch_interval, (int, float)) \
            or not 0 <= min_batch_interval <= 1:
        raise ValueError(f"min_batch_interval: expected seconds in [0, 1], got "
                         f"{min_batch_interval!r}")
    if isinstance(subscribe, str):
        subscribe = [subscribe]
    try:
        patterns = tuple(dict.fromkeys(topic_filter(p) for p in subscribe))
    except TypeError:
        raise TypeError(f"subscribe: expected topic filters (str), got {subscribe!r}") from None
    except ValueError as exc:
        raise ValueError(f"subscribe: {exc}") from None
    if ack_topic is not None and command_topic is None:
        raise ValueError("ack_topic: needs a command_topic to acknowledge")
    if ack_topic is not None and ack_topic in {tm[name].topic for name in tm.names}:
        raise ValueError(f"ack_topic: {ack_topic!r} is also a telemetry topic of the tags")
    write_timeout = check_timeout(write_timeout, "write_timeout")
    username, password = _credentials(username, password, host, port)
    tls_options = _tls_options(tls, ca_file, certfile, keyfile, tls_insecure)
    dec = _make_decoder(decoder, tm, decoder_options)
    if persistent and client_id is None:
        client_id = stable_client_id(url, [tm[name].topic for name in tm.names])
    return MqttSource(url, host, port, tm, dec, qos=qos, client_id=client_id,
                      queue_size=queue_size, overflow=overflow,
                      connect_timeout=float(connect_timeout), max_batch=max_batch,
                      persistent=persistent, protocol=protocol,
                      session_expiry=int(session_expiry), command_topic=command_topic,
                      ack_topic=ack_topic, write_timeout=write_timeout, username=username,
                      password=password, tls=tls_options, subscribe=patterns,
                      min_batch_interval=float(min_batch_interval))


def _credentials(username: Any, password: Any, host: str,
                 port: int) -> tuple[str | None, str | None]:
    return credentials(username, password, env_username=ENV_USERNAME, env_password=ENV_PASSWORD,
                       keyring_service=KEYRING_SERVICE, account=f"{host}:{port}")


def _tls_options(tls: bool, ca_file: Any, certfile: Any, keyfile: Any,
                 tls_insecure: Any) -> dict[str, Any] | None:
    if not isinstance(tls_insecure, bool):
        raise TypeError(f"tls_insecure: expected True or False, got {tls_insecure!r}")
    files = {"ca_file": ca_file, "certfile": certfile, "keyfile": keyfile}
    for name, value in files.items():
        if value is not None and not isinstance(value, (str, os.PathLike)):
            raise TypeError(f"{name}: expected a path or None, got {type(value).__name__}")
    if not tls:
        given = [name for name, value in files.items() if value is not None]
        if tls_insecure:
            given.append("tls_insecure")
        if given:
            raise ValueError(f"{', '.join(given)}: TLS options need an 'mqtts://' url")
        return None
    if keyfile is not None and certfile is None:
        raise ValueError("keyfile: given without a certfile")
    for name, value in files.items():
        if value is not None and not os.path.isfile(value):
            raise FileNotFoundError(f"{name}: no such file {os.fspath(value)!r}")
    return {name: None if value is None else os.fspath(value) for name, value in files.items()} \
        | {"tls_insecure": tls_insecure}


def _ssl_context(options: Mapping[str, Any]) -> ssl.SSLContext:
    # create_default_context: CERT_REQUIRED and hostname checking, the system store by default.
    context = ssl.create_default_context(cafile=options["ca_file"])
    if options["certfile"] is not None:
        context.load_cert_chain(options["certfile"], options["keyfile"])
    if options["tls_insecure"]:
        context.check_hostname = False
    return context


def stable_client_id(url: str, topics: Any) -> str:
    """A client id that stays the same across restarts: this machine's name, `url`, `topics`.

    23 characters (``tb-`` and 20 hex digits), the longest every MQTT 3.1.1 broker must accept.

    Examples
    --------
    >>> a = stable_client_id("mqtt://h:1883", ["b/x", "a/y"])
    >>> a == stable_client_id("mqtt://h:1883", ["a/y", "b/x"]), a.startswith("tb-"), len(a)
    (True, True, 23)
    """
    import hashlib
    import socket

    key = "\n".join([socket.gethostname(), url, *sorted(set(topics))])
    return "tb-" + hashlib.sha256(key.encode()).hexdigest()[:20]


def _parse_url(url: Any) -> tuple[str, int, bool]:
    if not isinstance(url, str):
        raise TypeError(f"url: expected a str 'mqtt://host:port', got {type(url).__name__}")
    parts = urllib.parse.urlsplit(url)
    if "@" in parts.netloc:
        # Not echoed: the URL holds a secret.
        raise ValueError("url: credentials in the URL are not accepted; pass username= and "
                         "password= (or set the TWINBENCH_MQTT_* environment variables)")
    try:
        port = parts.port
    except ValueError:
        port = -1
    if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname or port == -1 \
            or parts.path not in ("", "/"):
        raise ValueError(f"url: expected 'mqtt://host:port' or 'mqtts://host:port', got {url!r}")
    tls = parts.scheme == "mqtts"
    return parts.hostname, port if port is not None else (8883 if tls else 1883), tls


def _make_decoder(decoder: Any, tm: TagMap, options: Mapping[str, Any]) -> Decoder:
    if not isinstance(decoder, str):
        if not isinstance(decoder, Decoder):
            raise TypeError(f"decoder: expected a decoder name or an object with decode_many() "
                            f"and stats, got {type(decoder).__name__}")
        if options:
            raise TypeError(f"decoder options {sorted(options)} apply only to a decoder name")
        return decoder
    factory = get_decoder(decoder)
    addresses: dict[int, MqttAddress] = {i: tm[name] for i, name in enumerate(tm.names)}
    if decoder == "json":
        bare = [name for name in tm.names if tm[name].field is None]
        if bare:
            raise ValueError(f"tags: decoder 'json' needs a field path ('topic#field') for every "
                             f"tag; {bare} have none (use decoder='numeric' for plain numbers)")
        return factory({i: str(a) for i, a in addresses.items()}, **options)
    if decoder == "numeric":
        fielded = [name for name in tm.names if tm[name].field is not None]
        if fielded:
            raise ValueError(f"tags: decoder 'numeric' reads bare topics; {fielded} have a field "
                             f"path (use decoder='json')")
        return factory({i: a.topic for i, a in addresses.items()}, **options)
    return factory(addresses, **options)


class MqttSource(LiveSource):
    """A subscription to the topics of a tag map, delivering :class:`~twinbench.io.batch.Batch`.

    Build one with :func:`mqtt_source`. Async API: :meth:`start`, :meth:`stop`, :meth:`batches`,
    :meth:`read`. For notebook cells without ``await``: :meth:`start_sync`, :meth:`read_sync`,
    :meth:`stop_sync` (they run the async API on a private event-loop thread).

    :meth:`read_latest` reflects the batches consumed so far (through :meth:`batches` or
    :meth:`read`): nothing is decoded until someone consumes.
    """

    def __init__(self, url: str, host: str, port: int, tags: TagMap, decoder: Decoder, *,
                 qos: int, client_id: str | None, queue_size: int, overflow: str,
                 connect_timeout: float, max_batch: int, persistent: bool = False,
                 protocol: str = "3.1.1", session_expiry: int = 3600,
                 command_topic: str | None = None, ack_topic: str | None = None,
                 write_timeout: float = 5.0, username: str | None = None,
                 password: str | None = None, tls: Mapping[str, Any] | None = None,
                 subscribe: tuple[str, ...] = (), min_batch_interval: float = 0.0) -> None:
        self.url = url
        self.host = host
        self.port = port
        self.tags = tags
        self.decoder = decoder
        self.qos = qos
        self.client_id = client_id
        self.queue_size = queue_size
        self.overflow = overflow
        self.connect_timeout = connect_timeout
        self.max_batch = max_batch
        self.persistent = persistent
        self.protocol = protocol
        self.session_expiry = session_expiry
        self.command_topic = command_topic
        self.ack_topic = ack_topic
        self.write_timeout = write_timeout
        self.username = username
        self.__password = password  # name-mangled and never in status/repr/messages
        self.tls = tls is not None
        self._tls_options = dict(tls) if tls is not None else None
        # Command id -> (loop, future) of writes waiting for their acknowledgement.
        self._pending: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Future[Any]]] = {}
        self._acks = 0
        self._acks_invalid = 0
        self._commands = 0
        self.topics = tuple(dict.fromkeys(tags[name].topic for name in tags.names))
        self.patterns = tuple(p for p in subscribe if p not in self.topics)
        self.min_batch_interval = min_batch_interval
        self._trusted_decoder = type(decoder) in (JsonDecoder, NumericDecoder)
        # Built-in decoders decode each message as it arrives into one growing sink; the buffer
        # then holds (topic, rows, receive_ns) per message. Other decoders get raw messages,
        # (topic, payload, receive_ns), decoded in chunks by the consumer.
        self._sink: Any = decode_module.Sink() if self._trusted_decoder else None
        self._stats = decoder.stats
        self._decode_one = getattr(decoder, "_decode_one", None)

        # Items are (topic, payload, receive_ns); a topic of None is a gap marker (see _GAP).
        self._buffer: collections.deque[tuple[str | None, bytes, int]] = collections.deque()
        self._seen: dict[str, int] = {}  # topic -> messages received, for browse()
        # Guards _buffer, counters, _wake_pending. A plain Lock: cheaper than the default RLock
        # on the per-message path, and nothing takes it twice.
        self._misc_task: asyncio.Task[None] | None = None
        self._reconnect_task: asyncio.Task[None] | None = None
        self._reader_sock: Any = None
        self._paused = False
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._wake_pending = False
        self._client: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready: asyncio.Event | None = None
        self._running = False
        self._connected = False
        self._messages = 0
        self._dropped = 0
        self._handler_errors = 0
        self._batches = 0
        self._disconnects = 0
        self._reconnects = 0
        self._gaps = 0
        self._gap_since_ns: int | None = None  # when the connection was lost, until reconnected
        self._latest = LatestValues(tags.names)
        self._sync = LoopThread(f"twinbench-mqtt-{self.url}", f"MqttSource {self.url}")

    # -- status --------------------------------------------------------------------------------

    @property
    def status(self) -> dict[str, Any]:
        """Connection state and counters, JSON-serialisable.

        ``messages``: received from the broker; ``queued``: messages waiting to be read;
        ``dropped_overflow``: lost to the overflow policy; ``handler_errors``: exceptions caught in
        paho's callbacks; ``batches``: batches handed out; ``decode``: the decoder's counters.
        ``disconnects``: connections lost while running; ``reconnects``: connections regained;
        ``gaps``: gap markers queued; ``disconnected_since``: ISO UTC time the current outage
        began, None while connected (or not started).
        """
        with self._cond:
            counters = {"messages": self._messages, "queued": len(self._buffer),
                        "dropped_overflow": self._dropped, "handler_errors": self._handler_errors,
                        "disconnects": self._disconnects, "reconnects": self._reconnects,
                        "gaps": self._gaps, "commands": self._commands, "acks": self._acks,
                        "acks_invalid": self._acks_invalid}
            since = self._gap_since_ns
        down = None if since is None else str(np.datetime64(since, "ns")) + "Z"
        return {"connected": self._connected, "disconnected_since": down,
                "persistent": self.persistent, "protocol": self.protocol, "url": self.url,
                "tls": self.tls, "username": self.username,
                "password_set": self.__password is not None, "topics": list(self.topics),
                "overflow": self.overflow, "queue_size": self.queue_size, **counters,
                "batches": self._batches, "decode": self.decoder.stats.as_dict()}

    # -- paho's callbacks (on the source's loop) ------------------------------------------------

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        # The per-message path: kept to a few statements, since with the GIL every microsecond
        # here is one the consumer cannot use.
        try:
            topic = message.topic  # a property that decodes the topic bytes: read it once
            seen = self._seen  # only this thread writes the counts; browse() reads a copy
            try:
                seen[topic] += 1
            except KeyError:
                seen[topic] = 1
            if topic == self.ack_topic:
                self._on_ack(message.payload)
                return
            now = time.time_ns()
            sink = self._sink
            buf = self._buffer
            with self._lock:
                self._messages += 1
                if len(buf) >= self.queue_size and not self._make_room():
                    return
                if sink is None:
                    buf.append((topic, message.payload, now))
                else:
                    # Built-in decoders decode each message here, as it is read: rows are
                    # appended in message order, and read() only slices them off.
                    before = len(sink.tag)
                    self._stats.messages += 1
                    try:
                        self._decode_one(topic, message.payload, now, sink)
                    finally:
                        buf.append((topic, len(sink.tag) - before, now))
                if self._wake_pending:
                    return
                self._wake_pending = True
            self._ready.set()  # on the loop's own thread: no call_soon_threadsafe needed
        except Exception:  # noqa: BLE001 - never raise into paho's network thread
            self._handler_error("on_message")

    def _make_room(self) -> bool:
        """The buffer is full (lock held): apply the overflow policy; False drops the arrival."""
        buf = self._buffer
        if self.overflow == "drop_oldest":
            # A gap marker is never the one dropped: losing it would hide the outage.
            if buf[0][0] is None and len(buf) > 1:
                dropped = buf[1]
                del buf[1]
            else:
                dropped = buf.popleft()
            if self._sink is not None and dropped[0] is not None:
                self._sink.drop_first(dropped[1])  # its rows lead the sink (a gap has none)
            self._dropped += 1
            return True
        if self.overflow == "drop_newest":
            self._dropped += 1
            return False
        # block: keep this one, stop reading the socket until the consumer has taken some; the
        # broker queues meanwhile.
        if not self._running:
            self._dropped += 1
            return False
        self._pause_reading()
        return True

    def _on_ack(self, payload: bytes) -> None:
        import json

        try:
            ack = json.loads(payload)
            command_id = ack["id"]
            valid = isinstance(ack, dict) and isinstance(command_id, str) \
                and isinstance(ack.get("ok"), bool)
        except (ValueError, TypeError, KeyError):
            valid = False
        with self._cond:
            if not valid:
                self._acks_invalid += 1
                return
            self._acks += 1
            waiter = self._pending.get(command_id)
        if waiter is not None:  # acks for other twins' commands share the topic: ignored
            loop, fut = waiter
            loop.call_soon_threadsafe(lambda: fut.done() or fut.set_result(ack))

    def _wake(self) -> None:
        loop, ready = self._loop, self._ready
        if loop is not None and ready is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(ready.set)
            except RuntimeError:  # the loop closed between the check and the call
                pass

    def _handler_error(self, where: str) -> None:
        with self._cond:
            self._handler_errors += 1
        _logger.exception("mqtt %s: error in %s (counted, not raised)", self.url, where)

    def _queue_gap(self) -> None:
        # Called on reconnect, before any message of the new connection is read, so the
        # marker sits between the samples from before the outage and those after it. It bypasses
        # the overflow policy: an outage is never hidden.
        with self._cond:
            since, self._gap_since_ns = self._gap_since_ns, None
            if since is None:
                return
            self._reconnects += 1
            self._gaps += 1
            self._buffer.append((None, b"", since))
            wake = not self._wake_pending
            self._wake_pending = True
        if wake:
            self._wake()

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, reason: Any,
                       properties: Any = None) -> None:
        try:
            if self._connected:
                with self._cond:
                    self._disconnects += 1
                    if self._running and self._gap_since_ns is None:
                        self._gap_since_ns = time.time_ns()
            self._connected = False
            if self._running:
                _logger.warning("mqtt %s: disconnected (%s); reconnecting", self.url, reason)
                self._schedule_reconnect()
        except Exception:  # noqa: BLE001
            self._handler_error("on_disconnect")

    # -- paho's network I/O on the event loop ---------------------------------------------------

    def _in_loop(self, fn: Any, *args: Any) -> None:
        """Run ``fn(*args)`` on the source's loop (paho may call from a connect thread)."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            fn(*args)
        else:
            try:
                loop.call_soon_threadsafe(fn, *args)
            except RuntimeError:  # closed meanwhile
                pass

    def _on_socket_open(self, client: Any, userdata: Any, sock: Any) -> None:
        self._in_loop(self._add_reader, sock)

    def _add_reader(self, sock: Any) -> None:
        if self._client is not None and sock.fileno() >= 0:
            self._reader_sock = sock
            if not self._paused:
                self._loop.add_reader(sock, self._on_readable)

    def _on_socket_close(self, client: Any, userdata: Any, sock: Any) -> None:
        self._in_loop(self._forget_socket, sock)

    def _forget_socket(self, sock: Any) -> None:
        if self._reader_sock is sock:
            self._reader_sock = None
        for remove in (self._loop.remove_reader, self._loop.remove_writer):
            try:
                remove(sock)
            except (ValueError, OSError):  # already closed: nothing registered any more
                pass

    def _on_socket_register_write(self, client: Any, userdata: Any, sock: Any) -> None:
        self._in_loop(self._add_writer, sock)

    def _add_writer(self, sock: Any) -> None:
        client = self._client
        if client is not None and sock.fileno() >= 0:
            self._loop.add_writer(sock, self._on_writable)

    def _on_socket_unregister_write(self, client: Any, userdata: Any, sock: Any) -> None:
        self._in_loop(self._remove_writer, sock)

    def _remove_writer(self, sock: Any) -> None:
        try:
            self._loop.remove_writer(sock)
        except (ValueError, OSError):
            pass

    def _on_readable(self) -> None:
        client = self._client
        if client is None:
            return
        try:
            # One packet per loop_read: keep reading while messages come, then yield the loop.
            for _ in range(_READS_PER_WAKE):
                before = self._messages
                if client.loop_read() != 0 or self._messages == before or self._paused:
                    break
            sock = client.socket()
            # TLS: bytes already decrypted inside the SSL object do not wake the selector.
            pending = getattr(sock, "pending", None)
            if pending is not None and not self._paused and pending():
                self._loop.call_soon(self._on_readable)
        except Exception:  # noqa: BLE001 - never raise into the event loop
            self._handler_error("read")

    def _on_writable(self) -> None:
        client = self._client
        if client is None:
            return
        try:
            client.loop_write()
        except Exception:  # noqa: BLE001
            self._handler_error("write")

    def _pause_reading(self) -> None:
        """``overflow="block"``: stop reading the socket until the consumer catches up (the broker
        queues meanwhile)."""
        self._paused = True
        if self._reader_sock is not None:
            self._loop.remove_reader(self._reader_sock)

    def _resume_reading(self) -> None:
        self._paused = False
        if self._reader_sock is not None and self._client is not None:
            self._loop.add_reader(self._reader_sock, self._on_readable)

    async def _misc(self) -> None:
        """Keepalive pings and timeouts, once a second (what paho's own loop does)."""
        while self._running:
            await asyncio.sleep(1.0)
            client = self._client
            if client is None:
                return
            try:
                client.loop_misc()
            except Exception:  # noqa: BLE001
                self._handler_error("loop_misc")

    def _schedule_reconnect(self) -> None:
        if self._reconnect_task is None or self._reconnect_task.done():
            self._reconnect_task = self._loop.create_task(self._reconnect(),
                                                          name=f"mqtt-reconnect {self.url}")

    async def _reconnect(self) -> None:
        """Reconnect with backoff (1 s doubling to 120 s); on_connect resubscribes."""
        delay = 1.0
        while self._running and not self._connected:
            await asyncio.sleep(delay)
            client = self._client
            if client is None or not self._running:
                return
            try:
                await asyncio.wait_for(asyncio.to_thread(client.reconnect), self.connect_timeout)
                deadline = time.monotonic() + self.connect_timeout
                while self._running and not self._connected and time.monotonic() < deadline:
                    await asyncio.sleep(0.05)
            except Exception as exc:  # noqa: BLE001 - broker still away: try again later
                _logger.info("mqtt %s: reconnect failed (%s); next try in %g s", self.url,
                             type(exc).__name__, min(delay * 2, 120.0))
            delay = min(delay * 2, 120.0)

    # -- async API -----------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect and subscribe, each within ``connect_timeout``; idempotent.

        Raises ``ConnectionError`` naming the URL when the broker cannot be reached, refuses the
        connection or refuses a subscription.
        """
        if self._running:
            return
        from paho.mqtt.client import CallbackAPIVersion, Client, MQTTProtocolVersion

        loop = asyncio.get_running_loop()
        self._loop = loop
        self._gap_since_ns = None
        self._ready = asyncio.Event()
        connected: asyncio.Future[Any] = loop.create_future()
        subscribed: asyncio.Future[Any] = loop.create_future()

        def settle(fut: asyncio.Future[Any], value: Any) -> None:
            if not fut.done():
                fut.set_result(value)

        def on_connect(client: Any, userdata: Any, flags: Any, reason: Any,
                       properties: Any = None) -> None:
            try:
                if not reason.is_failure:
                    self._connected = True
                    if connected.done():  # a reconnect: subscriptions are gone with a clean session
                        self._queue_gap()
                        client.subscribe(self._subscriptions())
                loop.call_soon_threadsafe(settle, connected, reason)
            except Exception:  # noqa: BLE001
                self._handler_error("on_connect")

        def on_subscribe(client: Any, userdata: Any, mid: int, reasons: Any,
                         properties: Any = None) -> None:
            try:
                loop.call_soon_threadsafe(settle, subscribed, (mid, list(reasons)))
            except Exception:  # noqa: BLE001
                self._handler_error("on_subscribe")

        connect_args: dict[str, Any] = {}
        if self.protocol == "5":
            from paho.mqtt.packettypes import PacketTypes
            from paho.mqtt.properties import Properties

            client = Client(CallbackAPIVersion.VERSION2, client_id=self.client_id or "",
                            protocol=MQTTProtocolVersion.MQTTv5)
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = self.session_expiry if self.persistent else 0
            # paho reuses clean_start for its own reconnects: a persistent session is resumed.
            connect_args = {"clean_start": not self.persistent, "properties": props}
        else:
            client = Client(CallbackAPIVersion.VERSION2, client_id=self.client_id or "",
                            clean_session=not self.persistent,
                            protocol=MQTTProtocolVersion.MQTTv311)
        client.connect_timeout = self.connect_timeout
        if self.username is not None:
            client.username_pw_set(self.username, self.__password)
        if self._tls_options is not None:
            try:
                client.tls_set_context(_ssl_context(self._tls_options))
            except (OSError, ssl.SSLError) as exc:
                raise ValueError(f"MqttSource {self.url}: cannot load the TLS files "
                                 f"{ {k: v for k, v in self._tls_options.items() if v} }: "
                                 f"{exc}") from None
        client.on_connect = on_connect
        client.on_subscribe = on_subscribe
        client.on_message = self._on_message
        client.on_disconnect = self._on_disconnect
        # paho's network I/O runs on this event loop, not on a thread of its own: one thread
        # reads, decodes and hands out batches, so no GIL hand-offs between two busy threads.
        client.on_socket_open = self._on_socket_open
        client.on_socket_close = self._on_socket_close
        client.on_socket_register_write = self._on_socket_register_write
        client.on_socket_unregister_write = self._on_socket_unregister_write
        self._client = client
        self._running = True
        try:
            await asyncio.wait_for(
                asyncio.to_thread(client.connect, self.host, self.port, KEEPALIVE,
                                  **connect_args),
                self.connect_timeout)
            self._misc_task = loop.create_task(self._misc(), name=f"mqtt-misc {self.url}")
            reason = await asyncio.wait_for(connected, self.connect_timeout)
            if reason.is_failure:
                hint = " (check username/password)" if reason.value in (4, 5, 134, 135) else ""
                raise ConnectionError(f"MQTT broker at {self.url} refused the connection: "
                                      f"{reason}{hint}")
            result, mid = client.subscribe(self._subscriptions())
            if result != 0:
                raise ConnectionError(f"MQTT broker at {self.url}: subscribe failed (rc {result})")
            _, reasons = await asyncio.wait_for(subscribed, self.connect_timeout)
            refused = [t for (t, _), r in zip(self._subscriptions(), reasons, strict=False)
                       if r.is_failure]
            if refused:
                raise ConnectionError(f"MQTT broker at {self.url} refused subscriptions {refused}")
        except BaseException as exc:
            await self._shutdown()
            if isinstance(exc, ConnectionError) and self.url in str(exc):
                raise
            if isinstance(exc, ssl.SSLCertVerificationError):
                trust = (self._tls_options or {}).get("ca_file") or "the system trust store"
                raise ConnectionError(f"TLS certificate verification failed for MQTT broker at "
                                      f"{self.url}: {exc.verify_message} (trusted CAs: "
                                      f"{trust})") from exc
            if isinstance(exc, ssl.SSLError):
                raise ConnectionError(f"TLS handshake with MQTT broker at {self.url} failed: "
                                      f"{exc.reason or exc}") from exc
            if isinstance(exc, (asyncio.TimeoutError, OSError)):
                what = "timed out" if isinstance(exc, asyncio.TimeoutError) else str(exc)
                raise ConnectionError(f"cannot connect to MQTT broker at {self.url} within "
                                      f"{self.connect_timeout:g} s: {what}") from exc
            raise

    def _subscriptions(self) -> list[tuple[str, int]]:
        subs = [(t, self.qos) for t in (*self.topics, *self.patterns)]
        if self.ack_topic is not None:
            subs.append((self.ack_topic, 1))
        return subs

    async def write(self, tag_or_mapping: str | Mapping[str, Any], value: Any = None, *,
                    timeout: float | None = None) -> dict[str, str]:
        """Publish a command per tag to ``command_topic``; wait for the acknowledgements.

        Parameters
        ----------
        tag_or_mapping : str or mapping of str to value
            One tag name (with `value`) or ``{tag: value}`` for several; each becomes one JSON
            message ``{"tag": ..., "value": ..., "id": ...}`` published with QoS 1.
        value : bool, int, float or str
            The value for a single tag (finite numbers only: JSON has no NaN).
        timeout : float, optional
            Seconds to wait in all; default ``write_timeout``. With an ``ack_topic`` the wait is
            for every acknowledgement, otherwise for the broker's PUBACKs.

        Returns
        -------
        dict of str to str
            Tag name to the command id sent.

        Raises
        ------
        WriteRejected
            An acknowledgement said ``ok: false`` (names each rejected tag and its error).
        TimeoutError
            No acknowledgement (or PUBACK) within `timeout`; names the topic waited on.
        RuntimeError
            The source has no ``command_topic`` or is not started.
        """
        if self.command_topic is None:
            raise RuntimeError(f"MqttSource {self.url}: writing needs the command_topic option "
                               f"of mqtt_source()")
        commands = write_items(tag_or_mapping, value)
        timeout = self.write_timeout if timeout is None else check_timeout(timeout, "timeout")
        client = self._client
        if client is None or not self._running:
            raise RuntimeError(f"MqttSource {self.url}: call start() before writing")
        return await self._write(client, commands, timeout)

    async def _write(self, client: Any, commands: list[tuple[str, Any]],
                     timeout: float) -> dict[str, str]:
        import json
        import uuid

        loop = asyncio.get_running_loop()
        ids = {tag: uuid.uuid4().hex for tag, _ in commands}
        waits: dict[str, asyncio.Future[Any]] = {}
        infos = []
        try:
            for tag, val in commands:
                if self.ack_topic is not None:  # registered first: the ack may beat publish()
                    waits[tag] = fut = loop.create_future()
                    with self._cond:
                        self._pending[ids[tag]] = (loop, fut)
                payload = json.dumps({"tag": tag, "value": val, "id": ids[tag]})
                infos.append(client.publish(self.command_topic, payload, qos=1))
                with self._cond:
                    self._commands += 1
            if self.ack_topic is None:
                deadline = time.monotonic() + timeout
                for info in infos:
                    left = max(deadline - time.monotonic(), 0.0)
                    try:
                        await asyncio.to_thread(info.wait_for_publish, left)
                    except (RuntimeError, ValueError):  # paho: not connected / queue full
                        pass
                    if not info.is_published():
                        raise TimeoutError(f"MqttSource {self.url}: the broker did not accept "
                                           f"the command on {self.command_topic!r} within "
                                           f"{timeout:g} s")
                return ids
            done, _ = await asyncio.wait(waits.values(), timeout=timeout)
            missing = [tag for tag, fut in waits.items() if fut not in done]
            if missing:
                raise TimeoutError(f"MqttSource {self.url}: no acknowledgement on "
                                   f"{self.ack_topic!r} within {timeout:g} s for {missing}")
            rejected = {tag: str(fut.result().get("error") or "rejected")
                        for tag, fut in waits.items() if not fut.result()["ok"]}
            if rejected:
                raise WriteRejected(rejected)
            return ids
        finally:
            with self._cond:
                for command_id in ids.values():
                    self._pending.pop(command_id, None)

    async def browse(self) -> BrowseNode:
        """The topics messages arrived on so far, as a tree of topic levels.

        A node that received messages has ``kind == "topic"``, its topic as ``address`` and
        ``info["messages"]``; ``tree.variables()`` maps the last level of each topic to it.
        """
        return topic_tree(dict(self._seen), self.url)

    async def _shutdown(self) -> None:
        self._running = False
        for task in (self._misc_task, self._reconnect_task):
            if task is not None and not task.done():
                task.cancel()
        self._misc_task = self._reconnect_task = None
        client = self._client
        if client is not None:
            sock = client.socket()
            try:
                client.disconnect()
                client.loop_write()  # send DISCONNECT now: paho closes the socket after it
            except Exception:  # noqa: BLE001 - already gone
                pass
            self._client = None
            sock = client.socket() or sock
            if sock is not None:
                self._forget_socket(sock)
                try:
                    sock.close()
                except OSError:
                    pass
        self._reader_sock = None
        self._paused = False
        self._connected = False
        if self._ready is not None:
            self._ready.set()

    def _take(self) -> tuple[str, Any]:
        """The next piece of the buffer: ``("gap", since_ns)``, ``("columns", Columns)`` of
        decoded messages, ``("raw", [(topic, payload, receive_ns), ...])``, or ``("none", None)``.
        """
        with self._cond:
            buf = self._buffer
            if not buf:
                taken: tuple[str, Any] = ("none", None)
            elif buf[0][0] is None:  # a gap marker is a batch of its own
                taken = ("gap", buf.popleft()[2])
            else:
                if self._sink is None:
                    chunk = []
                    while buf and len(chunk) < self.max_batch and buf[0][0] is not None:
                        chunk.append(buf.popleft())
                    taken = ("raw", chunk)
                else:
                    rows = 0
                    for _ in range(min(len(buf), self.max_batch)):
                        if buf[0][0] is None:
                            break
                        rows += buf.popleft()[1]
                    taken = ("columns", self._sink.take(rows))
            if not buf:
                self._wake_pending = False
                if self._ready is not None:
                    self._ready.clear()
        if self._paused and len(self._buffer) < self.queue_size:
            self._resume_reading()
        return taken

    def _decode(self, taken: tuple[str, Any]) -> Batch:
        kind, item = taken
        if kind == "gap":
            batch = Batch.gap(self.tags.names, np.datetime64(item, "ns"))
        elif kind == "none":
            batch = Batch.empty(self.tags.names)
        else:
            cols = item if kind == "columns" else self.decoder.decode_many(item)
            if self._trusted_decoder:  # built-in decoders' columns are valid by construction
                batch = Batch._trusted(cols.tag, cols.time.view("datetime64[ns]"), cols.value,
                                       cols.quality, self.tags.names)
            else:
                batch = cols.to_batch(self.tags.names)
        self._latest.update(batch)
        self._batches += 1
        return batch

    async def read(self, timeout: float | None = None) -> Batch | None:
        """The next batch of buffered messages, waiting up to `timeout` s for one to arrive.

        Returns an empty batch on timeout (also when every waiting message was rejected by the
        decoder) and None once the source is stopped and its buffer drained.
        """
        if self._ready is None:
            raise RuntimeError(f"MqttSource {self.url}: call start() before reading")
        if not self._buffer:
            if not self._running:
                return None
            try:
                async with asyncio.timeout(timeout):
                    await self._ready.wait()
            except TimeoutError:
                pass
        await self._coalesce()
        taken = self._take()
        if taken[0] == "none" and not self._running:
            return None
        return self._decode(taken)

    async def _coalesce(self) -> None:
        """Let a burst gather: wait until the oldest buffered message is ``min_batch_interval``
        old (or ``max_batch`` are waiting), so that a fast stream is decoded in a few large
        batches rather than thousands of small ones, whose fixed costs would dominate."""
        wait = self.min_batch_interval
        buf = self._buffer
        if wait <= 0 or not buf or len(buf) >= self.max_batch or buf[0][0] is None:
            return
        left = wait - (time.time_ns() - buf[0][2]) / 1e9
        if left > 0 and self._running:
            await asyncio.sleep(left)

    # -- sync facade ---------------------------------------------------------------------------

    def write_sync(self, tag_or_mapping: str | Mapping[str, Any], value: Any = None, *,
                   timeout: float | None = None) -> dict[str, str]:
        """:meth:`write` from synchronous code (after :meth:`start_sync`)."""
        wait = self.write_timeout if timeout is None else check_timeout(timeout, "timeout")
        return self._sync.run(self.write(tag_or_mapping, value, timeout=timeout),
                              wait + self.connect_timeout)

    def browse_sync(self) -> BrowseNode:
        """:meth:`browse` from synchronous code."""
        return topic_tree(dict(self._seen), self.url)


def topic_tree(counts: Mapping[str, int], root: str = "") -> BrowseNode:
    """MQTT topics (with their message counts) as a tree of topic levels.

    Examples
    --------
    >>> tree = topic_tree({"plant/pump1/telemetry": 12, "plant/pump1/ack": 1}, "mqtt://h:1883")
    >>> print(tree)
    mqtt://h:1883
    └── plant
        └── pump1
            ├── ack  = plant/pump1/ack
            └── telemetry  = plant/pump1/telemetry
    >>> tree.find("telemetry").info
    {'messages': 12}
    """
    top = BrowseNode(root, None, "level")
    for topic in sorted(counts):
        node = top
        levels = topic.split("/")
        for depth, level in enumerate(levels):
            child = next((c for c in node.children if c.name == level), None)
            if child is None:
                child = BrowseNode(level, None, "level")
                node.children.append(child)
            node = child
            if depth == len(levels) - 1:
                node.kind, node.address = "topic", topic
                node.info["messages"] = counts[topic]
    return top
