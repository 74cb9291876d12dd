"""NumPy reference of the pump model (the compiled twin is ``_pump.pyx``).

Rows of ``x``, ``u``, ``p`` follow the declarations in :mod:`twinbench.models.pump`; every
function is vectorised over the last axis (scenarios). The statements follow the C code line for
line so that both round the same way.
"""

from __future__ import annotations

import numpy as np

__all__ = ["rhs", "output", "jacobian", "NX", "NU", "NP", "NY"]

NX, NU, NP, NY = 4, 3, 35, 8

G = 9.80665
RPM = np.pi / 30.0
T_REF_COPPER = 293.15
# Smoothing widths: |r| ~ sqrt(r^2 + EPS_R^2) for the per-unit speed, Q|Q| ~ Q sqrt(Q^2 + EPS_Q^2).
EPS_R = 1e-2
EPS_Q = 1e-4
# Width of the check valve's smooth switch between open (Q > 0) and closed (Q < 0), m3/s; small so
# that the open valve's residual loss, k_cv * EPS_CV^2 / 4, stays negligible.
EPS_CV = 1e-5
# The drive is enabled (magnetising current flows) when the setpoint exceeds ~2 % of rated.
EPS_ON = 2e-2
VIB_FLOOR = 0.05


def _terms(x, u, p):
    """The intermediate quantities shared by rhs, output and jacobian (computed as in C)."""
    w = x[0]
    Q = x[1]
    Tw = x[2]
    wear = x[3]
    w_set = u[0] * RPM
    valve = u[1]
    Ta = u[2]

    w_n = p[1] * RPM
    T_n = p[0] / w_n
    w_slip_n = w_n * p[2] / (1.0 - p[2])
    s_on = w_set / w_n
    i02 = p[4] * p[4] * (s_on * s_on / (s_on * s_on + EPS_ON * EPS_ON))
    Q_b = p[15]
    H_b = p[16]
    P_bep = p[20] * G * Q_b * H_b / p[17]
    k0 = p[19] * P_bep / (w_n * w_n * w_n)
    k1 = (1.0 - p[19]) * P_bep / (w_n * w_n * Q_b)
    H0 = p[18] * H_b
    h2 = (H0 - H_b) / (Q_b * Q_b)
    inertance = 4.0 * p[22] / (G * np.pi * p[23] * p[23])
    c_f = p[12]
    l0 = p[29]
    k_off = p[30]

    r = w / w_n
    sr = np.sqrt(r * r + EPS_R * EPS_R)
    sQ = np.sqrt(Q * Q + EPS_Q * EPS_Q)
    sC = np.sqrt(Q * Q + EPS_CV * EPS_CV)
    H = H0 * r * r - h2 * Q * sQ
    T_L = k0 * w * w + k1 * w * Q + c_f * (1.0 + wear) * w
    a_max = w_n / p[13]
    e = w_set - w_slip_n * T_L / T_n - w
    z = e / (a_max * p[14])
    sz = 1.0 / np.sqrt(1.0 + z * z)
    f0 = a_max * z * sz
    v2 = valve * valve + 1.0 / (p[26] * p[26])
    k_sys = p[24] + p[25] / v2
    f1 = (H - p[21] - k_sys * Q * sQ - 0.5 * p[34] * Q * (sC - Q)) / inertance
    T_e = T_L + p[11] * f0
    tq = T_e / T_n
    i2 = i02 + (1.0 - i02) * tq * tq
    theta = 1.0 + p[7] * (Tw - T_REF_COPPER)
    P_cu = p[5] * i2 * theta
    P_rot = w_slip_n * T_e * tq
    P_fe = p[6] * (0.5 * sr + 0.5 * r * r)
    G_th = p[9] * (p[10] + (1.0 - p[10]) * sr)
    f2 = (P_cu + P_rot + P_fe - G_th * (Tw - Ta)) / p[8]
    q = Q / Q_b
    d = q - r
    ell = l0 + (1.0 - l0) * (r * r + k_off * d * d)
    ell3 = ell * ell * ell
    grow = 1.0 + p[28] * wear
    f3 = p[27] * sr * ell3 * grow
    return dict(w=w, Q=Q, Tw=Tw, wear=wear, Ta=Ta, w_n=w_n, T_n=T_n, w_slip_n=w_slip_n, i02=i02,
                Q_b=Q_b, H0=H0, h2=h2, k0=k0, k1=k1, inertance=inertance, c_f=c_f, l0=l0,
                k_off=k_off, r=r, sr=sr, sQ=sQ, sC=sC, H=H, T_L=T_L, a_max=a_max, z=z, sz=sz,
                k_sys=k_sys, T_e=T_e, tq=tq, i2=i2, theta=theta, P_cu=P_cu, P_rot=P_rot,
                P_fe=P_fe, G_th=G_th, d=d, ell=ell, ell3=ell3, grow=grow,
                f0=f0, f1=f1, f2=f2, f3=f3)


def rhs(t, x, u, p):
    """dx/dt of the pump, shape ``(4, n)``."""
    c = _terms(x, u, p)
    return np.stack([c["f0"], c["f1"], c["f2"], c["f3"]])


def output(t, x, u, p):
    """Sensor readings (speed, flow rate, total head, pressure, motor temperature, vibration,
    current, power), shape ``(8, n)``."""
    c = _terms(x, u, p)
    r = c["r"]
    vb = p[31] * r * r
    vh = p[32] * c["d"]
    vw = p[33] * c["wear"] * r * c["ell"]
    vib = np.sqrt(VIB_FLOOR * VIB_FLOOR + vb * vb + vh * vh + vw * vw)
    P_el = c["T_e"] * c["w"] + c["P_rot"] + c["P_cu"] + c["P_fe"]
    return np.stack([
        c["w"] / RPM,
        c["Q"] * 3600.0,
        c["H"],
        p[20] * G * c["H"] * 1e-5,
        c["Tw"] - 273.15,
        vib,
        p[3] * np.sqrt(c["i2"]),
        P_el * 1e-3,
    ])


def jacobian(t, x, u, p):
    """Analytic d(dx/dt)/dx, shape ``(4, 4, n)`` with ``J[r, c] = d f_r / d x_c``."""
    c = _terms(x, u, p)
    w, Q, wear = c["w"], c["Q"], c["wear"]
    w_n, T_n, w_slip_n = c["w_n"], c["T_n"], c["w_slip_n"]
    r, sr, sQ = c["r"], c["sr"], c["sQ"]

    # torque balance and drive
    dTL_dw = 2.0 * c["k0"] * w + c["k1"] * Q + c["c_f"] * (1.0 + wear)
    dTL_dQ = c["k1"] * w
    dTL_dwear = c["c_f"] * w
    sz = c["sz"]
    gain = sz * sz * sz / p[14]
    s_T = w_slip_n / T_n
    j00 = gain * (-s_T * dTL_dw - 1.0)
    j01 = gain * (-s_T * dTL_dQ)
    j03 = gain * (-s_T * dTL_dwear)

    # pipe
    dsr_dw = r / (sr * w_n)
    dQsQ = sQ + Q * Q / sQ
    j10 = 2.0 * c["H0"] * r / w_n / c["inertance"]
    sC = c["sC"]
    j11 = (-c["h2"] * dQsQ - c["k_sys"] * dQsQ - 0.5 * p[34] * (sC - 2.0 * Q + Q * Q / sC)) \
        / c["inertance"]

    # winding temperature
    J_in = p[11]
    dTe_dw = dTL_dw + J_in * j00
    dTe_dQ = dTL_dQ + J_in * j01
    dTe_dwear = dTL_dwear + J_in * j03
    k_i2 = 2.0 * (1.0 - c["i02"]) * c["tq"] / T_n
    k_cu = p[5] * c["theta"] * k_i2 + 2.0 * w_slip_n * c["tq"]
    dPfe_dw = p[6] * (0.5 * dsr_dw + r / w_n)
    dG_dw = p[9] * (1.0 - p[10]) * dsr_dw
    C_th = p[8]
    j20 = (k_cu * dTe_dw + dPfe_dw - dG_dw * (c["Tw"] - c["Ta"])) / C_th
    j21 = k_cu * dTe_dQ / C_th
    j22 = (p[5] * c["i2"] * p[7] - c["G_th"]) / C_th
    j23 = k_cu * dTe_dwear / C_th

    # wear
    l0, k_off, d, ell, ell3 = c["l0"], c["k_off"], c["d"], c["ell"], c["ell3"]
    dl_dw = (1.0 - l0) * (2.0 * r - 2.0 * k_off * d) / w_n
    dl_dQ = (1.0 - l0) * 2.0 * k_off * d / c["Q_b"]
    kw = p[27] * c["grow"]
    j30 = kw * (dsr_dw * ell3 + sr * 3.0 * ell * ell * dl_dw)
    j31 = kw * sr * 3.0 * ell * ell * dl_dQ
    j33 = p[27] * sr * ell3 * p[28]

    z = np.zeros_like(w)
    return np.array([
        [j00, j01, z, j03],
        [j10, j11, z, z],
        [j20, j21, j22, j23],
        [j30, j31, z, j33],
    ])
