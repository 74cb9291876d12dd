"""Particle-filter degradation tracking and RUL: accuracy on synthetic degradation, streaming
(batch-splitting invariance), compiled == NumPy, the user-supplied model path, bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from twinbench.kernel import _degrade_py
from twinbench.kernel.rul import ParticleFilterRUL, RULEstimate

_degrade = pytest.importorskip("twinbench.kernel._degrade")

KERNELS = {"c": _degrade, "numpy": _degrade_py}
HOUR = 3600.0

# Synthetic bearing: h(t) = 0.5 exp(b t) + N(0, 0.05), reaching the threshold 5.0 at 150 h.
A_TRUE = 0.5
B_TRUE = math.log(10.0) / (150 * HOUR)
SIGMA = 0.05
THRESHOLD = 5.0
T_FAIL = 150 * HOUR


def synthetic(hours: float = 100.0, step_h: float = 0.5, seed: int = 0):
    t = np.arange(0.0, hours, step_h) * HOUR
    y = A_TRUE * np.exp(B_TRUE * t) + np.random.default_rng(seed).normal(0.0, SIGMA, t.size)
    return t, y


def make_pf(**kw) -> ParticleFilterRUL:
    args = dict(threshold=THRESHOLD, measurement_std=SIGMA, n_particles=2000,
                prior={"b": (0.0, 2e-5)}, seed=1)
    args.update(kw)
    return ParticleFilterRUL(**args)


# -- kernel functions ---------------------------------------------------------------------------
@pytest.mark.parametrize("kernel", KERNELS.values(), ids=KERNELS.keys())
def test_systematic_resample_matches_filterpy(kernel, monkeypatch):
    from filterpy.monte_carlo import resampling as monte_carlo

    rng = np.random.default_rng(5)
    for n in (1, 2, 7, 100, 1000):
        w = rng.random(n) ** 4
        w[rng.random(n) < 0.3] = 0.0     # zero-weight particles must never be drawn
        if w.sum() == 0:
            w[0] = 1.0
        w /= w.sum()
        u = float(rng.random())
        monkeypatch.setattr(monte_carlo, "random", lambda: u)
        expected = monte_carlo.systematic_resample(w)
        idx = np.empty(n, dtype=np.intp)
        kernel.systematic_resample(w, u, idx)
        np.testing.assert_array_equal(idx, expected)
        assert np.all(w[idx] > 0)


@pytest.mark.parametrize("kernel", KERNELS.values(), ids=KERNELS.keys())
def test_normalise_log_sum_exp_and_ess(kernel):
    rng = np.random.default_rng(2)
    logw = rng.normal(0.0, 3.0, 500) - 800.0   # exp() of these underflows without the shift
    expected_w = np.exp(logw - logw.max())
    expected_w /= expected_w.sum()
    w = np.empty(500)
    ess = kernel.normalise(logw, w)
    np.testing.assert_allclose(w, expected_w, rtol=1e-12)
    np.testing.assert_allclose(np.exp(logw), expected_w, rtol=1e-12)
    assert ess == pytest.approx(1.0 / np.sum(expected_w ** 2), rel=1e-12)
    assert 1.0 <= ess < 500

    # NaN counts as zero weight; all -inf/NaN is a collapse: uniform weights, ESS 0.
    logw = np.array([0.0, np.nan, 0.0, -np.inf])
    assert kernel.normalise(logw, np.empty(4)) == pytest.approx(2.0)
    np.testing.assert_allclose(np.exp(logw), [0.5, 0.0, 0.5, 0.0])
    logw = np.array([np.nan, -np.inf, np.nan])
    w = np.empty(3)
    assert kernel.normalise(logw, w) == 0.0
    np.testing.assert_allclose(w, 1.0 / 3)


@pytest.mark.parametrize("kernel", KERNELS.values(), ids=KERNELS.keys())
def test_weighted_summary_against_replicated_sample(kernel):
    rng = np.random.default_rng(3)
    n = 60
    values = rng.normal(10.0, 3.0, n)
    values[:5] = np.inf                          # never reaching the threshold
    counts = rng.integers(0, 6, n)
    counts[0] = 2
    total = int(counts.sum())
    with np.errstate(divide="ignore"):
        logw = np.log(counts / total)
    replicated = np.repeat(values, counts)
    # Levels half-way between steps of the empirical CDF, so rounding cannot move them.
    q = (np.array([0.05, 0.3, 0.5, 0.8, 0.95]) * total).round() / total + 0.5 / total
    out = np.empty(q.size)
    mean, p = kernel.weighted_summary(values, logw, q, 9.0, 20.0, out)
    np.testing.assert_array_equal(out, np.quantile(replicated, q, method="inverted_cdf"))
    assert mean == pytest.approx(np.mean(np.minimum(replicated, 20.0)), rel=1e-12)
    assert p == pytest.approx(np.mean(replicated <= 9.0), rel=1e-12)
    # An infinite value with zero weight does not make an uncapped mean infinite.
    values2 = np.array([1.0, 2.0, np.inf])
    mean, _ = kernel.weighted_summary(values2, np.array([math.log(0.5)] * 2 + [-np.inf]),
                                      np.array([0.5]),
                                      1.5, np.inf, np.empty(1))
    assert mean == pytest.approx(1.5)


def test_weighted_summary_compiled_equals_numpy_with_ties_zeros_and_infinities():
    rng = np.random.default_rng(8)
    n = 3000
    values = rng.choice([0.0, -0.0, 1.0, 2.5, np.inf, -np.inf], n)
    values[::7] = rng.normal(size=values[::7].size)
    logw = rng.normal(size=n)
    logw -= np.log(np.exp(logw).sum())
    q = np.linspace(0.0, 1.0, 41)
    res = {}
    for name, kernel in KERNELS.items():
        out = np.empty(q.size)
        res[name] = out, kernel.weighted_summary(values, logw, q, 1.0, 10.0, out)
    np.testing.assert_array_equal(res["c"][0], res["numpy"][0])
    np.testing.assert_allclose(res["c"][1], res["numpy"][1], rtol=1e-12)


@pytest.mark.parametrize("kernel", KERNELS.values(), ids=KERNELS.keys())
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_exp_rul_is_the_threshold_crossing(kernel, sign):
    rng = np.random.default_rng(4)
    n = 200
    offset = 2.0
    threshold = offset + sign * 3.0
    theta = np.stack([rng.normal(0.0, 0.5, n), rng.normal(1e-3, 1e-3, n)])
    theta[0, :3] = math.log(3.0) + 0.1          # already past the threshold
    out = np.empty(n)
    kernel.exp_rul(theta, offset, sign, threshold, np.inf, out)
    z, b = theta
    fin = np.isfinite(out) & (out > 0)
    h = offset + sign * np.exp(z[fin] + b[fin] * out[fin])
    np.testing.assert_allclose(h, threshold, rtol=1e-12)
    np.testing.assert_array_equal(out[:3], 0.0)
    assert np.all(np.isinf(out[(b <= 0) & (z < math.log(3.0))]))
    capped = np.empty(n)
    kernel.exp_rul(theta, offset, sign, threshold, 500.0, capped)
    np.testing.assert_array_equal(capped, np.where(out > 500.0, np.inf, out))


def test_compiled_filter_equals_numpy_reference():
    rng = np.random.default_rng(6)
    n, m = 3000, 120
    t, y = synthetic(hours=60.0)
    t, y = t[:m], y[:m]
    theta0 = np.stack([np.log(0.5) + rng.normal(0, 0.5, n), rng.normal(0.0, 2e-5, n)])
    noise = rng.standard_normal((m, 2, n))
    uniforms = rng.random(m)
    std = np.array([0.01, 2e-7])
    results = {}
    for name, kernel in KERNELS.items():
        theta = theta0.copy()
        logw = np.full(n, -math.log(n))
        ess = np.empty(m)
        res = np.zeros(m, dtype=np.uint8)
        collapsed = kernel.exp_filter(theta, logw, t, y, noise, uniforms, 0.0, std, SIGMA, 0.0,
                                      1.0, 0.5, ess, res, np.empty(n), np.empty((2, n)),
                                      np.empty(n, dtype=np.intp))
        results[name] = theta, logw, ess, res, collapsed
    (tc, lc, ec, rc, cc), (tn, ln, en, rn, cn) = results["c"], results["numpy"]
    assert rc.sum() > 5                        # the comparison covers resampling
    np.testing.assert_array_equal(rc, rn)
    assert cc == cn == 0
    np.testing.assert_allclose(tc, tn, rtol=1e-12, atol=1e-18)
    np.testing.assert_allclose(lc, ln, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(ec, en, rtol=1e-12)


def test_compiled_assimilate_equals_numpy_reference():
    rng = np.random.default_rng(7)
    n = 1000
    theta0 = rng.normal(size=(3, n))
    pred = theta0[0] * 2.0 + 1.0
    pred[5] = np.nan                               # a model failure: zero weight, not a crash
    for frac, must_resample in ((1.0, True), (1e-6, False)):
        res = {}
        for name, kernel in KERNELS.items():
            theta = theta0.copy()
            logw = np.full(n, -math.log(n))
            ess, resampled = kernel.assimilate(theta, logw, pred, 1.5, 0.7, 0.37, frac,
                                               np.empty(n), np.empty((3, n)),
                                               np.empty(n, dtype=np.intp))
            res[name] = theta, logw, ess, resampled
        assert res["c"][3] is must_resample and res["numpy"][3] is must_resample
        np.testing.assert_allclose(res["c"][0], res["numpy"][0], rtol=1e-12)
        np.testing.assert_allclose(res["c"][1], res["numpy"][1], rtol=1e-12, atol=1e-12)
        assert res["c"][2] == pytest.approx(res["numpy"][2], rel=1e-12)
        if not must_resample:
            assert np.exp(res["c"][1][5]) == 0.0


# -- the public filter --------------------------------------------------------------------------
@pytest.mark.parametrize("backend", ["c", "numpy"])
def test_tracks_synthetic_exponential_degradation(backend):
    t, y = synthetic(hours=100.0)
    pf = make_pf(backend=backend)
    est = pf.update(t, y)
    assert isinstance(est, RULEstimate)
    true_rul = T_FAIL - t[-1]
    lo, med, hi = est.rul
    assert lo < true_rul < hi
    assert med == pytest.approx(true_rul, rel=0.15)
    # The growth rate is learned: its weighted mean is near the truth.
    parts = pf.particles
    b_mean = float((parts.b * parts.weight).sum())
    assert b_mean == pytest.approx(B_TRUE, rel=0.1)
    assert pf.n_measurements == t.size and pf.n_resampled > 0 and pf.n_collapsed == 0


def test_rul_decreases_as_time_passes():
    t, y = synthetic(hours=120.0)
    pf = make_pf()
    medians, trues = [], []
    for s in range(0, t.size, 40):               # every 20 h
        est = pf.update(t[s:s + 40], y[s:s + 40])
        medians.append(est.rul[1])
        trues.append(T_FAIL - t[min(s + 40, t.size) - 1])
    later = np.array(medians[2:])                # after 60 h of data the estimate has settled
    assert np.all(np.diff(later) < 0)
    np.testing.assert_allclose(later, trues[2:], rtol=0.25)
    hist = pf.history
    assert hist.rul.dims == ("time", "quantile") and hist.sizes["time"] == len(medians)
    np.testing.assert_array_equal(hist.rul.sel(quantile=0.5).values, medians)
    assert hist.rul.attrs["units"] == "s"


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(0, 80), max_size=6))
def test_batch_splitting_invariance(cuts):
    t, y = synthetic(hours=40.0)
    y[[7, 30]] = np.nan
    whole = make_pf(n_particles=300)
    whole.update(t, y)
    split = make_pf(n_particles=300)
    edges = [0, *sorted(cuts), t.size]
    for s, e in zip(edges[:-1], edges[1:]):
        split.update(t[s:e], y[s:e])
    np.testing.assert_array_equal(split.particles.b.values, whole.particles.b.values)
    np.testing.assert_array_equal(split.particles.log_a.values, whole.particles.log_a.values)
    np.testing.assert_array_equal(split.particles.weight.values, whole.particles.weight.values)
    np.testing.assert_array_equal(split.estimate().rul, whole.estimate().rul)
    assert split.n_skipped == whole.n_skipped == 2


def test_batch_splitting_invariance_across_noise_blocks(monkeypatch):
    # Long batches draw their process noise in blocks; the block size must not matter.
    from twinbench.kernel import rul as rul_module

    t, y = synthetic(hours=30.0)
    ref = make_pf(n_particles=200)
    ref.update(t, y)
    monkeypatch.setattr(rul_module, "_NOISE_BLOCK", 2 * 200 * 7)
    blocked = make_pf(n_particles=200)
    blocked.update(t, y)
    np.testing.assert_array_equal(blocked.particles.b.values, ref.particles.b.values)


def test_public_compiled_equals_numpy():
    t, y = synthetic(hours=80.0)
    kw = dict(n_particles=1500, horizon=400 * HOUR, process_std=(0.005, 1e-7))
    c = make_pf(backend="c", **kw)
    p = make_pf(backend="numpy", **kw)
    for s in range(0, t.size, 33):
        ec = c.update(t[s:s + 33], y[s:s + 33])
        ep = p.update(t[s:s + 33], y[s:s + 33])
        np.testing.assert_allclose(ec.rul, ep.rul, rtol=1e-12)
        assert ec.expected == pytest.approx(ep.expected, rel=1e-12)
        assert ec.failure_probability == pytest.approx(ep.failure_probability, rel=1e-12)
    np.testing.assert_allclose(c.particles.b, p.particles.b, rtol=1e-12)
    np.testing.assert_allclose(c.particles.log_a, p.particles.log_a, rtol=1e-12)
    assert c.n_resampled == p.n_resampled > 0


def test_datetime_times_match_float_seconds_and_give_failure_times():
    t, y = synthetic(hours=100.0)
    start = np.datetime64("2024-03-01T00:00:00", "ns")
    times = start + (t * 1e9).astype("timedelta64[ns]")
    pf_f = make_pf()
    pf_d = make_pf()
    ef = pf_f.update(t, y)
    ed = pf_d.update(times, y)
    np.testing.assert_allclose(ed.rul, ef.rul, rtol=1e-9)
    ds = pf_d.rul()
    assert ds.time.values == times[-1]
    assert ds.failure_time.dtype == np.dtype("datetime64[ns]")
    expected_ft = times[-1] + np.round(ds.rul.values * 1e9).astype("timedelta64[ns]")
    np.testing.assert_array_equal(ds.failure_time.values, expected_ft)
    true_failure = start + np.timedelta64(150, "h")
    assert ds.failure_time.values[0] < true_failure < ds.failure_time.values[-1]
    assert pf_d.history.time.dtype == np.dtype("datetime64[ns]")
    with pytest.raises(TypeError, match="times"):
        pf_d.update(t[-1:] + 1.0, y[-1:])


def test_nan_values_are_skipped():
    t, y = synthetic(hours=50.0)
    holes = y.copy()
    holes[[3, 10, 11, 50]] = np.nan
    holes[20] = np.inf
    a = make_pf(n_particles=400)
    a.update(t, holes)
    keep = np.isfinite(holes)
    b = make_pf(n_particles=400)
    b.update(t[keep], y[keep])
    np.testing.assert_array_equal(a.particles.b.values, b.particles.b.values)
    assert a.n_skipped == 5 and a.n_measurements == keep.sum()
    # An all-NaN batch changes nothing.
    before = a.estimate()
    a.update(t[-1:] + 60.0, [np.nan])
    np.testing.assert_array_equal(a.estimate().rul, before.rul)


def test_falling_indicator_with_offset_and_horizon():
    # Battery capacity: C(t) = 1.0 - 0.02 exp(b t), end of life at 0.8 (at 1000 cycles-hours).
    b_true = math.log(10.0) / (1000 * HOUR)
    t = np.arange(0.0, 700.0, 2.0) * HOUR
    y = 1.0 - 0.02 * np.exp(b_true * t) + np.random.default_rng(9).normal(0, 0.003, t.size)
    pf = ParticleFilterRUL(threshold=0.8, measurement_std=0.003, direction="falling", offset=1.0,
                           prior={"b": (0.0, 5e-6)}, horizon=2000 * HOUR,
                           failure_within=500 * HOUR, n_particles=2000, seed=3)
    probs = []
    for s in range(0, t.size, 50):
        est = pf.update(t[s:s + 50], y[s:s + 50])
        probs.append(est.failure_probability)
    true_rul = 1000 * HOUR - t[-1]
    assert est.rul[0] < true_rul < est.rul[2]
    assert est.rul[1] == pytest.approx(true_rul, rel=0.2)
    assert est.expected <= 2000 * HOUR
    assert probs[-1] > 0.6 and probs[-1] > max(probs[:3])   # 300 h left: failure within 500 h
                                                            # likely, and ever more certain
    ds = pf.rul(quantiles=[0.5], within=100 * HOUR)
    assert float(ds.failure_probability) < 0.1            # but not within 100 h
    assert ds.failure_probability.attrs["within_s"] == 100 * HOUR


@pytest.mark.parametrize("backend", ["c", "numpy"])
def test_user_supplied_model(backend):
    # The same exponential, written as a user model with fixed-origin parameters
    # theta = (ln a, b): h = exp(theta0 + theta1 * t).
    def hi(t, theta):
        return np.exp(theta[0] + theta[1] * t)

    def prior(rng, n):
        return np.stack([math.log(0.5) + rng.normal(0, 0.3, n), rng.normal(0, 2e-5, n)])

    t, y = synthetic(hours=100.0)
    pf = ParticleFilterRUL(hi, threshold=THRESHOLD, measurement_std=SIGMA, prior=prior,
                           param_names=["log_a", "b"], horizon=400 * HOUR, grid_points=800,
                           n_particles=2000, seed=2, backend=backend)
    est = None
    for s in range(0, t.size, 50):
        est = pf.update(t[s:s + 50], y[s:s + 50])
    true_rul = T_FAIL - t[-1]
    assert est.rul[0] < true_rul < est.rul[2]
    assert est.rul[1] == pytest.approx(true_rul, rel=0.15)
    # The grid search agrees with the analytic crossing of each particle to within a grid step.
    parts = pf.particles
    la, b = parts.log_a.values, parts.b.values
    with np.errstate(divide="ignore", invalid="ignore"):
        analytic = np.where(b > 0, (math.log(THRESHOLD) - la) / b - t[-1], np.inf)
    analytic = np.where(analytic > 400 * HOUR, np.inf, np.maximum(analytic, 0.0))
    q = np.empty(3)
    _degrade_py.weighted_summary(analytic, np.log(parts.weight.values), pf.quantiles, 0.0,
                                 pf.horizon, q)
    np.testing.assert_allclose(est.rul, q, atol=400 * HOUR / 800)
    assert set(pf.particles.data_vars) == {"log_a", "b", "weight"}


def test_user_supplied_model_compiled_equals_numpy_and_splits():
    def hi(t, theta):
        return theta[0] + theta[1] * t            # linear wear

    def prior(rng, n):
        return np.stack([rng.normal(1.0, 0.2, n), rng.normal(0.0, 1e-4, n)])

    t = np.arange(0.0, 200.0) * 60.0
    y = 1.0 + 5e-5 * t + np.random.default_rng(0).normal(0, 0.02, t.size)
    pfs = [ParticleFilterRUL(hi, threshold=2.0, measurement_std=0.02, prior=prior,
                             horizon=1e6, grid_points=200, n_particles=500, seed=4, backend=b)
           for b in ("c", "numpy", "c")]
    pfs[0].update(t, y)
    pfs[1].update(t, y)
    for s in range(0, t.size, 17):
        pfs[2].update(t[s:s + 17], y[s:s + 17])
    np.testing.assert_allclose(pfs[0].particles.theta1, pfs[1].particles.theta1, rtol=1e-12)
    np.testing.assert_array_equal(pfs[0].particles.theta1, pfs[2].particles.theta1)
    true_rul = (2.0 - 1.0) / 5e-5 - t[-1]
    est = pfs[0].estimate()
    assert est.rul[0] < true_rul < est.rul[2]


def test_rul_dataset_before_and_after_data():
    pf = make_pf(horizon=300 * HOUR)
    empty = pf.rul()
    assert np.all(np.isnan(empty.rul)) and "time" not in empty.coords
    assert pf.history.sizes["time"] == 0
    t, y = synthetic(hours=60.0)
    pf.update(t, y)
    ds = pf.rul(quantiles=[0.1, 0.9])
    assert list(ds["quantile"].values) == [0.1, 0.9]
    assert ds.rul.attrs["units"] == "s" and ds.expected.attrs["units"] == "s"
    assert ds.attrs["n_measurements"] == t.size and ds.attrs["model"] == "exponential"
    assert 0.0 <= float(ds.failure_probability) <= 1.0
    assert float(ds.time) == t[-1]


def test_prior_log_a_given_or_callable():
    t, y = synthetic(hours=100.0)
    explicit = make_pf(prior={"log_a": (math.log(0.5), 0.5), "b": (0.0, 2e-5)})
    est = explicit.update(t, y)
    assert est.rul[0] < T_FAIL - t[-1] < est.rul[2]

    def prior(rng, n):
        return np.stack([rng.normal(math.log(0.5), 0.5, n), rng.normal(0.0, 2e-5, n)])

    est = make_pf(prior=prior).update(t, y)
    assert est.rul[0] < T_FAIL - t[-1] < est.rul[2]


def test_same_seed_same_result_different_seed_different():
    t, y = synthetic(hours=30.0)
    a, b, c = make_pf(seed=11), make_pf(seed=11), make_pf(seed=12)
    for pf in (a, b, c):
        pf.update(t, y)
    np.testing.assert_array_equal(a.particles.b, b.particles.b)
    assert not np.array_equal(a.particles.b, c.particles.b)


# -- bad input ------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, exc, match", [
    ({"threshold": -1.0}, ValueError, "threshold"),                      # below offset, rising
    ({"threshold": 5.0, "direction": "falling"}, ValueError, "threshold"),
    ({"threshold": np.nan}, ValueError, "threshold"),
    ({"measurement_std": 0.0}, ValueError, "measurement_std"),
    ({"measurement_std": np.nan}, ValueError, "measurement_std"),
    ({"prior": {"b": (np.nan, 1e-5)}}, ValueError, "prior"),
    ({"prior": {"b": (0.0, -1.0)}}, ValueError, "prior"),
    ({"prior": {"log_a": (0.0, 1.0)}}, KeyError, "prior"),
    ({"prior": {"b": (0.0, 1e-5), "c": (0, 1)}}, KeyError, "prior"),
    ({"prior": None}, TypeError, "prior"),
    ({"prior": lambda rng, n: np.zeros((3, n))}, ValueError, "prior"),
    ({"prior": lambda rng, n: np.full((2, n), np.nan)}, ValueError, "prior"),
    ({"model": "weibull"}, ValueError, "model"),
    ({"model": 3}, TypeError, "model"),
    ({"n_particles": 1}, ValueError, "n_particles"),
    ({"n_particles": 10.5}, TypeError, "n_particles"),
    ({"process_std": (0.1, 0.2, 0.3)}, ValueError, "process_std"),
    ({"process_std": -0.1}, ValueError, "process_std"),
    ({"horizon": 0.0}, ValueError, "horizon"),
    ({"quantiles": (0.5, 1.5)}, ValueError, "quantiles"),
    ({"resample_threshold": 0.0}, ValueError, "resample_threshold"),
    ({"direction": "up"}, ValueError, "direction"),
    ({"backend": "gpu"}, ValueError, "backend"),
    ({"seed": "abc"}, TypeError, "seed"),
    ({"param_names": ["x", "y"]}, ValueError, "param_names"),
])
def test_bad_construction_raises_naming_the_argument(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        make_pf(**kwargs)


def test_user_model_needs_callable_prior_and_horizon():
    def hi(t, theta):
        return theta[0] * t

    with pytest.raises(ValueError, match="horizon"):
        ParticleFilterRUL(hi, threshold=1.0, measurement_std=0.1,
                          prior=lambda rng, n: rng.normal(size=(1, n)))
    with pytest.raises(TypeError, match="prior"):
        ParticleFilterRUL(hi, threshold=1.0, measurement_std=0.1, horizon=10.0,
                          prior={"b": (0.0, 1.0)})
    with pytest.raises(ValueError, match="model"):
        ParticleFilterRUL(lambda t, th: th, threshold=1.0, measurement_std=0.1,
                          horizon=10.0, prior=lambda rng, n: rng.normal(size=(2, n)))


def test_bad_updates_raise_naming_the_argument():
    pf = make_pf()
    with pytest.raises(ValueError, match="times"):
        pf.update([0.0, 2.0, 1.0], [0.5, 0.5, 0.5])          # not monotonic
    with pytest.raises(ValueError, match="times"):
        pf.update([0.0, 1.0], [0.5, 0.5, 0.5])               # length mismatch
    with pytest.raises(ValueError, match="values"):
        pf.update(np.zeros((2, 2)), np.zeros((2, 2)))
    with pytest.raises(ValueError, match="times"):
        pf.update([0.0, np.nan], [0.5, 0.5])
    with pytest.raises(TypeError, match="times"):
        pf.update(["a", "b"], [0.5, 0.5])
    with pytest.raises(TypeError, match="values"):
        pf.update([0.0], [object()])
    assert pf.n_measurements == 0 and pf.time is None       # nothing half-applied
    pf.update([100.0, 200.0], [0.5, 0.51])
    with pytest.raises(ValueError, match="times"):
        pf.update([150.0], [0.52])                           # earlier than the previous batch
    with pytest.raises(ValueError, match="within"):
        pf.rul(within=np.nan)
    below = make_pf(offset=1.0)
    with pytest.raises(ValueError, match="values"):
        below.update(np.array(["2024-01-01"], "datetime64[ns]"), [0.5])   # below the offset
    below.update([0.0], [1.5])     # the rejected batch fixed neither the kind of time nor origin
    assert below.n_measurements == 1
    with pytest.raises(ValueError, match="times"):
        make_pf(origin=10.0).update([5.0], [0.5])            # before the origin


def test_benchmark_quick_run_reports_figures():
    from twinbench.bench import rul as bench

    figs = bench.run(quick=True)
    assert len(figs) == 5
    for f in figs:
        assert f["value"] > 0 and f["ratio"] > 0 and f["target"] is None
    assert figs[0]["particle_updates_per_s"] == pytest.approx(figs[0]["value"] * 5000)


def test_a_skipped_first_sample_does_not_shift_the_start():
    """A NaN before the first real measurement is skipped; it must not move the filter's clock."""
    from twinbench.kernel import ParticleFilterRUL

    def run(times, values):
        pf = ParticleFilterRUL("exponential", threshold=4.0, measurement_std=0.02,
                               prior={"b": (1e-5, 5e-6)}, n_particles=1000, seed=3)
        return pf.update(np.asarray(times, float), np.asarray(values, float)).rul

    hours = 3600.0
    t = 50 * hours + np.arange(20) * 600.0
    y = 1.0 * np.exp(1e-5 * (t - t[0]))
    clean = run(t, y)
    with_nan = run(np.r_[0.0, t], np.r_[np.nan, y])
    np.testing.assert_allclose(with_nan, clean, rtol=1e-9)
