"""``twinbench plant --classroom N``: N independent plants on consecutive ports in one process.

How many plants one process carries was measured with the ``Classroom`` API (start N, count
ticks and overruns over 10 s; see the module doc of ``twinbench.plant._classroom``).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("asyncua")

REPO = Path(__file__).resolve().parents[2]


def test_classroom_serves_independent_plants_and_stops_cleanly(plant_process, port_is_free):
    import twinbench as tb
    from twinbench.plant._classroom import find_port_block

    first = find_port_block(3)
    # three interpreters' worth of address spaces start in one process: allow for a busy machine
    proc = plant_process(["--classroom", "3", "--seed", "5"], port=first, timeout=90)
    urls = [f"opc.tcp://127.0.0.1:{first + i}/twinbench/plant" for i in range(3)]
    assert proc.lines[-1] == "twinbench plant ready"
    for i, url in enumerate(urls):
        assert f"student{i + 1:02d} {url} (seed {5 + i})" in proc.lines, proc.lines
    assert any(line.startswith(f"classroom of 3 plants: opcua ports {first}..{first + 2}")
               for line in proc.lines)

    async def main():
        # a setpoint written to student02's plant reaches it and no other
        source = tb.connect(urls[1], tags={"speed_setpoint": "ns=2;s=Pump1.speed_setpoint"})
        async with source:
            await source.write({"speed_setpoint": 2100.0})
        from asyncua import Client

        setpoints, vibrations = [], []
        for url in urls:
            async with Client(url, timeout=10) as client:
                setpoints.append(await client.get_node("ns=2;s=Pump1.speed_setpoint")
                                 .read_value())
                vibrations.append(await client.get_node("ns=2;s=Pump1.vibration").read_value())
        return setpoints, vibrations

    setpoints, vibrations = asyncio.run(asyncio.wait_for(main(), 60))
    assert setpoints[1] == 2100.0
    assert setpoints[0] == setpoints[2] != 2100.0
    assert len(set(vibrations)) == 3  # own seeds: own noise
    assert proc.stop(timeout=15) == 0
    assert all(port_is_free(first + i) for i in range(3))


@pytest.mark.parametrize(("args", "message"), [
    (["--classroom", "0"], "classroom: expected 1..64 students, got 0"),
    (["--classroom", "65"], "classroom: expected 1..64 students, got 65"),
    (["--classroom", "3", "--opcua-port", "65534"], "opcua_port: expected 0..65533"),
])
def test_classroom_bad_sizes_exit_2(args, message):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-m", "twinbench.cli", "plant", "--mqtt", "none",
                             *args], capture_output=True, text=True, timeout=60, env=env,
                            check=False)
    assert result.returncode == 2, result
    assert message in result.stderr
    assert "twinbench plant ready" not in result.stdout


def test_classroom_topics_and_seeds_without_starting():
    from twinbench.plant import Classroom

    room = Classroom(12, opcua_port=5000, mqtt="mqtt://127.0.0.1:1883", seed=10)
    assert room.names[11] == "student12"
    assert [p.seed for p in room.plants] == list(range(10, 22))
    assert room.plants[2].topic_prefix == "plant/student03"
    assert room.plants[11].opcua_url == "opc.tcp://127.0.0.1:5011/twinbench/plant"


def test_classroom_mqtt_topics_per_student(plant_loop, wait_until):
    """With MQTT, each student's telemetry and commands live under plant/studentNN/."""
    import json
    import queue

    from twinbench.plant import Classroom
    from twinbench.plant._broker import find_mosquitto

    if find_mosquitto() is None:
        pytest.skip("mosquitto not installed")
    from paho.mqtt.client import CallbackAPIVersion, Client

    room = Classroom(2, opcua_port=0, mqtt="auto", rate=10.0)
    plant_loop.run(room.start(), timeout=90)
    try:
        got: queue.Queue = queue.Queue()
        client = Client(CallbackAPIVersion.VERSION2)
        client.on_message = lambda c, u, m: got.put((m.topic, json.loads(m.payload)))
        client.on_connect = lambda c, u, f, rc, p: c.subscribe("plant/#", qos=0)
        host, port = room.mqtt_url.removeprefix("mqtt://").split(":")
        client.connect(host, int(port))
        client.loop_start()
        try:
            seen: set[str] = set()
            wait_until(lambda: (seen.add(got.get(timeout=5)[0]) or len(seen) >= 2), 30,
                       "telemetry of both students")
            # a command on student02's topic changes student02's plant only
            client.publish("plant/student02/pump1/command",
                           json.dumps({"tag": "speed_setpoint", "value": 1900.0, "id": "c1"}),
                           qos=1)
            pumps = [p.assets[0] for p in room.plants]
            wait_until(lambda: pumps[1].values["speed_setpoint"] == 1900.0, 30,
                       "the command applied")
        finally:
            client.disconnect()
            client.loop_stop()
        assert seen == {"plant/student01/pump1/telemetry", "plant/student02/pump1/telemetry"}
        assert pumps[0].values["speed_setpoint"] != 1900.0
    finally:
        plant_loop.run(room.stop(), timeout=30)


def test_classroom_port_in_use_names_the_student_and_stops_the_others(plant_loop, port_is_free):
    import socket

    from twinbench.plant import Classroom
    from twinbench.plant._classroom import find_port_block

    first = find_port_block(2)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", first + 1))
        taken.listen()
        room = Classroom(2, opcua_port=first, mqtt="none")
        with pytest.raises(OSError, match=f"student02: cannot serve OPC-UA on port {first + 1}"):
            plant_loop.run(room.start(), timeout=90)
    assert not any(p.running for p in room.plants)
    assert port_is_free(first)  # student01's server was stopped again
