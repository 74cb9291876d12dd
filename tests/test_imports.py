"""Importing twinbench stays light: heavy and UI libraries load only when used (panel's rule)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ["scipy", "xarray", "pandas", "ipywidgets", "bokeh", "dask", "distributed", "asyncua",
         "paho", "IPython", "matplotlib", "filterpy", "zarr", "jupyter_bokeh", "voila"]


def _loaded_after(statement: str) -> set[str]:
    code = (f"import sys, json\n{statement}\n"
            "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(json.loads(proc.stdout))


@pytest.mark.parametrize("statement", [
    "import twinbench",
    "import twinbench.kernel",
    "import twinbench.models",
    "import twinbench.cli",
    "import twinbench.io.batch, twinbench.io.tags, twinbench.io.decode, twinbench.io.mqtt",
])
def test_import_does_not_pull_heavy_modules(statement):
    loaded = _loaded_after(statement) & set(HEAVY)
    assert not loaded, f"{statement!r} imported {sorted(loaded)}"


def test_kernel_imports_nothing_else_of_twinbench():
    """Layers point one way: no module of twinbench.kernel (Python or Cython) imports or cimports
    another twinbench package."""
    import re
    from pathlib import Path

    import twinbench.kernel

    pattern = re.compile(r"^\s*(?:from|c?import)\s+(twinbench(?:\.\w+)*)", re.M)
    kernel = Path(twinbench.kernel.__file__).parent
    offenders = []
    for path in sorted(kernel.glob("*.py")) + sorted(kernel.glob("*.px[di]")):
        for name in pattern.findall(path.read_text()):
            if name != "twinbench.kernel" and not name.startswith("twinbench.kernel."):
                offenders.append(f"{path.name}: {name}")
    assert not offenders, offenders


def test_missing_compiled_kernel_says_what_to_do(tmp_path):
    # A copy of the package without its compiled modules, as after a source checkout without a build.
    import shutil

    import twinbench

    src = __import__("pathlib").Path(twinbench.__file__).parent
    shutil.copytree(src, tmp_path / "twinbench",
                    ignore=shutil.ignore_patterns("*.so", "*.pyd", "__pycache__"))
    proc = subprocess.run([sys.executable, "-c", "import twinbench"], capture_output=True,
                          text=True, cwd=tmp_path, env={"PYTHONPATH": str(tmp_path), "PATH": ""})
    assert proc.returncode != 0
    assert "compiled kernel" in proc.stderr
    assert "pip install" in proc.stderr and "TWINBENCH_PURE_PYTHON" in proc.stderr
