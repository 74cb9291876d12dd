"""Compiled lithium-ion cell model: C right-hand side, outputs and Jacobian as PyCapsules.

Same equations, same statement order as the NumPy reference ``_battery_py.py``; see
:mod:`twinbench.models.battery` for the model and its sources.
"""

from cpython.pycapsule cimport PyCapsule_New
from libc.math cimport sqrt, exp

cdef double R_GAS = 8.314462618
cdef double OCV_A = -1.031
cdef double OCV_B = -35.0
cdef double OCV_C0 = 3.685
cdef double OCV_C1 = 0.2156
cdef double OCV_C2 = -0.1178
cdef double OCV_C3 = 0.3201
cdef double EPS_I = 1e-3


cdef struct Terms:
    double z, v1, v2, T, q, I, grR, R0, R1, R2, Qgen, f0, f1, f2, f3, f4


cdef inline void _terms(const double* x, const double* u, const double* p, Py_ssize_t i,
                        Py_ssize_t ld, Terms* c) noexcept nogil:
    cdef double Ta, dT_inv, arrR, fR, Qc, arrA, sI
    c.z = x[0 * ld + i]
    c.v1 = x[1 * ld + i]
    c.v2 = x[2 * ld + i]
    c.T = x[3 * ld + i]
    c.q = x[4 * ld + i]
    c.I = u[0 * ld + i]
    Ta = u[1 * ld + i]

    dT_inv = 1.0 / c.T - 1.0 / p[7 * ld + i]
    arrR = exp(p[6 * ld + i] / R_GAS * dT_inv)
    c.grR = 1.0 + p[14 * ld + i] * c.q
    fR = arrR * c.grR
    c.R0 = p[1 * ld + i] * fR
    c.R1 = p[2 * ld + i] * fR
    c.R2 = p[4 * ld + i] * fR
    Qc = 3600.0 * p[0 * ld + i] * (1.0 - c.q)
    c.f0 = -c.I / Qc
    c.f1 = c.I / p[3 * ld + i] - c.v1 / (c.R1 * p[3 * ld + i])
    c.f2 = c.I / p[5 * ld + i] - c.v2 / (c.R2 * p[5 * ld + i])
    c.Qgen = c.I * (c.v1 + c.v2 + c.I * c.R0) - c.I * c.T * p[8 * ld + i]
    c.f3 = (c.Qgen - p[10 * ld + i] * (c.T - Ta)) / p[9 * ld + i]
    arrA = exp(-p[13 * ld + i] / R_GAS * dT_inv)
    sI = sqrt(c.I * c.I + EPS_I * EPS_I)
    c.f4 = arrA * (p[11 * ld + i] + p[12 * ld + i] * sI / (7200.0 * p[0 * ld + i]))


cdef void _rhs(double t, const double* x, const double* u, const double* p, double* out,
               Py_ssize_t n, Py_ssize_t ld, void* ctx) noexcept nogil:
    cdef Py_ssize_t i
    cdef Terms c
    for i in range(n):
        _terms(x, u, p, i, ld, &c)
        out[0 * ld + i] = c.f0
        out[1 * ld + i] = c.f1
        out[2 * ld + i] = c.f2
        out[3 * ld + i] = c.f3
        out[4 * ld + i] = c.f4


cdef void _output(double t, const double* x, const double* u, const double* p, double* out,
                  Py_ssize_t n, Py_ssize_t ld, void* ctx) noexcept nogil:
    cdef Py_ssize_t i
    cdef Terms c
    cdef double U, V
    for i in range(n):
        _terms(x, u, p, i, ld, &c)
        U = (OCV_A * exp(OCV_B * c.z) + OCV_C0 + c.z * (OCV_C1 + c.z * (OCV_C2 + c.z * OCV_C3))
             + p[8 * ld + i] * (c.T - p[7 * ld + i]))
        V = U - c.v1 - c.v2 - c.I * c.R0
        out[0 * ld + i] = V
        out[1 * ld + i] = U
        out[2 * ld + i] = p[0 * ld + i] * (1.0 - c.q)
        out[3 * ld + i] = c.Qgen
        out[4 * ld + i] = V * c.I


cdef void _jacobian(double t, const double* x, const double* u, const double* p, double* out,
                    Py_ssize_t n, Py_ssize_t ld, void* ctx) noexcept nogil:
    cdef Py_ssize_t i, k
    cdef Terms c
    cdef double eR, gq, a1, a2
    for i in range(n):
        _terms(x, u, p, i, ld, &c)
        eR = p[6 * ld + i] / (R_GAS * c.T * c.T)
        gq = p[14 * ld + i] / c.grR
        a1 = 1.0 / (c.R1 * p[3 * ld + i])
        a2 = 1.0 / (c.R2 * p[5 * ld + i])
        for k in range(25):
            out[k * ld + i] = 0.0
        out[4 * ld + i] = c.f0 / (1.0 - c.q)
        out[6 * ld + i] = -a1
        out[8 * ld + i] = -c.v1 * a1 * eR
        out[9 * ld + i] = c.v1 * a1 * gq
        out[12 * ld + i] = -a2
        out[13 * ld + i] = -c.v2 * a2 * eR
        out[14 * ld + i] = c.v2 * a2 * gq
        out[16 * ld + i] = c.I / p[9 * ld + i]
        out[17 * ld + i] = c.I / p[9 * ld + i]
        out[18 * ld + i] = (-c.I * c.I * c.R0 * eR - c.I * p[8 * ld + i] - p[10 * ld + i]) \
            / p[9 * ld + i]
        out[19 * ld + i] = c.I * c.I * c.R0 * gq / p[9 * ld + i]
        out[23 * ld + i] = c.f4 * (p[13 * ld + i] / (R_GAS * c.T * c.T))


def capsules():
    """The C form of the cell: ``{"rhs": ..., "output": ..., "jacobian": ...}`` PyCapsules."""
    return {
        "rhs": PyCapsule_New(<void*>_rhs, "twinbench.model_fn", NULL),
        "output": PyCapsule_New(<void*>_output, "twinbench.model_fn", NULL),
        "jacobian": PyCapsule_New(<void*>_jacobian, "twinbench.model_fn", NULL),
    }
