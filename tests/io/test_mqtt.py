"""The MQTT source against a real mosquitto broker (fixture in conftest.py)."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.parse
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np
import pytest

from twinbench.io.batch import Batch, Quality, concat
from twinbench.io.mqtt import MqttSource, WriteRejected, mqtt_source
from twinbench.io.tags import tag_map

TOPIC = "plant/pump1/telemetry"


@contextmanager
def publisher(url: str) -> Iterator[Callable[..., None]]:
    """A paho client; yields publish(topic, payload, qos=1) that waits for the broker's ack."""
    from paho.mqtt.client import CallbackAPIVersion, Client

    parts = urllib.parse.urlsplit(url)
    client = Client(CallbackAPIVersion.VERSION2)
    client.max_queued_messages_set(0)
    client.max_inflight_messages_set(1000)
    client.connect(parts.hostname, parts.port)
    client.loop_start()
    infos = []

    def publish(topic: str, payload: bytes | str, qos: int = 1) -> None:
        infos.append(client.publish(topic, payload, qos=qos))

    try:
        yield publish
        for info in infos:
            info.wait_for_publish(10)
            assert info.is_published()
    finally:
        client.disconnect()
        client.loop_stop()


async def collect(source: MqttSource, done: Callable[[Batch], bool], timeout: float = 10.0) -> Batch:
    """Read batches until `done(all samples so far)` holds; fail after `timeout` s."""
    batches: list[Batch] = []
    deadline = time.monotonic() + timeout
    while True:
        so_far = concat(batches) if batches else None
        if so_far is not None and done(so_far):
            return so_far
        left = deadline - time.monotonic()
        if left <= 0:
            got = 0 if so_far is None else len(so_far)
            raise AssertionError(f"condition not met within {timeout} s; got {got} "
                                 f"samples, status {source.status}")
        batch = await source.read(timeout=min(left, 0.5))
        assert batch is not None
        if len(batch):
            batches.append(batch)


def test_json_round_trip_and_field_path(mosquitto: str) -> None:
    tags = {"temp": f"{TOPIC}#temperature", "current": f"{TOPIC}#motor.i[1]",
            "speed": "plant/pump1/speed#rpm"}

    async def main() -> Batch:
        source = mqtt_source(mosquitto, tags, time_field="ts", time_format="epoch_ms")
        await source.start()
        try:
            assert source.status["connected"]
            with publisher(mosquitto) as publish:
                for k in range(3):
                    publish(TOPIC, json.dumps({"ts": 1_700_000_000_000 + k, "temperature": 60.0 + k,
                                               "motor": {"i": [1.0, 3.0 + k]}}))
                publish("plant/pump1/speed", json.dumps({"ts": 1_700_000_000_100, "rpm": 1450}))
            data = await collect(source, lambda b: len(b) == 7)
            latest = source.read_latest()
            assert dict(zip(latest.tag.tolist(), latest.value.tolist())) == {0: 62.0, 1: 5.0,
                                                                               2: 1450.0}
            assert source.status["batches"] >= 1 and source.status["messages"] == 4
            return data
        finally:
            await source.stop()
            assert not source.status["connected"]

    data = asyncio.run(main())
    assert data.tags == ("temp", "current", "speed")
    temp = data.select("temp")
    assert temp.value.tolist() == [60.0, 61.0, 62.0]
    assert temp.time.tolist() == np.array(
        [1_700_000_000_000, 1_700_000_000_001, 1_700_000_000_002], "datetime64[ms]"
    ).astype("datetime64[ns]").tolist()
    assert data.select("current").value.tolist() == [3.0, 4.0, 5.0]
    assert data.select("speed").value.tolist() == [1450.0]
    assert (data.quality == Quality.GOOD).all()


def test_bad_payloads_counted_good_ones_flow(mosquitto: str) -> None:
    async def main() -> MqttSource:
        source = mqtt_source(mosquitto, {"temp": f"{TOPIC}#temperature"})
        await source.start()
        try:
            with publisher(mosquitto) as publish:
                publish(TOPIC, b"hello")
                publish(TOPIC, b'{"temperature": 61.5')
                publish(TOPIC, b'{"other": 1}')
                publish(TOPIC, b'{"temperature": 20.5}')
                publish(TOPIC, b'{"temperature": 21.5}')
            data = await collect(source, lambda b: len(b) == 2)
            assert data.value.tolist() == [20.5, 21.5]
            return source
        finally:
            await source.stop()

    source = asyncio.run(main())
    decode = source.status["decode"]
    assert decode["messages"] == 5 and decode["accepted"] == 2
    assert decode["rejects"]["not_json"] == 1
    assert decode["rejects"]["truncated"] == 1
    assert decode["rejects"]["missing_field"] == 1


def test_numeric_decoder_plain_topics(mosquitto: str) -> None:
    async def main() -> Batch:
        source = mqtt_source(mosquitto, {"speed": "p1/speed", "flow": "p1/flow"},
                             decoder="numeric", qos=0)
        await source.start()
        try:
            with publisher(mosquitto) as publish:
                publish("p1/speed", b"1450.5")
                publish("p1/flow", b"12")
            return await collect(source, lambda b: len(b) == 2)
        finally:
            await source.stop()

    data = asyncio.run(main()).sorted()
    assert sorted(zip(data.tag.tolist(), data.value.tolist())) == [(0, 1450.5), (1, 12.0)]


def test_qos1_sequence_all_received(mosquitto: str) -> None:
    n = 2000

    async def main() -> Batch:
        source = mqtt_source(mosquitto, {"seq": f"{TOPIC}#seq", "value": f"{TOPIC}#v"}, qos=1)
        await source.start()
        try:
            with publisher(mosquitto) as publish:
                for k in range(n):
                    publish(TOPIC, b'{"seq": %d, "v": %d.5}' % (k, k))
            return await collect(source, lambda b: len(b.select("seq")) >= n, timeout=30.0)
        finally:
            await source.stop()

    data = asyncio.run(main())
    seq = data.select("seq").value.astype(int)
    assert np.array_equal(np.sort(seq), np.arange(n))
    assert np.array_equal(data.select("value").value, np.sort(seq) + 0.5)  # order kept too


def _unused_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_unreachable_broker_fails_fast_naming_url() -> None:
    url = f"mqtt://127.0.0.1:{_unused_port()}"
    source = mqtt_source(url, {"temp": f"{TOPIC}#temperature"}, connect_timeout=2.0)
    began = time.monotonic()
    with pytest.raises(ConnectionError, match=url.replace(".", r"\.")):
        asyncio.run(source.start())
    assert time.monotonic() - began < 2.5
    assert not source.status["connected"]


@pytest.mark.parametrize("overflow", ["drop_oldest", "drop_newest"])
def test_overflow_counted_when_consumer_does_not_drain(mosquitto: str, overflow: str) -> None:
    n, queue_size = 50, 10

    async def main() -> tuple[dict, Batch]:
        source = mqtt_source(mosquitto, {"seq": f"{TOPIC}#seq"}, queue_size=queue_size,
                             overflow=overflow)
        await source.start()
        try:
            with publisher(mosquitto) as publish:
                for k in range(n):
                    publish(TOPIC, b'{"seq": %d}' % k)
            # Nobody reads meanwhile: wait (bounded) until paho has handed over every message.
            deadline = time.monotonic() + 10
            while source.status["messages"] < n:
                assert time.monotonic() < deadline, source.status
                await asyncio.sleep(0.01)
            status = source.status
            batch = await source.read(timeout=1.0)
            return status, batch
        finally:
            await source.stop()

    status, batch = asyncio.run(main())
    assert status["messages"] == n
    assert status["queued"] == queue_size
    assert status["dropped_overflow"] == n - queue_size
    expected = range(n - queue_size, n) if overflow == "drop_oldest" else range(queue_size)
    assert batch.value.astype(int).tolist() == list(expected)


def test_overflow_block_loses_nothing(mosquitto: str) -> None:
    n = 300

    async def main() -> tuple[dict, Batch]:
        source = mqtt_source(mosquitto, {"seq": f"{TOPIC}#seq"}, queue_size=5,
                             overflow="block", max_batch=7)
        await source.start()
        try:
            with publisher(mosquitto) as publish:
                for k in range(n):
                    publish(TOPIC, b'{"seq": %d}' % k)
                data = await collect(source, lambda b: len(b) >= n, timeout=30.0)
            return source.status, data
        finally:
            await source.stop()

    status, data = asyncio.run(main())
    assert status["dropped_overflow"] == 0
    assert data.value.astype(int).tolist() == list(range(n))


def test_sync_facade(mosquitto: str) -> None:
    source = mqtt_source(mosquitto, {"temp": f"{TOPIC}#temperature"})
    source.start_sync()
    try:
        source.start_sync()  # idempotent
        assert source.status["connected"]
        with publisher(mosquitto) as publish:
            publish(TOPIC, b'{"temperature": 33.0}')
        got = []
        deadline = time.monotonic() + 10
        while not got:
            assert time.monotonic() < deadline, source.status
            batch = source.read_sync(timeout=0.5)
            got.extend(batch.value.tolist())
        assert got == [33.0]
    finally:
        source.stop_sync()
    assert not source.status["connected"]
    assert source.read_latest().value.tolist() == [33.0]


@pytest.mark.parametrize("kwargs, match", [
    ({"url": "tcp://h:1"}, "url"),
    ({"qos": 3}, "qos"),
    ({"overflow": "sometimes"}, "overflow"),
    ({"queue_size": 0}, "queue_size"),
    ({"connect_timeout": 0}, "connect_timeout"),
    ({"tags": {"speed": "p1/speed"}}, "field path"),
    ({"tags": tag_map({"speed": "ns=2;s=Pump1.Speed"})}, "mqtt"),
    ({"tags": {}}, "at least one"),
    ({"decoder": "protobuf"}, "registered decoder"),
    ({"decoder": "numeric"}, "field path"),
    ({"persistent": 1}, "persistent"),
    ({"protocol": "3.1"}, "protocol"),
    ({"session_expiry": 0}, "session_expiry"),
])
def test_factory_validates(kwargs: dict, match: str) -> None:
    args = {"url": "mqtt://127.0.0.1:1883", "tags": {"temp": f"{TOPIC}#temperature"}, **kwargs}
    with pytest.raises((ValueError, TypeError), match=match):
        mqtt_source(args.pop("url"), args.pop("tags"), **args)


def test_tag_map_object_accepted() -> None:
    tm = tag_map({"a": "x/y#v", "b": "x/z#v"})
    source = mqtt_source("mqtt://127.0.0.1:1", tm)
    assert source.tags is tm and source.topics == ("x/y", "x/z")


def test_silent_server_times_out_naming_url() -> None:
    import socket

    # Accepts TCP connections but never answers CONNECT: the CONNACK wait must time out.
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(5)
        url = f"mqtt://127.0.0.1:{server.getsockname()[1]}"
        source = mqtt_source(url, {"temp": f"{TOPIC}#temperature"}, connect_timeout=0.5)
        began = time.monotonic()
        with pytest.raises(ConnectionError, match=f"{url}.*timed out"):
            asyncio.run(source.start())
        assert time.monotonic() - began < 2.0


def test_batches_iteration_ends_on_stop_and_handler_errors_counted(mosquitto: str) -> None:
    async def main() -> tuple[list[float], dict]:
        source = mqtt_source(mosquitto, {"temp": f"{TOPIC}#temperature"})
        await source.start()
        values: list[float] = []
        first = asyncio.Event()

        async def consume() -> None:
            async for batch in source.batches():
                values.extend(batch.value.tolist())
                first.set()

        task = asyncio.create_task(consume())
        with publisher(mosquitto) as publish:
            publish(TOPIC, b'{"temperature": 1.5}')
        await asyncio.wait_for(first.wait(), 10)
        # A broken message object in paho's callback is logged and counted, never raised.
        source._on_message(None, None, object())
        await source.stop()
        await asyncio.wait_for(task, 5)  # the iteration ends once stopped
        return values, source.status

    values, status = asyncio.run(main())
    assert values == [1.5]
    assert status["handler_errors"] == 1 and status["messages"] == 1
    assert not status["connected"]


def test_reconnects_and_resubscribes_after_broker_restart(mosquitto_broker) -> None:
    url = mosquitto_broker.url

    async def wait_for(condition: Callable[[], bool], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            assert time.monotonic() < deadline, "condition not met"
            await asyncio.sleep(0.02)

    async def main() -> tuple[Batch, dict]:
        source = mqtt_source(url, {"temp": f"{TOPIC}#temperature"})
        await source.start()
        try:
            mosquitto_broker.stop()
            await wait_for(lambda: not source.status["connected"], 10)
            mosquitto_broker.start()
            await wait_for(lambda: source.status["connected"], 15)  # paho backs off from 1 s
            # The re-subscription may still be on its way: publish until a sample arrives.
            deadline = time.monotonic() + 10
            with publisher(url) as publish:
                while True:
                    publish(TOPIC, b'{"temperature": 7.0}')
                    batch = await source.read(timeout=0.2)
                    # The first batch after the reconnect is the gap marker (tested below).
                    if batch is not None and len(batch) and batch.quality[0] != Quality.GAP:
                        break
                    assert time.monotonic() < deadline, source.status
            return batch, source.status
        finally:
            await source.stop()

    batch, status = asyncio.run(main())
    assert batch.value[0] == 7.0
    assert status["disconnects"] == 1


async def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll `condition` on the loop until it holds; fail naming `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s"
        await asyncio.sleep(0.02)


def test_gap_marker_between_old_and_new_samples_after_broker_restart(mosquitto_broker) -> None:
    url = mosquitto_broker.url
    tags = {"temp": f"{TOPIC}#temperature", "flow": f"{TOPIC}#flow"}

    async def main() -> tuple[list[Batch], dict, dict]:
        source = mqtt_source(url, tags)
        await source.start()
        try:
            with publisher(url) as publish:
                publish(TOPIC, b'{"temperature": 1.0, "flow": 2.0}')
            before = [await collect(source, lambda b: len(b) == 2)]
            mosquitto_broker.stop()
            await wait_until(lambda: not source.status["connected"], 10, "disconnect seen")
            down = source.status
            mosquitto_broker.start()
            await wait_until(lambda: source.status["connected"], 15, "reconnected")
            got = list(before)
            deadline = time.monotonic() + 10
            with publisher(url) as publish:
                while not any(len(b) and b.value[0] == 7.0 for b in got):
                    publish(TOPIC, b'{"temperature": 7.0, "flow": 8.0}')
                    batch = await source.read(timeout=0.2)
                    assert batch is not None
                    if len(batch):
                        got.append(batch)
                    assert time.monotonic() < deadline, source.status
            return got, down, source.status
        finally:
            await source.stop()

    got, down, status = asyncio.run(main())
    assert down["disconnected_since"] is not None and down["reconnects"] == 0
    assert status["disconnected_since"] is None
    assert status["disconnects"] == 1 and status["reconnects"] == 1 and status["gaps"] == 1
    data = concat(got)
    kinds = ["gap" if q == Quality.GAP else v for q, v in zip(data.quality, data.value.tolist())]
    # Old samples, then exactly one marker per tag, then new samples: nothing new before the gap.
    assert kinds[:4] == [1.0, 2.0, "gap", "gap"]
    assert set(kinds[4:]) == {7.0, 8.0}
    gap_times = data.time[2:4]
    assert np.isnan(data.value[2:4]).all() and data.tag[2:4].tolist() == [0, 1]
    assert (gap_times[0] == gap_times).all()
    assert data.time[1] <= gap_times[0] <= data.time[4]
    assert np.datetime64(down["disconnected_since"].rstrip("Z"), "ns") == gap_times[0]


@pytest.mark.parametrize("protocol", ["3.1.1", "5"])
def test_persistent_session_delivers_qos1_published_while_away(mosquitto: str,
                                                               protocol: str) -> None:
    n = 500
    tags = {"seq": f"{TOPIC}#seq"}

    async def main() -> tuple[str, str, Batch, dict]:
        first = mqtt_source(mosquitto, tags, persistent=True, protocol=protocol)
        await first.start()  # creates the session and its subscription on the broker
        await first.stop()  # the twin goes away; the broker keeps the session
        with publisher(mosquitto) as publish:  # waits for every PUBACK: the broker has them all
            for k in range(n):
                publish(TOPIC, b'{"seq": %d}' % k)
        second = mqtt_source(mosquitto, tags, persistent=True, protocol=protocol)
        await second.start()
        try:
            data = await collect(second, lambda b: len(b) >= n, timeout=30.0)
            # Nothing beyond the n: read until the buffer is empty and the broker has nothing left.
            extra = await second.read(timeout=0.3)
            assert extra is not None and len(extra) == 0, extra
            return first.client_id, second.client_id, data, second.status
        finally:
            await second.stop()

    id1, id2, data, status = asyncio.run(main())
    assert id1 == id2 and id1.startswith("tb-")
    assert status["persistent"] and status["protocol"] == protocol
    seq = data.value.astype(int)
    assert len(seq) == n and np.array_equal(np.sort(seq), np.arange(n))  # each exactly once


def test_clean_session_loses_messages_published_while_away(mosquitto: str) -> None:
    # The control for the test above: without persistence the broker keeps nothing.
    tags = {"seq": f"{TOPIC}#seq"}

    async def main() -> tuple[Batch, dict]:
        first = mqtt_source(mosquitto, tags, client_id="twin-clean")
        await first.start()
        await first.stop()
        with publisher(mosquitto) as publish:
            for k in range(20):
                publish(TOPIC, b'{"seq": %d}' % k)
        second = mqtt_source(mosquitto, tags, client_id="twin-clean")
        await second.start()
        try:
            return await second.read(timeout=0.5), second.status
        finally:
            await second.stop()

    batch, status = asyncio.run(main())
    assert batch is not None and len(batch) == 0 and status["messages"] == 0


CMD, ACK = "plant/pump1/cmd", "plant/pump1/ack"


@contextmanager
def responder(url: str, answer: Callable[[dict], dict | None]) -> Iterator[list[dict]]:
    """Equipment stand-in: receives commands on CMD, publishes `answer(command)` to ACK.

    Yields the list of commands received. `answer` returning None means: stay silent.
    """
    import threading

    from paho.mqtt.client import CallbackAPIVersion, Client

    parts = urllib.parse.urlsplit(url)
    received: list[dict] = []
    subscribed = threading.Event()
    client = Client(CallbackAPIVersion.VERSION2)

    def on_message(client, userdata, message) -> None:
        command = json.loads(message.payload)
        received.append(command)
        reply = answer(command)
        if reply is not None:
            client.publish(ACK, json.dumps({"id": command["id"], **reply}), qos=1)

    client.on_message = on_message
    client.on_subscribe = lambda *args: subscribed.set()
    client.connect(parts.hostname, parts.port)
    client.loop_start()
    try:
        client.subscribe(CMD, qos=1)
        assert subscribed.wait(10), "responder did not subscribe"
        yield received
    finally:
        client.disconnect()
        client.loop_stop()


def range_checked(command: dict) -> dict | None:
    if command["tag"] == "mute":
        return None
    if command["value"] > 3000:
        return {"ok": False, "error": "out of range"}
    return {"ok": True}


def test_write_with_acknowledgement(mosquitto: str) -> None:
    async def main() -> tuple[dict, dict, list[dict], dict]:
        source = mqtt_source(mosquitto, {"temp": f"{TOPIC}#temperature"}, command_topic=CMD,
                             ack_topic=ACK)
        await source.start()
        try:
            with responder(mosquitto, range_checked) as received:
                one = await source.write("speed", 1450, timeout=5)
                many = await source.write({"speed": 90.5, "run": True}, timeout=5)
                # Telemetry still flows next to the command path; acks are not telemetry.
                with publisher(mosquitto) as publish:
                    publish(TOPIC, b'{"temperature": 5.0}')
                data = await collect(source, lambda b: len(b) == 1)
                assert data.value.tolist() == [5.0]
                return one, many, list(received), source.status
        finally:
            await source.stop()

    one, many, received, status = asyncio.run(main())
    assert [(c["tag"], c["value"]) for c in received] == [("speed", 1450), ("speed", 90.5),
                                                           ("run", True)]
    assert [c["id"] for c in received] == [one["speed"], many["speed"], many["run"]]
    assert len({c["id"] for c in received}) == 3
    assert status["commands"] == 3 and status["acks"] == 3 and status["messages"] == 1


def test_write_rejected_names_tag_and_error(mosquitto: str) -> None:
    async def main() -> None:
        source = mqtt_source(mosquitto, {"temp": f"{TOPIC}#temperature"}, command_topic=CMD,
                             ack_topic=ACK)
        await source.start()
        try:
            with responder(mosquitto, range_checked):
                with pytest.raises(WriteRejected, match="speed: out of range") as info:
                    await source.write({"speed": 5000, "flow": 3}, timeout=5)
                assert info.value.rejected == {"speed": "out of range"}
        finally:
            await source.stop()

    asyncio.run(main())


def test_write_without_ack_times_out_naming_ack_topic(mosquitto: str) -> None:
    async def main() -> float:
        source = mqtt_source(mosquitto, {"temp": f"{TOPIC}#temperature"}, command_topic=CMD,
                             ack_topic=ACK)
        await source.start()
        try:
            with responder(mosquitto, range_checked) as received:
                began = time.monotonic()
                with pytest.raises(TimeoutError, match=f"{ACK}.*'mute'"):
                    await source.write("mute", 1, timeout=0.5)
                elapsed = time.monotonic() - began
                assert [c["tag"] for c in received] == ["mute"]  # sent, never answered
            return elapsed
        finally:
            await source.stop()

    assert asyncio.run(main()) < 2.0


def test_write_without_ack_topic_waits_for_puback(mosquitto: str) -> None:
    source = mqtt_source(mosquitto, {"temp": f"{TOPIC}#temperature"}, command_topic=CMD)
    with responder(mosquitto, lambda command: None) as received:
        source.start_sync()
        try:
            ids = source.write_sync("speed", np.float64(12.5))
            deadline = time.monotonic() + 10
            while not received:  # the PUBACK is the broker's; the responder gets it a bit later
                assert time.monotonic() < deadline, "command not delivered"
                source.read_sync(timeout=0.05)
        finally:
            source.stop_sync()
    assert received == [{"tag": "speed", "value": 12.5, "id": ids["speed"]}]


def test_write_errors_name_the_problem(mosquitto: str) -> None:
    async def main() -> None:
        plain = mqtt_source(mosquitto, {"temp": f"{TOPIC}#temperature"})
        with pytest.raises(RuntimeError, match="command_topic"):
            await plain.write("speed", 1)
        source = mqtt_source(mosquitto, {"temp": f"{TOPIC}#temperature"}, command_topic=CMD)
        with pytest.raises(RuntimeError, match="start"):
            await source.write("speed", 1)
        await source.start()
        try:
            for args, error, match in [(("speed",), ValueError, "value"),
                                       (("speed", float("nan")), ValueError, "finite"),
                                       (("speed", [1]), TypeError, "value"),
                                       (({},), ValueError, "at least one"),
                                       ((3, 1), TypeError, "tag_or_mapping")]:
                with pytest.raises(error, match=match):
                    await source.write(*args)
            with pytest.raises(ValueError, match="timeout"):
                await source.write("speed", 1, timeout=0)
            assert source.status["commands"] == 0
        finally:
            await source.stop()

    asyncio.run(main())


@pytest.mark.parametrize("kwargs, match", [
    ({"ack_topic": ACK}, "needs a command_topic"),
    ({"command_topic": "plant/+/cmd"}, "command_topic"),
    ({"command_topic": CMD, "ack_topic": TOPIC}, "telemetry topic"),
    ({"command_topic": CMD, "write_timeout": -1}, "write_timeout"),
])
def test_write_options_validated(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        mqtt_source("mqtt://127.0.0.1:1883", {"temp": f"{TOPIC}#temperature"}, **kwargs)


def test_malformed_and_foreign_acks_counted_not_raised(mosquitto: str) -> None:
    async def main() -> dict:
        source = mqtt_source(mosquitto, {"temp": f"{TOPIC}#temperature"}, command_topic=CMD,
                             ack_topic=ACK)
        await source.start()
        try:
            with publisher(mosquitto) as publish:
                publish(ACK, b"not json")
                publish(ACK, b'{"id": 7, "ok": true}')
                publish(ACK, b'{"id": "someone-else", "ok": false, "error": "x"}')
            await wait_until(lambda: source.status["acks_invalid"] == 2
                             and source.status["acks"] == 1, 10, "acks counted")
            with responder(mosquitto, range_checked):
                await source.write("speed", 10, timeout=5)  # still works
            return source.status
        finally:
            await source.stop()

    status = asyncio.run(main())
    assert status["acks"] == 2 and status["acks_invalid"] == 2
    assert status["messages"] == 0 and status["handler_errors"] == 0


def test_persistent_session_survives_dropped_connection_with_gap_marker(mosquitto: str) -> None:
    # The network goes, the broker stays: paho's socket is cut without a DISCONNECT packet.
    import socket

    n = 300

    async def main() -> tuple[Batch, dict]:
        source = mqtt_source(mosquitto, {"seq": f"{TOPIC}#seq"}, persistent=True,
                             client_id="twin-dropped")
        await source.start()
        try:
            source._client.socket().shutdown(socket.SHUT_RDWR)
            await wait_until(lambda: not source.status["connected"], 10, "drop seen")
            with publisher(mosquitto) as publish:
                for k in range(n):
                    publish(TOPIC, b'{"seq": %d}' % k)
            data = await collect(source, lambda b: (b.quality != Quality.GAP).sum() >= n,
                                 timeout=20.0)  # paho reconnects after its 1 s backoff
            return data, source.status
        finally:
            await source.stop()

    data, status = asyncio.run(main())
    assert status["reconnects"] == 1 and status["gaps"] == 1
    assert data.quality[0] == Quality.GAP and np.isnan(data.value[0])  # the marker comes first
    seq = data.value[1:].astype(int)
    assert (data.quality[1:] == Quality.GOOD).all()
    assert len(seq) == n and np.array_equal(np.sort(seq), np.arange(n))


def test_browse_shows_the_topics_seen_and_connect_dispatches_by_scheme(mosquitto: str) -> None:
    import twinbench

    async def main():
        source = twinbench.connect(mosquitto, {"temp": "plant/pump1/telemetry#temperature"},
                                   subscribe=["plant/#"])
        assert isinstance(source, MqttSource)
        async with source:
            assert (await source.browse()).children == []
            with publisher(mosquitto) as publish:
                for pump in ("pump1", "pump2", "pump2"):
                    publish(f"plant/{pump}/telemetry", json.dumps({"temperature": 1.0}))
            await collect(source, lambda b: len(b) == 1)
            deadline = time.monotonic() + 10
            # pump2's messages arrive through the "plant/#" subscription: counted, not decoded
            while source.status["decode"]["rejects"]["unknown_topic"] < 2:
                assert time.monotonic() < deadline, source.status
                await source.read(0.1)
            tree = await source.browse()
            assert source.status["messages"] == 3
        assert not source.status["connected"]  # the context manager stopped it
        return tree

    tree = asyncio.run(main())
    assert tree.variables() == {"telemetry": "plant/pump1/telemetry"}  # first of a name wins
    topics = {node.address: node.info["messages"] for node in tree.walk() if node.is_value}
    assert topics == {"plant/pump1/telemetry": 1, "plant/pump2/telemetry": 2}
    assert [c.name for c in tree.find("plant").children] == ["pump1", "pump2"]
