"""twinbench: a Jupyter-native workbench for digital twins.

The public API at a glance; see the README for the architecture.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

# Importing the kernel checks that its compiled part is built and says what to do if not.
from twinbench import models
from twinbench.act import Condition, Limits, Rule, guarded_writer
from twinbench.io import connect, replay
from twinbench.kernel import (
    Cusum,
    EwmaZScore,
    ExtendedKalmanFilter,
    IntegrationError,
    KalmanFilter,
    Model,
    NisChiSquare,
    ParticleFilterRUL,
    PersistenceThreshold,
    RollingStats,
    Variable,
    cython_model,
    linear_model,
)
from twinbench.maintenance import MaintenancePolicy, kpis
from twinbench.scenario import calibrate, whatif
from twinbench.twin import SystemTwin, Twin, run


def __getattr__(name: str) -> object:
    # Imported on first use, so that `python -m twinbench.datasets` runs the module once.
    if name == "datasets":
        import importlib

        return importlib.import_module("twinbench.datasets")
    raise AttributeError(f"module 'twinbench' has no attribute {name!r}")


try:
    __version__ = version("twinbench")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = [
    # models and simulation
    "Model",
    "Variable",
    "IntegrationError",
    "cython_model",
    "linear_model",
    "models",
    # estimation
    "KalmanFilter",
    "ExtendedKalmanFilter",
    # detection
    "Cusum",
    "EwmaZScore",
    "NisChiSquare",
    "PersistenceThreshold",
    "RollingStats",
    # remaining useful life
    "ParticleFilterRUL",
    # live equipment and recordings
    "connect",
    "replay",
    "datasets",
    # the live twin
    "Twin",
    "SystemTwin",
    "run",
    "whatif",
    "calibrate",
    "Rule",
    "Condition",
    "Limits",
    "guarded_writer",
    "MaintenancePolicy",
    "kpis",
    # metadata
    "__version__",
]
