"""Linear state-space models ``dx/dt = A x + B u``, ``y = C x + D u``, run entirely in the kernel."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from twinbench.kernel._check_build import pure_python
from twinbench.kernel.model import Model, Variable

__all__ = ["linear_model"]


def _matrix(value, name: str, shape: tuple[int, int]) -> np.ndarray:
    try:
        m = np.array(value, dtype=float, ndmin=2)
    except (TypeError, ValueError):
        raise TypeError(f"{name}: expected a numeric matrix, got {type(value).__name__}") from None
    if m.shape != shape:
        raise ValueError(f"{name}: expected shape {shape}, got {m.shape}")
    if not np.isfinite(m).all():
        raise ValueError(f"{name}: expected finite entries, found NaN or Inf")
    return m


def _names(decls, default_prefix: str, count: int, arg: str):
    if decls is None:
        return [Variable(f"{default_prefix}{i}") for i in range(count)]
    decls = list(decls)
    if len(decls) != count:
        raise ValueError(f"{arg}: expected {count} declarations to match the matrices, got {len(decls)}")
    return decls


def linear_model(A, B=None, C=None, D=None, *, states: Sequence | None = None,
                 inputs: Sequence | None = None, outputs: Sequence | None = None,
                 name: str = "linear", description: str = "") -> Model:
    """A continuous-time linear state-space model whose C form runs entirely in the kernel.

    Parameters
    ----------
    A : array_like, shape (nx, nx)
    B : array_like, shape (nx, nu), optional
    C : array_like, shape (ny, nx), optional (default: no outputs beyond the states)
    D : array_like, shape (ny, nu), optional (default zeros)
    states, inputs, outputs : sequence of Variable or tuple, optional
        Declarations (default names ``x0, x1, ...``, ``u0, ...``, ``y0, ...``).

    Returns
    -------
    Model

    Examples
    --------
    >>> from twinbench.kernel.linear import linear_model
    >>> m = linear_model([[0, 1], [-4, -0.4]], [[0], [1]], [[1, 0]],
    ...                  states=[("pos", "m"), ("vel", "m/s")], inputs=[("force", "N")],
    ...                  outputs=[("pos_measured", "m")])
    >>> ds = m.simulate(duration=1.0, dt=0.001, inputs={"force": 1.0})
    >>> float(ds.pos_measured[-1]) > 0
    True
    """
    A = np.array(A, dtype=float, ndmin=2)
    nx = A.shape[0]
    A = _matrix(A, "A", (nx, nx))
    nu = 0 if B is None else np.array(B, dtype=float, ndmin=2).shape[1]
    B = np.zeros((nx, 0)) if B is None else _matrix(B, "B", (nx, nu))
    ny = 0 if C is None else np.array(C, dtype=float, ndmin=2).shape[0]
    C = np.zeros((0, nx)) if C is None else _matrix(C, "C", (ny, nx))
    D = np.zeros((ny, nu)) if D is None else _matrix(D, "D", (ny, nu))

    def rhs(t, x, u, p):
        return np.einsum("rc,cn->rn", A, x) + np.einsum("rc,cn->rn", B, u)

    def output(t, x, u, p):
        return np.einsum("rc,cn->rn", C, x) + np.einsum("rc,cn->rn", D, u)

    def jacobian(t, x, u, p):
        return np.broadcast_to(A[:, :, None], (nx, nx, x.shape[1]))

    compiled = None
    if not pure_python():
        from twinbench.kernel._dispatch import compiled_module

        _linear = compiled_module("twinbench.kernel._linear")

        packed = np.concatenate([[nx, nu, ny], A.ravel(), B.ravel(), C.ravel(), D.ravel()])
        compiled = _linear.capsules(np.ascontiguousarray(packed))
    model = Model(
        name,
        states=_names(states, "x", nx, "states"),
        inputs=_names(inputs, "u", nu, "inputs"),
        outputs=_names(outputs, "y", ny, "outputs"),
        rhs=rhs,
        output=output if ny else None,
        jacobian=jacobian,
        compiled=compiled,
        description=description or f"linear state-space model ({nx} states, {nu} inputs, {ny} outputs)",
    )
    model.matrices = {"A": A, "B": B, "C": C, "D": D}
    return model
