"""Benchmark: streaming detectors, compiled kernel vs its NumPy reference and vs 50 M samples/s.

For each detector (EWMA z-score, CUSUM, rolling statistics, persistence threshold, NIS
chi-square test) and two shapes of batch (2,000,000 samples x 1 channel, 250,000 x 8 channels),
the public ``update()`` is timed on one thread, validation and output allocation included. Two
figures each:

* samples/s of the compiled kernel, with ratio = speed-up over the NumPy reference
  (``backend="numpy"``, the same detector and data; timed on a shorter stretch of the same
  series and scaled per sample, since it loops over time in Python), target 20;
* the same samples/s against the issue's requirement: ratio = value / 50 M samples/s, target 1.

The data are Gaussian noise with 0.1 % missing samples (NaN); the persistence detector gets float
seconds as times, the NIS test chi-square(2) values with ``dof=2``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from twinbench.bench._common import best_time, figure

__all__ = ["run", "REQUIRED_SAMPLES_PER_S"]

#: The issue's throughput requirement per detector on one thread.
REQUIRED_SAMPLES_PER_S = 50e6

def _detectors() -> dict[str, Callable[[str], Any]]:
    """name -> factory(backend) of each benchmarked detector."""
    from twinbench.kernel.detect import (
        Cusum,
        EwmaZScore,
        NisChiSquare,
        PersistenceThreshold,
        RollingStats,
    )

    return {
        "EwmaZScore": lambda b: EwmaZScore(alpha=0.01, threshold=4.0, backend=b),
        "Cusum": lambda b: Cusum(k=0.5, h=5.0, warmup=100, backend=b),
        "RollingStats": lambda b: RollingStats(window=100, max_std=2.0, backend=b),
        "PersistenceThreshold": lambda b: PersistenceThreshold(level=2.0, duration=5.0,
                                                               backend=b),
        "NisChiSquare": lambda b: NisChiSquare(window=20, significance=0.05, dof=2, backend=b),
    }


def _data(name: str, n: int, c: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    if name == "NisChiSquare":
        x = rng.chisquare(2, size=(n, c))
    else:
        x = rng.normal(size=(n, c))
    x[rng.random((n, c)) < 0.001] = np.nan
    t = np.arange(n, dtype=np.float64) * 0.01
    return x, t


def _feeder(det: Any, x: np.ndarray, t: np.ndarray) -> Callable[[], Any]:
    """A call that feeds the next stretch of the stream (times keep increasing)."""
    if type(det).__name__ != "PersistenceThreshold":
        return lambda: det.update(x)
    span = t[-1] - t[0] + (t[1] - t[0] if len(t) > 1 else 1.0)
    offset = [0.0]

    def call():
        r = det.update(x, t + offset[0])
        offset[0] += span
        return r

    return call


def _samples_per_s(name: str, backend: str, n: int, c: int, repeat: int) -> float:
    make = _detectors()[name]
    x, t = _data(name, n, c)
    det = make(backend)
    feed = _feeder(det, x, t)
    if backend == "c":
        feed()  # allocate the state, build tables, fault the pages in
    seconds = best_time(feed, repeat=repeat)
    return n * c / seconds


def run(quick: bool = False) -> list[dict]:
    shapes = [(2_000_000, 1), (250_000, 8)] if not quick else [(200_000, 1), (25_000, 8)]
    ref_steps = 4_000 if not quick else 400     # time steps of the NumPy reference run
    repeat = 5 if not quick else 2
    figs = []
    for name in _detectors():
        for n, c in shapes:
            fast = _samples_per_s(name, "c", n, c, repeat)
            slow = _samples_per_s(name, "numpy", ref_steps, c, 1)
            label = f"{name} {n:,} x {c}, compiled (1 thread)"
            figs.append(figure(label, fast / 1e6, "M samples/s", "NumPy reference", fast / slow,
                               20, baseline_value=slow / 1e6))
            figs.append(figure(label, fast / 1e6, "M samples/s", "50 M samples/s requirement",
                               fast / REQUIRED_SAMPLES_PER_S, 1.0,
                               baseline_value=REQUIRED_SAMPLES_PER_S / 1e6))
    return figs

