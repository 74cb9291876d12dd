"""Compiled pump model: C right-hand side, outputs and Jacobian exposed as PyCapsules.

Same equations, same statement order as the NumPy reference ``_pump_py.py``; see
:mod:`twinbench.models.pump` for the model and its sources. The functions read the *kernel
parameters* that ``_pump_py.derive`` computes once per run (rows in the order of
``_pump_py.KERNEL_PARAMS``, indexed by the enum below), so that what is left per evaluation
is multiplications, four square roots and one division: those two are what limit the loop, and
they are shared between the quantities that need them. Only sqrt and division appear, so gcc
vectorises the scenario loops.
"""

from cpython.pycapsule cimport PyCapsule_New
from libc.math cimport sqrt, M_PI

cdef double RPM = M_PI / 30.0
cdef double RAD_TO_RPM = 30.0 / M_PI
cdef double T_REF_COPPER = 293.15
cdef double EPS_R2 = 1e-2 * 1e-2
cdef double EPS_Q2 = 1e-4 * 1e-4
cdef double EPS_CV2 = 1e-5 * 1e-5
cdef double EPS_ON2 = 2e-2 * 2e-2
cdef double EPS_WEAR2 = 0.1 * 0.1
cdef double VIB_FLOOR2 = 0.05 * 0.05

# rows of the kernel parameters: _pump_py.KERNEL_PARAMS
cdef enum:
    K_INV_WN = 0
    K_K0 = 1
    K_K1 = 2
    K_CF = 3
    K_SLIP = 4
    K_INV_AT = 5
    K_AMAX = 6
    K_INV_TAU = 7
    K_J = 8
    K_INV_RV2 = 9
    K_H0 = 10
    K_H2 = 11
    K_HST = 12
    K_KPIPE = 13
    K_KV = 14
    K_KCV2 = 15
    K_INV_I = 16
    K_INV_TN = 17
    K_I02 = 18
    K_PCU = 19
    K_ALPHA = 20
    K_ROT = 21
    K_FE = 22
    K_GA = 23
    K_GB = 24
    K_INV_C = 25
    K_INV_QB = 26
    K_L0 = 27
    K_L1 = 28
    K_L2 = 29
    K_KW = 30
    K_KWB = 31
    K_RHOG = 32
    K_VB = 33
    K_VH = 34
    K_VW = 35
    K_IN = 36

NK = K_IN + 1


cdef void _rhs(double t, const double* x, const double* u, const double* p, double* out,
               Py_ssize_t n, Py_ssize_t ld, void* ctx) noexcept nogil:
    cdef Py_ssize_t i
    cdef double w, Q, Tw, wear, w_set, valve, Ta, r, r2, sr, Q2, sQ, sC, T_L, z, S, s_on, s2
    cdef double A, B, AB, rec, f0, k_sys, H, f1, T_e, tq, tq2, i02, i2, P_cu, G_th, f2, d, ell
    for i in range(n):
        w = x[0 * ld + i]
        Q = x[1 * ld + i]
        Tw = x[2 * ld + i]
        wear = x[3 * ld + i]
        w_set = u[0 * ld + i] * RPM
        valve = u[1 * ld + i]
        Ta = u[2 * ld + i]

        r = w * p[K_INV_WN * ld + i]
        r2 = r * r
        sr = sqrt(r2 + EPS_R2)
        Q2 = Q * Q
        sQ = sqrt(Q2 + EPS_Q2)
        sC = sqrt(Q2 + EPS_CV2)
        T_L = (p[K_K0 * ld + i] * w + p[K_K1 * ld + i] * Q + p[K_CF * ld + i] * (1.0 + wear)) * w
        z = (w_set - w - p[K_SLIP * ld + i] * T_L) * p[K_INV_AT * ld + i]
        S = sqrt(1.0 + z * z)
        s_on = w_set * p[K_INV_WN * ld + i]
        s2 = s_on * s_on
        A = s2 + EPS_ON2
        B = valve * valve + p[K_INV_RV2 * ld + i]
        # 1/S, 1/A and 1/B from one division
        AB = A * B
        rec = 1.0 / (AB * S)
        f0 = p[K_AMAX * ld + i] * z * (rec * AB)
        k_sys = p[K_KPIPE * ld + i] + p[K_KV * ld + i] * (rec * A * S)
        H = p[K_H0 * ld + i] * r2 - p[K_H2 * ld + i] * Q * sQ
        f1 = (H - p[K_HST * ld + i] - k_sys * Q * sQ - p[K_KCV2 * ld + i] * Q * (sC - Q)) \
            * p[K_INV_I * ld + i]
        T_e = T_L + p[K_J * ld + i] * f0
        tq = T_e * p[K_INV_TN * ld + i]
        tq2 = tq * tq
        i02 = p[K_I02 * ld + i] * s2 * (rec * B * S)
        i2 = i02 + (1.0 - i02) * tq2
        P_cu = p[K_PCU * ld + i] * i2 * (1.0 + p[K_ALPHA * ld + i] * (Tw - T_REF_COPPER))
        G_th = p[K_GA * ld + i] + p[K_GB * ld + i] * sr
        f2 = (P_cu + p[K_ROT * ld + i] * tq2 + p[K_FE * ld + i] * (sr + r2) - G_th * (Tw - Ta)) \
            * p[K_INV_C * ld + i]
        d = Q * p[K_INV_QB * ld + i] - r
        ell = p[K_L0 * ld + i] + p[K_L1 * ld + i] * r2 + p[K_L2 * ld + i] * d * d

        out[0 * ld + i] = f0
        out[1 * ld + i] = f1
        out[2 * ld + i] = f2
        out[3 * ld + i] = sr * ell * ell * ell * (p[K_KW * ld + i] + p[K_KWB * ld + i] * wear)


cdef void _output(double t, const double* x, const double* u, const double* p, double* out,
                  Py_ssize_t n, Py_ssize_t ld, void* ctx) noexcept nogil:
    cdef Py_ssize_t i
    cdef double w, Q, Tw, wear, w_set, r, r2, sr, sQ, T_L, z, S, s_on, s2, A, rec, f0, T_e
    cdef double tq, tq2, i02, i2, P_cu, H, d, ell, wear_pos, vb, vh, vw
    for i in range(n):
        w = x[0 * ld + i]
        Q = x[1 * ld + i]
        Tw = x[2 * ld + i]
        wear = x[3 * ld + i]
        w_set = u[0 * ld + i] * RPM

        r = w * p[K_INV_WN * ld + i]
        r2 = r * r
        sr = sqrt(r2 + EPS_R2)
        sQ = sqrt(Q * Q + EPS_Q2)
        T_L = (p[K_K0 * ld + i] * w + p[K_K1 * ld + i] * Q + p[K_CF * ld + i] * (1.0 + wear)) * w
        z = (w_set - w - p[K_SLIP * ld + i] * T_L) * p[K_INV_AT * ld + i]
        S = sqrt(1.0 + z * z)
        s_on = w_set * p[K_INV_WN * ld + i]
        s2 = s_on * s_on
        A = s2 + EPS_ON2
        rec = 1.0 / (A * S)
        f0 = p[K_AMAX * ld + i] * z * (rec * A)
        T_e = T_L + p[K_J * ld + i] * f0
        tq = T_e * p[K_INV_TN * ld + i]
        tq2 = tq * tq
        i02 = p[K_I02 * ld + i] * s2 * (rec * S)
        i2 = i02 + (1.0 - i02) * tq2
        P_cu = p[K_PCU * ld + i] * i2 * (1.0 + p[K_ALPHA * ld + i] * (Tw - T_REF_COPPER))
        H = p[K_H0 * ld + i] * r2 - p[K_H2 * ld + i] * Q * sQ
        d = Q * p[K_INV_QB * ld + i] - r
        ell = p[K_L0 * ld + i] + p[K_L1 * ld + i] * r2 + p[K_L2 * ld + i] * d * d
        wear_pos = 0.5 * (wear + sqrt(wear * wear + EPS_WEAR2))
        vb = p[K_VB * ld + i] * r2
        vh = p[K_VH * ld + i] * d
        vw = p[K_VW * ld + i] * wear_pos * r * ell

        out[0 * ld + i] = w * RAD_TO_RPM
        out[1 * ld + i] = Q * 3600.0
        out[2 * ld + i] = H
        out[3 * ld + i] = p[K_RHOG * ld + i] * H
        out[4 * ld + i] = Tw - 273.15
        out[5 * ld + i] = sqrt(VIB_FLOOR2 + vb * vb + vh * vh + vw * vw)
        out[6 * ld + i] = p[K_IN * ld + i] * sqrt(i2)
        out[7 * ld + i] = (T_e * w + p[K_ROT * ld + i] * tq2 + P_cu
                           + p[K_FE * ld + i] * (sr + r2)) * 1e-3


cdef void _jacobian(double t, const double* x, const double* u, const double* p, double* out,
                    Py_ssize_t n, Py_ssize_t ld, void* ctx) noexcept nogil:
    cdef Py_ssize_t i
    cdef double w, Q, Tw, wear, w_set, valve, Ta, iwn, r, r2, sr, Q2, sQ, sC, T_L, z, S, s_on
    cdef double s2, A, B, P1, P2, P3, P4, R5, R4, R3, R2, R1, inv_sr, inv_sC, inv_sQ, inv_B
    cdef double inv_A, inv_S, f0, T_e, tq, i02, i2, theta, d, ell, ell2
    cdef double dTL_dw, dTL_dQ, dTL_dwear, gain, c_e, j00, j01, j03, k_sys, dQsQ, inv_C, k_cu
    cdef double dsr_dw, dPfe_dw, kgrow, dl_dw, dl_dQ
    for i in range(n):
        w = x[0 * ld + i]
        Q = x[1 * ld + i]
        Tw = x[2 * ld + i]
        wear = x[3 * ld + i]
        w_set = u[0 * ld + i] * RPM
        valve = u[1 * ld + i]
        Ta = u[2 * ld + i]

        iwn = p[K_INV_WN * ld + i]
        r = w * iwn
        r2 = r * r
        sr = sqrt(r2 + EPS_R2)
        Q2 = Q * Q
        sQ = sqrt(Q2 + EPS_Q2)
        sC = sqrt(Q2 + EPS_CV2)
        T_L = (p[K_K0 * ld + i] * w + p[K_K1 * ld + i] * Q + p[K_CF * ld + i] * (1.0 + wear)) * w
        z = (w_set - w - p[K_SLIP * ld + i] * T_L) * p[K_INV_AT * ld + i]
        S = sqrt(1.0 + z * z)
        s_on = w_set * iwn
        s2 = s_on * s_on
        A = s2 + EPS_ON2
        B = valve * valve + p[K_INV_RV2 * ld + i]
        # six reciprocals from one division: invert the running product, then peel factors off
        P1 = S * A
        P2 = P1 * B
        P3 = P2 * sQ
        P4 = P3 * sC
        R5 = 1.0 / (P4 * sr)
        inv_sr = R5 * P4
        R4 = R5 * sr
        inv_sC = R4 * P3
        R3 = R4 * sC
        inv_sQ = R3 * P2
        R2 = R3 * sQ
        inv_B = R2 * P1
        R1 = R2 * B
        inv_A = R1 * S
        inv_S = R1 * A

        f0 = p[K_AMAX * ld + i] * z * inv_S
        T_e = T_L + p[K_J * ld + i] * f0
        tq = T_e * p[K_INV_TN * ld + i]
        i02 = p[K_I02 * ld + i] * s2 * inv_A
        i2 = i02 + (1.0 - i02) * tq * tq
        theta = 1.0 + p[K_ALPHA * ld + i] * (Tw - T_REF_COPPER)
        d = Q * p[K_INV_QB * ld + i] - r
        ell = p[K_L0 * ld + i] + p[K_L1 * ld + i] * r2 + p[K_L2 * ld + i] * d * d
        ell2 = ell * ell

        # torque balance and drive
        dTL_dw = 2.0 * p[K_K0 * ld + i] * w + p[K_K1 * ld + i] * Q + p[K_CF * ld + i] * (1.0 + wear)
        dTL_dQ = p[K_K1 * ld + i] * w
        dTL_dwear = p[K_CF * ld + i] * w
        gain = p[K_INV_TAU * ld + i] * inv_S * inv_S * inv_S
        c_e = p[K_SLIP * ld + i]
        j00 = -gain * (c_e * dTL_dw + 1.0)
        j01 = -gain * (c_e * dTL_dQ)
        j03 = -gain * (c_e * dTL_dwear)
        out[0 * ld + i] = j00
        out[1 * ld + i] = j01
        out[2 * ld + i] = 0.0
        out[3 * ld + i] = j03

        # pipe
        k_sys = p[K_KPIPE * ld + i] + p[K_KV * ld + i] * inv_B
        dQsQ = sQ + Q2 * inv_sQ
        out[4 * ld + i] = 2.0 * p[K_H0 * ld + i] * r * iwn * p[K_INV_I * ld + i]
        out[5 * ld + i] = -((p[K_H2 * ld + i] + k_sys) * dQsQ + p[K_KCV2 * ld + i]
                            * (sC - 2.0 * Q + Q2 * inv_sC)) * p[K_INV_I * ld + i]
        out[6 * ld + i] = 0.0
        out[7 * ld + i] = 0.0

        # winding temperature
        inv_C = p[K_INV_C * ld + i]
        k_cu = 2.0 * tq * p[K_INV_TN * ld + i] * (p[K_PCU * ld + i] * theta * (1.0 - i02)
                                                  + p[K_ROT * ld + i]) * inv_C
        dsr_dw = r * iwn * inv_sr
        dPfe_dw = p[K_FE * ld + i] * (dsr_dw + 2.0 * r * iwn)
        out[8 * ld + i] = k_cu * (dTL_dw + p[K_J * ld + i] * j00) \
            + (dPfe_dw - p[K_GB * ld + i] * dsr_dw * (Tw - Ta)) * inv_C
        out[9 * ld + i] = k_cu * (dTL_dQ + p[K_J * ld + i] * j01)
        out[10 * ld + i] = (p[K_PCU * ld + i] * i2 * p[K_ALPHA * ld + i]
                            - (p[K_GA * ld + i] + p[K_GB * ld + i] * sr)) * inv_C
        out[11 * ld + i] = k_cu * (dTL_dwear + p[K_J * ld + i] * j03)

        # wear
        kgrow = p[K_KW * ld + i] + p[K_KWB * ld + i] * wear
        dl_dw = (2.0 * p[K_L1 * ld + i] * r - 2.0 * p[K_L2 * ld + i] * d) * iwn
        dl_dQ = 2.0 * p[K_L2 * ld + i] * d * p[K_INV_QB * ld + i]
        out[12 * ld + i] = kgrow * (dsr_dw * ell2 * ell + 3.0 * sr * ell2 * dl_dw)
        out[13 * ld + i] = kgrow * 3.0 * sr * ell2 * dl_dQ
        out[14 * ld + i] = 0.0
        out[15 * ld + i] = sr * ell2 * ell * p[K_KWB * ld + i]


def capsules():
    """The C form of the pump: ``{"rhs": ..., "output": ..., "jacobian": ...}`` PyCapsules."""
    return {
        "rhs": PyCapsule_New(<void*>_rhs, "twinbench.model_fn", NULL),
        "output": PyCapsule_New(<void*>_output, "twinbench.model_fn", NULL),
        "jacobian": PyCapsule_New(<void*>_jacobian, "twinbench.model_fn", NULL),
    }
