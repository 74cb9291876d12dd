"""Turn a missing compiled kernel into a message that says what to do (as scikit-learn does)."""

from __future__ import annotations

import os

_MESSAGE = """\
twinbench's compiled kernel ({module}) could not be imported:
    {error}

twinbench has to be built from source with a C compiler. From the repository root run

    make setup                      # creates .venv, installs gcc/python3-dev if missing, builds
or
    pip install -e .                # in your own environment (needs gcc and the Python headers)

If you changed a .pyx file, reinstall: editable installs do not rebuild compiled modules.
To run on the (much slower) NumPy reference implementations instead, set TWINBENCH_PURE_PYTHON=1.
"""


def pure_python() -> bool:
    """True when TWINBENCH_PURE_PYTHON asks for the NumPy reference implementations only."""
    return os.environ.get("TWINBENCH_PURE_PYTHON", "").strip().lower() not in ("", "0", "false", "no")


def check_build() -> None:
    if pure_python():
        return
    try:
        from twinbench.kernel import _model  # noqa: F401
    except ImportError as exc:
        raise ImportError(_MESSAGE.format(module="twinbench.kernel._model", error=exc)) from None
