"""The plant's MQTT side, through a plain paho client and the broker the plant started."""

from __future__ import annotations

import itertools
import json
import queue
import uuid

import pytest

paho = pytest.importorskip("paho.mqtt.client")

PUMP_OUTPUTS = {"speed", "flow_rate", "total_head", "pressure", "motor_temperature", "vibration",
                "current", "power"}


class Listener:
    """A paho client subscribed to `topics`; messages arrive decoded in `messages`."""

    def __init__(self, url: str, topics: list[str]) -> None:
        from paho.mqtt.client import CallbackAPIVersion, Client

        host, port = url.removeprefix("mqtt://").split(":")
        self.messages: queue.Queue = queue.Queue()
        self.subscribed: queue.Queue = queue.Queue()
        self.client = Client(CallbackAPIVersion.VERSION2)
        self.client.on_message = lambda c, u, m: self.messages.put((m.topic, json.loads(m.payload)))
        self.client.on_subscribe = lambda c, u, mid, rc, p: self.subscribed.put(mid)
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe([(t, 1) for t in topics])
        self.client.connect(host, int(port))
        self.client.loop_start()
        self.subscribed.get(timeout=10)

    def get(self, topic: str, timeout: float = 5.0) -> dict:
        while True:
            got, payload = self.messages.get(timeout=timeout)
            if got == topic:
                return payload

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def mqtt_plant(plant):
    if plant.mqtt_url is None:
        pytest.skip("mosquitto not installed: the shared plant runs without MQTT")
    return plant


def test_telemetry_arrives_with_increasing_seq(mqtt_plant):
    topic = mqtt_plant.topics["pump1"]["telemetry"]
    assert topic == "plant/pump1/telemetry"
    listener = Listener(mqtt_plant.mqtt_url, [topic, "plant/wind1/telemetry"])
    try:
        msgs = [listener.get(topic) for _ in range(5)]
        wind = listener.get("plant/wind1/telemetry")
    finally:
        listener.close()
    seqs = [m["seq"] for m in msgs]
    assert seqs == sorted(seqs) and len(set(seqs)) == 5
    assert all(b - a == 1 for a, b in itertools.pairwise(seqs))
    ts = [m["ts"] for m in msgs]
    assert all(isinstance(t, int) for t in ts) and ts == sorted(ts) and ts[0] < ts[-1]
    for m in msgs:
        assert set(m) == PUMP_OUTPUTS | {"ts", "seq"}
        assert 2500 < m["speed"] < 3200
    assert "generator_speed" in wind and "power" in wind


def _command(url: str, asset: str, tag: str, value, timeout: float = 5.0) -> dict:
    """Publish a command as twinbench.io.mqtt's MqttSource.write does; return its ack."""
    listener = Listener(url, [f"plant/{asset}/ack"])
    try:
        command_id = uuid.uuid4().hex
        listener.client.publish(f"plant/{asset}/command",
                                json.dumps({"tag": tag, "value": value, "id": command_id}), qos=1)
        while True:
            ack = listener.get(f"plant/{asset}/ack", timeout)
            if ack.get("id") == command_id:
                return ack
    finally:
        listener.close()


def test_command_and_ack_round_trip(mqtt_plant, wait_until):
    url = mqtt_plant.mqtt_url
    ack = _command(url, "pump1", "valve_opening", 0.6)
    assert ack["ok"] is True and "error" not in ack
    assert mqtt_plant.assets[0].values["valve_opening"] == 0.6
    bad = _command(url, "pump1", "speed_setpoint", 5000)
    assert bad["ok"] is False
    assert bad["error"] == "speed_setpoint: 5000 is outside 0..3600"
    assert mqtt_plant.assets[0].values["speed_setpoint"] == 2950.0
    assert _command(url, "pump1", "nosuch", 1)["ok"] is False
    assert _command(url, "pump1", "run", "yes")["ok"] is False
    bad_fault = _command(url, "pump1", "fault", "stuck:nosuch")
    assert bad_fault["ok"] is False and "valid kinds" in bad_fault["error"]
    # a dropout by command: the field disappears from the telemetry, then comes back
    assert _command(url, "pump1", "fault", "dropout:vibration")["ok"] is True
    listener = Listener(url, ["plant/pump1/telemetry"])
    try:
        listener.get("plant/pump1/telemetry")  # may predate the fault
        assert "vibration" not in listener.get("plant/pump1/telemetry")
        assert _command(url, "pump1", "fault", "")["ok"] is True
        wait_until(lambda: "vibration" in listener.get("plant/pump1/telemetry"), 5,
                   "vibration back in the telemetry")
    finally:
        listener.close()
        _command(url, "pump1", "fault", "")
        _command(url, "pump1", "valve_opening", 0.5)


def test_mqtt_write_shows_on_opcua(mqtt_plant):
    import asyncio

    from asyncua import Client

    assert _command(mqtt_plant.mqtt_url, "wind1", "wind_speed", 9.0)["ok"] is True

    async def read():
        async with Client(mqtt_plant.opcua_url, timeout=10) as client:
            return await client.get_node("ns=2;s=Wind1.wind_speed").read_value()

    try:
        assert asyncio.run(read()) == 9.0
    finally:
        _command(mqtt_plant.mqtt_url, "wind1", "wind_speed", 8.0)


def test_auto_starts_mosquitto_and_stops_it(start_plant, stop_plant, port_is_free):
    from twinbench.plant._broker import find_mosquitto

    if find_mosquitto() is None:
        pytest.skip("mosquitto not installed")
    plant = start_plant(mqtt="auto")
    broker = plant._broker
    assert broker.kind == "mosquitto" and plant.mqtt_url == broker.url
    assert plant.endpoints == {"opcua": plant.opcua_url, "mqtt": broker.url}
    proc = broker.proc
    assert proc.poll() is None
    listener = Listener(plant.mqtt_url, ["plant/pump1/telemetry"])
    try:
        assert listener.get("plant/pump1/telemetry")["seq"] >= 1
    finally:
        listener.close()
    stop_plant(plant)
    assert proc.poll() is not None  # stop() waited for it
    assert port_is_free(broker.port)
    assert plant.mqtt_url is None


def test_publish_to_a_given_broker(start_plant, stop_plant, tmp_path):
    """mqtt=URL: the plant publishes to a broker it did not start (and leaves it running)."""
    from twinbench.plant._broker import Mosquitto, find_mosquitto

    binary = find_mosquitto()
    if binary is None:
        pytest.skip("mosquitto not installed")
    import asyncio

    broker = Mosquitto(binary)
    asyncio.run(broker.start())
    try:
        plant = start_plant(mqtt=broker.url)
        assert plant._broker is None and plant.mqtt_url == broker.url
        listener = Listener(broker.url, ["plant/pump1/telemetry"])
        try:
            assert "speed" in listener.get("plant/pump1/telemetry")
        finally:
            listener.close()
        stop_plant(plant)
        assert broker.proc.poll() is None
    finally:
        asyncio.run(broker.stop())


def test_broker_fallbacks(monkeypatch, caplog):
    """Without mosquitto: the embedded amqtt broker if importable, else none (with a warning)."""
    import asyncio
    import importlib.util
    import logging
    import sys

    from twinbench.plant import _broker

    monkeypatch.setattr(_broker, "find_mosquitto", lambda: None)
    if importlib.util.find_spec("amqtt") is not None:
        async def embedded():
            broker = await _broker.start_broker()
            try:
                assert broker.kind == "amqtt" and broker.url.startswith("mqtt://127.0.0.1:")
                await asyncio.to_thread(lambda: Listener(broker.url, ["x/y"]).close())
            finally:
                await broker.stop()

        asyncio.run(asyncio.wait_for(embedded(), 30))
    monkeypatch.setitem(sys.modules, "amqtt.broker", None)  # amqtt not importable
    with caplog.at_level(logging.WARNING, logger="twinbench.plant"):
        assert asyncio.run(_broker.start_broker()) is None
    assert "running OPC-UA only" in caplog.text
