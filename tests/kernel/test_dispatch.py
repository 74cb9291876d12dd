"""Run-time dispatch: the AVX2 variant computes exactly what the baseline computes."""

from __future__ import annotations

import importlib

import numpy as np
import pytest

from twinbench.kernel import _dispatch
from twinbench.kernel._dispatch import compiled_module, cpu_has_avx2


def _variant_available(name: str) -> bool:
    try:
        importlib.import_module(name + _dispatch.VARIANT_SUFFIX)
    except ImportError:
        return False
    return cpu_has_avx2()


def test_baseline_can_be_forced(monkeypatch):
    monkeypatch.setenv("TWINBENCH_DISPATCH", "baseline")
    assert compiled_module("twinbench.kernel._integrate").__name__ == "twinbench.kernel._integrate"


def test_bad_dispatch_setting_is_named(monkeypatch):
    monkeypatch.setenv("TWINBENCH_DISPATCH", "sse9")
    with pytest.raises(ValueError, match="TWINBENCH_DISPATCH"):
        compiled_module("twinbench.kernel._integrate")


@pytest.mark.skipif(not _variant_available("twinbench.kernel._integrate"),
                    reason="no AVX2 CPU or no AVX2 variant built")
@pytest.mark.parametrize("factory", ["pump", "wind_turbine", "battery_cell", "thermal_zone"])
def test_avx2_variant_equals_baseline_bit_for_bit(monkeypatch, factory):
    import twinbench.models as tm

    results = {}
    for choice in ("baseline", "avx2"):
        monkeypatch.setenv("TWINBENCH_DISPATCH", choice)
        model = getattr(tm, factory)()
        rng = np.random.default_rng(3)
        x0 = {v.name: v.default * (1 + 0.01 * rng.standard_normal(50)) for v in model.states}
        results[choice] = model.simulate(steps=200, dt=0.01, x0=x0, threads=1)
    for name in results["baseline"].data_vars:
        np.testing.assert_array_equal(results["avx2"][name].values, results["baseline"][name].values)
