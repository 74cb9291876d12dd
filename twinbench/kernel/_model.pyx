"""Turn PyCapsules that carry C model functions into a struct the kernel can call without the GIL."""

from cpython.pycapsule cimport PyCapsule_IsValid, PyCapsule_GetPointer, PyCapsule_GetName

from twinbench.kernel._typedefs cimport ModelFns, model_fn

CAPSULE_NAME = "twinbench.model_fn"
cdef const char* _NAME = b"twinbench.model_fn"


cdef model_fn _fn_from(object capsule, str what) except? NULL:
    if capsule is None:
        return NULL
    if not PyCapsule_IsValid(capsule, _NAME):
        raise TypeError(
            f"{what}: expected a PyCapsule named {CAPSULE_NAME!r} holding a C function "
            "void f(double t, const double* x, const double* u, const double* p, double* out, "
            "Py_ssize_t n, Py_ssize_t ld, void* ctx) noexcept nogil "
            f"(see twinbench.kernel.model_capsule), got {type(capsule).__name__}"
        )
    return <model_fn>PyCapsule_GetPointer(capsule, _NAME)


cdef class CompiledFns:
    """C entry points of a model, built from capsules.

    Parameters
    ----------
    rhs, output, jacobian : PyCapsule or None
        Capsules named ``"twinbench.model_fn"``; ``output`` and ``jacobian`` may be None.
    nx, nu, np, ny : int
        Numbers of states, inputs, parameters and outputs.
    ctx : PyCapsule or None
        Optional capsule (any name) whose pointer is passed to every call as ``ctx``.
    keepalive : object
        Whatever owns the memory behind the pointers (kept referenced as long as this object).
    """

    def __init__(self, rhs, output, jacobian, Py_ssize_t nx, Py_ssize_t nu, Py_ssize_t np,
                 Py_ssize_t ny, ctx=None, keepalive=None):
        self.fns.rhs = _fn_from(rhs, "rhs")
        if self.fns.rhs == NULL:
            raise TypeError("rhs: a compiled model needs a right-hand side capsule, got None")
        self.fns.output = _fn_from(output, "output")
        self.fns.jacobian = _fn_from(jacobian, "jacobian")
        if ctx is not None:
            self.fns.ctx = PyCapsule_GetPointer(ctx, PyCapsule_GetName(ctx))
        else:
            self.fns.ctx = NULL
        if nx <= 0:
            raise ValueError(f"nx: expected a positive number of states, got {nx}")
        for name, value in (("nu", nu), ("np", np), ("ny", ny)):
            if value < 0:
                raise ValueError(f"{name}: expected a count >= 0, got {value}")
        self.fns.nx = nx
        self.fns.nu = nu
        self.fns.np = np
        self.fns.ny = ny
        self._keepalive = (rhs, output, jacobian, ctx, keepalive)

    @property
    def sizes(self):
        """``(nx, nu, np, ny)``: the sizes the kernel will use for buffers."""
        return (self.fns.nx, self.fns.nu, self.fns.np, self.fns.ny)

    @property
    def has_output(self):
        return self.fns.output != NULL

    @property
    def has_jacobian(self):
        return self.fns.jacobian != NULL


cdef extern from *:
    """
    static int twinbench_cpu_x86_64_v3(void) {
    #if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 12
        __builtin_cpu_init();
        return __builtin_cpu_supports("x86-64-v3") != 0;
    #else
        return -1;
    #endif
    }
    """
    int twinbench_cpu_x86_64_v3()


def cpu_x86_64_v3():
    """1 if this CPU runs x86-64-v3 code (AVX2, FMA, BMI1/2, ...), 0 if not, -1 if the compiler
    that built twinbench cannot tell."""
    return twinbench_cpu_x86_64_v3()
