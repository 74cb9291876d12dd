r"""Lithium-ion cell: two-RC equivalent circuit, state of charge, temperature, capacity fade.

States
------
===========================  =====  ========================================================
``soc``                      1      :math:`z`, state of charge (of the present capacity)
``charge_transfer_voltage``  V      :math:`v_1`, fast RC branch (charge transfer, double layer)
``diffusion_voltage``        V      :math:`v_2`, slow RC branch (solid-phase diffusion)
``temperature``              K      :math:`T`, lumped cell temperature
``capacity_fade``            1      :math:`q`, fraction of nominal capacity lost
===========================  =====  ========================================================

Inputs: ``current`` (A, positive = discharge, Plett's convention) and ``ambient_temperature`` (K).

Equations
---------
*Equivalent circuit (Plett 2015 ch. 2; Chen & Rincón-Mora 2006).* A series resistance and two
RC pairs; the usable capacity shrinks with fade:

.. math::
    \dot z = -\frac{I}{3600\, Q_n (1 - q)}, \qquad
    \dot v_k = \frac{I}{C_k} - \frac{v_k}{R_k C_k}\ (k = 1, 2), \qquad
    V = U(z, T) - v_1 - v_2 - I R_0

with open-circuit voltage (Chen & Rincón-Mora's fit, 2.65-4.10 V) and its entropic temperature
dependence :math:`\partial U/\partial T`:

.. math::
    U = -1.031 e^{-35 z} + 3.685 + 0.2156 z - 0.1178 z^2 + 0.3201 z^3
        + \frac{\partial U}{\partial T}(T - T_{ref})

All resistances follow Arrhenius and grow with fade (Schmalstieg et al. 2014 observe resistance
rising roughly in proportion to capacity loss):

.. math::
    R_k = R_{k,ref}\, \exp\!\left(\frac{E_R}{\mathcal R}\left(\frac1T - \frac1{T_{ref}}\right)
          \right)(1 + g_R\, q)

*Heat (Bernardi, Pawlikowski & Newman 1985), lumped thermal mass (Lin et al. 2014 use the same
for cylindrical cells' bulk temperature):*

.. math::
    \dot Q = I (U - V) - I T \frac{\partial U}{\partial T}, \qquad
    C_{th} \dot T = \dot Q - hA\,(T - T_a)

:math:`I(U - V) = I(v_1 + v_2 + I R_0)` is the irreversible (Joule and polarisation) heat, the
second term the reversible (entropic) heat.

*Capacity fade (Wang et al. 2011; Schmalstieg et al. 2014), in rate form.* Calendar ageing plus
ageing proportional to charge throughput, both Arrhenius-accelerated:

.. math::
    \dot q = \exp\!\left(-\frac{E_a}{\mathcal R}\left(\frac1T - \frac1{T_{ref}}\right)\right)
             \left(k_{cal} + k_{cyc} \frac{|I|_\epsilon}{2 \cdot 3600\, Q_n}\right)

:math:`k_{cyc}` is the fade per equivalent full cycle (:math:`2 Q_n` of throughput). The
published laws grow as :math:`t^{0.5}` and :math:`Ah^{0.55}`; their linear rate form is exact for
the slope at a given age and is what a twin re-estimates online. :math:`|I|_\epsilon = \sqrt{I^2 +
10^{-6}}` keeps the right-hand side smooth at rest.

Outputs: ``voltage`` (V, terminal), ``open_circuit_voltage`` (V), ``capacity`` (A h),
``heat`` (W), ``power`` (W, delivered; negative while charging).

Defaults: a 3 A h cylindrical (18650-size) cell: 25 mΩ series resistance, 10 mΩ / 1 s charge
transfer, 15 mΩ / 60 s diffusion, resistances doubling from 25 °C to about 0 °C (20 kJ/mol),
45 J/K and 0.05 W/K (natural convection, thermal time constant 15 min), 20 % capacity loss after
about ten years of storage at 25 °C or 1000 full cycles (ageing activation energy 31.7 kJ/mol,
Wang et al. 2011). The 1 s branch against the 15 min thermal time constant makes the model stiff:
integrate it with ``method="ros2"`` for steps longer than about a second.

References
----------
.. [1] G. L. Plett, *Battery Management Systems, Vol. I: Battery Modeling*, Artech House, 2015.
.. [2] M. Chen, G. A. Rincón-Mora, "Accurate electrical battery model capable of predicting
   runtime and I-V performance", *IEEE Trans. Energy Convers.* 21 (2006) 504-511.
.. [3] D. Bernardi, E. Pawlikowski, J. Newman, "A general energy balance for battery systems",
   *J. Electrochem. Soc.* 132 (1985) 5-12.
.. [4] J. Wang et al., "Cycle-life model for graphite-LiFePO4 cells", *J. Power Sources* 196
   (2011) 3942-3948.
.. [5] J. Schmalstieg, S. Käbitz, M. Ecker, D. U. Sauer, "A holistic aging model for
   Li(NiMnCo)O2 based 18650 lithium-ion batteries", *J. Power Sources* 257 (2014) 325-334.
.. [6] X. Lin et al., "A lumped-parameter electro-thermal model for cylindrical batteries",
   *J. Power Sources* 257 (2014) 1-11.
"""

from __future__ import annotations

from twinbench.kernel import Model, Variable
from twinbench.models import _battery_py
from twinbench.models._build import build_model

__all__ = ["battery_cell", "STATES", "INPUTS", "PARAMS", "OUTPUTS"]

STATES = (
    Variable("soc", "1", 0.9, "state of charge"),
    Variable("charge_transfer_voltage", "V", 0.0, "voltage across the fast RC branch"),
    Variable("diffusion_voltage", "V", 0.0, "voltage across the slow RC branch"),
    Variable("temperature", "K", 298.15, "cell temperature"),
    Variable("capacity_fade", "1", 0.0, "fraction of nominal capacity lost"),
)

INPUTS = (
    Variable("current", "A", 0.0, "cell current, positive when discharging"),
    Variable("ambient_temperature", "K", 298.15, "ambient temperature"),
)

PARAMS = (
    Variable("nominal_capacity", "A h", 3.0, "capacity of the new cell"),
    Variable("series_resistance", "ohm", 0.025, "ohmic resistance R0 at the reference temp."),
    Variable("charge_transfer_resistance", "ohm", 0.010, "fast-branch resistance R1"),
    Variable("charge_transfer_capacitance", "F", 100.0, "fast-branch capacitance C1"),
    Variable("diffusion_resistance", "ohm", 0.015, "slow-branch resistance R2"),
    Variable("diffusion_capacitance", "F", 4000.0, "slow-branch capacitance C2"),
    Variable("resistance_activation_energy", "J/mol", 2.0e4, "Arrhenius energy of resistances"),
    Variable("reference_temperature", "K", 298.15, "temperature of the reference values"),
    Variable("entropic_coefficient", "V/K", -1.0e-4, "dU/dT of the open-circuit voltage"),
    Variable("heat_capacity", "J/K", 45.0, "heat capacity of the cell"),
    Variable("cooling_conductance", "W/K", 0.05, "cell-to-ambient heat transfer h*A"),
    Variable("calendar_fade_rate", "1/s", 6.3e-10, "capacity fade rate at rest, ref. temp."),
    Variable("cycle_fade", "1", 2.0e-4, "capacity fade per equivalent full cycle"),
    Variable("aging_activation_energy", "J/mol", 3.17e4, "Arrhenius energy of ageing"),
    Variable("resistance_growth", "1", 1.0, "relative resistance rise per unit fade"),
)

OUTPUTS = (
    Variable("voltage", "V", 0.0, "terminal voltage"),
    Variable("open_circuit_voltage", "V", 0.0, "open-circuit voltage"),
    Variable("capacity", "A h", 0.0, "present capacity"),
    Variable("heat", "W", 0.0, "heat generated in the cell"),
    Variable("power", "W", 0.0, "electrical power delivered"),
)

REFERENCES = (
    "G. L. Plett, Battery Management Systems, Vol. I: Battery Modeling, Artech House, 2015",
    "M. Chen, G. A. Rincon-Mora, Accurate electrical battery model capable of predicting runtime "
    "and I-V performance, IEEE Trans. Energy Convers. 21 (2006) 504-511",
    "D. Bernardi, E. Pawlikowski, J. Newman, A general energy balance for battery systems, "
    "J. Electrochem. Soc. 132 (1985) 5-12",
    "J. Wang et al., Cycle-life model for graphite-LiFePO4 cells, J. Power Sources 196 (2011) "
    "3942-3948",
    "J. Schmalstieg et al., A holistic aging model for Li(NiMnCo)O2 based 18650 lithium-ion "
    "batteries, J. Power Sources 257 (2014) 325-334",
    "X. Lin et al., A lumped-parameter electro-thermal model for cylindrical batteries, "
    "J. Power Sources 257 (2014) 1-11",
)


def battery_cell(**defaults: float) -> Model:
    """A lithium-ion cell: equivalent circuit, state of charge, temperature and capacity fade.

    Parameters
    ----------
    **defaults : float
        New defaults for any state (initial value), input or parameter, by name.

    Returns
    -------
    Model
        States ``soc``, ``charge_transfer_voltage``, ``diffusion_voltage``, ``temperature``,
        ``capacity_fade``; see :mod:`twinbench.models.battery` for equations, units and sources.

    Examples
    --------
    >>> from twinbench.models import battery_cell
    >>> cell = battery_cell(soc=1.0)
    >>> ds = cell.simulate(duration=1800.0, dt=10.0, inputs={"current": 3.0}, method="ros2")
    >>> round(float(ds.soc[-1]), 3)                  # 1.5 A h of 3 A h drawn
    0.5
    """
    return build_model("battery_cell", _battery_py, "twinbench.models._battery",
                       states=STATES, inputs=INPUTS, params=PARAMS, outputs=OUTPUTS,
                       references=REFERENCES, defaults=defaults,
                       description=("Lithium-ion cell: two-RC equivalent circuit with "
                                    "Arrhenius resistances, lumped thermal model with "
                                    "Bernardi heat, and capacity fade."))
