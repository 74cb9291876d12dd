"""The plant's simulation without servers: seeds, faults, checks, keeping time."""

from __future__ import annotations

import numpy as np
import pytest

from twinbench.plant import Plant, parse_faults
from twinbench.plant._sim import make_asset

TAGS = ["speed", "vibration", "pressure"]


def _run(seed: int, n: int = 20, **kw) -> np.ndarray:
    asset = make_asset("pump", seed=seed, **kw)
    return np.array([list(asset.step(0.1, 1.8e9 + 0.1 * k).values.values()) for k in range(n)])


def test_seed_makes_noise_repeatable():
    a, b, c = _run(7), _run(7), _run(8)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)
    # the noise is the only difference between seeds, and it has the documented size
    speed_noise = a[:, 0] - c[:, 0]
    assert 0.5 < np.std(speed_noise) / np.sqrt(2) < 5.0


def test_parse_faults_errors_name_spec_kinds_and_tags():
    assert parse_faults("", TAGS) == ()
    assert parse_faults(None, TAGS) == ()
    faults = parse_faults(["bearing_wear:3", "drift:speed:-2.5", "comm_loss"], TAGS)
    assert [str(f) for f in faults] == ["bearing_wear:3", "drift:speed:-2.5", "comm_loss"]
    for bad in ("wobble", "stuck", "stuck:rpm", "drift:speed", "drift:speed:x",
                "bearing_wear:0", "comm_loss:-1", "bearing_wear:1:2", "dropout:speed:1"):
        with pytest.raises(ValueError) as info:
            parse_faults(bad, TAGS)
        text = str(info.value)
        assert repr(bad) in text and "comm_loss[:seconds]" in text and "vibration" in text
    with pytest.raises(ValueError, match="unknown kind"):
        Plant(opcua_port=0, faults=["nope"])


def test_fault_effects_in_the_simulation():
    healthy = make_asset("pump", seed=1)
    worn = make_asset("pump", seed=1, faults="bearing_wear:10,drift:pressure:3600")
    for k in range(50):
        rh = healthy.step(0.1, k * 0.1)
        rw = worn.step(0.1, k * 0.1)
    assert rw.true_wear > 1000 * rh.true_wear > 0
    # drift of 3600 bar/h for 5 s: +5 bar
    assert rw.values["pressure"] - rh.values["pressure"] == pytest.approx(5.0, abs=0.2)
    worn.set_faults("stuck:speed,dropout:power")
    frozen = worn.step(0.1, 5.1).values["speed"]
    for _ in range(3):
        r = worn.step(0.1, 5.2)
    assert r.values["speed"] == frozen and r.status["power"] == "dropout"
    assert r.status["speed"] is None and not r.comm_loss
    worn.set_faults("comm_loss")
    r = worn.step(0.1, 5.3)
    assert r.comm_loss and set(r.status.values()) == {"comm_loss"}
    assert worn.fault_string == "comm_loss"


def test_writes_are_checked():
    pump = make_asset("pump")
    assert pump.write("speed_setpoint", 1500) == 1500.0
    assert pump.write("run", False) is False
    for tag, value in (("speed_setpoint", 3601.0), ("valve_opening", -0.1),
                       ("speed_setpoint", True), ("run", 1), ("speed_setpoint", "fast"),
                       ("speed", 10.0), ("fault", "stuck:nosuch")):
        with pytest.raises(ValueError):
            pump.write(tag, value)
    assert pump.values["speed_setpoint"] == 1500.0
    # run=false holds the drive at zero however the setpoint changes; true restores it
    for _ in range(200):
        r = pump.step(0.5, 0.0)
    assert r.values["speed"] < 20
    pump.write("run", True)
    for _ in range(60):
        r = pump.step(0.5, 0.0)
    assert 1400 < r.values["speed"] < 1600
