"""Tag maps: a twin's variable names mapped to equipment addresses.

An address is one of

- an OPC-UA NodeId in its text form — ``ns=2;s=Pump1.Speed``, ``i=2258``, ``ns=1;g=<guid>``,
  ``ns=1;b=<base64>`` — or a browse path of ``<namespace>:<BrowseName>`` steps from the Root
  folder, ``0:Objects/2:Plant/2:Pump1/2:Speed`` (:class:`OpcUaAddress`);
- an MQTT topic with an optional JSON field after ``#`` — ``plant/pump1/telemetry#temperature``,
  nested as ``#bearing.temps[0]`` — or a bare topic whose payload is a plain number
  (:class:`MqttAddress`).

A :class:`TagMap` keeps the names in order (the order is the tag index a
:class:`~twinbench.io.batch.Batch` uses) with optional ``units`` and ``long_name`` per tag, and
loads from and saves to YAML or JSON files.

Examples
--------
>>> tm = tag_map({"speed": "ns=2;s=Pump1.Speed",
...               "temp": {"address": "0:Objects/2:Plant/2:Pump1/2:Temp", "units": "degC"}})
>>> tm.scheme, tm.names, tm.index("temp"), tm.units
('opc.tcp', ('speed', 'temp'), 1, {'temp': 'degC'})
>>> tm["speed"].namespace, tm["speed"].identifier
(2, 'Pump1.Speed')
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import os
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar

__all__ = ["MqttAddress", "OpcUaAddress", "TagMap", "parse_address", "tag_map", "topic_filter",
           "topic_matches"]

SCHEMES = ("opc.tcp", "mqtt")
# URL schemes that share an address form with one of SCHEMES.
_SCHEME_ALIASES = {"opc.tcp": "opc.tcp", "opcua": "opc.tcp", "mqtt": "mqtt", "mqtts": "mqtt"}
_ENTRY_KEYS = ("address", "units", "long_name")

_NODE_ID = re.compile(r"^(?:ns=(?P<ns>[^;]*);)?(?P<kind>[isgb])=(?P<ident>.*)$", re.DOTALL)
_GUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
_BROWSE_STEP = re.compile(r"^(?P<ns>\d+):(?P<name>.+)$", re.DOTALL)
_FIELD_STEP = re.compile(r"^(?P<name>[^\[\]]*)(?P<indices>(?:\[\d+\])*)$")
_INDEX = re.compile(r"\[(\d+)\]")


@dataclasses.dataclass(frozen=True, slots=True)
class OpcUaAddress:
    """An OPC-UA node, by NodeId or by browse path (exactly one of the two).

    Use :meth:`parse` to read the text forms; ``str()`` gives the canonical text back.

    Attributes
    ----------
    namespace : int
        NodeId namespace index (0 when the text omits ``ns=``); None for a browse path.
    kind : str
        NodeId identifier type: ``"i"`` numeric, ``"s"`` string, ``"g"`` GUID, ``"b"`` opaque
        (base64); None for a browse path.
    identifier : int or str
        The identifier (int for ``"i"``, text otherwise); None for a browse path.
    browse_path : tuple of (int, str)
        ``(namespace, BrowseName)`` steps from the Root folder; None for a NodeId.

    Examples
    --------
    >>> OpcUaAddress.parse("i=2258")
    OpcUaAddress('i=2258')
    >>> OpcUaAddress.parse("0:Objects/2:Plant/2:Speed").browse_path
    ((0, 'Objects'), (2, 'Plant'), (2, 'Speed'))
    """

    namespace: int | None = None
    kind: str | None = None
    identifier: int | str | None = None
    browse_path: tuple[tuple[int, str], ...] | None = None
    scheme: ClassVar[str] = "opc.tcp"

    def __post_init__(self) -> None:
        # Direct construction gets the same checks as parsing: round-trip through the text form.
        if (self.browse_path is None) == (self.kind is None):
            raise ValueError("OpcUaAddress: give either namespace/kind/identifier or browse_path")
        if self.browse_path is not None:
            if self.namespace is not None or self.identifier is not None or not self.browse_path:
                raise ValueError("browse_path: expected a non-empty tuple of (namespace, name) "
                                 "steps and no NodeId fields")
            for step in self.browse_path:
                if (not isinstance(step, tuple) or len(step) != 2 or isinstance(step[0], bool)
                        or not isinstance(step[0], int) or not isinstance(step[1], str)
                        or "/" in step[1]):
                    raise ValueError(f"browse_path: step {step!r} is not (namespace, name)")
        if self.kind not in (None, "i", "s", "g", "b"):
            raise ValueError(f"kind: expected 'i', 's', 'g' or 'b', got {self.kind!r}")
        if self.kind is not None and self.namespace is None:
            object.__setattr__(self, "namespace", 0)
        # Normalise (GUID case, numeric text) to what the text form reads back, so equal
        # addresses compare equal however they were built.
        for name, value in _opcua_fields(str(self)).items():
            object.__setattr__(self, name, value)

    @classmethod
    def parse(cls, text: str) -> OpcUaAddress:
        """Read a NodeId (``ns=<n>;<i|s|g|b>=<id>``, ``ns=`` optional) or a browse path."""
        if not isinstance(text, str):
            raise TypeError(f"expected an OPC-UA address as a string, got {type(text).__name__}")
        return cls(**_opcua_fields(text))

    @property
    def node_id(self) -> str | None:
        """The NodeId text (``ns=`` left out for namespace 0), or None for a browse path."""
        if self.browse_path is not None:
            return None
        prefix = f"ns={self.namespace};" if self.namespace else ""
        return f"{prefix}{self.kind}={self.identifier}"

    def __str__(self) -> str:
        if self.browse_path is not None:
            return "/".join(f"{ns}:{name}" for ns, name in self.browse_path)
        return self.node_id  # type: ignore[return-value]

    def __repr__(self) -> str:
        return f"OpcUaAddress({str(self)!r})"


def _opcua_fields(text: str) -> dict[str, Any]:
    match = _NODE_ID.match(text)
    if match:
        return _parse_node_id(text, match)
    if _BROWSE_STEP.match(text.split("/", 1)[0]):
        return _parse_browse_path(text)
    raise ValueError(f"{text!r} is not an OPC-UA NodeId (ns=<n>;i=|s=|g=|b=<id>, or i=<n>) "
                     f"nor a browse path (<ns>:<Name>/<ns>:<Name>/...)")


def _parse_node_id(text: str, match: re.Match[str]) -> dict[str, Any]:
    ns_text, kind, ident = match["ns"], match["kind"], match["ident"]
    namespace = 0
    if ns_text is not None:
        if not ns_text.isdigit() or int(ns_text) > 0xFFFF:
            raise ValueError(f"{text!r}: namespace index must be an integer in [0, 65535], "
                             f"got {ns_text!r}")
        namespace = int(ns_text)
    identifier: int | str = ident
    if kind == "i":
        if not ident.isdigit() or int(ident) > 0xFFFFFFFF:
            raise ValueError(f"{text!r}: a numeric identifier (i=) must be an integer in "
                             f"[0, 4294967295], got {ident!r}")
        identifier = int(ident)
    elif kind == "s":
        if not ident:
            raise ValueError(f"{text!r}: a string identifier (s=) must not be empty")
    elif kind == "g":
        if not _GUID.match(ident):
            raise ValueError(f"{text!r}: a GUID identifier (g=) must read "
                             f"xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx in hex, got {ident!r}")
        identifier = ident.lower()
    else:
        try:
            if not ident or not base64.b64decode(ident, validate=True):
                raise ValueError
        except (binascii.Error, ValueError):
            raise ValueError(f"{text!r}: an opaque identifier (b=) must be non-empty base64, "
                             f"got {ident!r}") from None
    return {"namespace": namespace, "kind": kind, "identifier": identifier}


def _parse_browse_path(text: str) -> dict[str, Any]:
    steps = []
    for step in text.split("/"):
        match = _BROWSE_STEP.match(step)
        if not match or int(match["ns"]) > 0xFFFF:
            raise ValueError(f"{text!r}: browse path step {step!r} must read <ns>:<BrowseName> "
                             f"with a namespace index in [0, 65535]")
        steps.append((int(match["ns"]), match["name"]))
    return {"browse_path": tuple(steps)}


@dataclasses.dataclass(frozen=True, slots=True)
class MqttAddress:
    """An MQTT topic, with the path of a JSON field in its payload or None for a plain number.

    A tag address names one topic, so the wildcards ``+`` and ``#`` are refused in it; they belong
    in subscription patterns (:func:`topic_filter`), which a source derives from its tags. ``#``
    in the address text separates the topic from the field path. A field path is names joined by
    ``.`` with list indices in brackets, ``bearing.temps[0]``; a name cannot hold ``.``, ``[``, ``]``.

    Examples
    --------
    >>> a = MqttAddress.parse("plant/pump1/telemetry#bearing.temps[1]")
    >>> a.topic, a.field
    ('plant/pump1/telemetry', ('bearing', 'temps', 1))
    >>> a.get({"bearing": {"temps": [40.5, 41.0]}})
    41.0
    >>> str(MqttAddress.parse("plant/pump1/speed"))
    'plant/pump1/speed'
    """

    topic: str
    field: tuple[str | int, ...] | None = None
    scheme: ClassVar[str] = "mqtt"

    def __post_init__(self) -> None:
        if not isinstance(self.topic, str):
            raise TypeError(f"topic: expected a string, got {type(self.topic).__name__}")
        _check_topic(self.topic, wildcards=False, what="topic")
        if self.field is not None:
            if not isinstance(self.field, tuple) or not self.field:
                raise TypeError("field: expected a non-empty tuple of names and list indices, or None")
            for step in self.field:
                if isinstance(step, bool) or not (
                        (isinstance(step, int) and step >= 0)
                        or (isinstance(step, str) and step and not set(step) & set(".[]"))):
                    raise ValueError(f"field: step {step!r} is not a name (no '.', '[', ']') "
                                     f"or a list index >= 0")

    @classmethod
    def parse(cls, text: str) -> MqttAddress:
        """Read ``<topic>`` or ``<topic>#<field path>``."""
        if not isinstance(text, str):
            raise TypeError(f"expected an MQTT address as a string, got {type(text).__name__}")
        topic, sep, field_text = text.partition("#")
        _check_topic(topic, wildcards=False, what=f"{text!r}: topic")
        field = _parse_field(field_text, text) if sep else None
        return cls(topic=topic, field=field)

    def get(self, payload: Any) -> Any:
        """The field's value in a decoded JSON payload (the payload itself when there is no field).

        Raises KeyError, IndexError or TypeError when the payload has no such field.
        """
        value = payload
        for step in self.field or ():
            if isinstance(step, int):
                if not isinstance(value, list):
                    raise TypeError(f"{self}: expected a list at [{step}], got {type(value).__name__}")
                value = value[step]
            else:
                if not isinstance(value, dict):
                    raise TypeError(f"{self}: expected an object at {step!r}, "
                                    f"got {type(value).__name__}")
                value = value[step]
        return value

    def __str__(self) -> str:
        if self.field is None:
            return self.topic
        text = ""
        for step in self.field:
            text += f"[{step}]" if isinstance(step, int) else (f".{step}" if text else step)
        return f"{self.topic}#{text}"

    def __repr__(self) -> str:
        return f"MqttAddress({str(self)!r})"


Address = OpcUaAddress | MqttAddress


def _check_topic(topic: str, *, wildcards: bool, what: str) -> None:
    if not topic:
        raise ValueError(f"{what} must not be empty")
    if "\x00" in topic:
        raise ValueError(f"{what} must not contain a NUL character")
    if len(topic.encode("utf-8")) > 65535:
        raise ValueError(f"{what} is longer than MQTT's 65535 bytes")
    levels = topic.split("/")
    for i, level in enumerate(levels):
        if not wildcards and ("+" in level or "#" in level):
            raise ValueError(f"{what} {topic!r} contains a wildcard (+ or #); a tag address names one "
                             f"topic (wildcards belong in subscription patterns)")
        if "+" in level and level != "+":
            raise ValueError(f"{what} {topic!r}: + must fill a whole topic level")
        if "#" in level and (level != "#" or i != len(levels) - 1):
            raise ValueError(f"{what} {topic!r}: # must be the whole last topic level")


def _parse_field(field_text: str, text: str) -> tuple[str | int, ...]:
    if not field_text:
        raise ValueError(f"{text!r}: empty JSON field path after '#'")
    steps: list[str | int] = []
    for i, piece in enumerate(field_text.split(".")):
        match = _FIELD_STEP.match(piece)
        # Only the first piece may be a bare index (a payload that is a JSON list).
        if not match or (not match["name"] and (i > 0 or not match["indices"])):
            raise ValueError(f"{text!r}: bad JSON field path {field_text!r} at {piece!r} "
                             f"(expected names joined by '.', list indices as [n])")
        if match["name"]:
            steps.append(match["name"])
        steps.extend(int(n) for n in _INDEX.findall(match["indices"]))
    return tuple(steps)


def topic_filter(text: str) -> str:
    """Validate an MQTT subscription pattern (``+`` one whole level, ``#`` the whole last level).

    Examples
    --------
    >>> topic_filter("plant/+/telemetry")
    'plant/+/telemetry'
    >>> topic_filter("plant/pu#")
    Traceback (most recent call last):
    ...
    ValueError: topic filter 'plant/pu#': # must be the whole last topic level
    """
    if not isinstance(text, str):
        raise TypeError(f"text: expected a topic filter string, got {type(text).__name__}")
    _check_topic(text, wildcards=True, what="topic filter")
    return text


def topic_matches(pattern: str, topic: str) -> bool:
    """Whether ``topic`` matches the subscription ``pattern`` (MQTT 3.1.1 / 5 rules).

    Topics starting with ``$`` match only patterns that start with the same level.

    Examples
    --------
    >>> topic_matches("plant/+/telemetry", "plant/pump1/telemetry"), topic_matches("plant/#", "plant")
    (True, True)
    """
    p_levels, t_levels = topic_filter(pattern).split("/"), topic.split("/")
    if topic.startswith("$") and p_levels[0] in ("+", "#"):
        return False
    for i, level in enumerate(p_levels):
        if level == "#":
            return True
        if i >= len(t_levels) or (level != "+" and level != t_levels[i]):
            return False
    return len(p_levels) == len(t_levels)


def _scheme(scheme: str | None) -> str | None:
    if scheme is None:
        return None
    name = str(scheme).split("://", 1)[0].lower()
    if name not in _SCHEME_ALIASES:
        raise ValueError(f"scheme: expected one of {list(_SCHEME_ALIASES)}, got {scheme!r}")
    return _SCHEME_ALIASES[name]


def _infer_scheme(text: str) -> str:
    # NodeIds and browse-path steps have shapes no sensible MQTT topic has.
    if _NODE_ID.match(text) or _BROWSE_STEP.match(text.split("/", 1)[0]):
        return "opc.tcp"
    return "mqtt"


def parse_address(text: str, scheme: str | None = None) -> Address:
    """Parse an address for ``scheme`` ("opc.tcp" or "mqtt"; inferred from the text when None).

    Inference: text shaped like a NodeId (``ns=…;``, ``i=…``, ``s=…``) or a browse path
    (``<n>:Name/…``) is OPC-UA; anything else is MQTT. Pass ``scheme`` when that guess is wrong.

    Examples
    --------
    >>> parse_address("ns=2;s=Pump1.Speed")
    OpcUaAddress('ns=2;s=Pump1.Speed')
    >>> parse_address("plant/pump1/telemetry#temperature")
    MqttAddress('plant/pump1/telemetry#temperature')
    """
    if not isinstance(text, str):
        raise TypeError(f"text: expected an address string, got {type(text).__name__}")
    chosen = _scheme(scheme) or _infer_scheme(text)
    return OpcUaAddress.parse(text) if chosen == "opc.tcp" else MqttAddress.parse(text)


class TagMap(Mapping[str, Address]):
    """Ordered mapping of tag name to address, all of one scheme, with optional units and names.

    The position of a name in :attr:`names` is its tag index in a
    :class:`~twinbench.io.batch.Batch`. Build one with :func:`tag_map`.

    Parameters
    ----------
    addresses : mapping of str to OpcUaAddress or MqttAddress
    units : mapping of str to str, optional
        Units per tag name (CF ``units``), for tags that have them.
    long_names : mapping of str to str, optional
        Descriptive names per tag name (CF ``long_name``).

    Examples
    --------
    >>> tm = TagMap({"speed": MqttAddress("plant/pump1/speed")}, units={"speed": "rpm"})
    >>> list(tm), tm.index("speed"), tm.scheme
    (['speed'], 0, 'mqtt')
    """

    __slots__ = ("_addresses", "_index", "_long_names", "_scheme", "_units")

    def __init__(self, addresses: Mapping[str, Address], units: Mapping[str, str] | None = None,
                 long_names: Mapping[str, str] | None = None) -> None:
        if not isinstance(addresses, Mapping):
            raise TypeError(f"addresses: expected a mapping of name to address, "
                            f"got {type(addresses).__name__}")
        schemes = set()
        for name, address in addresses.items():
            _check_name(name)
            if not isinstance(address, (OpcUaAddress, MqttAddress)):
                raise TypeError(f"addresses: tag {name!r} maps to {type(address).__name__}, "
                                f"expected OpcUaAddress or MqttAddress")
            schemes.add(address.scheme)
        if len(schemes) > 1:
            raise ValueError(f"addresses: a tag map holds one scheme, got {sorted(schemes)}")
        self._addresses = dict(addresses)
        self._index = {name: i for i, name in enumerate(self._addresses)}
        self._scheme = schemes.pop() if schemes else None
        self._units = _text_per_tag(units, self._index, "units")
        self._long_names = _text_per_tag(long_names, self._index, "long_names")

    def __getitem__(self, name: str) -> Address:
        return self._addresses[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._addresses)

    def __len__(self) -> int:
        return len(self._addresses)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, TagMap):
            return NotImplemented
        return (list(self.items()) == list(other.items()) and self._units == other._units
                and self._long_names == other._long_names)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"TagMap({{{', '.join(f'{n!r}: {str(a)!r}' for n, a in self.items())}}})"

    @property
    def names(self) -> tuple[str, ...]:
        """Tag names in order: the ``tags`` of the batches a source built on this map produces."""
        return tuple(self._addresses)

    @property
    def scheme(self) -> str | None:
        """``"opc.tcp"`` or ``"mqtt"`` (None for an empty map)."""
        return self._scheme

    @property
    def units(self) -> dict[str, str]:
        """Units of the tags that have them (a copy)."""
        return dict(self._units)

    @property
    def long_names(self) -> dict[str, str]:
        """Descriptive names of the tags that have them (a copy)."""
        return dict(self._long_names)

    def index(self, name: str) -> int:
        """Position of ``name`` in :attr:`names`; KeyError naming the tag when absent."""
        try:
            return self._index[name]
        except (KeyError, TypeError):
            raise KeyError(f"name: no tag {name!r} in this tag map") from None

    def to_dict(self) -> dict[str, Any]:
        """The file form: ``{"scheme": ..., "tags": {name: address or {address, units, long_name}}}``."""
        tags: dict[str, Any] = {}
        for name, address in self.items():
            extra = {key: value for key, value in (("units", self._units.get(name)),
                                                   ("long_name", self._long_names.get(name)))
                     if value is not None}
            tags[name] = {"address": str(address), **extra} if extra else str(address)
        return {"scheme": self._scheme, "tags": tags}

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the map to a ``.yaml``/``.yml`` or ``.json`` file; :func:`tag_map` reads it back.

        Examples
        --------
        >>> import tempfile, pathlib
        >>> tm = tag_map({"t": "plant/pump1/telemetry#temperature"})
        >>> with tempfile.TemporaryDirectory() as d:
        ...     tag_map(tm.save(pathlib.Path(d) / "tags.yaml")) == tm
        True
        """
        target = Path(path)
        suffix = target.suffix.lower()
        if suffix in (".yaml", ".yml"):
            import yaml

            text = yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)
        elif suffix == ".json":
            text = json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n"
        else:
            raise ValueError(f"path: expected a .yaml, .yml or .json file, got {str(path)!r}")
        target.write_text(text, encoding="utf-8")
        return target


def _check_name(name: Any) -> None:
    if not isinstance(name, str) or not name.strip() or name != name.strip():
        raise ValueError(f"tag name {name!r}: expected a non-empty string without surrounding spaces")


def _text_per_tag(mapping: Mapping[str, str] | None, index: Mapping[str, int],
                  arg: str) -> dict[str, str]:
    result = dict(mapping or {})
    for name, text in result.items():
        if name not in index:
            raise KeyError(f"{arg}: tag {name!r} is not in the tag map")
        if not isinstance(text, str):
            raise TypeError(f"{arg}: tag {name!r}: expected a string, got {type(text).__name__}")
    return result


def tag_map(tags: Mapping[str, Any] | list[Any] | str | os.PathLike[str] | TagMap,
            scheme: str | None = None) -> TagMap:
    """Build a :class:`TagMap` from a mapping, a list of entries, or a YAML/JSON file.

    Parameters
    ----------
    tags : mapping, list, path or TagMap
        ``{name: "address"}`` or ``{name: {"address": ..., "units": ..., "long_name": ...}}``;
        or a list of ``{"name": ..., "address": ..., ...}`` entries; or the path of a ``.yaml``,
        ``.yml`` or ``.json`` file holding either form, optionally wrapped as
        ``{"scheme": ..., "tags": ...}`` (the form :meth:`TagMap.save` writes). Duplicate names
        (also duplicate keys in a file) and unknown keys are refused.
    scheme : {"opc.tcp", "mqtt"}, optional
        How to read addresses (``mqtts`` is taken as ``mqtt``). Default: the file's ``scheme``,
        else inferred from each address (see :func:`parse_address`).

    Errors name the file (when there is one) and the offending tag.

    Examples
    --------
    >>> tm = tag_map([{"name": "speed", "address": "plant/p1#speed", "units": "rpm"}])
    >>> tm["speed"].field, tm.units
    (('speed',), {'speed': 'rpm'})
    >>> tag_map({"speed": "ns=two;i=5"})
    Traceback (most recent call last):
    ...
    ValueError: tag 'speed': 'ns=two;i=5': namespace index must be an integer in [0, 65535], got 'two'
    """
    chosen = _scheme(scheme)
    if isinstance(tags, TagMap):
        if chosen is not None and tags.scheme not in (None, chosen):
            raise ValueError(f"scheme: the tag map is {tags.scheme}, not {chosen}")
        return tags
    where = ""
    if isinstance(tags, (str, os.PathLike)):
        where = f"{os.fspath(tags)}: "
        tags = _load(Path(tags))
    try:
        return _build(tags, chosen)
    except (ValueError, TypeError, KeyError) as exc:
        message = exc.args[0] if exc.args else str(exc)
        raise type(exc)(f"{where}{message}") from None


def _build(data: Any, scheme: str | None) -> TagMap:
    if isinstance(data, Mapping) and "tags" in data and isinstance(data["tags"], (Mapping, list)) \
            and not (isinstance(data["tags"], Mapping) and "address" in data["tags"]):
        # The wrapped file form; a lone tag named "tags" is an entry, recognised by its address.
        unknown = sorted(set(data) - {"scheme", "tags"})
        if unknown:
            raise ValueError(f"unknown top-level keys {unknown} (expected 'scheme', 'tags')")
        file_scheme = _scheme(data.get("scheme"))
        if scheme is not None and file_scheme not in (None, scheme):
            raise ValueError(f"scheme: the file says {file_scheme}, the argument {scheme}")
        scheme = scheme or file_scheme
        data = data["tags"]
    if isinstance(data, list):
        pairs = []
        for i, entry in enumerate(data):
            if not isinstance(entry, Mapping) or "name" not in entry:
                raise ValueError(f"entry {i}: expected a mapping with a 'name' key, got {entry!r}")
            pairs.append((entry["name"], {k: v for k, v in entry.items() if k != "name"}))
    elif isinstance(data, Mapping):
        pairs = list(data.items())
    else:
        raise TypeError(f"tags: expected a mapping of name to address, a list of entries or a file "
                        f"path, got {type(data).__name__}")
    addresses: dict[str, Address] = {}
    units: dict[str, str] = {}
    long_names: dict[str, str] = {}
    for name, entry in pairs:
        if isinstance(name, str) and name in addresses:
            raise ValueError(f"tag {name!r}: duplicate tag name")
        try:
            _check_name(name)
            address, unit, long_name = _entry(entry)
            addresses[name] = parse_address(address, scheme)
        except (ValueError, TypeError) as exc:
            raise type(exc)(f"tag {name!r}: {exc}") from None
        if unit is not None:
            units[name] = unit
        if long_name is not None:
            long_names[name] = long_name
    return TagMap(addresses, units=units, long_names=long_names)


def _entry(entry: Any) -> tuple[str, str | None, str | None]:
    if isinstance(entry, str):
        return entry, None, None
    if not isinstance(entry, Mapping):
        raise TypeError(f"expected an address string or a mapping with 'address', "
                        f"got {type(entry).__name__}")
    unknown = sorted(set(entry) - set(_ENTRY_KEYS))
    if unknown:
        raise ValueError(f"unknown keys {unknown} (expected {list(_ENTRY_KEYS)})")
    if "address" not in entry:
        raise ValueError("missing 'address'")
    for key in _ENTRY_KEYS:
        if key in entry and not isinstance(entry[key], str):
            raise TypeError(f"{key!r}: expected a string, got {type(entry[key]).__name__}")
    return entry["address"], entry.get("units"), entry.get("long_name")


def _load(path: Path) -> Any:
    suffix = path.suffix.lower()
    if suffix not in (".yaml", ".yml", ".json"):
        raise ValueError(f"{path}: expected a .yaml, .yml or .json tag map file")
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise OSError(f"{path}: cannot read the tag map ({exc.strerror or exc})") from None
    if suffix == ".json":
        try:
            return json.loads(text, object_pairs_hook=_unique_json_object)
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from None
    import yaml

    try:
        return yaml.load(text, Loader=_unique_key_loader())  # a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: not valid YAML ({exc})") from None


def _unique_json_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate key {key!r}")
        result[key] = value
    return result


def _unique_key_loader() -> type:
    # PyYAML keeps the last of duplicate keys silently; a tag map must refuse them.
    import yaml

    class UniqueKeyLoader(yaml.SafeLoader):
        def construct_mapping(self, node: Any, deep: bool = False) -> dict[Any, Any]:
            seen = set()
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=deep)
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {key!r}", key_node.start_mark)
                seen.add(key)
            return super().construct_mapping(node, deep=deep)

    return UniqueKeyLoader
