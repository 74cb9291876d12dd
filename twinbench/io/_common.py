"""Pieces every source shares: credentials, timeouts, write requests and write errors."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = ["WriteRejected", "check_timeout", "credentials", "write_items"]

_logger = logging.getLogger("twinbench.io")


class WriteRejected(Exception):
    """The equipment refused a write (an acknowledgement ``ok: false``, a Bad OPC-UA status).

    Attributes
    ----------
    rejected : dict of str to str
        Tag name to the reason, e.g. ``"BadOutOfRange"`` or the error text of an acknowledgement.
    written : dict of str to object
        Tags of the same request that were written (an OPC-UA write of several tags is not
        atomic), to what they read back as.

    Examples
    --------
    >>> raise WriteRejected({"speed": "out of range"})
    Traceback (most recent call last):
    ...
    twinbench.io.WriteRejected: write rejected: speed: out of range
    """

    def __init__(self, rejected: Mapping[str, str],
                 written: Mapping[str, Any] | None = None) -> None:
        self.rejected = dict(rejected)
        self.written = dict(written or {})
        detail = "; ".join(f"{tag}: {error}" for tag, error in self.rejected.items())
        super().__init__(f"write rejected: {detail}")


# Shown where users catch it: twinbench.io.WriteRejected (the public home).
WriteRejected.__module__ = "twinbench.io"


def check_timeout(value: Any, name: str) -> float:
    """`value` as finite seconds > 0, else a ValueError naming `name`."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not 0 < value < float("inf"):
        raise ValueError(f"{name}: expected finite seconds > 0, got {value!r}")
    return float(value)


def credentials(username: Any, password: Any, *, env_username: str, env_password: str,
                keyring_service: str, account: str) -> tuple[str | None, str | None]:
    """Username and password from the arguments, else the environment, else (password only)
    the keyring entry ``(keyring_service, f"{username}@{account}")``.

    The password's value never reaches an exception message or a log line.
    """
    if username is None:
        username = os.environ.get(env_username) or None
    elif not isinstance(username, str) or not username:
        raise TypeError(f"username: expected a non-empty str or None, got "
                        f"{type(username).__name__}")
    if password is None:
        password = os.environ.get(env_password) or None
        if password is None and username is not None:
            password = _keyring_password(keyring_service, f"{username}@{account}")
    elif not isinstance(password, str):
        # The type only: the value must never reach a message.
        raise TypeError(f"password: expected a str or None, got {type(password).__name__}")
    if password is not None and username is None:
        raise ValueError(f"password: given without a username (pass username= or set "
                         f"{env_username})")
    return username, password


def _keyring_password(service: str, user: str) -> str | None:
    try:
        import keyring  # optional dependency
    except ImportError:
        return None
    try:
        return keyring.get_password(service, user)
    except Exception:  # noqa: BLE001 - no usable keyring backend: fall back to no password
        _logger.warning("keyring lookup for %s (service %s) failed", user, service)
        return None


def write_items(tag_or_mapping: Any, value: Any) -> list[tuple[str, Any]]:
    """``write(tag, value)`` or ``write({tag: value, ...})`` as checked ``(tag, value)`` pairs."""
    if isinstance(tag_or_mapping, str):
        if value is None:
            raise ValueError(f"value: expected a value to write to {tag_or_mapping!r}, got None")
        items = [(tag_or_mapping, value)]
    elif isinstance(tag_or_mapping, Mapping):
        if value is not None:
            raise ValueError("value: give either a tag and a value or a mapping, not both")
        items = list(tag_or_mapping.items())
        if not items:
            raise ValueError("tag_or_mapping: expected at least one tag to write")
    else:
        raise TypeError(f"tag_or_mapping: expected a tag name or a mapping of tag to value, "
                        f"got {type(tag_or_mapping).__name__}")
    out = []
    for tag, val in items:
        if not isinstance(tag, str) or not tag:
            raise TypeError(f"tag_or_mapping: expected non-empty tag names, got {tag!r}")
        if isinstance(val, np.generic):
            val = val.item()
        if not isinstance(val, (bool, int, float, str)):
            raise TypeError(f"value: expected bool, int, float or str for {tag!r}, "
                            f"got {type(val).__name__}")
        if isinstance(val, float) and not np.isfinite(val):
            raise ValueError(f"value: expected a finite number for {tag!r}, got {val!r}")
        out.append((tag, val))
    return out


class LatestValues:
    """The newest sample of every tag seen so far (what ``read_latest()`` returns).

    Updating costs a few microseconds per batch whatever its size, so sources can afford it on
    every batch they hand out.
    """

    def __init__(self, tags: tuple[str, ...]) -> None:
        n = len(tags)
        self.tags = tags
        self.time = np.full(n, np.datetime64("NaT"), dtype="datetime64[ns]")
        self.value = np.full(n, np.nan)
        self.quality = np.zeros(n, dtype=np.uint8)

    def update(self, batch: Any) -> None:
        if not len(batch):
            return
        # Position of each tag's last sample in arrival order (ufunc.at is defined for
        # repeated indices, unlike plain fancy assignment).
        last = np.full(len(self.tags), -1, dtype=np.intp)
        np.maximum.at(last, batch.tag, np.arange(len(batch)))
        seen = last >= 0
        pos = last[seen]
        self.time[seen] = batch.time[pos]
        self.value[seen] = batch.value[pos]
        self.quality[seen] = batch.quality[pos]

    def batch(self) -> Any:
        from twinbench.io.batch import Batch

        seen = np.flatnonzero(~np.isnat(self.time))
        return Batch(seen.astype(np.int32), self.time[seen], self.value[seen],
                     self.quality[seen], tags=self.tags)


class LiveSource:
    """What the live sources share: ``async with``, :meth:`stop`, :meth:`batches`,
    :meth:`read_latest` and the sync facade for notebook cells (on a private loop thread).

    A subclass provides ``start()``, ``read(timeout)``, ``_shutdown()``, and the attributes
    ``_running``, ``_client``, ``_latest`` (:class:`LatestValues`), ``_sync``
    (:class:`~twinbench.io._sync.LoopThread`) and ``connect_timeout``.
    """

    _running: bool
    _client: Any
    _latest: LatestValues
    _sync: Any
    connect_timeout: float

    def __repr__(self) -> str:
        state = "connected" if getattr(self, "_connected", False) else "disconnected"
        return (f"<{type(self).__name__} {self.url} "  # type: ignore[attr-defined]
                f"{len(self.tags)} tags {state}>")  # type: ignore[attr-defined]

    async def __aenter__(self) -> Any:
        await self.start()  # type: ignore[attr-defined]
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.stop()

    async def stop(self) -> None:
        """Disconnect (bounded by ``connect_timeout``); idempotent. What is still buffered stays
        readable; :meth:`batches` ends once it is consumed."""
        if self._running or self._client is not None:
            await self._shutdown()  # type: ignore[attr-defined]

    async def batches(self) -> Any:
        """Yield non-empty batches as data arrive, until the source is stopped."""
        while True:
            batch = await self.read()  # type: ignore[attr-defined]
            if batch is None:
                return
            if len(batch):
                yield batch

    def read_latest(self) -> Any:
        """The newest consumed sample of every tag seen so far, as a batch (one per tag)."""
        return self._latest.batch()

    def start_sync(self) -> None:
        """``start()`` from synchronous code (a notebook cell), on a private loop thread."""
        self._sync.run(self.start(), 3 * self.connect_timeout + 1.0)  # type: ignore[attr-defined]

    def read_sync(self, timeout: float = 1.0) -> Any:
        """``read()`` from synchronous code: the next batch, empty after `timeout` s."""
        return self._sync.run(self.read(timeout),  # type: ignore[attr-defined]
                              timeout + self.connect_timeout)

    def stop_sync(self) -> None:
        """:meth:`stop` from synchronous code, then end the private loop thread."""
        if not self._sync.running:
            return
        try:
            self._sync.run(self.stop(), 2 * self.connect_timeout + 1.0)
        finally:
            self._sync.close(self.connect_timeout)
