"""Sources: the data connection between equipment and the twin."""

from __future__ import annotations
