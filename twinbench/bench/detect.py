"""Benchmark: streaming detectors, compiled kernel vs its NumPy reference and vs 50 M samples/s.

For each detector (EWMA z-score, CUSUM, rolling statistics, persistence threshold, NIS
chi-square test) and two shapes of batch (2,000,000 samples x 1 channel, 250,000 x 8 channels),
the public ``update()`` is timed on one thread, validation and output allocation included. Two
figures each:

* samples/s of the compiled kernel, with ratio = speed-up over the NumPy reference
  (``backend="numpy"``, the same detector and data; timed on a shorter stretch of the same
  series and scaled per sample, since it loops over time in Python), target 20;
* the same samples/s against the issue's requirement: ratio = value / 50 M samples/s, target 1;
* for one channel, samples/s when ``update(..., out=previous_result)`` reuses the output arrays,
  against new arrays per batch (no target: it shows what allocation costs).

and one figure without a target against a baseline that is not a Python loop: the rolling
statistics against pandas' ``Series.rolling(100).mean()`` and ``.var()``.

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


def _feeder(det: Any, x: np.ndarray, t: np.ndarray, reuse: bool) -> Callable[[], Any]:
    """A call that feeds ``x`` to ``det`` (into the previous call's arrays if ``reuse``)."""
    persistence = type(det).__name__ == "PersistenceThreshold"
    last = [None]

    def call():
        kw = {"out": last[0]} if reuse and last[0] is not None else {}
        if persistence:
            # Times must not go back: start the stream again rather than timing an array
            # addition that shifts them.
            det.reset()
            r = det.update(x, t, **kw)
        else:
            r = det.update(x, **kw)
        last[0] = r
        return r

    return call


def _samples_per_s(name: str, backend: str, n: int, c: int, repeat: int,
                   reuse: bool = False) -> float:
    make = _detectors()[name]
    x, t = _data(name, n, c)
    det = make(backend)
    feed = _feeder(det, x, t, reuse)
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
            if c == 1:
                # The same with ``out=``: what the kernel does when no output memory has to be
                # allocated (and faulted in) for the batch.
                reused = _samples_per_s(name, "c", n, c, repeat, reuse=True)
                figs.append(figure(f"{name} {n:,} x {c}, compiled, out= buffers reused",
                                   reused / 1e6, "M samples/s", "new output arrays per batch",
                                   reused / fast, None, baseline_value=fast / 1e6))
    figs.append(_pandas_rolling_figure(shapes[0][0], repeat))
    return figs


def _pandas_rolling_figure(n: int, repeat: int) -> dict:
    """RollingStats against pandas' windowed mean and variance (Cython too, and vectorised):
    a baseline that is not a Python loop."""
    import pandas as pd

    x, _ = _data("RollingStats", n, 1)
    det = _detectors()["RollingStats"]("c")
    det.update(x)
    ours = best_time(lambda: det.update(x), repeat=repeat)
    s = pd.Series(x[:, 0])

    def with_pandas():
        r = s.rolling(100)
        return r.mean(), r.var()

    theirs = best_time(with_pandas, repeat=repeat)
    return figure(f"RollingStats {n:,} x 1, compiled (1 thread)", n / ours / 1e6, "M samples/s",
                  "pandas Series.rolling(100).mean() and .var()", theirs / ours, None,
                  baseline_value=n / theirs / 1e6)

