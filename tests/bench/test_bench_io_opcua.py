"""The OPC-UA benchmark (`twinbench.bench.io_opcua`): quick run against a plant process.

Not a timing test: CPU per value depends on the machine; the figures' form, their consistency
and the delivery counts (every offered value received, nothing dropped) are checked.
"""

from __future__ import annotations

import math

import pytest

from twinbench.bench import io_opcua

KEYS = {"name", "value", "unit", "baseline", "ratio", "target"}


@pytest.fixture(scope="module")
def figures() -> dict[str, dict]:
    return {f["name"]: f for f in io_opcua.run(quick=True)}


def test_figures_are_well_formed_and_consistent(figures):
    assert set(figures) == {"opcua_cpu_per_value_twinbench", "opcua_cpu_per_value_bare",
                            "opcua_received_rate", "opcua_no_growing_backlog"}
    for f in figures.values():
        assert KEYS <= set(f), f
        assert f["value"] is not None and math.isfinite(f["value"]), f
    tb, bare = figures["opcua_cpu_per_value_twinbench"], figures["opcua_cpu_per_value_bare"]
    assert tb["value"] > 0 and bare["value"] > 0
    assert tb["ratio"] == pytest.approx(bare["value"] / tb["value"])
    assert tb["target"] == pytest.approx(1 / 1.3)


def test_every_offered_value_arrives(figures):
    rate = figures["opcua_received_rate"]
    # 100 tags x 10 Hz for 3 s: a shared machine may lose a tick at the window's edges only
    assert rate["ratio"] > 0.8, rate
    backlog = figures["opcua_no_growing_backlog"]
    assert backlog["dropped"] == 0 and backlog["ratio"] == 1.0, backlog
