"""The exercise checks judge known good and bad answers correctly (and never raise on a wrong
answer, only on input they cannot judge)."""

from __future__ import annotations

import re

import numpy as np
import pytest
import xarray as xr

from twinbench.kernel.detect import Cusum, EwmaZScore
from twinbench.teaching import (
    CheckResult,
    check_earlier_detection,
    check_nis,
    check_setpoint,
    nis_bounds,
)

SENSORS = ("speed", "vibration", "power")


def filter_state(scale: dict[str, float], n: int = 300, seed: int = 0) -> xr.Dataset:
    """A twin-like state: residuals with std ``scale[s]`` times sqrt(R) (R = 1 here), NIS =
    sum of the squared normalised residuals — a filter whose R is off by ``scale**2``."""
    rng = np.random.default_rng(seed)
    t = np.datetime64("2026-01-01") + np.arange(n) * np.timedelta64(100, "ms")
    res = {s: rng.normal(0.0, scale.get(s, 1.0), n) for s in SENSORS}
    nis = sum(r ** 2 for r in res.values())
    return xr.Dataset({"nis": ("time", nis), **{f"{s}_residual": ("time", r)
                                                for s, r in res.items()}},
                      coords={"time": t})


def test_nis_bounds_are_the_chi_square_band():
    lo, hi = nis_bounds(6, window=30)
    assert 4.7 < lo < 5.0 and 7.1 < hi < 7.5
    assert nis_bounds(6, window=1000)[1] < hi  # more samples, a narrower band
    with pytest.raises(ValueError, match="n_measured"):
        nis_bounds(0)


def test_check_nis_passes_a_consistent_filter():
    result = check_nis(filter_state({}))
    assert isinstance(result, CheckResult) and result.passed and bool(result)
    assert str(result).startswith("PASS") and repr(result) == result.message
    assert 2.5 < result.details["mean_nis"] < 3.5


def test_check_nis_names_the_sensor_whose_r_is_too_small():
    # vibration's R 25x too small: its residuals are 5 sqrt(R) wide
    result = check_nis(filter_state({"vibration": 5.0}), noise=dict.fromkeys(SENSORS, 1.0))
    assert not result.passed
    assert result.message.startswith("FAIL") and "overconfident" in result.message
    assert re.search(r"of vibration \(residual [45]\.\dx sqrt\(R\)\)\.", result.message)
    assert "speed" not in result.message.split("Raise R")[1]


def test_check_nis_fails_an_underconfident_filter():
    result = check_nis(filter_state(dict.fromkeys(SENSORS, 1 / 3)),
                       noise=dict.fromkeys(SENSORS, 1.0))
    assert not result.passed and "underconfident" in result.message
    assert "Lower R" in result.message


def test_check_nis_needs_enough_data_and_a_filter():
    short = check_nis(filter_state({}, n=20))
    assert not short.passed and "run longer" in short.message
    with pytest.raises(ValueError, match="nis"):
        check_nis(filter_state({}).drop_vars("nis"))
    with pytest.raises(TypeError, match="twin_or_state"):
        check_nis([1, 2, 3])


def test_check_nis_reads_a_twins_state_and_noise():
    class FakeTwin:  # the two attributes the check reads (a Twin needs a live source)
        state = filter_state({"power": 4.0})
        noise = dict.fromkeys(SENSORS, 1.0)

    result = check_nis(FakeTwin())
    assert not result.passed and re.search(r"of power \(residual [34]\.\dx", result.message)


def wearing_bearing(seed: int = 1, n: int = 600, fault_at: int = 300) -> xr.DataArray:
    """Vibration 1 mm/s with noise, rising linearly from `fault_at` on (a wearing bearing)."""
    rng = np.random.default_rng(seed)
    t = np.datetime64("2026-01-01") + np.arange(n) * np.timedelta64(1, "s")
    ramp = np.clip(np.arange(n) - fault_at, 0, None) * 0.002
    return xr.DataArray(1.0 + 0.05 * rng.normal(size=n) + ramp, coords={"time": t}, dims="time",
                        name="vibration")


def test_earlier_detection_good_answer_passes():
    vib = wearing_bearing()
    mine = Cusum(k=0.25, h=6.0, warmup=30)
    result = check_earlier_detection(vib, vib.time.values[300], mine)
    assert result.passed, result
    d = result.details
    assert 0 <= d["delay_s"] < d["default_delay_s"]
    assert mine.state == Cusum(k=0.25, h=6.0, warmup=30).state  # judged on a copy


@pytest.mark.parametrize(("detector", "words"), [
    (Cusum(k=0.5, h=8.0, warmup=30), "not earlier"),             # the default itself
    (Cusum(k=0.5, h=40.0, warmup=30), "not earlier"),            # slower
    (Cusum(k=0.0, h=1.0, warmup=30), "false alarm"),             # alarms on noise
    (Cusum(k=5.0, h=1000.0, warmup=30), "no alarm at all"),      # never alarms
])
def test_earlier_detection_bad_answers_fail(detector, words):
    vib = wearing_bearing()
    result = check_earlier_detection(vib, vib.time.values[300], detector)
    assert not result.passed and result.message.startswith("FAIL") and words in result.message


def test_earlier_detection_other_detectors_and_bad_input():
    vib = wearing_bearing()
    fault = vib.time.values[300]
    result = check_earlier_detection(vib, fault, EwmaZScore(alpha=0.05, threshold=3.0, warmup=30))
    assert isinstance(result, CheckResult)  # any detector with update/copy is judged
    with pytest.raises(ValueError, match="fault_time"):
        check_earlier_detection(vib, vib.time.values[0] - np.timedelta64(1, "h"),
                                Cusum(k=0.5, h=4.0, warmup=30))
    with pytest.raises(TypeError, match="detector"):
        check_earlier_detection(vib, fault, "cusum")
    with pytest.raises(TypeError, match="signal"):
        check_earlier_detection(vib.values, fault, Cusum(k=0.5, h=4.0, warmup=30))


def projection(setpoints: list[float], n: int = 20, seed: int = 2) -> xr.Dataset:
    """A what-if-like ensemble: scenario 0 the mirror at 2600 rpm, then `n` draws per setpoint.
    Flow ~ speed / 26 m3/h; vibration of a worn bearing grows with speed squared."""
    rng = np.random.default_rng(seed)
    sp = np.repeat([2600.0, *setpoints], [1] + [n] * len(setpoints))
    hours = np.linspace(0.0, 2.0, 13)
    flow = (sp / 26.0)[:, None] + rng.normal(0, 0.5, (sp.size, hours.size))
    growth = (sp / 2400.0) ** 2 * (1 + 0.05 * rng.normal(size=sp.size))
    vib = 2.5 + growth[:, None] * hours[None, :]
    t = np.datetime64("2026-01-01") + (hours * 3600e9).astype("timedelta64[ns]")
    return xr.Dataset({"flow_rate": (("scenario", "time"), flow),
                       "vibration": (("scenario", "time"), vib),
                       "speed_setpoint": ("scenario", sp)},
                      coords={"time": t, "scenario": np.arange(sp.size)})


LIMITS = {"flow_rate": (80.0, None), "vibration": (None, 4.5)}


def test_setpoint_good_and_bad_answers():
    proj = projection([2000.0, 2200.0, 2400.0, 2800.0])
    assert check_setpoint(proj, 2200.0, LIMITS).passed          # flow 84.6, vib ~4.2
    low = check_setpoint(proj, 2000.0, LIMITS)                   # flow 77: below the minimum
    assert not low.passed and "flow_rate in" in low.message and "higher speed" in low.message
    high = check_setpoint(proj, 2800.0, LIMITS)                  # vibration past 4.5 mm/s
    assert not high.passed and "vibration in" in high.message
    assert high.details["violations"]["flow_rate"] == 0
    assert high.details["ok_share"][2200.0] >= 0.9


def test_setpoint_lowest_within_a_step():
    proj = projection([2000.0, 2200.0, 2400.0])
    kw = {"best": "lowest", "step_rpm": 200.0}
    assert check_setpoint(proj, 2200.0, LIMITS, **kw).passed     # 2000 breaks the flow
    flow_only = {"flow_rate": (80.0, None)}
    not_lowest = check_setpoint(proj, 2400.0, flow_only, **kw)   # 2200 would do
    assert not not_lowest.passed and "go lower" in not_lowest.message
    missing = check_setpoint(projection([2200.0]), 2200.0, LIMITS, **kw)
    assert not missing.passed and "Add 2000 rpm" in missing.message


def test_setpoint_highest_within_a_step():
    proj = projection([2200.0, 2300.0, 2400.0, 2800.0])
    kw = {"best": "highest", "step_rpm": 100.0}
    vib_only = {"vibration": (None, 4.5)}
    # vibration after 2 h: 2.5 + 2 (sp/2400)^2 mm/s (+-5 %): 4.34 at 2300 rpm, 4.5 at 2400
    assert check_setpoint(proj, 2300.0, vib_only, **kw).passed
    too_low = check_setpoint(proj, 2200.0, vib_only, **kw)
    assert not too_low.passed and "go higher" in too_low.message
    with pytest.raises(ValueError, match="best"):
        check_setpoint(proj, 2200.0, vib_only, best="cheapest")


def test_setpoint_mirror_is_not_an_answer_and_bad_input_raises():
    proj = projection([2200.0])
    with pytest.raises(ValueError, match="not among"):
        check_setpoint(proj, 2600.0, LIMITS)  # only the mirror runs at 2600
    with pytest.raises(ValueError, match="'temperature' is not in"):
        check_setpoint(proj, 2200.0, {"temperature": (None, 90.0)})
    with pytest.raises(TypeError, match="projection"):
        check_setpoint(proj.isel(scenario=0), 2200.0, LIMITS)
