"""The twin kernel: compiled ensemble integration, state estimation and detection.

This package imports nothing else of twinbench. Each compiled module ``_x.pyx`` has a NumPy
reference ``_x_py.py`` beside it; set ``TWINBENCH_PURE_PYTHON=1`` to run only the references.
"""

from __future__ import annotations

import os

# libgomp reads this when the first OpenMP module loads: without it, idle worker threads spin
# after every parallel loop and steal the CPU from the notebook.
os.environ.setdefault("OMP_WAIT_POLICY", "passive")

from twinbench.kernel._check_build import check_build as _check_build  # noqa: E402

_check_build()

from twinbench.kernel.detect import (  # noqa: E402
    Cusum,
    EwmaZScore,
    NisChiSquare,
    PersistenceThreshold,
    RollingStats,
)
from twinbench.kernel.estimate import (  # noqa: E402
    EstimateResult,
    ExtendedKalmanFilter,
    FilterDivergedError,
    KalmanFilter,
)
from twinbench.kernel.linear import linear_model  # noqa: E402
from twinbench.kernel.model import (  # noqa: E402
    DEFAULT_START,
    IntegrationError,
    Model,
    NonFiniteStateWarning,
    Variable,
    cython_model,
)
from twinbench.kernel.rul import ParticleFilterRUL, RULEstimate  # noqa: E402

__all__ = [
    # models and simulation
    "DEFAULT_START",
    "IntegrationError",
    "Model",
    "NonFiniteStateWarning",
    "Variable",
    "cython_model",
    "linear_model",
    # estimation
    "EstimateResult",
    "ExtendedKalmanFilter",
    "FilterDivergedError",
    "KalmanFilter",
    # streaming detectors
    "Cusum",
    "EwmaZScore",
    "NisChiSquare",
    "PersistenceThreshold",
    "RollingStats",
    # degradation and remaining useful life
    "ParticleFilterRUL",
    "RULEstimate",
]
