"""Sources: the data connection between equipment and the twin.

:func:`connect` opens a live source by URL (``opc.tcp://``, ``mqtt://``, ``mqtts://``);
:func:`~twinbench.io.replay.replay` plays a recording back through the same interface.
"""

from __future__ import annotations

from twinbench.io._common import WriteRejected

__all__ = ["WriteRejected"]
