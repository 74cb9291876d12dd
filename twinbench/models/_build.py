"""What every built-in model factory does: pair the NumPy reference with the compiled form."""

from __future__ import annotations

from types import ModuleType

from twinbench.kernel import Model, Variable
from twinbench.kernel._check_build import pure_python

__all__ = ["build_model"]


def build_model(name: str, reference: ModuleType, compiled: str, *,
                states: tuple[Variable, ...], inputs: tuple[Variable, ...],
                params: tuple[Variable, ...], outputs: tuple[Variable, ...],
                description: str, references: tuple[str, ...],
                defaults: dict[str, float]) -> Model:
    """A built-in model.

    Parameters
    ----------
    reference : module
        The NumPy reference (``_x_py``): ``NX``, ``NU``, ``NP``, ``NY``, ``rhs``, ``output``,
        ``jacobian`` and, optionally, ``derive``.
    compiled : str
        Dotted name of the compiled module (``"twinbench.models._x"``) whose ``capsules()`` give
        the C form; the best variant for this CPU is imported.
    defaults : dict
        New defaults for states, inputs or parameters (the factory's keyword arguments).
    """
    declared = (len(states), len(inputs), len(params), len(outputs))
    implemented = (reference.NX, reference.NU, reference.NP, reference.NY)
    if declared != implemented:  # a development error: declarations and code out of step
        raise RuntimeError(f"{name}: declarations (nx, nu, np, ny) = {declared} do not match "
                           f"{reference.__name__} {implemented}")
    capsules = None
    if not pure_python():
        from twinbench.kernel._dispatch import compiled_module

        capsules = compiled_module(compiled).capsules()
    model = Model(name, states=states, inputs=inputs, params=params, outputs=outputs,
                  rhs=reference.rhs, output=reference.output, jacobian=reference.jacobian,
                  derive=getattr(reference, "derive", None), compiled=capsules,
                  description=description, references=references)
    return model.with_defaults(**defaults) if defaults else model
