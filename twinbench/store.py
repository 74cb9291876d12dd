"""The live twin's memory: a ring buffer for the live window and a durable history.

:class:`RingBuffer` keeps the last ``capacity`` rows of a set of columns (float64 values, uint8
quality codes for names ending in ``_quality``) and one shared ``time`` column, in preallocated
numpy arrays: an append is a few slice assignments, whatever its length, never a Python object
per sample. :class:`History` is the append-only, crash-safe copy of the same columns in a Zarr
store; :func:`read_window` reads across both as one dataset.

Both hand out :class:`xarray.Dataset` objects with a ``time`` dimension (datetime64[ns], UTC,
naive as everywhere in twinbench) and CF ``units``/``long_name`` attrs.

Examples
--------
>>> import numpy as np
>>> ring = RingBuffer(["speed", "speed_quality"], capacity=3, units={"speed": "rpm"})
>>> t = np.array(["2026-01-01T00:00:00", "2026-01-01T00:00:01"], dtype="datetime64[ns]")
>>> ring.append(t, {"speed": [1450.0, 1460.0], "speed_quality": [0, 0]})
>>> ring.append(t + np.timedelta64(2, "s"), {"speed": [1470.0, 1480.0]})
>>> ds = ring.to_dataset()
>>> ds["speed"].values.tolist(), ds["speed_quality"].values.tolist()
([1460.0, 1470.0, 1480.0], [0, 255, 255])
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import math
import os
import shutil
import sys
import threading
import time as _time
import uuid
import weakref
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from twinbench.io.batch import Quality, _as_time

__all__ = ["History", "RingBuffer", "read_window"]

_NS = np.dtype("datetime64[ns]")
_NAT = np.iinfo(np.int64).min
_QUALITY_SUFFIX = "_quality"
# Format version of the Zarr layout written by History (stored in the root group's attrs).
_STORE_VERSION = 1
_RESERVED_ATTRS = ("twinbench_store", "twinbench_variables", "twinbench_rows",
                   "twinbench_attrs_log")


# -- validation helpers ------------------------------------------------------------------------

def _is_quality(name: str) -> bool:
    return name.endswith(_QUALITY_SUFFIX)


def _fill(name: str) -> float | int:
    return int(Quality.NO_SAMPLE) if _is_quality(name) else np.nan


def _dtype(name: str) -> np.dtype:
    return np.dtype(np.uint8) if _is_quality(name) else np.dtype(np.float64)


def _as_variables(variables: Any) -> tuple[str, ...]:
    if isinstance(variables, (str, bytes)) or not isinstance(variables, Iterable):
        raise TypeError(f"variables: expected a sequence of variable names, "
                        f"got {type(variables).__name__}")
    names = tuple(variables)
    if not names:
        raise ValueError("variables: expected at least one variable name")
    for name in names:
        if not isinstance(name, str) or not name:
            raise TypeError(f"variables: expected non-empty strings, got {name!r}")
        if name == "time":
            raise ValueError("variables: 'time' is the shared time coordinate, not a variable")
    if len(set(names)) != len(names):
        dupes = sorted({n for n in names if names.count(n) > 1})
        raise ValueError(f"variables: duplicate names {dupes}")
    return names


def _as_names_map(mapping: Any, argument: str, variables: tuple[str, ...]) -> dict[str, str]:
    if mapping is None:
        return {}
    if not isinstance(mapping, Mapping):
        raise TypeError(f"{argument}: expected a mapping of variable name to str, "
                        f"got {type(mapping).__name__}")
    unknown = sorted(str(k) for k in mapping if k not in variables)
    if unknown:
        raise ValueError(f"{argument}: names {unknown} are not in variables")
    for key, value in mapping.items():
        if not isinstance(value, str):
            raise TypeError(f"{argument}: expected str values, got {value!r} for {key!r}")
    return dict(mapping)


def _as_times_ns(time: Any) -> np.ndarray:
    """Times as a 1-D int64 array of ns since 1970 UTC (datetime64 of any unit, int64 ns,
    timezone-aware pandas timestamps, ISO strings)."""
    arr = time if isinstance(time, np.ndarray) else None
    if arr is None and type(time).__module__.partition(".")[0] != "pandas" \
            and not isinstance(time, str):
        arr = np.asarray(time)
    if arr is not None and arr.dtype.kind == "M":
        ns = arr.astype(_NS, copy=False).view(np.int64)
    elif arr is not None and arr.dtype.kind in "iu":
        if arr.dtype.kind == "u" and arr.size and arr.max() > np.iinfo(np.int64).max:
            raise ValueError("time: integer times must be int64 ns since 1970-01-01")
        ns = arr.astype(np.int64, copy=False)
    else:
        ns = _as_time(time).view(np.int64)
    if ns.ndim == 0:
        ns = ns.reshape(1)
    if ns.ndim != 1:
        raise ValueError(f"time: expected a 1-D array of times, got shape {ns.shape}")
    if ns.size and ns.min() == _NAT:
        raise ValueError("time: NaT is not a time; every row needs one")
    return ns


def _as_bound(value: Any, argument: str) -> int | None:
    if value is None:
        return None
    try:
        ns = _as_times_ns(value)
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"{argument}: {exc}") from None
    if ns.shape != (1,):
        raise ValueError(f"{argument}: expected one time, got {ns.shape[0]}")
    return int(ns[0])


def _as_columns(values: Any, n: int, variables: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Validate `values` (name -> length-n array or scalar) into float64 / uint8 columns.

    Columns may share memory with the caller's arrays (no copy when the dtype already fits)."""
    if not isinstance(values, Mapping):
        raise TypeError(f"values: expected a mapping of variable name to array, "
                        f"got {type(values).__name__}")
    unknown = sorted(str(k) for k in values if k not in variables)
    if unknown:
        raise ValueError(f"values: names {unknown} are not in variables {list(variables)}")
    columns = {}
    for name, value in values.items():
        arr = np.asarray(value)
        if arr.ndim == 0:
            arr = np.broadcast_to(arr, (n,))
        if arr.shape != (n,):
            raise ValueError(f"values[{name!r}]: expected {n} values (one per time), "
                             f"got shape {arr.shape}")
        if _is_quality(name):
            if arr.dtype.kind not in "biu":
                raise TypeError(f"values[{name!r}]: expected integer quality codes, "
                                f"got dtype {arr.dtype}")
            if arr.dtype != np.uint8 and n and (arr.min() < 0 or arr.max() > 255):
                raise ValueError(f"values[{name!r}]: quality codes must lie in [0, 255]")
            arr = arr.astype(np.uint8, copy=False)
        else:
            if arr.dtype.kind not in "biuf":
                raise TypeError(f"values[{name!r}]: expected real numbers, got dtype {arr.dtype}")
            arr = arr.astype(np.float64, copy=False)
        columns[name] = arr
    return columns


def _var_attrs(name: str, units: Mapping[str, str], long_names: Mapping[str, str]) -> dict:
    if _is_quality(name):
        base = name[: -len(_QUALITY_SUFFIX)]
        attrs = {"long_name": long_names.get(name, f"quality of {long_names.get(base, base)}"),
                 "flag_values": np.array([int(q) for q in Quality], dtype=np.uint8),
                 "flag_meanings": " ".join(q.name.lower() for q in Quality)}
    else:
        attrs = {"long_name": long_names.get(name, name)}
        if name in units:
            attrs["units"] = units[name]
    return attrs


def _dataset(time_ns: np.ndarray, columns: Mapping[str, np.ndarray],
             attrs: Mapping[str, Mapping[str, Any]], ds_attrs: Mapping[str, Any] | None = None):
    import xarray as xr

    data_vars = {name: ("time", arr, dict(attrs[name])) for name, arr in columns.items()}
    return xr.Dataset(data_vars,
                      coords={"time": ("time", time_ns.view(_NS), {"long_name": "time (UTC)"})},
                      attrs=dict(ds_attrs or {}))


# -- ring buffer -------------------------------------------------------------------------------

class RingBuffer:
    """A fixed-size columnar window over the latest rows of a set of variables.

    One shared ``time`` column (int64 ns since 1970, UTC) and one column per variable, all
    preallocated: appending N rows costs O(N) numpy copies, never a Python object per sample, and
    overwrites the oldest rows once the buffer is full. Variables whose name ends with
    ``_quality`` hold uint8 :class:`~twinbench.io.batch.Quality` codes and are filled with
    ``NO_SAMPLE`` (255) where a row has no value; all others are float64, filled with NaN.

    Parameters
    ----------
    variables : sequence of str
        The column names (not ``time``).
    capacity : int
        How many rows the window holds, >= 1.
    units, long_names : mapping of str to str, optional
        CF attrs for the variables (quality variables get ``flag_values``/``flag_meanings``).

    Examples
    --------
    >>> ring = RingBuffer(["flow"], capacity=1000, units={"flow": "m3/h"})
    >>> ring.append(np.datetime64("2026-01-01T00:00:00", "ns"), {"flow": 12.5})
    >>> len(ring), ring.latest()
    (1, {'flow': 12.5})
    >>> ring.to_dataset()["flow"].attrs["units"]
    'm3/h'
    """

    def __init__(self, variables: Iterable[str], capacity: int, *,
                 units: Mapping[str, str] | None = None,
                 long_names: Mapping[str, str] | None = None) -> None:
        names = _as_variables(variables)
        if isinstance(capacity, bool) or not isinstance(capacity, (int, np.integer)) \
                or capacity < 1:
            raise ValueError(f"capacity: expected an int >= 1, got {capacity!r}")
        self._variables = names
        self._capacity = int(capacity)
        self._units = _as_names_map(units, "units", names)
        self._long_names = _as_names_map(long_names, "long_names", names)
        self._attrs = {n: _var_attrs(n, self._units, self._long_names) for n in names}
        self._time = np.zeros(self._capacity, dtype=np.int64)
        self._columns = {n: np.full(self._capacity, _fill(n), dtype=_dtype(n)) for n in names}
        self._head = 0  # where the next row goes
        self._size = 0
        self._sorted = True  # rows in time order as appended: to_dataset need not sort

    @property
    def variables(self) -> tuple[str, ...]:
        """The variable names, in order."""
        return self._variables

    @property
    def capacity(self) -> int:
        """How many rows the buffer holds at most."""
        return self._capacity

    @property
    def units(self) -> dict[str, str]:
        """CF units per variable (a copy)."""
        return dict(self._units)

    @property
    def long_names(self) -> dict[str, str]:
        """CF long names per variable (a copy)."""
        return dict(self._long_names)

    def __len__(self) -> int:
        return self._size

    def __repr__(self) -> str:
        span = ""
        if self._size:
            first, last = self._time_range()
            span = f", {np.int64(first).view(_NS)} .. {np.int64(last).view(_NS)}"
        return (f"RingBuffer({self._size}/{self._capacity} rows, "
                f"{len(self._variables)} variables{span})")

    def clear(self) -> None:
        """Forget every row (the memory stays allocated)."""
        self._head = 0
        self._size = 0
        self._sorted = True

    def append(self, time: Any, values: Mapping[str, Any]) -> None:
        """Append rows: one per time, columns from `values`.

        Parameters
        ----------
        time : array_like
            N times: datetime64 (any unit; naive means UTC), int64 ns since 1970-01-01 UTC,
            timezone-aware pandas timestamps or ISO strings. A single time appends one row.
        values : mapping of str to array_like
            Per variable, N values (a scalar is repeated). Variables left out are NaN (quality
            variables: ``NO_SAMPLE``) in these rows.

        Examples
        --------
        >>> ring = RingBuffer(["a", "b"], capacity=2)
        >>> ring.append(np.array([1, 2, 3], dtype="datetime64[s]"), {"a": [1.0, 2.0, 3.0]})
        >>> ring.to_dataset()["a"].values.tolist(), len(ring)
        ([2.0, 3.0], 2)
        """
        t = _as_times_ns(time)
        self._append(t, _as_columns(values, len(t), self._variables))

    def _append(self, t: np.ndarray, columns: Mapping[str, np.ndarray]) -> None:
        # Fast path: t is int64 ns, columns validated; O(N) slice copies, at most two per column.
        n = len(t)
        if n == 0:
            return
        cap = self._capacity
        if n >= cap:  # only the newest `cap` rows survive: order is theirs alone
            t = t[n - cap:]
            columns = {k: v[n - cap:] for k, v in columns.items()}
            self._head, self._size, n = 0, 0, cap
            self._sorted = True
        if self._sorted:
            # Stays False until the buffer is cleared or overwritten whole: to_dataset then sorts.
            self._sorted = (n < 2 or bool((t[1:] >= t[:-1]).all())) and not (
                self._size and t[0] < self._time[(self._head - 1) % cap])
        head = self._head
        first = min(n, cap - head)  # rows up to the physical end; the rest wraps to the start
        self._time[head:head + first] = t[:first]
        self._time[:n - first] = t[first:]
        for name, store in self._columns.items():
            col = columns.get(name)
            if col is None:
                fill = _fill(name)
                store[head:head + first] = fill
                store[:n - first] = fill
            else:
                store[head:head + first] = col[:first]
                store[:n - first] = col[first:]
        self._head = (head + n) % cap
        self._size = min(self._size + n, cap)

    def _time_range(self) -> tuple[int, int]:
        # (earliest, latest) time held; cheap when rows are in order.
        if self._sorted:
            first = self._time[(self._head - self._size) % self._capacity]
            return int(first), int(self._time[(self._head - 1) % self._capacity])
        live = self._ordered_positions()
        return int(self._time[live].min()), int(self._time[live].max())

    def _ordered_positions(self) -> np.ndarray:
        # Physical positions of the rows, oldest appended first.
        start = (self._head - self._size) % self._capacity
        return (start + np.arange(self._size)) % self._capacity

    def _select(self, start: int | None, end: int | None) -> np.ndarray:
        """Physical positions of the rows with start <= time <= end, in time order."""
        if self._size == 0:
            return np.empty(0, dtype=np.intp)
        positions = self._ordered_positions()
        times = self._time[positions]
        if not self._sorted:
            order = np.argsort(times, kind="stable")
            positions, times = positions[order], times[order]
        lo = 0 if start is None else int(np.searchsorted(times, start, side="left"))
        hi = len(times) if end is None else int(np.searchsorted(times, end, side="right"))
        return positions[lo:max(lo, hi)]

    def to_dataset(self, start: Any = None, end: Any = None) -> Any:
        """The rows with ``start <= time <= end`` as an xarray.Dataset, in time order.

        Parameters
        ----------
        start, end : time, optional
            Inclusive bounds (like ``ds.sel(time=slice(start, end))``); None: unbounded.

        Returns
        -------
        xarray.Dataset
            Dimension ``time`` (datetime64[ns] UTC); the data is a copy.

        Examples
        --------
        >>> ring = RingBuffer(["x"], capacity=4)
        >>> ring.append(np.arange(6).astype("datetime64[s]"), {"x": np.arange(6.0)})
        >>> ring.to_dataset(start="1970-01-01T00:00:03Z")["x"].values.tolist()
        [3.0, 4.0, 5.0]
        """
        lo, hi = _as_bound(start, "start"), _as_bound(end, "end")
        return self._to_dataset(lo, hi)

    def _to_dataset(self, start: int | None, end: int | None) -> Any:
        positions = self._select(start, end)
        columns = {n: c.take(positions) for n, c in self._columns.items()}
        return _dataset(self._time.take(positions), columns, self._attrs)

    def _columns_between(self, start: int | None, end: int | None
                         ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        positions = self._select(start, end)
        return self._time.take(positions), {n: c.take(positions)
                                            for n, c in self._columns.items()}

    def latest(self, skipna: bool = False) -> dict[str, float | int]:
        """The value of each variable in the last row appended.

        Parameters
        ----------
        skipna : bool, default False
            True: per variable, its last value that is not missing (NaN, or ``NO_SAMPLE`` for
            quality variables) — what a status display wants when tags arrive in different rows.

        Returns
        -------
        dict
            Name to value (float, or int for quality codes); missing values when empty.

        Examples
        --------
        >>> ring = RingBuffer(["a", "b"], capacity=8)
        >>> ring.append([0, 1], {"a": [1.0, 2.0], "b": [5.0, np.nan]})
        >>> ring.latest(), ring.latest(skipna=True)
        ({'a': 2.0, 'b': nan}, {'a': 2.0, 'b': 5.0})
        """
        if self._size == 0:
            return {n: _fill(n) for n in self._variables}
        last = (self._head - 1) % self._capacity
        if not skipna:
            return {n: c[last].item() for n, c in self._columns.items()}
        out: dict[str, float | int] = {}
        positions = None
        for name, col in self._columns.items():
            value = col[last]
            if _is_quality(name) and value != Quality.NO_SAMPLE or \
                    not _is_quality(name) and not np.isnan(value):
                out[name] = value.item()
                continue
            if positions is None:  # only a variable missing in the last row pays for the scan
                positions = self._ordered_positions()[::-1]
            values = col[positions]
            valid = values != Quality.NO_SAMPLE if _is_quality(name) else ~np.isnan(values)
            hit = int(valid.argmax())
            out[name] = values[hit].item() if valid[hit] else _fill(name)
        return out


# -- history -----------------------------------------------------------------------------------

def _check_attrs(attrs: Any) -> dict[str, Any]:
    if attrs is None:
        return {}
    if not isinstance(attrs, Mapping):
        raise TypeError(f"attrs: expected a mapping of str to str or number, "
                        f"got {type(attrs).__name__}")
    out = {}
    for key, value in attrs.items():
        if not isinstance(key, str) or not key:
            raise TypeError(f"attrs: expected non-empty str keys, got {key!r}")
        if key in _RESERVED_ATTRS or key in ("Conventions", "title"):
            raise ValueError(f"attrs: {key!r} is written by History itself")
        # NetCDF export must be able to carry every attr: str, int or float (JSON for the rest).
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise TypeError(f"attrs: expected str, int or float values (encode structures as "
                            f"JSON text), got {type(value).__name__} for {key!r}")
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"attrs: expected a finite number for {key!r}, got {value}")
        out[key] = value
    return out


def _zarr():
    try:
        import zarr
    except ImportError:
        raise ImportError("History needs the zarr package (pip install 'zarr>=3'); "
                          "it is not installed") from None
    if int(zarr.__version__.partition(".")[0]) < 3:
        raise ImportError(f"History needs zarr >= 3, found {zarr.__version__}")
    return zarr


class History:
    """A durable, append-only store of the twin's columns: Zarr on disk, NetCDF on export.

    Rows are buffered in memory by :meth:`append` and written by :meth:`flush` (or
    :meth:`maybe_flush`, every ``flush_interval`` seconds). A flush is a commit: the Zarr arrays
    grow and their new rows are written first (each chunk file replaced atomically by zarr), then
    the committed row count in the root group's attrs is replaced in one atomic write. A process
    killed at any moment (SIGKILL included) therefore leaves a store that reopens cleanly with
    every row up to its last completed flush; rows of an unfinished flush are cut on reopen.

    The store is a plain Zarr v3 group readable by ``xarray.open_zarr(path, consolidated=False)``
    (metadata is not consolidated: it changes at every flush): array ``time`` (int64 ns since
    1970-01-01, CF-encoded, read back as datetime64[ns]) and one array per variable along the
    ``time`` dimension, chunked by ``chunk_rows`` rows. After a crash, open it with History
    first: that cuts the rows of an unfinished flush, which plain readers would see.

    Times must not go back: rows earlier than the latest row already appended are dropped and
    counted in :attr:`dropped` (equal times are kept). One History at a time may write a store
    (a lock file guards it); :meth:`close` releases it.

    Parameters
    ----------
    path : str or path
        A directory whose name ends with ``.zarr``. An existing store is continued.
    variables : sequence of str
        The column names; names ending with ``_quality`` hold uint8 quality codes. An existing
        store must hold the same set of names.
    flush_interval : float, default 5.0
        Seconds between the flushes :meth:`maybe_flush` makes: at most this much is lost when
        the process dies.
    attrs : mapping of str to str or number, optional
        Dataset attrs such as the model name or the parameter version (as JSON text). Stored; on
        an existing store, changed values are updated and the change is logged (with the row it
        applies from) in the ``twinbench_attrs_log`` attr.
    units, long_names : mapping of str to str, optional
        CF attrs for the variables (updated on an existing store when given).
    chunk_rows : int, default 8192
        Rows per Zarr chunk (one file per variable per chunk).

    Examples
    --------
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as d:
    ...     with History(Path(d) / "pump.zarr", ["speed"], units={"speed": "rpm"}) as h:
    ...         h.append(np.array(["2026-01-01T00:00:00"], dtype="datetime64[ns]"),
    ...                  {"speed": [1450.0]})
    ...         rows = h.flush()
    ...     with History(Path(d) / "pump.zarr", ["speed"]) as h:
    ...         ds = h.read()
    >>> rows, ds["speed"].values.tolist(), ds["speed"].attrs["units"]
    (1, [1450.0], 'rpm')
    """

    def __init__(self, path: str | os.PathLike[str], variables: Iterable[str], *,
                 flush_interval: float = 5.0, attrs: Mapping[str, Any] | None = None,
                 units: Mapping[str, str] | None = None,
                 long_names: Mapping[str, str] | None = None, chunk_rows: int = 8192) -> None:
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"path: expected a directory path, got {type(path).__name__}")
        path = Path(path)
        if path.suffix.lower() != ".zarr":
            raise ValueError(f"path: expected a directory name ending with .zarr, got "
                             f"{str(path)!r} (use History.to_netcdf for NetCDF files)")
        names = _as_variables(variables)
        if isinstance(flush_interval, bool) or not isinstance(flush_interval, (int, float)) \
                or not math.isfinite(flush_interval) or flush_interval < 0:
            raise ValueError(f"flush_interval: expected a finite number of seconds >= 0, "
                             f"got {flush_interval!r}")
        if isinstance(chunk_rows, bool) or not isinstance(chunk_rows, (int, np.integer)) \
                or chunk_rows < 1:
            raise ValueError(f"chunk_rows: expected an int >= 1, got {chunk_rows!r}")
        user_attrs = _check_attrs(attrs)
        units_map = _as_names_map(units, "units", names)
        long_map = _as_names_map(long_names, "long_names", names)
        self._path = path
        self._variables = names
        self._flush_interval = float(flush_interval)
        self._pending: list[tuple[np.ndarray, dict[str, np.ndarray]]] = []
        self._pending_rows = 0
        # Rows a flush (maybe on a worker thread, see aflush) is writing: still readable.
        self._inflight: list[tuple[np.ndarray, dict[str, np.ndarray]]] = []
        self._inflight_rows = 0
        # _state_lock guards the row bookkeeping (held for microseconds, never during I/O);
        # _flush_lock lets one flush at a time write.
        self._state_lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._last_time: int | None = None
        self._dropped = 0
        self._lock_file: Any = None
        self._closed = False
        zarr = _zarr()
        self._zarr = zarr
        if not path.exists():
            self._create(path, names, user_attrs, units_map, long_map, int(chunk_rows))
        elif not (path / "zarr.json").is_file():
            raise ValueError(f"path: {str(path)!r} exists but is not a Zarr v3 store")
        self._lock()
        try:
            self._open(user_attrs, units_map, long_map)
        except BaseException:
            self._unlock()
            raise
        self._last_flush = _time.monotonic()

    # -- opening ---------------------------------------------------------------------------

    def _create(self, path: Path, names: tuple[str, ...], user_attrs: dict[str, Any],
                units: Mapping[str, str], long_names: Mapping[str, str], chunk_rows: int) -> None:
        # Built in a scratch directory and renamed into place: a store either exists complete
        # with zero rows or not at all, whenever the process dies.
        path.parent.mkdir(parents=True, exist_ok=True)
        scratch = path.with_name(f".{path.name}.creating-{uuid.uuid4().hex}")
        try:
            root = self._zarr.open_group(store=str(scratch), mode="w-", zarr_format=3)
            root.create_array("time", shape=(0,), chunks=(chunk_rows,), dtype="int64",
                              fill_value=0, dimension_names=["time"],
                              attributes={"units": "nanoseconds since 1970-01-01",
                                          "calendar": "proleptic_gregorian",
                                          "long_name": "time (UTC)", "standard_name": "time"})
            for name in names:
                var_attrs = _var_attrs(name, units, long_names)
                if "flag_values" in var_attrs:
                    var_attrs["flag_values"] = var_attrs["flag_values"].tolist()
                root.create_array(name, shape=(0,), chunks=(chunk_rows,), dtype=_dtype(name),
                                  fill_value=_fill(name), dimension_names=["time"],
                                  attributes=var_attrs)
            root.attrs.update({"Conventions": "CF-1.8", "title": "twinbench history",
                               **user_attrs, "twinbench_store": _STORE_VERSION,
                               "twinbench_variables": json.dumps(list(names)),
                               "twinbench_rows": 0, "twinbench_attrs_log": "[]"})
            try:
                os.rename(scratch, path)
            except OSError:
                if not path.exists():
                    raise
                # Someone else created it meanwhile: theirs stands, ours goes.
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    def _lock(self) -> None:
        if sys.platform == "win32":  # no flock; one writer per store is then the caller's duty
            return
        import fcntl

        # The lock is on the store's directory itself: no extra file that zarr would warn
        # about, and the kernel releases it when the process dies, SIGKILL included.
        fd = os.open(self._path, os.O_RDONLY)
        for attempt in range(2):
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError:
                if attempt == 0:
                    # A History nobody can reach any more (a re-run notebook cell's twin, kept
                    # alive only by reference cycles) lets go of the lock when collected.
                    gc.collect()
                    continue
                os.close(fd)
                raise RuntimeError(f"path: {str(self._path)!r} is open for writing by another "
                                   f"History (stop its twin or close it first)") from None
        self._lock_file = fd
        # Closing the descriptor releases the flock: on close(), or when this object is
        # collected without one (its unflushed rows are then lost, as after a crash).
        self._finalizer = weakref.finalize(self, os.close, fd)

    def _unlock(self) -> None:
        if self._lock_file is not None:
            self._finalizer()  # closes the descriptor once, however often it is called
            self._lock_file = None

    def _open(self, user_attrs: dict[str, Any], units: Mapping[str, str],
              long_names: Mapping[str, str]) -> None:
        path = self._path
        try:
            root = self._zarr.open_group(store=str(path), mode="r+", zarr_format=3)
        except (OSError, ValueError, KeyError, TypeError) as exc:  # zarr's errors derive from these
            raise ValueError(f"path: {str(path)!r} is not a Zarr v3 store ({exc})") from None
        stored = dict(root.attrs)
        if stored.get("twinbench_store") != _STORE_VERSION or "twinbench_rows" not in stored:
            raise ValueError(f"path: {str(path)!r} is not a twinbench history store "
                             f"(format {_STORE_VERSION})")
        stored_vars = json.loads(stored["twinbench_variables"])
        if set(stored_vars) != set(self._variables):
            missing = sorted(set(stored_vars) - set(self._variables))
            extra = sorted(set(self._variables) - set(stored_vars))
            raise ValueError(f"variables: the history at {str(path)!r} holds other variables: "
                             f"stored but not given {missing}, given but not stored {extra}")
        self._root = root
        self._arrays = {name: root[name] for name in ("time", *self._variables)}
        self._rows = int(stored["twinbench_rows"])
        self._chunk_rows = int(self._arrays["time"].chunks[0])
        self._repair()
        if self._rows:
            self._last_time = int(self._arrays["time"][self._rows - 1])
        for name in self._variables:
            if name in units or name in long_names:
                arr = self._arrays[name]
                wanted = {k: v for k, v in _var_attrs(name, units, long_names).items()
                          if k in ("units", "long_name")}
                if any(arr.attrs.get(k) != v for k, v in wanted.items()):
                    arr.attrs.update(wanted)
        changed = {k: {"old": stored.get(k), "new": v} for k, v in user_attrs.items()
                   if stored.get(k) != v}
        if changed:
            self._log_attrs(changed, user_attrs)

    def _repair(self) -> None:
        # After a crash mid-flush arrays may be longer than the committed row count: cut them
        # back (zarr drops chunks beyond; the next flush rewrites the rest of the boundary chunk).
        for arr in self._arrays.values():
            if arr.shape[0] != self._rows:
                arr.resize((self._rows,))
        # A killed write leaves zarr's temporary "*.partial" files; the real files are intact.
        for directory in [self._path, *(self._path / n for n in self._arrays)]:
            for sub in (directory, directory / "c"):
                with contextlib.suppress(FileNotFoundError), os.scandir(sub) as entries:
                    for entry in entries:
                        if entry.name.endswith(".partial") and entry.is_file():
                            with contextlib.suppress(FileNotFoundError):
                                os.unlink(entry.path)

    def _log_attrs(self, changed: dict[str, Any], new_attrs: Mapping[str, Any]) -> None:
        log = json.loads(self._root.attrs.get("twinbench_attrs_log", "[]"))
        entry = {"row": self._rows, "changed": changed}
        if self._last_time is not None:
            entry["after"] = str(np.int64(self._last_time).view(_NS))
        log.append(entry)
        # Callers flush first so "row" is exact; attrs and log change in one atomic write.
        self._root.attrs.update({**new_attrs, "twinbench_attrs_log": json.dumps(log)})

    # -- properties ------------------------------------------------------------------------

    @property
    def path(self) -> Path:
        """The store's directory."""
        return self._path

    @property
    def variables(self) -> tuple[str, ...]:
        """The variable names, in the order given."""
        return self._variables

    @property
    def flush_interval(self) -> float:
        """Seconds between flushes made by :meth:`maybe_flush`."""
        return self._flush_interval

    @property
    def attrs(self) -> dict[str, Any]:
        """The stored dataset attrs (user attrs and the store's own), a copy."""
        return dict(self._root.attrs)

    @property
    def committed_rows(self) -> int:
        """Rows on disk as of the last completed flush."""
        return self._rows

    @property
    def buffered_rows(self) -> int:
        """Rows appended but not yet committed by a flush."""
        return self._pending_rows + self._inflight_rows

    @property
    def dropped(self) -> int:
        """Rows refused by :meth:`append` because their time went back."""
        return self._dropped

    @property
    def last_time(self) -> np.datetime64 | None:
        """Time of the latest row (flushed or not), or None when empty."""
        return None if self._last_time is None else np.int64(self._last_time).view(_NS)

    def __len__(self) -> int:
        return self._rows + self._pending_rows + self._inflight_rows

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{self._rows} rows + {self.buffered_rows} buffered"
        return f"History({str(self._path)!r}, {len(self._variables)} variables, {state})"

    def __enter__(self) -> History:  # noqa: PYI034 (Self needs Python 3.11 typing)
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- writing ---------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"History {str(self._path)!r} is closed")

    def append(self, time: Any, values: Mapping[str, Any]) -> None:
        """Buffer rows in memory; :meth:`flush` writes them.

        Parameters
        ----------
        time : array_like
            N times, as for :meth:`RingBuffer.append`. Rows earlier than the latest row already
            appended are dropped (counted in :attr:`dropped`).
        values : mapping of str to array_like
            Per variable, N values; variables left out are NaN (quality: ``NO_SAMPLE``).
        """
        self._check_open()
        t = _as_times_ns(time)
        columns = _as_columns(values, len(t), self._variables)
        self._append(t, columns)

    def _append(self, t: np.ndarray, columns: Mapping[str, np.ndarray]) -> None:
        n = len(t)
        if n == 0:
            return
        # A row is kept when no earlier row (stored or in this call) is later than it.
        floor = _NAT if self._last_time is None else self._last_time
        running = np.maximum.accumulate(t)
        if t[0] >= floor and running[-1] == t[-1] and (n < 2 or (t[1:] >= t[:-1]).all()):
            keep = None
        else:
            keep = t >= np.maximum(running, floor)
            self._dropped += int(n - keep.sum())
            if not keep.any():
                return
        if keep is None:
            # Copies: the caller may reuse its arrays, and astype(copy=False) may have aliased.
            t = t.copy()
            columns = {k: np.array(v, copy=True) for k, v in columns.items()}
        else:
            t = t[keep]
            columns = {k: v[keep] for k, v in columns.items()}
        with self._state_lock:
            self._pending.append((t, columns))
            self._pending_rows += len(t)
        self._last_time = int(t[-1])

    def _gather(self, parts: list[tuple[np.ndarray, dict[str, np.ndarray]]]
                ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        if not parts:
            return np.empty(0, np.int64), {n: np.empty(0, _dtype(n)) for n in self._variables}
        if len(parts) == 1:
            t, cols = parts[0]
            n = len(t)
            return t, {name: cols[name] if name in cols else
                       np.full(n, _fill(name), dtype=_dtype(name)) for name in self._variables}
        t = np.concatenate([p[0] for p in parts])
        columns = {}
        for name in self._variables:
            columns[name] = np.concatenate([
                cols[name] if name in cols else np.full(len(pt), _fill(name), _dtype(name))
                for pt, cols in parts])
        return t, columns

    def flush(self) -> int:
        """Write the buffered rows to disk and commit them; return how many were written.

        After it returns, the rows survive the process being killed. A flush that fails
        (disk full, say) keeps the rows buffered and commits nothing: the next flush retries.
        It blocks for the disk writes (tens of ms; zarr's cost per chunk dominates): on an
        event loop, prefer ``await`` :meth:`aflush`.
        """
        self._check_open()
        with self._flush_lock:
            return self._flush()

    def _flush(self) -> int:
        self._last_flush = _time.monotonic()
        with self._state_lock:
            parts, n = self._pending, self._pending_rows
            if not n:
                return 0
            self._pending, self._pending_rows = [], 0
            self._inflight, self._inflight_rows = parts, n
        try:
            t, columns = self._gather(parts)
            start, stop = self._rows, self._rows + n
            self._write(start, stop, {"time": t, **columns})
            # The commit point: one atomic replace of the root group's zarr.json.
            self._root.attrs.update({"twinbench_rows": stop})
        except BaseException:
            with self._state_lock:  # nothing committed: the rows wait for the next flush
                self._pending, self._pending_rows = parts + self._pending, n + self._pending_rows
                self._inflight, self._inflight_rows = [], 0
            raise
        with self._state_lock:
            self._rows = stop
            self._inflight, self._inflight_rows = [], 0
        return n

    def _write(self, start: int, stop: int, columns: Mapping[str, np.ndarray]) -> None:
        # Grow every array, then write its new rows. zarr's cost is per operation (metadata
        # JSON, read-modify-write of the boundary chunk), so all arrays go at once on zarr's
        # own event loop: a third less CPU and half the wall time of one array after another.
        arrays = [(self._arrays[name], data) for name, data in columns.items()]
        try:
            from zarr.core.sync import sync
        except ImportError:  # zarr moved its helper: the same writes, one by one
            for arr, data in arrays:
                arr.resize((stop,))
                arr[start:stop] = data
            return

        async def write_all() -> None:
            await asyncio.gather(*(arr.async_array.resize((stop,)) for arr, _ in arrays))
            await asyncio.gather(*(arr.async_array.setitem(slice(start, stop), data)
                                   for arr, data in arrays))

        sync(write_all())

    async def aflush(self) -> int:
        """:meth:`flush` on a worker thread: the event loop keeps running while it writes.

        Appends and reads may go on meanwhile (rows being written stay readable). Returns the
        number of rows written.

        Examples
        --------
        >>> import asyncio, tempfile
        >>> with tempfile.TemporaryDirectory() as d, History(Path(d) / "h.zarr", ["x"]) as h:
        ...     h.append([0, 1], {"x": [1.0, 2.0]})
        ...     asyncio.run(h.aflush())
        2
        """
        self._check_open()
        return await asyncio.to_thread(self.flush)

    async def amaybe_flush(self, now: float | None = None) -> int:
        """:meth:`maybe_flush` with the writing on a worker thread (see :meth:`aflush`)."""
        self._check_open()
        now = self._now(now)
        if now - self._last_flush < self._flush_interval:
            return 0
        self._last_flush = now  # calls meanwhile do not start a second flush
        return await asyncio.to_thread(self.flush)

    @staticmethod
    def _now(now: Any) -> float:
        if now is None:
            return _time.monotonic()
        if isinstance(now, bool) or not isinstance(now, (int, float)):
            raise TypeError(f"now: expected time.monotonic() seconds, got {type(now).__name__}")
        return float(now)

    def maybe_flush(self, now: float | None = None) -> int:
        """Flush when ``flush_interval`` seconds have passed since the last flush.

        Parameters
        ----------
        now : float, optional
            The current ``time.monotonic()`` (passed by a caller that already has it).

        Returns
        -------
        int
            Rows written (0 when it was not time yet or nothing was buffered).
        """
        self._check_open()
        if self._now(now) - self._last_flush < self._flush_interval:
            return 0
        return self.flush()

    def update_attrs(self, attrs: Mapping[str, Any]) -> None:
        """Change dataset attrs (a new parameter version, say) from the next row on.

        The buffered rows are flushed first, so the change is logged in ``twinbench_attrs_log``
        with the exact row from which it applies.
        """
        self._check_open()
        new = _check_attrs(attrs)
        stored = dict(self._root.attrs)
        changed = {k: {"old": stored.get(k), "new": v} for k, v in new.items()
                   if stored.get(k) != v}
        if changed:
            with self._flush_lock:
                self._flush()
                self._log_attrs(changed, new)

    def close(self) -> None:
        """Flush what is buffered and release the store (idempotent)."""
        if self._closed:
            return
        try:
            self.flush()
        finally:
            self._closed = True
            self._unlock()

    # -- reading ---------------------------------------------------------------------------

    def _search(self, t: int, side: str, rows: int) -> int:
        # Bisect over chunks (reading one chunk per probe), then within one chunk: a window of
        # a long history is found without reading its whole time column.
        size = self._chunk_rows
        if rows == 0:
            return 0
        times = self._arrays["time"]
        lo, hi = 0, (rows + size - 1) // size
        while hi - lo > 1:
            mid = (lo + hi) // 2
            first = int(times[mid * size])
            if first < t or (side == "right" and first == t):
                lo = mid
            else:
                hi = mid
        chunk = times[lo * size:min(rows, (lo + 1) * size)]
        return lo * size + int(np.searchsorted(chunk, t, side=side))

    def _columns_between(self, start: int | None, end: int | None
                         ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        # One consistent snapshot: committed rows, rows a flush is writing, rows buffered. Disk
        # reads stop at the committed count, which a concurrent flush only ever extends.
        with self._state_lock:
            rows = self._rows
            memory = self._inflight + self._pending
        lo = 0 if start is None else self._search(start, "left", rows)
        hi = rows if end is None else self._search(end, "right", rows)
        hi = max(lo, hi)
        t = self._arrays["time"][lo:hi] if hi > lo else np.empty(0, np.int64)
        columns = {n: self._arrays[n][lo:hi] if hi > lo else np.empty(0, _dtype(n))
                   for n in self._variables}
        if memory:
            pt, pcols = self._gather(memory)
            mask = np.ones(len(pt), dtype=bool)
            if start is not None:
                mask &= pt >= start
            if end is not None:
                mask &= pt <= end
            t = np.concatenate([t, pt[mask]])
            columns = {n: np.concatenate([columns[n], pcols[n][mask]]) for n in self._variables}
        return np.asarray(t, dtype=np.int64), columns

    def _var_attrs(self) -> dict[str, dict[str, Any]]:
        out = {}
        for name in self._variables:
            attrs = dict(self._arrays[name].attrs)
            if "flag_values" in attrs:
                attrs["flag_values"] = np.asarray(attrs["flag_values"], dtype=np.uint8)
            out[name] = attrs
        return out

    def _dataset_attrs(self) -> dict[str, Any]:
        return {k: v for k, v in self._root.attrs.items()
                if k not in ("twinbench_store", "twinbench_rows")}

    def read(self, start: Any = None, end: Any = None) -> Any:
        """The rows with ``start <= time <= end``: what is on disk plus what is buffered.

        Parameters
        ----------
        start, end : time, optional
            Inclusive bounds; None: unbounded.

        Returns
        -------
        xarray.Dataset
            Dimension ``time``, one variable per column with its CF attrs; the dataset attrs
            are the stored ones (user attrs, ``twinbench_variables``, ``twinbench_attrs_log``).
        """
        self._check_open()
        t, columns = self._columns_between(_as_bound(start, "start"), _as_bound(end, "end"))
        return _dataset(t, columns, self._var_attrs(), self._dataset_attrs())

    def to_netcdf(self, path: str | os.PathLike[str], start: Any = None, end: Any = None) -> Path:
        """Export the rows between `start` and `end` (all by default) to a NetCDF file.

        Written as NetCDF3 by :func:`twinbench.io.record.write_dataset` (times kept to the
        microsecond, quality codes as unsigned bytes).

        Parameters
        ----------
        path : str or path
            A file name ending with ``.nc``.
        start, end : time, optional
            Inclusive bounds.

        Returns
        -------
        pathlib.Path
        """
        from twinbench.io.record import write_dataset

        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"path: expected a file path, got {type(path).__name__}")
        if Path(path).suffix.lower() != ".nc":
            raise ValueError(f"path: expected a file name ending with .nc, got {str(path)!r}")
        return write_dataset(self.read(start, end), path)


# -- reading across both -----------------------------------------------------------------------

def _merge_duplicates(t: np.ndarray, columns: dict[str, np.ndarray]
                      ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Rows sorted by time, one per distinct time; per variable the last value that is present
    among rows sharing a time (rows of tags arriving apart at one time join into one)."""
    order = np.argsort(t, kind="stable")
    t = t[order]
    if len(t) < 2 or (t[1:] != t[:-1]).all():
        return t, {n: c[order] for n, c in columns.items()}
    starts = np.flatnonzero(np.concatenate([[True], t[1:] != t[:-1]]))
    index = np.arange(len(t))
    merged = {}
    for name, col in columns.items():
        col = col[order]
        present = col != Quality.NO_SAMPLE if _is_quality(name) else ~np.isnan(col)
        last = np.maximum.reduceat(np.where(present, index, -1), starts)
        merged[name] = np.where(last >= 0, col[np.maximum(last, 0)],
                                np.asarray(_fill(name), dtype=col.dtype)).astype(col.dtype)
    return t[starts], merged


def read_window(ring: RingBuffer, history: History | None, start: Any = None,
                end: Any = None) -> Any:
    """Rows with ``start <= time <= end`` read across a ring buffer and a history as one.

    Times before the ring's oldest row come from the history, the rest from the ring. The
    result is sorted by time with one row per time (rows sharing a time are merged: per
    variable, the last value present). Variables in only one of the two are missing (NaN, or
    ``NO_SAMPLE``) where the other supplies the row.

    Parameters
    ----------
    ring : RingBuffer
    history : History or None
    start, end : time, optional
        Inclusive bounds; None: unbounded.

    Returns
    -------
    xarray.Dataset

    Examples
    --------
    >>> import tempfile
    >>> ring = RingBuffer(["x"], capacity=2)
    >>> t = np.arange(4).astype("datetime64[s]")
    >>> with tempfile.TemporaryDirectory() as d, History(Path(d) / "h.zarr", ["x"]) as h:
    ...     for h_or_ring in (h, ring):
    ...         h_or_ring.append(t, {"x": [0.0, 1.0, 2.0, 3.0]})
    ...     ds = read_window(ring, h, start="1970-01-01T00:00:01Z")
    >>> ds["x"].values.tolist()
    [1.0, 2.0, 3.0]
    """
    if not isinstance(ring, RingBuffer):
        raise TypeError(f"ring: expected a RingBuffer, got {type(ring).__name__}")
    if history is not None and not isinstance(history, History):
        raise TypeError(f"history: expected a History or None, got {type(history).__name__}")
    lo, hi = _as_bound(start, "start"), _as_bound(end, "end")
    return _read_window(ring, history, lo, hi)


def _read_window(ring: RingBuffer, history: History | None, start: int | None,
                 end: int | None) -> Any:
    rt, rcols = ring._columns_between(start, end)
    attrs = dict(ring._attrs)
    ds_attrs: dict[str, Any] = {}
    parts = [(rt, rcols)]
    if history is not None:
        history._check_open()
        oldest = ring._time_range()[0] if len(ring) else None
        # The history is read only for what the ring no longer (or never) held.
        if oldest is None or start is None or start < oldest:
            hist_end = end if oldest is None else (oldest - 1 if end is None
                                                   else min(end, oldest - 1))
            if start is None or hist_end >= start:
                parts.insert(0, history._columns_between(start, hist_end))
        attrs = {**history._var_attrs(), **attrs}
        ds_attrs = history._dataset_attrs()
    names = list(ring.variables) + [n for n in attrs if n not in ring._columns]
    t = np.concatenate([p[0] for p in parts])
    columns = {}
    for name in names:
        columns[name] = np.concatenate([
            cols[name] if name in cols else np.full(len(pt), _fill(name), _dtype(name))
            for pt, cols in parts])
    t, columns = _merge_duplicates(t, columns)
    return _dataset(t, columns, attrs, ds_attrs)
