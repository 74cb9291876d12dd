"""Compiled form of linear state-space models: dx/dt = A x + B u, y = C x + D u.

The matrices are shared by all scenarios and reach the C functions through ``ctx``: a pointer to
one float64 buffer ``[nx, nu, ny, A (nx*nx), B (nx*nu), C (ny*nx), D (ny*nu)]`` laid out
row-major. NumPy reference: ``linear.py`` (the model's NumPy form).
"""

from cpython.pycapsule cimport PyCapsule_New

cimport numpy as cnp

cnp.import_array()


cdef inline void _affine(const double* M, Py_ssize_t rows, Py_ssize_t cols, const double* v,
                         double* out, bint accumulate, Py_ssize_t n, Py_ssize_t ld) noexcept nogil:
    cdef Py_ssize_t r, c, i
    cdef double a
    for r in range(rows):
        if not accumulate:
            for i in range(n):
                out[r * ld + i] = 0.0
        for c in range(cols):
            a = M[r * cols + c]
            for i in range(n):
                out[r * ld + i] = out[r * ld + i] + a * v[c * ld + i]


cdef void _rhs(double t, const double* x, const double* u, const double* p, double* out,
               Py_ssize_t n, Py_ssize_t ld, void* ctx) noexcept nogil:
    cdef const double* m = <const double*> ctx
    cdef Py_ssize_t nx = <Py_ssize_t> m[0], nu = <Py_ssize_t> m[1]
    _affine(m + 3, nx, nx, x, out, False, n, ld)
    _affine(m + 3 + nx * nx, nx, nu, u, out, True, n, ld)


cdef void _output(double t, const double* x, const double* u, const double* p, double* out,
                  Py_ssize_t n, Py_ssize_t ld, void* ctx) noexcept nogil:
    cdef const double* m = <const double*> ctx
    cdef Py_ssize_t nx = <Py_ssize_t> m[0], nu = <Py_ssize_t> m[1], ny = <Py_ssize_t> m[2]
    cdef const double* C = m + 3 + nx * nx + nx * nu
    _affine(C, ny, nx, x, out, False, n, ld)
    _affine(C + ny * nx, ny, nu, u, out, True, n, ld)


cdef void _jacobian(double t, const double* x, const double* u, const double* p, double* out,
                    Py_ssize_t n, Py_ssize_t ld, void* ctx) noexcept nogil:
    cdef const double* m = <const double*> ctx
    cdef Py_ssize_t nx = <Py_ssize_t> m[0], k, i
    for k in range(nx * nx):
        for i in range(n):
            out[k * ld + i] = m[3 + k]


def capsules(cnp.ndarray[cnp.float64_t, ndim=1, mode="c"] packed):
    """Capsules for the C form; ``packed`` must stay alive as long as they are used."""
    cdef double* data = <double*> cnp.PyArray_DATA(packed)
    return {
        "rhs": PyCapsule_New(<void*> _rhs, "twinbench.model_fn", NULL),
        "output": PyCapsule_New(<void*> _output, "twinbench.model_fn", NULL),
        "jacobian": PyCapsule_New(<void*> _jacobian, "twinbench.model_fn", NULL),
        "ctx": PyCapsule_New(<void*> data, "twinbench.linear_ctx", NULL),
        "keepalive": packed,
    }
