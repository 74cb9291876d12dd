"""NumPy reference of the pump model (the compiled twin is ``_pump.pyx``).

Rows of ``x`` and ``u`` follow the declarations in :mod:`twinbench.models.pump`. ``derive`` maps
the declared parameters ``(NP, n)`` to the *kernel parameters* ``(NK, n)`` (rows
:data:`KERNEL_PARAMS`): every quantity that depends on parameters only, computed once per run,
mostly as reciprocals so that the functions evaluated at every step multiply instead of divide.
``rhs``, ``output`` and ``jacobian`` take those kernel parameters as ``p`` and are vectorised
over the last axis (scenarios). Their statements follow the C code line for line so that both
round the same way.
"""

from __future__ import annotations

import numpy as np

__all__ = ["derive", "rhs", "output", "jacobian", "NX", "NU", "NP", "NY", "NK",
           "KERNEL_PARAMS"]

NX, NU, NP, NY = 4, 3, 35, 8

G = 9.80665
RPM = np.pi / 30.0
RAD_TO_RPM = 30.0 / np.pi
T_REF_COPPER = 293.15
# Smoothing widths (squared, as used): |r| ~ sqrt(r^2 + EPS_R^2) for the per-unit speed,
# Q|Q| ~ Q sqrt(Q^2 + EPS_Q^2).
EPS_R2 = 1e-2 * 1e-2
EPS_Q2 = 1e-4 * 1e-4
# Width of the check valve's smooth switch between open (Q > 0) and closed (Q < 0), m3/s; small so
# that the open valve's residual loss, k_cv * EPS_CV^2 / 4, stays negligible.
EPS_CV2 = 1e-5 * 1e-5
# The drive is enabled (magnetising current flows) when the setpoint exceeds ~2 % of rated.
EPS_ON2 = 2e-2 * 2e-2
# Width of the smooth positive part of the bearing damage that drives the defect vibration.
EPS_WEAR2 = 0.1 * 0.1
VIB_FLOOR2 = 0.05 * 0.05

#: Rows of the kernel parameters, in order (what ``derive`` returns). The right-hand side reads
#: the first 28; coefficients of the flow and temperature equations come divided by the
#: inertance and the heat capacity.
KERNEL_PARAMS = (
    "inv_rated_speed",          # 1/w_n, s/rad
    "torque_k0",                # pump torque k0 w^2, N m s2
    "torque_k1",                # pump torque k1 w Q, N s/m2
    "friction_coefficient",     # c_f, N m s/rad
    "inv_ramp_gain",            # 1/(a_max tau), s2/rad
    "slip_ramp_gain",           # (w_slip_n/T_n)/(a_max tau), s/(N m rad)
    "max_acceleration",         # a_max = w_n/t_ramp, rad/s2
    "inertia_acceleration",     # J a_max, N m
    "inv_rangeability2",        # 1/R_v^2
    "shutoff_head_i",           # H0/I, m3/s2
    "static_head_i",            # H_st/I, m3/s2
    "head_loss_i",              # (h2 + k_pipe)/I, 1/m3
    "valve_loss_i",             # k_v/I, 1/m3
    "check_valve_i",            # k_cv/(2 I), 1/m3
    "inv_rated_torque",         # 1/T_n, 1/(N m)
    "magnetizing_ratio2",       # i0^2
    "copper_loss_c",            # P_cu,20/C_th, K/s
    "copper_temperature_coefficient",  # alpha, 1/K
    "rotor_loss_c",             # w_slip_n T_n/C_th, K/s
    "iron_loss_c",              # P_fe,n/(2 C_th), K/s
    "cooling_static_c",         # G_n g0/C_th, 1/s
    "cooling_speed_c",          # G_n (1 - g0)/C_th, 1/s
    "inv_bep_flow",             # 1/Q_bep, s/m3
    "load_static",              # l0
    "load_speed",               # 1 - l0
    "load_off_design",          # (1 - l0) k_off
    "wear_rate",                # k_w, 1/s
    "wear_rate_growth",         # k_w b, 1/s
    "shutoff_head",             # H0, m
    "head_coefficient",         # h2, s2/m5
    "pressure_per_head",        # rho g 1e-5, bar/m
    "thermal_capacitance_kw",   # C_th 1e-3: K/s of the scaled losses to kW
    "vibration_base",           # mm/s
    "vibration_hydraulic",      # mm/s
    "vibration_bearing",        # mm/s
    "rated_current",            # A
)
NK = len(KERNEL_PARAMS)
(K_INV_WN, K_K0, K_K1, K_CF, K_INV_AT, K_CE_AT, K_AMAX, K_JA, K_INV_RV2, K_H0I, K_HSTI, K_HKI,
 K_KVI, K_KCVI, K_INV_TN, K_I02, K_CUC, K_ALPHA, K_ROTC, K_FEC, K_GAC, K_GBC, K_INV_QB, K_L0,
 K_L1, K_L2, K_KW, K_KWB, K_H0, K_H2, K_RHOG, K_CTHK, K_VB, K_VH, K_VW, K_IN) = range(NK)


def derive(p):
    """Kernel parameters ``(NK, n)`` from the declared parameters ``(NP, n)``."""
    p = np.asarray(p, dtype=float)
    w_n = p[1] * RPM
    T_n = p[0] / w_n
    w_slip_n = w_n * p[2] / (1.0 - p[2])
    Q_b = p[15]
    H_b = p[16]
    P_bep = p[20] * G * Q_b * H_b / p[17]
    H0 = p[18] * H_b
    h2 = (H0 - H_b) / (Q_b * Q_b)
    a_max = w_n / p[13]
    inv_at = 1.0 / (a_max * p[14])
    inv_I = (G * np.pi * p[23] * p[23]) / (4.0 * p[22])
    inv_C = 1.0 / p[8]
    pk = np.empty((NK,) + p.shape[1:])
    pk[K_INV_WN] = 1.0 / w_n
    pk[K_K0] = p[19] * P_bep / (w_n * w_n * w_n)
    pk[K_K1] = (1.0 - p[19]) * P_bep / (w_n * w_n * Q_b)
    pk[K_CF] = p[12]
    pk[K_INV_AT] = inv_at
    pk[K_CE_AT] = w_slip_n / T_n * inv_at
    pk[K_AMAX] = a_max
    pk[K_JA] = p[11] * a_max
    pk[K_INV_RV2] = 1.0 / (p[26] * p[26])
    pk[K_H0I] = H0 * inv_I
    pk[K_HSTI] = p[21] * inv_I
    pk[K_HKI] = (h2 + p[24]) * inv_I
    pk[K_KVI] = p[25] * inv_I
    pk[K_KCVI] = 0.5 * p[34] * inv_I
    pk[K_INV_TN] = 1.0 / T_n
    pk[K_I02] = p[4] * p[4]
    pk[K_CUC] = p[5] * inv_C
    pk[K_ALPHA] = p[7]
    pk[K_ROTC] = w_slip_n * T_n * inv_C
    pk[K_FEC] = 0.5 * p[6] * inv_C
    pk[K_GAC] = p[9] * p[10] * inv_C
    pk[K_GBC] = p[9] * (1.0 - p[10]) * inv_C
    pk[K_INV_QB] = 1.0 / Q_b
    pk[K_L0] = p[29]
    pk[K_L1] = 1.0 - p[29]
    pk[K_L2] = (1.0 - p[29]) * p[30]
    pk[K_KW] = p[27]
    pk[K_KWB] = p[27] * p[28]
    pk[K_H0] = H0
    pk[K_H2] = h2
    pk[K_RHOG] = p[20] * G * 1e-5
    pk[K_CTHK] = p[8] * 1e-3
    pk[K_VB] = p[31]
    pk[K_VH] = p[32]
    pk[K_VW] = p[33]
    pk[K_IN] = p[3]
    return pk


def _check(p):
    if p.shape[0] != NK:
        raise ValueError(f"p: the pump functions take the {NK} kernel parameters that "
                         f"derive() (Model.kernel_params) makes of the {NP} declared ones; got "
                         f"{p.shape[0]} rows")


def rhs(t, x, u, p):
    """dx/dt of the pump, shape ``(4, n)``; ``p`` are the kernel parameters."""
    _check(p)
    w = x[0]
    Q = x[1]
    Tw = x[2]
    wear = x[3]
    w_set = u[0] * RPM
    valve = u[1]
    Ta = u[2]

    r = w * p[K_INV_WN]
    r2 = r * r
    sr = np.sqrt(r2 + EPS_R2)
    Q2 = Q * Q
    sQ = np.sqrt(Q2 + EPS_Q2)
    sC = np.sqrt(Q2 + EPS_CV2)
    T_L = (p[K_K0] * w + p[K_K1] * Q + p[K_CF] * (1.0 + wear)) * w
    z = (w_set - w) * p[K_INV_AT] - p[K_CE_AT] * T_L
    S = np.sqrt(1.0 + z * z)
    s_on = w_set * p[K_INV_WN]
    s2 = s_on * s_on
    A = s2 + EPS_ON2
    B = valve * valve + p[K_INV_RV2]
    # 1/A and 1/B from one division (inputs only: off the critical path)
    AB = A * B
    rec = 1.0 / AB
    sat = z / S
    T_e = T_L + p[K_JA] * sat
    tq = T_e * p[K_INV_TN]
    tq2 = tq * tq
    i02 = p[K_I02] * s2 * (rec * B)
    i2 = i02 + (1.0 - i02) * tq2
    f1 = (p[K_H0I] * r2 - p[K_HSTI] - (p[K_HKI] + p[K_KVI] * (rec * A)) * Q * sQ
          - p[K_KCVI] * Q * (sC - Q))
    f2 = (p[K_CUC] * i2 * (1.0 + p[K_ALPHA] * (Tw - T_REF_COPPER)) + p[K_ROTC] * tq2
          + p[K_FEC] * (sr + r2) - (p[K_GAC] + p[K_GBC] * sr) * (Tw - Ta))
    d = Q * p[K_INV_QB] - r
    ell = p[K_L0] + p[K_L1] * r2 + p[K_L2] * d * d
    f3 = sr * ell * ell * ell * (p[K_KW] + p[K_KWB] * wear)
    return np.stack([p[K_AMAX] * sat, f1, f2, f3])


def output(t, x, u, p):
    """Sensor readings (speed, flow rate, total head, pressure, motor temperature, vibration,
    current, power), shape ``(8, n)``; ``p`` are the kernel parameters."""
    _check(p)
    w = x[0]
    Q = x[1]
    Tw = x[2]
    wear = x[3]
    w_set = u[0] * RPM

    r = w * p[K_INV_WN]
    r2 = r * r
    sr = np.sqrt(r2 + EPS_R2)
    sQ = np.sqrt(Q * Q + EPS_Q2)
    T_L = (p[K_K0] * w + p[K_K1] * Q + p[K_CF] * (1.0 + wear)) * w
    z = (w_set - w) * p[K_INV_AT] - p[K_CE_AT] * T_L
    S = np.sqrt(1.0 + z * z)
    s_on = w_set * p[K_INV_WN]
    s2 = s_on * s_on
    A = s2 + EPS_ON2
    T_e = T_L + p[K_JA] * (z / S)
    tq = T_e * p[K_INV_TN]
    tq2 = tq * tq
    i02 = p[K_I02] * s2 / A
    i2 = i02 + (1.0 - i02) * tq2
    losses = (p[K_CUC] * i2 * (1.0 + p[K_ALPHA] * (Tw - T_REF_COPPER)) + p[K_ROTC] * tq2
              + p[K_FEC] * (sr + r2))
    H = p[K_H0] * r2 - p[K_H2] * Q * sQ
    d = Q * p[K_INV_QB] - r
    ell = p[K_L0] + p[K_L1] * r2 + p[K_L2] * d * d
    # smooth positive part of the damage (see the pump module: Outputs)
    wear_pos = 0.5 * (wear + np.sqrt(wear * wear + EPS_WEAR2))
    vb = p[K_VB] * r2
    vh = p[K_VH] * d
    vw = p[K_VW] * wear_pos * r * ell
    return np.stack([
        w * RAD_TO_RPM,
        Q * 3600.0,
        H,
        p[K_RHOG] * H,
        Tw - 273.15,
        np.sqrt(VIB_FLOOR2 + vb * vb + vh * vh + vw * vw),
        p[K_IN] * np.sqrt(i2),
        T_e * w * 1e-3 + losses * p[K_CTHK],
    ])


def jacobian(t, x, u, p):
    """Analytic d(dx/dt)/dx, shape ``(4, 4, n)`` with ``J[r, c] = d f_r / d x_c``; ``p`` are the
    kernel parameters."""
    _check(p)
    w = x[0]
    Q = x[1]
    Tw = x[2]
    wear = x[3]
    w_set = u[0] * RPM
    valve = u[1]
    Ta = u[2]

    iwn = p[K_INV_WN]
    r = w * iwn
    r2 = r * r
    sr = np.sqrt(r2 + EPS_R2)
    Q2 = Q * Q
    sQ = np.sqrt(Q2 + EPS_Q2)
    sC = np.sqrt(Q2 + EPS_CV2)
    T_L = (p[K_K0] * w + p[K_K1] * Q + p[K_CF] * (1.0 + wear)) * w
    z = (w_set - w) * p[K_INV_AT] - p[K_CE_AT] * T_L
    S = np.sqrt(1.0 + z * z)
    s_on = w_set * iwn
    s2 = s_on * s_on
    A = s2 + EPS_ON2
    B = valve * valve + p[K_INV_RV2]
    # separate divisions: they overlap, where reciprocals of one product would chain
    inv_sr = 1.0 / sr
    inv_sC = 1.0 / sC
    inv_sQ = 1.0 / sQ
    inv_B = 1.0 / B
    inv_A = 1.0 / A
    inv_S = 1.0 / S

    T_e = T_L + p[K_JA] * (z * inv_S)
    tq = T_e * p[K_INV_TN]
    i02 = p[K_I02] * s2 * inv_A
    i2 = i02 + (1.0 - i02) * tq * tq
    theta = 1.0 + p[K_ALPHA] * (Tw - T_REF_COPPER)
    d = Q * p[K_INV_QB] - r
    ell = p[K_L0] + p[K_L1] * r2 + p[K_L2] * d * d
    ell2 = ell * ell

    # torque balance and drive: d sat(z)/dx = (dz/dx) / S^3
    dTL_dw = 2.0 * p[K_K0] * w + p[K_K1] * Q + p[K_CF] * (1.0 + wear)
    dTL_dQ = p[K_K1] * w
    dTL_dwear = p[K_CF] * w
    s3 = inv_S * inv_S * inv_S
    ds_dw = -(p[K_INV_AT] + p[K_CE_AT] * dTL_dw) * s3
    ds_dQ = -p[K_CE_AT] * dTL_dQ * s3
    ds_dwear = -p[K_CE_AT] * dTL_dwear * s3
    a_max = p[K_AMAX]

    # pipe
    dQsQ = sQ + Q2 * inv_sQ
    j10 = 2.0 * p[K_H0I] * r * iwn
    j11 = -((p[K_HKI] + p[K_KVI] * inv_B) * dQsQ + p[K_KCVI] * (sC - 2.0 * Q + Q2 * inv_sC))

    # winding temperature
    k_cu = 2.0 * tq * p[K_INV_TN] * (p[K_CUC] * theta * (1.0 - i02) + p[K_ROTC])
    dsr_dw = r * iwn * inv_sr
    j20 = (k_cu * (dTL_dw + p[K_JA] * ds_dw) + p[K_FEC] * (dsr_dw + 2.0 * r * iwn)
           - p[K_GBC] * dsr_dw * (Tw - Ta))
    j21 = k_cu * (dTL_dQ + p[K_JA] * ds_dQ)
    j22 = p[K_CUC] * i2 * p[K_ALPHA] - (p[K_GAC] + p[K_GBC] * sr)
    j23 = k_cu * (dTL_dwear + p[K_JA] * ds_dwear)

    # wear
    kgrow = p[K_KW] + p[K_KWB] * wear
    dl_dw = (2.0 * p[K_L1] * r - 2.0 * p[K_L2] * d) * iwn
    dl_dQ = 2.0 * p[K_L2] * d * p[K_INV_QB]
    j30 = kgrow * (dsr_dw * ell2 * ell + 3.0 * sr * ell2 * dl_dw)
    j31 = kgrow * 3.0 * sr * ell2 * dl_dQ
    j33 = sr * ell2 * ell * p[K_KWB]

    zero = np.zeros_like(j10)
    return np.array([
        [a_max * ds_dw, a_max * ds_dQ, zero, a_max * ds_dwear],
        [j10, j11, zero, zero],
        [j20, j21, j22, j23],
        [j30, j31, zero, j33],
    ])
