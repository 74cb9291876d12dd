"""The ensemble's output is allocated once: simulate() makes no copy of it."""

from __future__ import annotations

import tracemalloc

import numpy as np

from twinbench.kernel.linear import linear_model


def test_ensemble_output_is_allocated_once():
    m = linear_model([[0.0, 1.0], [-4.0, -0.2]], [[0.0], [1.0]], [[1.0, 0.0]],
                     inputs=[("u", "1")], outputs=[("y", "1")])
    n, steps = 20_000, 200
    m.simulate(steps=10, dt=0.01, x0={"x0": np.ones(n)})  # warm caches and imports
    tracemalloc.start()
    try:
        ds = m.simulate(steps=steps, dt=0.01, every=2, x0={"x0": np.linspace(0, 1, n)},
                        inputs={"u": 1.0})
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    output = sum(ds[v].nbytes for v in ("x0", "x1", "y"))
    assert output == 3 * (steps // 2 + 1) * n * 8
    # Everything else (inputs broadcast without copying, parameters, coordinates) is small.
    assert peak < output * 1.05 + 2 * 2**20, (peak, output)
    assert ds.x0.values.base is not None and ds.x0.values.base is ds.x1.values.base
