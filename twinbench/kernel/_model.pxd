from twinbench.kernel._typedefs cimport ModelFns, model_fn

cdef class CompiledFns:
    """Holds the C function pointers of one model (read from PyCapsules) and keeps their owner alive."""
    cdef ModelFns fns
    cdef object _keepalive
