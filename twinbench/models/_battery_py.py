"""NumPy reference of the lithium-ion cell model (the compiled twin is ``_battery.pyx``).

Rows of ``x``, ``u``, ``p`` follow the declarations in :mod:`twinbench.models.battery`; every
function is vectorised over the last axis (scenarios). The statements follow the C code line for
line so that both round the same way.
"""

from __future__ import annotations

import numpy as np

__all__ = ["rhs", "output", "jacobian", "ocv", "NX", "NU", "NP", "NY"]

NX, NU, NP, NY = 5, 2, 15, 5

R_GAS = 8.314462618
# Open-circuit voltage fit of Chen & Rincon-Mora (2006) for a Li-ion polymer cell.
OCV_A, OCV_B, OCV_C0, OCV_C1, OCV_C2, OCV_C3 = -1.031, -35.0, 3.685, 0.2156, -0.1178, 0.3201
# |I| ~ sqrt(I^2 + EPS_I^2) in the throughput (cycle ageing) term.
EPS_I = 1e-3


def ocv(soc):
    """Open-circuit voltage (V) at the reference temperature as a function of state of charge."""
    return OCV_A * np.exp(OCV_B * soc) + OCV_C0 + soc * (OCV_C1 + soc * (OCV_C2 + soc * OCV_C3))


def _terms(x, u, p):
    z = x[0]
    v1 = x[1]
    v2 = x[2]
    T = x[3]
    q = x[4]
    I = u[0]  # noqa: E741
    Ta = u[1]

    dT_inv = 1.0 / T - 1.0 / p[7]
    arrR = np.exp(p[6] / R_GAS * dT_inv)
    grR = 1.0 + p[14] * q
    fR = arrR * grR
    R0 = p[1] * fR
    R1 = p[2] * fR
    R2 = p[4] * fR
    Qc = 3600.0 * p[0] * (1.0 - q)
    f0 = -I / Qc
    f1 = I / p[3] - v1 / (R1 * p[3])
    f2 = I / p[5] - v2 / (R2 * p[5])
    Qgen = I * (v1 + v2 + I * R0) - I * T * p[8]
    f3 = (Qgen - p[10] * (T - Ta)) / p[9]
    arrA = np.exp(-p[13] / R_GAS * dT_inv)
    sI = np.sqrt(I * I + EPS_I * EPS_I)
    f4 = arrA * (p[11] + p[12] * sI / (7200.0 * p[0]))
    return dict(z=z, v1=v1, v2=v2, T=T, q=q, I=I, grR=grR, R0=R0, R1=R1, R2=R2, Qgen=Qgen,
                f0=f0, f1=f1, f2=f2, f3=f3, f4=f4)


def rhs(t, x, u, p):
    """dx/dt of the cell, shape ``(5, n)``."""
    c = _terms(x, u, p)
    return np.stack([c["f0"], c["f1"], c["f2"], c["f3"], c["f4"]])


def output(t, x, u, p):
    """Terminal voltage, open-circuit voltage, capacity, heat generation, electrical power;
    shape ``(5, n)``."""
    c = _terms(x, u, p)
    U = ocv(c["z"]) + p[8] * (c["T"] - p[7])
    V = U - c["v1"] - c["v2"] - c["I"] * c["R0"]
    return np.stack([V, U, p[0] * (1.0 - c["q"]), c["Qgen"], V * c["I"]])


def jacobian(t, x, u, p):
    """Analytic d(dx/dt)/dx, shape ``(5, 5, n)`` with ``J[r, c] = d f_r / d x_c``."""
    c = _terms(x, u, p)
    T, q, I, v1, v2 = c["T"], c["q"], c["I"], c["v1"], c["v2"]
    R0, R1, R2, grR = c["R0"], c["R1"], c["R2"], c["grR"]
    eR = p[6] / (R_GAS * T * T)
    gq = p[14] / grR
    a1 = 1.0 / (R1 * p[3])
    a2 = 1.0 / (R2 * p[5])
    z0 = np.zeros_like(T)
    return np.array([
        [z0, z0, z0, z0, c["f0"] / (1.0 - q)],
        [z0, -a1, z0, -v1 * a1 * eR, v1 * a1 * gq],
        [z0, z0, -a2, -v2 * a2 * eR, v2 * a2 * gq],
        [z0, I / p[9], I / p[9], (-I * I * R0 * eR - I * p[8] - p[10]) / p[9],
         I * I * R0 * gq / p[9]],
        [z0, z0, z0, c["f4"] * (p[13] / (R_GAS * T * T)), z0],
    ])
