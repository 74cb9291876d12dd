"""Shared pieces of the benchmarks: timing, and the figure record printed as a table or JSON.

A figure is a dict with ``name``, ``value``, ``unit``, ``baseline`` (what it was compared with),
``ratio`` (higher is better) and ``target`` (the ratio the issue asks for, or None).
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from typing import Any

__all__ = ["figure", "best_time", "met"]


def figure(name: str, value: float | None, unit: str, baseline: str, ratio: float | None,
           target: float | None = None, **extra: Any) -> dict[str, Any]:
    """One benchmark figure. ``extra`` keys (e.g. ``baseline_value``) are kept for the record.
    ``value`` is None when the figure could not be measured (``extra["note"]`` says why)."""
    rec = {"name": name, "value": None if value is None else float(value), "unit": unit,
           "baseline": baseline,
           "ratio": None if ratio is None else float(ratio),
           "target": None if target is None else float(target)}
    rec.update(extra)
    return rec


def met(fig: dict[str, Any]) -> bool | None:
    """Whether a figure meets its target (None when it has no target)."""
    if fig.get("target") is None or fig.get("ratio") is None:
        return None
    return fig["ratio"] >= fig["target"]


def best_time(fn: Callable[[], Any], repeat: int = 5, min_time: float = 0.0) -> float:
    """Best wall time of ``repeat`` calls of ``fn`` (seconds). The minimum is the least noisy
    estimate on a shared machine. Keeps calling until ``min_time`` seconds have been spent."""
    best = float("inf")
    spent = 0.0
    i = 0
    gc_was = gc.isenabled()
    gc.disable()
    try:
        while i < repeat or spent < min_time:
            t0 = time.perf_counter()
            fn()
            dt = time.perf_counter() - t0
            best = min(best, dt)
            spent += dt
            i += 1
    finally:
        if gc_was:
            gc.enable()
    return best
