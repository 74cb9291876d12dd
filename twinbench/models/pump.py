r"""Centrifugal pump driven by an induction motor on a V/f drive, with a wearing bearing.

The asset of the twinbench demo: the operator writes a speed setpoint (rpm) and a valve opening;
the plant publishes speed, flow, pressure, motor temperature, vibration RMS, current and power. A
bearing fault is accelerating wear (raise ``wear_rate``, e.g. to :data:`BEARING_FAULT_WEAR_RATE`).

States
------
=====================  ======  ==========================================================
``shaft_speed``        rad/s   :math:`\omega`, mechanical speed of the motor/pump shaft
``flow``               m3/s    :math:`Q`, volume flow through pump and pipe
``winding_temperature`` K      :math:`T_w`, stator winding (lumped motor) temperature
``wear``               1       :math:`w`, bearing damage; 0 new, 1 = ISO 10816-3 zone C/D
=====================  ======  ==========================================================

Inputs: ``speed_setpoint`` (rpm, the drive's synchronous-speed command), ``valve_opening``
(0-1, linear-characteristic discharge valve), ``ambient_temperature`` (K).

Equations
---------
Per-unit speed :math:`r = \omega/\omega_n`; smooth magnitudes :math:`|r|_\epsilon =
\sqrt{r^2 + 10^{-4}}` and :math:`Q|Q|_\epsilon = Q\sqrt{Q^2 + 10^{-8}}` keep the right-hand side
smooth at standstill and at zero flow (for the EKF and the Rosenbrock solver).

*Pump (affinity laws on a quadratic curve, Gülich 2014 §3.4 and §4.1).* Head and torque are
homogeneous of degree 2 in :math:`(\omega, Q)`, so they obey :math:`Q \propto n`, :math:`H
\propto n^2`, :math:`P \propto n^3` between similar operating points:

.. math::
    H = H_0 r^2 - h_2 Q|Q|_\epsilon, \qquad
    T_p = k_0 \omega^2 + k_1 \omega Q

with :math:`H_0` = ``shutoff_head_ratio`` :math:`\cdot H_{bep}`, :math:`h_2 = (H_0 -
H_{bep})/Q_{bep}^2`; :math:`k_0, k_1` put the shaft power at :math:`P_{bep} = \rho g Q_{bep}
H_{bep}/\eta_{bep}` at the best-efficiency point (BEP) and at ``shutoff_power_ratio``
:math:`\cdot P_{bep}` at zero flow (Gülich Fig. 4.6: 0.3-0.6 for low specific speeds). The
efficiency :math:`\rho g Q H / (T_p \omega)` then peaks near the BEP.

*Pipe (rigid-column fluid inertia, Wylie & Streeter 1993 ch. 1).* With inertance
:math:`I = L/(g A)`:

.. math::
    I \dot Q = H - H_{st} - \left(k_{pipe} + \frac{k_v}{v^2 + R_v^{-2}}\right) Q|Q|_\epsilon
               - \frac{k_{cv}}{2} Q\left(\sqrt{Q^2 + 10^{-10}} - Q\right)

for a control valve of linear inherent characteristic and rangeability :math:`R_v` (IEC
60534-2-1: the closed valve still passes :math:`1/R_v` of its full capacity, which keeps the
equation smooth) and a non-return valve whose last term is :math:`\approx k_{cv} Q|Q|` in reverse
flow and vanishes in forward flow. It matters only with a static head: then, below the speed at
which the pump's shut-off head equals the static head, the check valve closes (leaking a few
m3/h at the default :math:`k_{cv}`; a tighter valve makes the model stiffer) and the pump
churns. Closing is a sharp switch: integrate such runs with ``dt`` <= 0.25 s (``ros2``) or 0.1 s
(``rk4``). With the default closed circulation loop (no static head) the flow never reverses
and ``ros2`` is accurate at 1 s steps.

*Motor and drive (Krause et al. 2013 ch. 6; Fitzgerald & Kingsley 2003 ch. 6).* Under V/f
control the flux is constant and, in the normal operating region of the torque-slip curve, the
slip speed is proportional to torque: :math:`\omega_{sync} - \omega = \omega_{s,n} T_e/T_n`. The
drive ramps the synchronous speed to the setpoint at most at :math:`a = \omega_n/t_{ramp}` (its
acceleration ramp), approaching it with time constant :math:`\tau`; a smooth saturation
:math:`\mathrm{sat}(z) = z/\sqrt{1+z^2}` replaces the ramp's hard limit:

.. math::
    T_L = T_p + c_f (1 + w)\, \omega, \qquad
    \dot\omega = a\,\mathrm{sat}\!\left(\frac{\omega_{set} - \omega_{s,n} T_L/T_n - \omega}
    {a \tau}\right)

(bearing wear raises friction). The electromagnetic torque is :math:`T_e = T_L + J\dot\omega`.
Stator current (magnetising plus torque component): :math:`I_s = I_n \sqrt{i_0^2 + (1 -
i_0^2)(T_e/T_n)^2}`, where the drive switches the magnetising current :math:`i_0` off smoothly
when the setpoint goes to zero (:math:`i_0^2 \to i_0^2 s^2/(s^2 + 0.02^2)`, :math:`s =
\omega_{set}/\omega_n`). Losses: stator copper :math:`P_{cu} = P_{cu,20}\,(I_s/I_n)^2\,(1 +
\alpha (T_w - 293.15))`, rotor copper :math:`P_{rot} = (\omega_{sync} - \omega) T_e = \omega_{s,n}
T_e^2/T_n`, iron :math:`P_{fe} = P_{fe,n}(|r|_\epsilon + r^2)/2` (hysteresis :math:`\propto f`,
eddy currents :math:`\propto f^2`). Electrical input power :math:`P_{el} = T_e\omega + P_{rot}
+ P_{cu} + P_{fe}`.

*Winding temperature (one-body thermal model, IEC 60034-1 thermal classes; Boglietti et al.
2009).* A shaft-mounted fan cools a TEFC motor less at low speed:

.. math::
    C_{th} \dot T_w = P_{cu} + P_{rot} + P_{fe} - G_n (g_0 + (1 - g_0)|r|_\epsilon)(T_w - T_a)

*Bearing wear (ISO 281 life, Palmgren-Miner damage; exponential degradation as in Gebraeel et
al. 2005).* Rolling-bearing life in revolutions scales as :math:`(C/P)^3`, so damage per second
scales as :math:`n P^3`; a spall, once started, grows faster the larger it is:

.. math::
    \dot w = k_w |r|_\epsilon\, \ell^3 (1 + b\, w), \qquad
    \ell = \ell_0 + (1 - \ell_0)\left(r^2 + k_{off}(Q/Q_{bep} - r)^2\right)

:math:`\ell` is the bearing load relative to rated: a static part (weight, preload) plus the
hydraulic radial force, which scales with :math:`n^2` and grows away from the BEP (Stepanoff's
radial-thrust law, Gülich §9.3).

Outputs
-------
``speed`` (rpm), ``flow_rate`` (m3/h), ``total_head`` (m), ``pressure`` (bar, pump differential
pressure :math:`\rho g H`), ``motor_temperature`` (degC), ``vibration`` (mm/s RMS velocity),
``current`` (A), ``power`` (kW electrical). Vibration adds the rotor (unbalance) part, the
hydraulic part off the BEP and the bearing-defect part in quadrature (ISO 10816-3 velocity RMS):

.. math::
    v = \sqrt{v_f^2 + (v_b r^2)^2 + (v_h (Q/Q_{bep} - r))^2 + (v_w\, w^+ r\, \ell)^2},
    \qquad w^+ = \tfrac12\left(w + \sqrt{w^2 + \epsilon_w^2}\right),\ \epsilon_w = 0.1

The defect part scales with the size of the defect, which cannot be negative, so it takes a
smooth positive part :math:`w^+` of the damage rather than :math:`w` itself. With :math:`w`
the vibration was an even function of the damage with zero slope at :math:`w = 0`: a new
bearing told an estimator nothing about the sign of the damage, and an extended Kalman filter
estimating the unmeasured wear from vibration could settle on the unphysical branch :math:`w
< 0` (it did: -0.78 for a true 0.80). With :math:`w^+` the vibration rises strictly with
:math:`w` everywhere (about 0.4 mm/s per unit of damage at :math:`w = 0`) and a negative
damage reads as a new bearing. The price is a new bearing's defect part :math:`v_w \epsilon_w
/ 2` in quadrature: 1.19 instead of 1.17 mm/s at the default operating point; for :math:`w \ge
0.5`, :math:`w^+` is within 1 % of :math:`w`.

Defaults: a 15 kW, 2-pole, 2950 rpm IE3 motor and an end-suction pump with its BEP at 108 m3/h
and 32 m (specific speed :math:`n_q \approx 30`), in a closed circulation loop (no static head,
as in cooling-water and HVAC circuits where variable-speed pumps are the norm) of 250 m of DN150
pipe with a control valve half open: the default operating point is near the BEP. A new
pump vibrates at 1.2 mm/s (ISO 10816-3 group 2 zone A); :math:`w = 1` brings it to 4.5 mm/s (zone
C/D boundary). With the default ``wear_rate`` the bearing reaches :math:`w = 1` after about three
years at the BEP; :data:`BEARING_FAULT_WEAR_RATE` makes it a matter of a day, ten times that a
few hours.

References
----------
.. [1] J. F. Gülich, *Centrifugal Pumps*, 3rd ed., Springer, 2014 (affinity laws §3.4, pump
   characteristics ch. 4, radial forces §9.3).
.. [2] P. Krause, O. Wasynczuk, S. Sudhoff, S. Pekarek, *Analysis of Electric Machinery and
   Drive Systems*, 3rd ed., Wiley-IEEE, 2013 (induction machine, V/f operation).
.. [3] E. B. Wylie, V. L. Streeter, *Fluid Transients in Systems*, Prentice Hall, 1993.
.. [4] ISO 281:2007 Rolling bearings - Dynamic load ratings and rating life.
.. [5] ISO 10816-3:2009 Mechanical vibration - Evaluation of machine vibration by measurements
   on non-rotating parts - Part 3: Industrial machines with nominal power above 15 kW.
.. [6] N. Gebraeel, M. Lawley, R. Li, J. Ryan, "Residual-life distributions from component
   degradation signals: a Bayesian approach", *IIE Transactions* 37 (2005) 543-557.
.. [7] A. Boglietti, A. Cavagnino, D. Staton, M. Shanel, M. Mueller, C. Mejuto, "Evolution and
   modern approaches for thermal analysis of electrical machines", *IEEE Trans. Ind. Electron.*
   56 (2009) 871-882.
"""

from __future__ import annotations

from twinbench.kernel import Model, Variable
from twinbench.models import _pump_py
from twinbench.models._build import build_model

__all__ = ["pump", "BEARING_FAULT_WEAR_RATE", "STATES", "INPUTS", "PARAMS", "OUTPUTS"]

#: A ``wear_rate`` (1/s) that takes a new bearing to the ISO 10816-3 zone C/D boundary in about a
#: day at the BEP: the plant's "bearing fault".
BEARING_FAULT_WEAR_RATE = 4e-6

STATES = (
    Variable("shaft_speed", "rad/s", 304.74, "shaft speed of motor and pump"),
    Variable("flow", "m3/s", 0.030141, "volume flow through the pump"),
    Variable("winding_temperature", "K", 359.0, "stator winding temperature"),
    Variable("wear", "1", 0.0, "bearing damage (0 new, 1 at ISO 10816-3 zone C/D)"),
)

INPUTS = (
    Variable("speed_setpoint", "rpm", 2950.0, "drive speed setpoint (synchronous speed)"),
    Variable("valve_opening", "1", 0.5, "discharge valve opening, 0 closed to 1 open"),
    Variable("ambient_temperature", "K", 298.15, "ambient air temperature at the motor"),
)

PARAMS = (
    Variable("rated_power", "W", 15e3, "motor rated shaft power"),
    Variable("rated_speed", "rpm", 2950.0, "motor rated speed (also the pump's design speed)"),
    Variable("rated_slip", "1", 1.0 / 60.0, "motor slip at rated torque"),
    Variable("rated_current", "A", 27.0, "motor rated stator current"),
    Variable("magnetizing_current_ratio", "1", 0.35, "no-load current / rated current"),
    Variable("copper_loss", "W", 380.0, "stator copper loss at rated current and 20 degC"),
    Variable("iron_loss", "W", 300.0, "iron loss at rated speed"),
    Variable("copper_temperature_coefficient", "1/K", 3.93e-3, "copper resistance coefficient"),
    Variable("thermal_capacitance", "J/K", 2.4e4, "heat capacity of the motor"),
    Variable("thermal_conductance", "W/K", 13.0, "motor-to-ambient conductance at rated speed"),
    Variable("standstill_cooling_ratio", "1", 0.3, "cooling at standstill / at rated speed"),
    Variable("inertia", "kg m2", 0.12, "moment of inertia of motor rotor and impeller"),
    Variable("friction_coefficient", "N m s/rad", 1.6e-3, "bearing and seal viscous friction"),
    Variable("ramp_time", "s", 10.0, "drive acceleration ramp, standstill to rated speed"),
    Variable("speed_time_constant", "s", 0.5, "time constant of the final approach to setpoint"),
    Variable("bep_flow", "m3/s", 0.03, "flow at the best-efficiency point, rated speed"),
    Variable("bep_head", "m", 32.0, "head at the best-efficiency point, rated speed"),
    Variable("bep_efficiency", "1", 0.78, "pump efficiency at the best-efficiency point"),
    Variable("shutoff_head_ratio", "1", 1.25, "head at zero flow / BEP head"),
    Variable("shutoff_power_ratio", "1", 0.45, "shaft power at zero flow / BEP shaft power"),
    Variable("density", "kg/m3", 998.0, "fluid density"),
    Variable("static_head", "m", 0.0, "static lift of the system"),
    Variable("pipe_length", "m", 250.0, "length of the discharge line"),
    Variable("pipe_diameter", "m", 0.15, "inner diameter of the discharge line"),
    Variable("pipe_loss_coefficient", "s2/m5", 6000.0, "pipe friction head / Q^2"),
    Variable("valve_loss_coefficient", "s2/m5", 7000.0, "head loss / Q^2 of the open valve"),
    Variable("valve_rangeability", "1", 50.0, "valve capacity fully open / at zero opening"),
    Variable("wear_rate", "1/s", 3.8e-9, "bearing damage rate of a new bearing at rated duty"),
    Variable("wear_growth", "1", 5.0, "growth of the damage rate per unit damage"),
    Variable("static_load_ratio", "1", 0.3, "bearing load at standstill / at rated duty"),
    Variable("off_design_load_factor", "1", 0.5, "radial-load growth away from the BEP"),
    Variable("vibration_base", "mm/s", 1.2, "vibration of the new pump at rated speed"),
    Variable("vibration_hydraulic", "mm/s", 1.5, "hydraulic vibration per unit flow off BEP"),
    Variable("vibration_bearing", "mm/s", 4.5, "bearing-defect vibration at w = 1, rated duty"),
    Variable("check_valve_loss_coefficient", "s2/m5", 1e7,
             "reverse-flow head loss / Q^2 of the check valve (0: no check valve)"),
)

OUTPUTS = (
    Variable("speed", "rpm", 0.0, "shaft speed (tachometer)"),
    Variable("flow_rate", "m3/h", 0.0, "flow rate (flowmeter)"),
    Variable("total_head", "m", 0.0, "pump total head"),
    Variable("pressure", "bar", 0.0, "pump differential pressure"),
    Variable("motor_temperature", "degC", 0.0, "stator winding temperature (PT100)"),
    Variable("vibration", "mm/s", 0.0, "bearing-housing vibration velocity RMS"),
    Variable("current", "A", 0.0, "motor stator current"),
    Variable("power", "kW", 0.0, "electrical input power"),
)

REFERENCES = (
    "J. F. Gülich, Centrifugal Pumps, 3rd ed., Springer, 2014",
    "P. Krause et al., Analysis of Electric Machinery and Drive Systems, 3rd ed., Wiley-IEEE, 2013",
    "E. B. Wylie, V. L. Streeter, Fluid Transients in Systems, Prentice Hall, 1993",
    "ISO 281:2007 Rolling bearings - Dynamic load ratings and rating life",
    "ISO 10816-3:2009 Mechanical vibration - Industrial machines above 15 kW",
    "N. Gebraeel et al., Residual-life distributions from component degradation signals, "
    "IIE Transactions 37 (2005) 543-557",
    "A. Boglietti et al., Evolution and modern approaches for thermal analysis of electrical "
    "machines, IEEE Trans. Ind. Electron. 56 (2009) 871-882",
)


def pump(**defaults: float) -> Model:
    """A centrifugal pump on an induction motor with a V/f drive and a wearing bearing.

    Parameters
    ----------
    **defaults : float
        New defaults for any state (initial value), input or parameter, by name.

    Returns
    -------
    Model
        States ``shaft_speed``, ``flow``, ``winding_temperature``, ``wear``; see
        :mod:`twinbench.models.pump` for equations, units and sources. The default initial
        state is the steady operating point at the default inputs with a new bearing (the
        winding temperature rounded). Its ``rhs``/``output``/``jacobian`` take the kernel
        parameters ``model.kernel_params(p)`` (rated torque, reciprocals of time constants...
        computed once per run), not the declared ones.

    Examples
    --------
    >>> from twinbench.models import pump
    >>> m = pump(valve_opening=1.0)
    >>> m.state_names
    ('shaft_speed', 'flow', 'winding_temperature', 'wear')
    >>> ds = m.simulate(duration=60.0, dt=0.05, inputs={"speed_setpoint": 2000.0})
    >>> 1900 < float(ds.speed[-1]) < 2000
    True
    """
    return build_model("pump", _pump_py, "twinbench.models._pump",
                       states=STATES, inputs=INPUTS, params=PARAMS, outputs=OUTPUTS,
                       references=REFERENCES, defaults=defaults,
                       description=("Centrifugal pump driven by an induction motor under V/f "
                                    "control, with pipe-flow inertia, winding temperature and "
                                    "bearing wear."))
