"""Compiled pump model: C right-hand side, outputs and Jacobian exposed as PyCapsules.

Same equations, same statement order as the NumPy reference ``_pump_py.py``; see
:mod:`twinbench.models.pump` for the model and its sources. Only sqrt and division appear, so
gcc vectorises the scenario loops.
"""

from cpython.pycapsule cimport PyCapsule_New
from libc.math cimport sqrt, M_PI

cdef double G = 9.80665
cdef double RPM = M_PI / 30.0
cdef double T_REF_COPPER = 293.15
cdef double EPS_R = 1e-2
cdef double EPS_Q = 1e-4
cdef double EPS_CV = 1e-5
cdef double EPS_ON = 2e-2
cdef double VIB_FLOOR = 0.05


cdef void _rhs(double t, const double* x, const double* u, const double* p, double* out,
               Py_ssize_t n, Py_ssize_t ld, void* ctx) noexcept nogil:
    cdef Py_ssize_t i
    cdef double w, Q, Tw, wear, w_set, valve, Ta, w_n, T_n, w_slip_n, s_on, i02, Q_b, H_b
    cdef double P_bep, k0, k1
    cdef double H0, h2, inertance, c_f, l0, k_off, r, sr, sQ, sC, H, T_L, a_max, e, z, sz, f0, v2
    cdef double k_sys, f1, T_e, tq, i2, theta, P_cu, P_rot, P_fe, G_th, f2, q, d, ell, ell3, grow
    for i in range(n):
        w = x[0 * ld + i]
        Q = x[1 * ld + i]
        Tw = x[2 * ld + i]
        wear = x[3 * ld + i]
        w_set = u[0 * ld + i] * RPM
        valve = u[1 * ld + i]
        Ta = u[2 * ld + i]

        w_n = p[1 * ld + i] * RPM
        T_n = p[0 * ld + i] / w_n
        w_slip_n = w_n * p[2 * ld + i] / (1.0 - p[2 * ld + i])
        s_on = w_set / w_n
        i02 = p[4 * ld + i] * p[4 * ld + i] * (s_on * s_on / (s_on * s_on + EPS_ON * EPS_ON))
        Q_b = p[15 * ld + i]
        H_b = p[16 * ld + i]
        P_bep = p[20 * ld + i] * G * Q_b * H_b / p[17 * ld + i]
        k0 = p[19 * ld + i] * P_bep / (w_n * w_n * w_n)
        k1 = (1.0 - p[19 * ld + i]) * P_bep / (w_n * w_n * Q_b)
        H0 = p[18 * ld + i] * H_b
        h2 = (H0 - H_b) / (Q_b * Q_b)
        inertance = 4.0 * p[22 * ld + i] / (G * M_PI * p[23 * ld + i] * p[23 * ld + i])
        c_f = p[12 * ld + i]
        l0 = p[29 * ld + i]
        k_off = p[30 * ld + i]

        r = w / w_n
        sr = sqrt(r * r + EPS_R * EPS_R)
        sQ = sqrt(Q * Q + EPS_Q * EPS_Q)
        sC = sqrt(Q * Q + EPS_CV * EPS_CV)
        H = H0 * r * r - h2 * Q * sQ
        T_L = k0 * w * w + k1 * w * Q + c_f * (1.0 + wear) * w
        a_max = w_n / p[13 * ld + i]
        e = w_set - w_slip_n * T_L / T_n - w
        z = e / (a_max * p[14 * ld + i])
        sz = 1.0 / sqrt(1.0 + z * z)
        f0 = a_max * z * sz
        v2 = valve * valve + 1.0 / (p[26 * ld + i] * p[26 * ld + i])
        k_sys = p[24 * ld + i] + p[25 * ld + i] / v2
        f1 = (H - p[21 * ld + i] - k_sys * Q * sQ - 0.5 * p[34 * ld + i] * Q * (sC - Q)) \
            / inertance
        T_e = T_L + p[11 * ld + i] * f0
        tq = T_e / T_n
        i2 = i02 + (1.0 - i02) * tq * tq
        theta = 1.0 + p[7 * ld + i] * (Tw - T_REF_COPPER)
        P_cu = p[5 * ld + i] * i2 * theta
        P_rot = w_slip_n * T_e * tq
        P_fe = p[6 * ld + i] * (0.5 * sr + 0.5 * r * r)
        G_th = p[9 * ld + i] * (p[10 * ld + i] + (1.0 - p[10 * ld + i]) * sr)
        f2 = (P_cu + P_rot + P_fe - G_th * (Tw - Ta)) / p[8 * ld + i]
        q = Q / Q_b
        d = q - r
        ell = l0 + (1.0 - l0) * (r * r + k_off * d * d)
        ell3 = ell * ell * ell
        grow = 1.0 + p[28 * ld + i] * wear

        out[0 * ld + i] = f0
        out[1 * ld + i] = f1
        out[2 * ld + i] = f2
        out[3 * ld + i] = p[27 * ld + i] * sr * ell3 * grow


cdef void _output(double t, const double* x, const double* u, const double* p, double* out,
                  Py_ssize_t n, Py_ssize_t ld, void* ctx) noexcept nogil:
    cdef Py_ssize_t i
    cdef double w, Q, Tw, wear, w_set, w_n, T_n, w_slip_n, s_on, i02, Q_b, H_b, P_bep, k0, k1
    cdef double H0, h2, c_f, l0, k_off, r, sr, H, sQ, T_L, a_max, e, z, sz, f0
    cdef double T_e, tq, i2, theta, P_cu, P_rot, P_fe, d, ell, vb, vh, vw
    for i in range(n):
        w = x[0 * ld + i]
        Q = x[1 * ld + i]
        Tw = x[2 * ld + i]
        wear = x[3 * ld + i]
        w_set = u[0 * ld + i] * RPM

        w_n = p[1 * ld + i] * RPM
        T_n = p[0 * ld + i] / w_n
        w_slip_n = w_n * p[2 * ld + i] / (1.0 - p[2 * ld + i])
        s_on = w_set / w_n
        i02 = p[4 * ld + i] * p[4 * ld + i] * (s_on * s_on / (s_on * s_on + EPS_ON * EPS_ON))
        Q_b = p[15 * ld + i]
        H_b = p[16 * ld + i]
        P_bep = p[20 * ld + i] * G * Q_b * H_b / p[17 * ld + i]
        k0 = p[19 * ld + i] * P_bep / (w_n * w_n * w_n)
        k1 = (1.0 - p[19 * ld + i]) * P_bep / (w_n * w_n * Q_b)
        H0 = p[18 * ld + i] * H_b
        h2 = (H0 - H_b) / (Q_b * Q_b)
        c_f = p[12 * ld + i]
        l0 = p[29 * ld + i]
        k_off = p[30 * ld + i]

        r = w / w_n
        sr = sqrt(r * r + EPS_R * EPS_R)
        sQ = sqrt(Q * Q + EPS_Q * EPS_Q)
        H = H0 * r * r - h2 * Q * sQ
        T_L = k0 * w * w + k1 * w * Q + c_f * (1.0 + wear) * w
        a_max = w_n / p[13 * ld + i]
        e = w_set - w_slip_n * T_L / T_n - w
        z = e / (a_max * p[14 * ld + i])
        sz = 1.0 / sqrt(1.0 + z * z)
        f0 = a_max * z * sz
        T_e = T_L + p[11 * ld + i] * f0
        tq = T_e / T_n
        i2 = i02 + (1.0 - i02) * tq * tq
        theta = 1.0 + p[7 * ld + i] * (Tw - T_REF_COPPER)
        P_cu = p[5 * ld + i] * i2 * theta
        P_rot = w_slip_n * T_e * tq
        P_fe = p[6 * ld + i] * (0.5 * sr + 0.5 * r * r)
        d = Q / Q_b - r
        ell = l0 + (1.0 - l0) * (r * r + k_off * d * d)

        vb = p[31 * ld + i] * r * r
        vh = p[32 * ld + i] * d
        vw = p[33 * ld + i] * wear * r * ell
        out[0 * ld + i] = w / RPM
        out[1 * ld + i] = Q * 3600.0
        out[2 * ld + i] = H
        out[3 * ld + i] = p[20 * ld + i] * G * H * 1e-5
        out[4 * ld + i] = Tw - 273.15
        out[5 * ld + i] = sqrt(VIB_FLOOR * VIB_FLOOR + vb * vb + vh * vh + vw * vw)
        out[6 * ld + i] = p[3 * ld + i] * sqrt(i2)
        out[7 * ld + i] = (T_e * w + P_rot + P_cu + P_fe) * 1e-3


cdef void _jacobian(double t, const double* x, const double* u, const double* p, double* out,
                    Py_ssize_t n, Py_ssize_t ld, void* ctx) noexcept nogil:
    cdef Py_ssize_t i
    cdef double w, Q, Tw, wear, w_set, Ta, w_n, T_n, w_slip_n, s_on, i02, Q_b, H_b, P_bep
    cdef double k0, k1
    cdef double H0, h2, inertance, c_f, l0, k_off, r, sr, sQ, sC, T_L, a_max, e, z, sz, f0, v2
    cdef double k_sys, T_e, tq, i2, theta, G_th, d, ell, ell3, grow
    cdef double dTL_dw, dTL_dQ, dTL_dwear, gain, s_T, j00, j01, j03, dsr_dw, dQsQ
    cdef double J_in, dTe_dw, dTe_dQ, dTe_dwear, k_i2, k_cu, dPfe_dw, dG_dw, C_th
    cdef double dl_dw, dl_dQ, kw
    for i in range(n):
        w = x[0 * ld + i]
        Q = x[1 * ld + i]
        Tw = x[2 * ld + i]
        wear = x[3 * ld + i]
        w_set = u[0 * ld + i] * RPM
        Ta = u[2 * ld + i]

        w_n = p[1 * ld + i] * RPM
        T_n = p[0 * ld + i] / w_n
        w_slip_n = w_n * p[2 * ld + i] / (1.0 - p[2 * ld + i])
        s_on = w_set / w_n
        i02 = p[4 * ld + i] * p[4 * ld + i] * (s_on * s_on / (s_on * s_on + EPS_ON * EPS_ON))
        Q_b = p[15 * ld + i]
        H_b = p[16 * ld + i]
        P_bep = p[20 * ld + i] * G * Q_b * H_b / p[17 * ld + i]
        k0 = p[19 * ld + i] * P_bep / (w_n * w_n * w_n)
        k1 = (1.0 - p[19 * ld + i]) * P_bep / (w_n * w_n * Q_b)
        H0 = p[18 * ld + i] * H_b
        h2 = (H0 - H_b) / (Q_b * Q_b)
        inertance = 4.0 * p[22 * ld + i] / (G * M_PI * p[23 * ld + i] * p[23 * ld + i])
        c_f = p[12 * ld + i]
        l0 = p[29 * ld + i]
        k_off = p[30 * ld + i]

        r = w / w_n
        sr = sqrt(r * r + EPS_R * EPS_R)
        sQ = sqrt(Q * Q + EPS_Q * EPS_Q)
        sC = sqrt(Q * Q + EPS_CV * EPS_CV)
        T_L = k0 * w * w + k1 * w * Q + c_f * (1.0 + wear) * w
        a_max = w_n / p[13 * ld + i]
        e = w_set - w_slip_n * T_L / T_n - w
        z = e / (a_max * p[14 * ld + i])
        sz = 1.0 / sqrt(1.0 + z * z)
        f0 = a_max * z * sz
        v2 = u[1 * ld + i] * u[1 * ld + i] + 1.0 / (p[26 * ld + i] * p[26 * ld + i])
        k_sys = p[24 * ld + i] + p[25 * ld + i] / v2
        T_e = T_L + p[11 * ld + i] * f0
        tq = T_e / T_n
        i2 = i02 + (1.0 - i02) * tq * tq
        theta = 1.0 + p[7 * ld + i] * (Tw - T_REF_COPPER)
        G_th = p[9 * ld + i] * (p[10 * ld + i] + (1.0 - p[10 * ld + i]) * sr)
        d = Q / Q_b - r
        ell = l0 + (1.0 - l0) * (r * r + k_off * d * d)
        ell3 = ell * ell * ell
        grow = 1.0 + p[28 * ld + i] * wear

        # torque balance and drive
        dTL_dw = 2.0 * k0 * w + k1 * Q + c_f * (1.0 + wear)
        dTL_dQ = k1 * w
        dTL_dwear = c_f * w
        gain = sz * sz * sz / p[14 * ld + i]
        s_T = w_slip_n / T_n
        j00 = gain * (-s_T * dTL_dw - 1.0)
        j01 = gain * (-s_T * dTL_dQ)
        j03 = gain * (-s_T * dTL_dwear)
        out[0 * ld + i] = j00
        out[1 * ld + i] = j01
        out[2 * ld + i] = 0.0
        out[3 * ld + i] = j03

        # pipe
        dsr_dw = r / (sr * w_n)
        dQsQ = sQ + Q * Q / sQ
        out[4 * ld + i] = 2.0 * H0 * r / w_n / inertance
        out[5 * ld + i] = (-h2 * dQsQ - k_sys * dQsQ
                           - 0.5 * p[34 * ld + i] * (sC - 2.0 * Q + Q * Q / sC)) / inertance
        out[6 * ld + i] = 0.0
        out[7 * ld + i] = 0.0

        # winding temperature
        J_in = p[11 * ld + i]
        dTe_dw = dTL_dw + J_in * j00
        dTe_dQ = dTL_dQ + J_in * j01
        dTe_dwear = dTL_dwear + J_in * j03
        k_i2 = 2.0 * (1.0 - i02) * tq / T_n
        k_cu = p[5 * ld + i] * theta * k_i2 + 2.0 * w_slip_n * tq
        dPfe_dw = p[6 * ld + i] * (0.5 * dsr_dw + r / w_n)
        dG_dw = p[9 * ld + i] * (1.0 - p[10 * ld + i]) * dsr_dw
        C_th = p[8 * ld + i]
        out[8 * ld + i] = (k_cu * dTe_dw + dPfe_dw - dG_dw * (Tw - Ta)) / C_th
        out[9 * ld + i] = k_cu * dTe_dQ / C_th
        out[10 * ld + i] = (p[5 * ld + i] * i2 * p[7 * ld + i] - G_th) / C_th
        out[11 * ld + i] = k_cu * dTe_dwear / C_th

        # wear
        dl_dw = (1.0 - l0) * (2.0 * r - 2.0 * k_off * d) / w_n
        dl_dQ = (1.0 - l0) * 2.0 * k_off * d / Q_b
        kw = p[27 * ld + i] * grow
        out[12 * ld + i] = kw * (dsr_dw * ell3 + sr * 3.0 * ell * ell * dl_dw)
        out[13 * ld + i] = kw * sr * 3.0 * ell * ell * dl_dQ
        out[14 * ld + i] = 0.0
        out[15 * ld + i] = p[27 * ld + i] * sr * ell3 * p[28 * ld + i]


def capsules():
    """The C form of the pump: ``{"rhs": ..., "output": ..., "jacobian": ...}`` PyCapsules."""
    return {
        "rhs": PyCapsule_New(<void*>_rhs, "twinbench.model_fn", NULL),
        "output": PyCapsule_New(<void*>_output, "twinbench.model_fn", NULL),
        "jacobian": PyCapsule_New(<void*>_jacobian, "twinbench.model_fn", NULL),
    }
