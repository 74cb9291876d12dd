"""The tutorial notebooks run top to bottom in a real Jupyter kernel against the simulated plant.

Each tutorial gets its own plant (in-process, on a free port), so that a fault one notebook
injects never reaches the next; the notebook finds it through ``TWINBENCH_OPCUA_URL`` /
``TWINBENCH_MQTT_URL`` as a user's would. The plant runs at speedup 120, twice what the notebooks
tell a user: their cells wait on conditions, not for fixed times, so they pass either way, and the
faults develop in half the wall time.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"

# notebook -> what its printed output must contain (the steps that show the tutorial worked)
TUTORIALS = {
    "01_quickstart": ["estimated wear", "twin running: False"],
    "02_models_and_simulation": ["lowest power with flow > 80 m3/h", "compiled vs NumPy"],
    "03_connecting_opcua": ["{'speed_setpoint': 2600.0}", "refused: {'speed_setpoint': 'BadOutOfRange",
                            "refused - speed_setpoint: 3400 is above the high limit 3000",
                            "written - read back"],
    "04_connecting_mqtt": ["command ids:", "refused: {'speed_setpoint'", "plant/pump1/telemetry"],
    "05_estimation_and_anomalies": ["alarm_vibration raised at", "estimated wear", "true wear"],
    "06_whatif_scenarios": ["scenario", "bep_efficiency:"],
    "07_predictive_maintenance": ["work order for pump1", "replace the drive-end bearing", "oee"],
}


def printed(nb: nbformat.NotebookNode) -> str:
    """Everything the code cells printed or displayed as text."""
    parts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []) if cell.cell_type == "code" else []:
            parts.append(out.get("text", ""))
            parts.append(out.get("data", {}).get("text/plain", ""))
    return "\n".join(parts)


@pytest.mark.parametrize("name", list(TUTORIALS))
def test_tutorial_runs_against_the_plant(name, start_plant, stop_plant, monkeypatch, tmp_path):
    from twinbench.plant._broker import find_mosquitto

    if name == "02_models_and_simulation" and shutil.which("gcc") is None:
        pytest.skip("%%cython needs a C compiler")
    mqtt = name == "04_connecting_mqtt"
    if mqtt and not find_mosquitto():
        pytest.skip("mosquitto is not installed")
    plant = start_plant(speedup=120.0, rate=10.0, seed=7, mqtt="auto" if mqtt else "none")
    try:
        monkeypatch.setenv("TWINBENCH_OPCUA_URL", plant.opcua_url)
        if plant.mqtt_url is not None:
            monkeypatch.setenv("TWINBENCH_MQTT_URL", plant.mqtt_url)
        nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
        client = NotebookClient(nb, timeout=120, kernel_name="python3",
                                resources={"metadata": {"path": str(tmp_path)}})
        client.execute()
    finally:
        stop_plant(plant)
    text = printed(nb)
    for expected in TUTORIALS[name]:
        assert expected in text, f"{name}: {expected!r} not in the output:\n{text[-3000:]}"


def test_every_tutorial_is_tested():
    found = {p.stem for p in NOTEBOOKS.glob("[0-9][0-9]_*.ipynb")}
    assert found == set(TUTORIALS)


def test_no_notebook_has_committed_outputs():
    """Notebooks are committed clean: no outputs, no execution counts."""
    dirty = []
    for path in sorted(NOTEBOOKS.glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        for i, cell in enumerate(nb.cells):
            if cell.cell_type == "code" and (cell.get("outputs") or cell.get("execution_count")):
                dirty.append(f"{path.name} cell {i}")
    assert not dirty, f"clear the outputs of: {', '.join(dirty)}"
