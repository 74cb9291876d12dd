"""NumPy reference of the building thermal-zone model (the compiled twin is ``_thermal.pyx``).

Rows of ``x``, ``u``, ``p`` follow the declarations in :mod:`twinbench.models.thermal`; every
function is vectorised over the last axis (scenarios). The statements follow the C code line for
line so that both round the same way.
"""

from __future__ import annotations

import numpy as np

__all__ = ["rhs", "output", "jacobian", "NX", "NU", "NP", "NY"]

NX, NU, NP, NY = 2, 4, 7, 2


def rhs(t, x, u, p):
    """dx/dt of the zone, shape ``(2, n)``."""
    Ti = x[0]
    Te = x[1]
    To = u[0]
    Q_sol = p[5] * u[2]
    f0 = ((Te - Ti) / p[2] + (To - Ti) / p[4] + u[1] + u[3] + p[6] * Q_sol) / p[0]
    f1 = ((Ti - Te) / p[2] + (To - Te) / p[3] + (1.0 - p[6]) * Q_sol) / p[1]
    return np.stack([f0, f1])


def output(t, x, u, p):
    """Room temperature (degC) and heat loss to outdoors (W), shape ``(2, n)``."""
    Ti = x[0]
    Te = x[1]
    To = u[0]
    return np.stack([Ti - 273.15, (Ti - To) / p[4] + (Te - To) / p[3]])


def jacobian(t, x, u, p):
    """d(dx/dt)/dx (constant: the model is linear), shape ``(2, 2, n)``."""
    g_ie = 1.0 / p[2]
    return np.array([
        [-(g_ie + 1.0 / p[4]) / p[0], g_ie / p[0]],
        [g_ie / p[1], -(g_ie + 1.0 / p[3]) / p[1]],
    ])
