"""Benchmark: a pump twin (EKF + three detectors) keeping up with live data.

Data: the pump simulated at 600 measurement times per second (every 1/600 s), six measured tags
with sensor noise: 3,600 samples per second of equipment time, fed to :meth:`Twin.process` in
batches of 0.1 s, as a source would deliver them. Figure: the CPU time per sample
(``time.process_time``), and what share of one core 10,000 samples/s would take (the issue's
target: less than half a core). Next to it, the kernel alone on the same data (the EKF's
``filter_arrays`` and the three detectors, no mapping, no ring buffer), to show what the twin's
bookkeeping costs.
"""

from __future__ import annotations

import time

import numpy as np

from twinbench.bench._common import figure

__all__ = ["RATE", "run"]

RATE = 10_000  #: samples per second the twin must keep up with
MEASURED = ["speed", "flow_rate", "motor_temperature", "vibration", "current", "power"]
NOISE = {"speed": 2.0, "flow_rate": 1.0, "motor_temperature": 0.3, "vibration": 0.05,
         "current": 0.2, "power": 0.2}
Q = {"shaft_speed": 1e-2, "flow": 1e-9, "winding_temperature": 1e-4, "wear": 1e-6}


def _data(seconds: float, hz: float = 600.0):
    from twinbench.io.batch import Batch
    from twinbench.models import pump

    truth = pump().simulate(duration=seconds, dt=1.0 / hz, every=1,
                            start="2026-11-01T00:00:00")
    rng = np.random.default_rng(3)
    T = truth.sizes["time"]
    times = np.tile(truth.time.values[:, 0] if truth.time.ndim > 1 else truth.time.values,
                    len(MEASURED))
    tags = np.repeat(np.arange(len(MEASURED), dtype=np.int32), T)
    values = np.concatenate([truth[m].values.reshape(T) + rng.normal(0, NOISE[m], T)
                             for m in MEASURED])
    order = np.argsort(times, kind="stable")
    return Batch(tags[order], times[order], values[order], tags=MEASURED), hz


def _detectors():
    from twinbench.kernel.detect import Cusum, EwmaZScore, NisChiSquare

    return {"vibration": Cusum(k=0.5, h=8.0, warmup=100),
            "motor_temperature": EwmaZScore(alpha=0.01, threshold=6.0, warmup=100),
            "nis": NisChiSquare(window=100)}


def _twin_cpu(batch, hz: float) -> float:
    from twinbench.io.replay import replay
    from twinbench.models import pump
    from twinbench.twin import Twin

    twin = Twin(pump(), replay(batch.take(np.arange(6)).to_dataset(), speed=None),
                R={m: NOISE[m] ** 2 for m in MEASURED}, Q=Q, max_step=0.5,
                detectors=_detectors(), window=60.0)
    step = int(hz * 0.1) * len(MEASURED)  # 0.1 s of data per batch
    parts = [batch.take(np.arange(i, min(i + step, len(batch))))
             for i in range(0, len(batch), step)]
    twin.process(parts[0])  # warm-up: first-call costs are not steady state
    t0 = time.process_time()
    for part in parts[1:]:
        twin.process(part)
    cpu = time.process_time() - t0
    assert twin.stats["errors"] == 0, twin.stats
    return cpu / (len(batch) - len(parts[0]))


def _kernel_cpu(batch, hz: float) -> float:
    from twinbench.kernel.estimate import ExtendedKalmanFilter
    from twinbench.models import pump

    ekf = ExtendedKalmanFilter(pump(), Q=list(Q.values()), R=[NOISE[m] ** 2 for m in MEASURED],
                               measured=MEASURED, max_step=0.5)
    dets = _detectors()
    T = len(batch) // len(MEASURED)
    z = np.full((T, len(MEASURED)), np.nan)
    rows = np.repeat(np.arange(T), len(MEASURED))  # data are time-major, tags in order
    z[rows, batch.tag] = batch.value
    t = np.arange(T) / hz
    step = int(hz * 0.1)
    chunks = [slice(i, min(i + step, T)) for i in range(0, T, step)]

    def one(ch: slice) -> None:
        res = ekf.filter_arrays(t[ch], z[ch])
        dets["vibration"].update(z[ch, 3])
        dets["motor_temperature"].update(z[ch, 2])
        dets["nis"].update(res.nis, res.nis_dof)

    one(chunks[0])
    t0 = time.process_time()
    for ch in chunks[1:]:
        one(ch)
    cpu = time.process_time() - t0
    return cpu / ((T - step) * len(MEASURED))


def run(quick: bool = False) -> list[dict]:
    batch, hz = _data(2.0 if quick else 20.0)
    kernel = min(_kernel_cpu(batch, hz) for _ in range(1 if quick else 3))
    twin = min(_twin_cpu(batch, hz) for _ in range(1 if quick else 3))
    share = twin * RATE  # cores busy at 10,000 samples/s
    return [
        figure("twin_cpu_per_sample", twin * 1e6, "us/sample",
               f"half a core at {RATE:,} samples/s (ratio = 0.5 core / share used)",
               0.5 / share, 1.0, core_share_at_10k=share,
               setup="pump, EKF on 6 measured outputs, Cusum + EWMA + NIS detectors, "
                     "0.1 s batches of 600 times x 6 tags per second"),
        figure("twin_vs_kernel_alone", kernel * 1e6, "us/sample",
               "the kernel alone: EKF filter_arrays + the 3 detectors on the same arrays",
               kernel / twin, None, twin_us=twin * 1e6),
    ]
