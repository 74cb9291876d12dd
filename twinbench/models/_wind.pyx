"""Compiled wind-turbine drivetrain model: C right-hand side, outputs and Jacobian as PyCapsules.

Same equations, same statement order as the NumPy reference ``_wind_py.py``; see
:mod:`twinbench.models.wind` for the model and its sources.
"""

from cpython.pycapsule cimport PyCapsule_New
from libc.math cimport sqrt, exp, log1p, fabs, fmax, M_PI

cdef double RPM = M_PI / 30.0
cdef double DEG = 180.0 / M_PI
cdef double C1 = 0.5176
cdef double C2 = 116.0
cdef double C3 = 0.4
cdef double C4 = 5.0
cdef double C5 = 21.0
cdef double C6 = 0.0068
cdef double V_MIN = 0.5
cdef double LAMBDA_MIN = 0.1
cdef double EPS_PITCH = 0.1
cdef double EPS_TORQUE = 0.02
cdef double OMEGA_MIN = 0.05
cdef double EPS_R = 1e-2
cdef double VIB_FLOOR = 0.05


cdef struct Terms:
    double W, zp, wear, R, J, N, T_r, W_r, Ve, lam, le, beta, sig, b3, den, inv, ex, A, Cp, Cq
    double K, T_a, kopt, d1, D1, d2, D2, M, so, g, T_g, GK, KD, err, r, sr, tg, l0, ell, ell3
    double grow, f0, f1, f2


cdef inline void _terms(const double* x, const double* u, const double* p, Py_ssize_t i,
                        Py_ssize_t ld, Terms* c) noexcept nogil:
    cdef double V, W_set, zs, ez, T_opt, T_line, eT
    c.W = x[0 * ld + i]
    c.zp = x[1 * ld + i]
    c.wear = x[2 * ld + i]
    V = u[0 * ld + i]
    W_set = u[1 * ld + i] * RPM

    c.R = p[0 * ld + i]
    c.J = p[2 * ld + i]
    c.N = p[3 * ld + i]
    c.T_r = c.N * p[4 * ld + i]
    c.W_r = p[5 * ld + i] * RPM

    c.Ve = sqrt(V * V + V_MIN * V_MIN)
    c.lam = c.W * c.R / c.Ve
    c.le = sqrt(c.lam * c.lam + LAMBDA_MIN * LAMBDA_MIN)
    zs = c.zp / EPS_PITCH
    ez = exp(-fabs(zs))
    c.beta = EPS_PITCH * (fmax(zs, 0.0) + log1p(ez))
    c.sig = (1.0 if zs >= 0.0 else ez) / (1.0 + ez)
    c.b3 = c.beta * c.beta * c.beta + 1.0
    c.den = c.le + 0.08 * c.beta
    c.inv = 1.0 / c.den - 0.035 / c.b3
    c.ex = exp(-C5 * c.inv)
    c.A = C2 * c.inv - C3 * c.beta - C4
    c.Cp = C1 * c.A * c.ex + C6 * c.le
    c.Cq = c.Cp / c.le
    c.K = 0.5 * p[1 * ld + i] * M_PI * c.R * c.R * c.R
    c.T_a = c.K * c.Ve * c.Ve * c.Cq

    c.kopt = c.K * c.R * c.R * p[8 * ld + i] / (p[7 * ld + i] * p[7 * ld + i] * p[7 * ld + i])
    T_opt = c.kopt * c.W * c.W
    T_line = c.T_r * (1.0 + (c.W - W_set) / (p[9 * ld + i] * c.W_r))
    eT = EPS_TORQUE * c.T_r
    c.d1 = T_opt - T_line
    c.D1 = sqrt(c.d1 * c.d1 + eT * eT)
    S = 0.5 * (T_opt + T_line + c.D1)
    c.d2 = S - c.T_r
    c.D2 = sqrt(c.d2 * c.d2 + eT * eT)
    c.M = 0.5 * (S + c.T_r - c.D2)
    c.so = sqrt(c.W * c.W + OMEGA_MIN * OMEGA_MIN)
    c.g = c.W / c.so
    c.T_g = c.M * c.g

    c.f0 = (c.T_a - c.T_g - p[14 * ld + i] * (1.0 + c.wear) * c.W) / c.J
    c.GK = 1.0 / (1.0 + c.beta / p[12 * ld + i])
    c.KD = DEG * c.N
    c.err = c.W - W_set
    c.f1 = c.GK * c.KD * (p[10 * ld + i] * c.f0 + p[11 * ld + i] * c.err) \
        - p[13 * ld + i] * (c.zp - c.beta)

    c.r = c.W / c.W_r
    c.sr = sqrt(c.r * c.r + EPS_R * EPS_R)
    c.tg = c.T_g / c.T_r
    c.l0 = p[17 * ld + i]
    c.ell = sqrt(c.l0 * c.l0 + (1.0 - c.l0 * c.l0) * c.tg * c.tg)
    c.ell3 = c.ell * c.ell * c.ell
    c.grow = 1.0 + p[16 * ld + i] * c.wear
    c.f2 = p[15 * ld + i] * c.sr * c.ell3 * c.grow


cdef void _rhs(double t, const double* x, const double* u, const double* p, double* out,
               Py_ssize_t n, Py_ssize_t ld, void* ctx) noexcept nogil:
    cdef Py_ssize_t i
    cdef Terms c
    for i in range(n):
        _terms(x, u, p, i, ld, &c)
        out[0 * ld + i] = c.f0
        out[1 * ld + i] = c.f1
        out[2 * ld + i] = c.f2


cdef void _output(double t, const double* x, const double* u, const double* p, double* out,
                  Py_ssize_t n, Py_ssize_t ld, void* ctx) noexcept nogil:
    cdef Py_ssize_t i
    cdef Terms c
    cdef double vb, vw
    for i in range(n):
        _terms(x, u, p, i, ld, &c)
        vb = p[18 * ld + i] * c.r * c.ell
        vw = p[19 * ld + i] * c.wear * c.r * c.ell
        out[0 * ld + i] = c.N * c.W / RPM
        out[1 * ld + i] = c.T_g / c.N
        out[2 * ld + i] = p[6 * ld + i] * c.T_g * c.W * 1e-3
        out[3 * ld + i] = c.beta
        out[4 * ld + i] = c.lam
        out[5 * ld + i] = c.Cp
        out[6 * ld + i] = sqrt(VIB_FLOOR * VIB_FLOOR + vb * vb + vw * vw)


cdef void _jacobian(double t, const double* x, const double* u, const double* p, double* out,
                    Py_ssize_t n, Py_ssize_t ld, void* ctx) noexcept nogil:
    cdef Py_ssize_t i
    cdef Terms c
    cdef double KVe2, dinv_dle, dCp_dle, dCq_dle, dTa_dW, dinv_db, dCp_db, dTa_dz
    cdef double dS_dA, dS_dB, dM_dS, dg, dTg_dW, j00, j01, j02, dGK_dz, dsr, dell
    for i in range(n):
        _terms(x, u, p, i, ld, &c)
        KVe2 = c.K * c.Ve * c.Ve

        # aerodynamic torque
        dinv_dle = -1.0 / (c.den * c.den)
        dCp_dle = C1 * c.ex * (C2 - C5 * c.A) * dinv_dle + C6
        dCq_dle = (dCp_dle - c.Cq) / c.le
        dTa_dW = KVe2 * dCq_dle * (c.lam / c.le) * (c.R / c.Ve)
        dinv_db = -0.08 / (c.den * c.den) + 0.105 * c.beta * c.beta / (c.b3 * c.b3)
        dCp_db = C1 * c.ex * ((C2 * dinv_db - C3) - c.A * C5 * dinv_db)
        dTa_dz = KVe2 * (dCp_db / c.le) * c.sig

        # generator torque schedule
        dS_dA = 0.5 * (1.0 + c.d1 / c.D1)
        dS_dB = 0.5 * (1.0 - c.d1 / c.D1)
        dM_dS = 0.5 * (1.0 - c.d2 / c.D2)
        dg = OMEGA_MIN * OMEGA_MIN / (c.so * c.so * c.so)
        dTg_dW = (dM_dS * (dS_dA * 2.0 * c.kopt * c.W + dS_dB * c.T_r / (p[9 * ld + i] * c.W_r))
                  * c.g + c.M * dg)

        j00 = (dTa_dW - dTg_dW - p[14 * ld + i] * (1.0 + c.wear)) / c.J
        j01 = dTa_dz / c.J
        j02 = -p[14 * ld + i] * c.W / c.J
        out[0 * ld + i] = j00
        out[1 * ld + i] = j01
        out[2 * ld + i] = j02

        dGK_dz = -c.GK * c.GK / p[12 * ld + i] * c.sig
        out[3 * ld + i] = c.GK * c.KD * (p[10 * ld + i] * j00 + p[11 * ld + i])
        out[4 * ld + i] = (dGK_dz * c.KD * (p[10 * ld + i] * c.f0 + p[11 * ld + i] * c.err)
                           + c.GK * c.KD * p[10 * ld + i] * j01 - p[13 * ld + i] * (1.0 - c.sig))
        out[5 * ld + i] = c.GK * c.KD * p[10 * ld + i] * j02

        dsr = c.r / (c.sr * c.W_r)
        dell = (1.0 - c.l0 * c.l0) * c.tg * (dTg_dW / c.T_r) / c.ell
        out[6 * ld + i] = p[15 * ld + i] * c.grow * (dsr * c.ell3
                                                      + c.sr * 3.0 * c.ell * c.ell * dell)
        out[7 * ld + i] = 0.0
        out[8 * ld + i] = p[15 * ld + i] * c.sr * c.ell3 * p[16 * ld + i]


def capsules():
    """The C form of the drivetrain: ``{"rhs": ..., "output": ..., "jacobian": ...}``."""
    return {
        "rhs": PyCapsule_New(<void*>_rhs, "twinbench.model_fn", NULL),
        "output": PyCapsule_New(<void*>_output, "twinbench.model_fn", NULL),
        "jacobian": PyCapsule_New(<void*>_jacobian, "twinbench.model_fn", NULL),
    }
