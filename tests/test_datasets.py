"""The sample recordings in data/: provenance, size, and a pump twin replaying each one finds (or
does not find) what the plant was told to do."""

from __future__ import annotations

import asyncio
import dataclasses

import numpy as np
import pytest
import xarray as xr

import twinbench as tb
from twinbench import datasets
from twinbench.io.tags import tag_map
from twinbench.kernel.detect import Cusum
from twinbench.plant._sim import PUMP_NOISE
from twinbench.twin import Twin

MEASURED = ["speed", "flow_rate", "total_head", "pressure", "motor_temperature", "vibration",
            "current", "power"]
# The plant's sensor noise is known; process noise and initial covariance as in twinbench.demo:
# shaft speed, flow, winding temperature, wear (a new bearing, wear 0, is the prior).
R = {name: PUMP_NOISE[name] ** 2 for name in MEASURED}
Q = {"shaft_speed": 1e-2, "flow": 1e-9, "winding_temperature": 1e-4, "wear": 1e-6}
P0 = [1.0, 1e-6, 1.0, 1e-3]
MAX_BYTES = 3_000_000


@pytest.fixture(scope="module")
def healthy_vibration() -> float:
    """The pump's vibration at the plant's defaults with a new bearing, from the model."""
    run = tb.models.pump().simulate(duration=600.0, dt=0.5, every=1200, method="ros2")
    return float(run.vibration[-1])


def vibration_cusum(mean: float) -> Cusum:
    # In control: the model's healthy vibration and the sensor's noise, both known (calibrating
    # on the recording's first minutes instead made the healthy run alarm on an unlucky start).
    # h = 10 sigma: a process in control crosses it about once in 10^5 samples; a recording
    # holds ~1200.
    return Cusum(k=0.5, h=10.0, mean=mean, std=PUMP_NOISE["vibration"])


def residual_cusum() -> Cusum:
    # A residual's spread depends on the filter's tuning: calibrated on its first 100 rows
    # (20 simulated minutes, before a drift has grown).
    return Cusum(k=0.5, h=10.0, warmup=100)


def replay(name: str, detectors: dict) -> Twin:
    """A pump twin over the whole recording `name`, replayed as fast as it is read."""
    ds = datasets.load(name)
    twin = Twin(tb.models.pump(), tb.replay(ds, speed=None), R=R, Q=Q, P0=P0, x0={"wear": 0.0},
                max_step=0.5, capacity=ds.sizes["time"], detectors=detectors)

    async def main():
        await twin.source.start()
        async for batch in twin.source.batches():
            twin.process(batch)
        await twin.stop()

    asyncio.run(main())
    assert twin.stats["errors"] == 0 and twin.stats["late_samples"] == 0, twin.stats
    return twin


def first_alarm_hours(state, alarm: str) -> float | None:
    hit = np.flatnonzero(state[alarm].values == 1.0)
    if not hit.size:
        return None
    return float((state.time.values[hit[0]] - state.time.values[0]) / np.timedelta64(1, "h"))


@pytest.fixture(scope="module")
def twins(healthy_vibration):
    return {name: replay(name, {"vibration": vibration_cusum(healthy_vibration),
                                "flow_rate_residual": residual_cusum()})
            for name in datasets.SAMPLES}


@pytest.mark.parametrize("name", sorted(datasets.SAMPLES))
def test_each_recording_is_small_and_says_where_it_came_from(name):
    path = datasets.sample_path(name)
    assert path.is_file() and path.stat().st_size < MAX_BYTES, path
    ds = datasets.load(name)
    sample = datasets.SAMPLES[name]
    attrs = ds.attrs
    assert attrs["twinbench_sample"] == name
    # the exact commands, with the plant's seed and faults, and how to make the file again
    assert attrs["command"].startswith("twinbench plant ")
    assert f"--seed {sample.seed}" in attrs["command"] and " twinbench record " in attrs["command"]
    for fault in sample.faults:
        assert f"--fault {fault}" in attrs["command"]
    assert attrs["twinbench_regenerate"] == f"python -m twinbench.datasets --out data {name}"
    assert attrs["twinbench_plant_seed"] == sample.seed
    assert attrs["twinbench_plant_faults"] == (",".join(sample.faults) or "none")
    assert attrs["twinbench_version"] and attrs["date_created"].endswith("Z")
    assert "twinbench record" in attrs["history"] and attrs["source"].startswith("twinbench plant")
    assert name in (datasets.data_dir() / "README.md").read_text()
    # a few simulated hours, a row every speedup / rate = 12 s, times on the simulated clock
    hours = (ds.time.values[-1] - ds.time.values[0]) / np.timedelta64(1, "h")
    assert 3.5 < hours < 4.5, hours
    assert 1000 < ds.sizes["time"] < 1400
    step = np.median(np.diff(ds.time.values[2:]) / np.timedelta64(1, "s"))
    assert step == pytest.approx(sample.speedup / sample.rate, abs=0.01)
    # every measurement of the pump in the model's units; each sample good (255: no sample at
    # that time, the setpoints' own row)
    units = {v.name: v.units for v in tb.models.pump().outputs}
    for tag in MEASURED:
        assert ds[tag].attrs["units"] == units[tag]
        assert set(np.unique(ds[f"{tag}_quality"].values)) <= {0, 255}, tag
        assert (ds[f"{tag}_quality"].values == 0).sum() >= ds.sizes["time"] - 2, tag


def test_tag_maps_load_and_match_the_plant():
    opcua = tag_map(datasets.tag_map_path("opcua"))
    mqtt = tag_map(datasets.tag_map_path("mqtt"))
    assert opcua.scheme == "opc.tcp" and mqtt.scheme == "mqtt"
    assert list(mqtt.names) == MEASURED and list(opcua.names) == [*MEASURED, "speed_setpoint",
                                                                     "valve_opening"]
    assert str(opcua["vibration"]) == "ns=2;s=Pump1.vibration"
    assert str(mqtt["vibration"]) == "plant/pump1/telemetry#vibration"
    assert opcua.units["flow_rate"] == mqtt.units["flow_rate"] == "m3/h"


def test_tag_map_reaches_the_live_plant(plant):
    """The OPC-UA tag map, as shipped, finds every one of its tags on a running plant."""
    src = tb.connect(plant.opcua_url, datasets.tag_map_path("opcua"), publishing_interval=50)
    src.start_sync()
    try:
        values = src.read_values_sync()
    finally:
        src.stop_sync()
    assert sorted(values.tags[i] for i in values.tag) == sorted(src.tags)
    assert np.isfinite(values.value).all() and (values.quality == 0).all(), values


def test_healthy_run_raises_no_alarm(twins):
    state = twins["healthy"].state
    assert first_alarm_hours(state, "alarm_vibration") is None
    assert first_alarm_hours(state, "alarm_flow_rate_residual") is None
    assert float(state.wear[-1]) < 0.1  # the bearing stays about new


def test_bearing_fault_is_detected_and_the_estimated_wear_rises(twins):
    state = twins["bearing_fault"].state
    hours = first_alarm_hours(state, "alarm_vibration")
    assert hours is not None and hours < 3.0, hours
    assert twins["bearing_fault"].alarms["alarm_vibration"] is True  # and it holds at the end
    wear = state.wear.values
    n = len(wear)
    # the unmeasured wear, estimated, rises through the recording to well above a new bearing's
    assert wear[n // 4] < wear[n // 2] < wear[-1]
    assert float(state.wear[-1]) > 0.3 and float(state.wear[-1]) > 5 * float(state.wear_std[-1])
    # the flowmeter is fine: its residual stays in control
    assert first_alarm_hours(state, "alarm_flow_rate_residual") is None


def test_sensor_drift_is_caught_on_the_drifting_tags_residual(twins):
    state = twins["sensor_drift"].state
    hours = first_alarm_hours(state, "alarm_flow_rate_residual")
    assert hours is not None and hours < 3.5, hours
    # the residual carries the whole drift: the measured flow rises away from what the twin
    # predicts from the other sensors, at the plant's drift rate (3 m3/h per hour)
    early, late = state.isel(time=slice(0, 100)), state.isel(time=slice(-100, None))
    hours = float((late.time.mean() - early.time.mean()) / np.timedelta64(1, "h"))
    rise = float(late.flow_rate_residual.mean() - early.flow_rate_residual.mean())
    assert rise == pytest.approx(3.0 * hours, rel=0.25), (rise, hours)
    # not a bearing fault
    assert first_alarm_hours(state, "alarm_vibration") is None


def test_load_and_sample_path_name_what_exists():
    with pytest.raises(ValueError, match=r"name: expected one of \['bearing_fault', 'healthy', "
                                         r"'sensor_drift'\], got 'bearing'"):
        datasets.load("bearing")
    with pytest.raises(ValueError, match="protocol: expected one of"):
        datasets.tag_map_path("modbus")
    assert tb.datasets is datasets


def test_regenerate_runs_the_plant_and_the_recorder(tmp_path):
    """The regeneration path end to end, short: a few wall-clock seconds at 600 times real time.
    The plant's clock is more than an hour ahead of the wall clock by the time the recorder
    subscribes, past the OPC-UA source's default skew: the recorder must keep its stamps."""
    sample = dataclasses.replace(datasets.SAMPLES["bearing_fault"], duration=6.0, speedup=600.0,
                                 rate=5.0)
    path = datasets.regenerate(sample, tmp_path)
    with xr.open_dataset(path, engine="scipy") as ds:
        ds = ds.load()
    assert path == tmp_path / "bearing_fault.nc"
    assert "--fault bearing_wear:5" in ds.attrs["command"]
    assert "--speedup 600" in ds.attrs["command"] and "--max-clock-skew" in ds.attrs["command"]
    assert ds.sizes["time"] >= 10
    step = np.median(np.diff(ds.time.values[2:]) / np.timedelta64(1, "s"))
    assert step == pytest.approx(120.0, rel=0.01)  # simulated, not wall-clock, spacing
    assert set(np.unique(ds.vibration_quality.values)) <= {0, 255}  # none flagged uncertain
    assert tb.replay(path, speed=None).status["samples"] > 0
