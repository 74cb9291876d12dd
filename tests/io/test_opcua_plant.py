"""The OPC-UA source against the project's own simulated plant: write round trips and the
plant's range checks, faults seen as quality, a killed and restarted plant process, SignAndEncrypt
with a username, and recording to a file and replaying it."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import twinbench
from twinbench.io import WriteRejected
from twinbench.io.batch import Batch, Quality, concat
from twinbench.io.opcua import OpcUaSource, opcua_source
from twinbench.io.replay import ReplaySource

PUMP = {name: f"ns=2;s=Pump1.{name}" for name in
        ("speed", "vibration", "speed_setpoint", "valve_opening", "run", "fault", "sequence")}
USER, PASSWORD = "operator", "Opcua-src-pw-7f3e"


async def collect(source: OpcUaSource | ReplaySource, done, timeout: float = 15.0) -> Batch:
    names = source.tags if isinstance(source, ReplaySource) else source.tags.names
    batches = [Batch.empty(names)]
    deadline = time.monotonic() + timeout
    while not done(concat(batches)):
        left = deadline - time.monotonic()
        assert left > 0, f"condition not met within {timeout} s; status {source.status}"
        batch = await source.read(min(left, 0.5))
        assert batch is not None, "source stopped while collecting"
        batches.append(batch)
    return concat(batches)


def test_setpoint_round_trip_and_the_plants_range_checks(fast_plant):
    async def main():
        async with twinbench.connect(fast_plant.opcua_url, PUMP, publishing_interval=50) as src:
            before = (await src.read_values(["speed_setpoint"])).value[0]
            written = await src.write("speed_setpoint", 1500)  # an int to a Double node
            # the measured speed follows the setpoint (speedup 60: seconds of ramp, not minutes)
            slowed = await collect(src, lambda b: (b.select("speed").value < 1600).any()
                                   and 1500.0 in b.select("speed_setpoint").value)
            rejected = {}
            for tag, value in (("speed_setpoint", 5000.0), ("speed", 1.0), ("run", "yes")):
                with pytest.raises(WriteRejected) as info:
                    await src.write(tag, value)
                rejected.update(info.value.rejected)
            after = (await src.read_values(["speed_setpoint"])).value[0]
            await src.write("speed_setpoint", float(before))
            return written, slowed, rejected, after, src.status

    written, slowed, rejected, after, status = asyncio.run(main())
    assert written == {"speed_setpoint": 1500.0}
    assert after == 1500.0  # the out-of-range write changed nothing
    assert rejected["speed_setpoint"] == "BadOutOfRange"
    assert rejected["speed"] in ("BadUserAccessDenied", "BadNotWritable")
    assert rejected["run"].startswith("BadTypeMismatch")
    assert (slowed.select("speed").quality == Quality.GOOD).all()
    # the setpoint carries the plant's simulated time, like its measurements (speedup 60)
    sp = slowed.select("speed_setpoint")
    t_sp = sp.time[sp.value == 1500.0][0]
    speed_times = slowed.select("speed").time
    assert speed_times.min() - np.timedelta64(5, "s") <= t_sp <= speed_times.max()
    assert status["writes"] == 2 and status["write_errors"] == 3  # 1500, then the restore


def test_plant_faults_show_as_quality(plant):
    async def main():
        async with twinbench.connect(plant.opcua_url, PUMP, publishing_interval=50) as src:
            try:
                await src.write("fault", "dropout:vibration")
                data = await collect(src, lambda b: Quality.GAP in b.select("vibration").quality)
            finally:
                await src.write("fault", "")
            cleared = await collect(
                src, lambda b: Quality.GOOD in b.select("vibration").quality[-1:])
            return data, cleared

    data, cleared = asyncio.run(main())
    vib = data.select("vibration")
    lost = vib.quality == Quality.GAP  # BadNoCommunication: the value never arrived
    assert np.isnan(vib.value[lost]).all()
    assert (data.select("speed").quality == Quality.GOOD).all()  # other tags unaffected
    assert np.isfinite(cleared.select("vibration").value[-1])


def test_reconnects_after_the_plant_process_is_killed_and_restarted(plant_process):
    proc = plant_process(args=["--rate", "20"])

    async def main():
        src = opcua_source(proc.opcua_url, {"seq": PUMP["sequence"]}, publishing_interval=50,
                           reconnect_max_delay=1.0)
        await src.start()
        try:
            await collect(src, lambda b: len(b) >= 3)
            killed_at = np.datetime64(time.time_ns(), "ns")
            proc.kill()  # SIGKILL: no goodbye on the socket
            deadline = time.monotonic() + 15
            while src.status["connected"]:
                assert time.monotonic() < deadline, "the loss was not noticed"
                await src.read(0.1)
            down = src.status
            with pytest.raises((TimeoutError, ConnectionError), match=proc.opcua_url):
                await src.write("seq", 1, timeout=0.5)  # fails or times out, never hangs
            await asyncio.to_thread(proc.start)
            data = await collect(src, lambda b: (b.quality == Quality.GAP).any()
                                 and (b.quality[-1] == Quality.GOOD), timeout=30)
            return killed_at, down, data, src.status
        finally:
            await src.stop()

    killed_at, down, data, status = asyncio.run(main())
    assert down["disconnected_since"] is not None and down["disconnects"] == 1
    gap = np.flatnonzero(data.quality == Quality.GAP)
    assert len(gap) == 1 and data.time[gap[0]] >= killed_at - np.timedelta64(1, "s")
    # the restarted plant counts from 1 again: its samples follow the marker
    after = data.value[gap[0] + 1:]
    assert len(after) and np.isfinite(after).all()
    assert status["connected"] and status["reconnects"] == 1 and status["gaps"] == 1


@pytest.fixture(scope="module")
def secure_plant(start_plant, tmp_path_factory):
    state = tmp_path_factory.mktemp("plant-state")
    return start_plant(security=("encrypt",), users={USER: PASSWORD}, state_dir=state)


def test_sign_and_encrypt_with_a_username(secure_plant, tmp_path, caplog):
    cert_dir = tmp_path / "client"

    def source(**options):
        return opcua_source(secure_plant.opcua_url, {"speed": PUMP["speed"]},
                            security="encrypt", cert_dir=cert_dir, connect_timeout=15.0,
                            trust="first-use", **options)

    async def main():
        async with source(username=USER, password=PASSWORD) as src:
            first = await src.read_values()
        made = (cert_dir / "client-cert.der").read_bytes()
        with pytest.raises(PermissionError) as wrong:
            await source(username=USER, password="not-the-password").start()
        with pytest.raises(PermissionError) as anonymous:
            await source().start()
        async with source(username=USER, password=PASSWORD) as src:  # the same certificate
            second = await src.read_values()
        return first, second, made, wrong.value, anonymous.value

    first, second, made, wrong, anonymous = asyncio.run(main())
    assert np.isfinite(first.value).all() and np.isfinite(second.value).all()
    assert (cert_dir / "client-cert.der").read_bytes() == made  # generated once, reused
    assert USER in str(wrong) and "not-the-password" not in str(wrong)
    assert "anonymous" in str(anonymous)
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert PASSWORD not in logged and "not-the-password" not in logged


def test_encrypt_is_refused_by_a_plant_that_offers_none(plant, tmp_path):
    src = opcua_source(plant.opcua_url, {"speed": PUMP["speed"]}, security="encrypt",
                       cert_dir=tmp_path)
    with pytest.raises(ConnectionError, match="encrypt"):
        asyncio.run(src.start())


def test_cli_records_from_opcua_and_replay_plays_it_back(plant, tmp_path):
    import xarray as xr

    out = tmp_path / "pump.nc"
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    proc = subprocess.run(
        [sys.executable, "-m", "twinbench", "record", plant.opcua_url,
         "--tag", f"speed={PUMP['speed']}", "--tag", f"seq={PUMP['sequence']}",
         "--publishing-interval", "50", "--duration", "1.5", "--out", str(out)],
        capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "2 tags" in proc.stdout
    with xr.open_dataset(out, engine="scipy") as ds:
        seq = ds["seq"].values[np.isfinite(ds["seq"].values)]
        assert len(seq) >= 10 and (np.diff(seq) > 0).all()  # 20 Hz for 1.5 s, in order
        assert ds["speed_quality"].attrs and "twinbench_status" in ds.attrs
        times = ds["time"].values

    async def main():
        src = twinbench.replay(out, speed=None)
        await src.start()
        try:
            return await collect(src, lambda b: len(b.select("seq")) == len(seq))
        finally:
            await src.stop()

    played = asyncio.run(main())
    np.testing.assert_array_equal(played.select("seq").value, seq)
    assert played.time.min() == times.min()


def test_plant_browse_names_are_in_its_namespace(plant):
    """Browse paths name the plant's namespace (2), as its NodeIds do."""
    async def main():
        async with opcua_source(plant.opcua_url, {"speed": "0:Objects/2:Pump1/2:speed"},
                                publishing_interval=50) as src:
            tree = await src.browse("ns=2;s=Pump1", depth=1)
            return await src.read_values(), tree

    values, tree = asyncio.run(main())
    assert np.isfinite(values.value).all()
    assert tree.name == "2:Pump1" and "2:speed" in {c.name for c in tree.children}
