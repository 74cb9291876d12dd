"""The columnar Batch: construction, coercion, joining, selection and the wide xarray view."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from twinbench.io.batch import Batch, Quality, concat, quality_from_opcua_status

T0 = np.datetime64("2026-01-01T00:00:00", "ns")


def _batch(n: int, tags=("a", "b", "c"), start: int = 0, seed: int = 0) -> Batch:
    rng = np.random.default_rng(seed)
    return Batch(rng.integers(0, len(tags), n), T0 + np.arange(start, start + n).astype("m8[ms]"),
                 rng.normal(size=n), rng.choice([0, 1, 2], n), tags=tags)


def test_columns_are_coerced_once_to_their_dtypes():
    b = Batch(np.array([0, 1], dtype=np.int64), np.array(["2026-01-01", "2026-01-02"], "M8[D]"),
              np.array([1, 2], dtype=np.int16), np.array([0, 2], dtype=np.int64), tags=["x", "y"])
    assert (b.tag.dtype, b.time.dtype, b.value.dtype, b.quality.dtype) == (
        np.int32, np.dtype("M8[ns]"), np.float64, np.uint8)
    assert b.time[1] == np.datetime64("2026-01-02T00:00:00", "ns")
    assert b.value.tolist() == [1.0, 2.0]
    assert len(b) == 2


def test_quality_defaults_to_good():
    b = Batch([0, 0], [T0, T0], [1.0, 2.0], tags=["x"])
    assert b.quality.tolist() == [Quality.GOOD, Quality.GOOD]


def test_timezone_aware_times_become_utc():
    aware = pd.Series(pd.to_datetime(["2026-06-01T12:00:00"]).tz_localize("Europe/Berlin"))
    b = Batch([0], aware, [1.0], tags=["x"])
    assert b.time[0] == np.datetime64("2026-06-01T10:00:00", "ns")  # CEST is UTC+2
    b = Batch([0], pd.DatetimeIndex(aware), [1.0], tags=["x"])
    assert b.time[0] == np.datetime64("2026-06-01T10:00:00", "ns")
    b = Batch([0, 0], ["2026-06-01T12:00:00+02:00", "2026-06-01T10:00:00Z"], [1.0, 2.0], tags=["x"])
    assert (b.time == np.datetime64("2026-06-01T10:00:00", "ns")).all()


def test_tag_names_are_accepted_in_the_tag_column():
    b = Batch(["y", "x", "y"], [T0] * 3, [1, 2, 3], tags=["x", "y"])
    assert b.tag.tolist() == [1, 0, 1]
    with pytest.raises(ValueError, match="'z'"):
        Batch(["z"], [T0], [1], tags=["x", "y"])


def test_columns_are_read_only_and_the_callers_arrays_stay_writable():
    values = np.array([1.0, 2.0])
    b = Batch([0, 0], [T0, T0], values, tags=["x"])
    with pytest.raises(ValueError):
        b.value[0] = 5.0
    values[0] = 7.0  # the caller's array is not frozen behind its back (the batch shares it)
    assert b.value[0] == 7.0
    with pytest.raises(AttributeError):
        b.tags = ("y",)


@pytest.mark.parametrize("kwargs, error, match", [
    ({"tag": [0, 1], "time": [T0], "value": [1.0, 2.0]}, ValueError, "differ in length"),
    ({"tag": [0, 2], "time": [T0, T0], "value": [1.0, 2.0]}, ValueError, "tag: indices"),
    ({"tag": [-1], "time": [T0], "value": [1.0]}, ValueError, "tag: indices"),
    ({"tag": [0.5], "time": [T0], "value": [1.0]}, TypeError, "tag:"),
    ({"tag": [0], "time": [1_700_000_000], "value": [1.0]}, TypeError, "time:"),
    ({"tag": [0], "time": ["not a time"], "value": [1.0]}, ValueError, "time:"),
    ({"tag": [0], "time": [T0], "value": ["1.0"]}, TypeError, "value:"),
    ({"tag": [0], "time": [T0], "value": [1.0], "quality": [7]}, ValueError, "quality:"),
    ({"tag": [0], "time": [T0], "value": [1.0], "quality": [-1]}, ValueError, "quality:"),
    ({"tag": [[0]], "time": [[T0]], "value": [[1.0]]}, ValueError, "1-D"),
])
def test_bad_columns_are_refused_naming_the_argument(kwargs, error, match):
    with pytest.raises(error, match=match):
        Batch(**kwargs, tags=["x", "y"])


def test_bad_tag_names_are_refused():
    with pytest.raises(ValueError, match="duplicate"):
        Batch.empty(["x", "x"])
    with pytest.raises(TypeError, match="tags"):
        Batch.empty("xy")
    with pytest.raises(TypeError, match="tags"):
        Batch.empty(["x", ""])


def test_empty_and_gap():
    e = Batch.empty(["x", "y"])
    assert len(e) == 0 and e.tags == ("x", "y") and e.time.dtype == np.dtype("M8[ns]")
    g = Batch.gap(["x", "y"], pd.Timestamp("2026-01-01T01:00:00", tz="Europe/Paris"))
    assert g.tag.tolist() == [0, 1]
    assert np.isnan(g.value).all()
    assert (g.quality == Quality.GAP).all()
    assert (g.time == np.datetime64("2026-01-01T00:00:00", "ns")).all()
    with pytest.raises(ValueError, match="time"):
        Batch.gap(["x"], [T0, T0])


def test_sorted_is_stable_by_time():
    b = Batch([0, 1, 2, 0], [T0 + 2, T0, T0 + 2, T0], [1, 2, 3, 4], tags=["a", "b", "c"])
    s = b.sorted()
    assert s.value.tolist() == [2.0, 4.0, 1.0, 3.0]
    assert s.tag.tolist() == [1, 0, 0, 2]


def test_select_keeps_batch_order_and_tags():
    b = _batch(1000)
    s = b.select("b")
    assert (s.tag == 1).all() and len(s) == int((b.tag == 1).sum())
    assert np.array_equal(s.value, b.value[b.tag == 1])
    assert s.tags == b.tags
    assert len(b.select("a", "c")) == len(b) - len(s)
    with pytest.raises(KeyError, match="zz"):
        b.select("zz")


def test_concat_same_tags_and_remapped_tags():
    a = Batch([0, 1], [T0, T0], [1.0, 2.0], tags=["x", "y"])
    b = Batch([0, 1], [T0 + 1, T0 + 1], [3.0, 4.0], quality=[2, 3], tags=["y", "z"])
    c = concat([a, b])
    assert c.tags == ("x", "y", "z")
    assert c.tag.tolist() == [0, 1, 1, 2]
    assert c.value.tolist() == [1.0, 2.0, 3.0, 4.0]
    assert c.quality.tolist() == [0, 0, 2, 3]
    np.testing.assert_array_equal(c.time, np.array([T0, T0, T0 + 1, T0 + 1]))
    # An explicit order, and names are what survive the remap.
    d = Batch.concat([a, b], tags=["z", "y", "x"])
    assert [d.tags[i] for i in d.tag] == ["x", "y", "y", "z"]
    with pytest.raises(ValueError, match="missing"):
        concat([a, b], tags=["x", "y"])
    with pytest.raises(ValueError, match="empty"):
        concat([])
    assert concat([], tags=["x"]).tags == ("x",)
    with pytest.raises(TypeError, match="item 1"):
        concat([a, "b"])


def test_a_million_samples_and_a_hundred_batches():
    n = 1_000_000
    big = _batch(n, seed=1)
    assert len(big) == n
    parts = [_batch(10_000, start=10_000 * i, seed=i) for i in range(100)]
    joined = concat(parts)
    assert len(joined) == n and joined.tags == ("a", "b", "c")
    assert np.array_equal(joined.value[10_000:20_000], parts[1].value)
    assert np.array_equal(joined.tag[-10_000:], parts[-1].tag)
    assert (np.diff(joined.time.view(np.int64)) > 0).all()
    # Reversed, then sorted: the same samples back.
    back = concat(parts[::-1]).sorted()
    assert np.array_equal(back.value, joined.value)
    assert np.array_equal(back.quality, joined.quality)


def test_to_dataset_is_wide_with_quality_and_cf_attrs():
    b = Batch(["speed", "temp", "speed", "speed"], [T0, T0 + 5, T0 + 10, T0 + 10],
              [1.0, 20.0, 2.0, 3.0], quality=[0, 1, 2, 0], tags=["speed", "temp"])
    ds = b.to_dataset(units={"speed": "rpm"}, long_names={"temp": "bearing temperature"})
    np.testing.assert_array_equal(ds["time"].values, np.array([T0, T0 + 5, T0 + 10]))
    assert ds["time"].dtype == np.dtype("M8[ns]")
    np.testing.assert_array_equal(ds["speed"].values, [1.0, np.nan, 3.0])  # last at a time wins
    np.testing.assert_array_equal(ds["temp"].values, [np.nan, 20.0, np.nan])
    assert ds["speed_quality"].values.tolist() == [0, Quality.NO_SAMPLE, 0]
    assert ds["temp_quality"].values.tolist() == [Quality.NO_SAMPLE, 1, Quality.NO_SAMPLE]
    assert ds["speed"].attrs == {"long_name": "speed", "units": "rpm"}
    assert ds["temp"].attrs["long_name"] == "bearing temperature" and "units" not in ds["temp"].attrs
    meanings = ds["temp_quality"].attrs["flag_meanings"].split()
    assert dict(zip(meanings, ds["temp_quality"].attrs["flag_values"].tolist()))["gap"] == Quality.GAP
    with pytest.raises(KeyError, match="units"):
        b.to_dataset(units={"nope": "m"})


def test_to_dataset_refuses_clashing_names():
    b = Batch.gap(["x", "x_quality"], T0)
    with pytest.raises(ValueError, match="x_quality"):
        b.to_dataset()


def test_empty_batch_to_dataset():
    ds = Batch.empty(["x"]).to_dataset()
    assert ds.sizes["time"] == 0 and ds["x"].dtype == np.float64


@pytest.mark.parametrize("code, quality", [
    (0x00000000, Quality.GOOD),
    (0x00A00000, Quality.GOOD),         # GoodLocalOverride
    (0x40000000, Quality.UNCERTAIN),
    (0x408F0000, Quality.UNCERTAIN),    # UncertainInitialValue
    (0x80000000, Quality.BAD),
    (0x803C0000, Quality.BAD),          # BadOutOfRange
    (0xC0000000, Quality.BAD),          # severity 11 is bad too
    (0x808A0000, Quality.GAP),          # BadNotConnected
    (0x80310000, Quality.GAP),          # BadNoCommunication
])
def test_opcua_status_codes(code, quality):
    assert Quality.from_opcua_status(code) is quality
    assert quality_from_opcua_status(np.array([code], dtype=np.uint32)).tolist() == [quality]


def test_opcua_status_refuses_bad_input():
    with pytest.raises(ValueError, match="code"):
        Quality.from_opcua_status(2**32)
    with pytest.raises(TypeError, match="code"):
        Quality.from_opcua_status("0")
    with pytest.raises(TypeError, match="codes"):
        quality_from_opcua_status([0.5])


def test_quality_is_bad():
    assert [q.name for q in Quality if q.is_bad] == ["BAD", "GAP", "BAD_DECODE", "NO_SAMPLE"]


def test_python_datetimes_and_empty_lists():
    import datetime as dt

    plus_one = dt.timezone(dt.timedelta(hours=1))
    g = Batch.gap(["x"], dt.datetime(2026, 1, 1, 1, tzinfo=plus_one))
    assert g.time[0] == np.datetime64("2026-01-01T00:00:00", "ns")
    b = Batch([0], [dt.datetime(2026, 1, 1, 1, tzinfo=plus_one)], [1.0], tags=["x"])
    assert b.time[0] == np.datetime64("2026-01-01T00:00:00", "ns")
    e = Batch([], [], [], [], tags=["x"])
    assert len(e) == 0
    assert (e.tag.dtype, e.time.dtype, e.quality.dtype) == (np.int32, np.dtype("M8[ns]"), np.uint8)
