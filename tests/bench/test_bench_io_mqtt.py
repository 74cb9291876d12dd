"""The MQTT benchmark (`twinbench.bench.io_mqtt`): quick run, well-formed figures, zero loss.

Not a timing test: the rates and latencies depend on the machine; only their form, their
consistency (ratio = value / baseline) and the loss counts are checked.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from twinbench.bench import io_mqtt

KEYS = {"name", "value", "unit", "baseline", "ratio", "target"}
NAMES = {"mqtt_rate_twinbench", "mqtt_rate_bare", "mqtt_lost", "mqtt_vs_c_ceiling",
         "mqtt_rate_twinbench_qos1", "mqtt_rate_bare_qos1", "mqtt_lost_qos1",
         "mqtt_latency_p50", "mqtt_latency_p99", "mqtt_latency_p99_bare"}


@pytest.fixture(scope="module")
def figures() -> dict[str, dict]:
    if not Path(io_mqtt._MOSQUITTO).exists():
        pytest.skip("mosquitto not installed")
    if io_mqtt._PUB is None or io_mqtt._SUB is None:
        pytest.skip("mosquitto_pub/mosquitto_sub not installed (mosquitto-clients)")
    figs = io_mqtt.run(quick=True)
    by_name = {f["name"]: f for f in figs}
    assert len(by_name) == len(figs), [f["name"] for f in figs]
    return by_name


def test_figures_are_well_formed(figures):
    assert set(figures) == NAMES
    for f in figures.values():
        assert KEYS <= set(f), f
        assert f["unit"] and isinstance(f["baseline"], str) and f["baseline"]
        assert f["value"] is not None and math.isfinite(f["value"]), f
        assert f["ratio"] is None or (math.isfinite(f["ratio"]) and f["ratio"] >= 0), f


def test_rates_and_ratios_are_consistent(figures):
    for sfx in ("", "_qos1"):
        tb, bare = figures[f"mqtt_rate_twinbench{sfx}"], figures[f"mqtt_rate_bare{sfx}"]
        assert tb["unit"] == bare["unit"] == "msg/s"
        assert tb["value"] > 0 and bare["value"] > 0
        assert tb["baseline_value"] == bare["value"]
        assert tb["ratio"] == pytest.approx(tb["value"] / bare["value"])
        assert tb["target"] == 1.0 and bare["ratio"] is None
        assert tb["messages"] == bare["messages"] == (10_000 if sfx == "" else 5_000)
    ceiling = figures["mqtt_vs_c_ceiling"]
    assert ceiling["baseline_value"] > 0 and ceiling["target"] is None
    assert ceiling["ratio"] == pytest.approx(ceiling["value"] / ceiling["baseline_value"])


def test_zero_loss(figures):
    for sfx, qos in (("", 0), ("_qos1", 1)):
        lost = figures[f"mqtt_lost{sfx}"]
        assert lost["qos"] == qos
        assert lost["value"] == 0, lost
        assert lost["ratio"] == 1.0 and lost["target"] == 1.0
        assert lost["received"] == [lost["messages"]]
        assert lost["dropped_overflow"] == 0 and lost["rejected"] == 0
        assert figures[f"mqtt_rate_bare{sfx}"]["lost"] == 0


def test_latency_figures(figures):
    p50, p99 = figures["mqtt_latency_p50"], figures["mqtt_latency_p99"]
    bare = figures["mqtt_latency_p99_bare"]
    assert p50["unit"] == p99["unit"] == bare["unit"] == "ms"
    assert 0 < p50["value"] <= p99["value"]
    assert p99["target"] == 1.0
    assert p99["ratio"] == pytest.approx(io_mqtt.LATENCY_TARGET_MS / p99["value"])
    assert bare["value"] > 0 and p99["baseline_value"] == bare["value"]
    # Every message published in the quick second arrives, in both receivers.
    assert p99["expected"] == io_mqtt.LATENCY_RATE * 1
    assert p99["messages"] == p99["expected"]
    assert bare["messages"] == bare["expected"]
