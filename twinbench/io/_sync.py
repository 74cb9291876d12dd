"""The sync facade every source shares: its coroutines run on a private event-loop thread, so a
notebook cell can call them without blocking (or needing) the kernel's own loop (asyncua.sync's
pattern)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from typing import Any

__all__ = ["LoopThread", "run_to_completion"]


class LoopThread:
    """A private asyncio loop running on a daemon thread, started on first use.

    Parameters
    ----------
    name : str
        Thread name (shows in debuggers and thread dumps).
    owner : str
        How the owner is named in timeout messages (e.g. ``"MqttSource mqtt://..."``).
    """

    def __init__(self, name: str, owner: str):
        self.name = name
        self.owner = owner
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        return self._loop is not None

    def run(self, coro: Any, timeout: float | None) -> Any:
        """Run ``coro`` on the loop thread and wait at most ``timeout`` seconds for its result."""
        if self._loop is None:
            loop = asyncio.new_event_loop()
            thread = threading.Thread(target=loop.run_forever, daemon=True, name=self.name)
            thread.start()
            self._loop, self._thread = loop, thread
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise TimeoutError(f"{self.owner}: no result within {timeout:g} s") from None

    def close(self, join_timeout: float) -> None:
        """Stop the loop and its thread (waiting at most ``join_timeout`` seconds)."""
        loop, thread = self._loop, self._thread
        self._loop = self._thread = None
        if loop is None:
            return
        loop.call_soon_threadsafe(loop.stop)
        if thread is not None:
            thread.join(join_timeout)
        if not loop.is_running():
            loop.close()


def run_to_completion(make: Any, name: str) -> Any:
    """Run the coroutine ``make()`` returns to completion from synchronous code and return its
    result (or raise its exception): with ``asyncio.run`` when no loop runs on this thread, else
    on a worker thread named `name` (a notebook cell, whose thread runs the kernel's loop),
    blocking until it is done."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(make())
    outcome: dict[str, Any] = {}

    def work() -> None:
        try:
            outcome["value"] = asyncio.run(make())
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            outcome["error"] = exc

    worker = threading.Thread(target=work, name=name, daemon=True)
    worker.start()
    worker.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]
