# C-level integration steps, cimported by other kernel modules (the estimators).
# Layout as in _typedefs.pxd: arrays are [variable][ld] with n <= ld scenarios in use.
from twinbench.kernel._typedefs cimport ModelFns

# One classical RK4 step of length h from time t, in place on x ([nx][ld]).
# work: at least 5 * nx * ld doubles.
cdef void rk4_step(const ModelFns* m, double t, double h, double* x, const double* u,
                   const double* p, Py_ssize_t n, Py_ssize_t ld, double* work) noexcept nogil

# d f / d x at (t, x, u, p) into J ([nx*nx][ld], row-major per scenario), analytic when the model
# provides m.jacobian, else forward differences with step sqrt(eps) * max(|x_c|, 1).
# work: at least 3 * nx * ld doubles (unused when analytic).
cdef void jacobian(const ModelFns* m, double t, const double* x, const double* u,
                   const double* p, double* J, Py_ssize_t n, Py_ssize_t ld,
                   double* work) noexcept nogil

# One ROS2 step (L-stable Rosenbrock, order 2) of length h from t, in place on x.
# work: at least (nx*nx + 7*nx) * ld doubles; ipiv: at least nx * n entries.
# Returns 0, or -1 if the Newton matrix of some scenario was singular (that scenario's x is set NaN).
cdef int ros2_step(const ModelFns* m, double t, double h, double* x, const double* u,
                   const double* p, Py_ssize_t n, Py_ssize_t ld, double* work,
                   Py_ssize_t* ipiv) noexcept nogil

# Small dense LU with partial pivoting on one scenario's matrix:
# a is nx*nx row-major with element (r, c) at a[(r*nx + c) * stride]. Returns 0 or -1 if singular.
cdef int lu_factor(double* a, Py_ssize_t nx, Py_ssize_t stride, Py_ssize_t* ipiv) noexcept nogil
cdef void lu_solve(const double* a, Py_ssize_t nx, Py_ssize_t stride, const Py_ssize_t* ipiv,
                   double* b, Py_ssize_t bstride) noexcept nogil
