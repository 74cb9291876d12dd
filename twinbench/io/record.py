"""Recording: collect a source's batches for a while and keep them as an xarray dataset file.

:func:`arecord` (async) and :func:`record` (sync) read batches from a source for ``duration``
seconds (or until ``max_samples`` samples arrived), join them and build the wide dataset of
:meth:`~twinbench.io.batch.Batch.to_dataset`: one float64 variable per tag and a
``<tag>_quality`` variable per tag, with CF attrs. The dataset attrs hold, as JSON strings, the
tag addresses (``twinbench_tags``), the source's statistics at the end of the recording
(``twinbench_status``) and the source URL, all without credentials (user and password are cut
from URLs).

Files: ``.nc`` is written as NetCDF3 with xarray's ``scipy`` engine (no new dependency).
NetCDF3 has no 64-bit integers and no unsigned bytes, so times are stored as float64
microseconds since 1970-01-01 (to within a microsecond: sub-microsecond parts are lost, and
decoding may be off by ~0.1 µs) and quality codes as signed bytes with ``_Unsigned = "true"``
(xarray reads them back as uint8). ``.zarr`` keeps nanoseconds (zarr is a dependency; an
install without it gets an ImportError for a ``.zarr`` path).

In a notebook, use ``await arecord(...)``: the kernel stays responsive while recording.
:func:`record` called where an event loop is already running (a notebook cell) runs the
recording on a private thread and blocks the cell for ``duration`` seconds.

Examples
--------
>>> import numpy as np
>>> from twinbench.io.batch import Batch
>>> ds = dataset_from_batch(Batch([0, 0], ["2026-01-01T00:00", "2026-01-01T00:01"], [1.0, 2.0],
...                               tags=["speed"]), tags={"speed": "plant/pump1/speed"})
>>> ds["speed"].values.tolist(), ds.attrs["twinbench_tags"]
([1.0, 2.0], '{"speed": "plant/pump1/speed"}')
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import time
import urllib.parse
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from twinbench.io._sync import run_to_completion
from twinbench.io.batch import Batch, concat

__all__ = ["arecord", "dataset_from_batch", "record", "strip_credentials", "write_dataset"]


def strip_credentials(url: str) -> str:
    """The URL without user name and password.

    Examples
    --------
    >>> strip_credentials("mqtt://user:secret@broker:1884/x")
    'mqtt://broker:1884/x'
    """
    if not isinstance(url, str):
        raise TypeError(f"url: expected a str, got {type(url).__name__}")
    parts = urllib.parse.urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urllib.parse.urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


def _clean(value: Any) -> Any:
    # Status dicts may hold URLs; strip credentials anywhere they appear, keep JSON types.
    if isinstance(value, Mapping):
        return {str(k): _clean(v) for k, v in value.items()
                if str(k).lower() not in ("password", "username", "user", "credentials")}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, str) and "://" in value:
        return strip_credentials(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def dataset_from_batch(batch: Batch, *, tags: Any = None, status: Mapping[str, Any] | None = None,
                       url: str | None = None, units: Mapping[str, str] | None = None,
                       long_names: Mapping[str, str] | None = None,
                       attrs: Mapping[str, Any] | None = None) -> Any:
    """The wide recording dataset of `batch`, with recording metadata in its attrs.

    Parameters
    ----------
    batch : Batch
    tags : mapping of str to address, optional
        Tag addresses (a TagMap or a mapping of name to address text), stored as JSON.
    status : mapping, optional
        The source's statistics, stored as JSON (credentials removed).
    url : str, optional
        The source URL (credentials removed).
    units, long_names : mapping of str to str, optional
        CF attrs per tag.
    attrs : mapping, optional
        More dataset attrs (str or numbers).

    Examples
    --------
    >>> b = Batch([0], ["2026-01-01"], [3.0], tags=["x"])
    >>> dataset_from_batch(b, url="mqtt://u:p@h:1883").attrs["source"]
    'mqtt://h:1883'
    """
    if not isinstance(batch, Batch):
        raise TypeError(f"batch: expected a Batch, got {type(batch).__name__}")
    ds = batch.to_dataset(units=units, long_names=long_names)
    ds.attrs["Conventions"] = "CF-1.8"
    ds.attrs["title"] = "twinbench recording"
    ds.attrs["history"] = f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} twinbench record"
    if url is not None:
        ds.attrs["source"] = strip_credentials(url)
    addresses = {name: None for name in batch.tags}
    if tags is not None:
        addresses.update({str(k): str(v) for k, v in dict(tags).items()})
    ds.attrs["twinbench_tags"] = json.dumps(addresses)
    if status is not None:
        ds.attrs["twinbench_status"] = json.dumps(_clean(dict(status)), allow_nan=False)
    ds.attrs["twinbench_samples"] = len(batch)
    for key, value in dict(attrs or {}).items():
        ds.attrs[key] = value
    return ds


def write_dataset(ds: Any, path: str | os.PathLike[str]) -> Path:
    """Write a recording dataset to ``.nc`` (NetCDF3, scipy engine) or ``.zarr`` (needs zarr).

    Examples
    --------
    >>> import tempfile, xarray as xr
    >>> ds = dataset_from_batch(Batch([0], ["2026-01-01T00:00:00.5"], [1.0], tags=["x"]))
    >>> with tempfile.TemporaryDirectory() as d:
    ...     back = xr.open_dataset(write_dataset(ds, Path(d) / "r.nc"), engine="scipy").load()
    >>> str(back.time.values[0]), back["x_quality"].dtype
    ('2026-01-01T00:00:00.500000000', dtype('uint8'))
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path: expected a file path, got {type(path).__name__}")
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".nc", ".zarr"):
        raise ValueError(f"path: expected a .nc or .zarr file name, got {str(path)!r}")
    out = ds.copy()
    if suffix == ".zarr":
        if importlib.util.find_spec("zarr") is None:
            raise ImportError(f"path: writing {str(path)!r} needs the zarr package, which is not "
                              f"installed; use a .nc path")
        out.to_zarr(path, mode="w", consolidated=False)
        return path
    # NetCDF3: no int64 (times as float64 microseconds, to within a microsecond), no uint8.
    out["time"].encoding.update(units="microseconds since 1970-01-01", dtype="float64",
                                calendar="proleptic_gregorian")
    for name, var in list(out.data_vars.items()):
        if var.dtype.kind == "u" and var.dtype.itemsize == 1:
            # The netCDF "_Unsigned" convention: signed bytes on disk, uint8 again when read.
            attrs = dict(var.attrs, _Unsigned="true")
            if "flag_values" in attrs:
                attrs["flag_values"] = attrs["flag_values"].astype("int16")
            out[name] = (var.dims, var.values.view("int8"), attrs)
    out.to_netcdf(path, engine="scipy", format="NETCDF3_64BIT")
    return path


async def arecord(source: Any, duration: float, path: str | os.PathLike[str] | None = None, *,
                  max_samples: int | None = None, start: bool = True) -> Any:
    """Record `source` for `duration` seconds; return (and optionally write) the dataset.

    Parameters
    ----------
    source : source
        Anything with async ``start()``, ``stop()``, ``read(timeout)`` and ``status``
        (:func:`~twinbench.io.mqtt.mqtt_source`, :func:`~twinbench.io.replay.replay`).
    duration : float
        Seconds to record, > 0. The wait is bounded: recording ends at the latest then.
    path : str or path, optional
        Where to write: ``.nc`` or ``.zarr``.
    max_samples : int, optional
        Stop early once this many samples arrived.
    start : bool, default True
        Start the source first and stop it at the end. False: the caller manages it.

    Returns
    -------
    xarray.Dataset
    """
    if isinstance(duration, bool) or not isinstance(duration, (int, float)) \
            or not math.isfinite(duration) or duration <= 0:
        raise ValueError(f"duration: expected a finite number of seconds > 0, got {duration!r}")
    if max_samples is not None and (isinstance(max_samples, bool)
                                    or not isinstance(max_samples, int) or max_samples < 1):
        raise ValueError(f"max_samples: expected an int >= 1 or None, got {max_samples!r}")
    for attr in ("read", "status"):
        if not hasattr(source, attr):
            raise TypeError(f"source: expected a source with read() and status, "
                            f"got {type(source).__name__}")
    return await _arecord(source, float(duration), path, max_samples, start)


async def _arecord(source: Any, duration: float, path: Any, max_samples: int | None,
                   start: bool) -> Any:
    if start:
        await source.start()
    batches: list[Batch] = []
    count = 0
    began = time.time()
    try:
        deadline = time.monotonic() + duration
        while (left := deadline - time.monotonic()) > 0:
            batch = await source.read(timeout=min(left, 0.5))
            if batch is None:
                break
            if len(batch):
                batches.append(batch)
                count += len(batch)
                if max_samples is not None and count >= max_samples:
                    break
    finally:
        if start:
            await source.stop()
    tm = getattr(source, "tags", None)
    names = tuple(getattr(tm, "names", None) or (batches[0].tags if batches else ()))
    batch = concat(batches, tags=names) if names else Batch.empty(("value",))
    units = getattr(tm, "units", None) if tm is not None and hasattr(tm, "names") else None
    long_names = getattr(tm, "long_names", None) if tm is not None and hasattr(tm, "names") \
        else None
    addresses = {n: str(tm[n]) for n in tm.names} if hasattr(tm, "names") else None
    ds = dataset_from_batch(batch, tags=addresses, status=source.status,
                            url=getattr(source, "url", None), units=units, long_names=long_names,
                            attrs={"time_coverage_start_recording": time.strftime(
                                "%Y-%m-%dT%H:%M:%SZ", time.gmtime(began)),
                                   "recording_duration_s": time.time() - began})
    if path is not None:
        write_dataset(ds, path)
    return ds


def record(source: Any, duration: float, path: str | os.PathLike[str] | None = None, *,
           max_samples: int | None = None, start: bool = True) -> Any:
    """:func:`arecord` from synchronous code; same parameters, returns the dataset.

    Without a running event loop it runs its own. Inside one (a notebook cell) it records on a
    private thread and blocks until done: prefer ``await arecord(...)`` there.
    """
    return run_to_completion(
        lambda: arecord(source, duration, path, max_samples=max_samples, start=start),
        "twinbench-record")
