"""NumPy reference of the wind-turbine drivetrain model (the compiled twin is ``_wind.pyx``).

Rows of ``x``, ``u``, ``p`` follow the declarations in :mod:`twinbench.models.wind`; every
function is vectorised over the last axis (scenarios). The statements follow the C code line for
line so that both round the same way.
"""

from __future__ import annotations

import numpy as np

__all__ = ["rhs", "output", "jacobian", "NX", "NU", "NP", "NY"]

NX, NU, NP, NY = 3, 2, 20, 7

RPM = np.pi / 30.0
DEG = 180.0 / np.pi
# Heier's fit of the power coefficient Cp(lambda, beta), beta in degrees.
C1, C2, C3, C4, C5, C6 = 0.5176, 116.0, 0.4, 5.0, 21.0, 0.0068
# Smoothing: wind speed and tip-speed ratio floors, width of the softplus that keeps pitch >= 0
# (degrees), width of the smooth min/max of the torque schedule (fraction of rated torque),
# speed below which generator torque fades out (rad/s), and |r| smoothing.
V_MIN = 0.5
LAMBDA_MIN = 0.1
EPS_PITCH = 0.1
EPS_TORQUE = 0.02
OMEGA_MIN = 0.05
EPS_R = 1e-2
VIB_FLOOR = 0.05


def _terms(x, u, p):
    """The intermediate quantities shared by rhs, output and jacobian (computed as in C)."""
    W = x[0]
    zp = x[1]
    wear = x[2]
    V = u[0]
    W_set = u[1] * RPM

    R = p[0]
    J = p[2]
    N = p[3]
    T_r = N * p[4]
    W_r = p[5] * RPM

    Ve = np.sqrt(V * V + V_MIN * V_MIN)
    lam = W * R / Ve
    le = np.sqrt(lam * lam + LAMBDA_MIN * LAMBDA_MIN)
    zs = zp / EPS_PITCH
    ez = np.exp(-np.abs(zs))
    beta = EPS_PITCH * (np.maximum(zs, 0.0) + np.log1p(ez))
    sig = np.where(zs >= 0.0, 1.0, ez) / (1.0 + ez)
    b3 = beta * beta * beta + 1.0
    den = le + 0.08 * beta
    inv = 1.0 / den - 0.035 / b3
    ex = np.exp(-C5 * inv)
    A = C2 * inv - C3 * beta - C4
    Cp = C1 * A * ex + C6 * le
    Cq = Cp / le
    K = 0.5 * p[1] * np.pi * R * R * R
    T_a = K * Ve * Ve * Cq

    kopt = K * R * R * p[8] / (p[7] * p[7] * p[7])
    T_opt = kopt * W * W
    T_line = T_r * (1.0 + (W - W_set) / (p[9] * W_r))
    eT = EPS_TORQUE * T_r
    d1 = T_opt - T_line
    D1 = np.sqrt(d1 * d1 + eT * eT)
    S = 0.5 * (T_opt + T_line + D1)
    d2 = S - T_r
    D2 = np.sqrt(d2 * d2 + eT * eT)
    M = 0.5 * (S + T_r - D2)
    so = np.sqrt(W * W + OMEGA_MIN * OMEGA_MIN)
    g = W / so
    T_g = M * g

    f0 = (T_a - T_g - p[14] * (1.0 + wear) * W) / J
    GK = 1.0 / (1.0 + beta / p[12])
    KD = DEG * N
    err = W - W_set
    f1 = GK * KD * (p[10] * f0 + p[11] * err) - p[13] * (zp - beta)

    r = W / W_r
    sr = np.sqrt(r * r + EPS_R * EPS_R)
    tg = T_g / T_r
    l0 = p[17]
    ell = np.sqrt(l0 * l0 + (1.0 - l0 * l0) * tg * tg)
    ell3 = ell * ell * ell
    grow = 1.0 + p[16] * wear
    f2 = p[15] * sr * ell3 * grow
    return dict(W=W, zp=zp, wear=wear, R=R, J=J, N=N, T_r=T_r, W_r=W_r, Ve=Ve, lam=lam, le=le,
                beta=beta, sig=sig, b3=b3, den=den, inv=inv, ex=ex, A=A, Cp=Cp, Cq=Cq, K=K,
                T_a=T_a, kopt=kopt, d1=d1, D1=D1, d2=d2, D2=D2, M=M, so=so, g=g, T_g=T_g,
                GK=GK, KD=KD, err=err, r=r, sr=sr, tg=tg, l0=l0, ell=ell, ell3=ell3, grow=grow,
                f0=f0, f1=f1, f2=f2)


def rhs(t, x, u, p):
    """dx/dt of the drivetrain, shape ``(3, n)``."""
    c = _terms(x, u, p)
    return np.stack([c["f0"], c["f1"], c["f2"]])


def output(t, x, u, p):
    """Generator speed, generator torque, electrical power, pitch, tip-speed ratio, power
    coefficient, vibration; shape ``(7, n)``."""
    c = _terms(x, u, p)
    vb = p[18] * c["r"] * c["ell"]
    vw = p[19] * c["wear"] * c["r"] * c["ell"]
    return np.stack([
        c["N"] * c["W"] / RPM,
        c["T_g"] / c["N"],
        p[6] * c["T_g"] * c["W"] * 1e-3,
        c["beta"],
        c["lam"],
        c["Cp"],
        np.sqrt(VIB_FLOOR * VIB_FLOOR + vb * vb + vw * vw),
    ])


def jacobian(t, x, u, p):
    """Analytic d(dx/dt)/dx, shape ``(3, 3, n)`` with ``J[r, c] = d f_r / d x_c``."""
    c = _terms(x, u, p)
    W, wear, sig = c["W"], c["wear"], c["sig"]
    den, ex, A, le, beta, b3 = c["den"], c["ex"], c["A"], c["le"], c["beta"], c["b3"]
    KVe2 = c["K"] * c["Ve"] * c["Ve"]

    # aerodynamic torque
    dinv_dle = -1.0 / (den * den)
    dCp_dle = C1 * ex * (C2 - C5 * A) * dinv_dle + C6
    dCq_dle = (dCp_dle - c["Cq"]) / le
    dTa_dW = KVe2 * dCq_dle * (c["lam"] / le) * (c["R"] / c["Ve"])
    dinv_db = -0.08 / (den * den) + 0.105 * beta * beta / (b3 * b3)
    dCp_db = C1 * ex * ((C2 * dinv_db - C3) - A * C5 * dinv_db)
    dTa_dz = KVe2 * (dCp_db / le) * sig

    # generator torque schedule
    T_r = c["T_r"]
    dS_dA = 0.5 * (1.0 + c["d1"] / c["D1"])
    dS_dB = 0.5 * (1.0 - c["d1"] / c["D1"])
    dM_dS = 0.5 * (1.0 - c["d2"] / c["D2"])
    so = c["so"]
    dg = OMEGA_MIN * OMEGA_MIN / (so * so * so)
    dTg_dW = (dM_dS * (dS_dA * 2.0 * c["kopt"] * W + dS_dB * T_r / (p[9] * c["W_r"])) * c["g"]
              + c["M"] * dg)

    J = c["J"]
    j00 = (dTa_dW - dTg_dW - p[14] * (1.0 + wear)) / J
    j01 = dTa_dz / J
    j02 = -p[14] * W / J

    GK, KD = c["GK"], c["KD"]
    dGK_dz = -GK * GK / p[12] * sig
    j10 = GK * KD * (p[10] * j00 + p[11])
    j11 = dGK_dz * KD * (p[10] * c["f0"] + p[11] * c["err"]) + GK * KD * p[10] * j01 \
        - p[13] * (1.0 - sig)
    j12 = GK * KD * p[10] * j02

    r, sr, ell, ell3, l0 = c["r"], c["sr"], c["ell"], c["ell3"], c["l0"]
    dsr = r / (sr * c["W_r"])
    dell = (1.0 - l0 * l0) * c["tg"] * (dTg_dW / T_r) / ell
    j20 = p[15] * c["grow"] * (dsr * ell3 + sr * 3.0 * ell * ell * dell)
    j22 = p[15] * sr * ell3 * p[16]

    z = np.zeros_like(W)
    return np.array([
        [j00, j01, j02],
        [j10, j11, j12],
        [j20, z, j22],
    ])
