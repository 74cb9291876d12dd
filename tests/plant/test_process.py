"""``twinbench plant`` as a process: ready line, faults from the command line, SIGTERM."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

asyncua = pytest.importorskip("asyncua")
from asyncua import Client

REPO = Path(__file__).resolve().parents[2]


def test_cli_plant_ready_faults_and_sigterm(plant_process, port_is_free, tmp_path):
    proc = plant_process(["--fault", "stuck:vibration", "--fault", "bearing_wear:2",
                          "--seed", "3", "--rate", "20"])
    assert proc.lines[-1] == "twinbench plant ready"
    assert any(line.startswith(f"opcua {proc.opcua_url}") for line in proc.lines)
    assert not any(line.startswith("mqtt") for line in proc.lines)  # --mqtt none

    async def main():
        async with Client(proc.opcua_url, timeout=10) as client:
            fault = await client.get_node("ns=2;s=Pump1.fault").read_value()
            vib = client.get_node("ns=2;s=Pump1.vibration")
            seq = client.get_node("ns=2;s=Pump1.sequence")
            v0, s0 = await vib.read_value(), await seq.read_value()
            while await seq.read_value() < s0 + 3:
                await asyncio.sleep(0.02)
            return fault, v0, await vib.read_value()

    fault, v0, v1 = asyncio.run(asyncio.wait_for(main(), 30))
    assert fault == "stuck:vibration,bearing_wear:2"
    assert v0 == v1
    t0 = time.monotonic()
    assert proc.stop(timeout=10) == 0
    assert time.monotonic() - t0 < 5
    assert port_is_free(proc.port)
    # the same port serves again after a restart (what reconnection tests rely on)
    proc.start()
    asyncio.run(asyncio.wait_for(main(), 30))
    proc.kill()


def test_cli_plant_bad_arguments_exit_2():
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("TWINBENCH_PLANT_PASSWORD", None)
    for args, message in ((["--fault", "stuck:nosuch"], "valid kinds"),
                          (["--security", "tls"], "security"),
                          (["--user", "op"], "TWINBENCH_PLANT_PASSWORD")):
        result = subprocess.run([sys.executable, "-m", "twinbench.cli", "plant", "--opcua-port",
                                 "0", "--mqtt", "none", *args], capture_output=True, text=True,
                                timeout=60, env=env, check=False)
        assert result.returncode == 2, args
        assert message in result.stderr, (args, result.stderr)
        assert "twinbench plant ready" not in result.stdout


def test_cli_plant_with_mosquitto_publishes_at_qos(plant_process):
    """--mqtt auto --mqtt-qos 1: the ready lines name the broker, telemetry arrives, and
    SIGTERM stops the broker with the plant."""
    from twinbench.plant._broker import find_mosquitto

    if find_mosquitto() is None:
        pytest.skip("mosquitto not installed")
    proc = plant_process(["--mqtt", "auto", "--mqtt-qos", "1", "--wind"])
    mqtt_line = next(line for line in proc.lines if line.startswith("mqtt "))
    url = mqtt_line.split()[1]
    assert "plant/wind1/telemetry" in mqtt_line and "mosquitto" in mqtt_line
    import json
    import queue

    from paho.mqtt.client import CallbackAPIVersion, Client

    got: queue.Queue = queue.Queue()
    client = Client(CallbackAPIVersion.VERSION2)
    client.on_message = lambda c, u, m: got.put((m.qos, json.loads(m.payload)))
    client.on_connect = lambda c, u, f, rc, p: c.subscribe("plant/pump1/telemetry", qos=1)
    host, port = url.removeprefix("mqtt://").split(":")
    client.connect(host, int(port))
    client.loop_start()
    try:
        qos, message = got.get(timeout=10)
    finally:
        client.disconnect()
        client.loop_stop()
    assert qos == 1 and message["seq"] >= 1
    assert proc.stop(timeout=10) == 0
    import socket

    with pytest.raises(OSError), socket.create_connection((host, int(port)), timeout=1):
        pass
