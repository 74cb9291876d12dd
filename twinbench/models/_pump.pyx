"""Compiled pump model: C right-hand side, outputs and Jacobian exposed as PyCapsules.

Same equations, same statement order as the NumPy reference ``_pump_py.py``; see
:mod:`twinbench.models.pump` for the model and its sources. The functions read the *kernel
parameters* that ``_pump_py.derive`` computes once per run (rows in the order of
``_pump_py.KERNEL_PARAMS``, indexed by the enum below), so what is left per right-hand side is
multiplications, four square roots and two divisions (one of them of inputs only): square roots
and divisions are what limit the loop. Four square roots of unrelated arguments cannot be
fewer without changing the smoothing. Where several reciprocals are needed they are separate
divisions: a chain through the reciprocal of one product measured slower (latency, not the
divider's throughput, binds). Only sqrt and division appear, so gcc vectorises the loops.

Each capsule function checks once whether ``out`` overlaps ``x``, ``u`` or ``p`` (the kernel
never passes overlapping buffers) and otherwise runs a body whose input and output rows are
separate ``restrict`` pointers: gcc then vectorises without run-time alias checks, which cost
more than the loop itself for the kernel's blocks of a few dozen scenarios and kept the Jacobian
loop scalar (it exceeded the limit on such checks). Overlapping callers get the same results
through a scratch block.
"""

from cpython.pycapsule cimport PyCapsule_New
from libc.math cimport sqrt, M_PI, NAN
from libc.stdlib cimport free, malloc
from libc.string cimport memcpy

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
    K_INV_AT = 4
    K_CE_AT = 5
    K_AMAX = 6
    K_JA = 7
    K_INV_RV2 = 8
    K_H0I = 9
    K_HSTI = 10
    K_HKI = 11
    K_KVI = 12
    K_KCVI = 13
    K_INV_TN = 14
    K_I02 = 15
    K_CUC = 16
    K_ALPHA = 17
    K_ROTC = 18
    K_FEC = 19
    K_GAC = 20
    K_GBC = 21
    K_INV_QB = 22
    K_L0 = 23
    K_L1 = 24
    K_L2 = 25
    K_KW = 26
    K_KWB = 27
    K_H0 = 28
    K_H2 = 29
    K_RHOG = 30
    K_CTHK = 31
    K_VB = 32
    K_VH = 33
    K_VW = 34
    K_IN = 35

cdef enum:
    NK_ROWS = K_IN + 1
    NX = 4
    NU = 3
    NY = 8

#: Number of kernel parameters the functions read (rows of _pump_py.derive).
NK = NK_ROWS

cdef extern from *:
    """
    typedef const double* __restrict__ pump_in_t;
    typedef double* __restrict__ pump_out_t;
    """
    ctypedef const double* pump_in_t
    ctypedef double* pump_out_t


cdef inline bint _overlap(const void* a, Py_ssize_t na, const void* b,
                          Py_ssize_t nb) noexcept nogil:
    return <size_t>a < <size_t>b + nb and <size_t>b < <size_t>a + na


cdef inline Py_ssize_t _bytes(Py_ssize_t rows, Py_ssize_t n, Py_ssize_t ld) noexcept nogil:
    return <Py_ssize_t>sizeof(double) * ((rows - 1) * ld + n)


cdef double* _target(Py_ssize_t rows, const double* x, const double* u, const double* p,
                     double* out, Py_ssize_t n, Py_ssize_t ld) noexcept nogil:
    """Where a body writes its ``rows`` output rows: ``out`` itself when it overlaps no input (the
    kernel's case), else a scratch block (rows ``n`` apart) that :func:`_finish` copies back."""
    cdef Py_ssize_t nout = _bytes(rows, n, ld)
    if ld >= n and not (_overlap(out, nout, x, _bytes(NX, n, ld))
                        or _overlap(out, nout, u, _bytes(NU, n, ld))
                        or _overlap(out, nout, p, _bytes(NK_ROWS, n, ld))):
        return out
    return <double*>malloc(rows * n * sizeof(double))


cdef void _finish(Py_ssize_t rows, double* o, double* out, Py_ssize_t n,
                  Py_ssize_t ld) noexcept nogil:
    cdef Py_ssize_t j, i
    if o == out:
        return
    for j in range(rows):
        if o == NULL:  # out of memory: the kernel reports the NaN state
            for i in range(n):
                out[j * ld + i] = NAN
        else:
            memcpy(out + j * ld, o + j * n, n * sizeof(double))
    free(o)


cdef inline void _rhs_body(pump_in_t x, pump_in_t u, pump_in_t p, pump_out_t f0, pump_out_t f1,
                           pump_out_t f2, pump_out_t f3, Py_ssize_t n,
                           Py_ssize_t ld) noexcept nogil:
    cdef Py_ssize_t i
    cdef double w, Q, Tw, wear, w_set, valve, Ta, r, r2, sr, Q2, sQ, sC, T_L, z, S, s_on, s2
    cdef double A, B, AB, rec, sat, T_e, tq, tq2, i02, i2, d, ell
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
        z = (w_set - w) * p[K_INV_AT * ld + i] - p[K_CE_AT * ld + i] * T_L
        S = sqrt(1.0 + z * z)
        s_on = w_set * p[K_INV_WN * ld + i]
        s2 = s_on * s_on
        A = s2 + EPS_ON2
        B = valve * valve + p[K_INV_RV2 * ld + i]
        # 1/A and 1/B from one division (inputs only: off the critical path)
        AB = A * B
        rec = 1.0 / AB
        sat = z / S
        T_e = T_L + p[K_JA * ld + i] * sat
        tq = T_e * p[K_INV_TN * ld + i]
        tq2 = tq * tq
        i02 = p[K_I02 * ld + i] * s2 * (rec * B)
        i2 = i02 + (1.0 - i02) * tq2
        d = Q * p[K_INV_QB * ld + i] - r
        ell = p[K_L0 * ld + i] + p[K_L1 * ld + i] * r2 + p[K_L2 * ld + i] * d * d

        f0[i] = p[K_AMAX * ld + i] * sat
        f1[i] = (p[K_H0I * ld + i] * r2 - p[K_HSTI * ld + i]
                 - (p[K_HKI * ld + i] + p[K_KVI * ld + i] * (rec * A)) * Q * sQ
                 - p[K_KCVI * ld + i] * Q * (sC - Q))
        f2[i] = (p[K_CUC * ld + i] * i2 * (1.0 + p[K_ALPHA * ld + i] * (Tw - T_REF_COPPER))
                 + p[K_ROTC * ld + i] * tq2 + p[K_FEC * ld + i] * (sr + r2)
                 - (p[K_GAC * ld + i] + p[K_GBC * ld + i] * sr) * (Tw - Ta))
        f3[i] = sr * ell * ell * ell * (p[K_KW * ld + i] + p[K_KWB * ld + i] * wear)


cdef inline void _output_body(pump_in_t x, pump_in_t u, pump_in_t p, pump_out_t speed,
                              pump_out_t flow_rate, pump_out_t total_head, pump_out_t pressure,
                              pump_out_t temperature, pump_out_t vibration, pump_out_t current,
                              pump_out_t power, Py_ssize_t n, Py_ssize_t ld) noexcept nogil:
    cdef Py_ssize_t i
    cdef double w, Q, Tw, wear, w_set, r, r2, sr, sQ, T_L, z, S, s_on, s2, A, T_e
    cdef double tq, tq2, i02, i2, losses, H, d, ell, wear_pos, vb, vh, vw
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
        z = (w_set - w) * p[K_INV_AT * ld + i] - p[K_CE_AT * ld + i] * T_L
        S = sqrt(1.0 + z * z)
        s_on = w_set * p[K_INV_WN * ld + i]
        s2 = s_on * s_on
        A = s2 + EPS_ON2
        T_e = T_L + p[K_JA * ld + i] * (z / S)
        tq = T_e * p[K_INV_TN * ld + i]
        tq2 = tq * tq
        i02 = p[K_I02 * ld + i] * s2 / A
        i2 = i02 + (1.0 - i02) * tq2
        losses = (p[K_CUC * ld + i] * i2 * (1.0 + p[K_ALPHA * ld + i] * (Tw - T_REF_COPPER))
                  + p[K_ROTC * ld + i] * tq2 + p[K_FEC * ld + i] * (sr + r2))
        H = p[K_H0 * ld + i] * r2 - p[K_H2 * ld + i] * Q * sQ
        d = Q * p[K_INV_QB * ld + i] - r
        ell = p[K_L0 * ld + i] + p[K_L1 * ld + i] * r2 + p[K_L2 * ld + i] * d * d
        # smooth positive part of the damage (see the pump module: Outputs)
        wear_pos = 0.5 * (wear + sqrt(wear * wear + EPS_WEAR2))
        vb = p[K_VB * ld + i] * r2
        vh = p[K_VH * ld + i] * d
        vw = p[K_VW * ld + i] * wear_pos * r * ell

        speed[i] = w * RAD_TO_RPM
        flow_rate[i] = Q * 3600.0
        total_head[i] = H
        pressure[i] = p[K_RHOG * ld + i] * H
        temperature[i] = Tw - 273.15
        vibration[i] = sqrt(VIB_FLOOR2 + vb * vb + vh * vh + vw * vw)
        current[i] = p[K_IN * ld + i] * sqrt(i2)
        power[i] = T_e * w * 1e-3 + losses * p[K_CTHK * ld + i]


cdef inline void _jacobian_body(pump_in_t x, pump_in_t u, pump_in_t p,
                                pump_out_t j00, pump_out_t j01, pump_out_t j02, pump_out_t j03,
                                pump_out_t j10, pump_out_t j11, pump_out_t j12, pump_out_t j13,
                                pump_out_t j20, pump_out_t j21, pump_out_t j22, pump_out_t j23,
                                pump_out_t j30, pump_out_t j31, pump_out_t j32, pump_out_t j33,
                                Py_ssize_t n, Py_ssize_t ld) noexcept nogil:
    cdef Py_ssize_t i
    cdef double w, Q, Tw, wear, w_set, valve, Ta, iwn, r, r2, sr, Q2, sQ, sC, T_L, z, S, s_on
    cdef double s2, A, B, inv_sr, inv_sC, inv_sQ, inv_B
    cdef double inv_A, inv_S, T_e, tq, i02, i2, theta, d, ell, ell2
    cdef double dTL_dw, dTL_dQ, dTL_dwear, s3, ds_dw, ds_dQ, ds_dwear, a_max, dQsQ, k_cu
    cdef double dsr_dw, kgrow, dl_dw, dl_dQ
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
        z = (w_set - w) * p[K_INV_AT * ld + i] - p[K_CE_AT * ld + i] * T_L
        S = sqrt(1.0 + z * z)
        s_on = w_set * iwn
        s2 = s_on * s_on
        A = s2 + EPS_ON2
        B = valve * valve + p[K_INV_RV2 * ld + i]
        # separate divisions: they overlap, where reciprocals of one product would chain
        inv_sr = 1.0 / sr
        inv_sC = 1.0 / sC
        inv_sQ = 1.0 / sQ
        inv_B = 1.0 / B
        inv_A = 1.0 / A
        inv_S = 1.0 / S

        T_e = T_L + p[K_JA * ld + i] * (z * inv_S)
        tq = T_e * p[K_INV_TN * ld + i]
        i02 = p[K_I02 * ld + i] * s2 * inv_A
        i2 = i02 + (1.0 - i02) * tq * tq
        theta = 1.0 + p[K_ALPHA * ld + i] * (Tw - T_REF_COPPER)
        d = Q * p[K_INV_QB * ld + i] - r
        ell = p[K_L0 * ld + i] + p[K_L1 * ld + i] * r2 + p[K_L2 * ld + i] * d * d
        ell2 = ell * ell

        # torque balance and drive: d sat(z)/dx = (dz/dx) / S^3
        dTL_dw = (2.0 * p[K_K0 * ld + i] * w + p[K_K1 * ld + i] * Q
                  + p[K_CF * ld + i] * (1.0 + wear))
        dTL_dQ = p[K_K1 * ld + i] * w
        dTL_dwear = p[K_CF * ld + i] * w
        s3 = inv_S * inv_S * inv_S
        ds_dw = -(p[K_INV_AT * ld + i] + p[K_CE_AT * ld + i] * dTL_dw) * s3
        ds_dQ = -p[K_CE_AT * ld + i] * dTL_dQ * s3
        ds_dwear = -p[K_CE_AT * ld + i] * dTL_dwear * s3
        a_max = p[K_AMAX * ld + i]
        j00[i] = a_max * ds_dw
        j01[i] = a_max * ds_dQ
        j02[i] = 0.0
        j03[i] = a_max * ds_dwear

        # pipe
        dQsQ = sQ + Q2 * inv_sQ
        j10[i] = 2.0 * p[K_H0I * ld + i] * r * iwn
        j11[i] = -((p[K_HKI * ld + i] + p[K_KVI * ld + i] * inv_B) * dQsQ
                            + p[K_KCVI * ld + i] * (sC - 2.0 * Q + Q2 * inv_sC))
        j12[i] = 0.0
        j13[i] = 0.0

        # winding temperature
        k_cu = 2.0 * tq * p[K_INV_TN * ld + i] * (p[K_CUC * ld + i] * theta * (1.0 - i02)
                                                  + p[K_ROTC * ld + i])
        dsr_dw = r * iwn * inv_sr
        j20[i] = (k_cu * (dTL_dw + p[K_JA * ld + i] * ds_dw)
                           + p[K_FEC * ld + i] * (dsr_dw + 2.0 * r * iwn)
                           - p[K_GBC * ld + i] * dsr_dw * (Tw - Ta))
        j21[i] = k_cu * (dTL_dQ + p[K_JA * ld + i] * ds_dQ)
        j22[i] = (p[K_CUC * ld + i] * i2 * p[K_ALPHA * ld + i]
                            - (p[K_GAC * ld + i] + p[K_GBC * ld + i] * sr))
        j23[i] = k_cu * (dTL_dwear + p[K_JA * ld + i] * ds_dwear)

        # wear
        kgrow = p[K_KW * ld + i] + p[K_KWB * ld + i] * wear
        dl_dw = (2.0 * p[K_L1 * ld + i] * r - 2.0 * p[K_L2 * ld + i] * d) * iwn
        dl_dQ = 2.0 * p[K_L2 * ld + i] * d * p[K_INV_QB * ld + i]
        j30[i] = kgrow * (dsr_dw * ell2 * ell + 3.0 * sr * ell2 * dl_dw)
        j31[i] = kgrow * 3.0 * sr * ell2 * dl_dQ
        j32[i] = 0.0
        j33[i] = sr * ell2 * ell * p[K_KWB * ld + i]


cdef void _rhs(double t, const double* x, const double* u, const double* p, double* out,
               Py_ssize_t n, Py_ssize_t ld, void* ctx) noexcept nogil:
    cdef double* o = _target(NX, x, u, p, out, n, ld)
    cdef Py_ssize_t s = ld if o == out else n
    if o != NULL:
        _rhs_body(x, u, p, o, o + s, o + 2 * s, o + 3 * s, n, ld)
    _finish(NX, o, out, n, ld)


cdef void _output(double t, const double* x, const double* u, const double* p, double* out,
                  Py_ssize_t n, Py_ssize_t ld, void* ctx) noexcept nogil:
    cdef double* o = _target(NY, x, u, p, out, n, ld)
    cdef Py_ssize_t s = ld if o == out else n
    if o != NULL:
        _output_body(x, u, p, o, o + s, o + 2 * s, o + 3 * s, o + 4 * s, o + 5 * s, o + 6 * s,
                     o + 7 * s, n, ld)
    _finish(NY, o, out, n, ld)


cdef void _jacobian(double t, const double* x, const double* u, const double* p, double* out,
                    Py_ssize_t n, Py_ssize_t ld, void* ctx) noexcept nogil:
    cdef double* o = _target(NX * NX, x, u, p, out, n, ld)
    cdef Py_ssize_t s = ld if o == out else n
    if o != NULL:
        _jacobian_body(x, u, p, o, o + s, o + 2 * s, o + 3 * s, o + 4 * s, o + 5 * s, o + 6 * s,
                       o + 7 * s, o + 8 * s, o + 9 * s, o + 10 * s, o + 11 * s, o + 12 * s,
                       o + 13 * s, o + 14 * s, o + 15 * s, n, ld)
    _finish(NX * NX, o, out, n, ld)


def capsules():
    """The C form of the pump: ``{"rhs": ..., "output": ..., "jacobian": ...}`` PyCapsules."""
    return {
        "rhs": PyCapsule_New(<void*>_rhs, "twinbench.model_fn", NULL),
        "output": PyCapsule_New(<void*>_output, "twinbench.model_fn", NULL),
        "jacobian": PyCapsule_New(<void*>_jacobian, "twinbench.model_fn", NULL),
    }
