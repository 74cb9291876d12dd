"""Asset models on the twinbench kernel.

Each factory returns a :class:`twinbench.kernel.Model` with a compiled (Cython) form and a NumPy
reference form, declared states, inputs, parameters and outputs with units, an analytic
Jacobian, and the equations and their sources in its module docstring. Keyword arguments
override declared defaults (initial states, inputs, parameters).

================  =====================================================  ========================
factory           asset                                                  module (equations)
================  =====================================================  ========================
``pump``          centrifugal pump, induction motor on a V/f drive,      :mod:`.pump`
                  pipe, winding temperature, bearing wear
``wind_turbine``  wind-turbine drivetrain, torque and pitch control,     :mod:`.wind`
                  gearbox bearing wear (NREL 5 MW)
``battery_cell``  lithium-ion cell: 2-RC equivalent circuit, state of    :mod:`.battery`
                  charge, temperature, capacity fade
``thermal_zone``  building thermal zone: 2R2C network with HVAC,         :mod:`.thermal`
                  solar and internal gains
================  =====================================================  ========================

Examples
--------
>>> from twinbench import models
>>> sorted(models.MODELS)
['battery_cell', 'pump', 'thermal_zone', 'wind_turbine']
>>> m = models.get("pump")(valve_opening=0.8)
>>> m.variable("valve_opening").default
0.8
"""

from __future__ import annotations

from collections.abc import Callable

from twinbench.kernel import Model
from twinbench.models.battery import battery_cell
from twinbench.models.pump import pump
from twinbench.models.thermal import thermal_zone
from twinbench.models.wind import wind_turbine

__all__ = [
    "MODELS",
    "get",
    "pump",
    "wind_turbine",
    "battery_cell",
    "li_ion_cell",
    "thermal_zone",
]

#: Alias of :func:`battery_cell`.
li_ion_cell = battery_cell

#: Registry: model name to factory.
MODELS: dict[str, Callable[..., Model]] = {
    "pump": pump,
    "wind_turbine": wind_turbine,
    "battery_cell": battery_cell,
    "thermal_zone": thermal_zone,
}


def get(name: str) -> Callable[..., Model]:
    """The factory registered under ``name``.

    Parameters
    ----------
    name : str
        One of the keys of :data:`MODELS`.

    Returns
    -------
    callable
        The factory; call it (with optional default overrides) to get a Model.

    Raises
    ------
    KeyError
        If no model has that name; the message lists the known names.

    Examples
    --------
    >>> from twinbench.models import get
    >>> get("thermal_zone")().state_names
    ('air_temperature', 'envelope_temperature')
    """
    if not isinstance(name, str):
        raise TypeError(f"name: expected a model name (str), got {type(name).__name__}")
    try:
        return MODELS[name]
    except KeyError:
        raise KeyError(f"name: unknown model {name!r}; known models: {sorted(MODELS)}") from None
