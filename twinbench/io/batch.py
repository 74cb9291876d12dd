"""The columnar batch: the unit a source hands to the twin.

A :class:`Batch` holds samples of many tags as four numpy columns of equal length — ``tag`` (int32
index into the batch's ``tags`` tuple of names), ``time`` (datetime64[ns], UTC), ``value`` (float64)
and ``quality`` (uint8 :class:`Quality` code) — never one Python object per sample. Every operation
here (construction, concatenation, sorting, selection, the wide xarray view) is vectorised.

Examples
--------
>>> import numpy as np
>>> b = Batch([0, 1, 0], np.array(["2026-01-01T00:00:00", "2026-01-01T00:00:00",
...           "2026-01-01T00:00:01"], dtype="datetime64[s]"), [1.0, 20.5, 1.5], tags=("speed", "temp"))
>>> len(b), b.time.dtype, b.quality.tolist()
(3, dtype('<M8[ns]'), [0, 0, 0])
>>> b.select("speed").value.tolist()
[1.0, 1.5]
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["Batch", "Quality", "concat", "quality_from_opcua_status"]

_NS = np.dtype("datetime64[ns]")


class Quality(enum.IntEnum):
    """Quality code of one sample (stored as uint8 in :attr:`Batch.quality`).

    ``GOOD``, ``UNCERTAIN`` and ``BAD`` follow the OPC-UA severities. The specific reasons let the
    twin tell *why* a value is unusable without keeping a status object per sample:

    - ``GAP``: the connection was lost; a reconnecting source inserts one NaN sample per tag at the
      time the gap began (see :meth:`Batch.gap`).
    - ``BAD_DECODE``: the payload could not be turned into a number; the value is NaN.
    - ``NO_SAMPLE``: only in the wide :meth:`Batch.to_dataset` view, where a tag has no sample at a
      time another tag has one.

    Examples
    --------
    >>> Quality.from_opcua_status(0x40000000) is Quality.UNCERTAIN
    True
    >>> Quality.GAP.is_bad
    True
    """

    GOOD = 0
    UNCERTAIN = 1
    BAD = 2
    GAP = 3
    BAD_DECODE = 4
    NO_SAMPLE = 255

    @property
    def is_bad(self) -> bool:
        """True for every code whose value must not be used."""
        return self >= Quality.BAD

    @classmethod
    def from_opcua_status(cls, code: int) -> Quality:
        """Map an OPC-UA StatusCode (32-bit unsigned) onto a quality code.

        The top two bits are the severity: ``00`` good, ``01`` uncertain, ``10``/``11`` bad.
        BadNotConnected, BadNoCommunication, BadServerNotConnected, BadCommunicationError and
        BadConnectionClosed become ``GAP``, since they mean the value never arrived.

        Parameters
        ----------
        code : int
            The StatusCode value, 0 <= code < 2**32.

        Examples
        --------
        >>> Quality.from_opcua_status(0), Quality.from_opcua_status(0x80000000)
        (<Quality.GOOD: 0>, <Quality.BAD: 2>)
        >>> Quality.from_opcua_status(0x808A0000)  # BadNotConnected
        <Quality.GAP: 3>
        """
        if isinstance(code, bool) or not isinstance(code, (int, np.integer)):
            raise TypeError(f"code: expected an int OPC-UA StatusCode, got {type(code).__name__}")
        if not 0 <= int(code) < 2**32:
            raise ValueError(f"code: expected 0 <= code < 2**32, got {code}")
        return cls(int(_opcua_quality(np.array([code], dtype=np.uint32))[0]))


# OPC-UA StatusCodes (upper 16 bits) that mean "no connection to the data", shown as a gap.
_OPCUA_GAP_CODES = np.array([
    0x808A,  # BadNotConnected
    0x80310000 >> 16,  # BadNoCommunication
    0x800D,  # BadServerNotConnected
    0x8005,  # BadCommunicationError
    0x80AE,  # BadConnectionClosed
], dtype=np.uint32)
# A lookup table for every valid quality code: validation is one indexing operation.
_VALID_CODE = np.zeros(256, dtype=bool)
_VALID_CODE[[int(q) for q in Quality]] = True


def _opcua_quality(codes: np.ndarray) -> np.ndarray:
    severity = (codes >> 30).astype(np.uint8)
    quality = np.where(severity == 0, Quality.GOOD,
                       np.where(severity == 1, Quality.UNCERTAIN, Quality.BAD)).astype(np.uint8)
    quality[np.isin(codes >> 16, _OPCUA_GAP_CODES)] = Quality.GAP
    return quality


def quality_from_opcua_status(codes: Any) -> np.ndarray:
    """Vectorised :meth:`Quality.from_opcua_status`: an array of StatusCodes to uint8 codes.

    Parameters
    ----------
    codes : array_like of int
        OPC-UA StatusCodes, each 0 <= code < 2**32.

    Examples
    --------
    >>> quality_from_opcua_status([0, 0x40000000, 0x80000000, 0x808A0000]).tolist()
    [0, 1, 2, 3]
    """
    arr = np.asarray(codes)
    if arr.dtype.kind not in "iu":
        raise TypeError(f"codes: expected integer StatusCodes, got dtype {arr.dtype}")
    if arr.size and (arr.min() < 0 or arr.max() >= 2**32):
        raise ValueError("codes: expected StatusCodes in [0, 2**32)")
    return _opcua_quality(arr.astype(np.uint32))


def _readonly(arr: np.ndarray) -> np.ndarray:
    # Freeze a view (O(1)), never the array itself: it may be the caller's, or a pandas object's.
    arr = arr.view()
    arr.flags.writeable = False
    return arr


def _as_time(time: Any, name: str = "time") -> np.ndarray:
    """Coerce times to datetime64[ns] UTC: numpy datetimes (naive = UTC), pandas, ISO strings."""
    if type(time).__module__.partition(".")[0] == "pandas" or isinstance(time, str):
        return _as_time_pandas(time, name)
    arr = np.asarray(time)
    if arr.dtype.kind == "M":
        return arr.astype(_NS)
    if arr.dtype.kind in "OUS":
        return _as_time_pandas(arr.item() if arr.ndim == 0 else arr, name)
    if arr.size == 0 and arr.dtype.kind == "f":  # np.asarray([]) is float64: no times at all
        return np.empty(arr.shape, _NS)
    raise TypeError(f"{name}: expected datetime64 values, timezone-aware timestamps or ISO strings, "
                    f"got dtype {arr.dtype} (integers are refused: their unit would be a guess)")


def _as_time_pandas(time: Any, name: str) -> np.ndarray:
    import pandas as pd

    scalar = np.ndim(time) == 0 and not isinstance(time, (pd.Index, pd.Series))
    try:
        converted = pd.to_datetime([time] if scalar else time, utc=True)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{name}: could not read times as UTC timestamps ({exc})") from None
    arr = np.asarray(converted.tz_convert("UTC").tz_localize(None)
                     if isinstance(converted, pd.DatetimeIndex)
                     else converted.dt.tz_convert("UTC").dt.tz_localize(None)).astype(_NS)
    return arr[0] if scalar else arr


def _as_tags(tags: Any) -> tuple[str, ...]:
    if isinstance(tags, str) or not isinstance(tags, Iterable):
        raise TypeError(f"tags: expected a sequence of tag names, got {type(tags).__name__}")
    names = tuple(tags)
    for name in names:
        if not isinstance(name, str) or not name:
            raise TypeError(f"tags: expected non-empty strings, got {name!r}")
    if len(set(names)) != len(names):
        dupes = sorted({n for n in names if names.count(n) > 1})
        raise ValueError(f"tags: duplicate tag names {dupes}")
    return names


def _as_tag_index(tag: Any, tags: tuple[str, ...]) -> np.ndarray:
    arr = np.asarray(tag)
    if arr.size == 0 and arr.dtype.kind == "f":  # np.asarray([]) is float64
        arr = arr.astype(np.int32)
    if arr.dtype.kind in "OUS":
        # Names: map the few distinct names, not every sample.
        uniq, inverse = np.unique(arr.astype(str), return_inverse=True)
        position = {n: i for i, n in enumerate(tags)}
        unknown = [str(u) for u in uniq if u not in position]
        if unknown:
            raise ValueError(f"tag: names {unknown} are not in tags {list(tags)}")
        lut = np.array([position[str(u)] for u in uniq], dtype=np.int32)
        return lut[inverse.reshape(arr.shape)]
    if arr.dtype.kind not in "iu":
        raise TypeError(f"tag: expected integer indices into tags or tag names, got dtype {arr.dtype}")
    if arr.size and (arr.min() < 0 or arr.max() >= len(tags)):
        raise ValueError(f"tag: indices must lie in [0, {len(tags)}) for {len(tags)} tags, "
                         f"got range [{arr.min()}, {arr.max()}]")
    return arr.astype(np.int32, copy=False)


@dataclasses.dataclass(frozen=True, slots=True, eq=False, repr=False)
class Batch:
    """Samples of many tags as four numpy columns of equal length.

    Columns are read-only views after construction; operations return new batches. Like
    ``np.asarray``, a column shares memory with the array passed in when that array already has
    the column's dtype (no copy is made), so a source must not reuse such an array afterwards.

    Parameters
    ----------
    tag : array_like of int or str
        Per sample, the index of its tag in ``tags`` (stored as int32); tag names are accepted too.
    time : array_like
        Per sample, its time: datetime64 of any unit (naive means UTC), timezone-aware pandas
        timestamps or ISO strings (converted to UTC). Stored as datetime64[ns].
    value : array_like of float
        Per sample, its value (stored as float64; NaN where there is none).
    quality : array_like of int, optional
        Per sample, a :class:`Quality` code (stored as uint8). Default: all ``GOOD``.
    tags : sequence of str
        The tag names the ``tag`` column indexes (keyword only).

    Examples
    --------
    >>> b = Batch(["b", "a"], ["2026-01-01T01:00:00+01:00", "2026-01-01T00:00:01Z"], [2, 1],
    ...           tags=("a", "b"))
    >>> b.tag.tolist(), str(b.time[0])
    ([1, 0], '2026-01-01T00:00:00.000000000')
    >>> b.sorted().value.tolist()
    [2.0, 1.0]
    """

    tag: np.ndarray
    time: np.ndarray
    value: np.ndarray
    quality: np.ndarray | None = None
    tags: tuple[str, ...] = dataclasses.field(default=(), kw_only=True)

    def __post_init__(self) -> None:
        tags = _as_tags(self.tags)
        columns = {"tag": _as_tag_index(self.tag, tags), "time": _as_time(self.time)}
        value = np.asarray(self.value)
        if value.dtype.kind not in "biuf":
            raise TypeError(f"value: expected real numbers, got dtype {value.dtype}")
        columns["value"] = value.astype(np.float64, copy=False)
        if self.quality is None:
            quality = np.zeros(value.shape, dtype=np.uint8)
        else:
            quality = np.asarray(self.quality)
            if quality.size == 0 and quality.dtype.kind == "f":  # np.asarray([]) is float64
                quality = quality.astype(np.uint8)
            if quality.dtype.kind not in "iu":
                raise TypeError(f"quality: expected integer Quality codes, got dtype {quality.dtype}")
            if quality.size and (quality.min() < 0 or quality.max() > 255
                                 or not _VALID_CODE[quality.astype(np.uint8)].all()):
                raise ValueError(f"quality: expected Quality codes {[int(q) for q in Quality]}")
            quality = quality.astype(np.uint8, copy=False)
        columns["quality"] = quality
        length = None
        for name, arr in columns.items():
            if arr.ndim != 1:
                raise ValueError(f"{name}: expected a 1-D column, got shape {arr.shape}")
            if length is None:
                length = len(arr)
            elif len(arr) != length:
                lengths = {k: len(a) for k, a in columns.items()}
                raise ValueError(f"tag, time, value, quality: columns differ in length {lengths}")
        for name, arr in columns.items():
            object.__setattr__(self, name, _readonly(arr))
        object.__setattr__(self, "tags", tags)

    @classmethod
    def _trusted(cls, tag: np.ndarray, time: np.ndarray, value: np.ndarray, quality: np.ndarray,
                 tags: tuple[str, ...]) -> Batch:
        # The fast path for columns this module has already checked: no coercion, no copies.
        self = object.__new__(cls)
        for name, arr in (("tag", tag), ("time", time), ("value", value), ("quality", quality)):
            arr.flags.writeable = False
            object.__setattr__(self, name, arr)
        object.__setattr__(self, "tags", tags)
        return self

    def __len__(self) -> int:
        return len(self.tag)

    def __repr__(self) -> str:
        span = f", {self.time.min()} .. {self.time.max()}" if len(self) else ""
        tags = list(self.tags)
        if len(tags) > 8:  # a thousand tag names help nobody reading a repr
            shown = ", ".join(repr(t) for t in tags[:3] + ["…"] + tags[-2:]).replace("'…'", "…")
            return f"Batch({len(self)} samples, {len(tags)} tags [{shown}]{span})"
        return f"Batch({len(self)} samples, tags={tags}{span})"

    @classmethod
    def empty(cls, tags: Sequence[str]) -> Batch:
        """A batch with no samples for the given tag names.

        Examples
        --------
        >>> len(Batch.empty(["speed"]))
        0
        """
        return cls._trusted(np.empty(0, np.int32), np.empty(0, _NS), np.empty(0, np.float64),
                            np.empty(0, np.uint8), _as_tags(tags))

    @classmethod
    def gap(cls, tags: Sequence[str], time: Any) -> Batch:
        """The marker a reconnecting source inserts: one NaN sample per tag, quality ``GAP``.

        Parameters
        ----------
        tags : sequence of str
            The tag names the lost connection served.
        time : datetime64, timestamp or ISO string
            When the connection was lost.

        Examples
        --------
        >>> g = Batch.gap(["speed", "temp"], "2026-01-01T00:00:00Z")
        >>> g.value.tolist(), [Quality(q).name for q in g.quality]
        ([nan, nan], ['GAP', 'GAP'])
        """
        names = _as_tags(tags)
        when = _as_time(time)
        if when.ndim != 0:
            raise ValueError(f"time: expected one time, got shape {when.shape}")
        n = len(names)
        return cls._trusted(np.arange(n, dtype=np.int32), np.full(n, when, dtype=_NS),
                            np.full(n, np.nan), np.full(n, Quality.GAP, dtype=np.uint8), names)

    @classmethod
    def concat(cls, batches: Iterable[Batch], tags: Sequence[str] | None = None) -> Batch:
        """Join batches end to end: the same as the module's :func:`concat`.

        Examples
        --------
        >>> len(Batch.concat([Batch.gap(["x"], "2026-01-01")] * 3))
        3
        """
        return concat(batches, tags=tags)

    def take(self, indices: Any) -> Batch:
        """The samples at ``indices`` (integer positions or a boolean mask), same tag names.

        Examples
        --------
        >>> b = Batch([0, 0], ["2026-01-01", "2026-01-02"], [1.0, 2.0], tags=["x"])
        >>> b.take([1]).value.tolist()
        [2.0]
        """
        idx = np.asarray(indices)
        if idx.dtype == bool:
            if idx.shape != self.tag.shape:
                raise ValueError(f"indices: boolean mask of shape {idx.shape}, expected {self.tag.shape}")
        elif idx.dtype.kind not in "iu":
            raise TypeError(f"indices: expected integer positions or a boolean mask, got {idx.dtype}")
        return self._trusted(self.tag[idx], self.time[idx], self.value[idx], self.quality[idx],
                             self.tags)

    def sorted(self) -> Batch:
        """The samples in time order; samples with equal times keep their order (stable sort).

        Examples
        --------
        >>> b = Batch([0, 1, 0], ["2026-01-02", "2026-01-01", "2026-01-01"], [1, 2, 3], tags=["a", "b"])
        >>> b.sorted().value.tolist()
        [2.0, 3.0, 1.0]
        """
        # datetime64 compares as int64 under the hood; the int view skips the NaT handling.
        order = np.argsort(self.time.view(np.int64), kind="stable")
        return self.take(order)

    def select(self, *names: str) -> Batch:
        """The samples of the named tags, in batch order; the ``tags`` tuple is kept unchanged.

        Examples
        --------
        >>> b = Batch([0, 1, 0], ["2026-01-01"] * 3, [1, 2, 3], tags=["a", "b"])
        >>> b.select("a").value.tolist(), b.select("a").tags
        ([1.0, 3.0], ('a', 'b'))
        """
        if not names:
            raise TypeError("names: expected at least one tag name")
        position = {n: i for i, n in enumerate(self.tags)}
        unknown = [n for n in names if n not in position]
        if unknown:
            raise KeyError(f"names: {unknown} not in tags {list(self.tags)}")
        wanted = np.zeros(len(self.tags), dtype=bool)
        wanted[[position[n] for n in names]] = True
        return self.take(wanted[self.tag])

    def to_dataset(self, units: Mapping[str, str] | None = None,
                   long_names: Mapping[str, str] | None = None) -> Any:
        """The wide view users slice: an ``xarray.Dataset`` over the batch's distinct times.

        One float64 variable per tag (NaN where that tag has no sample at a time) and one uint8
        variable ``<tag>_quality`` per tag (``NO_SAMPLE`` there), on a sorted ``time`` coordinate
        (datetime64[ns], UTC). Where a tag has several samples at one time, the last in batch
        order wins. Variables carry CF attrs: ``long_name`` (the tag name unless given),
        ``units`` where given, and ``flag_values``/``flag_meanings`` on quality variables.

        Parameters
        ----------
        units : mapping of str to str, optional
            Units per tag name (e.g. ``TagMap.units``).
        long_names : mapping of str to str, optional
            Descriptive names per tag name.

        Examples
        --------
        >>> b = Batch([0, 1, 0], ["2026-01-01T00:00", "2026-01-01T00:00", "2026-01-01T00:01"],
        ...           [1.0, 20.0, 2.0], tags=["speed", "temp"])
        >>> ds = b.to_dataset(units={"temp": "degC"})
        >>> ds["temp"].values.tolist(), ds["temp"].attrs["units"], ds["temp_quality"].values.tolist()
        ([20.0, nan], 'degC', [0, 255])
        """
        import xarray as xr

        units = dict(units or {})
        long_names = dict(long_names or {})
        for arg, mapping in (("units", units), ("long_names", long_names)):
            unknown = sorted(set(mapping) - set(self.tags))
            if unknown:
                raise KeyError(f"{arg}: tags {unknown} are not in this batch's tags")
        reserved = {"time"} | {f"{n}_quality" for n in self.tags}
        clash = sorted(set(self.tags) & reserved)
        if clash:
            raise ValueError(f"tags: names {clash} clash with the dataset's time or quality variables")
        times, inverse = np.unique(self.time, return_inverse=True)
        shape = (len(self.tags), len(times))
        values = np.full(shape, np.nan)
        quality = np.full(shape, Quality.NO_SAMPLE, dtype=np.uint8)
        # Fancy assignment writes repeated (tag, time) pairs in order, so the last sample wins.
        values[self.tag, inverse] = self.value
        quality[self.tag, inverse] = self.quality
        flags = np.array([int(q) for q in Quality], dtype=np.uint8)
        meanings = " ".join(q.name.lower() for q in Quality)
        data_vars = {}
        for i, name in enumerate(self.tags):
            attrs = {"long_name": long_names.get(name, name)}
            if name in units:
                attrs["units"] = units[name]
            data_vars[name] = ("time", values[i], attrs)
            data_vars[f"{name}_quality"] = ("time", quality[i], {
                "long_name": f"quality of {attrs['long_name']}",
                "flag_values": flags, "flag_meanings": meanings})
        return xr.Dataset(data_vars, coords={"time": ("time", times, {"long_name": "time (UTC)"})})


def concat(batches: Iterable[Batch], tags: Sequence[str] | None = None) -> Batch:
    """Join batches end to end, in the order given.

    Batches with the same ``tags`` join as they are. Otherwise tag indices are remapped by name
    onto ``tags`` (default: every name in order of first appearance).

    Parameters
    ----------
    batches : iterable of Batch
    tags : sequence of str, optional
        The result's tag names; must include every name the batches use. Required when
        ``batches`` is empty.

    Examples
    --------
    >>> a = Batch([0], ["2026-01-01"], [1.0], tags=["x"])
    >>> b = Batch([0], ["2026-01-02"], [2.0], tags=["y"])
    >>> c = concat([a, b])
    >>> c.tags, c.tag.tolist()
    (('x', 'y'), [0, 1])
    """
    items = list(batches)
    for i, b in enumerate(items):
        if not isinstance(b, Batch):
            raise TypeError(f"batches: item {i} is {type(b).__name__}, expected Batch")
    if tags is not None:
        names = _as_tags(tags)
    elif not items:
        raise ValueError("tags: required when batches is empty")
    else:
        seen: dict[str, None] = {}
        for b in items:
            seen.update(dict.fromkeys(b.tags))
        names = tuple(seen)
    if not items:
        return Batch.empty(names)
    position = {n: i for i, n in enumerate(names)}
    tag_columns = []
    for b in items:
        if b.tags == names:
            tag_columns.append(b.tag)
            continue
        missing = [n for n in b.tags if n not in position]
        if missing:
            raise ValueError(f"tags: names {missing} used by the batches are missing")
        # One lookup per tag name, then one indexing operation for all samples.
        lut = np.array([position[n] for n in b.tags], dtype=np.int32)
        tag_columns.append(lut[b.tag])
    return Batch._trusted(np.concatenate(tag_columns).astype(np.int32, copy=False),
                          np.concatenate([b.time for b in items]),
                          np.concatenate([b.value for b in items]),
                          np.concatenate([b.quality for b in items]), names)
