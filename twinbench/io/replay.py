"""Replay: play a recording back through the source interface, so a twin runs on it as on live data.

:func:`replay` takes a recording (a path written by :mod:`twinbench.io.record` or the dataset
itself) and returns a :class:`ReplaySource` with the MQTT source's interface: async
``start()``/``stop()``, ``read(timeout)``, ``batches()``, ``status``, ``read_latest()`` and the
sync facade ``start_sync()``/``read_sync()``/``stop_sync()``. Batches come in time order; with a
``speed`` the samples are released at ``speed`` times the recorded pace (a sample recorded
``dt`` seconds after the first comes ``dt / speed`` seconds after ``start()``), with
``speed=None`` as fast as the reader takes them.

Examples
--------
>>> from twinbench.io.batch import Batch
>>> from twinbench.io.record import dataset_from_batch
>>> ds = dataset_from_batch(Batch([0, 0], ["2026-01-01T00:00", "2026-01-01T00:01"], [1.0, 2.0],
...                               tags=["speed"]))
>>> src = replay(ds, speed=None)
>>> src.start_sync(); b = src.read_sync(); src.stop_sync()
>>> b.value.tolist()
[1.0, 2.0]
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import time
from collections.abc import AsyncIterator
from typing import Any

import numpy as np

from twinbench.io._sync import LoopThread
from twinbench.io.batch import Batch, Quality

__all__ = ["ReplaySource", "replay"]


def replay(path_or_dataset: Any, speed: float | None = 1.0, *, max_batch: int = 10_000) -> ReplaySource:
    """A source playing back a recording.

    Parameters
    ----------
    path_or_dataset : str, path or xarray.Dataset
        A ``.nc`` (or ``.zarr``) file written by :func:`~twinbench.io.record.record`, or such a
        dataset: a ``time`` coordinate, a variable per tag and a ``<tag>_quality`` per tag.
    speed : float or None, default 1.0
        Pace relative to real time, > 0; None or ``inf``: as fast as possible.
    max_batch : int, default 10000
        Most samples in one batch.

    Examples
    --------
    >>> from twinbench.io.record import dataset_from_batch
    >>> src = replay(dataset_from_batch(Batch([0], ["2026-01-01"], [1.0], tags=["x"])), speed=2)
    >>> src.tags, src.status["samples"]
    (('x',), 1)
    """
    if speed is not None:
        if isinstance(speed, bool) or not isinstance(speed, (int, float)) or math.isnan(speed) \
                or speed <= 0:
            raise ValueError(f"speed: expected a number > 0, inf or None, got {speed!r}")
        if math.isinf(speed):
            speed = None
    if isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1:
        raise ValueError(f"max_batch: expected an int >= 1, got {max_batch!r}")
    ds, where = _open(path_or_dataset)
    return ReplaySource(_to_batch(ds), speed=None if speed is None else float(speed),
                        max_batch=max_batch, origin=where, attrs=dict(ds.attrs))


def _open(obj: Any) -> tuple[Any, str]:
    import xarray as xr

    if isinstance(obj, xr.Dataset):
        return obj, "<dataset>"
    if not isinstance(obj, (str, os.PathLike)):
        raise TypeError(f"path_or_dataset: expected a file path or an xarray.Dataset, "
                        f"got {type(obj).__name__}")
    path = os.fspath(obj)
    if not os.path.exists(path):
        raise FileNotFoundError(f"path_or_dataset: no recording at {path!r}")
    if path.rstrip("/").lower().endswith(".zarr"):
        return xr.open_zarr(path, consolidated=False).load(), path
    with xr.open_dataset(path, engine="scipy") as ds:
        return ds.load(), path


def _to_batch(ds: Any) -> Batch:
    """Wide dataset to a long batch in time order (equal times: tag order)."""
    if "time" not in ds.coords:
        raise ValueError("path_or_dataset: expected a 'time' coordinate")
    names: list[str] = []
    recorded = ds.attrs.get("twinbench_tags")
    if isinstance(recorded, str):
        names = [n for n in json.loads(recorded) if n in ds.data_vars]
    if not names:
        names = [n for n in ds.data_vars if f"{n}_quality" in ds.data_vars]
    if not names:
        raise ValueError("path_or_dataset: no tag variables (a variable with a <tag>_quality "
                         "partner) in the dataset")
    times = np.asarray(ds["time"].values).astype("datetime64[ns]")
    values = np.stack([np.asarray(ds[n].values, dtype=np.float64) for n in names])
    quality = np.stack([np.asarray(ds[f"{n}_quality"].values).astype(np.int64) % 256
                        for n in names]).astype(np.uint8)
    # Time-major flattening keeps time order, and tag order within one time.
    present = (quality != Quality.NO_SAMPLE).T
    time_idx, tag_idx = np.nonzero(present)
    return Batch._trusted(tag_idx.astype(np.int32), times[time_idx],
                          values.T[present].copy(), quality.T[present].copy(), tuple(names))


class ReplaySource:
    """Plays a long :class:`Batch` back in time order; built by :func:`replay`.

    ``read(timeout)`` returns the samples that are due (all remaining ones, up to ``max_batch``,
    when ``speed`` is None), an empty batch when none came due within `timeout`, and None once
    the recording is exhausted or the source stopped.
    """

    def __init__(self, data: Batch, *, speed: float | None, max_batch: int, origin: str,
                 attrs: dict[str, Any]) -> None:
        self.data = data
        self.tags = data.tags
        self.speed = speed
        self.max_batch = max_batch
        self.url = f"replay:{origin}"
        self.attrs = attrs
        self._t_ns = data.time.view(np.int64)
        self._offset_s = ((self._t_ns - self._t_ns[0]) / 1e9) if len(data) else np.empty(0)
        self._pos = 0
        self._batches = 0
        self._running = False
        self._started_at: float | None = None
        self._stopped: asyncio.Event | None = None
        n = len(self.tags)
        self._latest_time = np.full(n, np.datetime64("NaT"), dtype="datetime64[ns]")
        self._latest_value = np.full(n, np.nan)
        self._latest_quality = np.zeros(n, dtype=np.uint8)
        self._sync = LoopThread("twinbench-replay", f"ReplaySource {self.url}")

    def __repr__(self) -> str:
        return f"<ReplaySource {self.url} {len(self.tags)} tags {self._pos}/{len(self.data)}>"

    @property
    def status(self) -> dict[str, Any]:
        """Counters, JSON-serialisable; ``recorded_status``: the source's status when recorded."""
        recorded = self.attrs.get("twinbench_status")
        return {"connected": self._running, "url": self.url, "speed": self.speed,
                "samples": len(self.data), "position": self._pos,
                "remaining": len(self.data) - self._pos, "batches": self._batches,
                "recorded_status": json.loads(recorded) if isinstance(recorded, str) else None}

    def read_latest(self) -> Batch:
        """The newest replayed sample of every tag seen so far (one sample per tag)."""
        seen = np.flatnonzero(~np.isnat(self._latest_time))
        return Batch(seen.astype(np.int32), self._latest_time[seen], self._latest_value[seen],
                     self._latest_quality[seen], tags=self.tags)

    async def start(self) -> None:
        """Start the clock: the first sample is due now."""
        self._stopped = asyncio.Event()
        self._running = True
        self._started_at = time.monotonic()

    async def stop(self) -> None:
        """Stop; later reads return None."""
        self._running = False
        if self._stopped is not None:
            self._stopped.set()

    def _due_end(self) -> int:
        end = len(self.data)
        if self.speed is not None:
            elapsed = (time.monotonic() - self._started_at) * self.speed
            end = int(np.searchsorted(self._offset_s, elapsed, side="right"))
        return min(end, self._pos + self.max_batch)

    async def read(self, timeout: float | None = None) -> Batch | None:
        """The samples due now, waiting up to `timeout` s for one; None when finished."""
        if self._stopped is None:
            raise RuntimeError(f"ReplaySource {self.url}: call start() before reading")
        if not self._running or self._pos >= len(self.data):
            return None
        end = self._due_end()
        if end <= self._pos:
            wait = self._offset_s[self._pos] / self.speed - (time.monotonic() - self._started_at)
            if timeout is not None and timeout < wait:
                wait = timeout
            try:
                await asyncio.wait_for(self._stopped.wait(), max(wait, 0.0))
            except asyncio.TimeoutError:
                pass
            if not self._running:
                return None
            end = self._due_end()
        if end <= self._pos:
            return Batch.empty(self.tags)
        batch = self.data.take(np.arange(self._pos, end))
        self._pos = end
        self._batches += 1
        rev = batch.tag[::-1]
        tags, first = np.unique(rev, return_index=True)
        last = len(batch) - 1 - first
        self._latest_time[tags] = batch.time[last]
        self._latest_value[tags] = batch.value[last]
        self._latest_quality[tags] = batch.quality[last]
        return batch

    async def batches(self) -> AsyncIterator[Batch]:
        """Yield non-empty batches in time order until the recording ends or the source stops."""
        while True:
            batch = await self.read()
            if batch is None:
                return
            if len(batch):
                yield batch

    # -- sync facade ---------------------------------------------------------------------------

    def _run_sync(self, coro: Any, timeout: float | None) -> Any:
        return self._sync.run(coro, timeout)

    def start_sync(self) -> None:
        """:meth:`start` from synchronous code, on a private loop thread."""
        self._run_sync(self.start(), 5.0)

    def read_sync(self, timeout: float = 1.0) -> Batch | None:
        """:meth:`read` from synchronous code."""
        return self._run_sync(self.read(timeout), timeout + 5.0)

    def stop_sync(self) -> None:
        """:meth:`stop` from synchronous code, then end the private loop thread."""
        if not self._sync.running:
            return
        try:
            self._run_sync(self.stop(), 5.0)
        finally:
            self._sync.close(5.0)
