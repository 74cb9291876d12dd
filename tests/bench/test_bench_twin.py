"""The twin benchmark (`twinbench.bench.twin`): quick run, well-formed figures."""

from __future__ import annotations

import math

import pytest

from twinbench.bench import twin


def test_twin_bench_quick_figures():
    figs = {f["name"]: f for f in twin.run(quick=True)}
    assert set(figs) == {"twin_cpu_per_sample", "twin_vs_kernel_alone"}
    cpu = figs["twin_cpu_per_sample"]
    assert cpu["value"] > 0 and math.isfinite(cpu["ratio"]) and cpu["target"] == 1.0
    assert cpu["ratio"] == pytest.approx(0.5 / cpu["core_share_at_10k"])
    alone = figs["twin_vs_kernel_alone"]
    assert alone["ratio"] == pytest.approx(alone["value"] / cpu["value"])
