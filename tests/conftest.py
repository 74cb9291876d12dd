"""Shared test configuration and fixtures.

The simulated plant is shared by every test directory: in-process plants on a loop thread
(``start_plant``, ``plant``, ``fast_plant``) and ``plant_process``
(:class:`twinbench.plant.PlantProcess`, the plant as a subprocess that a test can stop, kill
and restart on the same port).
"""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import Any

import pytest
from hypothesis import settings

from twinbench.plant import PlantProcess

# In CI, property tests draw the same examples every run (a failure there is reproducible, never
# a one-off) and are not timed per example on a shared machine.
settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")



def port_is_free(port: int) -> bool:
    """Whether a server could listen on `port` again (TIME_WAIT leftovers allowed, as servers
    bind with SO_REUSEADDR)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def wait_until(condition: Callable[[], Any], timeout: float, what: str,
               interval: float = 0.02) -> Any:
    """Poll `condition` until it returns a truthy value (returned) or fail after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


async def async_wait_until(condition: Callable[[], Awaitable[Any]], timeout: float, what: str,
                           interval: float = 0.02) -> Any:
    """`wait_until` for an async condition."""
    deadline = time.monotonic() + timeout
    while True:
        result = await condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(interval)


class LoopThread:
    """An asyncio loop on a daemon thread: the plants run there, tests talk to them over
    sockets from their own loops (``asyncio.run``)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True,
                                       name="plant-test-loop")
        self.thread.start()

    def run(self, coro: Awaitable[Any], timeout: float = 30.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture(scope="session")
def plant_loop() -> Iterator[LoopThread]:
    lt = LoopThread()
    try:
        yield lt
    finally:
        lt.close()


@pytest.fixture(scope="session")
def start_plant(plant_loop: LoopThread) -> Iterator[Callable[..., Any]]:
    """``start_plant(**Plant options)`` -> a started in-process Plant (free port), stopped at
    the end of the session (or earlier with ``stop_plant``)."""
    from twinbench.plant import Plant

    started: list[Any] = []

    def start(**options: Any) -> Any:
        options.setdefault("opcua_port", 0)
        options.setdefault("mqtt", "none")
        plant = Plant(**options)
        plant_loop.run(plant.start())
        started.append(plant)
        return plant

    try:
        yield start
    finally:
        for plant in started:
            plant_loop.run(plant.stop())


@pytest.fixture
def stop_plant(plant_loop: LoopThread) -> Callable[[Any], None]:
    return lambda plant: plant_loop.run(plant.stop())


@pytest.fixture(scope="session")
def plant(start_plant: Callable[..., Any]) -> Any:
    """The shared plant: pump and wind turbine in real time at 20 Hz, mosquitto started by the
    plant (``mqtt="auto"``), 50 bench tags. Tests that change setpoints or faults restore them."""
    from twinbench.plant._broker import find_mosquitto

    return start_plant(wind=True, rate=20.0, bench_tags=50, seed=0,
                       mqtt="auto" if find_mosquitto() else "none")


@pytest.fixture(scope="session")
def fast_plant(start_plant: Callable[..., Any]) -> Any:
    """A plant at speedup 60 (one simulated minute per second)."""
    return start_plant(speedup=60.0, rate=10.0, seed=1)


@pytest.fixture
def plant_process() -> Iterator[Callable[..., PlantProcess]]:
    """``plant_process(args=(), port=None, env=None, timeout=30)`` -> a started
    :class:`twinbench.plant.PlantProcess` (`timeout` for its ready line); killed at teardown if
    still running."""
    made: list[PlantProcess] = []

    def make(args: Sequence[str] = (), port: int | None = None,
             env: dict[str, str] | None = None, timeout: float = 30.0) -> PlantProcess:
        p = PlantProcess(args, port=port, env=env)
        made.append(p)
        p.start(timeout)
        return p

    try:
        yield make
    finally:
        for p in made:
            p.kill()


@pytest.fixture(name="wait_until")
def wait_until_fixture() -> Callable[..., Any]:
    """:func:`wait_until` as a fixture (test modules cannot import conftest in importlib mode)."""
    return wait_until


@pytest.fixture(name="async_wait_until")
def async_wait_until_fixture() -> Callable[..., Any]:
    return async_wait_until


@pytest.fixture(name="port_is_free")
def port_is_free_fixture() -> Callable[[int], bool]:
    return port_is_free
