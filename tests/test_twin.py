"""The live twin: a recorded fault day replayed through it, and the simulated plant live."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

import twinbench as tb
from twinbench.demo import pump_fault_day
from twinbench.kernel.detect import Cusum, NisChiSquare
from twinbench.twin import Twin, convert_units, running_twins

MEASURED = ["speed", "flow_rate", "motor_temperature", "vibration", "current", "power"]
# Process noise as in twinbench.demo: shaft speed, flow, winding temperature, wear.
Q = {"shaft_speed": 1e-2, "flow": 1e-9, "winding_temperature": 1e-4, "wear": 1e-6}
P0 = [1.0, 1e-6, 1.0, 1e-3]


@pytest.fixture(scope="module")
def fault_day():
    truth, meas = pump_fault_day(hours=12.0)
    rec = meas[MEASURED].copy()
    for name in MEASURED:
        rec[f"{name}_quality"] = ("time", np.zeros(rec.sizes["time"], np.uint8))
    R = {m: float(meas[m].attrs["noise_std"]) ** 2 for m in MEASURED}
    return truth, rec, R


def replay_twin(rec, R, **options):
    return Twin(tb.models.pump(), tb.replay(rec, speed=None), R=R, Q=Q, P0=P0,
                x0={"wear": 0.0}, max_step=0.5, **options)


def replay_all(twin, parts=1, stop=True):
    """Feed a replay twin its whole recording, each source batch split in `parts` (small
    batches, as they would arrive live); then stop it unless `stop` is False."""
    async def main():
        await twin.source.start()
        async for batch in twin.source.batches():
            for part in np.array_split(np.arange(len(batch)), parts):
                twin.process(batch.take(part))
        if stop:
            await twin.stop()

    asyncio.run(main())


def test_replayed_fault_day_estimates_wear_and_raises_an_alarm(fault_day):
    truth, rec, R = fault_day
    twin = replay_twin(rec, R, capacity=500,
                       detectors={"vibration": Cusum(k=0.5, h=5.0, warmup=60),
                                  "nis": NisChiSquare(window=30)})

    replay_all(twin, parts=40)
    state = twin.state
    assert state.sizes["time"] == 500  # the ring keeps the newest `capacity` rows
    assert state.time.values[-1] == rec.time.values[-1]
    wear, sd = float(state.wear[-1]), float(state.wear_std[-1])
    true_wear = float(truth.wear[-1])
    assert abs(wear - true_wear) < 3 * sd + 0.02, (wear, sd, true_wear)
    assert twin.alarms["alarm_vibration"] is True  # the bearing fault shows in vibration
    assert set(state.alarm_vibration.values) <= {0.0, 1.0}
    # predictions and residuals are consistent with the measurements
    np.testing.assert_allclose(state.vibration_predicted + state.vibration_residual,
                               state.vibration, rtol=1e-12)
    assert state.speed.attrs["units"] == "rpm" and state.wear_std.attrs["units"]
    # outputs nobody measured are predicted from the estimated state
    assert np.isfinite(state.pressure_predicted.values).all()
    assert state.pressure_predicted.attrs["units"] == "bar"
    assert twin.stats["steps"] == rec.sizes["time"] and twin.stats["errors"] == 0
    assert "Twin" in twin._repr_html_() and "alarm_vibration" in twin._repr_html_()


def test_late_and_bad_samples_are_counted_not_fatal(fault_day):
    _, rec, R = fault_day
    twin = replay_twin(rec.isel(time=slice(0, 200)), R)
    src = twin.source

    async def main():
        await src.start()
        batches = [b async for b in src.batches()]
        return batches

    batches = asyncio.run(main())
    from twinbench.io.batch import concat

    data = concat(batches)
    first, rest = data.take(np.arange(300)), data.take(np.arange(300, len(data)))
    twin.process(rest)
    twin.process(first)  # older than what the twin has seen: counted as late, not processed
    assert twin.stats["late_samples"] == 300 and twin.stats["errors"] == 0


def test_configuration_errors_name_the_argument(fault_day):
    _, rec, R = fault_day
    src = tb.replay(rec, speed=None)
    with pytest.raises(ValueError, match="R: expected a measurement noise"):
        Twin(tb.models.pump(), src, R={"speed": 1.0})
    with pytest.raises(ValueError, match="not a variable of the model"):
        Twin(tb.models.pump(), src, tags={"warp": "speed"}, R=R)
    with pytest.raises(ValueError, match="not a tag of the source"):
        Twin(tb.models.pump(), src, tags={"speed": "rpm"}, R=R)
    with pytest.raises(ValueError, match="unknown signal 'bearing'"):
        Twin(tb.models.pump(), src, R=R, detectors={"bearing": Cusum()})
    with pytest.raises(ValueError, match="no conversion"):
        convert_units([1.0], "degF", "K")


def test_units_are_converted_from_the_tag_map(plant):
    """The plant serves motor_temperature in degC; a tag map that says K makes the twin convert."""
    tags = {"motor_temperature": {"address": "ns=2;s=Pump1.motor_temperature", "units": "K"},
            "speed": "ns=2;s=Pump1.speed"}
    src = tb.connect(plant.opcua_url, tags, publishing_interval=50)
    twin = Twin(tb.models.pump(), src, R={"motor_temperature": 0.1, "speed": 4.0})
    assert twin._convert == {"motor_temperature": ("K", "degC")}


def test_live_twin_on_the_plant(fast_plant):
    tags = {name: f"ns=2;s=Pump1.{name}" for name in (*MEASURED, "speed_setpoint")}

    async def main():
        src = tb.connect(fast_plant.opcua_url, tags, publishing_interval=50)
        R = {"speed": 4.0, "flow_rate": 1.0, "motor_temperature": 0.09, "vibration": 0.0025,
             "current": 0.04, "power": 0.04}
        twin = Twin(tb.models.pump(), src, R=R, Q=Q, P0=P0, max_step=0.5,
                    detectors={"vibration_residual": Cusum(k=0.5, h=8.0, warmup=20)})
        twin.start()
        twin.start()  # a re-run cell does not start a second loop
        task = twin._task
        deadline = time.monotonic() + 20
        while twin.stats["steps"] < 40:
            assert time.monotonic() < deadline, twin.stats
            await asyncio.sleep(0.05)
        assert twin._task is task and twin.running
        state = twin.state
        await twin.stop()
        return twin, state

    twin, state = asyncio.run(main())
    assert not twin.running
    assert state.sizes["time"] >= 40
    assert np.isfinite(state.shaft_speed.values[-10:]).all()
    # the estimated shaft speed follows the measured speed within a few sigma
    last = state.isel(time=-1)
    assert abs(float(last.speed_predicted) - float(last.speed)) < 50
    assert twin.stats["errors"] == 0


def test_running_twins_lists_the_started_twins_until_they_stop(fast_plant):
    """What the JupyterLab status bar shows for a kernel."""
    # configured as the live twin above: a speed-only twin with the default P0 can diverge on
    # its first sample when earlier tests left the shared plant far from the model's defaults
    tags = {name: f"ns=2;s=Pump1.{name}" for name in (*MEASURED, "speed_setpoint")}
    src = tb.connect(fast_plant.opcua_url, tags, publishing_interval=50)
    R = {"speed": 4.0, "flow_rate": 1.0, "motor_temperature": 0.09, "vibration": 0.0025,
         "current": 0.04, "power": 0.04}
    twin = Twin(tb.models.pump(), src, R=R, Q=Q, P0=P0, max_step=0.5, name="listed-pump")

    async def main():
        assert "listed-pump" not in [t["name"] for t in running_twins()]
        twin.start()
        deadline = time.monotonic() + 20
        while twin.stats["samples"] < 5:
            assert time.monotonic() < deadline, twin.stats
            await asyncio.sleep(0.05)
        listed = [t for t in running_twins() if t["name"] == "listed-pump"]
        await twin.stop()
        return listed, running_twins()

    listed, after = asyncio.run(main())
    assert len(listed) == 1 and listed[0]["samples"] >= 5 and listed[0]["errors"] == 0, listed
    assert listed[0]["alarms"] == []
    assert "listed-pump" not in [t["name"] for t in after]


@pytest.mark.parametrize("protocol", ["opcua", "mqtt"])
def test_fault_alarm_rule_guarded_write_and_the_plant_follows(protocol, start_plant, stop_plant,
                                                               tmp_path):
    """End to end over OPC-UA and over MQTT: a bearing fault develops in the plant → the twin's
    detector alarms → a rule recommends a lower speed → the operator confirms → the guarded
    write → the plant's speed follows and vibration falls; the audit log holds the write."""
    from twinbench.act import Limits, Rule, audit_log, guarded_writer
    from twinbench.plant._broker import find_mosquitto

    if protocol == "mqtt" and not find_mosquitto():
        pytest.skip("mosquitto is not installed")
    plant = start_plant(speedup=60.0, rate=10.0, seed=5, faults=("bearing_wear:150",),
                        mqtt="auto" if protocol == "mqtt" else "none")
    R = {"speed": 4.0, "flow_rate": 1.0, "motor_temperature": 0.09, "vibration": 0.0025,
         "current": 0.04, "power": 0.04}

    def connect():
        if protocol == "opcua":
            tags = {name: f"ns=2;s=Pump1.{name}" for name in (*MEASURED, "speed_setpoint")}
            return tb.connect(plant.opcua_url, tags, publishing_interval=50)
        tags = {name: f"plant/pump1/telemetry#{name}" for name in MEASURED}
        return tb.connect(plant.mqtt_url, tags, time_field="ts", time_format="epoch_ms",
                          command_topic="plant/pump1/command", ack_topic="plant/pump1/ack")

    async def main():
        src = connect()
        writer = guarded_writer(src, {"speed_setpoint": Limits(0, 3000)},
                                audit=tmp_path / "audit.jsonl", user="operator")
        rule = Rule("slow-down", ("alarm_vibration", ">=", 1.0), persistence=10.0,
                    recommend="bearing vibration rising: reduce speed to 2000 rpm",
                    write={"speed_setpoint": 2000.0})
        twin = Twin(tb.models.pump(), src, R=R, Q=Q, P0=P0, max_step=0.5, rules=[rule],
                    writer=writer,
                    detectors={"vibration": Cusum(k=0.5, h=5.0, mean=1.24, std=0.05)})
        twin.start()
        try:
            t0 = time.monotonic()
            while not twin.recommendations:
                assert time.monotonic() - t0 < 30, (twin.stats, twin.alarms)
                await asyncio.sleep(0.05)
            alarm_after = time.monotonic() - t0
            event = twin.recommendations[0]
            before = twin.latest()
            results = await twin.act(event, confirm=True)
            t1 = time.monotonic()
            while twin.latest()["speed"] > 2100:
                assert time.monotonic() - t1 < 20, twin.latest()
                await asyncio.sleep(0.05)
            after = twin.latest()
            return alarm_after, event, before, results, after
        finally:
            await twin.stop()
            stop_plant(plant)

    alarm_after, event, before, results, after = asyncio.run(main())
    assert alarm_after < 30
    assert event.writes == {"speed_setpoint": 2000.0} and "reduce speed" in event.message
    assert [r.result for r in results] == ["written"]
    if protocol == "opcua":
        assert results[0].read_back == 2000.0
    assert after["speed"] < 2100 and after["vibration"] < before["vibration"]
    records = audit_log(tmp_path / "audit.jsonl")
    assert [(r["tag"], r["requested"], r["result"], r["user"], r["source"]) for r in records] \
        == [("speed_setpoint", 2000.0, "written", "operator", "rule:slow-down")]


def test_whatif_forks_from_the_current_estimate(fault_day):
    _, rec, R = fault_day
    twin = replay_twin(rec.isel(time=slice(0, 120)), R)
    replay_all(twin, stop=False)
    proj = twin.whatif(600.0, dt=1.0, changes={"speed_setpoint": [2000.0, 2500.0]}, n=1,
                       uncertainty=True, seed=1, limits={"vibration": (0.0, 4.5)})
    assert proj.sizes["scenario"] >= 3
    assert proj.time.values[0] == rec.time.values[119]  # starts at the latest measurement
    # the mirror starts at the estimated state
    assert float(proj.wear.isel(scenario=0, time=0)) == pytest.approx(float(twin.ekf.x[3]))


def test_public_accessors_for_views(fault_day):
    """What live views read: a copy of the estimate to project from, the live window from a
    time on, column names, units and noise, never the twin's private fields."""
    _, rec, R = fault_day
    twin = replay_twin(rec.isel(time=slice(0, 120)), R,
                       detectors={"vibration": Cusum(k=0.5, h=5.0, warmup=60)})
    assert twin.snapshot()["time"] is None
    replay_all(twin, stop=False)
    snap = twin.snapshot()
    assert snap["time"] == rec.time.values[119]
    assert snap["state"]["wear"] == float(twin.ekf.x[3])
    snap["covariance"][0, 0] = -1.0  # a copy: the twin keeps filtering on its own
    assert twin.ekf.P[0, 0] > 0
    assert snap["params"] == {} and twin.params["rated_speed"] > 0
    later = twin.live_window(start=rec.time.values[100])
    assert later.sizes["time"] == 20 and later.time.values[0] == rec.time.values[100]
    assert twin.column("speed") == "speed" and twin.units["speed_residual"] == "rpm"
    assert twin.alarm_names == ["alarm_vibration"]
    assert twin.noise == pytest.approx(R)
    with pytest.raises(ValueError, match="variable: 'wear' has no tag"):
        twin.column("wear")


def test_rul_raises_a_work_order_and_kpis(fault_day):
    from twinbench.kernel.rul import ParticleFilterRUL
    from twinbench.maintenance import MaintenancePolicy, kpis

    _, rec, R = fault_day
    pf = ParticleFilterRUL(threshold=4.5, measurement_std=0.05, prior={"b": (0.0, 2e-5)},
                           offset=1.0, horizon=30 * 24 * 3600.0, quantiles=(0.1, 0.5, 0.9),
                           seed=1)
    policy = MaintenancePolicy("vibration", pf, below=48 * 3600.0, quantile=0.1,
                               action="replace the drive-end bearing")
    twin = replay_twin(rec, R, maintenance=[policy], capacity=2000)
    replay_all(twin, parts=20, stop=False)
    assert len(twin.work_orders) == 1  # raised once, until closed
    order = twin.work_orders[0]
    assert order.asset == twin.name and order.suggested_action.startswith("replace")
    assert order.due_by > order.created and order.evidence["rul_hours"]["q0.1"] < 48
    assert np.isfinite(twin.state.rul_vibration.values).any()
    k = kpis(twin.state, output="flow_rate", ideal_rate=100.0, running=("speed", 100.0),
             power="power")
    assert 0.99 <= float(k.availability) <= 1.0 and 0.5 < float(k.oee) <= 1.1
    assert float(k.energy_per_unit) > 0 and k.energy_per_unit.attrs["units"] == "kW h per m3/h h"


def test_history_persists_and_a_restarted_twin_continues(fault_day, tmp_path):
    _, rec, R = fault_day
    path = tmp_path / "pump.zarr"
    first, second = rec.isel(time=slice(0, 300)), rec.isel(time=slice(300, 400))

    twin = replay_twin(first, R, history=path, capacity=100)
    replay_all(twin)
    whole = twin.history()  # ring (last 100 rows) and stored history together
    assert whole.sizes["time"] == 300
    np.testing.assert_array_equal(whole.time.values, first.time.values)
    twin.close()

    again = replay_twin(second, R, history=path, capacity=100)
    replay_all(again)
    both = again.history()
    assert both.sizes["time"] == 400 and (np.diff(both.time.values.astype(np.int64)) > 0).all()
    np.testing.assert_allclose(both.vibration.values, rec.vibration.values[:400])
    # what a replay needs is stored with the data: parameters, filter settings, tag map
    import json

    attrs = again._history.attrs
    assert json.loads(attrs["params"])["wear_rate"] == tb.models.pump().params[
        tb.models.pump().param_names.index("wear_rate")].default
    assert json.loads(attrs["filter"])["R"]["vibration"] == R["vibration"]
    assert json.loads(attrs["tags"])["vibration"] == "vibration"
    again.close()


def test_three_pumps_side_by_side_as_a_system(start_plant, stop_plant):
    from twinbench.twin import SystemTwin

    plants = [start_plant(speedup=60.0, rate=10.0, seed=k) for k in range(3)]
    R = {"speed": 4.0, "vibration": 0.0025}

    async def main():
        twins = [Twin(tb.models.pump(), tb.connect(p.opcua_url, {
                     "speed": "ns=2;s=Pump1.speed", "vibration": "ns=2;s=Pump1.vibration"},
                     publishing_interval=50), R=R, Q=Q, P0=P0, max_step=0.5, name=f"pump{k}")
                 for k, p in enumerate(plants)]
        system = SystemTwin(twins, name="station").start()
        try:
            deadline = time.monotonic() + 20
            while min(t.stats["steps"] for t in twins) < 10:
                assert time.monotonic() < deadline, [t.stats for t in twins]
                await asyncio.sleep(0.05)
            return system.state, system.alarms
        finally:
            await system.stop()
            for p in plants:
                stop_plant(p)

    state, alarms = asyncio.run(main())
    assert state.asset.values.tolist() == ["pump0", "pump1", "pump2"]
    assert state.wear.dims == ("asset", "time")
    for k in range(3):
        assert np.isfinite(state.speed.sel(asset=f"pump{k}").values).sum() >= 10
    assert set(alarms) == {"pump0", "pump1", "pump2"}
    with pytest.raises(ValueError, match="unique"):
        SystemTwin([Twin(tb.models.pump(), tb.connect(plants[0].opcua_url, {
            "speed": "ns=2;s=Pump1.speed"}), R=R)] * 2)


def test_a_configured_filter_can_be_given(fault_day):
    from twinbench.kernel.estimate import ExtendedKalmanFilter

    _, rec, R = fault_day
    ekf = ExtendedKalmanFilter(tb.models.pump(), Q=list(Q.values()), R=[R[m] for m in MEASURED],
                               measured=MEASURED, P0=P0, x0={"wear": 0.0}, max_step=0.5)
    twin = Twin(tb.models.pump(), tb.replay(rec, speed=None), estimator=ekf)
    assert twin.ekf is ekf
    with pytest.raises(ValueError, match="estimator: its measured"):
        Twin(tb.models.pump(), tb.replay(rec, speed=None), tags={"speed": "speed"},
             estimator=ekf)
    with pytest.raises(ValueError, match="estimator: expected 'ekf'"):
        Twin(tb.models.pump(), tb.replay(rec, speed=None), estimator="ukf", R=R)


def test_a_twin_started_before_its_equipment_connects_when_it_appears(start_plant, stop_plant):
    from twinbench.plant._opcua import free_port

    port = free_port()
    src = tb.connect(f"opc.tcp://127.0.0.1:{port}/twinbench/plant",
                     {"speed": "ns=2;s=Pump1.speed"}, publishing_interval=50, connect_timeout=2.0)
    twin = Twin(tb.models.pump(), src, R={"speed": 4.0}, Q=Q, P0=P0, max_step=0.5)

    async def main():
        twin.start()
        deadline = time.monotonic() + 10
        while twin.stats["errors"] < 1:  # nothing listens yet: a failed attempt, no give-up
            assert time.monotonic() < deadline, twin.stats
            await asyncio.sleep(0.05)
        plant = await asyncio.to_thread(start_plant, opcua_port=port, speedup=60.0)
        try:
            deadline = time.monotonic() + 30
            while twin.stats["steps"] < 5:
                assert time.monotonic() < deadline and twin.running, twin.stats
                await asyncio.sleep(0.05)
        finally:
            await twin.stop()
            await asyncio.to_thread(stop_plant, plant)

    asyncio.run(main())
