"""``python -m twinbench`` is the ``twinbench`` command."""

from __future__ import annotations

import sys

from twinbench.cli import main

sys.exit(main())
