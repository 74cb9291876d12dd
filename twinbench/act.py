"""Act: rules that recommend or act, and the one guarded path for every write to equipment.

Rules are declarative: a :class:`Condition` (``variable``, comparison operator, threshold) held
for a ``persistence`` leads to an :class:`Event` — a recommendation, or, for a rule with
``auto=True``, an action (writes without confirmation). Rules are plain data (``to_dict`` /
``from_dict``); no string is ever evaluated as code.

Every write to equipment goes through a :class:`GuardedWriter`: allow-list → limits and rate of
change → confirmation → the write → read-back within a tolerance and timeout → an append-only
audit record (JSON lines, flushed to disk before the call returns). A refused or failed write is
explained in its :class:`WriteResult` and never retried.

Examples
--------
>>> engine = RuleEngine([Rule("vibration-high", Condition("vibration", ">", 7.1),
...                           persistence=30.0, recommend="reduce speed to 80 %")])
>>> engine.evaluate(0.0, {"vibration": 7.5})
[]
>>> [e.kind for e in engine.evaluate(30.0, {"vibration": 7.6})]
['recommendation']
>>> engine.evaluate(31.0, {"vibration": 7.7})  # once per episode
[]
>>> [e.kind for e in engine.evaluate(32.0, {"vibration": 3.0})]
['cleared']
"""

from __future__ import annotations

import asyncio
import datetime as dt
import getpass
import inspect
import json
import math
import operator
import os
import re
import time
import weakref
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from twinbench.session import Identity, auth_required, request_identity

__all__ = ["Condition", "Event", "GuardedWriter", "Limits", "Rule", "RuleEngine", "WriteRequest",
           "WriteResult", "audit_log", "guarded_writer"]

_OPS: dict[str, Callable[[Any, Any], Any]] = {
    ">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le,
    "==": operator.eq, "!=": operator.ne}

_CONDITION_TEXT = re.compile(r"^\s*([A-Za-z_][\w.]*)\s*(>=|<=|==|!=|>|<)\s*(\S+)\s*$")

RESULTS = ("written", "refused", "failed", "dry-run", "not-confirmed")

# A first write has no earlier write to measure its rate of change over: the step from the
# equipment's current value counts as made in this many seconds.
FIRST_STEP_SECONDS = 1.0


def _finite_number(value: Any, name: str, *, low: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name}: expected a number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value) or (low is not None and value < low):
        bound = f" >= {low:g}" if low is not None else ""
        raise ValueError(f"{name}: expected a finite number{bound}, got {value!r}")
    return value


# -- rules -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Condition:
    """``variable op threshold``, e.g. ``Condition("vibration", ">", 7.1)``.

    A NaN value (a missing or bad sample) never satisfies a condition, whatever the operator.

    Parameters
    ----------
    variable : str
        Name of a state variable (a measured tag, an estimate, a residual, ...).
    op : {">", ">=", "<", "<=", "==", "!="}
        Comparison of the variable's value with `threshold`.
    threshold : float
        Finite number.

    Examples
    --------
    >>> c = Condition("vibration", ">", 7.1)
    >>> c.holds(7.5), c.holds(float("nan")), str(c)
    (True, False, 'vibration > 7.1')
    >>> Condition.parse("temperature <= 80") == Condition("temperature", "<=", 80.0)
    True
    >>> Condition("vibration", "=>", 7.1)
    Traceback (most recent call last):
    ...
    ValueError: op: expected one of '>', '>=', '<', '<=', '==', '!=', got '=>'
    """

    variable: str
    op: str
    threshold: float

    def __post_init__(self) -> None:
        if not isinstance(self.variable, str) or not self.variable:
            raise TypeError(f"variable: expected a non-empty str, got {self.variable!r}")
        if self.op not in _OPS:
            raise ValueError(f"op: expected one of {', '.join(map(repr, _OPS))}, got {self.op!r}")
        object.__setattr__(self, "threshold", _finite_number(self.threshold, "threshold"))

    def __str__(self) -> str:
        return f"{self.variable} {self.op} {self.threshold:g}"

    @classmethod
    def parse(cls, text: str) -> Condition:
        """A condition from text such as ``"vibration > 7.1"`` (parsed, never evaluated)."""
        match = _CONDITION_TEXT.match(text) if isinstance(text, str) else None
        if match is None:
            raise ValueError(f"text: expected '<variable> <op> <number>', got {text!r}")
        try:
            threshold = float(match.group(3))
        except ValueError:
            raise ValueError(f"text: expected a number after {match.group(2)!r}, "
                             f"got {match.group(3)!r}") from None
        return cls(match.group(1), match.group(2), threshold)

    def holds(self, value: Any) -> bool:
        """Whether `value` satisfies the condition (NaN never does)."""
        value = float(value)
        return not math.isnan(value) and bool(_OPS[self.op](value, self.threshold))

    def holds_array(self, values: Any) -> np.ndarray:
        """:meth:`holds` for each element of `values` (a boolean array)."""
        values = np.asarray(values, dtype=np.float64)
        with np.errstate(invalid="ignore"):
            return _OPS[self.op](values, self.threshold) & ~np.isnan(values)

    def to_dict(self) -> dict[str, Any]:
        return {"variable": self.variable, "op": self.op, "threshold": self.threshold}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Condition:
        return cls(data["variable"], data["op"], data["threshold"])


@dataclass(frozen=True)
class Event:
    """What a rule produced at `time`.

    Attributes
    ----------
    time : float, numpy.datetime64 or datetime
        The sample time at which it happened, as given to the engine.
    rule : str
        Name of the rule.
    kind : {"recommendation", "action", "cleared"}
        ``"action"`` for a rule with ``auto=True`` (its writes go without confirmation),
        ``"recommendation"`` otherwise (writes, if any, are proposals to confirm), ``"cleared"``
        when the condition of a rule that fired stops holding.
    message : str
        Text for the user.
    writes : dict of str to float
        Tag to value the rule writes or proposes (empty for ``"cleared"``).
    """

    time: Any
    rule: str
    kind: str
    message: str
    writes: dict[str, float] = field(default_factory=dict)


class Rule:
    """A condition held for `persistence` seconds → a recommendation or an action.

    Parameters
    ----------
    name : str
        Unique name; writes it makes are audited with source ``"rule:<name>"``.
    condition : Condition or (variable, op, threshold) or str
        When the rule applies (a str is parsed by :meth:`Condition.parse`).
    persistence : float, default 0
        Seconds (of sample time, not wall time) the condition must hold without interruption
        before the rule fires. It fires once per episode and re-arms after the condition clears.
    recommend : str, optional
        Recommendation text shown to the user.
    write : mapping of str to float or callable, optional
        Tags to write when the rule fires: a number, or ``callable(state) -> number`` where
        ``state`` maps each variable to its value at that moment (e.g. ``lambda s: 0.8 *
        s["speed_setpoint"]``).
    auto : bool, default False
        Write without confirmation (automatic control; still limited and audited). Needs `write`.
    cooldown : float, default 0
        Seconds after the rule fired during which it does not fire again (a condition that
        flickers cannot fire it faster than this).

    Examples
    --------
    >>> r = Rule("slow-down", "vibration > 7.1", persistence=30, recommend="reduce speed",
    ...          write={"speed_setpoint": 2400.0})
    >>> r
    Rule('slow-down', vibration > 7.1, persistence=30, write=['speed_setpoint'])
    >>> Rule.from_dict(r.to_dict()).to_dict() == r.to_dict()
    True
    >>> Rule("x", "speed > 1", auto=True)
    Traceback (most recent call last):
    ...
    ValueError: auto: an automatic rule needs write={tag: value}
    """

    def __init__(self, name: str, condition: Condition | tuple[str, str, float] | str, *,
                 persistence: float = 0.0, recommend: str | None = None,
                 write: Mapping[str, float | Callable[[Mapping[str, float]], float]] | None = None,
                 auto: bool = False, cooldown: float = 0.0) -> None:
        if not isinstance(name, str) or not name:
            raise TypeError(f"name: expected a non-empty str, got {name!r}")
        if isinstance(condition, str):
            condition = Condition.parse(condition)
        elif isinstance(condition, tuple) and len(condition) == 3:
            condition = Condition(*condition)
        elif not isinstance(condition, Condition):
            raise TypeError(f"condition: expected a Condition, a (variable, op, threshold) tuple "
                            f"or a str, got {type(condition).__name__}")
        if recommend is not None and not isinstance(recommend, str):
            raise TypeError(f"recommend: expected a str or None, got {type(recommend).__name__}")
        writes: dict[str, Any] = {}
        if write is not None:
            if not isinstance(write, Mapping) or not write:
                raise TypeError("write: expected a non-empty mapping of tag to value or callable")
            for tag, value in write.items():
                if not isinstance(tag, str) or not tag:
                    raise TypeError(f"write: expected non-empty tag names, got {tag!r}")
                writes[tag] = value if callable(value) else _finite_number(value, f"write[{tag!r}]")
        if not isinstance(auto, bool):
            raise TypeError(f"auto: expected a bool, got {type(auto).__name__}")
        if auto and not writes:
            raise ValueError("auto: an automatic rule needs write={tag: value}")
        self.name = name
        self.condition = condition
        self.persistence = _finite_number(persistence, "persistence", low=0.0)
        self.recommend = recommend
        self.write = writes
        self.auto = auto
        self.cooldown = _finite_number(cooldown, "cooldown", low=0.0)

    def __repr__(self) -> str:
        extra = [f"persistence={self.persistence:g}"]
        if self.write:
            extra.append(f"write={list(self.write)}")
        if self.auto:
            extra.append("auto=True")
        if self.cooldown:
            extra.append(f"cooldown={self.cooldown:g}")
        return f"Rule({self.name!r}, {self.condition}, {', '.join(extra)})"

    def to_dict(self) -> dict[str, Any]:
        """The rule as JSON-ready data (a rule whose write values are callables has none)."""
        if any(callable(v) for v in self.write.values()):
            raise TypeError(f"write: rule {self.name!r} computes values with callables, which "
                            f"cannot be serialised")
        return {"name": self.name, "condition": self.condition.to_dict(),
                "persistence": self.persistence, "recommend": self.recommend,
                "write": dict(self.write) or None, "auto": self.auto, "cooldown": self.cooldown}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Rule:
        condition = data["condition"]
        if isinstance(condition, Mapping):
            condition = Condition.from_dict(condition)
        return cls(data["name"], condition, persistence=data.get("persistence", 0.0),
                   recommend=data.get("recommend"), write=data.get("write"),
                   auto=data.get("auto", False), cooldown=data.get("cooldown", 0.0))

    def _event_writes(self, state: Mapping[str, float]) -> dict[str, float]:
        return {tag: float(value(state)) if callable(value) else value
                for tag, value in self.write.items()}

    def _message(self) -> str:
        held = f" for {self.persistence:g} s" if self.persistence else ""
        then = f": {self.recommend}" if self.recommend else ""
        if self.write and not self.recommend:
            then = ": write " + ", ".join(self.write)
        return f"{self.name}: {self.condition}{held}{then}"


@dataclass
class _RuleState:
    start: float | None = None  # sample time the current episode began
    fired: bool = False
    last_fire: float = -math.inf


def _seconds(times: Any, name: str) -> tuple[np.ndarray, list[Any]]:
    """Sample times as float seconds (for arithmetic) and as given (for events)."""
    arr = np.asarray(times)
    if arr.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D sequence of times, got shape {arr.shape}")
    if arr.dtype.kind == "M":
        ns = arr.astype("datetime64[ns]")
        if np.isnat(ns).any():
            raise ValueError(f"{name}: expected times, got NaT")
        return ns.astype(np.int64) / 1e9, list(ns)
    if arr.dtype == object and len(arr) and all(isinstance(t, dt.datetime) for t in arr):
        for t in arr:
            if t.tzinfo is None:
                raise ValueError(f"{name}: expected timezone-aware datetimes, got {t!r}")
        return np.array([t.timestamp() for t in arr]), list(arr)
    if arr.dtype.kind in "iuf" or (arr.dtype == object and not len(arr)):
        secs = arr.astype(np.float64)
        if not np.isfinite(secs).all():
            raise ValueError(f"{name}: expected finite seconds")
        return secs, [float(t) for t in secs]
    raise TypeError(f"{name}: expected seconds, numpy.datetime64 or aware datetimes, "
                    f"got {arr.dtype}")


class RuleEngine:
    """Evaluates rules on successive samples and tracks each rule's episode.

    Parameters
    ----------
    rules : sequence of Rule
        Names must be unique.

    Notes
    -----
    Times must not go backwards between calls. A variable missing from the values given to a call
    leaves the rules on it as they were (no evidence either way); a NaN value is evidence that the
    condition does not hold (it ends an episode).

    Examples
    --------
    >>> import numpy as np
    >>> engine = RuleEngine([Rule("hot", "temperature > 80", persistence=2.0)])
    >>> events = engine.evaluate_batch(np.arange(6.0),
    ...                                {"temperature": [81, 82, 83, 84, 70, 85]})
    >>> [(e.time, e.kind) for e in events]
    [(2.0, 'recommendation'), (4.0, 'cleared')]
    """

    def __init__(self, rules: Sequence[Rule]) -> None:
        if isinstance(rules, Rule) or not isinstance(rules, Sequence):
            raise TypeError(f"rules: expected a sequence of Rule, got {type(rules).__name__}")
        names = set()
        for rule in rules:
            if not isinstance(rule, Rule):
                raise TypeError(f"rules: expected Rule objects, got {type(rule).__name__}")
            if rule.name in names:
                raise ValueError(f"rules: the name {rule.name!r} is used twice")
            names.add(rule.name)
        self.rules = list(rules)
        self._state = {rule.name: _RuleState() for rule in self.rules}
        self._last_time = -math.inf

    def __repr__(self) -> str:
        return f"RuleEngine({len(self.rules)} rules, active={self.active()})"

    def active(self) -> list[str]:
        """Names of the rules that have fired and whose condition still holds."""
        return [name for name, st in self._state.items() if st.fired]

    def set_condition(self, name: str, condition: Condition | str) -> Rule:
        """Give rule `name` a new condition (a :class:`Condition` or its text, parsed, never
        evaluated) and re-arm it; returns the rule."""
        rule = next((r for r in self.rules if r.name == name), None)
        if rule is None:
            raise ValueError(f"name: expected one of {[r.name for r in self.rules]}, got "
                             f"{name!r}")
        rule.condition = condition if isinstance(condition, Condition) else \
            Condition.parse(condition)
        self._state[name] = _RuleState()
        return rule

    def reset(self) -> None:
        """Forget every episode (all rules re-armed, no cooldown pending)."""
        self._state = {rule.name: _RuleState() for rule in self.rules}
        self._last_time = -math.inf

    def evaluate(self, time: Any, values: Mapping[str, float]) -> list[Event]:
        """The events of one sample: `values` maps variable names to their values at `time`.

        Parameters
        ----------
        time : float (seconds), numpy.datetime64 or aware datetime
        values : mapping of str to float
        """
        if not isinstance(values, Mapping):
            raise TypeError(f"values: expected a mapping of variable to value, got "
                            f"{type(values).__name__}")
        arrays = {}
        for name, value in values.items():
            try:
                arrays[name] = np.array([float(value)])
            except (TypeError, ValueError):
                raise TypeError(f"values: expected a number for {name!r}, got "
                                f"{type(value).__name__}") from None
        times = np.array([time]) if not isinstance(time, dt.datetime) \
            else np.array([time], dtype=object)
        return self._evaluate(times, arrays, "time")

    def evaluate_batch(self, times: Any, values: Mapping[str, Any]) -> list[Event]:
        """The events of a batch of samples, in time order (the same as :meth:`evaluate`
        sample by sample, at array speed).

        Parameters
        ----------
        times : 1-D array of seconds, numpy.datetime64 or aware datetimes, non-decreasing
        values : mapping of str to 1-D arrays
            One value per time for each variable.
        """
        if not isinstance(values, Mapping):
            raise TypeError(f"values: expected a mapping of variable to array, got "
                            f"{type(values).__name__}")
        n = len(np.asarray(times))
        arrays = {}
        for name, column in values.items():
            try:
                arr = np.asarray(column, dtype=np.float64)
            except (TypeError, ValueError):
                raise TypeError(f"values: expected numbers for {name!r}") from None
            if arr.shape != (n,):
                raise ValueError(f"values: expected {n} values for {name!r} (one per time), "
                                 f"got shape {arr.shape}")
            arrays[name] = arr
        return self._evaluate(times, arrays, "times")

    def _evaluate(self, times: Any, values: Mapping[str, np.ndarray], name: str) -> list[Event]:
        secs, given = _seconds(times, name)
        if len(secs) == 0:
            return []
        if secs[0] < self._last_time or (len(secs) > 1 and (np.diff(secs) < 0).any()):
            raise ValueError(f"{name}: expected times that do not go backwards (last evaluated "
                             f"{self._last_time:g} s)")
        found: list[tuple[int, int, Event]] = []
        for order, rule in enumerate(self.rules):
            column = values.get(rule.condition.variable)
            if column is None:
                continue
            mask = rule.condition.holds_array(column)
            for index, kind in self._advance(rule, self._state[rule.name], secs, mask):
                if kind == "cleared":
                    event = Event(given[index], rule.name, "cleared",
                                  f"{rule.name}: cleared ({rule.condition} no longer holds)")
                else:
                    state = {var: float(col[index]) for var, col in values.items()}
                    event = Event(given[index], rule.name, kind, rule._message(),
                                  rule._event_writes(state))
                found.append((index, order, event))
        self._last_time = float(secs[-1])
        found.sort(key=lambda item: item[:2])
        return [event for _, _, event in found]

    @staticmethod
    def _advance(rule: Rule, st: _RuleState, secs: np.ndarray,
                 mask: np.ndarray) -> list[tuple[int, str]]:
        # Work per run of equal mask values, not per sample: a run's first due sample is found
        # by a binary search over its (sorted) times.
        out = []
        n = len(mask)
        bounds = np.concatenate(([0], np.flatnonzero(mask[1:] != mask[:-1]) + 1, [n]))
        fire_kind = "action" if rule.auto else "recommendation"
        for a, b in zip(bounds[:-1].tolist(), bounds[1:].tolist()):
            if mask[a]:
                if st.start is None:
                    st.start, st.fired = float(secs[a]), False
                if not st.fired:
                    due = max(st.start + rule.persistence, st.last_fire + rule.cooldown)
                    k = a + int(np.searchsorted(secs[a:b], due, side="left"))
                    if k < b:
                        st.fired, st.last_fire = True, float(secs[k])
                        out.append((k, fire_kind))
            elif st.start is not None:
                if st.fired:
                    out.append((a, "cleared"))
                st.start, st.fired = None, False
        return out


# -- guarded writes ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Limits:
    """What a writable tag may be set to.

    Parameters
    ----------
    low, high : float
        The allowed range, inclusive.
    max_rate : float, optional
        Largest rate of change, in units per second, measured from the previous value (the last
        write through the writer, else the equipment's value, taken as a step made in
        ``FIRST_STEP_SECONDS`` = 1 s).
    tolerance : float, optional
        Largest difference between the value read back and the value requested; default the
        writer's `tolerance`, else ``1e-9 * max(1, |low|, |high|)``.

    Examples
    --------
    >>> Limits(0, 3600, max_rate=100)
    Limits(low=0.0, high=3600.0, max_rate=100.0, tolerance=None)
    >>> Limits(10, 0)
    Traceback (most recent call last):
    ...
    ValueError: high: expected a number >= low (10), got 0.0
    """

    low: float
    high: float
    max_rate: float | None = None
    tolerance: float | None = None

    def __post_init__(self) -> None:
        low = _finite_number(self.low, "low")
        high = _finite_number(self.high, "high")
        if high < low:
            raise ValueError(f"high: expected a number >= low ({low:g}), got {high!r}")
        object.__setattr__(self, "low", low)
        object.__setattr__(self, "high", high)
        if self.max_rate is not None:
            rate = _finite_number(self.max_rate, "max_rate", low=0.0)
            if rate == 0:
                raise ValueError("max_rate: expected a rate > 0 (or None for no limit), got 0")
            object.__setattr__(self, "max_rate", rate)
        if self.tolerance is not None:
            object.__setattr__(self, "tolerance",
                               _finite_number(self.tolerance, "tolerance", low=0.0))


@dataclass(frozen=True)
class WriteRequest:
    """A write waiting for confirmation (what a confirmation callback or dialog is shown)."""

    tag: str
    old: float | None
    requested: float
    limits: Limits
    reason: str
    source: str
    user: str

    def describe(self) -> str:
        was = "unknown" if self.old is None else f"{self.old:g}"
        return (f"set {self.tag} to {self.requested:g} (now {was}; allowed {self.limits.low:g}"
                f"..{self.limits.high:g}) — {self.reason} [{self.source}, {self.user}]")


@dataclass(frozen=True)
class WriteResult:
    """The outcome of one write attempt (each one also has an audit record).

    Attributes
    ----------
    tag : str
    requested : object
        The value asked for.
    old : float or None
        The value before (read from the equipment, else the last one written), if known.
    read_back : float or None
        What the equipment reported after the write (MQTT: the acknowledged value).
    result : {"written", "refused", "failed", "dry-run", "not-confirmed"}
    message : str
        Why, in words: which limit refused it, what the equipment answered.
    reason : str
        The reason given for the write.
    source : str
        ``"user"`` or ``"rule:<name>"``.
    user : str
        Who asked for it (audited): the signed-in user in an app with sign-in, else the
        writer's user.
    """

    tag: str
    requested: Any
    old: float | None
    read_back: float | None
    result: str
    message: str
    reason: str = ""
    source: str = "user"
    user: str = ""

    @property
    def ok(self) -> bool:
        """Whether the value is now on the equipment (``result == "written"``)."""
        return self.result == "written"


def _check_source_label(source: Any) -> str:
    if not isinstance(source, str) or not (source == "user" or (
            source.startswith("rule:") and len(source) > 5)):
        raise ValueError(f"source: expected 'user' or 'rule:<name>', got {source!r}")
    return source


def guarded_writer(source: Any, allow: Mapping[str, Any], *, audit: str | os.PathLike[str],
                   **options: Any) -> GuardedWriter:
    """A :class:`GuardedWriter` for `source`; `allow` values may be :class:`Limits`,
    ``(low, high)`` tuples or mappings of Limits' fields.

    Examples
    --------
    >>> import tempfile, twinbench
    >>> src = twinbench.connect("opc.tcp://127.0.0.1:4840/twinbench/plant",
    ...                         {"speed_setpoint": "ns=2;s=Pump1.speed_setpoint"})
    >>> with tempfile.TemporaryDirectory() as d:
    ...     w = guarded_writer(src, {"speed_setpoint": (0, 3600)}, audit=f"{d}/audit.jsonl")
    >>> w.allow["speed_setpoint"]
    Limits(low=0.0, high=3600.0, max_rate=None, tolerance=None)
    """
    return GuardedWriter(source, allow, audit=audit, **options)


class GuardedWriter:
    """The one path for writes to equipment: allow-list → limits and rate → confirmation →
    write → read-back → audit.

    Parameters
    ----------
    source : OpcUaSource or MqttSource
        A started source (an MQTT source needs ``command_topic`` and ``ack_topic``: the
        acknowledgement is its read-back).
    allow : mapping of str to Limits
        The writable tags; nothing else is ever written. ``(low, high)`` tuples and mappings of
        Limits' fields are accepted too.
    audit : path
        The audit log (JSON lines, appended; created with its folder if missing).
    confirm : callable, optional
        ``confirm(request: WriteRequest) -> bool`` (or an awaitable bool): asked before every
        write that is not from an automatic rule. Without one, such writes are
        ``"not-confirmed"`` unless the call passes its own `confirm`.
    dry_run : bool, default False
        Check and audit (``"dry-run"``), write nothing.
    user : str, optional
        Who is writing (audited); default the login name.
    readback_timeout : float, default 5
        Seconds for the write and its read-back.
    tolerance : float, optional
        Default read-back tolerance for tags whose Limits have none.

    Examples
    --------
    >>> import asyncio, tempfile, twinbench
    >>> src = twinbench.connect("opc.tcp://127.0.0.1:4840/twinbench/plant",
    ...                         {"speed_setpoint": "ns=2;s=Pump1.speed_setpoint"})
    >>> with tempfile.TemporaryDirectory() as d:
    ...     w = GuardedWriter(src, {"speed_setpoint": Limits(0, 3600)}, audit=f"{d}/a.jsonl",
    ...                       user="ana")
    ...     r = asyncio.run(w.write("speed_setpoint", 5000, reason="test"))
    ...     log = audit_log(f"{d}/a.jsonl")
    >>> r.result, r.message
    ('refused', 'speed_setpoint: 5000 is above the high limit 3600')
    >>> log[0]["result"], log[0]["user"], log[0]["requested"]
    ('refused', 'ana', 5000)
    """

    def __init__(self, source: Any, allow: Mapping[str, Any], *,
                 audit: str | os.PathLike[str],
                 confirm: Callable[[WriteRequest], bool | Awaitable[bool]] | None = None,
                 dry_run: bool = False, user: str | None = None, readback_timeout: float = 5.0,
                 tolerance: float | None = None) -> None:
        if not callable(getattr(source, "write", None)):
            raise TypeError(f"source: expected a source with write() (connect(...)), got "
                            f"{type(source).__name__}")
        self._mqtt = hasattr(source, "command_topic") and not hasattr(source, "read_values")
        if self._mqtt and (getattr(source, "command_topic", None) is None
                           or getattr(source, "ack_topic", None) is None):
            raise ValueError("source: an MQTT source needs command_topic and ack_topic (the "
                             "acknowledgement is the guarded write's read-back)")
        if not isinstance(allow, Mapping):
            raise TypeError(f"allow: expected a mapping of tag to Limits, got "
                            f"{type(allow).__name__}")
        limits = {}
        for tag, lim in allow.items():
            if not isinstance(tag, str) or not tag:
                raise TypeError(f"allow: expected non-empty tag names, got {tag!r}")
            if isinstance(lim, Limits):
                limits[tag] = lim
            elif isinstance(lim, tuple) and len(lim) == 2:
                limits[tag] = Limits(*lim)
            elif isinstance(lim, Mapping):
                limits[tag] = Limits(**lim)
            else:
                raise TypeError(f"allow: expected Limits for {tag!r}, got {type(lim).__name__}")
        if confirm is not None and not callable(confirm):
            raise TypeError(f"confirm: expected a callable or None, got {type(confirm).__name__}")
        if not isinstance(dry_run, bool):
            raise TypeError(f"dry_run: expected a bool, got {type(dry_run).__name__}")
        if user is None:
            try:
                user = getpass.getuser()
            except (KeyError, OSError):  # no login name (some containers)
                user = f"uid:{os.getuid()}" if hasattr(os, "getuid") else "unknown"
        elif not isinstance(user, str) or not user:
            raise TypeError(f"user: expected a non-empty str or None, got {user!r}")
        self.readback_timeout = _finite_number(readback_timeout, "readback_timeout")
        if self.readback_timeout <= 0:
            raise ValueError(f"readback_timeout: expected seconds > 0, got {readback_timeout!r}")
        self.tolerance = None if tolerance is None else _finite_number(tolerance, "tolerance",
                                                                        low=0.0)
        self.audit_path = Path(audit)
        self.audit_path.parent.mkdir(parents=True, exist_ok=True)
        # Fail now, not after a write reached the equipment, if the log cannot be appended to.
        os.close(os.open(self.audit_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640))
        self.source = source
        self.allow = limits
        #: The limits given at construction: :meth:`set_limits` may narrow a tag's range
        #: within these, never widen it past them.
        self.bounds = dict(limits)
        self.confirm = confirm
        self.dry_run = dry_run
        self.user = user
        self._last: dict[str, tuple[float, float]] = {}  # tag -> (value, monotonic time)
        self._locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = \
            weakref.WeakKeyDictionary()

    def __repr__(self) -> str:
        mode = ", dry run" if self.dry_run else ""
        return f"GuardedWriter({sorted(self.allow)}, audit={str(self.audit_path)!r}{mode})"

    # -- public API ----------------------------------------------------------------------------

    async def write(self, tag: str, value: Any, *, reason: str, source: str = "user",
                    confirm: Callable[[WriteRequest], bool | Awaitable[bool]] | bool | None = None,
                    identity: Identity | None = None) -> WriteResult:
        """Write one tag through the guard; the result says what happened and why.

        Parameters
        ----------
        tag : str
        value : number
        reason : str
            Why (audited).
        source : str, default "user"
            ``"user"`` or ``"rule:<name>"`` (audited).
        confirm : callable or bool, optional
            This write's confirmation instead of the writer's: a callback as for the writer, or
            ``True`` when the caller has already asked the user (a dialog answered yes).
        identity : twinbench.session.Identity, optional
            Who asks. In an app with sign-in, a write that is not an automatic rule's action
            needs a role that may write; by default the identity is the one the server stamped
            on the message being handled (:func:`twinbench.session.request_identity`), so
            pass the identity captured in the click handler when calling from elsewhere.

        Returns
        -------
        WriteResult
            ``"refused"`` (allow-list, limits, rate, or a role that may not write: nothing
            sent), ``"not-confirmed"``,
            ``"failed"`` (the equipment refused, did not answer, or read back another value),
            ``"dry-run"`` or ``"written"``. Nothing is retried.
        """
        if not isinstance(tag, str) or not tag:
            raise TypeError(f"tag: expected a non-empty str, got {tag!r}")
        if not isinstance(reason, str) or not reason.strip():
            raise ValueError("reason: expected a non-empty str saying why the write is made")
        _check_source_label(source)
        if confirm is not None and not isinstance(confirm, bool) and not callable(confirm):
            raise TypeError(f"confirm: expected a callable, a bool or None, got "
                            f"{type(confirm).__name__}")
        if identity is not None and not isinstance(identity, Identity):
            raise TypeError(f"identity: expected a twinbench.session.Identity, got "
                            f"{type(identity).__name__}")
        return await self._guarded(tag, value, reason, source, confirm, auto=False,
                                   identity=identity or request_identity())

    async def apply(self, event: Event, *,
                    confirm: Callable[[WriteRequest], bool | Awaitable[bool]] | bool | None = None,
                    identity: Identity | None = None) -> list[WriteResult]:
        """Make the writes of a rule's event: an ``"action"`` (a rule with ``auto=True``) writes
        without confirmation; a ``"recommendation"`` asks for it. Returns one result per tag."""
        if not isinstance(event, Event):
            raise TypeError(f"event: expected an Event, got {type(event).__name__}")
        if event.kind == "cleared" or not event.writes:
            return []
        auto = event.kind == "action"
        who = identity or request_identity()
        results = []
        for tag, value in event.writes.items():
            results.append(await self._guarded(tag, value, event.message, f"rule:{event.rule}",
                                               confirm, auto=auto, identity=who))
        return results

    def set_limits(self, tag: str, low: Any, high: Any, *, reason: str,
                   identity: Identity | None = None) -> WriteResult:
        """Change a writable tag's range within the bounds the writer was made with (an
        engineer's change in an app with sign-in); audited like a write, with result
        ``"limits-changed"`` or ``"refused"``.

        Examples
        --------
        >>> import tempfile, twinbench as tb
        >>> src = tb.connect("opc.tcp://127.0.0.1:4840/p", {"speed_setpoint": "ns=2;s=Pump1.sp"})
        >>> with tempfile.TemporaryDirectory() as d:
        ...     w = GuardedWriter(src, {"speed_setpoint": Limits(0, 3600)}, audit=f"{d}/a.jsonl")
        ...     print(w.set_limits("speed_setpoint", 500, 3000, reason="commissioning").result)
        ...     print(w.set_limits("speed_setpoint", 500, 4000, reason="faster").message)
        limits-changed
        speed_setpoint: 500..4000 leaves the app's bounds 0..3600; limits unchanged
        """
        who = identity or request_identity()

        def outcome(result: str, message: str) -> WriteResult:
            return self.record(tag, [low, high], result, message, reason=reason, identity=who)

        if not isinstance(reason, str) or not reason.strip():
            raise ValueError("reason: expected a non-empty str saying why the limits change")
        if auth_required() and not who.may("configure"):
            return outcome("refused", f"{tag}: {who} may not change limits (engineers may); "
                                      f"limits unchanged")
        bound = self.bounds.get(tag)
        if bound is None:
            return outcome("refused", f"{tag}: not on the allow-list; limits unchanged")
        try:
            new = Limits(low, high, max_rate=self.allow[tag].max_rate,
                         tolerance=self.allow[tag].tolerance)
        except (TypeError, ValueError) as exc:
            return outcome("refused", f"{tag}: {exc}; limits unchanged")
        if new.low < bound.low or new.high > bound.high:
            return outcome("refused", f"{tag}: {new.low:g}..{new.high:g} leaves the app's bounds "
                                      f"{bound.low:g}..{bound.high:g}; limits unchanged")
        self.allow[tag] = new
        return outcome("limits-changed", f"{tag}: limits now {new.low:g}..{new.high:g}")

    def record(self, tag: str, requested: Any, result: str, message: str, *, reason: str,
               identity: Identity | None = None) -> WriteResult:
        """Append a change that is not a write (new limits, a rule's new condition) to the
        audit log, under the name of who made it; returns the record as a WriteResult."""
        who = identity or request_identity()
        entry = WriteResult(tag, requested, None, None, result, message, reason, "user",
                            who.user if who.signed_in else self.user)
        self._audit(entry)
        return entry

    def write_sync(self, tag: str, value: Any, *, reason: str, source: str = "user",
                   confirm: Callable[[WriteRequest], bool | Awaitable[bool]] | bool | None = None
                   ) -> WriteResult:
        """:meth:`write` from a notebook cell: needs a source started with ``start_sync()``
        (the write runs on that source's private loop)."""
        sync = getattr(self.source, "_sync", None)
        if sync is None or not sync.running:
            raise RuntimeError("write_sync: start the source with start_sync() first (or use "
                               "'await writer.write(...)' on the running loop)")
        # The confirmation may wait on a person: no overall bound beyond the write's own.
        wait = None if (confirm is not True and (confirm or self.confirm)) \
            else 2 * self.readback_timeout + 5.0
        return sync.run(self.write(tag, value, reason=reason, source=source, confirm=confirm,
                                   identity=request_identity()), wait)

    # -- the guard -----------------------------------------------------------------------------

    def _lock(self) -> asyncio.Lock:
        # One write at a time per loop: two concurrent writes to a tag must not both pass the
        # rate check against the same previous value.
        loop = asyncio.get_running_loop()
        lock = self._locks.get(loop)
        if lock is None:
            lock = self._locks[loop] = asyncio.Lock()
        return lock

    async def _guarded(self, tag: str, value: Any, reason: str, source: str, confirm: Any, *,
                       auto: bool, identity: Identity) -> WriteResult:
        # In an app with sign-in the audit names who asked (the server's stamp), not the
        # account the kernel runs as.
        user = identity.user if identity.signed_in else self.user
        if not auto and auth_required() and not identity.may("write"):
            # checked here, in the kernel, whatever the page showed: a forged click from a
            # viewer's page ends here, audited
            result = WriteResult(tag, value, None, None, "refused",
                                 f"{tag}: {identity} may not write (operators and engineers "
                                 f"may); nothing sent", reason, source, user)
            await asyncio.to_thread(self._audit, result)
            return result
        async with self._lock():
            try:
                result = await self._attempt(tag, value, reason, source, confirm, auto, user)
            except asyncio.CancelledError:
                # The write may have reached the equipment: the attempt is audited all the same
                # (here, on the loop: a cancelled task cannot await the thread).
                self._audit(WriteResult(tag, value, None, None, "failed",
                                        f"{tag}: cancelled before it completed; whether it "
                                        f"reached the equipment is unknown", reason, source,
                                        user))
                raise
            await asyncio.to_thread(self._audit, result)
            return result

    async def _attempt(self, tag: str, value: Any, reason: str, source: str, confirm: Any,
                       auto: bool, user: str) -> WriteResult:
        def outcome(result: str, message: str, old: float | None = None,
                    read_back: float | None = None) -> WriteResult:
            return WriteResult(tag, value, old, read_back, result, message, reason, source,
                               user)

        limits = self.allow.get(tag)
        if limits is None:
            return outcome("refused", f"{tag}: not on the allow-list (writable: "
                                      f"{', '.join(sorted(self.allow)) or 'none'})")
        if isinstance(value, np.generic):
            value = value.item()
        if not isinstance(value, (bool, int, float)) or not math.isfinite(float(value)):
            return outcome("refused", f"{tag}: expected a finite number, got {value!r}")
        requested = float(value)
        if requested < limits.low:
            return outcome("refused", f"{tag}: {requested:g} is below the low limit "
                                      f"{limits.low:g}")
        if requested > limits.high:
            return outcome("refused", f"{tag}: {requested:g} is above the high limit "
                                      f"{limits.high:g}")
        old, old_note = await self._current(tag)
        if limits.max_rate is not None:
            refusal = self._rate_refusal(tag, requested, old, limits.max_rate)
            if refusal:
                return outcome("refused", refusal, old)
        if self.dry_run:
            was = "unknown" if old is None else f"{old:g}"
            return outcome("dry-run", f"dry run: would write {tag} = {requested:g} "
                                      f"(now {was}); nothing written", old)
        if not auto:
            asked = await self._confirmed(WriteRequest(tag, old, requested, limits, reason,
                                                       source, user), confirm)
            if asked is not True:
                return outcome("not-confirmed", asked, old)
            # The dialog may have stayed open while an engineer narrowed the limits.
            limits = self.allow.get(tag)
            if limits is None or not limits.low <= requested <= limits.high:
                now = ("no longer on the allow-list" if limits is None else
                       f"now outside the limits {limits.low:g}..{limits.high:g}")
                return outcome("refused", f"{tag}: {requested:g} is {now} (changed while the "
                                          f"confirmation was open); nothing sent", old)
        try:
            answer = await self.source.write(tag, value, timeout=self.readback_timeout)
        except Exception as exc:  # noqa: BLE001 - every failure is explained, none retried
            return outcome("failed", self._failure(tag, exc), old)
        read_back, message = await self._read_back(tag, answer, requested)
        self._last[tag] = (read_back if read_back is not None else requested, time.monotonic())
        if read_back is None:
            return outcome("failed", message, old)
        tol = limits.tolerance if limits.tolerance is not None else self.tolerance
        if tol is None:
            tol = 1e-9 * max(1.0, abs(limits.low), abs(limits.high))
        if abs(read_back - requested) > tol:
            return outcome("failed", f"{tag}: the equipment reads back {read_back:g}, not "
                                     f"{requested:g} (tolerance {tol:g})", old, read_back)
        note = f"; {old_note}" if old_note else ""
        return outcome("written", f"{tag}: {message}{note}", old, read_back)

    async def _current(self, tag: str) -> tuple[float | None, str]:
        """The tag's value before the write: read from the equipment, else the last one written
        (with a note on where it came from)."""
        read_values = getattr(self.source, "read_values", None)
        if read_values is not None:
            try:
                batch = await asyncio.wait_for(read_values([tag]), self.readback_timeout)
                if len(batch) and math.isfinite(float(batch.value[0])):
                    return float(batch.value[0]), ""
            except Exception as exc:  # noqa: BLE001 - unknown is a valid answer; noted
                note = f"old value unknown ({type(exc).__name__}: {exc})"
                last = self._last.get(tag)
                return (last[0] if last else None), note
        else:
            latest = self.source.read_latest()
            names = list(latest.tags)
            if tag in names:
                sel = latest.value[latest.tag == names.index(tag)]
                if len(sel) and math.isfinite(float(sel[-1])):
                    return float(sel[-1]), ""
        last = self._last.get(tag)
        return (last[0], "old value: the last one written") if last else (None, "")

    def _rate_refusal(self, tag: str, requested: float, old: float | None,
                      max_rate: float) -> str:
        if old is None:
            return (f"{tag}: max_rate {max_rate:g}/s cannot be checked: no current value is "
                    f"known (the source cannot read {tag} and nothing was written to it yet)")
        last = self._last.get(tag)
        # Elapsed time is known only when the equipment still holds our last write.
        if last is not None and abs(last[0] - old) <= 1e-12 * max(1.0, abs(old)):
            elapsed = max(time.monotonic() - last[1], 1e-6)
            since = f"in {elapsed:.3g} s since the last write"
        else:
            elapsed = FIRST_STEP_SECONDS
            since = f"as a step (counted as {FIRST_STEP_SECONDS:g} s)"
        rate = abs(requested - old) / elapsed
        if rate > max_rate:
            return (f"{tag}: changing {old:g} → {requested:g} {since} is {rate:.3g}/s, above "
                    f"max_rate {max_rate:g}/s")
        return ""

    async def _confirmed(self, request: WriteRequest, confirm: Any) -> bool | str:
        """True, or why not (as a message)."""
        ask = self.confirm if confirm is None else confirm
        if ask is True:
            return True
        if ask is None or ask is False:
            return (f"{request.tag}: not confirmed (no confirmation given; writes not from an "
                    f"automatic rule need confirm=)")
        try:
            answer = ask(request)
            if inspect.isawaitable(answer):
                answer = await answer
        except Exception as exc:  # noqa: BLE001 - a broken dialog means no
            return f"{request.tag}: not confirmed (the confirmation failed: {exc!r})"
        if answer is True:
            return True
        return f"{request.tag}: not confirmed (the confirmation answered {answer!r})"

    def _failure(self, tag: str, exc: Exception) -> str:
        from twinbench.io import WriteRejected

        if isinstance(exc, WriteRejected):
            said = exc.rejected.get(tag) or "; ".join(exc.rejected.values())
            return f"{tag}: the equipment refused the write ({said}); not retried"
        if isinstance(exc, TimeoutError):
            return f"{tag}: no answer from the equipment ({exc}); not retried"
        return f"{tag}: the write failed ({type(exc).__name__}: {exc}); not retried"

    async def _read_back(self, tag: str, answer: Any, requested: float
                         ) -> tuple[float | None, str]:
        if self._mqtt:
            command_id = answer.get(tag) if isinstance(answer, Mapping) else None
            return requested, (f"acknowledged by the equipment (command {command_id}); the "
                               f"acknowledgement is the read-back")
        got = answer.get(tag) if isinstance(answer, Mapping) else None
        if isinstance(got, (bool, int, float, np.number)):
            return float(got), f"written, read back {float(got):g}"
        try:  # no read-back in the write's answer: read the value now
            batch = await asyncio.wait_for(self.source.read_values([tag]), self.readback_timeout)
        except Exception as exc:  # noqa: BLE001 - reported, not retried
            return None, (f"{tag}: written, but reading it back failed ({type(exc).__name__}: "
                          f"{exc})")
        value = float(batch.value[0]) if len(batch) else math.nan
        if not math.isfinite(value):
            return None, f"{tag}: written, but the read-back has no value"
        return value, f"written, read back {value:g}"

    def _audit(self, result: WriteResult) -> None:
        def number(x: Any) -> Any:
            if isinstance(x, float) and not math.isfinite(x):
                return repr(x)  # JSON has no NaN
            return x if isinstance(x, (bool, int, float, str)) or x is None else repr(x)

        record = {
            "time": dt.datetime.now(dt.UTC).isoformat(timespec="microseconds"),
            "user": result.user or self.user, "tag": result.tag, "old": result.old,
            "requested": number(result.requested), "read_back": result.read_back,
            "result": result.result, "reason": result.reason, "source": result.source,
            "message": result.message, "dry_run": self.dry_run}
        line = (json.dumps(record, ensure_ascii=False) + "\n").encode()
        # O_APPEND: one write() per record, so concurrent writers never interleave a line.
        fd = os.open(self.audit_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)


def audit_log(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The records of an audit log, oldest first.

    A last line cut short (the process died while writing it) is skipped; any other line that is
    not a JSON record raises ValueError naming its line number.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> with tempfile.TemporaryDirectory() as d:
    ...     p = pathlib.Path(d, "audit.jsonl")
    ...     _ = p.write_text('{"tag": "speed_setpoint", "result": "written"}\\n{"tag": "sp')
    ...     audit_log(p)
    [{'tag': 'speed_setpoint', 'result': 'written'}]
    """
    text = Path(path).read_text(encoding="utf-8")
    lines = text.split("\n")
    complete = text.endswith("\n")
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines) and not complete:
                break
            raise ValueError(f"path: line {number} of {path} is not a JSON record") from None
        if not isinstance(record, dict):
            # bad data in the file, not a bad argument: ValueError as for undecodable lines
            raise ValueError(f"path: line {number} of {path} is not a JSON object")  # noqa: TRY004
        records.append(record)
    return records
