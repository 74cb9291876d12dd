"""Compiled thermal-zone model: C right-hand side, outputs and Jacobian as PyCapsules.

Same equations, same statement order as the NumPy reference ``_thermal_py.py``; see
:mod:`twinbench.models.thermal` for the model and its sources.
"""

from cpython.pycapsule cimport PyCapsule_New


cdef void _rhs(double t, const double* x, const double* u, const double* p, double* out,
               Py_ssize_t n, Py_ssize_t ld, void* ctx) noexcept nogil:
    cdef Py_ssize_t i
    cdef double Ti, Te, To, Q_sol
    for i in range(n):
        Ti = x[0 * ld + i]
        Te = x[1 * ld + i]
        To = u[0 * ld + i]
        Q_sol = p[5 * ld + i] * u[2 * ld + i]
        out[0 * ld + i] = ((Te - Ti) / p[2 * ld + i] + (To - Ti) / p[4 * ld + i] + u[1 * ld + i]
                           + u[3 * ld + i] + p[6 * ld + i] * Q_sol) / p[0 * ld + i]
        out[1 * ld + i] = ((Ti - Te) / p[2 * ld + i] + (To - Te) / p[3 * ld + i]
                           + (1.0 - p[6 * ld + i]) * Q_sol) / p[1 * ld + i]


cdef void _output(double t, const double* x, const double* u, const double* p, double* out,
                  Py_ssize_t n, Py_ssize_t ld, void* ctx) noexcept nogil:
    cdef Py_ssize_t i
    cdef double Ti, Te, To
    for i in range(n):
        Ti = x[0 * ld + i]
        Te = x[1 * ld + i]
        To = u[0 * ld + i]
        out[0 * ld + i] = Ti - 273.15
        out[1 * ld + i] = (Ti - To) / p[4 * ld + i] + (Te - To) / p[3 * ld + i]


cdef void _jacobian(double t, const double* x, const double* u, const double* p, double* out,
                    Py_ssize_t n, Py_ssize_t ld, void* ctx) noexcept nogil:
    cdef Py_ssize_t i
    cdef double g_ie
    for i in range(n):
        g_ie = 1.0 / p[2 * ld + i]
        out[0 * ld + i] = -(g_ie + 1.0 / p[4 * ld + i]) / p[0 * ld + i]
        out[1 * ld + i] = g_ie / p[0 * ld + i]
        out[2 * ld + i] = g_ie / p[1 * ld + i]
        out[3 * ld + i] = -(g_ie + 1.0 / p[3 * ld + i]) / p[1 * ld + i]


def capsules():
    """The C form of the zone: ``{"rhs": ..., "output": ..., "jacobian": ...}`` PyCapsules."""
    return {
        "rhs": PyCapsule_New(<void*>_rhs, "twinbench.model_fn", NULL),
        "output": PyCapsule_New(<void*>_output, "twinbench.model_fn", NULL),
        "jacobian": PyCapsule_New(<void*>_jacobian, "twinbench.model_fn", NULL),
    }
