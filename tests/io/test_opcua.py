"""The OPC-UA source against a real asyncua server on a loopback port.

These tests serve nodes the simulated plant does not have (strings, integers, Bad statuses,
far-future timestamps, hundreds of tags) from a small in-process server. The round trips
against the plant itself, its range checks and the kill/restart reconnection are in
``test_opcua_plant.py``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
from asyncua import Server, ua

from twinbench.io import WriteRejected
from twinbench.io.batch import Batch, Quality, concat
from twinbench.io.opcua import OpcUaSource, convert_for_write, opcua_source

from .conftest import free_port

UTC = dt.UTC


class DevServer:
    """An asyncua server with typed nodes; each test adds its own device object.

    Starting an asyncua server costs seconds (it builds the standard address space), so one
    server runs for the whole module on its own loop thread; tests reach it through
    :meth:`device`, whose nodes no other test touches.
    """

    def __init__(self, port: int) -> None:
        self.port = port
        self.url = f"opc.tcp://127.0.0.1:{port}/test"
        self.server: Server | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.idx = 2
        self.devices = 0

    async def start(self) -> None:
        server = Server()
        await server.init()
        server.set_endpoint(self.url)
        server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
        self.idx = await server.register_namespace("urn:twinbench:test")
        await server.start()
        self.server = server
        self.loop = asyncio.get_running_loop()

    async def stop(self) -> None:
        server, self.server = self.server, None
        if server is not None:
            await server.stop()

    async def call(self, coro: Any) -> Any:
        """Run `coro` on the server's loop (a no-op hop when already there)."""
        if asyncio.get_running_loop() is self.loop:
            return await coro
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self.loop))

    async def device(self, n_bulk: int = 0) -> Device:
        self.devices += 1
        device = Device(self, f"Dev{self.devices}")
        await self.call(device.build(n_bulk))
        return device


class Device:
    """Nodes ``ns=2;s=<name>.<var>`` under an object ``<name>``."""

    def __init__(self, server: DevServer, name: str) -> None:
        self.server = server
        self.name = name
        self.nodes: dict[str, Any] = {}

    async def build(self, n_bulk: int) -> None:
        idx, server = self.server.idx, self.server.server
        obj = await server.nodes.objects.add_object(ua.NodeId(self.name, idx),
                                                    f"{idx}:{self.name}")

        async def var(name: str, value: Any, vtype: Any, writable: bool = True) -> None:
            node = await obj.add_variable(ua.NodeId(f"{self.name}.{name}", idx), f"{idx}:{name}",
                                          ua.Variant(value, vtype))
            if writable:
                await node.set_writable()
            self.nodes[name] = node

        await var("x", 0.0, ua.VariantType.Double)
        await var("y", 0.0, ua.VariantType.Double)
        await var("count", 0, ua.VariantType.Int32)
        await var("small", 0, ua.VariantType.Byte)
        await var("flag", False, ua.VariantType.Boolean)
        await var("text", "hello", ua.VariantType.String)
        await var("ro", 1.0, ua.VariantType.Double, writable=False)
        for i in range(n_bulk):
            await var(f"b{i:04d}", 0.0, ua.VariantType.Double)

    def tags(self, *names: str) -> dict[str, str]:
        return {name: f"ns=2;s={self.name}.{name}" for name in names}

    async def set(self, name: str, value: Any, vtype: Any = ua.VariantType.Double,
                  status: int = 0, source_time: dt.datetime | None = None) -> None:
        """Write a value server-side, as equipment would (any type, status and timestamp)."""
        dv = ua.DataValue(ua.Variant(value, vtype), StatusCode=ua.StatusCode(status),
                          SourceTimestamp=source_time or dt.datetime.now(UTC),
                          ServerTimestamp=dt.datetime.now(UTC))
        await self.server.call(self.server.server.write_attribute_value(self.nodes[name].nodeid,
                                                                        dv))

    async def get(self, name: str) -> Any:
        return await self.server.call(self.nodes[name].read_value())

    async def vtype(self, name: str) -> Any:
        return await self.server.call(self.nodes[name].read_data_type_as_variant_type())


@pytest.fixture(scope="module")
def dev_server() -> Iterator[DevServer]:
    """One DevServer on a loop thread for the module."""
    server = DevServer(free_port())
    ready = threading.Event()
    done = threading.Event()
    errors: list[BaseException] = []

    def run() -> None:
        async def main() -> None:
            try:
                await server.start()
            except BaseException as exc:  # noqa: BLE001 - reported to the fixture
                errors.append(exc)
                ready.set()
                return
            ready.set()
            while not done.is_set():
                await asyncio.sleep(0.05)
            await server.stop()
        asyncio.run(main())

    thread = threading.Thread(target=run, daemon=True, name="opcua-dev-server")
    thread.start()
    assert ready.wait(60), "the OPC-UA test server did not start within 60 s"
    if errors:
        raise errors[0]
    yield server
    done.set()
    thread.join(30)


async def collect(source: OpcUaSource, done: Callable[[Batch], bool],
                  timeout: float = 10.0) -> Batch:
    """Read batches until `done(all samples so far)` holds; fail after `timeout` s."""
    batches: list[Batch] = [Batch.empty(source.tags.names)]
    deadline = time.monotonic() + timeout
    while not done(concat(batches)):
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"condition not met within {timeout} s; got "
                                 f"{len(concat(batches))} samples, status {source.status}")
        batch = await source.read(min(left, 0.5))
        assert batch is not None, "source stopped while collecting"
        batches.append(batch)
    return concat(batches)


def values_of(batch: Batch, tag: str) -> list[float]:
    return batch.select(tag).value.tolist()


# -- subscriptions ----------------------------------------------------------------------------


def test_values_arrive_in_order_with_source_timestamps_and_quality(dev_server):
    async def main():
        dev = await dev_server.device()
        source = opcua_source(dev_server.url, dev.tags("x", "y"), publishing_interval=20)
        await source.start()
        try:
            t0 = dt.datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
            for k in range(1, 6):
                await dev.set("x", float(k), source_time=t0 + dt.timedelta(seconds=k))
                await asyncio.sleep(0.03)  # one publishing interval per value
            # A Bad value is kept with its quality, not dropped.
            await dev.set("y", 7.5, status=ua.StatusCodes.BadSensorFailure)
            data = await collect(source, lambda b: 5.0 in values_of(b, "x")
                                 and Quality.BAD in b.select("y").quality)
            return data, source.status
        finally:
            await source.stop()

    data, status = asyncio.run(main())
    x = data.select("x")
    good = x.value > 0
    assert x.value[good].tolist() == [1.0, 2.0, 3.0, 4.0, 5.0]
    expected = np.array([f"2026-11-01T12:00:0{k}" for k in range(1, 6)], dtype="datetime64[ns]")
    np.testing.assert_array_equal(x.time[good], expected)
    assert (x.quality[good] == Quality.GOOD).all()
    y = data.select("y")  # the server sends the Bad status (and may leave the value out)
    assert y.quality[-1] == Quality.BAD and (y.value[-1] == 7.5 or np.isnan(y.value[-1]))
    assert status["decode"]["flags"]["wrong_type"] == 0  # a Bad status is not a decode error
    assert status["connected"] and status["subscriptions"] == 1 and status["items"] == 2
    assert status["publishes"] >= 2 and status["values"] == len(data)


def test_non_numeric_values_and_untrusted_timestamps_are_marked_and_counted(dev_server):
    async def main():
        dev = await dev_server.device()
        source = opcua_source(dev_server.url, dev.tags("x", "text", "flag", "count"),
                              publishing_interval=20, max_clock_skew=60.0)
        await source.start()
        try:
            await collect(source, lambda b: len(b) >= 4)  # the initial values
            far = dt.datetime.now(UTC) + dt.timedelta(days=365)
            before = np.datetime64(time.time_ns(), "ns")
            await dev.set("x", 3.0, source_time=far)
            await dev.set("text", "world", ua.VariantType.String)
            await dev.set("flag", True, ua.VariantType.Boolean)
            await dev.set("count", 42, ua.VariantType.Int32)
            data = await collect(source, lambda b: 42.0 in values_of(b, "count")
                                 and 3.0 in values_of(b, "x")
                                 and 1.0 in values_of(b, "flag")
                                 and len(b.select("text")) >= 1)
            return data, source.status, before
        finally:
            await source.stop()

    data, status, before = asyncio.run(main())
    x = data.select("x")
    late = x.value == 3.0
    assert x.quality[late].tolist() == [Quality.UNCERTAIN]
    assert x.time[late][0] >= before  # the receive time, not a year ahead
    text = data.select("text")
    assert np.isnan(text.value).all() and (text.quality == Quality.BAD_DECODE).all()
    flags = status["decode"]["flags"]
    assert flags["future_timestamp"] == 1
    assert flags["wrong_type"] == 2  # "hello" at subscription time, then "world"
    assert status["handler_errors"] == 0


def test_many_tags_are_split_across_subscriptions(dev_server):
    n = 250

    async def main():
        dev = await dev_server.device(n_bulk=n)
        names = [f"b{i:04d}" for i in range(n)]
        source = opcua_source(dev_server.url, dev.tags(*names), publishing_interval=50,
                              max_items_per_subscription=100)
        await source.start()
        try:
            await collect(source, lambda b: len(b) >= n)  # initial values
            for i, name in enumerate(names):
                await dev.set(name, float(i + 1))
            data = await collect(source, lambda b: np.count_nonzero(b.value > 0) >= n)
            return data, source.status
        finally:
            await source.stop()

    data, status = asyncio.run(main())
    assert status["subscriptions"] == 3 and status["items"] == n
    got = data.take(np.flatnonzero(data.value > 0))
    np.testing.assert_array_equal(np.sort(got.value), np.arange(1.0, n + 1))
    np.testing.assert_array_equal(got.value, got.tag + 1.0)  # each value on its own tag


def test_absolute_deadband_suppresses_small_changes(dev_server):
    async def main():
        dev = await dev_server.device()
        source = opcua_source(dev_server.url, dev.tags("x"), publishing_interval=20,
                              deadband=1.0)
        await source.start()
        try:
            await collect(source, lambda b: len(b) >= 1)
            for value in (0.5, 0.9, 2.0, 2.5, 4.0):
                await dev.set("x", value)
                await asyncio.sleep(0.03)
            data = await collect(source, lambda b: 4.0 in values_of(b, "x"))
            return data
        finally:
            await source.stop()

    assert values_of(asyncio.run(main()), "x") == [2.0, 4.0]


def test_browse_paths_resolve_and_missing_nodes_are_named(dev_server):
    async def main():
        dev = await dev_server.device()
        source = opcua_source(dev_server.url, {"x": f"0:Objects/2:{dev.name}/2:x",
                                                "ghost": f"ns=2;s={dev.name}.nothing",
                                                "lost": f"0:Objects/2:{dev.name}/2:nothing"})
        with pytest.raises(LookupError) as info:
            await source.start()
        assert not source.status["connected"]
        lenient = opcua_source(dev_server.url, {"x": f"0:Objects/2:{dev.name}/2:x",
                                                     "ghost": f"ns=2;s={dev.name}.nothing"},
                               missing="warn", publishing_interval=20)
        await lenient.start()
        try:
            await dev.set("x", 9.0)
            data = await collect(lenient, lambda b: 9.0 in values_of(b, "x"))
            return str(info.value), lenient.status, data
        finally:
            await lenient.stop()

    message, status, data = asyncio.run(main())
    assert "ghost (BadNodeIdUnknown)" in message and "lost (Bad" in message
    assert status["failed"] == {"ghost": "BadNodeIdUnknown"} and status["items"] == 1
    assert set(data.tag.tolist()) == {0}


def test_browse_returns_the_address_space_as_a_tree(dev_server):
    async def main():
        dev = await dev_server.device()
        source = opcua_source(dev_server.url, dev.tags("x"))
        await source.start()
        try:
            return dev.name, await source.browse(depth=2)
        finally:
            await source.stop()

    name, tree = asyncio.run(main())
    node = tree.find(name)
    assert node is not None and node.address == f"ns=2;s={name}" and node.kind == "Object"
    assert node.variables()["x"] == f"ns=2;s={name}.x"
    assert set(node.variables()) == {"x", "y", "count", "small", "flag", "text", "ro"}
    assert f"2:{name}" in str(tree) and tree.name == "0:Objects"


def test_overflow_drops_the_oldest_samples_and_counts_them(dev_server):
    async def main():
        dev = await dev_server.device()
        source = opcua_source(dev_server.url, dev.tags("x"), publishing_interval=20,
                              buffer_size=3)
        await source.start()
        try:
            for k in range(1, 11):
                await dev.set("x", float(k))
                await asyncio.sleep(0.03)
            deadline = time.monotonic() + 10
            while 10.0 not in source._buffer[-1][2] if source._buffer else True:
                assert time.monotonic() < deadline, source.status
                await asyncio.sleep(0.02)
            status = source.status
            data = await source.read(0.1)
            return status, data
        finally:
            await source.stop()

    status, data = asyncio.run(main())
    assert status["queued"] <= 3
    assert status["dropped_overflow"] == status["values"] - status["queued"]
    assert data.value[-1] == 10.0 and len(data) == status["queued"]


# -- writes -----------------------------------------------------------------------------------


def test_writes_convert_to_the_node_type_and_read_back(dev_server):
    async def main():
        dev = await dev_server.device()
        source = opcua_source(dev_server.url, dev.tags("x", "count", "small", "flag", "text",
                                                   "ro"))
        await source.start()
        try:
            written = await source.write({"x": 3, "count": 2.0, "flag": 1, "text": "hi"})
            on_server = {name: await dev.get(name)
                         for name in ("x", "count", "flag", "text")}
            types = {name: await dev.vtype(name)
                     for name in ("x", "count")}
            errors = {}
            for bad in ({"count": 2.5}, {"small": 300}, {"flag": "yes"}, {"ro": 1.0},
                        {"x": "high"}):
                with pytest.raises(WriteRejected) as info:
                    await source.write(bad)
                errors.update(info.value.rejected)
            with pytest.raises(WriteRejected) as info:  # partly written
                await source.write({"x": 5.5, "ro": 2.0})
            partial = info.value
            with pytest.raises(KeyError, match="'nope'"):
                await source.write("nope", 1.0)
            return written, on_server, types, errors, partial, source.status
        finally:
            await source.stop()

    written, on_server, types, errors, partial, status = asyncio.run(main())
    assert written == {"x": 3.0, "count": 2, "flag": True, "text": "hi"}
    assert on_server == written
    assert types == {"x": ua.VariantType.Double, "count": ua.VariantType.Int32}
    assert errors["count"].startswith("BadTypeMismatch") and "whole number" in errors["count"]
    assert errors["small"].startswith("BadTypeMismatch") and "out of range" in errors["small"]
    assert errors["flag"].startswith("BadTypeMismatch")
    assert errors["x"].startswith("BadTypeMismatch")
    assert errors["ro"] in ("BadUserAccessDenied", "BadNotWritable")
    assert partial.written == {"x": 5.5} and set(partial.rejected) == {"ro"}
    assert status["write_errors"] == 6 and status["writes"] == 5


def test_convert_for_write_rules():
    assert convert_for_write(True, ua.VariantType.Boolean) is True
    assert convert_for_write(0, ua.VariantType.Boolean) is False
    assert convert_for_write(255, ua.VariantType.Byte) == 255
    assert convert_for_write(-1.0, ua.VariantType.Int64) == -1
    with pytest.raises(ValueError, match="out of range"):
        convert_for_write(-1, ua.VariantType.UInt32)
    with pytest.raises(TypeError):
        convert_for_write(True, ua.VariantType.Double)
    with pytest.raises(ValueError, match="Float"):
        convert_for_write(1e39, ua.VariantType.Float)
    with pytest.raises(TypeError, match="not writable"):
        convert_for_write(b"x", ua.VariantType.ByteString)


# -- connection: timeouts, sync facade, reconnection ------------------------------------------


def test_unreachable_and_silent_servers_fail_within_the_timeout():
    port = free_port()  # nothing listens here
    src = opcua_source(f"opc.tcp://127.0.0.1:{port}", {"x": "ns=2;s=Dev.x"}, connect_timeout=2.0)
    t0 = time.monotonic()
    with pytest.raises(ConnectionError, match=f"127.0.0.1:{port}"):
        asyncio.run(src.start())
    assert time.monotonic() - t0 < 2.0

    with socket.socket() as silent:  # accepts connections, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        url = f"opc.tcp://127.0.0.1:{silent.getsockname()[1]}"
        src = opcua_source(url, {"x": "ns=2;s=Dev.x"}, connect_timeout=1.0, request_timeout=1.0)
        t0 = time.monotonic()
        with pytest.raises(TimeoutError, match=url):
            asyncio.run(src.start())
        assert time.monotonic() - t0 < 4.0


def test_sync_facade_runs_in_plain_code(dev_server):
    """What a notebook cell does: no await, no event loop of its own."""
    dev = asyncio.run(dev_server.device())
    source = opcua_source(dev_server.url, dev.tags("x", "count"), publishing_interval=20)
    try:
        source.start_sync()
        source.start_sync()  # idempotent: re-running the cell does not subscribe twice
        assert source.status["subscriptions"] == 1
        assert source.write_sync("count", 7) == {"count": 7}
        deadline = time.monotonic() + 10
        seen: list[float] = []
        while 7.0 not in seen:
            assert time.monotonic() < deadline, source.status
            seen += values_of(source.read_sync(0.5), "count")
        assert source.read_values_sync(["count"]).value.tolist() == [7.0]
        assert source.read_latest().select("count").value.tolist() == [7.0]
        assert "x" in source.browse_sync(f"ns=2;s={dev.name}", depth=1).variables()
    finally:
        source.stop_sync()
    assert source.read_sync(0.1) is None  # stopped and drained
