"""The dashboard benchmark (`twinbench.bench.ui`): a quick run with a short soak.

Not a timing test: the page's ready time, refresh rate and CPU depend on the machine (and on the
other browser tests sharing it); the figures' form and that each was measured are checked.
Skipped where Chromium or Playwright is missing (the benchmark then returns unmeasured
figures, which is checked too).
"""

from __future__ import annotations

import math

import pytest

from twinbench.bench import ui

KEYS = {"name", "value", "unit", "baseline", "ratio", "target"}
NAMES = {"ui_page_ready", "ui_refresh_rate", "ui_rows_per_second", "ui_kernel_cpu",
         "ui_kernel_memory_growth", "ui_page_memory_growth"}
MISSING = ui._missing()


def test_unmeasured_figures_say_why():
    figs = ui._unmeasured("chromium is not installed")
    assert {f["name"] for f in figs} == NAMES
    assert all(f["value"] is None and f["ratio"] is None and f["note"] for f in figs)


@pytest.mark.skipif(MISSING is not None, reason=MISSING or "")
def test_quick_run_measures_every_figure(monkeypatch):
    # 20 s of soak: a 5 s warm-up, then ten samples of each memory series
    monkeypatch.setenv("TWINBENCH_BENCH_SOAK", "20")
    figs = {f["name"]: f for f in ui.run(quick=True)}
    assert set(figs) == NAMES
    for f in figs.values():
        assert KEYS <= set(f), f
    # the plot may stay blank under heavy load (a known dashboard issue): then only the ready
    # and refresh figures are missing, and they say so
    plot_drawn = figs["ui_page_ready"]["value"] is not None
    for name, f in figs.items():
        if name in ("ui_page_ready", "ui_refresh_rate", "ui_rows_per_second") and not plot_drawn:
            continue
        assert f["value"] is not None and math.isfinite(f["value"]), f
    if plot_drawn:
        assert figs["ui_page_ready"]["ratio"] == pytest.approx(5.0 / figs["ui_page_ready"]["value"])
        assert figs["ui_refresh_rate"]["value"] > 0
    else:
        assert figs["ui_page_ready"]["note"]
    cpu = figs["ui_kernel_cpu"]
    assert cpu["value"] > 0 and cpu["kernels"] >= 1
    assert cpu["ratio"] == pytest.approx(0.5 / cpu["value"])
    for name in ("ui_kernel_memory_growth", "ui_page_memory_growth"):
        assert figs[name]["samples_after_warmup"] >= 4, figs[name]
        assert figs[name]["ratio"] > 0
