"""twinbench.store: the ring buffer, the Zarr history (crash safety by SIGKILL) and reads across both."""

from __future__ import annotations

import asyncio
import json
import os
import queue
import random
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from twinbench.io.batch import Quality
from twinbench.store import History, RingBuffer, read_window

REPO = Path(__file__).resolve().parents[1]
T0 = np.datetime64("2026-01-01T00:00:00", "ns")


def times(start: int, n: int, step_ms: int = 1) -> np.ndarray:
    return T0 + (start + np.arange(n)) * np.timedelta64(step_ms, "ms")


# -- ring buffer -------------------------------------------------------------------------------

def test_ring_wraps_around_in_time_order():
    ring = RingBuffer(["x", "y"], capacity=5)
    for k in range(4):  # 12 rows through 5 slots: wraps twice, at different offsets
        ring.append(times(3 * k, 3), {"x": np.arange(3 * k, 3 * k + 3.0), "y": -1.0})
    ds = ring.to_dataset()
    assert len(ring) == 5 and ring.capacity == 5
    assert ds["x"].values.tolist() == [7.0, 8.0, 9.0, 10.0, 11.0]
    np.testing.assert_array_equal(ds.time.values, times(7, 5))
    assert ds["y"].values.tolist() == [-1.0] * 5
    # One append longer than the buffer keeps its newest rows.
    ring.append(times(100, 12), {"x": np.arange(100, 112.0)})
    assert ring.to_dataset()["x"].values.tolist() == [107.0, 108.0, 109.0, 110.0, 111.0]
    assert np.isnan(ring.to_dataset()["y"].values).all()


def test_ring_fills_missing_with_nan_and_no_sample():
    ring = RingBuffer(["speed", "speed_quality", "temp"], capacity=10)
    ring.append(times(0, 2), {"speed": [1.0, 2.0], "speed_quality": [0, 1]})
    ring.append(times(2, 1), {"temp": 20.5})
    ds = ring.to_dataset()
    assert ds["speed_quality"].dtype == np.uint8 and ds["speed"].dtype == np.float64
    assert ds["speed_quality"].values.tolist() == [0, 1, Quality.NO_SAMPLE]
    assert np.isnan(ds["speed"].values[2]) and np.isnan(ds["temp"].values[:2]).all()
    assert ring.latest() == {"speed": pytest.approx(np.nan, nan_ok=True),
                             "speed_quality": 255, "temp": 20.5}
    assert ring.latest(skipna=True) == {"speed": 2.0, "speed_quality": 1, "temp": 20.5}
    ring.clear()
    assert len(ring) == 0 and len(ring.to_dataset().time) == 0
    assert ring.latest()["speed_quality"] == 255


def test_ring_dataset_attrs_and_bounds():
    ring = RingBuffer(["p", "p_quality"], capacity=100, units={"p": "bar"},
                      long_names={"p": "discharge pressure"})
    ring.append(times(0, 10, step_ms=1000), {"p": np.arange(10.0), "p_quality": 0})
    ds = ring.to_dataset(start=T0 + np.timedelta64(2, "s"), end="2026-01-01T00:00:05Z")
    assert ds.time.dtype == np.dtype("datetime64[ns]")
    assert ds["p"].values.tolist() == [2.0, 3.0, 4.0, 5.0]  # both bounds inclusive
    assert ds["p"].attrs == {"long_name": "discharge pressure", "units": "bar"}
    q = ds["p_quality"].attrs
    assert q["long_name"] == "quality of discharge pressure"
    assert q["flag_values"].tolist() == [int(v) for v in Quality]
    assert q["flag_meanings"].split()[0] == "good"
    assert ds.time.attrs["long_name"] == "time (UTC)"
    # int64 ns and timezone-aware strings are times too.
    ring.append(np.array([T0.astype(np.int64) + 10**10]), {"p": [10.0]})
    assert ring.to_dataset(start="2026-01-01T01:00:10+01:00")["p"].values.tolist() == [10.0]


def test_ring_sorts_rows_appended_out_of_order():
    ring = RingBuffer(["x"], capacity=6)
    ring.append(times(5, 2), {"x": [5.0, 6.0]})
    ring.append(times(0, 3), {"x": [0.0, 1.0, 2.0]})
    assert ring.to_dataset()["x"].values.tolist() == [0.0, 1.0, 2.0, 5.0, 6.0]
    assert ring.to_dataset(end=times(1, 1)[0])["x"].values.tolist() == [0.0, 1.0]
    assert ring.latest() == {"x": 2.0}  # the last row appended, not the latest time


def test_ring_validates_input():
    with pytest.raises(ValueError, match="capacity"):
        RingBuffer(["x"], capacity=0)
    with pytest.raises(ValueError, match="duplicate"):
        RingBuffer(["x", "x"], capacity=3)
    with pytest.raises(ValueError, match="units"):
        RingBuffer(["x"], capacity=3, units={"y": "m"})
    ring = RingBuffer(["x", "x_quality"], capacity=3)
    with pytest.raises(ValueError, match=r"values: names \['z'\]"):
        ring.append(times(0, 1), {"z": [1.0]})
    with pytest.raises(ValueError, match=r"values\['x'\]: expected 2 values"):
        ring.append(times(0, 2), {"x": [1.0, 2.0, 3.0]})
    with pytest.raises(TypeError, match="x_quality"):
        ring.append(times(0, 1), {"x_quality": [0.5]})
    with pytest.raises(ValueError, match="x_quality"):
        ring.append(times(0, 1), {"x_quality": [300]})
    with pytest.raises(ValueError, match="NaT"):
        ring.append(np.array(["NaT"], dtype="datetime64[ns]"), {"x": [1.0]})
    with pytest.raises(TypeError, match="time"):
        ring.append([1.5], {"x": [1.0]})
    assert len(ring) == 0


# -- history -----------------------------------------------------------------------------------

VARS = ["x", "x_quality", "y"]


def test_history_append_flush_read(tmp_path):
    path = tmp_path / "h.zarr"
    h = History(path, VARS, units={"x": "bar"}, attrs={"model": "pump"}, chunk_rows=7,
                flush_interval=5.0)
    n = 100
    x = np.arange(n, dtype=float)
    h.append(times(0, 60), {"x": x[:60], "x_quality": np.zeros(60, np.uint8)})
    assert (h.committed_rows, h.buffered_rows) == (0, 60)
    assert h.maybe_flush(now=h._last_flush + 1.0) == 0  # not yet
    assert h.maybe_flush(now=h._last_flush + 5.0) == 60
    h.append(times(60, 40), {"x": x[60:], "y": 1.5})
    assert (h.committed_rows, h.buffered_rows, len(h)) == (60, 40, 100)
    ds = h.read()  # disk and buffer as one
    np.testing.assert_array_equal(ds.time.values, times(0, n))
    np.testing.assert_array_equal(ds["x"].values, x)
    assert ds["x_quality"].dtype == np.uint8
    assert ds["x_quality"].values[59:61].tolist() == [0, 255]
    assert np.isnan(ds["y"].values[:60]).all() and (ds["y"].values[60:] == 1.5).all()
    assert ds["x"].attrs["units"] == "bar" and ds.attrs["model"] == "pump"
    # Bounds (inclusive) across chunk boundaries and the disk/buffer seam, against numpy.
    rng = np.random.default_rng(1)
    all_t = times(0, n)
    h.flush()
    h.append(times(100, 5), {"x": np.arange(100, 105.0)})
    all_t = times(0, 105)
    for _ in range(40):
        a, b = sorted(rng.integers(-3, 110, 2))
        start, end = T0 + np.timedelta64(int(a), "ms"), T0 + np.timedelta64(int(b), "ms")
        got = h.read(start, end).time.values
        np.testing.assert_array_equal(got, all_t[(all_t >= start) & (all_t <= end)])
    h.close()
    # A plain xarray reader sees the same store.
    plain = xr.open_zarr(path, consolidated=False).load()
    np.testing.assert_array_equal(plain.time.values, all_t)
    assert plain["x_quality"].dtype == np.uint8


def test_history_reopen_continues(tmp_path):
    path = tmp_path / "h.zarr"
    with History(path, VARS, attrs={"model": "pump", "params": '{"v": 1}'}, chunk_rows=16) as h:
        h.append(times(0, 50), {"x": np.arange(50.0)})
    # Reopened with the variables in another order; attrs changed: updated and logged.
    with History(path, ["y", "x", "x_quality"], attrs={"params": '{"v": 2}'}) as h:
        assert len(h) == 50 and h.last_time == times(49, 1)[0]
        h.append(times(44, 5), {"x": np.arange(44, 49.0)})  # went back in time: dropped
        assert h.dropped == 5 and h.buffered_rows == 0
        h.append(times(50, 5), {"x": np.arange(50, 55.0)})
        h.flush()
        log = json.loads(h.attrs["twinbench_attrs_log"])
        assert log == [{"row": 50, "after": str(times(49, 1)[0]),
                        "changed": {"params": {"old": '{"v": 1}', "new": '{"v": 2}'}}}]
        h.update_attrs({"params": '{"v": 3}'})
        assert json.loads(h.attrs["twinbench_attrs_log"])[-1]["row"] == 55
    with History(path, VARS) as h:
        ds = h.read()
        assert ds.attrs["model"] == "pump" and ds.attrs["params"] == '{"v": 3}'
        expected = np.r_[0:50, 50:55]
        np.testing.assert_array_equal(ds["x"].values, expected.astype(float))
        np.testing.assert_array_equal(ds.time.values, times(0, 55))


def test_history_refuses_other_variables_and_second_writer(tmp_path):
    path = tmp_path / "h.zarr"
    with History(path, VARS), pytest.raises(RuntimeError, match="open for writing"):
        History(path, VARS)
    with pytest.raises(ValueError, match=r"h\.zarr.*stored but not given \['y'\].*"
                                         r"given but not stored \['z'\]"):
        History(path, ["x", "x_quality", "z"])
    with pytest.raises(ValueError, match="path"):
        History(tmp_path / "h.nc", VARS)
    (tmp_path / "plain.zarr").mkdir()
    with pytest.raises(ValueError, match="not a Zarr"):
        History(tmp_path / "plain.zarr", VARS)
    with pytest.raises(ValueError, match="attrs"):
        History(tmp_path / "b.zarr", VARS, attrs={"twinbench_rows": 3})
    # A History dropped without close() (kept only by a cycle, like a re-run notebook cell's
    # twin) does not keep the store locked.
    h = History(path, VARS)
    h.cycle = h
    del h
    h = History(path, VARS)
    h.close()
    with pytest.raises(RuntimeError, match="closed"):
        h.append(times(0, 1), {"x": 1.0})


CHILD = textwrap.dedent("""
    import sys
    import numpy as np
    from twinbench.store import History

    T0 = np.datetime64("2026-01-01T00:00:00", "ns")
    h = History(sys.argv[1], ["x", "x_quality", "y"], chunk_rows=64, flush_interval=0)
    i = 0 if h.last_time is None else int((h.last_time - T0) // np.timedelta64(1, "ms")) + 1
    print(len(h), flush=True)
    while True:
        n = 37  # not a divisor of the chunk: most flushes rewrite a partly filled chunk
        k = i + np.arange(n)
        h.append(T0 + k * np.timedelta64(1, "ms"),
                 {"x": k.astype(float), "x_quality": (k % 200).astype(np.uint8), "y": -k * 0.5})
        h.flush()
        i += n
        print(len(h), flush=True)
""")


def _check_store(path: Path, at_least: int) -> int:
    with History(path, VARS) as h:
        ds = h.read()
    t = ds.time.values
    assert len(t) >= at_least, f"lost flushed rows: {len(t)} < {at_least}"
    assert (np.diff(t) > np.timedelta64(0, "ns")).all(), "times not strictly increasing"
    k = (t - T0) // np.timedelta64(1, "ms")
    np.testing.assert_array_equal(k, np.arange(len(t)))  # no gap, no duplicate
    np.testing.assert_array_equal(ds["x"].values, k.astype(float))
    np.testing.assert_array_equal(ds["y"].values, -k * 0.5)
    np.testing.assert_array_equal(ds["x_quality"].values, (k % 200).astype(np.uint8))
    return len(t)


def test_history_survives_sigkill_mid_flush(tmp_path):
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    path = tmp_path / "crash.zarr"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    rng = random.Random(4)
    rows = 0
    for round_ in range(4):
        proc = subprocess.Popen([sys.executable, str(script), str(path)], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=env)
        lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=lambda q=lines, out=proc.stdout: [q.put(x) for x in out],
                         daemon=True).start()
        reported = []
        try:
            start = int(lines.get(timeout=30))
            assert start == rows, "the reopened store does not continue where it was"
            while len(reported) < 5 + round_ * 3:
                reported.append(int(lines.get(timeout=30)))
            # Kill at a varied moment: the child spends nearly all its time inside flush().
            threading.Event().wait(rng.uniform(0, 0.03))
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)
            proc.stdout.close()
            proc.stderr.close()
        while not lines.empty():
            line = lines.get()
            if line.strip():
                reported.append(int(line))
        rows = _check_store(path, at_least=reported[-1])
        assert rows <= reported[-1] + 37  # at most the flush that was under way
    leftovers = [p for p in path.rglob("*.partial")]
    assert not leftovers


def test_history_netcdf_round_trip(tmp_path):
    with History(tmp_path / "h.zarr", VARS, units={"x": "bar"}, attrs={"model": "pump"}) as h:
        h.append(times(0, 20), {"x": np.arange(20.0), "x_quality": np.arange(20) % 3})
        h.flush()
        h.append(times(20, 5), {"y": 2.0})
        out = h.to_netcdf(tmp_path / "h.nc")
        cut = h.to_netcdf(tmp_path / "cut.nc", start=times(5, 1)[0], end=times(9, 1)[0])
        ds = h.read()
        with pytest.raises(ValueError, match=r"\.nc"):
            h.to_netcdf(tmp_path / "h.zarr2")
    back = xr.open_dataset(out, engine="scipy").load()
    # NetCDF3 keeps times as float64 microseconds: equal to well under a microsecond.
    assert np.abs(back.time.values - ds.time.values).max() < np.timedelta64(1, "us")
    back["time"] = ds.time
    xr.testing.assert_identical(back[VARS], ds[VARS])
    assert back["x"].attrs["units"] == "bar" and back.attrs["model"] == "pump"
    assert back["x_quality"].dtype == np.uint8
    assert xr.open_dataset(cut, engine="scipy")["x"].values.tolist() == [5.0, 6.0, 7.0, 8.0, 9.0]


def test_history_aflush_keeps_every_row_readable(tmp_path):
    async def main(h: History) -> None:
        total = overlaps = 0
        for k in range(20):
            h.append(times(total, 300), {"x": np.arange(total, total + 300.0)})
            total += 300
            task = asyncio.ensure_future(h.aflush())
            while not (h._inflight_rows or task.done()):  # the worker thread took the rows
                await asyncio.sleep(0.001)
            overlaps += bool(h._inflight_rows)
            # Meanwhile: more rows, and reads that must see disk + in-flight + buffered.
            h.append(times(total, 7), {"x": np.arange(total, total + 7.0)})
            total += 7
            ds = h.read()
            assert len(ds.time) == total == len(h)
            np.testing.assert_array_equal(ds["x"].values, np.arange(total, dtype=float))
            await asyncio.wait_for(task, timeout=30)
        assert overlaps, "no read ran while a flush was writing"
        assert await h.amaybe_flush(now=h._last_flush + 0.5) == 0
        assert await h.amaybe_flush(now=h._last_flush + 5.0) == 7
        assert h.committed_rows == total and h.buffered_rows == 0

    with History(tmp_path / "h.zarr", ["x"], chunk_rows=256, flush_interval=5.0) as h:
        asyncio.run(main(h))
    with History(tmp_path / "h.zarr", ["x"]) as h:
        np.testing.assert_array_equal(h.read()["x"].values, np.arange(len(h), dtype=float))
        # Equal times are kept (rows of tags that arrive apart at one time), earlier ones not.
        last = h.last_time
        h.append([last, last - np.timedelta64(1, "ns")], {"x": [-1.0, -2.0]})
        assert h.buffered_rows == 1 and h.dropped == 1


# -- reading across ring and history -----------------------------------------------------------

def test_read_window_across_ring_and_history(tmp_path):
    ring = RingBuffer(["x", "x_quality", "residual"], capacity=30)
    with History(tmp_path / "h.zarr", VARS, chunk_rows=16) as h:
        for k in range(10):  # the twin writes every batch to both
            t = times(10 * k, 10)
            x = np.arange(10 * k, 10 * k + 10.0)
            ring.append(t, {"x": x, "x_quality": 0, "residual": x / 100})
            h.append(t, {"x": x, "x_quality": 0, "y": -x})
            if k % 3 == 0:
                h.flush()
        ds = read_window(ring, h)
        np.testing.assert_array_equal(ds.time.values, times(0, 100))
        np.testing.assert_array_equal(ds["x"].values, np.arange(100.0))
        # "y" only in the history, "residual" only in the ring: missing where the other serves.
        assert np.isnan(ds["y"].values[70:]).all()
        np.testing.assert_array_equal(ds["y"].values[:70], -np.arange(70.0))
        assert np.isnan(ds["residual"].values[:70]).all()
        assert (ds["x_quality"].values == 0).all()
        part = read_window(ring, h, start=times(65, 1)[0], end=times(74, 1)[0])
        np.testing.assert_array_equal(part["x"].values, np.arange(65, 75.0))
        assert read_window(ring, h, start=times(80, 1)[0])["x"].values[0] == 80.0
        assert read_window(ring, h, end=times(3, 1)[0])["x"].values.tolist() == [0, 1, 2, 3]
        # Rows sharing a time (tags arriving apart) come out as one row.
        ring.append(times(100, 2), {"x": [100.0, np.nan], "residual": [np.nan, 7.0]})
        ring.append(times(101, 1), {"x": [101.0]})
        tail = read_window(ring, h, start=times(100, 1)[0])
        assert tail.time.size == 2
        assert tail["x"].values.tolist() == [100.0, 101.0]
        assert tail["residual"].values.tolist()[1] == 7.0
        assert tail["x_quality"].values.tolist() == [255, 255]
        assert ds.attrs["twinbench_variables"]
    # Without a history: just the ring, sorted and merged.
    assert read_window(ring, None).time.size == 30 - 1


def test_import_stays_light():
    code = ("import sys, twinbench.store; "
            "print(sorted(m for m in ('xarray', 'zarr', 'pandas') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env=dict(os.environ, PYTHONPATH=str(REPO))).stdout
    assert out.strip() == "[]"
