"""`twinbench demo --kernel` runs the twin loop end to end and finds the bearing fault."""

from __future__ import annotations

import subprocess
import sys


def test_demo_quick_finds_the_fault():
    proc = subprocess.run([sys.executable, "-m", "twinbench", "demo", "--kernel", "--quick"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    for step in ("1. observe", "2. estimate", "3. detect", "4. predict", "5. act"):
        assert step in out, out
    assert "CUSUM on vibration alarms" in out
    assert "remaining useful life" in out


def test_pump_fault_day_is_a_degrading_recording():
    from twinbench.demo import pump_fault_day

    truth, meas = pump_fault_day(hours=2.0)
    assert meas.sizes["time"] == 121
    assert float(truth.wear[-1]) > float(truth.wear[0])
    assert meas.vibration.attrs["noise_std"] > 0
    assert meas.vibration.attrs["units"] == truth.vibration.attrs["units"]
