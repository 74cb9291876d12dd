"""The simulated plant: the kernel's asset models in real time, served over OPC-UA and MQTT.

``twinbench plant`` (or :func:`run_plant`, or :class:`Plant` on your own event loop) runs the
pump, and a wind turbine if asked, and serves them:

- OPC-UA at ``opc.tcp://HOST:PORT/twinbench/plant`` (namespace ``urn:twinbench:plant``, index 2):
  ``ns=2;s=Pump1.<output>`` measurements (read-only Doubles with SourceTimestamp = simulated
  time), setpoints ``Pump1.speed_setpoint`` (0..3600 rpm), ``Pump1.valve_opening`` (0..1),
  ``Pump1.run`` (Boolean) range-checked (``BadOutOfRange``), ``Pump1.fault`` (String of fault
  specs), ``Pump1.sequence`` (UInt64 tick counter) and ``Pump1.true_wear`` (the hidden state,
  under ``Pump1.Truth``); ``Wind1`` likewise with ``rotor_speed_setpoint`` and ``wind_speed``;
  ``Bench.Tag0000``... for the I/O benchmark.
- MQTT telemetry ``plant/pump1/telemetry`` as JSON ``{"ts", "seq", <outputs>}``, commands on
  ``plant/pump1/command`` acknowledged on ``plant/pump1/ack``.
- ``--classroom N`` (:class:`Classroom`): N independent plants on consecutive OPC-UA ports, one
  per student, seeds ``seed + i``, MQTT topics ``plant/studentNN/pump1/...`` on one broker.
- ``--secure`` (``Plant(secure=True)``): OPC-UA SignAndEncrypt only with a user, and MQTT over
  TLS (``mqtts://``, a CA and server certificate generated in the state directory) with a
  password file; the password from ``TWINBENCH_PLANT_PASSWORD``, else generated and printed once.
- :class:`PlantProcess`: ``twinbench plant`` in a subprocess (benchmarks, tests, notebooks).
- Faults: ``bearing_wear[:factor]``, ``drift:<tag>:<rate/h>``, ``stuck:<tag>``,
  ``dropout:<tag>``, ``comm_loss[:seconds]``.

Nothing here imports a UI library; ``import twinbench`` does not import this package.
"""

from __future__ import annotations

from twinbench.plant._classroom import MAX_STUDENTS, Classroom
from twinbench.plant._faults import FAULT_KINDS, Fault, format_faults, parse_faults
from twinbench.plant._plant import Plant, run_plant
from twinbench.plant._process import PlantProcess

__all__ = ["FAULT_KINDS", "MAX_STUDENTS", "Classroom", "Fault", "Plant", "PlantProcess",
           "format_faults", "parse_faults", "run_plant"]
