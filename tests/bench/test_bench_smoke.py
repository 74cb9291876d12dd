"""`twinbench bench --quick --json` runs end to end and prints well-formed figures."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

KEYS = {"name", "value", "unit", "baseline", "ratio", "target"}


@pytest.mark.parametrize("area", ["integrate", "estimate", "detect", "rul"])
def test_bench_quick_json(area):
    proc = subprocess.run([sys.executable, "-m", "twinbench", "bench", area, "--quick", "--json"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    figs = json.loads(proc.stdout)
    assert isinstance(figs, list) and figs
    for f in figs:
        assert KEYS <= set(f), f
        assert isinstance(f["name"], str) and f["unit"]
        assert f["ratio"] is None or f["ratio"] > 0


def test_bench_table_and_check_flag():
    proc = subprocess.run([sys.executable, "-m", "twinbench", "bench", "rul", "--quick"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "baseline" in proc.stdout.splitlines()[0]


def test_bench_unknown_area_is_named():
    proc = subprocess.run([sys.executable, "-m", "twinbench", "bench", "warp"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "warp" in proc.stderr
