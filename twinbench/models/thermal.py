r"""Building thermal zone: a two-node RC network (TiTe) with HVAC, solar and internal gains.

States
------
=========================  ==  ==============================================================
``air_temperature``        K   :math:`T_i`, indoor air and the light contents in contact with it
``envelope_temperature``   K   :math:`T_e`, the building envelope's thermal mass
=========================  ==  ==============================================================

Inputs: ``outdoor_temperature`` (K), ``hvac_power`` (W of heat delivered to the air: positive
heating, negative cooling), ``solar_irradiance`` (W/m2, global on the facade/glazing),
``internal_gains`` (W: occupants, lighting, equipment).

Equations
---------
The grey-box "TiTe" model of Bacher & Madsen (2011), the same lumped-capacitance idea as the
ISO 13790 (now ISO 52016-1) simple hourly method's 5R1C network with the air node given its own
capacity:

.. math::
    C_i \dot T_i = \frac{T_e - T_i}{R_{ie}} + \frac{T_o - T_i}{R_{ia}} + \Phi_h + \Phi_{int}
                   + f_s A_w I_s

    C_e \dot T_e = \frac{T_i - T_e}{R_{ie}} + \frac{T_o - T_e}{R_{ea}} + (1 - f_s) A_w I_s

:math:`R_{ie}`: interior surface convection and radiation; :math:`R_{ea}`: the opaque envelope
to outdoors; :math:`R_{ia}`: windows, infiltration and ventilation (no mass); :math:`A_w`:
effective solar aperture (glazed area times g-value and shading); :math:`f_s`: share of solar
gain released to the air. The model is linear, so energy is conserved exactly:

.. math::
    \frac{d}{dt}(C_i T_i + C_e T_e) = \Phi_h + \Phi_{int} + A_w I_s - \Phi_{loss}, \qquad
    \Phi_{loss} = \frac{T_i - T_o}{R_{ia}} + \frac{T_e - T_o}{R_{ea}}

Outputs: ``room_temperature`` (degC, the air-temperature sensor) and ``heat_loss`` (W,
:math:`\Phi_{loss}`).

Defaults: a 100 m2 well-insulated dwelling. :math:`C_i` = 2 MJ/K (air plus furniture), :math:`C_e`
= 15 MJ/K (ISO 13790 "medium" class, 150 kJ/(m2 K) of floor), :math:`1/R_{ie}` = 900 W/K (3.0
W/(m2 K) on 300 m2 of interior surface), :math:`1/R_{ea}` = 150 W/K, :math:`1/R_{ia}` = 60 W/K
(windows plus 0.5 air changes an hour of 250 m3), :math:`A_w` = 4 m2. Time constants: 31 min (air)
and 23 h (building); with 2.8 kW of heating and 300 W of internal gains at 5 °C outdoors the zone
settles at 21.4 °C, the default initial state. The two time constants differ by a factor of 44:
the zone is stiff for hourly steps, where ``method="ros2"`` is the right integrator.

References
----------
.. [1] P. Bacher, H. Madsen, "Identifying suitable models for the heat dynamics of buildings",
   *Energy and Buildings* 43 (2011) 1511-1522.
.. [2] ISO 13790:2008 Energy performance of buildings - Calculation of energy use for space
   heating and cooling (simple hourly method, §C.2; superseded by ISO 52016-1:2017).
.. [3] G. Reynders, J. Diriken, D. Saelens, "Quality of grey-box models and identified parameters
   as function of the accuracy of input and observation signals", *Energy and Buildings* 82
   (2014) 263-274.
"""

from __future__ import annotations

from twinbench.kernel import Model, Variable
from twinbench.models import _thermal_py
from twinbench.models._build import build_model

__all__ = ["thermal_zone", "STATES", "INPUTS", "PARAMS", "OUTPUTS"]

STATES = (
    Variable("air_temperature", "K", 294.5894, "indoor air temperature"),
    Variable("envelope_temperature", "K", 292.2409, "envelope thermal-mass temperature"),
)

INPUTS = (
    Variable("outdoor_temperature", "K", 278.15, "outdoor air temperature"),
    Variable("hvac_power", "W", 2800.0, "heat delivered by HVAC (negative: cooling)"),
    Variable("solar_irradiance", "W/m2", 0.0, "global solar irradiance on the glazing"),
    Variable("internal_gains", "W", 300.0, "heat from occupants, lighting and equipment"),
)

PARAMS = (
    Variable("air_capacitance", "J/K", 2.0e6, "heat capacity of air and furniture (C_i)"),
    Variable("envelope_capacitance", "J/K", 1.5e7, "heat capacity of the envelope (C_e)"),
    Variable("interior_resistance", "K/W", 1.0 / 900.0, "air-to-envelope resistance (R_ie)"),
    Variable("envelope_resistance", "K/W", 1.0 / 150.0, "envelope-to-outdoor resistance (R_ea)"),
    Variable("ventilation_resistance", "K/W", 1.0 / 60.0,
             "air-to-outdoor resistance: windows, infiltration, ventilation (R_ia)"),
    Variable("solar_aperture", "m2", 4.0, "effective solar aperture (A_w)"),
    Variable("solar_air_fraction", "1", 0.5, "share of solar gain released to the air"),
)

OUTPUTS = (
    Variable("room_temperature", "degC", 0.0, "room air temperature (sensor)"),
    Variable("heat_loss", "W", 0.0, "heat flow to outdoors"),
)

REFERENCES = (
    "P. Bacher, H. Madsen, Identifying suitable models for the heat dynamics of buildings, "
    "Energy and Buildings 43 (2011) 1511-1522",
    "ISO 13790:2008 Energy performance of buildings - Calculation of energy use for space "
    "heating and cooling (superseded by ISO 52016-1:2017)",
    "G. Reynders, J. Diriken, D. Saelens, Quality of grey-box models and identified parameters "
    "as function of the accuracy of input and observation signals, Energy and Buildings 82 "
    "(2014) 263-274",
)


def thermal_zone(**defaults: float) -> Model:
    """A building thermal zone: two-node RC network with HVAC, solar and internal gains.

    Parameters
    ----------
    **defaults : float
        New defaults for any state (initial value), input or parameter, by name.

    Returns
    -------
    Model
        States ``air_temperature``, ``envelope_temperature``; see
        :mod:`twinbench.models.thermal` for equations, units and sources.

    Examples
    --------
    >>> from twinbench.models import thermal_zone
    >>> zone = thermal_zone()
    >>> ds = zone.simulate(duration=6 * 3600.0, dt=600.0, inputs={"hvac_power": 0.0},
    ...                    method="ros2")
    >>> bool(ds.room_temperature[-1] < ds.room_temperature[0])   # heating off: it cools
    True
    """
    return build_model("thermal_zone", _thermal_py, "twinbench.models._thermal",
                       states=STATES, inputs=INPUTS, params=PARAMS, outputs=OUTPUTS,
                       references=REFERENCES, defaults=defaults,
                       description=("Building thermal zone: two-node (air, envelope) RC "
                                    "network with HVAC power, solar and internal gains."))
