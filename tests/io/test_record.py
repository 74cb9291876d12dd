"""Record from a real mosquitto broker to NetCDF, reopen with xarray, replay it back."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from twinbench.io.batch import Batch, Quality, concat
from twinbench.io.mqtt import mqtt_source
from twinbench.io.record import arecord, dataset_from_batch, record, write_dataset
from twinbench.io.replay import replay

TOPIC = "plant/pump1/telemetry"
TAGS = {"temp": f"{TOPIC}#temperature", "speed": f"{TOPIC}#rpm"}
T0 = 1_700_000_000_000  # epoch ms
N = 20


@contextmanager
def publisher(url: str) -> Iterator[Callable[..., None]]:
    """A paho client; yields publish(topic, payload, retain=False) and waits for the acks at exit."""
    from paho.mqtt.client import CallbackAPIVersion, Client

    parts = urllib.parse.urlsplit(url)
    client = Client(CallbackAPIVersion.VERSION2)
    client.connect(parts.hostname, parts.port)
    client.loop_start()
    infos = []

    def publish(topic: str, payload: bytes | str, retain: bool = False) -> None:
        infos.append(client.publish(topic, payload, qos=1, retain=retain))

    try:
        yield publish
        for info in infos:
            info.wait_for_publish(10)
            assert info.is_published()
    finally:
        client.disconnect()
        client.loop_stop()


def message(k: int) -> str:
    # Every third message lacks the rpm field: speed has fewer samples than temp.
    body = {"ts": T0 + 100 * k, "temperature": 60.0 + k}
    if k % 3:
        body["rpm"] = 1000.0 + k
    return json.dumps(body)


def expected_samples() -> int:
    return N + sum(1 for k in range(N) if k % 3)


def record_n(url: str, path: Path | None) -> object:
    async def main() -> object:
        source = mqtt_source(url, TAGS, time_field="ts", time_format="epoch_ms")
        await source.start()
        try:
            with publisher(url) as publish:
                # The reject goes first: one publisher's QoS 1 messages arrive in order, so it is
                # received and decoded before the last good sample ends the recording.
                publish(TOPIC, b"not json")
                for k in range(N):
                    publish(TOPIC, message(k))
            return await arecord(source, 15.0, path, max_samples=expected_samples(), start=False)
        finally:
            await source.stop()

    return asyncio.run(main())


def test_record_writes_netcdf_with_values_times_quality_attrs(mosquitto: str,
                                                               tmp_path: Path) -> None:
    import xarray as xr

    path = tmp_path / "rec.nc"
    record_n(mosquitto, path)
    with xr.open_dataset(path, engine="scipy") as ds:
        ds = ds.load()
    times = (np.datetime64(T0, "ms") + np.arange(N) * np.timedelta64(100, "ms")).astype("M8[ns]")
    assert ds["time"].values.tolist() == times.tolist()
    assert ds["temp"].values.tolist() == [60.0 + k for k in range(N)]
    speed = ds["speed"].values
    has = np.array([k % 3 != 0 for k in range(N)])
    assert speed[has].tolist() == [1000.0 + k for k in range(N) if k % 3]
    assert np.isnan(speed[~has]).all()
    assert ds["temp_quality"].dtype == np.uint8
    assert (ds["temp_quality"].values == Quality.GOOD).all()
    assert ds["speed_quality"].values[~has].tolist() == [Quality.NO_SAMPLE] * int((~has).sum())
    assert ds["speed_quality"].attrs["flag_meanings"].split()[-1] == "no_sample"
    assert ds["temp"].attrs["long_name"] == "temp"
    assert ds.attrs["Conventions"] == "CF-1.8"
    assert json.loads(ds.attrs["twinbench_tags"]) == TAGS
    status = json.loads(ds.attrs["twinbench_status"])
    assert status["messages"] == N + 1
    assert status["decode"]["rejected"] >= 1
    assert ds.attrs["source"] == mosquitto


def test_replay_round_trip_values_and_order(mosquitto: str, tmp_path: Path) -> None:
    path = tmp_path / "rec.nc"
    ds = record_n(mosquitto, path)

    async def main() -> tuple[Batch, dict]:
        src = replay(path, speed=None, max_batch=7)
        await src.start()
        got = [b async for b in src.batches()]
        assert all(len(b) <= 7 for b in got)
        assert await src.read() is None
        status = src.status
        await src.stop()
        return concat(got), status, src.read_latest()

    data, status, latest = asyncio.run(main())
    assert status["samples"] == status["position"] == len(data) == expected_samples()
    assert status["recorded_status"]["messages"] == N + 1
    assert data.tags == ("temp", "speed")
    assert np.all(np.diff(data.time.view(np.int64)) >= 0)
    assert data.select("temp").value.tolist() == [60.0 + k for k in range(N)]
    assert data.select("speed").value.tolist() == [1000.0 + k for k in range(N) if k % 3]
    assert (data.quality == Quality.GOOD).all()
    assert dict(zip(latest.tag.tolist(), latest.value.tolist())) == {0: 60.0 + N - 1,
                                                                       1: 1000.0 + N - 1}
    # The same data from the dataset in memory, through the sync facade.
    src = replay(ds, speed=float("inf"))
    src.start_sync()
    try:
        again = src.read_sync()
    finally:
        src.stop_sync()
    assert again.value.tolist() == data.value.tolist()
    assert again.time.tolist() == data.time.tolist()


def test_replay_paced_by_speed(tmp_path: Path) -> None:
    # 11 samples over 10 s of recorded time; at speed 100 that is 0.1 s of replay.
    times = np.datetime64("2026-01-01T00:00:00", "ns") + np.arange(11) * np.timedelta64(1, "s")
    b = Batch(np.zeros(11, np.int32), times, np.arange(11.0), tags=["x"])
    path = write_dataset(dataset_from_batch(b), tmp_path / "paced.nc")

    async def main() -> tuple[float, list[float], Batch | None]:
        src = replay(path, speed=100.0)
        await src.start()
        began = time.monotonic()
        first = await src.read(timeout=0.0)  # only the first sample is due at start
        assert first is not None and first.value.tolist() == [0.0]
        got = [first] + [x async for x in src.batches()]
        elapsed = time.monotonic() - began
        await src.stop()
        return elapsed, concat(got).value.tolist(), await src.read()

    elapsed, values, after = asyncio.run(main())
    assert values == list(np.arange(11.0))
    assert 0.09 <= elapsed < 5.0
    assert after is None


def test_replay_validates_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="speed"):
        replay(tmp_path / "x.nc", speed=0)
    with pytest.raises(FileNotFoundError, match="path_or_dataset"):
        replay(tmp_path / "missing.nc")
    with pytest.raises(TypeError, match="path_or_dataset"):
        replay(42)


def test_record_validates_and_zarr_needs_zarr(tmp_path: Path) -> None:
    src = replay(dataset_from_batch(Batch([0], ["2026-01-01"], [1.0], tags=["x"])), speed=None)
    with pytest.raises(ValueError, match="duration"):
        record(src, 0)
    ds = record(src, 5.0)  # a replay is a source too: recording it copies it
    assert ds["x"].values.tolist() == [1.0]
    with pytest.raises(ValueError, match="path"):
        write_dataset(ds, tmp_path / "x.csv")



def test_zarr_recording_round_trip(tmp_path: Path) -> None:
    """``.zarr`` recordings (zarr is a dependency): written, replayed, qualities and attrs kept."""
    import xarray as xr

    batch = Batch([0, 1, 0], ["2026-01-01T00:00:00", "2026-01-01T00:00:00",
                              "2026-01-01T00:00:01"], [1.0, np.nan, 2.0],
                  quality=[Quality.GOOD, Quality.GAP, Quality.UNCERTAIN], tags=["x", "y"])
    ds = dataset_from_batch(batch, status={"messages": 3})
    path = write_dataset(ds, tmp_path / "r.zarr")
    back = xr.open_zarr(path, consolidated=False).load()
    assert back["x"].values.tolist() == [1.0, 2.0]
    assert back["y_quality"].values.tolist()[0] == Quality.GAP
    assert back.attrs == ds.attrs
    played = replay(path, speed=None)
    asyncio.run(played.start())
    data = asyncio.run(played.read(1.0))
    assert sorted(data.value[np.isfinite(data.value)].tolist()) == [1.0, 2.0]


def test_cli_record_end_to_end(mosquitto: str, tmp_path: Path) -> None:
    import xarray as xr

    # Retained messages reach the recorder when it subscribes: no race with its start-up.
    with publisher(mosquitto) as publish:
        publish("plant/a", json.dumps({"v": 1.5}), retain=True)
        publish("plant/b", json.dumps({"v": 2.5}), retain=True)
    tags_file = tmp_path / "tags.json"
    tags_file.write_text(json.dumps({"b": "plant/b#v"}))
    out = tmp_path / "cli.nc"
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    proc = subprocess.run(
        [sys.executable, "-m", "twinbench", "record", mosquitto, "--tag", "a=plant/a#v",
         "--tags", str(tags_file), "--duration", "20", "--max-samples", "2", "--out", str(out)],
        capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == 0, proc.stderr
    assert out.exists()
    assert "2 tags" in proc.stdout and "2 samples" in proc.stdout
    with xr.open_dataset(out, engine="scipy") as ds:
        assert ds["a"].values[~np.isnan(ds["a"].values)].tolist() == [1.5]
        assert ds["b"].values[~np.isnan(ds["b"].values)].tolist() == [2.5]

    bad = subprocess.run([sys.executable, "-m", "twinbench", "record", "http://127.0.0.1:4840",
                          "--tag", "a=ns=2;i=1", "--duration", "1", "--out", str(tmp_path / "o.nc")],
                         capture_output=True, text=True, timeout=60, env=env)
    assert bad.returncode == 2
    assert "expected opc.tcp://, mqtt:// or mqtts://" in bad.stderr
