# C types shared by every kernel module, and by user models written in Cython.
#
# Memory layout: the kernel works on blocks of scenarios. Every per-scenario quantity is stored
# variable-major, scenario-minor: element (variable j, scenario i) lives at ``a[j * ld + i]``.
# ``n`` is the number of scenarios in the block (n <= ld). A model function loops
# ``for j ...: for i in range(n): ...`` so that the inner loop runs over contiguous memory and
# the C compiler vectorises it.

ctypedef void (*model_fn)(double t, const double* x, const double* u, const double* p,
                          double* out, Py_ssize_t n, Py_ssize_t ld, void* ctx) noexcept nogil
# rhs:      out = dx/dt,   shape [nx][ld]
# output:   out = y,       shape [ny][ld]
# jacobian: out = df/dx,   shape [nx*nx][ld], row-major: out[(r*nx + c)*ld + i] = d f_r / d x_c

cdef struct ModelFns:
    model_fn rhs
    model_fn output      # NULL: the model has no outputs beyond its states
    model_fn jacobian    # NULL: the kernel uses finite differences
    void* ctx            # model-private data (e.g. the matrices of a linear model); may be NULL
    Py_ssize_t nx        # states
    Py_ssize_t nu        # inputs
    Py_ssize_t np        # parameters
    Py_ssize_t ny        # outputs
