"""Payload decoding for message sources (MQTT): bytes in, numpy columns out, bad input counted.

A decoder turns a list of ``(topic, payload, receive_time_ns)`` messages into four columns — tag
index (int32), time (int64 ns since the Unix epoch, UTC), value (float64) and quality (uint8) —
without building a Python object per sample in the output. Malformed input never raises: each
problem is counted by :class:`Reject` reason in the decoder's :class:`DecodeStats`, logged at a
rate-limited WARNING level, and either marked in the data or counted as a dropped message.

Policy ("bad input is data, not a crash")
-----------------------------------------
Every message ends in exactly one of two places: *accepted* (it produced at least one sample) or
*rejected* under exactly one reason, so ``stats.messages == stats.accepted + sum(stats.rejects)``.
Problems that do not stop a message are counted under ``stats.flags`` by reason.

=========================  ======================================================================
Reason                     What happens
=========================  ======================================================================
OVERSIZED                  message rejected; checked on ``len(payload)`` before any parsing
UNKNOWN_TOPIC              message rejected (no tag is mapped to its topic)
NOT_JSON / TRUNCATED       message rejected
NOT_NUMBER                 message rejected (:class:`NumericDecoder`: payload is not a number)
MISSING_FIELD              that tag yields no sample (flag); a message with no sample left is
                           rejected with this reason. A missing time field: receive time is used
                           and the samples are marked UNCERTAIN (flag).
NUMBER_AS_STRING           ``strings_as_numbers="accept"``: the parsed number is kept, marked
                           UNCERTAIN (flag). ``"reject"``: a NaN sample marked BAD (flag).
NON_FINITE                 NaN / Infinity tokens or values: a NaN sample marked BAD (flag)
WRONG_TYPE                 bool, null, list, object or a non-numeric string where a number is
                           expected: a NaN sample marked BAD (flag)
BAD_TIMESTAMP              unparseable or out of range: receive time used, samples UNCERTAIN (flag)
FUTURE_TIMESTAMP           more than ``max_clock_skew`` ahead of receive time: receive time used,
                           samples UNCERTAIN (flag)
DUPLICATE_SEQUENCE         message rejected (a redelivery: its samples are already in the data)
OUT_OF_ORDER_SEQUENCE      message kept with its own timestamps and qualities (flag): the values
                           are genuine, only late
=========================  ======================================================================

Here UNCERTAIN is ``Quality.UNCERTAIN`` and BAD is ``Quality.BAD_DECODE`` (see
:class:`twinbench.io.batch.Quality`). In short: a field that is *present but unusable* becomes a NaN
sample with BAD quality, so the gap is visible in the data; a field that is *absent* yields no
sample; a timestamp that cannot be trusted is replaced by receive time and the samples are marked
UNCERTAIN.

TRUNCATED versus NOT_JSON is a heuristic: a payload is TRUNCATED when the parser ran out of input
while still expecting more (the error sits at the end of the text, a string is unterminated, or the
last UTF-8 sequence is cut short) — ``{"t": 61.5`` — and NOT_JSON otherwise — ``hello``,
``{"t": 1}}``, an empty payload.

Decoders are pluggable: :func:`register_decoder` registers a class under a name and
:func:`get_decoder` looks it up (``"json"`` and ``"numeric"`` are built in). Discovery through
entry points (a ``twinbench.decoders`` group, in the style of xarray's backends) may follow; until
then another package registers its decoder by importing this module and using the decorator.
"""

from __future__ import annotations

import enum
import logging
import math
import re
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple, Protocol, runtime_checkable

import numpy as np

from twinbench.io.batch import Batch, Quality

try:  # orjson is a declared dependency; the fallback keeps a broken install decoding, only slower
    from orjson import loads as _fast_loads
except ImportError:  # pragma: no cover - exercised only without orjson
    import json as _json_fallback

    _fast_loads = _json_fallback.loads

__all__ = [
    "Columns",
    "DecodeStats",
    "Decoder",
    "JsonDecoder",
    "NumericDecoder",
    "RateLimitedLog",
    "Reject",
    "get_decoder",
    "register_decoder",
]

# Quality codes as plain ints: appending an int to the typed buffers is the cheap path. A present
# but unusable value is Quality.BAD_DECODE ("the payload could not be turned into a number").
_GOOD = int(Quality.GOOD)
_UNCERTAIN = int(Quality.UNCERTAIN)
_BAD = int(Quality.BAD_DECODE)

_logger = logging.getLogger("twinbench.io.decode")

_NAN = float("nan")
_INT64_MAX = 2**63 - 1
_INT64_MIN = -(2**63)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class Reject(enum.Enum):
    """Why a message or a value in it was not taken as it came.

    See the module docstring for what happens to the data in each case.

    Examples
    --------
    >>> Reject.NOT_JSON.value
    'not_json'
    """

    OVERSIZED = "oversized"
    UNKNOWN_TOPIC = "unknown_topic"
    NOT_JSON = "not_json"
    TRUNCATED = "truncated"
    NOT_NUMBER = "not_number"
    MISSING_FIELD = "missing_field"
    NUMBER_AS_STRING = "number_as_string"
    NON_FINITE = "non_finite"
    WRONG_TYPE = "wrong_type"
    BAD_TIMESTAMP = "bad_timestamp"
    FUTURE_TIMESTAMP = "future_timestamp"
    DUPLICATE_SEQUENCE = "duplicate_sequence"
    OUT_OF_ORDER_SEQUENCE = "out_of_order_sequence"


class DecodeStats:
    """Counters of one decoder: messages, accepted messages, values, and problems by reason.

    Attributes
    ----------
    messages : int
        Messages handed to the decoder.
    accepted : int
        Messages that produced at least one sample.
    values : int
        Samples produced (any quality).
    rejects : dict of Reject to int
        Messages dropped, each under exactly one reason.
    flags : dict of Reject to int
        Problems that did not drop their message (value marked, field skipped, time replaced).

    Examples
    --------
    >>> stats = DecodeStats()
    >>> stats.messages, stats.accepted, stats.rejected
    (0, 0, 0)
    >>> stats.as_dict()["rejects"]["not_json"]
    0
    """

    __slots__ = ("accepted", "flags", "messages", "rejects", "values")

    def __init__(self) -> None:
        self.messages = 0
        self.accepted = 0
        self.values = 0
        self.rejects: dict[Reject, int] = dict.fromkeys(Reject, 0)
        self.flags: dict[Reject, int] = dict.fromkeys(Reject, 0)

    @property
    def rejected(self) -> int:
        """Messages dropped, all reasons together."""
        return sum(self.rejects.values())

    def count(self, reason: Reject) -> int:
        """All occurrences of `reason`: dropped messages plus flagged problems."""
        return self.rejects[reason] + self.flags[reason]

    def reset(self) -> None:
        """Set every counter back to zero."""
        self.__init__()

    def as_dict(self) -> dict[str, Any]:
        """Plain, JSON-serialisable counters for status display (every reason listed)."""
        return {
            "messages": self.messages,
            "accepted": self.accepted,
            "rejected": self.rejected,
            "values": self.values,
            "rejects": {reason.value: n for reason, n in self.rejects.items()},
            "flags": {reason.value: n for reason, n in self.flags.items()},
        }

    def __repr__(self) -> str:
        problems = {r.value: self.count(r) for r in Reject if self.count(r)}
        return (f"DecodeStats(messages={self.messages}, accepted={self.accepted}, "
                f"values={self.values}, problems={problems})")


class RateLimitedLog:
    """At most one WARNING per key per `interval_s`, then a count of what was held back.

    Parameters
    ----------
    logger : logging.Logger, optional
        Where to log; default the ``"twinbench.io.decode"`` logger.
    interval_s : float, default 10.0
        Minimum time between two records with the same key.
    clock : callable, default time.monotonic
        Returns the current time in seconds; injectable so tests need no sleeps.

    Examples
    --------
    >>> now = [0.0]
    >>> log = RateLimitedLog(interval_s=10.0, clock=lambda: now[0])
    >>> log.warning("not_json", "bad payload on %s", "a/b")
    True
    >>> log.warning("not_json", "bad payload on %s", "a/b")
    False
    >>> log.suppressed("not_json")
    1
    """

    def __init__(self, logger: logging.Logger | None = None, interval_s: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if not (isinstance(interval_s, (int, float)) and interval_s >= 0):
            raise ValueError(f"interval_s must be a number >= 0, got {interval_s!r}")
        if not callable(clock):
            raise TypeError(f"clock must be a callable returning seconds, got {clock!r}")
        self.logger = logger if logger is not None else _logger
        self.interval_s = float(interval_s)
        self.clock = clock
        self._last: dict[Any, float] = {}
        self._held: dict[Any, int] = {}

    def suppressed(self, key: Any) -> int:
        """Records held back for `key` since its last emitted one."""
        return self._held.get(key, 0)

    def warning(self, key: Any, msg: str, *args: Any) -> bool:
        """Log `msg % args` unless `key` was logged less than `interval_s` ago; True if logged."""
        now = self.clock()
        last = self._last.get(key)
        if last is not None and now - last < self.interval_s:
            self._held[key] = self._held.get(key, 0) + 1
            return False
        held = self._held.pop(key, 0)
        self._last[key] = now
        if held:
            self.logger.warning(msg + " (and %d more in the last %gs)", *args, held,
                                now - last if last is not None else 0.0)
        else:
            self.logger.warning(msg, *args)
        return True


class Columns(NamedTuple):
    """Decoded samples as four equal-length numpy columns.

    ``time`` is int64 nanoseconds since the Unix epoch, UTC (``time.view("datetime64[ns]")``
    gives datetimes without a copy).
    """

    tag: np.ndarray
    time: np.ndarray
    value: np.ndarray
    quality: np.ndarray

    def __len__(self) -> int:  # type: ignore[override]
        return len(self.tag)

    def to_batch(self, tags: tuple[str, ...] | list[str]) -> Batch:
        """These samples as a :class:`~twinbench.io.batch.Batch` whose tag indices name `tags`.

        Examples
        --------
        >>> cols = NumericDecoder({1: "a/temp"}).decode("a/temp", b"21.5", 0)
        >>> cols.to_batch(["speed", "temp"]).select("temp").value.tolist()
        [21.5]
        """
        return Batch(self.tag, self.time.view("datetime64[ns]"), self.value, self.quality,
                     tags=tuple(tags))


@runtime_checkable
class Decoder(Protocol):
    """What a message source needs from a decoder.

    ``decode_many`` must never raise on bad payloads: problems go into ``stats``.
    """

    stats: DecodeStats

    def decode_many(self, messages: Iterable[tuple[str, bytes, int]]) -> Columns:
        """Decode ``(topic, payload, receive_time_ns)`` messages into columns."""
        ...


class _Sink:
    """Growable buffers of one decode call, turned into numpy columns at its end.

    Plain lists: ``list.append`` is the cheapest append Python has (about half the cost of a
    typed ``array.append``, which converts on every call), and one conversion per column at the
    end costs less than those conversions did.
    """

    __slots__ = ("quality", "tag", "time", "value")

    def __init__(self) -> None:
        self.tag: list[int] = []
        self.time: list[int] = []
        self.value: list[float] = []
        self.quality: list[int] = []

    def columns(self) -> Columns:
        return Columns(np.array(self.tag, dtype=np.int32), np.array(self.time, dtype=np.int64),
                       np.array(self.value, dtype=np.float64),
                       np.array(self.quality, dtype=np.uint8))

    def take(self, rows: int) -> Columns:
        """The first `rows` samples as columns, removed from the sink."""
        if rows == len(self.tag):
            cols = self.columns()
            self.tag, self.time, self.value, self.quality = [], [], [], []
            return cols
        cols = Columns(np.array(self.tag[:rows], dtype=np.int32),
                       np.array(self.time[:rows], dtype=np.int64),
                       np.array(self.value[:rows], dtype=np.float64),
                       np.array(self.quality[:rows], dtype=np.uint8))
        self.drop_first(rows)
        return cols

    def move_from(self, other: _Sink) -> int:
        """Append `other`'s samples and empty it; returns how many were moved."""
        n = len(other.tag)
        if n:
            self.tag += other.tag
            self.time += other.time
            self.value += other.value
            self.quality += other.quality
            other.tag.clear()
            other.time.clear()
            other.value.clear()
            other.quality.clear()
        return n

    def drop_first(self, rows: int) -> None:
        """Forget the first `rows` samples."""
        if rows:
            del self.tag[:rows], self.time[:rows], self.value[:rows], self.quality[:rows]


#: Public name for sources that decode message by message into one sink.
Sink = _Sink


class _BaseDecoder:
    """Shared machinery: stats, logging, the message loop. Subclasses define ``_decode_one``."""

    def __init__(self, max_payload_bytes: int, log: RateLimitedLog | None) -> None:
        if isinstance(max_payload_bytes, bool) or not isinstance(max_payload_bytes, int) \
                or max_payload_bytes <= 0:
            raise ValueError(f"max_payload_bytes must be a positive int, got {max_payload_bytes!r}")
        if log is not None and not isinstance(log, RateLimitedLog):
            raise TypeError(f"log must be a RateLimitedLog or None, got {type(log).__name__}")
        self.max_payload_bytes = max_payload_bytes
        self.stats = DecodeStats()
        self.log = log if log is not None else RateLimitedLog()

    def decode_many(self, messages: Iterable[tuple[str, bytes, int]]) -> Columns:
        """Decode ``(topic, payload, receive_time_ns)`` messages into one set of columns.

        Never raises on bad payloads; see the module docstring for what happens to each kind.
        """
        sink = _Sink()
        one = self._decode_one
        n = 0
        for topic, payload, receive_ns in messages:
            n += 1
            one(topic, payload, receive_ns, sink)
        self.stats.messages += n
        return sink.columns()

    def decode(self, topic: str, payload: bytes, receive_time_ns: int) -> Columns:
        """Decode one message (convenience; sources should batch with :meth:`decode_many`)."""
        return self.decode_many(((topic, payload, receive_time_ns),))

    def _decode_one(self, topic: str, payload: bytes, receive_ns: int, sink: _Sink) -> None:
        raise NotImplementedError

    # The bad path: never in the loop for a good message.
    def _reject(self, reason: Reject, topic: str, detail: str = "") -> None:
        self.stats.rejects[reason] += 1
        self.log.warning(reason, "decode: message on %r dropped: %s%s", topic, reason.value,
                         detail)

    def _flag(self, reason: Reject, topic: str, n: int = 1) -> None:
        self.stats.flags[reason] += n
        self.log.warning(reason, "decode: message on %r: %s", topic, reason.value)


_DECODERS: dict[str, Callable[..., Any]] = {}


def register_decoder(name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register a decoder class (or factory) under `name`; use as a class decorator.

    Parameters
    ----------
    name : str
        The name sources accept, e.g. ``decoder="json"``.

    Examples
    --------
    >>> @register_decoder("doc-example-csv")
    ... class CsvDecoder:
    ...     pass
    >>> get_decoder("doc-example-csv") is CsvDecoder
    True
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"name must be a non-empty str, got {name!r}")

    def add(factory: Callable[..., Any]) -> Callable[..., Any]:
        if not callable(factory):
            raise TypeError(f"decoder {name!r} must be a class or callable, got {factory!r}")
        known = _DECODERS.get(name)
        if known is not None and known is not factory:
            raise ValueError(f"a decoder named {name!r} is already registered: {known!r}")
        _DECODERS[name] = factory
        return factory

    return add


def get_decoder(name: str) -> Callable[..., Any]:
    """The decoder class (or factory) registered under `name`.

    Examples
    --------
    >>> get_decoder("numeric") is NumericDecoder
    True
    """
    try:
        return _DECODERS[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"name must be a registered decoder ({', '.join(sorted(_DECODERS))}), got {name!r}"
        ) from None


@register_decoder("numeric")
class NumericDecoder(_BaseDecoder):
    """Plain numeric payloads (``b"12.5"``), one tag per topic, stamped with receive time.

    Parameters
    ----------
    topics : mapping of int to str
        Tag index -> topic. A topic may feed only one tag.
    max_payload_bytes : int, default 65536
        Longer payloads are rejected (OVERSIZED) without being parsed.
    log : RateLimitedLog, optional
        Where problems are logged.

    Examples
    --------
    >>> dec = NumericDecoder({0: "plant/pump1/speed"})
    >>> cols = dec.decode_many([("plant/pump1/speed", b"1450.5", 1_000),
    ...                         ("plant/pump1/speed", b"x", 2_000)])
    >>> cols.value.tolist(), cols.time.tolist(), dec.stats.rejects[Reject.NOT_NUMBER]
    ([1450.5], [1000], 1)
    """

    def __init__(self, topics: Mapping[int, str], *, max_payload_bytes: int = 65536,
                 log: RateLimitedLog | None = None) -> None:
        super().__init__(max_payload_bytes, log)
        if not isinstance(topics, Mapping) or not topics:
            raise ValueError(f"topics must be a non-empty mapping of tag index -> topic, "
                             f"got {topics!r}")
        self._tag_of: dict[str, int] = {}
        for tag, topic in topics.items():
            _check_tag(tag, "topics")
            if not isinstance(topic, str) or not topic:
                raise ValueError(f"topics[{tag}] must be a non-empty topic str, got {topic!r}")
            if topic in self._tag_of:
                raise ValueError(f"topics: topic {topic!r} is mapped to tags "
                                 f"{self._tag_of[topic]} and {tag}; one topic feeds one tag")
            self._tag_of[topic] = tag

    def _decode_one(self, topic: str, payload: bytes, receive_ns: int, sink: _Sink) -> None:
        if len(payload) > self.max_payload_bytes:
            self._reject(Reject.OVERSIZED, topic, f" ({len(payload)} bytes)")
            return
        tag = self._tag_of.get(topic)
        if tag is None:
            self._reject(Reject.UNKNOWN_TOPIC, topic)
            return
        try:
            value = float(payload)
        except Exception:  # noqa: BLE001 - ValueError, TypeError...: all "not a number"
            self._reject(Reject.NOT_NUMBER, topic)
            return
        quality = _GOOD
        if value - value != 0.0:  # NaN or +-inf, without a function call
            self._flag(Reject.NON_FINITE, topic)
            value = _NAN
            quality = _BAD
        sink.tag.append(tag)
        sink.time.append(receive_ns)
        sink.value.append(value)
        sink.quality.append(quality)
        self.stats.accepted += 1
        self.stats.values += 1


_PATH_TOKEN = re.compile(r"\[(-?\d+)\]|\.?([^.\[\]]+)")


def _compile_path(path: str, name: str) -> tuple[str | int, ...]:
    """``"a.b[0].c"`` -> ``("a", "b", 0, "c")``; raises naming `name` on a malformed path."""
    if not isinstance(path, str) or not path:
        raise ValueError(f"{name} must be a non-empty field path like 'a.b[0]', got {path!r}")
    steps: list[str | int] = []
    pos = 0
    while pos < len(path):
        m = _PATH_TOKEN.match(path, pos)
        if m is None or (m.group(2) is not None and path[pos] == "." and pos == 0):
            raise ValueError(f"{name} must be a field path like 'a.b[0]', got {path!r}")
        steps.append(int(m.group(1)) if m.group(1) is not None else m.group(2))
        pos = m.end()
    return tuple(steps)


_MISSING = object()


def _walk(doc: Any, steps: tuple[str | int, ...]) -> Any:
    for step in steps:
        if type(step) is int:
            if type(doc) is not list or not -len(doc) <= step < len(doc):
                return _MISSING
        elif type(doc) is not dict or step not in doc:
            return _MISSING
        doc = doc[step]
    return doc


def _check_tag(tag: Any, name: str) -> None:
    if isinstance(tag, bool) or not isinstance(tag, (int, np.integer)) or not 0 <= tag < 2**31:
        raise ValueError(f"{name}: tag index must be an int in [0, 2**31), got {tag!r}")


_TIME_SCALE = {"epoch_s": 10**9, "epoch_ms": 10**6, "epoch_us": 10**3, "epoch_ns": 1}


@register_decoder("json")
class JsonDecoder(_BaseDecoder):
    """JSON payloads: numbers picked out of each message by field path, one tag per field.

    Parameters
    ----------
    fields : mapping of int to (str, str) or str
        Tag index -> ``(topic, field path)`` or ``"topic#field.path"``. Paths use dots for object
        keys and ``[i]`` for list items (``"motor.temps[0]"``; negative indices count from the
        end). Topics are exact; MQTT wildcards belong in the subscription, not here.
    time_field : str, optional
        Field path of the equipment timestamp. Without it, samples get the receive time.
    time_format : {"iso8601", "epoch_s", "epoch_ms", "epoch_us", "epoch_ns"}
        How `time_field` is written. ISO strings without an offset are taken as UTC.
    sequence_field : str, optional
        Field path of an integer sequence number, checked per topic for duplicates (message
        dropped) and out-of-order arrival (message kept, counted).
    strings_as_numbers : {"accept", "reject"}
        What to do with ``"12.5"`` where a number is expected (counted either way).
    max_payload_bytes : int, default 65536
        Longer payloads are rejected (OVERSIZED) before parsing.
    max_clock_skew : float seconds or timedelta, default 300 s
        Equipment timestamps further ahead of receive time are not trusted.
    sequence_window : int, default 1024
        How many recent sequence numbers per topic are remembered to tell a duplicate from a
        late message. A number more than this far behind the newest is taken as an equipment
        restart: counted as out of order, and tracking starts again from it.
    log : RateLimitedLog, optional
        Where problems are logged.

    Examples
    --------
    >>> topic = "plant/pump1/telemetry"
    >>> dec = JsonDecoder({0: topic + "#temperature", 1: (topic, "motor.i[1]")},
    ...                   time_field="ts", time_format="epoch_ms")
    >>> received_ns = 1_700_000_000_002_000_000
    >>> cols = dec.decode(topic, b'{"ts": 1700000000000, "temperature": 61.5, '
    ...                   b'"motor": {"i": [3.1, 3.3]}}', received_ns)
    >>> cols.tag.tolist(), cols.value.tolist(), cols.time.tolist()
    ([0, 1], [61.5, 3.3], [1700000000000000000, 1700000000000000000])
    >>> dec.decode(topic, b'{"temperature": "61.5"', received_ns).tag.tolist()
    []
    >>> dec.stats.rejects[Reject.TRUNCATED]
    1
    """

    def __init__(self, fields: Mapping[int, tuple[str, str] | str], *,
                 time_field: str | None = None, time_format: str = "iso8601",
                 sequence_field: str | None = None, strings_as_numbers: str = "accept",
                 max_payload_bytes: int = 65536, max_clock_skew: float | timedelta = 300.0,
                 sequence_window: int = 1024, log: RateLimitedLog | None = None) -> None:
        super().__init__(max_payload_bytes, log)
        if not isinstance(fields, Mapping) or not fields:
            raise ValueError(f"fields must be a non-empty mapping of tag index -> "
                             f"(topic, field path), got {fields!r}")
        routes: dict[str, list[tuple[int, tuple[str | int, ...]]]] = {}
        for tag, address in fields.items():
            _check_tag(tag, "fields")
            if isinstance(address, str):
                topic, sep, path = address.partition("#")
                if not sep:
                    raise ValueError(f"fields[{tag}] must be 'topic#field.path' or "
                                     f"(topic, path), got {address!r}")
            elif isinstance(address, tuple) and len(address) == 2:
                topic, path = address
            else:
                raise ValueError(f"fields[{tag}] must be 'topic#field.path' or (topic, path), "
                                 f"got {address!r}")
            if not isinstance(topic, str) or not topic:
                raise ValueError(f"fields[{tag}] needs a non-empty topic, got {topic!r}")
            routes.setdefault(topic, []).append((int(tag), _compile_path(path, f"fields[{tag}]")))
        self._routes = {topic: tuple(r) for topic, r in routes.items()}

        self._time_path = None if time_field is None else _compile_path(time_field, "time_field")
        if time_format != "iso8601" and time_format not in _TIME_SCALE:
            raise ValueError(f"time_format must be one of 'iso8601', "
                             f"{', '.join(map(repr, _TIME_SCALE))}, got {time_format!r}")
        self.time_format = time_format
        self._time_scale = _TIME_SCALE.get(time_format, 0)

        self._seq_path = (None if sequence_field is None
                          else _compile_path(sequence_field, "sequence_field"))
        if isinstance(sequence_window, bool) or not isinstance(sequence_window, int) \
                or sequence_window < 1:
            raise ValueError(f"sequence_window must be an int >= 1, got {sequence_window!r}")
        self.sequence_window = sequence_window
        # topic -> (newest sequence number, recent numbers in arrival order, same as a set)
        self._seq_state: dict[str, tuple[list[int], deque[int], set[int]]] = {}

        if strings_as_numbers not in ("accept", "reject"):
            raise ValueError(f"strings_as_numbers must be 'accept' or 'reject', "
                             f"got {strings_as_numbers!r}")
        self.strings_as_numbers = strings_as_numbers
        self._accept_strings = strings_as_numbers == "accept"

        if isinstance(max_clock_skew, timedelta):
            max_clock_skew = max_clock_skew.total_seconds()
        if isinstance(max_clock_skew, bool) or not isinstance(max_clock_skew, (int, float)) \
                or not max_clock_skew >= 0 or math.isinf(max_clock_skew):
            raise ValueError(f"max_clock_skew must be finite seconds >= 0 or a timedelta, "
                             f"got {max_clock_skew!r}")
        self._max_skew_ns = int(max_clock_skew * 1e9)

    # -- the per-message path ------------------------------------------------------------------

    def _decode_one(self, topic: str, payload: bytes, receive_ns: int, sink: _Sink) -> None:
        if len(payload) > self.max_payload_bytes:
            self._reject(Reject.OVERSIZED, topic, f" ({len(payload)} bytes)")
            return
        routes = self._routes.get(topic)
        if routes is None:
            self._reject(Reject.UNKNOWN_TOPIC, topic)
            return
        try:
            doc = _fast_loads(payload)
        except Exception:  # noqa: BLE001 - whatever the parser raises, the slow path classifies
            doc = self._parse_slow(topic, payload)
            if doc is _MISSING:
                return

        # Duplicates first: a redelivered message is dropped whole, its faults counted once before.
        if self._seq_path is not None and self._sequence_is_duplicate(topic, doc):
            self._reject(Reject.DUPLICATE_SEQUENCE, topic)
            return
        stamp = receive_ns
        floor = _GOOD  # the least-bad quality any sample of this message may have
        if self._time_path is not None:
            stamp = self._timestamp(topic, doc, receive_ns)
            if stamp is None:
                stamp = receive_ns
                floor = _UNCERTAIN

        produced = 0
        missing = 0
        accept_strings = self._accept_strings
        for tag, steps in routes:
            value = doc
            for step in steps:  # _walk inlined: this is the per-value loop
                if type(step) is int:
                    if type(value) is not list or not -len(value) <= step < len(value):
                        value = _MISSING
                        break
                elif type(value) is not dict or step not in value:
                    value = _MISSING
                    break
                value = value[step]
            kind = type(value)
            quality = floor
            if kind is float:
                if value - value != 0.0:
                    self._flag(Reject.NON_FINITE, topic)
                    value = _NAN
                    quality = _BAD
            elif kind is int:
                try:
                    value = float(value)
                except OverflowError:  # an integer beyond float range (stdlib-parsed)
                    self._flag(Reject.NON_FINITE, topic)
                    value = _NAN
                    quality = _BAD
            elif value is _MISSING:
                missing += 1
                continue
            elif kind is str:
                value, quality = self._from_string(topic, value, quality, accept_strings)
            else:  # bool, None, list, dict
                self._flag(Reject.WRONG_TYPE, topic)
                value = _NAN
                quality = _BAD
            sink.tag.append(tag)
            sink.time.append(stamp)
            sink.value.append(value)
            sink.quality.append(quality)
            produced += 1

        if produced:
            self.stats.accepted += 1
            self.stats.values += produced
            if missing:
                self._flag(Reject.MISSING_FIELD, topic, missing)
        else:
            self._reject(Reject.MISSING_FIELD, topic)

    # -- the bad paths -------------------------------------------------------------------------

    def _parse_slow(self, topic: str, payload: bytes) -> Any:
        """After the fast parser refused `payload`: NaN/Infinity tokens, or classify the failure.

        The stdlib parser accepts NaN/Infinity tokens and integers beyond 64 bits, which orjson
        refuses; those documents go on (their non-finite values are flagged per value). Otherwise
        TRUNCATED is a heuristic: the text ended where the parser still expected more (error at
        the end of the stripped text, an unterminated string, or a UTF-8 sequence cut short);
        anything else is NOT_JSON.
        """
        import json

        try:
            text = bytes(payload).decode("utf-8")
        except UnicodeDecodeError as exc:
            reason = Reject.TRUNCATED if exc.reason == "unexpected end of data" else Reject.NOT_JSON
            self._reject(reason, topic)
            return _MISSING
        except Exception:  # noqa: BLE001 - not bytes-like at all
            self._reject(Reject.NOT_JSON, topic)
            return _MISSING
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            stripped = len(text.rstrip(" \t\r\n"))
            if stripped and (exc.pos >= stripped or exc.msg.startswith("Unterminated string")):
                self._reject(Reject.TRUNCATED, topic)
            else:
                self._reject(Reject.NOT_JSON, topic)
        except Exception:  # noqa: BLE001 - RecursionError on absurd nesting, and the like
            self._reject(Reject.NOT_JSON, topic)
        return _MISSING

    def _from_string(self, topic: str, text: str, quality: int,
                     accept: bool) -> tuple[float, int]:
        try:
            value = float(text)
        except ValueError:
            self._flag(Reject.WRONG_TYPE, topic)
            return _NAN, _BAD
        self._flag(Reject.NUMBER_AS_STRING, topic)
        if not accept:
            return _NAN, _BAD
        if value - value != 0.0:
            self._flag(Reject.NON_FINITE, topic)
            return _NAN, _BAD
        return value, max(quality, _UNCERTAIN)

    def _timestamp(self, topic: str, doc: Any, receive_ns: int) -> int | None:
        """Equipment time in ns, or None (flagged) when it is missing or not to be trusted."""
        raw = _walk(doc, self._time_path)  # type: ignore[arg-type]
        if raw is _MISSING:
            self._flag(Reject.MISSING_FIELD, topic)
            return None
        stamp = None
        kind = type(raw)
        if self._time_scale:
            if kind is int:
                stamp = raw * self._time_scale
            elif kind is float:
                scaled = raw * self._time_scale
                if scaled - scaled == 0.0:  # finite after scaling: round() cannot overflow
                    stamp = round(scaled)
        elif kind is str:
            stamp = _iso_to_ns(raw)
        if stamp is None or not _INT64_MIN <= stamp <= _INT64_MAX:
            self._flag(Reject.BAD_TIMESTAMP, topic)
            return None
        if stamp - receive_ns > self._max_skew_ns:
            self._flag(Reject.FUTURE_TIMESTAMP, topic)
            return None
        return stamp

    def _sequence_is_duplicate(self, topic: str, doc: Any) -> bool:
        """Track the sequence number per topic; True for a repeat, flags out-of-order arrival."""
        seq = _walk(doc, self._seq_path)  # type: ignore[arg-type]
        if seq is _MISSING:
            self._flag(Reject.MISSING_FIELD, topic)
            return False
        if type(seq) is not int:
            self._flag(Reject.WRONG_TYPE, topic)
            return False
        state = self._seq_state.get(topic)
        if state is None:
            self._seq_state[topic] = ([seq], deque((seq,)), {seq})
            return False
        newest, recent, seen = state
        if seq in seen:
            return True
        if seq < newest[0]:
            self._flag(Reject.OUT_OF_ORDER_SEQUENCE, topic)
            if seq < newest[0] - self.sequence_window:  # far behind: the equipment restarted
                newest[0] = seq
                recent.clear()
                seen.clear()
        else:
            newest[0] = seq
        recent.append(seq)
        seen.add(seq)
        if len(recent) > self.sequence_window:
            seen.discard(recent.popleft())
        return False


def _iso_to_ns(text: str) -> int | None:
    try:
        moment = datetime.fromisoformat(text)
    except (ValueError, TypeError):
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    try:
        delta = moment - _EPOCH
    except OverflowError:
        return None
    return (delta.days * 86400 + delta.seconds) * 10**9 + delta.microseconds * 1000
