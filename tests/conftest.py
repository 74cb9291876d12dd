"""Shared test configuration."""

from __future__ import annotations

import os

from hypothesis import settings

# In CI, property tests draw the same examples every run (a failure there is reproducible, never
# a one-off) and are not timed per example on a shared machine.
settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")
