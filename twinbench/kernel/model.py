"""The model protocol: declared variables, right-hand side, outputs, and ``simulate``.

A model declares its **states**, **inputs**, **parameters** and **outputs** (each a
:class:`Variable` with a name, units, a default and a long name) and provides its right-hand side
``dx/dt = f(t, x, u, p)`` and output function ``y = g(t, x, u, p)``. It may provide them in
either or both of two forms:

NumPy form (vectorised over scenarios)
    ``rhs(t, x, u, p) -> dxdt`` where ``x`` has shape ``(nx, n)``, ``u`` ``(nu, n)``, ``p``
    ``(np, n)`` and the result ``(nx, n)``; ``output(t, x, u, p) -> (ny, n)``; optionally
    ``jacobian(t, x, u, p) -> (nx, nx, n)`` with ``J[r, c, i] = d f_r / d x_c``.
C form (compiled, run by the kernel without the GIL)
    PyCapsules named ``"twinbench.model_fn"`` holding C functions with the signature declared in
    ``twinbench/kernel/_typedefs.pxd``; see :func:`twinbench.kernel.cython_model`.

``Model.simulate`` runs the C form when the model has one (``backend="auto"``) and the NumPy form
otherwise; ``backend="numpy"`` forces the NumPy reference path, which tests use to check the two
agree.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

__all__ = [
    "Variable",
    "Model",
    "IntegrationError",
    "NonFiniteStateWarning",
    "DEFAULT_START",
    "cython_model",
]

#: Default start time of a simulation when none is given (UTC).
DEFAULT_START = np.datetime64("2000-01-01T00:00:00", "ns")

_METHODS = {"rk4": 0, "ros2": 1}


class IntegrationError(FloatingPointError):
    """A state became NaN or Inf during integration.

    Attributes
    ----------
    scenario : int
        Index of the (first) scenario in which it happened.
    time : float
        Elapsed simulation time (s) at the end of the step that produced it.
    step : int
        Index of that step.
    """

    def __init__(self, message: str, scenario: int, time: float, step: int):
        super().__init__(message)
        self.scenario = scenario
        self.time = time
        self.step = step


class NonFiniteStateWarning(RuntimeWarning):
    """Some scenarios of an ensemble produced NaN/Inf states (``on_nonfinite="warn"``)."""


@dataclass(frozen=True)
class Variable:
    """A declared model variable.

    Parameters
    ----------
    name : str
        Identifier used in inputs, parameters and result Datasets.
    units : str
        UDUNITS-style units string (``"rad/s"``, ``"K"``, ``"1"`` for dimensionless).
    default : float
        Default value (initial state, input value or parameter value).
    long_name : str
        Human-readable description, used as the CF ``long_name`` attribute.
    """

    name: str
    units: str = "1"
    default: float = 0.0
    long_name: str = ""

    def attrs(self) -> dict[str, str]:
        return {"units": self.units, "long_name": self.long_name or self.name}


def _as_variables(decls: Any, what: str) -> tuple[Variable, ...]:
    """Accept Variables, ``(name, units, default[, long_name])`` tuples, dicts or bare names."""
    if decls is None:
        return ()
    if isinstance(decls, (str, Variable, Mapping)):
        decls = [decls]
    out = []
    for d in decls:
        if isinstance(d, Variable):
            v = d
        elif isinstance(d, str):
            v = Variable(d)
        elif isinstance(d, Mapping):
            v = Variable(**d)
        elif isinstance(d, tuple) and 1 <= len(d) <= 4:
            v = Variable(*d)
        else:
            raise TypeError(
                f"{what}: expected Variable, name, (name, units, default[, long_name]) or dict, "
                f"got {d!r}"
            )
        if not v.name.isidentifier():
            raise ValueError(f"{what}: variable name {v.name!r} is not a valid identifier")
        if not math.isfinite(float(v.default)):
            raise ValueError(f"{what}: default of {v.name!r} must be finite, got {v.default!r}")
        out.append(replace(v, default=float(v.default)))
    names = [v.name for v in out]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise ValueError(f"{what}: duplicate names {sorted(dup)}")
    return tuple(out)


class Model:
    """A dynamical model ``dx/dt = f(t, x, u, p)``, ``y = g(t, x, u, p)``.

    Parameters
    ----------
    name : str
        Short model name (shown in Dataset attrs).
    states, inputs, params, outputs : sequence of Variable or tuple
        Declarations, in the order the functions index them.
    rhs, output, jacobian : callable, optional
        NumPy form (see module docstring). ``output`` may be omitted when there are no outputs.
    compiled : CompiledFns or mapping, optional
        C form: a :class:`twinbench.kernel._model.CompiledFns` or a mapping with capsules under
        ``"rhs"``, ``"output"``, ``"jacobian"`` and optionally ``"ctx"``.
    derive : callable, optional
        ``derive(p) -> pk``: maps the declared parameters ``(np, n)`` to the *kernel parameters*
        ``(nk, n)`` that both forms of ``rhs``/``output``/``jacobian`` then receive as ``p``.
        Use it to compute, once per simulation instead of at every step, everything that depends
        on parameters only (rated torque, reciprocals of time constants...): divisions inside
        the right-hand side are what limit the compiled kernel's speed. Without it, the
        functions receive the declared parameters.
    description : str
        One paragraph on what the model is.
    references : sequence of str
        Where the equations come from.

    Examples
    --------
    >>> import numpy as np
    >>> from twinbench.kernel import Model
    >>> decay = Model("decay", states=[("x", "1", 1.0)], params=[("k", "1/s", 0.5)],
    ...               rhs=lambda t, x, u, p: -p[0] * x)
    >>> ds = decay.simulate(duration=2.0, dt=0.01)
    >>> bool(abs(float(ds.x[-1]) - np.exp(-1.0)) < 1e-6)
    True
    """

    def __init__(
        self,
        name: str,
        *,
        states: Iterable,
        inputs: Iterable = (),
        params: Iterable = (),
        outputs: Iterable = (),
        rhs: Callable | None = None,
        output: Callable | None = None,
        jacobian: Callable | None = None,
        compiled: Any = None,
        derive: Callable | None = None,
        description: str = "",
        references: Iterable[str] = (),
    ):
        self.name = str(name)
        self.states = _as_variables(states, "states")
        self.inputs = _as_variables(inputs, "inputs")
        self.params = _as_variables(params, "params")
        self.outputs = _as_variables(outputs, "outputs")
        if not self.states:
            raise ValueError("states: a model needs at least one state")
        all_names = [v.name for v in self.states + self.inputs + self.params + self.outputs]
        clash = {n for n in all_names if all_names.count(n) > 1}
        if clash:
            raise ValueError(f"variable names must be unique across states, inputs, params and "
                             f"outputs; repeated: {sorted(clash)}")
        if rhs is not None and not callable(rhs):
            raise TypeError(f"rhs: expected a callable, got {type(rhs).__name__}")
        if self.outputs and rhs is not None and output is None:
            raise ValueError("output: the model declares outputs, so its NumPy form needs an "
                             "output function")
        self.rhs = rhs
        self.output = output
        self.jacobian = jacobian
        self.description = description
        self.references = tuple(references)
        if derive is not None and not callable(derive):
            raise TypeError(f"derive: expected a callable, got {type(derive).__name__}")
        self.derive = derive
        self._nk = self.np if derive is None else self._kernel_params_of_defaults().shape[0]
        self._compiled = self._make_compiled(compiled)
        if self.rhs is None and self._compiled is None:
            raise ValueError("a model needs a right-hand side: pass rhs= (NumPy) and/or compiled= (C)")

    # -- declarations -------------------------------------------------------------------------
    @property
    def nx(self) -> int:
        return len(self.states)

    @property
    def nu(self) -> int:
        return len(self.inputs)

    @property
    def np(self) -> int:
        return len(self.params)

    @property
    def ny(self) -> int:
        return len(self.outputs)

    @property
    def state_names(self) -> tuple[str, ...]:
        return tuple(v.name for v in self.states)

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(v.name for v in self.inputs)

    @property
    def param_names(self) -> tuple[str, ...]:
        return tuple(v.name for v in self.params)

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(v.name for v in self.outputs)

    @property
    def has_compiled(self) -> bool:
        return self._compiled is not None

    @property
    def has_numpy(self) -> bool:
        return self.rhs is not None

    def _kernel_params_of_defaults(self) -> np.ndarray:
        return self.kernel_params(np.array([[v.default] for v in self.params]).reshape(self.np, 1))

    def kernel_params(self, p: np.ndarray) -> np.ndarray:
        """The parameters the model functions receive: ``derive(p)``, or ``p`` itself.

        Parameters
        ----------
        p : ndarray, shape (np, n)
            Declared parameters, one column per scenario.

        Returns
        -------
        ndarray, shape (nk, n), C-contiguous float64
        """
        p = np.asarray(p, dtype=float)
        if self.derive is None:
            return np.ascontiguousarray(p)
        with np.errstate(all="ignore"):
            pk = np.ascontiguousarray(np.asarray(self.derive(p), dtype=float))
        if pk.ndim != 2 or pk.shape[1] != p.shape[1]:
            raise ValueError(f"derive: expected an array of shape (nk, {p.shape[1]}), got "
                             f"{pk.shape}")
        bad = ~np.isfinite(pk)
        if bad.any():
            scen = int(np.flatnonzero(bad.any(axis=0))[0])
            raise ValueError(f"params: the parameters of scenario {scen} give non-finite derived "
                             f"quantities in model {self.name!r} (e.g. a zero time constant or "
                             "rating); check the values")
        return pk

    def variable(self, name: str) -> Variable:
        """The declaration of ``name`` (state, input, parameter or output)."""
        for v in self.states + self.inputs + self.params + self.outputs:
            if v.name == name:
                return v
        raise KeyError(f"{self.name} has no variable {name!r}; it has "
                       f"{[v.name for v in self.states + self.inputs + self.params + self.outputs]}")

    def with_defaults(self, **values: float) -> Model:
        """A copy whose declared defaults (states, inputs, params) are replaced by ``values``."""
        new = object.__new__(Model)
        new.__dict__.update(self.__dict__)
        names = set(values)
        groups = {}
        for group in ("states", "inputs", "params"):
            decls = []
            for v in getattr(self, group):
                if v.name in values:
                    val = float(values[v.name])
                    if not math.isfinite(val):
                        raise ValueError(f"{v.name}: expected a finite number, got {values[v.name]!r}")
                    decls.append(replace(v, default=val))
                    names.discard(v.name)
                else:
                    decls.append(v)
            groups[group] = tuple(decls)
        if names:
            raise KeyError(f"with_defaults: unknown variables {sorted(names)} for model {self.name!r}")
        new.__dict__.update(groups)
        return new

    def __repr__(self) -> str:
        kinds = []
        if self.has_compiled:
            kinds.append("C")
        if self.has_numpy:
            kinds.append("NumPy")
        return (f"<Model {self.name!r} ({'+'.join(kinds)}): states={list(self.state_names)}, "
                f"inputs={list(self.input_names)}, params={list(self.param_names)}, "
                f"outputs={list(self.output_names)}>")

    # -- compiled form ----------------------------------------------------------------------------
    def _make_compiled(self, compiled: Any):
        if compiled is None:
            return None
        from twinbench.kernel._model import CompiledFns

        if isinstance(compiled, CompiledFns):
            fns = compiled
        elif isinstance(compiled, Mapping):
            unknown = set(compiled) - {"rhs", "output", "jacobian", "ctx", "keepalive"}
            if unknown:
                raise KeyError(f"compiled: unknown keys {sorted(unknown)}; expected rhs, output, "
                               "jacobian, ctx")
            fns = CompiledFns(compiled.get("rhs"), compiled.get("output"), compiled.get("jacobian"),
                              self.nx, self.nu, self._nk, self.ny, ctx=compiled.get("ctx"),
                              keepalive=compiled.get("keepalive"))
        else:
            raise TypeError(f"compiled: expected CompiledFns or a mapping of capsules, got "
                            f"{type(compiled).__name__}")
        expected = (self.nx, self.nu, self._nk, self.ny)
        if tuple(fns.sizes) != expected:
            raise ValueError(f"compiled: its sizes (nx, nu, np, ny) = {tuple(fns.sizes)} do not "
                             f"match the model's declarations {expected}")
        if self.ny and not fns.has_output:
            raise ValueError("compiled: the model declares outputs, so its C form needs an output "
                             "capsule")
        return fns

    # -- simulation -------------------------------------------------------------------------------
    def simulate(
        self,
        duration: float | None = None,
        dt: float = 0.01,
        *,
        steps: int | None = None,
        every: int = 1,
        x0: Mapping[str, Any] | None = None,
        inputs: Mapping[str, Any] | None = None,
        params: Mapping[str, Any] | None = None,
        scenarios: int | None = None,
        method: str = "rk4",
        backend: str = "auto",
        threads: int | None = None,
        start: Any = None,
        on_nonfinite: str = "raise",
    ):
        """Integrate the model over an ensemble of scenarios; return an ``xarray.Dataset``.

        Parameters
        ----------
        duration : float, optional
            Simulated time in seconds (``steps = round(duration / dt)``). Give this or ``steps``.
        dt : float
            Fixed step in seconds, > 0.
        steps : int, optional
            Number of steps (instead of ``duration``).
        every : int
            Sample states and outputs every ``every`` steps (the initial state is always sampled;
            ``steps`` must be a multiple of ``every``).
        x0, params : mapping of name to scalar or 1-D array of length ``scenarios``
            Initial states and parameters; missing names take the declared defaults.
        inputs : mapping of name to scalar, 1-D array of length ``steps`` (a time series shared by
            all scenarios), 2-D array ``(steps, scenarios)`` or ``(1, scenarios)``, or an
            ``xarray.DataArray`` with dims among ``("time", "scenario")``
            Piecewise-constant inputs: value ``k`` applies over step ``k``.
        scenarios : int, optional
            Ensemble size; inferred from the arrays when omitted (1 if all are scalars).
        method : {"rk4", "ros2"}
            Classical explicit Runge-Kutta 4, or the L-stable 2nd-order Rosenbrock method ROS2
            (Verwer et al. 1999) for stiff models.
        backend : {"auto", "c", "numpy"}
            ``"auto"`` runs the compiled kernel when the model has a C form.
        threads : int, optional
            OpenMP threads for the compiled kernel. Default: 1 for small ensembles, all cores for
            large ones (>= 4096 scenarios).
        start : datetime-like, optional
            UTC time of the initial state (default ``2000-01-01T00:00``).
        on_nonfinite : {"raise", "warn"}
            What to do when a state becomes NaN/Inf: raise :class:`IntegrationError`, or warn,
            keep the affected scenarios (NaN from that step on) and record ``nonfinite_step``.
            States are checked after every step; outputs are not (an output function may
            legitimately return NaN, e.g. for "not defined at standstill").

        Returns
        -------
        xarray.Dataset
            Data variables for every state and output (dims ``("time",)``, or ``("time",
            "scenario")`` for an ensemble) with ``units``/``long_name`` attrs, the applied inputs
            at the sample times, parameters per scenario, and an ``elapsed`` coordinate in seconds.
        """
        from twinbench.kernel._simulate import simulate

        return simulate(self, duration=duration, dt=dt, steps=steps, every=every, x0=x0,
                        inputs=inputs, params=params, scenarios=scenarios, method=method,
                        backend=backend, threads=threads, start=start, on_nonfinite=on_nonfinite)


def cython_model(
    name: str,
    rhs: Any,
    output: Any = None,
    jacobian: Any = None,
    *,
    states: Iterable,
    inputs: Iterable = (),
    params: Iterable = (),
    outputs: Iterable = (),
    numpy_rhs: Callable | None = None,
    numpy_output: Callable | None = None,
    description: str = "",
) -> Model:
    """A model whose right-hand side is a C function compiled by the user (e.g. in ``%%cython``).

    Each of ``rhs``, ``output`` and ``jacobian`` is a ``PyCapsule`` named ``"twinbench.model_fn"``
    holding a function with exactly this C signature::

        void f(double t, const double* x, const double* u, const double* p, double* out,
               Py_ssize_t n, Py_ssize_t ld, void* ctx) noexcept nogil

    The kernel calls it for a block of ``n`` scenarios. Element (variable ``j``, scenario ``i``)
    of ``x``, ``u``, ``p`` and ``out`` is at ``[j * ld + i]``; loop ``for i in range(n)``
    innermost so that the compiler vectorises. ``out`` receives ``dx/dt`` (rhs), the outputs
    (output) or the Jacobian ``[(r * nx + c) * ld + i] = d f_r / d x_c`` (jacobian).
    In Cython, make the capsule with::

        from cpython.pycapsule cimport PyCapsule_New
        rhs_capsule = PyCapsule_New(<void*> my_rhs, "twinbench.model_fn", NULL)

    ``numpy_rhs``/``numpy_output`` optionally give the same model in NumPy form, so that
    ``simulate(backend="numpy")`` can check the compiled one. See
    ``notebooks/custom_cython_model.ipynb`` for a worked example.

    Returns
    -------
    Model
    """
    compiled = {"rhs": rhs, "output": output, "jacobian": jacobian}
    return Model(name, states=states, inputs=inputs, params=params, outputs=outputs,
                 rhs=numpy_rhs, output=numpy_output, compiled=compiled, description=description)
