"""Compiled state estimators: a linear Kalman filter and a continuous-discrete EKF.

One call runs a whole batch of measurement times without the GIL. The matrices are small (a twin
has a handful of states), so the dense algebra is written out as plain loops over row-major arrays
in one preallocated work buffer: at these sizes a BLAS call costs more than the arithmetic.

The NumPy reference of both functions, with the conventions they share (NaN semantics, in-place
filter state, return value), is ``_estimate_py.py``.
"""

from libc.math cimport NAN, ceil, fabs, fmax, sqrt
from libc.stdlib cimport free, malloc
from libc.string cimport memcpy

from twinbench.kernel._integrate cimport jacobian, rk4_step
from twinbench.kernel._model cimport CompiledFns
from twinbench.kernel._typedefs cimport ModelFns

cdef double SQRT_EPS = 1.4901161193847656e-08


# -- small dense algebra (row-major) ---------------------------------------------------------------

cdef inline bint _isfinite(double v) noexcept nogil:
    return v - v == 0.0


cdef void _mm(const double* A, const double* B, double* C, Py_ssize_t n, Py_ssize_t k,
              Py_ssize_t m) noexcept nogil:
    """C (n x m) = A (n x k) @ B (k x m); C must not overlap A or B.

    Blocked over 4, then 2, then 1 columns of C, the block's sums held in registers: at these
    sizes a dependent chain per element (dot products) or a store-to-load chain through memory
    (row updates) is what limits the speed, not the arithmetic."""
    cdef Py_ssize_t i, j, l
    cdef double a, c0, c1, c2, c3
    cdef const double* b
    for i in range(n):
        j = 0
        while j + 4 <= m:
            c0 = 0.0
            c1 = 0.0
            c2 = 0.0
            c3 = 0.0
            for l in range(k):
                a = A[i * k + l]
                b = B + l * m + j
                c0 += a * b[0]
                c1 += a * b[1]
                c2 += a * b[2]
                c3 += a * b[3]
            C[i * m + j] = c0
            C[i * m + j + 1] = c1
            C[i * m + j + 2] = c2
            C[i * m + j + 3] = c3
            j += 4
        if j + 2 <= m:
            c0 = 0.0
            c1 = 0.0
            for l in range(k):
                a = A[i * k + l]
                b = B + l * m + j
                c0 += a * b[0]
                c1 += a * b[1]
            C[i * m + j] = c0
            C[i * m + j + 1] = c1
            j += 2
        if j < m:
            c0 = 0.0
            for l in range(k):
                c0 += A[i * k + l] * B[l * m + j]
            C[i * m + j] = c0


cdef inline void _transpose(const double* A, double* AT, Py_ssize_t n, Py_ssize_t m) noexcept nogil:
    """AT (m x n) = A (n x m)^T."""
    cdef Py_ssize_t i, j
    for i in range(n):
        for j in range(m):
            AT[j * n + i] = A[i * m + j]


cdef void _sandwich(const double* A, double* P, double* T1, double* T2,
                    Py_ssize_t n) noexcept nogil:
    """P <- A P A^T (all n x n), with two n x n scratch matrices.

    Products are formed as row updates (``_mm``) rather than dot products: independent
    multiply-adds instead of one dependent chain per element, which is what bounds these small
    matrices."""
    _mm(A, P, T1, n, n, n)
    _transpose(A, T2, n, n)
    _mm(T1, T2, P, n, n, n)


cdef void _symmetrise(double* P, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t i, j
    cdef double v
    for i in range(n):
        for j in range(i + 1, n):
            v = 0.5 * (P[i * n + j] + P[j * n + i])
            P[i * n + j] = v
            P[j * n + i] = v


cdef int _cholesky(double* S, Py_ssize_t m, double* dinv) noexcept nogil:
    """In-place lower Cholesky factor L of the SPD matrix S (m x m), and dinv = 1 / diag(L)
    (the solves multiply by it: a division costs as much as a dozen multiply-adds). Returns -1 if
    S is not positive definite."""
    cdef Py_ssize_t i, j, l
    cdef double acc
    for j in range(m):
        acc = S[j * m + j]
        for l in range(j):
            acc -= S[j * m + l] * S[j * m + l]
        if not (acc > 0.0) or not _isfinite(acc):
            return -1
        acc = sqrt(acc)
        S[j * m + j] = acc
        dinv[j] = 1.0 / acc
        for i in range(j + 1, m):
            for l in range(j):
                S[i * m + j] -= S[i * m + l] * S[j * m + l]
            S[i * m + j] *= dinv[j]
    return 0


cdef void _solve_lower(const double* L, const double* dinv, Py_ssize_t m, double* B,
                       Py_ssize_t w) noexcept nogil:
    """B (m x w) <- L^-1 B, L lower triangular (m x m)."""
    cdef Py_ssize_t i, l, c
    cdef double f
    for i in range(m):
        for l in range(i):
            f = L[i * m + l]
            for c in range(w):
                B[i * w + c] -= f * B[l * w + c]
        f = dinv[i]
        for c in range(w):
            B[i * w + c] *= f


cdef void _solve_upper_t(const double* L, const double* dinv, Py_ssize_t m, double* B,
                         Py_ssize_t w) noexcept nogil:
    """B (m x w) <- L^-T B, L lower triangular (m x m)."""
    cdef Py_ssize_t i, l, c
    cdef double f
    for i in range(m - 1, -1, -1):
        for l in range(i + 1, m):
            f = L[l * m + i]
            for c in range(w):
                B[i * w + c] -= f * B[l * w + c]
        f = dinv[i]
        for c in range(w):
            B[i * w + c] *= f


# -- the update shared by both filters -------------------------------------------------------------

cdef Py_ssize_t _update_work(Py_ssize_t nx, Py_ssize_t nz) noexcept nogil:
    return 6 * nx * nz + 2 * nz * nz + 4 * nz + 3 * nx * nx


cdef int _update(Py_ssize_t nx, Py_ssize_t nz, double* x, double* P, const double* z,
                 const double* zhat, const double* H, const double* R, double* innov,
                 double* svar, double* nis, long long* dof, double* w) noexcept nogil:
    """Joseph-form update with the finite components of z (see _estimate_py._update).

    zhat (nz) and H (nz x nx) are read only for measured components. Returns -1 if the innovation
    covariance is not positive definite. The gain is kept transposed (KT = K^T, m x nx) so that
    every product below is a sequence of contiguous row updates.
    """
    cdef Py_ssize_t m = 0, a, b, r, c
    cdef double acc, f
    cdef double* Hr = w
    cdef double* HrT = Hr + nz * nx
    cdef double* HP = HrT + nx * nz
    cdef double* KT = HP + nz * nx
    cdef double* RK = KT + nz * nx
    cdef double* K = RK + nz * nx
    cdef double* S = K + nz * nx
    cdef double* Rr = S + nz * nz
    cdef double* y = Rr + nz * nz
    cdef double* v = y + nz
    cdef double* idx = v + nz     # measured component indices, stored as doubles
    cdef double* dinv = idx + nz
    cdef double* A = dinv + nz
    cdef double* T1 = A + nx * nx
    cdef double* T2 = T1 + nx * nx
    for a in range(nz):
        innov[a] = NAN
        svar[a] = NAN
        if _isfinite(z[a]):
            idx[m] = a
            m += 1
    dof[0] = m
    if m == 0:
        nis[0] = NAN
        return 0
    for a in range(m):
        r = <Py_ssize_t> idx[a]
        y[a] = z[r] - zhat[r]
        innov[r] = y[a]
        memcpy(Hr + a * nx, H + r * nx, nx * sizeof(double))
        for b in range(m):
            Rr[a * m + b] = R[r * nz + <Py_ssize_t> idx[b]]
    _mm(Hr, P, HP, m, nx, nx)                   # HP = Hr P = (P Hr^T)^T, P symmetric
    _transpose(Hr, HrT, m, nx)
    _mm(HP, HrT, S, m, nx, m)                   # S = Hr P Hr^T + Rr
    for a in range(m * m):
        S[a] += Rr[a]
    for a in range(m):
        svar[<Py_ssize_t> idx[a]] = S[a * m + a]
    if _cholesky(S, m, dinv) != 0:
        return -1
    # K^T = S^-1 (Hr P) = L^-T L^-1 (Hr P), on whole rows of KT
    memcpy(KT, HP, m * nx * sizeof(double))
    _solve_lower(S, dinv, m, KT, nx)
    _solve_upper_t(S, dinv, m, KT, nx)
    memcpy(v, y, m * sizeof(double))
    _solve_lower(S, dinv, m, v, 1)
    acc = 0.0
    for a in range(m):
        acc += v[a] * v[a]
    nis[0] = acc
    _transpose(KT, K, m, nx)
    for r in range(nx):
        acc = 0.0
        for a in range(m):
            acc += K[r * m + a] * y[a]
        x[r] += acc
    # Joseph form: P = A P A^T + K R K^T with A = I - K H
    _mm(K, Hr, A, nx, m, nx)
    for r in range(nx):
        for c in range(nx):
            A[r * nx + c] = (1.0 if r == c else 0.0) - A[r * nx + c]
    _sandwich(A, P, T1, T2, nx)
    _mm(Rr, KT, RK, m, m, nx)                   # RK = R K^T
    _mm(K, RK, T1, nx, m, nx)                   # K R K^T
    for r in range(nx * nx):
        P[r] += T1[r]
    _symmetrise(P, nx)
    return 0


cdef inline void _hold(const double* u_row, double* u_hold, Py_ssize_t nu) noexcept nogil:
    cdef Py_ssize_t j
    for j in range(nu):
        if _isfinite(u_row[j]):
            u_hold[j] = u_row[j]


cdef inline bint _state_finite(const double* x, const double* P, Py_ssize_t nx) noexcept nogil:
    cdef Py_ssize_t j
    cdef double acc = 0.0
    for j in range(nx):
        acc += x[j] * 0.0 + P[j * nx + j] * 0.0
    return acc == 0.0


cdef inline void _record(Py_ssize_t nx, const double* x, const double* P, double* out_x,
                         double* out_std, double* out_P) noexcept nogil:
    cdef Py_ssize_t j
    memcpy(out_x, x, nx * sizeof(double))
    for j in range(nx):
        out_std[j] = sqrt(fmax(P[j * nx + j], 0.0))
    if out_P != NULL:
        memcpy(out_P, P, nx * nx * sizeof(double))


cdef double* _alloc(Py_ssize_t n) except NULL:
    cdef double* w = <double*> malloc((n if n > 0 else 1) * sizeof(double))
    if w == NULL:
        raise MemoryError("estimate: cannot allocate the work buffer")
    return w


# -- linear Kalman filter --------------------------------------------------------------------------

def kf_run(const double[:, ::1] F, const double[:, ::1] B, const double[:, ::1] H,
           const double[:, ::1] Q, const double[:, ::1] R, double[::1] x, double[:, ::1] P,
           double[::1] u_hold, const double[:, ::1] z, const double[:, ::1] u,
           double[:, ::1] out_x, double[:, ::1] out_std, double[:, ::1] out_innov,
           double[:, ::1] out_svar, double[::1] out_nis, long long[::1] out_dof,
           double[:, :, ::1] out_P=None):
    """Linear Kalman filter over a batch (see ``_estimate_py.kf_run``)."""
    cdef Py_ssize_t nx = F.shape[0], nz = H.shape[0], nu = u_hold.shape[0]
    cdef Py_ssize_t T = z.shape[0], k, r, j
    cdef Py_ssize_t bad = -1
    cdef double acc
    cdef double* Pout = NULL
    cdef double* xp
    cdef double* T1
    cdef double* T2
    cdef double* zhat
    cdef double* uw
    cdef double* wu
    cdef double* w
    cdef double* Pp = &P[0, 0]
    cdef const double* Qp = &Q[0, 0]
    if T == 0:
        return -1
    if out_P is not None:
        Pout = &out_P[0, 0, 0]
    w = _alloc(nx + 2 * nx * nx + nz + nu + _update_work(nx, nz))
    xp = w
    T1 = xp + nx
    T2 = T1 + nx * nx
    zhat = T2 + nx * nx
    uw = zhat + nz
    wu = uw + nu
    with nogil:
        for j in range(nu):
            uw[j] = u_hold[j]
        for k in range(T):
            # predict: x = F x + B u, P = F P F^T + Q
            _hold(&u[k, 0] if nu else NULL, uw, nu)
            for r in range(nx):
                acc = 0.0
                for j in range(nx):
                    acc += F[r, j] * x[j]
                for j in range(nu):
                    acc += B[r, j] * uw[j]
                xp[r] = acc
            memcpy(&x[0], xp, nx * sizeof(double))
            _sandwich(&F[0, 0], Pp, T1, T2, nx)
            for r in range(nx * nx):
                Pp[r] += Qp[r]
            _symmetrise(Pp, nx)
            for r in range(nz):
                acc = 0.0
                for j in range(nx):
                    acc += H[r, j] * x[j]
                zhat[r] = acc
            if _update(nx, nz, &x[0], &P[0, 0], &z[k, 0], zhat, &H[0, 0], &R[0, 0],
                       &out_innov[k, 0], &out_svar[k, 0], &out_nis[k], &out_dof[k], wu) != 0:
                bad = k
            _record(nx, &x[0], &P[0, 0], &out_x[k, 0], &out_std[k, 0],
                    Pout + k * nx * nx if Pout != NULL else NULL)
            if bad < 0 and not _state_finite(&x[0], &P[0, 0], nx):
                bad = k
            if bad >= 0:
                break
        for j in range(nu):
            u_hold[j] = uw[j]
    free(w)
    return bad


# -- continuous-discrete extended Kalman filter ----------------------------------------------------

cdef struct _Ekf:
    const ModelFns* m
    Py_ssize_t nx, nz
    const double* p
    const long long* meas
    const double* Q
    const double* R
    double max_step
    double* J       # nx*nx
    double* F       # nx*nx
    double* T1      # nx*nx
    double* T2      # nx*nx
    double* uprop   # nu (inputs held over the interval being integrated)
    double* zhat    # nz
    double* H       # nz*nx
    double* g0      # ny
    double* g1      # ny
    double* xp      # nx
    double* step    # 5*nx (RK4) and 3*nx (finite-difference Jacobian)
    double* upd     # _update_work


cdef void _propagate(_Ekf* e, double t0, double dt, double* x, double* P,
                     const double* u) noexcept nogil:
    cdef Py_ssize_t nx = e.nx, r, c, j
    cdef Py_ssize_t nsub = <Py_ssize_t> ceil(dt / e.max_step - 1e-9)
    cdef double h, t
    cdef double* J = e.J
    cdef double* F = e.F
    if nsub < 1:
        nsub = 1
    h = dt / nsub
    for j in range(nsub):
        t = t0 + j * h
        jacobian(e.m, t, x, u, e.p, J, 1, 1, e.step)
        for r in range(nx * nx):
            J[r] *= h
        # F = I + Jh + (Jh)^2 / 2: the transition of the linearised step to second order
        _mm(J, J, F, nx, nx, nx)
        for r in range(nx):
            for c in range(nx):
                F[r * nx + c] = (1.0 if r == c else 0.0) + J[r * nx + c] + 0.5 * F[r * nx + c]
        rk4_step(e.m, t, h, x, u, e.p, 1, 1, e.step)
        _sandwich(F, P, e.T1, e.T2, nx)
        for r in range(nx * nx):
            P[r] += e.Q[r] * h
        _symmetrise(P, nx)


cdef void _measurement(_Ekf* e, double t, const double* x, const double* u,
                       bint outputs) noexcept nogil:
    """zhat and H for the measured variables: states exact, outputs (only if ``outputs``, i.e.
    some output was measured at this time) differenced forward."""
    cdef Py_ssize_t nx = e.nx, nz = e.nz, a, c, s
    cdef long long q
    cdef double d
    for a in range(nz * nx):
        e.H[a] = 0.0
    if outputs:
        e.m.output(t, x, u, e.p, e.g0, 1, 1, e.m.ctx)
        for a in range(nz):
            q = e.meas[a]
            if q >= 0:
                e.zhat[a] = e.g0[q]
        memcpy(e.xp, x, nx * sizeof(double))
        for c in range(nx):
            e.xp[c] = x[c] + SQRT_EPS * fmax(fabs(x[c]), 1.0)
            d = e.xp[c] - x[c]
            e.m.output(t, e.xp, u, e.p, e.g1, 1, 1, e.m.ctx)
            for a in range(nz):
                q = e.meas[a]
                if q >= 0:
                    e.H[a * nx + c] = (e.g1[q] - e.g0[q]) / d
            e.xp[c] = x[c]
    for a in range(nz):
        q = e.meas[a]
        if q < 0:
            s = -q - 1
            e.zhat[a] = x[s]
            e.H[a * nx + s] = 1.0


def ekf_run(model, const double[::1] p, const long long[::1] meas, const double[:, ::1] Q,
            const double[:, ::1] R, double max_step, double[::1] x, double[:, ::1] P,
            double[::1] u_hold, double[::1] clock, const double[::1] t, const double[:, ::1] z,
            const double[:, ::1] u, double[:, ::1] out_x, double[:, ::1] out_std,
            double[:, ::1] out_innov, double[:, ::1] out_svar, double[::1] out_nis,
            long long[::1] out_dof, double[:, :, ::1] out_P=None):
    """Continuous-discrete EKF over a batch (see ``_estimate_py.ekf_run``)."""
    cdef CompiledFns fns = model._compiled
    cdef _Ekf e
    cdef Py_ssize_t nx = fns.fns.nx, nz = meas.shape[0], nu = u_hold.shape[0]
    cdef Py_ssize_t ny = fns.fns.ny
    cdef Py_ssize_t T = z.shape[0], k, a
    cdef Py_ssize_t bad = -1
    cdef double tk, tprev
    cdef bint any_measured, outputs_measured
    cdef double* Pout = NULL
    cdef double* w
    cdef double* uk
    cdef const double* zk
    if T == 0:
        return -1
    if out_P is not None:
        Pout = &out_P[0, 0, 0]
    e.m = &fns.fns
    e.nx = nx
    e.nz = nz
    e.p = &p[0] if p.shape[0] else NULL
    e.meas = &meas[0]
    e.Q = &Q[0, 0]
    e.R = &R[0, 0]
    e.max_step = max_step
    w = _alloc(4 * nx * nx + 2 * nu + nz + nz * nx + 2 * ny + nx + 8 * nx
               + _update_work(nx, nz))
    e.J = w
    e.F = e.J + nx * nx
    e.T1 = e.F + nx * nx
    e.T2 = e.T1 + nx * nx
    e.uprop = e.T2 + nx * nx
    uk = e.uprop + nu
    e.zhat = uk + nu
    e.H = e.zhat + nz
    e.g0 = e.H + nz * nx
    e.g1 = e.g0 + ny
    e.xp = e.g1 + ny
    e.step = e.xp + nx
    e.upd = e.step + 8 * nx
    with nogil:
        for a in range(nu):
            uk[a] = u_hold[a]
        tprev = clock[0]
        for k in range(T):
            tk = t[k]
            if tprev == tprev and tk > tprev:
                # zero-order hold: the previous step's inputs act over the interval
                memcpy(e.uprop, uk, nu * sizeof(double))
                _propagate(&e, tprev, tk - tprev, &x[0], &P[0, 0], e.uprop)
            tprev = tk
            _hold(&u[k, 0] if nu else NULL, uk, nu)
            zk = &z[k, 0]
            any_measured = False
            outputs_measured = False
            for a in range(nz):
                if _isfinite(zk[a]):
                    any_measured = True
                    if meas[a] >= 0:
                        outputs_measured = True
            if any_measured:
                _measurement(&e, tk, &x[0], uk, outputs_measured)
            if _update(nx, nz, &x[0], &P[0, 0], zk, e.zhat, e.H, e.R, &out_innov[k, 0],
                       &out_svar[k, 0], &out_nis[k], &out_dof[k], e.upd) != 0:
                bad = k
            _record(nx, &x[0], &P[0, 0], &out_x[k, 0], &out_std[k, 0],
                    Pout + k * nx * nx if Pout != NULL else NULL)
            if bad < 0 and not _state_finite(&x[0], &P[0, 0], nx):
                bad = k
            if bad >= 0:
                break
        clock[0] = tprev
        for a in range(nu):
            u_hold[a] = uk[a]
    free(w)
    return bad
