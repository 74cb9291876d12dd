r"""Wind-turbine drivetrain with speed control and a wearing gearbox bearing (NREL 5 MW numbers).

States
------
================  ======  ===============================================================
``rotor_speed``   rad/s   :math:`\Omega`, low-speed-shaft (rotor) speed
``pitch_demand``  degree  :math:`z`, the pitch controller's state; blade pitch is
                          :math:`\beta = \mathrm{softplus}(z) \ge 0`
``wear``          1       :math:`w`, gearbox high-speed bearing damage; 1 = ISO 10816-21
                          zone C/D for the gearbox at rated power
================  ======  ===============================================================

Inputs: ``wind_speed`` (m/s, hub height) and ``rotor_speed_setpoint`` (rpm; rated 12.1 rpm, lower
to derate).

Equations
---------
*Rotor aerodynamics (actuator disc with Heier's power-coefficient fit).* With tip-speed ratio
:math:`\lambda = \Omega R / V` and pitch :math:`\beta` in degrees,

.. math::
    C_p = 0.5176\left(\frac{116}{\lambda_i} - 0.4\beta - 5\right) e^{-21/\lambda_i}
          + 0.0068\lambda, \qquad
    \frac{1}{\lambda_i} = \frac{1}{\lambda + 0.08\beta} - \frac{0.035}{\beta^3 + 1}

(:math:`C_{p,max} = 0.48` at :math:`\lambda = 8.1`, :math:`\beta = 0`, close to the NREL 5 MW
rotor's 0.482 at 7.55) and aerodynamic torque :math:`T_a = \tfrac12 \rho \pi R^3 V^2
C_p/\lambda`. Floors :math:`V \to \sqrt{V^2 + 0.5^2}`, :math:`\lambda \to \sqrt{\lambda^2 +
0.1^2}` keep it finite in calm air and at standstill.

*Drivetrain (one rigid mass referred to the low-speed shaft, Jonkman et al. 2009 §5).* The
drivetrain's torsional mode (6 Hz) is left out: it is far above the control bandwidth and
would make the model stiff.

.. math::
    J\dot\Omega = T_a - T_g - c_f (1 + w)\Omega

with :math:`J = J_{rotor} + N^2 J_{gen}` and :math:`T_g` the generator torque referred to the
rotor (:math:`N` times the high-speed-shaft torque); worn bearings add friction.

*Generator torque schedule (Jonkman et al. 2009 §7.2, smoothed).* Region 2 tracks the optimal
tip-speed ratio, :math:`k\Omega^2` with :math:`k = \tfrac12\rho\pi R^5 C_{p,max}/\lambda_{opt}^3`;
region 2½ is a line rising to rated torque :math:`T_r` at the speed setpoint over a width
:math:`\Delta = 0.1\,\Omega_{rated}`; region 3 holds rated torque. Maxima and minima are the smooth
:math:`\max_\epsilon(a, b) = (a + b + \sqrt{(a-b)^2 + \epsilon^2})/2` with :math:`\epsilon =
0.02 T_r`, and the torque fades out below 0.05 rad/s:

.. math::
    T_g = \min\nolimits_\epsilon\!\left(\max\nolimits_\epsilon\!\left(k\Omega^2,\,
          T_r\left(1 + \frac{\Omega - \Omega_{set}}{\Delta}\right)\right),\, T_r\right)
          \frac{\Omega}{\sqrt{\Omega^2 + 0.05^2}}

*Pitch control (Jonkman et al. 2009 §7.4).* A gain-scheduled PI controller on generator-speed
error :math:`N(\Omega - \Omega_{set})` in velocity form, the pitch kept non-negative by a softplus
and the integrator held near zero below rated wind by a leak (anti-windup):

.. math::
    \dot z = \frac{180 N}{\pi}\,\frac{K_p\dot\Omega + K_i(\Omega - \Omega_{set})}
             {1 + \beta/\theta_K} - k_{aw}(z - \beta), \qquad
    \beta = 0.1\ln(1 + e^{z/0.1})

The pitch actuator (rate limit 8 deg/s) is taken as ideal.

*Bearing wear (ISO 281 life, Palmgren-Miner damage; exponential degradation as in Gebraeel et
al. 2005).* Load :math:`\ell = \sqrt{\ell_0^2 + (1 - \ell_0^2)(T_g/T_r)^2}` (1 at rated torque),
per-unit speed :math:`r = \Omega/\Omega_{rated}`:

.. math::
    \dot w = k_w |r|_\epsilon\, \ell^3 (1 + b\,w)

Outputs
-------
``generator_speed`` (rpm), ``generator_torque`` (N m, high-speed shaft), ``power`` (kW,
electrical: :math:`\eta_g T_g \Omega`), ``pitch`` (degree), ``tip_speed_ratio``,
``power_coefficient``, ``vibration`` (mm/s RMS at the gearbox, :math:`\sqrt{0.05^2 + (v_b r
\ell)^2 + (v_w w r \ell)^2}`: 1.5 mm/s healthy at rated, 5.6 mm/s at :math:`w = 1`, the ISO
10816-21 gearbox zone C/D boundary).

Defaults are the NREL 5 MW reference turbine: rotor radius 63 m, gearbox 97:1, rated 12.1 rpm and
43 093.55 N m generator torque, 94.4 % generator efficiency, rated wind 11.4 m/s, pitch gains
:math:`K_p = 0.01882681` s, :math:`K_i = 0.008068634`, :math:`\theta_K = 6.302336` deg.

References
----------
.. [1] J. Jonkman, S. Butterfield, W. Musial, G. Scott, "Definition of a 5-MW Reference Wind
   Turbine for Offshore System Development", NREL/TP-500-38060, 2009.
.. [2] S. Heier, *Grid Integration of Wind Energy Conversion Systems*, 2nd ed., Wiley, 2006
   (power-coefficient approximation).
.. [3] T. Burton, N. Jenkins, D. Sharpe, E. Bossanyi, *Wind Energy Handbook*, 2nd ed., Wiley,
   2011 (actuator disc, variable-speed control).
.. [4] ISO 10816-21:2015 Mechanical vibration - Horizontal axis wind turbines with gearbox.
.. [5] ISO 281:2007 Rolling bearings - Dynamic load ratings and rating life.
.. [6] N. Gebraeel et al., "Residual-life distributions from component degradation signals",
   *IIE Transactions* 37 (2005) 543-557.
"""

from __future__ import annotations

from twinbench.kernel import Model, Variable
from twinbench.models import _wind_py
from twinbench.models._build import build_model

__all__ = ["wind_turbine", "BEARING_FAULT_WEAR_RATE", "STATES", "INPUTS", "PARAMS", "OUTPUTS"]

#: A ``wear_rate`` (1/s) that takes a new bearing to the ISO 10816-21 zone C/D boundary in about a
#: day at rated power.
BEARING_FAULT_WEAR_RATE = 4e-6

STATES = (
    Variable("rotor_speed", "rad/s", 1.02733, "rotor (low-speed shaft) speed"),
    Variable("pitch_demand", "degree", -10.75, "pitch controller state (pitch = softplus)"),
    Variable("wear", "1", 0.0, "gearbox bearing damage (0 new, 1 at ISO 10816-21 zone C/D)"),
)

INPUTS = (
    Variable("wind_speed", "m/s", 8.0, "hub-height wind speed"),
    Variable("rotor_speed_setpoint", "rpm", 12.1, "rotor speed setpoint"),
)

PARAMS = (
    Variable("rotor_radius", "m", 63.0, "rotor radius"),
    Variable("air_density", "kg/m3", 1.225, "air density"),
    Variable("inertia", "kg m2", 4.3784723e7, "drivetrain inertia referred to the rotor"),
    Variable("gearbox_ratio", "1", 97.0, "generator speed / rotor speed"),
    Variable("rated_generator_torque", "N m", 43093.55, "rated torque at the generator"),
    Variable("rated_rotor_speed", "rpm", 12.1, "rated rotor speed"),
    Variable("generator_efficiency", "1", 0.944, "generator efficiency"),
    Variable("optimal_tip_speed_ratio", "1", 8.1, "tip-speed ratio of maximum Cp"),
    Variable("max_power_coefficient", "1", 0.48, "maximum power coefficient"),
    Variable("transition_width", "1", 0.1, "region 2.5 width / rated rotor speed"),
    Variable("pitch_proportional_gain", "s", 0.01882681, "pitch PI gain (rad per rad/s, HSS)"),
    Variable("pitch_integral_gain", "1", 0.008068634, "pitch PI integral gain (rad per rad, HSS)"),
    Variable("pitch_schedule_angle", "degree", 6.302336, "pitch at which the gains halve"),
    Variable("antiwindup_rate", "1/s", 1.0, "leak of the pitch integrator below zero pitch"),
    Variable("friction_coefficient", "N m s/rad", 1.6e4, "drivetrain viscous friction (LSS)"),
    Variable("wear_rate", "1/s", 2e-9, "bearing damage rate of a new bearing at rated duty"),
    Variable("wear_growth", "1", 5.0, "growth of the damage rate per unit damage"),
    Variable("static_load_ratio", "1", 0.4, "bearing load at zero torque / at rated torque"),
    Variable("vibration_base", "mm/s", 1.5, "gearbox vibration when new, at rated duty"),
    Variable("vibration_bearing", "mm/s", 5.4, "bearing-defect vibration at w = 1, rated duty"),
)

OUTPUTS = (
    Variable("generator_speed", "rpm", 0.0, "generator (high-speed shaft) speed"),
    Variable("generator_torque", "N m", 0.0, "generator torque"),
    Variable("power", "kW", 0.0, "electrical power"),
    Variable("pitch", "degree", 0.0, "blade pitch angle"),
    Variable("tip_speed_ratio", "1", 0.0, "tip-speed ratio"),
    Variable("power_coefficient", "1", 0.0, "rotor power coefficient"),
    Variable("vibration", "mm/s", 0.0, "gearbox vibration velocity RMS"),
)

REFERENCES = (
    "J. Jonkman et al., Definition of a 5-MW Reference Wind Turbine for Offshore System "
    "Development, NREL/TP-500-38060, 2009",
    "S. Heier, Grid Integration of Wind Energy Conversion Systems, 2nd ed., Wiley, 2006",
    "T. Burton et al., Wind Energy Handbook, 2nd ed., Wiley, 2011",
    "ISO 10816-21:2015 Mechanical vibration - Horizontal axis wind turbines with gearbox",
    "ISO 281:2007 Rolling bearings - Dynamic load ratings and rating life",
    "N. Gebraeel et al., Residual-life distributions from component degradation signals, "
    "IIE Transactions 37 (2005) 543-557",
)


def wind_turbine(**defaults: float) -> Model:
    """A variable-speed, pitch-regulated wind-turbine drivetrain with a wearing gearbox bearing.

    Parameters
    ----------
    **defaults : float
        New defaults for any state (initial value), input or parameter, by name.

    Returns
    -------
    Model
        States ``rotor_speed``, ``pitch_demand``, ``wear``; see :mod:`twinbench.models.wind` for
        equations, units and sources. The default initial state is the steady operating point
        at 8 m/s.

    Examples
    --------
    >>> from twinbench.models import wind_turbine
    >>> m = wind_turbine()
    >>> ds = m.simulate(duration=300.0, dt=0.1, inputs={"wind_speed": 16.0})
    >>> round(float(ds.rotor_speed[-1]) * 30 / 3.141592653589793, 1)   # held at 12.1 rpm
    12.1
    """
    return build_model("wind_turbine", _wind_py, "twinbench.models._wind",
                       states=STATES, inputs=INPUTS, params=PARAMS, outputs=OUTPUTS,
                       references=REFERENCES, defaults=defaults,
                       description=("Variable-speed pitch-regulated wind-turbine drivetrain "
                                    "(one mass) with torque and pitch control and a wearing "
                                    "gearbox bearing."))
