"""Fault specifications of the simulated plant: parse, validate, print.

A spec is ``kind[:arg[:arg]]``; several are joined by commas:

=========================  ======================================================================
``bearing_wear[:factor]``  bearing ``wear_rate`` = ``BEARING_FAULT_WEAR_RATE`` x factor (default 1)
``drift:<tag>:<rate>``     additive sensor drift on a measurement, units per simulated hour
``stuck:<tag>``            the measurement freezes at its value when the fault starts
``dropout:<tag>``          the measurement stops: OPC-UA status BadNoCommunication, MQTT omits it
``comm_loss[:seconds]``    no MQTT telemetry and every OPC-UA measurement BadCommunicationError,
                           for that many wall-clock seconds (default: until cleared)
=========================  ======================================================================

Tags are the asset's model outputs. During ``comm_loss`` the setpoints and the fault tag stay
writable (over OPC-UA and MQTT commands), so that the fault can be cleared.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

__all__ = ["FAULT_KINDS", "Fault", "format_faults", "parse_faults"]

#: Every fault kind and its syntax.
FAULT_KINDS = {
    "bearing_wear": "bearing_wear[:factor]",
    "drift": "drift:<tag>:<rate per simulated hour>",
    "stuck": "stuck:<tag>",
    "dropout": "dropout:<tag>",
    "comm_loss": "comm_loss[:seconds]",
}


@dataclass(frozen=True)
class Fault:
    """One parsed fault: ``kind``, the measurement ``tag`` (or None) and a number ``value``
    (wear factor, drift rate per simulated hour, comm-loss seconds; None when not given)."""

    kind: str
    tag: str | None = None
    value: float | None = None

    def __str__(self) -> str:
        parts = [self.kind]
        if self.tag is not None:
            parts.append(self.tag)
        if self.value is not None:
            parts.append(f"{self.value:g}")
        return ":".join(parts)


def _bad(spec: str, why: str, tags: Sequence[str]) -> ValueError:
    kinds = ", ".join(FAULT_KINDS.values())
    return ValueError(f"fault {spec!r}: {why}; valid kinds: {kinds}; valid tags: "
                      f"{', '.join(tags)}")


def _number(text: str, spec: str, what: str, tags: Sequence[str], positive: bool) -> float:
    try:
        value = float(text)
    except ValueError:
        raise _bad(spec, f"{what} {text!r} is not a number", tags) from None
    if not math.isfinite(value) or (positive and value <= 0):
        raise _bad(spec, f"{what} must be a {'positive' if positive else 'finite'} number, "
                         f"got {text}", tags)
    return value


def parse_faults(specs: str | Iterable[str] | None, tags: Sequence[str]) -> tuple[Fault, ...]:
    """Parse fault specs (a comma-separated string, or several) against the measurement `tags`.

    Parameters
    ----------
    specs : str or iterable of str or None
        ``""`` or None for no fault.
    tags : sequence of str
        The measurements a sensor fault may name.

    Returns
    -------
    tuple of Fault
        One per fault; a later spec of the same kind and tag replaces an earlier one.

    Raises
    ------
    ValueError
        Names the bad spec and lists the valid kinds and tags.

    Examples
    --------
    >>> parse_faults("drift:vibration:0.01,stuck:pressure", ["vibration", "pressure"])
    (Fault(kind='drift', tag='vibration', value=0.01), Fault(kind='stuck', tag='pressure', value=None))
    >>> format_faults(parse_faults(["bearing_wear", "comm_loss:5"], ["speed"]))
    'bearing_wear,comm_loss:5'
    >>> parse_faults("stuck:rpm", ["speed"])
    Traceback (most recent call last):
    ...
    ValueError: fault 'stuck:rpm': unknown tag 'rpm'; valid kinds: ...
    """
    if specs is None:
        return ()
    if isinstance(specs, str):
        specs = [specs]
    items: list[str] = []
    for s in specs:
        if not isinstance(s, str):
            raise TypeError(f"faults: expected strings, got {type(s).__name__}")
        items += [part.strip() for part in s.split(",") if part.strip()]
    faults: dict[tuple[str, str | None], Fault] = {}
    for spec in items:
        kind, *args = spec.split(":")
        if kind not in FAULT_KINDS:
            raise _bad(spec, f"unknown kind {kind!r}", tags)
        if kind in ("bearing_wear", "comm_loss"):
            if len(args) > 1:
                raise _bad(spec, f"expected {FAULT_KINDS[kind]}", tags)
            what = "factor" if kind == "bearing_wear" else "seconds"
            value = _number(args[0], spec, what, tags, positive=True) if args else None
            fault = Fault(kind, None, value)
        else:
            need = 2 if kind == "drift" else 1
            if len(args) != need:
                raise _bad(spec, f"expected {FAULT_KINDS[kind]}", tags)
            if args[0] not in tags:
                raise _bad(spec, f"unknown tag {args[0]!r}", tags)
            value = _number(args[1], spec, "rate", tags, positive=False) if kind == "drift" \
                else None
            fault = Fault(kind, args[0], value)
        faults[(fault.kind, fault.tag)] = fault
    return tuple(faults.values())


def format_faults(faults: Iterable[Fault]) -> str:
    """The canonical comma-separated spec of `faults` (``""`` for none)."""
    return ",".join(str(f) for f in faults)
