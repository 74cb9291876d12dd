"""`twinbench.bench.twin_whatif.run(quick=True)`: well-formed figures, both kernels agreeing."""

from __future__ import annotations

from twinbench.bench import twin_whatif
from twinbench.bench._common import met

KEYS = {"name", "value", "unit", "baseline", "ratio", "target"}


def test_twin_whatif_quick_figures():
    figs = twin_whatif.run(quick=True)
    assert figs[0]["name"] == "whatif_100x10min"
    for f in figs:
        assert KEYS <= set(f), f
        assert f["value"] > 0 and f["ratio"] > 0 and f["unit"] == "s"
    main = figs[0]
    assert main["target"] == 10.0 and met(main) in (True, False)
    assert main["scenarios"] == 100 and main["steps"] == 600
    # the compiled and the reference kernels tell the same story
    assert main["max_vibration_difference_first_minute"] < 1e-9
    assert any("kernel alone" in f["name"] for f in figs)
