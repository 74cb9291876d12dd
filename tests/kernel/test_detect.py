"""Streaming detectors: batch-splitting invariance, C == NumPy, known answers, NaN semantics,
bad input."""

from __future__ import annotations

import doctest
from datetime import timedelta

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from numpy.lib.stride_tricks import sliding_window_view

from twinbench.kernel import detect
from twinbench.kernel._check_build import pure_python
from twinbench.kernel.detect import (
    Cusum,
    EwmaZScore,
    NisChiSquare,
    PersistenceThreshold,
    RollingStats,
)

BACKENDS = ["numpy"] if pure_python() else ["c", "numpy"]

class RollingStatsFrequentResync(RollingStats):
    """Recomputes from the buffer every other wrap, so that short series reach that path."""

    _RESYNC_SAMPLES = 7


class NisChiSquareResyncEveryWrap(NisChiSquare):
    _RESYNC_SAMPLES = 1


# Small windows, warm-ups and thresholds so that short random series reach every branch: warm-up
# ending, alarms rising and falling, ring buffers wrapping, hysteresis holding.
FACTORIES = {
    "ewma": lambda b: EwmaZScore(alpha=0.3, threshold=1.2, warmup=3, backend=b),
    "ewma_floor": lambda b: EwmaZScore(alpha=0.5, threshold=2.0, warmup=0, min_std=0.5,
                                       backend=b),
    "cusum_calibrated": lambda b: Cusum(k=0.25, h=1.5, warmup=4, backend=b),
    "cusum_mean_only": lambda b: Cusum(k=0.1, h=1.0, mean=0.2, warmup=3, backend=b),
    "cusum_known_reset": lambda b: Cusum(k=0.3, h=1.0, mean=0.0, std=1.0, reset_on_alarm=True,
                                         backend=b),
    "rolling": lambda b: RollingStats(window=5, min_periods=2, low=-0.8, high=0.8, max_std=1.5,
                                      backend=b),
    "rolling_pop": lambda b: RollingStats(window=3, ddof=0, min_periods=1, backend=b),
    "rolling_resync": lambda b: RollingStatsFrequentResync(window=5, min_periods=1, max_std=1.0,
                                                           backend=b),
    "persist": lambda b: PersistenceThreshold(level=0.3, duration=2.5, clear_level=-0.5,
                                              backend=b),
    "persist_below": lambda b: PersistenceThreshold(level=-0.2, duration=0.0, direction="below",
                                                    backend=b),
    "nis": lambda b: NisChiSquare(window=4, significance=0.3, backend=b),
    "nis_greater": lambda b: NisChiSquare(window=3, significance=0.2, alternative="greater",
                                          backend=b),
    "nis_resync": lambda b: NisChiSquareResyncEveryWrap(window=4, significance=0.3, backend=b),
}


def feed(det, x, t, dof):
    """Call ``update`` with what each detector needs."""
    if isinstance(det, NisChiSquare):
        return det.update(np.abs(x), dof=dof)
    if isinstance(det, PersistenceThreshold):
        return det.update(x, t)
    return det.update(x)


def concat(results):
    return {f: np.concatenate([getattr(r, f) for r in results]) for f in results[0]._fields}


@st.composite
def streams(draw, max_len=60):
    """A random multi-channel series with missing samples, times and dofs, and batch cuts."""
    n = draw(st.integers(0, max_len))
    c = draw(st.integers(1, 3))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    x = rng.normal(scale=draw(st.sampled_from([0.3, 1.0, 3.0])), size=(n, c))
    x += draw(st.sampled_from([0.0, 0.5, -1.0])) * (np.arange(n)[:, None] > n // 2)
    missing = rng.random((n, c)) < draw(st.sampled_from([0.0, 0.1, 0.4]))
    x[missing] = rng.choice([np.nan, np.inf, -np.inf], size=int(missing.sum()))
    # Times may repeat (steps of 0) and jump.
    t = np.cumsum(rng.choice([0.0, 0.5, 1.0, 3.0], size=n)) + 100.0
    dof = rng.integers(0, 4, size=(n, c))
    cuts = sorted(draw(st.lists(st.integers(0, n), max_size=8)))
    if draw(st.booleans()) and c == 1:
        x = x[:, 0]
        dof = dof[:, 0]
    return x, t, dof, cuts


def run_split(make, backend, x, t, dof, cuts):
    det = make(backend)
    bounds = [0, *cuts, len(x)]
    parts = [feed(det, x[a:b], t[a:b], dof[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]
    return concat(parts), det.state


# --- batch-splitting invariance -------------------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", sorted(FACTORIES))
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=streams())
def test_batch_splitting_gives_identical_results(name, backend, data):
    x, t, dof, cuts = data
    make = FACTORIES[name]
    whole, whole_state = run_split(make, backend, x, t, dof, [])
    split, split_state = run_split(make, backend, x, t, dof, cuts)
    for f in whole:
        assert whole[f].shape == split[f].shape
        np.testing.assert_array_equal(split[f], whole[f], err_msg=f)
    for k in whole_state:
        np.testing.assert_array_equal(split_state[k], whole_state[k], err_msg=k)


def test_one_sample_batches_equal_one_batch():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(300, 2))
    x[rng.random(x.shape) < 0.05] = np.nan
    t = np.arange(300.0)
    dof = rng.integers(0, 3, size=x.shape)
    for name, make in FACTORIES.items():
        whole, _ = run_split(make, BACKENDS[0], x, t, dof, [])
        single, _ = run_split(make, BACKENDS[0], x, t, dof, list(range(1, 300)))
        for f in whole:
            np.testing.assert_array_equal(single[f], whole[f], err_msg=f"{name}.{f}")


# --- compiled == NumPy reference ------------------------------------------------------------------

def assert_same(a, b, what):
    for f in a._fields:
        ra, rb = getattr(a, f), getattr(b, f)
        assert ra.dtype == rb.dtype and ra.shape == rb.shape, f"{what}.{f}"
        if ra.dtype.kind == "f":
            np.testing.assert_allclose(ra, rb, rtol=1e-12, atol=1e-12, err_msg=f"{what}.{f}")
        else:
            np.testing.assert_array_equal(ra, rb, err_msg=f"{what}.{f}")


needs_c = pytest.mark.skipif(pure_python(), reason="TWINBENCH_PURE_PYTHON: no compiled kernel")


@needs_c
@pytest.mark.parametrize("name", sorted(FACTORIES))
@settings(max_examples=60, deadline=None)
@given(data=streams())
def test_compiled_equals_numpy_random(name, data):
    x, t, dof, cuts = data
    make = FACTORIES[name]
    c_res, c_state = run_split(make, "c", x, t, dof, cuts)
    py_res, py_state = run_split(make, "numpy", x, t, dof, cuts)
    for f in c_res:
        if c_res[f].dtype.kind == "f":
            np.testing.assert_allclose(c_res[f], py_res[f], rtol=1e-12, atol=1e-12, err_msg=f)
        else:
            np.testing.assert_array_equal(c_res[f], py_res[f], err_msg=f)
    for k in c_state:
        np.testing.assert_allclose(c_state[k], py_state[k], rtol=1e-12, atol=1e-12, err_msg=k)


@needs_c
@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_compiled_equals_numpy_long_multichannel(name):
    # Long enough for many ring wraps and several time blocks of the compiled kernel.
    rng = np.random.default_rng(11)
    n, c = 3000, 70
    x = rng.normal(size=(n, c)) * rng.uniform(0.2, 3.0, size=c) + rng.normal(size=c)
    x[rng.random(x.shape) < 0.03] = np.nan
    t = np.cumsum(rng.uniform(0.0, 1.0, size=n))
    dof = rng.integers(0, 4, size=(n, c))
    dc, dp = FACTORIES[name]("c"), FACTORIES[name]("numpy")
    for a, b in [(0, 1000), (1000, 1001), (1001, n)]:
        assert_same(feed(dc, x[a:b], t[a:b], dof[a:b]), feed(dp, x[a:b], t[a:b], dof[a:b]), name)


# --- EWMA z-score ---------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
def test_ewma_matches_hand_recurrence(backend):
    x = np.array([1.0, 2.0, np.nan, 0.0, 5.0])
    r = EwmaZScore(alpha=0.5, threshold=1.0, warmup=2, backend=backend).update(x)
    # sample 0 sets the mean; sample 1: var 0 -> z = +inf; then m=1.5, v=0.5*(0+0.5*1)=0.25
    assert np.isnan(r.zscore[0]) and r.zscore[1] == np.inf
    assert np.isnan(r.zscore[2]) and not r.alarm[2]                 # missing: no z, no alarm
    assert r.zscore[3] == pytest.approx((0.0 - 1.5) / 0.5)           # -3, alarms (k=2 >= warmup)
    m, v = 1.5 + 0.5 * -1.5, 0.5 * (0.25 + 0.5 * 2.25)
    assert r.zscore[4] == pytest.approx((5.0 - m) / np.sqrt(v))
    np.testing.assert_array_equal(r.alarm, [False, False, False, True, True])


@pytest.mark.parametrize("backend", BACKENDS)
def test_ewma_flags_spikes_not_noise(backend):
    rng = np.random.default_rng(0)
    x = 20.0 + 0.5 * rng.normal(size=(5000, 3))
    spikes = [1000, 2500, 4000]
    x[spikes, 1] += 6.0                                  # 12 sigma
    r = EwmaZScore(alpha=0.01, threshold=6.0, backend=backend).update(x)
    np.testing.assert_array_equal(np.flatnonzero(r.alarm[:, 1]), spikes)
    assert not r.alarm[:, [0, 2]].any()
    assert not r.alarm[:300].any()                       # warm-up: ceil(3 / alpha) samples


@pytest.mark.parametrize("backend", BACKENDS)
def test_ewma_min_std_floors_sigma_of_flat_signal(backend):
    x = np.r_[np.full(50, 3.0), 3.2, 3.0]
    no_floor = EwmaZScore(alpha=0.1, threshold=3.0, warmup=10, backend=backend).update(x)
    floor = EwmaZScore(alpha=0.1, threshold=3.0, warmup=10, min_std=0.1,
                       backend=backend).update(x)
    assert no_floor.alarm[50] and no_floor.zscore[50] == np.inf
    assert floor.zscore[50] == pytest.approx(2.0) and not floor.alarm.any()


# --- CUSUM ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
def test_cusum_detects_one_sigma_step_within_expected_delay(backend):
    # k = 0.5, h = 5: the average run length after a one-sigma step is 10.4 samples (Siegmund's
    # approximation, as tabulated by Montgomery); the mean over 400 independent channels has a
    # standard error of about 0.3 samples.
    rng = np.random.default_rng(42)
    n, c, step = 700, 400, 500
    x = rng.normal(size=(n, c))
    x[step:] += 1.0
    det = Cusum(k=0.5, h=5.0, mean=0.0, std=1.0, reset_on_alarm=True, backend=backend)
    r = det.update(x)
    # reset_on_alarm makes the process before the step a renewal: start counting at the step.
    det2 = Cusum(k=0.5, h=5.0, mean=0.0, std=1.0, backend=backend)
    r2 = det2.update(x[step:])
    delay = np.argmax(r2.alarm, axis=0)
    assert r2.alarm.any(axis=0).all()
    # run length counts the alarming sample: index + 1
    assert 9.4 <= delay.mean() + 1 <= 11.4
    assert (r2.upper[delay, np.arange(c)] > 5.0).all()        # it is the upper sum that fires
    # before the step: false alarms at the in-control rate (~1/470 per sample)
    rate = r.alarm[:step].mean()
    assert 1 / 800 < rate < 1 / 300
    # after the step alarms are frequent
    assert r.alarm[step + 30:].mean() > 0.05


@pytest.mark.parametrize("backend", BACKENDS)
def test_cusum_lower_side_and_held_alarm(backend):
    x = np.r_[np.zeros(20), np.full(30, -2.0), np.zeros(100)]
    r = Cusum(k=0.5, h=4.0, mean=0.0, std=1.0, backend=backend).update(x)
    # lower sum grows by 1.5 per sample: exceeds 4 at the third sample of the step
    assert np.flatnonzero(r.alarm)[0] == 22
    assert (r.upper == 0).all()
    assert r.alarm[22:50].all()                               # held while the shift lasts
    # after the shift it decays by k = 0.5 per sample from 45: 82 samples to fall below 4
    assert r.alarm[50:].sum() == np.ceil((45.0 - 4.0) / 0.5) - 1
    np.testing.assert_array_equal(r.alarm, (r.upper > 4.0) | (r.lower > 4.0))


@pytest.mark.parametrize("backend", BACKENDS)
def test_cusum_calibrates_from_warmup(backend):
    rng = np.random.default_rng(7)
    x = 50.0 + 3.0 * rng.normal(size=(2000, 2))
    x[3, 0] = np.nan                                  # a missing sample does not count
    det = Cusum(warmup=1000, backend=backend)
    r = det.update(x)
    assert np.isnan(r.upper[:1000, 1]).all() and not r.alarm[:1000].any()
    assert np.isnan(r.upper[:1001, 0]).all() and np.isfinite(r.upper[1001:, 0]).all()
    mean, std = det.reference
    np.testing.assert_allclose(mean, [np.mean(np.delete(x[:1001, 0], 3)), np.mean(x[:1000, 1])])
    np.testing.assert_allclose(std, [np.std(np.delete(x[:1001, 0], 3), ddof=1),
                                     np.std(x[:1000, 1], ddof=1)])


@pytest.mark.parametrize("backend", BACKENDS)
def test_cusum_missing_sample_carries_alarm(backend):
    x = np.array([0.0, 3.0, 3.0, np.nan, np.inf, 0.0])
    r = Cusum(k=0.5, h=4.0, mean=0.0, std=1.0, backend=backend).update(x)
    np.testing.assert_array_equal(r.alarm, [False, False, True, True, True, True])
    assert np.isnan(r.upper[3:5]).all() and r.upper[5] == pytest.approx(4.5)


# --- rolling statistics ---------------------------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("ddof", [0, 1])
def test_rolling_matches_numpy_on_large_offset(backend, ddof):
    rng = np.random.default_rng(3)
    n, w = 20000 if backend == "c" else 3000, 37
    x = 1e6 + rng.normal(size=n) + np.sin(np.arange(n) / 300.0)
    r = RollingStats(window=w, ddof=ddof, backend=backend).update(x)
    win = sliding_window_view(x, w)
    assert np.isnan(r.mean[: w - 1]).all()
    np.testing.assert_allclose(r.mean[w - 1:], win.mean(axis=1), rtol=1e-14)
    # the variance (~0.5) is 12 orders of magnitude below x**2: a naive sum-of-squares would
    # have no correct digits left, plain Welford add/remove about 8.
    np.testing.assert_allclose(r.var[w - 1:], win.var(axis=1, ddof=ddof), rtol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_rolling_with_missing_samples_matches_nanmean(backend):
    rng = np.random.default_rng(4)
    x = 5.0 + rng.normal(size=(1500, 3))
    x[rng.random(x.shape) < 0.3] = np.nan
    x[100:130, 1] = np.nan                                     # a gap longer than the window
    w = 20
    r = RollingStats(window=w, min_periods=3, backend=backend).update(x)
    pad = np.vstack([np.full((w - 1, 3), np.nan), x])
    win = sliding_window_view(pad, w, axis=0)                 # (n, c, w)
    count = np.isfinite(win).sum(axis=-1)
    with np.errstate(all="ignore"), pytest.warns(RuntimeWarning):
        mean = np.where(count >= 3, np.nanmean(win, axis=-1), np.nan)
        var = np.where(count >= 3, np.nanvar(win, axis=-1, ddof=1), np.nan)
    np.testing.assert_allclose(r.mean, mean, rtol=1e-12)
    np.testing.assert_allclose(r.var, var, rtol=1e-10)
    assert np.isnan(r.mean[120, 1]) and not r.alarm[120, 1]


@pytest.mark.parametrize("backend", BACKENDS)
def test_rolling_alarms_on_mean_and_std(backend):
    x = np.r_[np.zeros(20), np.full(20, 3.0), np.tile([-4.0, 4.0], 10)]
    r = RollingStats(window=5, low=-1.0, high=1.0, max_std=2.0, backend=backend).update(x)
    assert not r.alarm[:21].any()            # the window's mean reaches 1.2 > 1 at sample 21
    assert r.alarm[21:40].all()
    std = np.sqrt(r.var)
    np.testing.assert_array_equal(r.alarm[4:], (np.abs(r.mean[4:]) > 1.0) | (std[4:] > 2.0))
    assert r.alarm[-5:].all() and (np.abs(r.mean[-5:]) < 1.0).all()   # alarms on spread alone


# --- persistence ----------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
def test_persistence_fires_after_duration_and_clears(backend):
    t = np.arange(0.0, 60.0, 0.5)
    x = np.where((t >= 10) & (t < 30), 5.0, 1.0)      # above 4.0 for 20 s
    x[(t >= 40) & (t < 42)] = 5.0                    # a 2 s excursion: too short
    det = PersistenceThreshold(level=4.0, duration=5.0, backend=backend)
    r = det.update(x, t)
    np.testing.assert_array_equal(t[r.alarm], t[(t >= 15) & (t < 30)])
    np.testing.assert_allclose(r.elapsed[(t >= 10) & (t < 30)], t[(t >= 10) & (t < 30)] - 10.0)
    assert (r.elapsed[t < 10] == 0).all()
    assert r.elapsed[t == 41.5] == pytest.approx(1.5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_persistence_hysteresis_and_below(backend):
    t = np.arange(12.0)
    x = np.array([0, 5, 5, 5, 3, 3, 1, 5, 3, 5, 5, 5], dtype=float)
    r = PersistenceThreshold(level=4.0, duration=2.0, clear_level=2.0,
                             backend=backend).update(x, t)
    # alarm at t=3; holds at 3.0 (between the levels); clears at 1.0; the run that restarts at
    # t=7 is broken at t=8 (3.0 < level and not yet in alarm); a new run from t=9 alarms at 11.
    np.testing.assert_array_equal(r.alarm, [0, 0, 0, 1, 1, 1, 0, 0, 0, 0, 0, 1])
    below = PersistenceThreshold(level=-4.0, duration=2.0, clear_level=-2.0, direction="below",
                                 backend=backend).update(-x, t)
    np.testing.assert_array_equal(below.alarm, r.alarm)
    np.testing.assert_array_equal(below.elapsed, r.elapsed)


@pytest.mark.parametrize("backend", BACKENDS)
def test_persistence_datetime_times_across_batches(backend):
    start = np.datetime64("2024-03-01T12:00:00", "ns")
    t = start + np.arange(100) * np.timedelta64(100, "ms")
    x = np.where(np.arange(100) >= 30, 10.0, 0.0)
    det = PersistenceThreshold(level=1.0, duration=timedelta(seconds=2.0), backend=backend)
    r = [det.update(x[a:b], t[a:b]) for a, b in [(0, 35), (35, 48), (48, 100)]]
    alarm = np.concatenate([p.alarm for p in r])
    assert np.flatnonzero(alarm)[0] == 50                     # 30 + 2 s / 100 ms
    assert np.concatenate([p.elapsed for p in r])[99] == pytest.approx(6.9)
    with pytest.raises(ValueError, match="times"):
        det.update(x[:2], t[:2])                              # goes back in time
    with pytest.raises(TypeError, match="times"):
        det.update(x[:2], np.array([1e9, 2e9]))               # switches to float seconds


@pytest.mark.parametrize("backend", BACKENDS)
def test_persistence_missing_samples_and_sample_period(backend):
    x = np.array([5.0, 5.0, np.nan, np.nan, 5.0, 0.0, np.nan, 5.0])
    det = PersistenceThreshold(level=1.0, duration=3.0, sample_period=1.0, backend=backend)
    r = det.update(x[:3])
    r2 = det.update(x[3:])
    alarm = np.r_[r.alarm, r2.alarm]
    elapsed = np.r_[r.elapsed, r2.elapsed]
    # the run from t=0 survives the gap (missing samples do not end it) and alarms at t=4;
    # the alarm is carried over the missing sample at t=6 after clearing at t=5
    np.testing.assert_array_equal(alarm, [0, 0, 0, 0, 1, 0, 0, 0])
    np.testing.assert_array_equal(np.isnan(elapsed), np.isnan(x))
    assert elapsed[4] == 4.0 and elapsed[7] == 0.0


# --- NIS chi-square test --------------------------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
def test_nis_nominal_false_alarm_rate_when_consistent(backend):
    rng = np.random.default_rng(9)
    n, c = 1500 if backend == "c" else 500, 100
    dof = rng.integers(1, 4, size=(n, c))                     # 1..3 measured components
    nis = rng.chisquare(dof).astype(float)
    lost = rng.random((n, c)) < 0.2                           # missing measurements
    nis[lost] = np.nan
    det = NisChiSquare(window=10, significance=0.05, backend=backend)
    r = det.update(nis, dof=dof)
    rate = r.alarm[10:].mean()
    assert 0.04 < rate < 0.06
    hi = (r.statistic > det.bounds(r.dof)[1]).mean()
    assert 0.015 < hi < 0.035                                 # half of it in each tail
    # the window's dof is the sum over its valid samples only
    np.testing.assert_array_equal(r.dof[9:, 0], sliding_window_view(np.where(lost, 0, dof)[:, 0],
                                                                     10).sum(axis=1))


@pytest.mark.parametrize("backend", BACKENDS)
def test_nis_alarms_on_inflated_and_deflated_innovations(backend):
    rng = np.random.default_rng(10)
    nis = rng.chisquare(2, size=(3000, 4))
    nis[1000:2000] *= 3.0              # innovations sqrt(3) too large: a fault
    nis[2000:] *= 0.2                  # far too small: the filter's R or Q is too large
    r = NisChiSquare(window=25, significance=0.01, dof=2, backend=backend).update(nis)
    assert r.alarm[25:1000].mean() < 0.03
    assert r.alarm[1025:2000].mean() > 0.95
    assert r.alarm[2025:].mean() > 0.95
    g = NisChiSquare(window=25, significance=0.01, dof=2, alternative="greater",
                     backend=backend).update(nis)
    assert g.alarm[1025:2000].mean() > 0.95 and not g.alarm[2025:].any()


@pytest.mark.parametrize("backend", BACKENDS)
def test_nis_empty_window_and_dof_forms(backend):
    det = NisChiSquare(window=3, backend=backend)
    r = det.update(np.array([np.nan, 1.0, 2.0, 0.5]), dof=np.array([2, 0, 1, 1]))
    # sample 1 has dof 0: it adds nothing, its NIS is ignored
    assert np.isnan(r.statistic[:2]).all() and not r.alarm[:2].any()
    np.testing.assert_array_equal(r.dof, [0, 0, 1, 2])
    np.testing.assert_allclose(r.statistic[2:], [2.0, 2.5])
    # dof per sample shared by channels, and a scalar dof, give the same
    nis = np.abs(np.random.default_rng(1).normal(size=(50, 3)))
    d1 = NisChiSquare(window=5, backend=backend).update(nis, dof=np.ones(50, dtype=int))
    d2 = NisChiSquare(window=5, backend=backend).update(nis, dof=1)
    d3 = NisChiSquare(window=5, dof=1, backend=backend).update(nis, dof=np.ones((50, 3)))
    for a, b in [(d1, d2), (d2, d3)]:
        assert_same(a, b, "dof forms")


def test_nis_tables_grow_for_larger_dof():
    det = NisChiSquare(window=4, significance=0.1, dof=1)
    det.update(np.ones(10))
    r = det.update(np.full(4, 30.0), dof=6)                 # needs bounds up to dof 24
    from scipy.stats import chi2

    assert r.dof[-1] == 24
    assert r.alarm[-1] == (120.0 > chi2.isf(0.05, 24))


# --- state, copy, reset, xarray -------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_copy_is_independent_and_reset_starts_over(name):
    rng = np.random.default_rng(2)
    x = rng.normal(size=(40, 2))
    t = np.arange(40.0)
    dof = np.ones((40, 2), dtype=int)
    det = FACTORIES[name](BACKENDS[0])
    feed(det, x[:20], t[:20], dof[:20])
    twin = det.copy()
    a = feed(det, x[20:], t[20:], dof[20:])
    b = feed(twin, x[20:], t[20:], dof[20:])
    assert_same(a, b, name)
    before = det.state
    feed(twin, x[20:], t[20:] + 100, dof[20:])
    for k, v in det.state.items():
        np.testing.assert_array_equal(v, before[k])
    det.reset()
    fresh = FACTORIES[name](BACKENDS[0])
    assert_same(feed(det, x, t, dof), feed(fresh, x, t, dof), name)


def test_run_returns_dataset_with_time_and_attrs():
    xr = pytest.importorskip("xarray")
    time = np.datetime64("2024-01-01", "ns") + np.arange(200) * np.timedelta64(1, "s")
    values = np.where(np.arange(200)[:, None] >= 120, 9.0, 1.0) * np.ones((1, 2))
    da = xr.DataArray(values, dims=("time", "asset"),
                      coords={"time": time, "asset": ["pump1", "pump2"]}, name="pressure",
                      attrs={"units": "bar", "long_name": "discharge pressure"})
    ds = PersistenceThreshold(level=5.0, duration=10.0).run(da.transpose("asset", "time"))
    assert ds.alarm.dims == ("time", "asset") and ds.alarm.dtype == bool
    assert ds.time.dtype == np.dtype("datetime64[ns]")
    assert ds.elapsed.attrs["units"] == "s" and ds.pressure.attrs["units"] == "bar"
    assert ds.attrs["detector"] == "PersistenceThreshold" and ds.attrs["duration"] == 10.0
    assert str(ds.time[ds.alarm[:, 0]].values[0]) == "2024-01-01T00:02:10.000000000"
    rs = RollingStats(window=10).run(da)
    assert rs["var"].attrs["units"] == "(bar)2" and list(rs.asset.values) == ["pump1", "pump2"]
    with pytest.raises(ValueError, match="data"):
        RollingStats().run(da.rename(time="t"))
    with pytest.raises(TypeError, match="data"):
        RollingStats().run(da.to_dataset())


def test_outputs_follow_input_shape_and_empty_batches():
    det = EwmaZScore()
    r = det.update(np.zeros(0))
    assert r.zscore.shape == (0,) and det.n_channels == 1
    r = det.update([1, 2, 3])                          # ints and lists are accepted
    assert r.zscore.shape == (3,) and r.alarm.dtype == bool
    r = det.update(np.zeros((4, 1), dtype=np.float32))
    assert r.zscore.shape == (4, 1)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_out_buffers_are_reused_and_give_the_same_results(name, backend):
    rng = np.random.default_rng(8)
    x = rng.normal(size=(60, 2))
    t = np.arange(60.0)
    dof = rng.integers(0, 3, size=(60, 2))
    fresh, reuse = FACTORIES[name](backend), FACTORIES[name](backend)
    buf = None
    for a in range(0, 60, 20):
        expected = feed(fresh, x[a:a + 20], t[a:a + 20], dof[a:a + 20])
        kw = {} if buf is None else {"out": buf}
        if isinstance(reuse, NisChiSquare):
            got = reuse.update(np.abs(x[a:a + 20]), dof=dof[a:a + 20], **kw)
        elif isinstance(reuse, PersistenceThreshold):
            got = reuse.update(x[a:a + 20], t[a:a + 20], **kw)
        else:
            got = reuse.update(x[a:a + 20], **kw)
        if buf is not None:
            assert all(g is b for g, b in zip(got, buf))
        buf = got
        assert_same(got, expected, name)


def test_bad_out_raises_naming_it():
    det = Cusum(mean=0.0, std=1.0)
    r = det.update(np.zeros(5))
    with pytest.raises(ValueError, match="out.upper"):
        det.update(np.zeros(6), out=r)                        # wrong length
    with pytest.raises(ValueError, match="out.alarm"):
        det.update(np.zeros(5), out=(r.upper, r.lower, r.upper))
    with pytest.raises(ValueError, match="out.upper"):
        det.update(np.zeros(5), out=(np.zeros(10)[::2], r.lower, r.alarm))
    with pytest.raises(TypeError, match="out"):
        det.update(np.zeros(5), out=[r.upper, r.lower])
    det.update(np.zeros(5), out=r)                            # fine


def test_module_examples_run():
    res = doctest.testmod(detect, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert res.attempted >= 6 and res.failed == 0


# --- bad input ------------------------------------------------------------------------------------

@pytest.mark.parametrize("make, match, exc", [
    (lambda: EwmaZScore(alpha=0.0), "alpha", ValueError),
    (lambda: EwmaZScore(alpha=1.5), "alpha", ValueError),
    (lambda: EwmaZScore(alpha=float("nan")), "alpha", ValueError),
    (lambda: EwmaZScore(threshold=-1.0), "threshold", ValueError),
    (lambda: EwmaZScore(warmup=2.5), "warmup", TypeError),
    (lambda: EwmaZScore(min_std=float("inf")), "min_std", ValueError),
    (lambda: EwmaZScore(backend="cuda"), "backend", ValueError),
    (lambda: EwmaZScore(n_channels=0), "n_channels", ValueError),
    (lambda: Cusum(k=-0.5), "k", ValueError),
    (lambda: Cusum(h=0.0), "h", ValueError),
    (lambda: Cusum(std=0.0, mean=1.0), "std", ValueError),
    (lambda: Cusum(mean=[0.0, np.nan], std=1.0), "mean", ValueError),
    (lambda: Cusum(mean="zero"), "mean", TypeError),
    (lambda: Cusum(warmup=1), "warmup", ValueError),
    (lambda: Cusum(mean=[0.0, 1.0], std=[1.0, 1.0, 1.0]), "mean, std", ValueError),
    (lambda: Cusum(reset_on_alarm="yes"), "reset_on_alarm", TypeError),
    (lambda: RollingStats(window=0), "window", ValueError),
    (lambda: RollingStats(window=5, min_periods=6), "min_periods", ValueError),
    (lambda: RollingStats(low=2.0, high=1.0), "low", ValueError),
    (lambda: RollingStats(max_std=-1.0), "max_std", ValueError),
    (lambda: RollingStats(ddof=True), "ddof", TypeError),
    (lambda: PersistenceThreshold(level=np.nan, duration=1.0), "level", ValueError),
    (lambda: PersistenceThreshold(level=1.0, duration=-1.0), "duration", ValueError),
    (lambda: PersistenceThreshold(level=1.0, duration=np.timedelta64("NaT")), "duration",
     ValueError),
    (lambda: PersistenceThreshold(level=1.0, duration=1.0, clear_level=2.0), "clear_level",
     ValueError),
    (lambda: PersistenceThreshold(level=1.0, duration=1.0, direction="below", clear_level=0.0),
     "clear_level", ValueError),
    (lambda: PersistenceThreshold(level=1.0, duration=1.0, direction="up"), "direction",
     ValueError),
    (lambda: PersistenceThreshold(level=1.0, duration=1.0, sample_period=0.0), "sample_period",
     ValueError),
    (lambda: NisChiSquare(significance=1.0), "significance", ValueError),
    (lambda: NisChiSquare(alternative="both"), "alternative", ValueError),
    (lambda: NisChiSquare(dof=0), "dof", ValueError),
])
def test_bad_parameters_raise_naming_them(make, match, exc):
    with pytest.raises(exc, match=match):
        make()


@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_batches_raise_naming_the_argument(backend):
    det = RollingStats(backend=backend)
    with pytest.raises(TypeError, match="values"):
        det.update(np.array(["a", "b"]))
    with pytest.raises(TypeError, match="values"):
        det.update(np.array([True, False]))
    with pytest.raises(ValueError, match="values"):
        det.update(np.zeros((2, 2, 2)))
    with pytest.raises(ValueError, match="values"):
        det.update(np.zeros((3, 0)))
    det.update(np.zeros((3, 2)))
    with pytest.raises(ValueError, match="values.*2 channel"):
        det.update(np.zeros((3, 3)))
    with pytest.raises(ValueError, match="times"):
        det.update(np.zeros((3, 2)), times=np.arange(4.0))
    with pytest.raises(ValueError, match="values"):
        Cusum(mean=[0.0, 1.0], std=1.0, backend=backend).update(np.zeros((5, 3)))

    p = PersistenceThreshold(level=1.0, duration=1.0, backend=backend)
    with pytest.raises(ValueError, match="times: required"):
        p.update(np.zeros(3))
    with pytest.raises(ValueError, match="times"):
        p.update(np.zeros(3), np.array([0.0, 2.0, 1.0]))
    with pytest.raises(ValueError, match="times"):
        p.update(np.zeros(3), np.array([0.0, np.nan, 1.0]))
    with pytest.raises(ValueError, match="times"):
        p.update(np.zeros(2), np.array(["2024-01-01", "NaT"], dtype="datetime64[ns]"))
    with pytest.raises(TypeError, match="times"):
        p.update(np.zeros(2), np.array(["a", "b"]))

    n = NisChiSquare(backend=backend)
    with pytest.raises(ValueError, match="dof: required"):
        n.update(np.ones(3))
    with pytest.raises(ValueError, match="nis"):
        n.update(np.array([1.0, -0.5]), dof=1)
    with pytest.raises(ValueError, match="dof"):
        n.update(np.ones(3), dof=[1, 2.5, 1])
    with pytest.raises(ValueError, match="dof"):
        n.update(np.ones(3), dof=[1, -1, 1])
    with pytest.raises(ValueError, match="dof"):
        n.update(np.ones((3, 2)), dof=np.ones((3, 3), dtype=int))
    with pytest.raises(TypeError, match="dof"):
        n.update(np.ones(3), dof="two")
    # a rejected batch leaves the state untouched
    assert n.n_channels is None or not n.state["dof_sum"].any()
