"""Compiled ensemble integration: fixed-step RK4 and ROS2 over blocks of scenarios.

Layout (see _typedefs.pxd): each block of up to ``ld`` scenarios keeps its states, inputs and
parameters variable-major, scenario-minor, so every inner loop runs over contiguous memory and the
compiler vectorises it. Steps are the outer loop and scenarios the inner loop within a block;
blocks are independent and are shared between OpenMP threads for large ensembles.

The NumPy reference of every function here is in ``_integrate_py.py``.
"""

from cython.parallel cimport parallel, prange
from libc.math cimport NAN, fabs, fmax
from libc.stdlib cimport free, malloc
from libc.string cimport memcpy

from twinbench.kernel._model cimport CompiledFns
from twinbench.kernel._typedefs cimport ModelFns

cdef double SQRT_EPS = 1.4901161193847656e-08
# gamma = 1 + 1/sqrt(2): the L-stable choice of Verwer et al. (1999), SIAM J. Sci. Comput. 20(4).
cdef double ROS2_GAMMA = 1.7071067811865475

METHOD_RK4 = 0
METHOD_ROS2 = 1


cdef inline void _axpy(double* out, const double* x, double a, const double* k, Py_ssize_t nx,
                       Py_ssize_t n, Py_ssize_t ld) noexcept nogil:
    """out = x + a * k over the [nx][ld] block: one flat loop when the block is full (n == ld),
    so there is one loop, not nx, to enter per stage."""
    cdef Py_ssize_t j, i, o
    if n == ld:
        for i in range(nx * ld):
            out[i] = x[i] + a * k[i]
    else:
        for j in range(nx):
            o = j * ld
            for i in range(n):
                out[o + i] = x[o + i] + a * k[o + i]


cdef void rk4_step(const ModelFns* m, double t, double h, double* x, const double* u,
                   const double* p, Py_ssize_t n, Py_ssize_t ld, double* work) noexcept nogil:
    cdef Py_ssize_t nx = m.nx, j, i, o
    cdef Py_ssize_t sz = nx * ld
    cdef double* k1 = work
    cdef double* k2 = work + sz
    cdef double* k3 = work + 2 * sz
    cdef double* k4 = work + 3 * sz
    cdef double* xt = work + 4 * sz
    cdef double hh = 0.5 * h
    cdef double h6 = h / 6.0
    m.rhs(t, x, u, p, k1, n, ld, m.ctx)
    _axpy(xt, x, hh, k1, nx, n, ld)
    m.rhs(t + hh, xt, u, p, k2, n, ld, m.ctx)
    _axpy(xt, x, hh, k2, nx, n, ld)
    m.rhs(t + hh, xt, u, p, k3, n, ld, m.ctx)
    _axpy(xt, x, h, k3, nx, n, ld)
    m.rhs(t + h, xt, u, p, k4, n, ld, m.ctx)
    if n == ld:
        for i in range(sz):
            x[i] = x[i] + h6 * (k1[i] + 2.0 * k2[i] + 2.0 * k3[i] + k4[i])
    else:
        for j in range(nx):
            o = j * ld
            for i in range(n):
                x[o + i] = x[o + i] + h6 * (k1[o + i] + 2.0 * k2[o + i] + 2.0 * k3[o + i] + k4[o + i])


cdef void jacobian(const ModelFns* m, double t, const double* x, const double* u,
                   const double* p, double* J, Py_ssize_t n, Py_ssize_t ld,
                   double* work) noexcept nogil:
    cdef Py_ssize_t nx = m.nx, r, c, i
    cdef double* f0
    cdef double* fc
    cdef double* xp
    if m.jacobian != NULL:
        m.jacobian(t, x, u, p, J, n, ld, m.ctx)
        return
    f0 = work
    fc = work + nx * ld
    xp = work + 2 * nx * ld
    m.rhs(t, x, u, p, f0, n, ld, m.ctx)
    memcpy(xp, x, nx * ld * sizeof(double))
    for c in range(nx):
        for i in range(n):
            xp[c * ld + i] = x[c * ld + i] + SQRT_EPS * fmax(fabs(x[c * ld + i]), 1.0)
        m.rhs(t, xp, u, p, fc, n, ld, m.ctx)
        for r in range(nx):
            for i in range(n):
                # divide by the step actually taken (x + d - x), not d, to cancel rounding in x + d
                J[(r * nx + c) * ld + i] = (fc[r * ld + i] - f0[r * ld + i]) / (xp[c * ld + i] - x[c * ld + i])
        for i in range(n):
            xp[c * ld + i] = x[c * ld + i]


cdef int lu_factor(double* a, Py_ssize_t nx, Py_ssize_t s, Py_ssize_t* ipiv) noexcept nogil:
    cdef Py_ssize_t k, r, c, piv
    cdef double amax, v, l, tmp
    for k in range(nx):
        piv = k
        amax = fabs(a[(k * nx + k) * s])
        for r in range(k + 1, nx):
            v = fabs(a[(r * nx + k) * s])
            if v > amax:
                amax = v
                piv = r
        ipiv[k] = piv
        if not (amax > 0.0) or amax - amax != 0.0:  # zero, NaN or Inf pivot
            return -1
        if piv != k:
            for c in range(nx):
                tmp = a[(k * nx + c) * s]
                a[(k * nx + c) * s] = a[(piv * nx + c) * s]
                a[(piv * nx + c) * s] = tmp
        for r in range(k + 1, nx):
            l = a[(r * nx + k) * s] / a[(k * nx + k) * s]
            a[(r * nx + k) * s] = l
            for c in range(k + 1, nx):
                a[(r * nx + c) * s] = a[(r * nx + c) * s] - l * a[(k * nx + c) * s]
    return 0


cdef void lu_solve(const double* a, Py_ssize_t nx, Py_ssize_t s, const Py_ssize_t* ipiv,
                   double* b, Py_ssize_t bs) noexcept nogil:
    cdef Py_ssize_t k, r, c
    cdef double tmp, acc
    for k in range(nx):
        if ipiv[k] != k:
            tmp = b[k * bs]
            b[k * bs] = b[ipiv[k] * bs]
            b[ipiv[k] * bs] = tmp
    for r in range(1, nx):
        acc = b[r * bs]
        for c in range(r):
            acc = acc - a[(r * nx + c) * s] * b[c * bs]
        b[r * bs] = acc
    for r in range(nx - 1, -1, -1):
        acc = b[r * bs]
        for c in range(r + 1, nx):
            acc = acc - a[(r * nx + c) * s] * b[c * bs]
        b[r * bs] = acc / a[(r * nx + r) * s]


cdef int ros2_step(const ModelFns* m, double t, double h, double* x, const double* u,
                   const double* p, Py_ssize_t n, Py_ssize_t ld, double* work,
                   Py_ssize_t* ipiv) noexcept nogil:
    cdef Py_ssize_t nx = m.nx, r, c, i, j, o
    cdef Py_ssize_t sz = nx * ld
    cdef double* W = work
    cdef double* k1 = work + nx * sz
    cdef double* k2 = k1 + sz
    cdef double* xt = k2 + sz
    cdef double* jw = xt + sz
    cdef double g = ROS2_GAMMA * h
    cdef double a1 = 1.5 * h
    cdef double a2 = 0.5 * h
    cdef int status = 0
    jacobian(m, t, x, u, p, W, n, ld, jw)
    for r in range(nx):
        for c in range(nx):
            o = (r * nx + c) * ld
            for i in range(n):
                W[o + i] = (1.0 if r == c else 0.0) - g * W[o + i]
    m.rhs(t, x, u, p, k1, n, ld, m.ctx)
    # The LU of W is per scenario (different pivots), so this part is a scalar loop.
    for i in range(n):
        if lu_factor(W + i, nx, ld, ipiv + i * nx) != 0:
            status = -1
            for j in range(nx):
                x[j * ld + i] = NAN
                k1[j * ld + i] = NAN
            ipiv[i * nx] = -1  # marks the matrix unusable: the second solve skips it
        else:
            lu_solve(W + i, nx, ld, ipiv + i * nx, k1 + i, ld)
    for j in range(nx):
        o = j * ld
        for i in range(n):
            xt[o + i] = x[o + i] + h * k1[o + i]
    m.rhs(t + h, xt, u, p, k2, n, ld, m.ctx)
    for j in range(nx):
        o = j * ld
        for i in range(n):
            k2[o + i] = k2[o + i] - 2.0 * k1[o + i]
    for i in range(n):
        if ipiv[i * nx] >= 0:
            lu_solve(W + i, nx, ld, ipiv + i * nx, k2 + i, ld)
    for j in range(nx):
        o = j * ld
        for i in range(n):
            x[o + i] = x[o + i] + a1 * k1[o + i] + a2 * k2[o + i]
    return status


cdef struct _Job:
    const ModelFns* m
    int method
    double t0
    double dt
    Py_ssize_t steps
    Py_ssize_t every
    Py_ssize_t ld
    const double* x0
    Py_ssize_t x0s0, x0s1
    const double* u
    Py_ssize_t us0, us1, us2
    const double* p
    Py_ssize_t ps0, ps1
    double* out
    Py_ssize_t nsamp
    Py_ssize_t nscen
    long long* bad


cdef Py_ssize_t _buffer_size(const ModelFns* m, int method, Py_ssize_t ld) noexcept nogil:
    cdef Py_ssize_t nx = m.nx
    # RK4: k1..k4 and a stage state; ROS2: the matrix, k1, k2, a stage state, Jacobian work
    cdef Py_ssize_t work = 5 * nx if method == 0 else nx * nx + 7 * nx
    # x, inputs, params, outputs, finite-check accumulator, step work
    return (nx + (m.nu if m.nu > 0 else 1) + (m.np if m.np > 0 else 1)
            + (m.ny if m.ny > 0 else 1) + 1 + work) * ld


cdef inline void _load_inputs(const _Job* jb, Py_ssize_t s, double* uu, Py_ssize_t i0,
                              Py_ssize_t nb) noexcept nogil:
    cdef Py_ssize_t j, i
    cdef const double* src
    for j in range(jb.m.nu):
        src = jb.u + s * jb.us0 + j * jb.us1 + i0 * jb.us2
        if jb.us2 == 1:
            memcpy(uu + j * jb.ld, src, nb * sizeof(double))
        else:
            for i in range(nb):
                uu[j * jb.ld + i] = src[i * jb.us2]


cdef inline void _sample(const _Job* jb, Py_ssize_t k, double t, const double* x,
                         const double* uu, const double* pp, double* y, Py_ssize_t i0,
                         Py_ssize_t nb) noexcept nogil:
    cdef Py_ssize_t j, nx = jb.m.nx, ld = jb.ld
    cdef double* dst
    for j in range(nx):
        dst = jb.out + (j * jb.nsamp + k) * jb.nscen + i0
        memcpy(dst, x + j * ld, nb * sizeof(double))
    if jb.m.ny > 0:
        jb.m.output(t, x, uu, pp, y, nb, ld, jb.m.ctx)
        for j in range(jb.m.ny):
            dst = jb.out + ((nx + j) * jb.nsamp + k) * jb.nscen + i0
            memcpy(dst, y + j * ld, nb * sizeof(double))


cdef void _run_block(const _Job* jb, Py_ssize_t b, double* buf, Py_ssize_t* ipiv) noexcept nogil:
    cdef const ModelFns* m = jb.m
    cdef Py_ssize_t ld = jb.ld, nx = m.nx
    cdef Py_ssize_t i0 = b * ld
    cdef Py_ssize_t nb = jb.nscen - i0
    cdef Py_ssize_t i, j, s
    cdef double t
    cdef double* x = buf
    cdef double* uu = x + nx * ld
    cdef double* pp = uu + (m.nu if m.nu > 0 else 1) * ld
    cdef double* y = pp + (m.np if m.np > 0 else 1) * ld
    cdef double* acc = y + (m.ny if m.ny > 0 else 1) * ld
    cdef double* work = acc + ld
    cdef bint inputs_vary = jb.us0 != 0
    if nb > ld:
        nb = ld
    for j in range(m.np):
        for i in range(nb):
            pp[j * ld + i] = jb.p[j * jb.ps0 + (i0 + i) * jb.ps1]
    for j in range(nx):
        for i in range(nb):
            x[j * ld + i] = jb.x0[j * jb.x0s0 + (i0 + i) * jb.x0s1]
    _load_inputs(jb, 0, uu, i0, nb)
    for s in range(jb.steps):
        t = jb.t0 + s * jb.dt
        if s > 0 and inputs_vary:
            _load_inputs(jb, s, uu, i0, nb)
        if s % jb.every == 0:
            _sample(jb, s // jb.every, t, x, uu, pp, y, i0, nb)
        if jb.method == 0:
            rk4_step(m, t, jb.dt, x, uu, pp, nb, ld, work)
        else:
            ros2_step(m, t, jb.dt, x, uu, pp, nb, ld, work, ipiv)
        # x * 0 is 0 for finite x and NaN for NaN/Inf, so one pass flags every bad scenario.
        for i in range(nb):
            acc[i] = 0.0
        for j in range(nx):
            for i in range(nb):
                acc[i] = acc[i] + x[j * ld + i] * 0.0
        for i in range(nb):
            if acc[i] != 0.0 and jb.bad[i0 + i] < 0:
                jb.bad[i0 + i] = s
    _sample(jb, jb.steps // jb.every, jb.t0 + jb.steps * jb.dt, x, uu, pp, y, i0, nb)


def integrate(CompiledFns model, int method, double t0, double dt, Py_ssize_t steps,
              Py_ssize_t every, const double[:, :] x0, const double[:, :, :] u,
              const double[:, :] p, double[:, :, ::1] out, long long[::1] bad,
              int threads=1, Py_ssize_t block=128):
    """Integrate an ensemble in place into ``out`` (private: validated by ``_simulate``).

    Shapes: x0 ``(nx, N)``, u ``(steps, nu, N)`` (strides may be 0 for broadcast inputs),
    p ``(np, N)``, out ``(nx + ny, steps // every + 1, N)``, bad ``(N,)`` set to -1 by the caller
    and to the first step that produced a non-finite state.
    """
    cdef _Job jb
    cdef const ModelFns* m = &model.fns
    cdef Py_ssize_t nscen = out.shape[2]
    cdef Py_ssize_t nblocks, b, size
    cdef double* buf
    cdef Py_ssize_t* ipiv
    cdef int failed[1]
    if block < 1:
        raise ValueError(f"block: expected a positive block size, got {block}")
    failed[0] = 0
    if nscen == 0:
        return
    jb.m = m
    jb.method = method
    jb.t0 = t0
    jb.dt = dt
    jb.steps = steps
    jb.every = every
    jb.ld = block if nscen > block else nscen
    jb.x0 = &x0[0, 0]
    jb.x0s0 = x0.strides[0] // sizeof(double)
    jb.x0s1 = x0.strides[1] // sizeof(double)
    jb.u = &u[0, 0, 0]
    jb.us0 = u.strides[0] // sizeof(double)
    jb.us1 = u.strides[1] // sizeof(double)
    jb.us2 = u.strides[2] // sizeof(double)
    jb.p = &p[0, 0]
    jb.ps0 = p.strides[0] // sizeof(double)
    jb.ps1 = p.strides[1] // sizeof(double)
    jb.out = &out[0, 0, 0]
    jb.nsamp = out.shape[1]
    jb.nscen = nscen
    jb.bad = &bad[0]
    nblocks = (nscen + jb.ld - 1) // jb.ld
    size = _buffer_size(m, method, jb.ld)
    if threads <= 1 or nblocks == 1:
        buf = <double*> malloc(size * sizeof(double))
        ipiv = <Py_ssize_t*> malloc(m.nx * jb.ld * sizeof(Py_ssize_t))
        if buf == NULL or ipiv == NULL:
            free(buf)
            free(ipiv)
            raise MemoryError("integrate: cannot allocate the work buffer")
        with nogil:
            for b in range(nblocks):
                _run_block(&jb, b, buf, ipiv)
        free(buf)
        free(ipiv)
    else:
        with nogil, parallel(num_threads=threads):
            buf = <double*> malloc(size * sizeof(double))
            ipiv = <Py_ssize_t*> malloc(m.nx * jb.ld * sizeof(Py_ssize_t))
            if buf == NULL or ipiv == NULL:
                failed[0] = 1
            else:
                for b in prange(nblocks, schedule="static"):
                    _run_block(&jb, b, buf, ipiv)
            free(buf)
            free(ipiv)
        if failed[0]:
            raise MemoryError("integrate: cannot allocate a thread's work buffer")
